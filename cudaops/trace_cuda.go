//go:build cudaops

package cudaops

import (
	"errors"
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// ErrNoTrace is returned by TraceGraphs when the kernels were built without MOE_TRACE (the
// committed fatbin never is): build them with MOE_DEFS=-DMOE_TRACE cudaops/kernels/build.sh and
// load them through FP4MOE_FATBIN.
var ErrNoTrace = errors.New("cudaops: the kernels were built without MOE_TRACE")

// traceTable returns the traced kernels' moe_trace table, or ErrNoTrace.
func (d *Device) traceTable() (cu.DevicePtr, error) {
	return d.table("moe_trace", traceWords, ErrNoTrace)
}

// errNoSteps: the traced kernels have no step table (built from sources older than it).
var errNoSteps = errors.New("cudaops: the traced kernels stamp no steps")

// stepTable returns the traced kernels' moe_trace_step table, or errNoSteps.
func (d *Device) stepTable() (cu.DevicePtr, error) {
	return d.table("moe_trace_step", stepWords, errNoSteps)
}

// table returns the module's global name, a table of words 8-byte words, or missing when the
// kernels have none (built without its trace option).
func (d *Device) table(name string, words int, missing error) (cu.DevicePtr, error) {
	p, size, err := d.mod.Global(name)
	if err != nil {
		return 0, missing
	}
	if size != int64(8*words) {
		return 0, fmt.Errorf("cudaops: the kernels' %s table has %d bytes, the host code expects %d; rebuild them", name, size, 8*words)
	}
	return p, nil
}

// TraceGraphs replays the graphs one at a time, rounds times each in turn, waiting for each
// replay, and returns each replay's stage timeline (spans of the kernels built with MOE_TRACE,
// whose blocks record %globaltimer as they start and end). Replays are not back to back, so a
// replay's first kernels do not overlap the previous one's last; and each block's atomics on
// the table add a little to its time, so the timeline places the stages rather than timing the
// layer (TimeGraphs does that). The spans carry the stages' steps (TraceSteps) where the kernels
// stamp them.
func (l *Layer) TraceGraphs(gs []*Graph, rounds int) ([][len(TraceStages)]StageSpan, error) {
	unbind, err := l.dev.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	table, err := l.dev.traceTable()
	if err != nil {
		return nil, err
	}
	// The tables a replay resets and reads back: moe_trace, and moe_trace_step where the kernels
	// have it.
	type buf struct {
		p          cu.DevicePtr
		reset, got []uint64
	}
	bufs := []buf{{table, resetTable(traceWords), make([]uint64, traceWords)}}
	switch steps, err := l.dev.stepTable(); {
	case err == nil:
		bufs = append(bufs, buf{steps, resetTable(stepWords), make([]uint64, stepWords)})
	case !errors.Is(err, errNoSteps):
		return nil, err
	}
	var out [][len(TraceStages)]StageSpan
	for range rounds {
		for _, g := range gs {
			if err := l.replayable(g); err != nil {
				return nil, err
			}
			// On the stream, so that the graph's kernels see the reset tables (a synchronous copy
			// from pageable memory may return before its bytes land).
			for _, b := range bufs {
				if err := cu.MemcpyHtoDAsync(b.p, unsafe.Pointer(&b.reset[0]), int64(8*len(b.reset)), l.stream); err != nil {
					return nil, fmt.Errorf("cudaops: trace: %v", err)
				}
			}
			if err := g.exec.launch(l.stream); err != nil {
				return nil, err
			}
			if err := l.stream.Synchronize(); err != nil {
				return nil, err
			}
			for _, b := range bufs {
				if err := cu.MemcpyDtoH(unsafe.Pointer(&b.got[0]), b.p, int64(8*len(b.got))); err != nil {
					return nil, fmt.Errorf("cudaops: trace: %v", err)
				}
			}
			var stepsGot []uint64 // nil: kernels without steps
			if len(bufs) > 1 {
				stepsGot = bufs[1].got
			}
			out = append(out, spans(bufs[0].got, stepsGot))
		}
	}
	return out, nil
}

// ErrNoBlockTrace is returned by TraceBlocks when the kernels were built without
// MOE_TRACE_BLOCKS (MOE_DEFS="-DMOE_TRACE -DMOE_TRACE_BLOCKS" cudaops/kernels/build.sh).
var ErrNoBlockTrace = errors.New("cudaops: the kernels were built without MOE_TRACE_BLOCKS")

// blockTable returns the MOE_TRACE_BLOCKS kernels' moe_trace_blk table, or ErrNoBlockTrace.
func (d *Device) blockTable() (cu.DevicePtr, error) {
	return d.table("moe_trace_blk", blockWords, ErrNoBlockTrace)
}

// TraceBlocks replays the graph once and returns the span of every traced block (the first
// traceBlocks blocks of each stage's grid) and the SM it ran on, relative to the moment the
// forward's first traced block began, in the order of stage and block. Its kernels are the
// MOE_TRACE_BLOCKS build's, whose blocks each store a record and whose warps each add an atomic;
// TraceGraphs' timeline of the same build places the stages.
func (l *Layer) TraceBlocks(g *Graph) ([]BlockSpan, error) {
	unbind, err := l.dev.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	table, err := l.dev.blockTable()
	if err != nil {
		return nil, err
	}
	if err := l.replayable(g); err != nil {
		return nil, err
	}
	if err := cu.MemsetD32Async(table, 0, 2*blockWords, l.stream); err != nil {
		return nil, fmt.Errorf("cudaops: trace: %v", err)
	}
	if err := g.exec.launch(l.stream); err != nil {
		return nil, err
	}
	if err := l.stream.Synchronize(); err != nil {
		return nil, err
	}
	got := make([]uint64, blockWords)
	if err := cu.MemcpyDtoH(unsafe.Pointer(&got[0]), table, 8*blockWords); err != nil {
		return nil, fmt.Errorf("cudaops: trace: %v", err)
	}
	return blockSpans(got), nil
}
