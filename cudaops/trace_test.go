package cudaops

import (
	"math"
	"testing"
	"time"
)

func TestSpans(t *testing.T) {
	tab := traceReset()
	set := func(slot int, v ...uint64) { copy(tab[4*slot:], v) }
	set(1, 1000, 1000, 3000, 3500)  // route: one block
	set(3, 1200, 2000, 9000, 12000) // GEMM1, launched before the routing kernel ended
	set(5, 8000, 9500, 14000, 15000)
	got := spans(tab)
	want := map[int]StageSpan{
		1: {true, 0, 0, 2000, 2500},
		3: {true, 200, 1000, 8000, 11000},
		5: {true, 7000, 8500, 13000, 14000},
	}
	for s, name := range TraceStages {
		w, ok := want[s]
		if !ok {
			if got[s].Ran {
				t.Errorf("%s: ran (%+v), but its slot was never written", name, got[s])
			}
			continue
		}
		if got[s] != w {
			t.Errorf("%s: %+v, want %+v", name, got[s], w)
		}
	}
	if r := traceReset(); r[0] != math.MaxUint64 || r[1] != 0 || r[2] != math.MaxUint64 || r[3] != 0 || len(r) != 4*traceSlots {
		t.Errorf("traceReset: %v", r[:4])
	}
}

func TestMedianSpans(t *testing.T) {
	mk := func(fs, le time.Duration) (r [len(TraceStages)]StageSpan) {
		r[3] = StageSpan{Ran: true, FirstStart: fs, LastStart: fs + 1, FirstEnd: le - 1, LastEnd: le}
		return r
	}
	runs := [][len(TraceStages)]StageSpan{mk(5, 100), mk(1, 300), mk(3, 200)}
	runs[1][6] = StageSpan{Ran: true, FirstStart: 7, LastStart: 8, FirstEnd: 9, LastEnd: 10}
	got := MedianSpans(runs)
	if want := (StageSpan{true, 3, 4, 199, 200}); got[3] != want {
		t.Errorf("GEMM1: %+v, want %+v", got[3], want)
	}
	if want := (StageSpan{true, 7, 8, 9, 10}); got[6] != want {
		t.Errorf("reduce (one run): %+v, want %+v", got[6], want)
	}
	if got[0].Ran {
		t.Errorf("prepare ran in no forward, got %+v", got[0])
	}
}
