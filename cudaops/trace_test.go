package cudaops

import (
	"math"
	"testing"
	"time"
)

func TestSpans(t *testing.T) {
	tab := resetTable(traceWords)
	set := func(slot int, v ...uint64) { copy(tab[4*slot:], v) }
	set(1, 1000, 1000, 3000, 3500)  // route: one block
	set(3, 1200, 2000, 9000, 12000) // GEMM1, launched before the routing kernel ended
	set(5, 8000, 9500, 14000, 15000)
	steps := resetTable(stepWords)
	step := func(slot, k int, first, last uint64) { copy(steps[2*(traceSteps*slot+k):], []uint64{first, last}) }
	step(1, 0, 1400, 1400)  // route: ids counted
	step(1, 5, 2900, 2900)  // route: scale stored
	step(5, 0, 8800, 10100) // GEMM2: waited
	got := spans(tab, steps)
	want := map[int]StageSpan{
		1: {Ran: true, FirstStart: 0, LastStart: 0, FirstEnd: 2000, LastEnd: 2500,
			Steps: [traceSteps]StepSpan{0: {true, 400, 400}, 5: {true, 1900, 1900}}},
		3: {Ran: true, FirstStart: 200, LastStart: 1000, FirstEnd: 8000, LastEnd: 11000},
		5: {Ran: true, FirstStart: 7000, LastStart: 8500, FirstEnd: 13000, LastEnd: 14000,
			Steps: [traceSteps]StepSpan{0: {true, 7800, 9100}}},
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
	if r := resetTable(traceWords); r[0] != math.MaxUint64 || r[1] != 0 || r[2] != math.MaxUint64 || r[3] != 0 || len(r) != traceWords {
		t.Errorf("resetTable(traceWords): %v", r[:4])
	}
	if r := resetTable(stepWords); r[0] != math.MaxUint64 || r[1] != 0 || r[stepWords-2] != math.MaxUint64 || r[stepWords-1] != 0 || len(r) != stepWords {
		t.Errorf("resetTable(stepWords): %v", r)
	}
	// Kernels without steps (nil table): the same stages, no step ran.
	for s, sp := range spans(tab, nil) {
		for k, st := range sp.Steps {
			if st.Ran {
				t.Errorf("%s step %d ran without a step table: %+v", TraceStages[s], k, st)
			}
		}
	}
}

func TestMedianSpans(t *testing.T) {
	mk := func(fs, le time.Duration) (r [len(TraceStages)]StageSpan) {
		r[3] = StageSpan{Ran: true, FirstStart: fs, LastStart: fs + 1, FirstEnd: le - 1, LastEnd: le}
		return r
	}
	runs := [][len(TraceStages)]StageSpan{mk(5, 100), mk(1, 300), mk(3, 200)}
	runs[1][6] = StageSpan{Ran: true, FirstStart: 7, LastStart: 8, FirstEnd: 9, LastEnd: 10}
	// GEMM1's step 0 passed in all three forwards, its step 1 in two (the median of two: the upper).
	runs[0][3].Steps[0], runs[1][3].Steps[0], runs[2][3].Steps[0] = StepSpan{true, 50, 60}, StepSpan{true, 10, 90}, StepSpan{true, 30, 70}
	runs[0][3].Steps[1], runs[2][3].Steps[1] = StepSpan{true, 80, 81}, StepSpan{true, 82, 83}
	got := MedianSpans(runs)
	want3 := StageSpan{Ran: true, FirstStart: 3, LastStart: 4, FirstEnd: 199, LastEnd: 200,
		Steps: [traceSteps]StepSpan{{true, 30, 70}, {true, 82, 83}}}
	if got[3] != want3 {
		t.Errorf("GEMM1: %+v, want %+v", got[3], want3)
	}
	if want := (StageSpan{Ran: true, FirstStart: 7, LastStart: 8, FirstEnd: 9, LastEnd: 10}); got[6] != want {
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
