package cudaops

import (
	"math"
	"sort"
	"time"
)

// TraceStages names the stages of a traced forward in the order of the kernels' trace slots
// (TRACE_PREPARE ... TRACE_REDUCE in kernels/common.cuh). "permute" is the gather kernel or the
// routing kernel's scatter, when either runs; GEMM1 and GEMM2 are the decode path's streaming
// kernels (the other GEMM kernels are not traced).
var TraceStages = [...]string{"prepare", "route", "permute", "GEMM1", "activation", "GEMM2", "reduce"}

// traceSlots is the kernels' TRACE_SLOTS: the table has 4 values per slot, traceWords in all.
const traceSlots, traceWords = 8, 4 * traceSlots

// traceSteps is the kernels' TRACE_STEPS: the step table (moe_trace_step) has 2 values per step
// and slot, stepWords in all.
const traceSteps, stepWords = 6, 2 * traceSteps * traceSlots

// TraceSteps names, per stage, the steps inside it that the traced kernels stamp (TRACE_STEP in
// kernels/*.cu; "" for none): the routing kernel of small batches (moe_route_small; the other
// routing kernels stamp none) after its ids are counted, after its tile list is written, after
// its pairs' rows are placed, when its first token pieces (loaded at its start) are back, after
// they are stored to those rows, and after its first scale is; the decode GEMMs after their
// wait for the previous kernel (and their first weight copies issued); the activation after its
// wait, when its first values of h are back, when they are activated, when they are quantized
// (the group's scale and codes), and after its first group is stored; the reduce after its wait
// and after its first batch of slots is added (GEMM2's rows loaded).
var TraceSteps = [len(TraceStages)][traceSteps]string{
	1: {"ids counted", "tiles listed", "rows placed", "pieces loaded", "pieces stored", "scale stored"},
	3: {"waited"},
	4: {"waited", "h loaded", "activated", "quantized", "group stored"},
	5: {"waited"},
	6: {"waited", "slots added"},
}

// StageSpan is one stage's place in a traced forward, relative to the moment the forward's first
// traced block began: when the stage's first and last blocks began and its first and last warps
// ended, and when its first and last blocks passed each of its steps (TraceSteps). Ran is false
// for a stage whose kernel did not run in the forward, and for a step no block passed.
type StageSpan struct {
	Ran                                      bool
	FirstStart, LastStart, FirstEnd, LastEnd time.Duration
	Steps                                    [traceSteps]StepSpan
}

// StepSpan is when the first and the last block of a stage passed one of its steps.
type StepSpan struct {
	Ran         bool
	First, Last time.Duration
}

// resetTable is a table of words values as a traced forward starts from it: both tables
// (moe_trace, traceWords; moe_trace_step, stepWords) alternate first and last times, so every
// even word (a first time) at the largest value and every odd one (a last time) at 0, so that
// the kernels' atomic minima and maxima take the first write.
func resetTable(words int) []uint64 {
	t := make([]uint64, words)
	for i := 0; i < words; i += 2 {
		t[i] = math.MaxUint64
	}
	return t
}

// spans reads a traced forward's table (4 %globaltimer values in ns per slot: first start, last
// start, first end, last end) and its step table (2 per step and slot, first and last; nil for
// kernels that stamp no steps) into one span per stage, relative to the earliest first start. A
// slot or step still at its reset values did not run.
func spans(table, steps []uint64) [len(TraceStages)]StageSpan {
	var out [len(TraceStages)]StageSpan
	t0 := uint64(math.MaxUint64)
	for s := range TraceStages {
		if table[4*s+3] != 0 {
			t0 = min(t0, table[4*s])
		}
	}
	rel := func(v uint64) time.Duration { return time.Duration(int64(v - t0)) }
	for s := range TraceStages {
		v := table[4*s : 4*s+4]
		if v[3] == 0 || v[0] == math.MaxUint64 {
			continue
		}
		out[s] = StageSpan{Ran: true, FirstStart: rel(v[0]), LastStart: rel(v[1]), FirstEnd: rel(v[2]), LastEnd: rel(v[3])}
		for k := range traceSteps {
			if i := 2 * (traceSteps*s + k); steps != nil && steps[i+1] != 0 && steps[i] != math.MaxUint64 {
				out[s].Steps[k] = StepSpan{Ran: true, First: rel(steps[i]), Last: rel(steps[i+1])}
			}
		}
	}
	return out
}

// MedianSpans is, per stage, the median of each of a stage's four times over the forwards in
// which it ran (a stage that ran in none has Ran false), and per step the median of its two
// times over the forwards in which it was passed.
func MedianSpans(runs [][len(TraceStages)]StageSpan) [len(TraceStages)]StageSpan {
	var out [len(TraceStages)]StageSpan
	for s := range TraceStages {
		var fs, ls, fe, le []time.Duration
		for _, r := range runs {
			if sp := r[s]; sp.Ran {
				fs, ls, fe, le = append(fs, sp.FirstStart), append(ls, sp.LastStart), append(fe, sp.FirstEnd), append(le, sp.LastEnd)
			}
		}
		if len(fs) == 0 {
			continue
		}
		out[s] = StageSpan{Ran: true, FirstStart: median(fs), LastStart: median(ls), FirstEnd: median(fe), LastEnd: median(le)}
		for k := range traceSteps {
			var f, l []time.Duration
			for _, r := range runs {
				if st := r[s].Steps[k]; r[s].Ran && st.Ran {
					f, l = append(f, st.First), append(l, st.Last)
				}
			}
			if len(f) > 0 {
				out[s].Steps[k] = StepSpan{Ran: true, First: median(f), Last: median(l)}
			}
		}
	}
	return out
}

// median is the middle value of d (the upper one of an even count); d is sorted in place.
func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// traceBlocks is the kernels' TRACE_BLOCKS: the blocks of each stage's grid that record a span,
// in a table of 3 values a block, blockWords in all.
const traceBlocks, blockWords = 8192, 3 * traceBlocks * traceSlots

// BlockSpan is one traced block's place in a forward (Layer.TraceBlocks): its stage (an index of
// TraceStages), its blockIdx.x and .y, the SM it ran on, and when it began and its last warp
// ended, relative to the moment the forward's first traced block began.
type BlockSpan struct {
	Stage, X, Y, SM int
	Start, End      time.Duration
}

// blockSpans reads the MOE_TRACE_BLOCKS table (3 values a block: bit 63 | SM << 48 | y << 24 |
// x, start and end in %globaltimer ns; all zero for a block that did not run) into spans,
// relative to the earliest start.
func blockSpans(table []uint64) []BlockSpan {
	t0 := uint64(math.MaxUint64)
	for i := 0; i+2 < len(table); i += 3 {
		if table[i]>>63 != 0 {
			t0 = min(t0, table[i+1])
		}
	}
	var out []BlockSpan
	for i := 0; i+2 < len(table); i += 3 {
		m := table[i]
		if m>>63 == 0 {
			continue
		}
		out = append(out, BlockSpan{Stage: i / 3 / traceBlocks, X: int(m & 0xffffff), Y: int(m >> 24 & 0xffffff), SM: int(m >> 48 & 0xff),
			Start: time.Duration(int64(table[i+1] - t0)), End: time.Duration(int64(table[i+2] - t0))})
	}
	return out
}
