//go:build cudaops

package cudaops

import (
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
)

// TestPlan checks Layer.Plan against the grid rules it reports (the decode path's splits and
// kernels, the wgmma path's grid), and the occupancy the split rule assumes: decSplitBlocks
// blocks an SM for the split kernel of 32 rows a warp, decwBlocks for the one of 64.
func TestPlan(t *testing.T) {
	s := conformance.Spec{M: 1, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Seed: 51}
	c := conformance.Generate(s)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMAuto)
	for _, m := range []int{1, 8, 64, 4096} {
		plans, err := l.Plan(m, s.TopK)
		if err != nil {
			t.Fatal(err)
		}
		p := m * s.TopK
		_, tiles := l.bounds(p)
		t.Logf("M=%d: GEMM1 %v; GEMM2 %v", m, plans[0], plans[1])
		switch l.kernel(p) {
		case GEMMDecode:
			split1, split2, wide1, wide2 := l.decSplits(tiles, p)
			for g, c := range []struct {
				n     int64
				split int
				wide  bool
			}{{int64(2 * s.I), split1, wide1}, {int64(s.K), split2, wide2}} {
				fn, _, gx := l.decKernel(c.n, c.split, p, c.wide)
				gy := tiles
				if l.heavyWide(m, p, c.split, c.n) {
					fn, gy = l.dev.fn.gemmDec1wh, l.heavyTiles(p)
				} else if l.chunked(g+1, m, p, c.split) {
					gy = l.chunkTiles(p)
				}
				if got := plans[g]; got.Kernel != l.dev.names[fn] || got.Split != c.split || got.Blocks != gx*gy {
					t.Errorf("M=%d GEMM%d: plan %v, want %s S=%d, %d blocks", m, g+1, got, l.dev.names[fn], c.split, gx*gy)
				}
				want := map[string]int{"moe_gemm_dec": decSplitBlocks, "moe_gemm_decw": decwBlocks}
				if n, ok := want[plans[g].Kernel]; ok && plans[g].BlocksPerSM != n {
					t.Errorf("M=%d GEMM%d: %s holds %d blocks an SM, the split rule assumes %d", m, g+1, plans[g].Kernel, plans[g].BlocksPerSM, n)
				}
			}
		case GEMMWgmma:
			name, rows := "moe_gemm_wg4", wg4Rows
			switch {
			case l.wgSmall(p):
				name, rows = "moe_gemm_wg4s", wg4sRows
			case l.wgMid(p):
				name, rows = "moe_gemm_wg4m", wg4mRows
			}
			if want := (2*s.I + rows - 1) / rows * l.wgfTiles(p); plans[0].Kernel != name || plans[0].Blocks != want {
				t.Errorf("M=%d GEMM1: plan %v, want %s with %d blocks", m, plans[0], name, want)
			}
			if name == "moe_gemm_wg4s" && plans[0].BlocksPerSM != wg4sBlocks {
				t.Errorf("M=%d GEMM1: %s holds %d blocks an SM, want %d", m, name, plans[0].BlocksPerSM, wg4sBlocks)
			}
		}
		for g, pl := range plans {
			if pl.BlocksPerSM < 1 || pl.Waves <= 0 {
				t.Errorf("M=%d GEMM%d: %v", m, g+1, pl)
			}
		}
	}
	if _, err := l.Plan(0, 4); err == nil {
		t.Error("Plan(0, 4) gave no error")
	}
}
