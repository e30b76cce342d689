//go:build cudaops

package cudaops

import (
	"fmt"

	"github.com/fp4moe/fp4moe/moe"
)

// Plan returns how a forward of m tokens with topk experts each runs its two grouped GEMMs
// (GEMM1, GEMM2): the kernel and split launchAll picks for the batch, the grid it launches
// (gemmMain, the same launch launchAll makes; on the wgmma path its main kernel, the staging and
// promoting kernels not counted), and the driver's occupancy for that kernel. Nothing runs; a
// perf tool's view of the grid rules (decSplitFor, decKernel), so that their waves need not be
// worked out by hand.
func (l *Layer) Plan(m, topk int) ([2]GEMMPlan, error) {
	var plans [2]GEMMPlan
	if l.closed {
		return plans, fmt.Errorf("cudaops: layer is closed")
	}
	if m < 1 || topk < 1 {
		return plans, &moe.ConfigError{Msg: fmt.Sprintf("Plan: m = %d and topk = %d, want at least 1 each", m, topk)}
	}
	unbind, err := l.dev.bind()
	if err != nil {
		return plans, err
	}
	defer unbind()
	p := m * topk
	_, tiles := l.bounds(p)
	kernel := l.kernel(p)
	split1, split2, wide1, wide2 := l.decSplits(tiles, p)
	K, I := int64(l.K), int64(l.I)
	for g, c := range []struct {
		n     int64
		split int
		wide  bool
	}{{2 * I, split1, wide1}, {K, split2, wide2}} {
		gl := l.gemmMain(kernel, c.n, c.split, p, tiles, c.wide)
		l.onList(&gl, l.decList(g+1, m, p, c.split, c.n), p)
		split := 1
		if kernel == GEMMDecode {
			split = c.split
		}
		perSM, err := gl.fn.MaxActiveBlocksPerMultiProcessor(gl.block.x, int64(gl.smem))
		if err != nil {
			return plans, fmt.Errorf("cudaops: occupancy of %s: %v", l.dev.names[gl.fn], err)
		}
		plans[g] = planOf(l.dev.names[gl.fn], split, gl.grid.x*gl.grid.y, perSM, l.dev.SMs)
	}
	return plans, nil
}
