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
	if r := traceReset(); r[0] != math.MaxUint64 || r[1] != 0 || r[2] != math.MaxUint64 || r[3] != 0 || len(r) != traceWords {
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

func TestBlockSpans(t *testing.T) {
	tab := make([]uint64, blockWords)
	put := func(slot, b int, sm, y, x, start, end uint64) {
		copy(tab[3*(traceBlocks*slot+b):], []uint64{1<<63 | sm<<48 | y<<24 | x, start, end})
	}
	put(1, 0, 5, 0, 0, 1000, 3000)        // route: one block
	put(3, 7, 131, 2, 3, 1200, 9000)      // GEMM1 block (3, 2) of a grid 2 wide
	put(3, 8191, 0, 4095, 1, 2500, 12000) // the last block a stage records
	put(5, 0, 17, 0, 0, 8000, 15000)      // GEMM2
	tab[3*(traceBlocks*6)+1] = 500        // a start without the valid bit: not a block
	got := blockSpans(tab)
	want := []BlockSpan{
		{Stage: 1, X: 0, Y: 0, SM: 5, Start: 0, End: 2000},
		{Stage: 3, X: 3, Y: 2, SM: 131, Start: 200, End: 8000},
		{Stage: 3, X: 1, Y: 4095, SM: 0, Start: 1500, End: 11000},
		{Stage: 5, X: 0, Y: 0, SM: 17, Start: 7000, End: 14000},
	}
	if len(got) != len(want) {
		t.Fatalf("%d spans %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("span %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
