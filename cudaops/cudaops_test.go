package cudaops

import "testing"

func TestGEMMKernelString(t *testing.T) {
	for k, want := range map[GEMMKernel]string{GEMMAuto: "auto", GEMMTiled: "tiled", GEMMDecode: "decode", GEMMWgmma: "wgmma", 9: "GEMMKernel(9)"} {
		if got := k.String(); got != want {
			t.Errorf("GEMMKernel(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}

func TestGEMMKernelResolve(t *testing.T) {
	for _, c := range []struct {
		name     string
		k        GEMMKernel
		p, e     int
		foldable bool
		want     GEMMKernel
	}{
		{"auto/decode at 1 pair", GEMMAuto, 1, 128, true, GEMMDecode},
		{"auto/decode at 16 rows per expert", GEMMAuto, 16 * 128, 128, true, GEMMDecode},
		{"auto/decode at 24 rows per expert", GEMMAuto, 24 * 128, 128, true, GEMMDecode},
		{"auto/wgmma above 24 rows per expert", GEMMAuto, 24*128 + 1, 128, true, GEMMWgmma},
		{"auto/wgmma at prefill", GEMMAuto, 16384, 128, true, GEMMWgmma},
		{"auto/tiled when the weights do not fold", GEMMAuto, 16384, 128, false, GEMMTiled},
		{"auto/decode even when the weights do not fold", GEMMAuto, 4, 128, false, GEMMDecode},
		{"wgmma asked, weights fold", GEMMWgmma, 4, 128, true, GEMMWgmma},
		{"wgmma asked, weights do not fold", GEMMWgmma, 16384, 128, false, GEMMTiled},
		{"decode asked at prefill", GEMMDecode, 16384, 128, true, GEMMDecode},
		{"tiled asked", GEMMTiled, 1, 128, true, GEMMTiled},
		{"auto/expert parallel shard of 32 experts", GEMMAuto, 768, 32, true, GEMMDecode},
		{"auto/expert parallel shard, over 24 rows each", GEMMAuto, 769, 32, true, GEMMWgmma},
	} {
		if got := c.k.resolve(c.p, c.e, c.foldable); got != c.want {
			t.Errorf("%s: %v.resolve(%d, %d, %v) = %v, want %v", c.name, c.k, c.p, c.e, c.foldable, got, c.want)
		}
	}
}
