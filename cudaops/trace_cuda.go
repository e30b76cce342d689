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
	p, size, err := d.mod.Global("moe_trace")
	if err != nil {
		return 0, ErrNoTrace
	}
	if size != 8*4*traceSlots {
		return 0, fmt.Errorf("cudaops: the kernels' moe_trace table has %d bytes, the host code expects %d; rebuild them", size, 8*4*traceSlots)
	}
	return p, nil
}

// TraceGraphs replays the graphs one at a time, rounds times each in turn, waiting for each
// replay, and returns each replay's stage timeline (spans of the kernels built with MOE_TRACE,
// whose blocks record %globaltimer as they start and end). Replays are not back to back, so a
// replay's first kernels do not overlap the previous one's last; and each block's atomics on
// the table add a little to its time, so the timeline places the stages rather than timing the
// layer (TimeGraphs does that).
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
	reset, got := traceReset(), make([]uint64, 4*traceSlots)
	bytes := int64(8 * len(reset))
	var out [][len(TraceStages)]StageSpan
	for range rounds {
		for _, g := range gs {
			if g.l != l || g.exec == nil || g.mem != l.ws.mem {
				return nil, fmt.Errorf("cudaops: a graph does not belong to this layer's current workspace")
			}
			// On the stream, so that the graph's kernels see the reset table (a synchronous copy
			// from pageable memory may return before its bytes land).
			if err := cu.MemcpyHtoDAsync(table, unsafe.Pointer(&reset[0]), bytes, l.stream); err != nil {
				return nil, fmt.Errorf("cudaops: trace: %v", err)
			}
			if err := g.exec.launch(l.stream); err != nil {
				return nil, err
			}
			if err := l.stream.Synchronize(); err != nil {
				return nil, err
			}
			if err := cu.MemcpyDtoH(unsafe.Pointer(&got[0]), table, bytes); err != nil {
				return nil, fmt.Errorf("cudaops: trace: %v", err)
			}
			out = append(out, spans(got))
		}
	}
	return out, nil
}
