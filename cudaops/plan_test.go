package cudaops

import "testing"

func TestGEMMPlan(t *testing.T) {
	p := planOf("moe_gemm_dec", 2, 1472, 4, 132)
	if got, want := p.String(), "moe_gemm_dec S=2: 1472 blocks, 4 an SM, 2.79 waves"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if p := planOf("moe_gemm", 1, 100, 0, 132); p.Waves != 0 {
		t.Errorf("no occupancy: %v waves, want 0", p.Waves)
	}
}
