package cudaops

import "testing"

func TestGEMMKernelString(t *testing.T) {
	for k, want := range map[GEMMKernel]string{GEMMAuto: "auto", GEMMTiled: "tiled", GEMMDecode: "decode", GEMMWgmma: "wgmma", 9: "GEMMKernel(9)"} {
		if got := k.String(); got != want {
			t.Errorf("GEMMKernel(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}
