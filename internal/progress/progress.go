// Package progress draws a one-line progress bar on a terminal stream.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Bar is a progress bar over a known total. It is safe for concurrent use.
type Bar struct {
	mu     sync.Mutex
	w      io.Writer
	label  string
	total  int64
	done   int64
	start  time.Time
	last   time.Time
	drawn  int // percent last drawn
	closed bool
}

// New returns a bar counting to total, drawn on w with a label.
func New(w io.Writer, label string, total int64) *Bar {
	b := &Bar{w: w, label: label, total: max(total, 1), start: time.Now(), drawn: -1}
	b.draw(true)
	return b
}

// Add records n more units of work and redraws the bar at most every 100 ms.
func (b *Bar) Add(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = min(b.done+n, b.total)
	b.draw(false)
}

// Done returns the units of work recorded so far.
func (b *Bar) Done() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}

// Finish draws the full bar and ends its line.
func (b *Bar) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.done = b.total
	b.draw(true)
	fmt.Fprintln(b.w)
	b.closed = true
}

func (b *Bar) draw(force bool) {
	pct := int(b.done * 100 / b.total)
	now := time.Now()
	if !force && (pct == b.drawn || now.Sub(b.last) < 100*time.Millisecond) {
		return
	}
	b.drawn, b.last = pct, now
	const width = 30
	fill := pct * width / 100
	fmt.Fprintf(b.w, "\r%s [%s%s] %3d%% %5.1fs", b.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill), pct, now.Sub(b.start).Seconds())
}
