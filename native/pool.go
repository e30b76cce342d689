package native

import (
	"sync"
	"sync/atomic"
)

// runner executes one work item of a stage on a worker.
type runner interface {
	runItem(stage stage, worker, item int)
}

type stage uint8

// pool runs the work items of a stage on a fixed set of goroutines: the caller is worker 0 and
// threads-1 long-lived goroutines are the others. Items are handed out through an atomic
// counter, so a stage costs no allocation; the result of an item must not depend on which
// worker runs it.
type pool struct {
	threads int
	wake    []chan struct{}
	done    sync.WaitGroup

	// Set for the duration of run only, so that idle workers do not keep the runner alive.
	r     runner
	stage stage
	total int
	next  atomic.Int64
}

func newPool(threads int) *pool {
	p := &pool{threads: max(1, threads)}
	p.wake = make([]chan struct{}, p.threads)
	for w := 1; w < p.threads; w++ {
		p.wake[w] = make(chan struct{})
		go p.worker(w)
	}
	return p
}

func (p *pool) worker(w int) {
	for range p.wake[w] {
		p.work(w)
		p.done.Done()
	}
}

func (p *pool) work(w int) {
	for {
		i := int(p.next.Add(1) - 1)
		if i >= p.total {
			return
		}
		p.r.runItem(p.stage, w, i)
	}
}

// run executes items 0 ... n-1 of stage s and returns when all are done.
func (p *pool) run(r runner, s stage, n int) {
	if n <= 0 {
		return
	}
	p.r, p.stage, p.total = r, s, n
	p.next.Store(0)
	helpers := min(p.threads, n) - 1
	p.done.Add(helpers)
	for w := 1; w <= helpers; w++ {
		p.wake[w] <- struct{}{}
	}
	p.work(0)
	p.done.Wait()
	p.r = nil
}

// close stops the pool's goroutines.
func (p *pool) close() {
	for w := 1; w < p.threads; w++ {
		close(p.wake[w])
	}
	p.threads = 1
}
