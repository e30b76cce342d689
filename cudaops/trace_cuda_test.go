//go:build cudaops

package cudaops

import (
	"errors"
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
)

// oneTokenGraph captures a one-token decode forward (GPT-OSS's activation, 8 experts of K = 1024,
// I = 512, top-4, the seed given) on a decode-path layer, for the trace tests; the layer and the
// graph close when the test ends.
func oneTokenGraph(t *testing.T, seed uint64) (conformance.Spec, *Layer, *Graph) {
	t.Helper()
	s := conformance.Spec{M: 1, K: 1024, I: 512, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Seed: seed}
	c := conformance.Generate(s)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
	gs, _, release, err := l.CaptureBatches([]*moe.Batch{&c.Batch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return s, l, gs[0]
}

// TestTraceGraphs: kernels built without MOE_TRACE (the committed ones) give ErrNoTrace; traced
// kernels (FP4MOE_FATBIN from a MOE_DEFS=-DMOE_TRACE build) give a timeline in which every stage
// of a one-token decode forward ran, each began no later than it ended, and each ended no earlier
// than the stage before it (each waits for its predecessor); and, for kernels with the step
// table, every stage's steps were passed in order inside it (checkSteps).
func TestTraceGraphs(t *testing.T) {
	_, l, g := oneTokenGraph(t, 61)
	runs, err := l.TraceGraphs([]*Graph{g}, 3)
	if _, terr := l.dev.traceTable(); terr != nil {
		if !errors.Is(err, ErrNoTrace) {
			t.Fatalf("kernels without moe_trace (%s): TraceGraphs gave %v, want ErrNoTrace", l.dev.Fatbin, err)
		}
		t.Logf("kernels %s are not traced: ErrNoTrace as expected", l.dev.Fatbin)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 {
		t.Fatalf("%d traced replays, want 3", len(runs))
	}
	_, serr := l.dev.stepTable()
	steps := serr == nil
	for r, sp := range runs {
		prev := -1
		for i, name := range TraceStages {
			if name == "permute" || name == "prepare" && !sp[i].Ran {
				continue // not launched when the routing kernel gathers the rows, or for an FP8 input
			}
			if !sp[i].Ran {
				t.Fatalf("replay %d: stage %s did not run", r, name)
			}
			if sp[i].FirstStart > sp[i].LastStart || sp[i].LastStart > sp[i].LastEnd || sp[i].FirstEnd > sp[i].LastEnd || sp[i].FirstStart < 0 {
				t.Fatalf("replay %d: stage %s out of order: %+v", r, name, sp[i])
			}
			if prev >= 0 && sp[i].LastEnd < sp[prev].LastEnd {
				t.Fatalf("replay %d: %s ended at %v, before %s at %v", r, name, sp[i].LastEnd, TraceStages[prev], sp[prev].LastEnd)
			}
			if steps {
				checkSteps(t, r, i, sp, prev)
			}
			prev = i
		}
		t.Logf("replay %d: %+v", r, sp)
	}
}

// checkSteps checks stage i's steps in a traced replay whose previous stage (that ran) is prev
// (-1 for none): each named step (TraceSteps) was passed, first no later than last, inside the
// stage's span, each step's first and last no earlier than the step's before it (a block passes
// them in order); and a "waited" step no earlier than the previous stage's last end.
func checkSteps(t *testing.T, r, i int, sp [len(TraceStages)]StageSpan, prev int) {
	t.Helper()
	s := sp[i]
	var last StepSpan
	for k, name := range TraceSteps[i] {
		st := s.Steps[k]
		if name == "" {
			if st.Ran {
				t.Fatalf("replay %d: %s step %d, which no kernel stamps, ran: %+v", r, TraceStages[i], k, st)
			}
			continue
		}
		if !st.Ran || st.First > st.Last || st.First < s.FirstStart || st.Last > s.LastEnd {
			t.Fatalf("replay %d: %s step %q missing or outside the stage (%v to %v): %+v", r, TraceStages[i], name, s.FirstStart, s.LastEnd, st)
		}
		if k > 0 && (st.First < last.First || st.Last < last.Last) {
			t.Fatalf("replay %d: %s step %q (%+v) before the step before it (%+v)", r, TraceStages[i], name, st, last)
		}
		if name == "waited" && prev >= 0 && st.First < sp[prev].LastEnd {
			t.Fatalf("replay %d: %s waited at %v, before %s ended at %v", r, TraceStages[i], st.First, TraceStages[prev], sp[prev].LastEnd)
		}
		last = st
	}
}

// TestTraceBlocks: kernels built without MOE_TRACE_BLOCKS give ErrNoBlockTrace; kernels built
// with it record every block of a one-token decode forward's GEMM1 grid once, each on an SM of
// the device, beginning no later than it ended.
func TestTraceBlocks(t *testing.T) {
	s, l, g := oneTokenGraph(t, 62)
	spans, err := l.TraceBlocks(g)
	if errors.Is(err, ErrNoBlockTrace) {
		if _, gerr := l.dev.blockTable(); gerr == nil {
			t.Fatalf("the kernels (%s) have moe_trace_blk, yet TraceBlocks gave %v", l.dev.Fatbin, err)
		}
		t.Logf("kernels %s do not trace blocks: ErrNoBlockTrace as expected", l.dev.Fatbin)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	p := s.M * s.TopK
	_, tiles := l.bounds(p)
	split1, _, wide1, _ := l.decSplits(tiles, p)
	_, _, gx := l.decKernel(int64(2*s.I), split1, p, wide1)
	seen := map[[2]int]bool{}
	for _, b := range spans {
		if TraceStages[b.Stage] != "GEMM1" {
			continue
		}
		if b.Start > b.End || b.Start < 0 || b.SM >= l.dev.SMs || b.X >= gx || b.Y >= tiles || seen[[2]int{b.X, b.Y}] {
			t.Fatalf("GEMM1 block %+v: out of order, off the grid (%d × %d) or the device (%d SMs), or recorded twice", b, gx, tiles, l.dev.SMs)
		}
		seen[[2]int{b.X, b.Y}] = true
	}
	if len(seen) != gx*tiles {
		t.Fatalf("%d GEMM1 blocks recorded, want the grid's %d × %d", len(seen), gx, tiles)
	}
	t.Logf("%d spans, GEMM1 %d × %d blocks", len(spans), gx, tiles)
}
