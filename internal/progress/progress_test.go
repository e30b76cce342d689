package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestBar(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "work", 4)
	b.Add(2)
	b.Add(5) // clamps at the total
	b.Finish()
	b.Finish()
	s := buf.String()
	if !strings.Contains(s, "work [") || !strings.Contains(s, "100%") || strings.Count(s, "\n") != 1 {
		t.Fatalf("bar output %q", s)
	}
	if !strings.Contains(s, strings.Repeat("#", 30)) {
		t.Fatalf("full bar missing in %q", s)
	}
}
