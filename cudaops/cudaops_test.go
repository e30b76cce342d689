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
		{"auto/decode at 8 rows per expert", GEMMAuto, 8 * 128, 128, true, GEMMDecode},
		{"auto/decode at 12 rows per expert", GEMMAuto, 12 * 128, 128, true, GEMMDecode},
		{"auto/wgmma above 12 rows per expert", GEMMAuto, 12*128 + 1, 128, true, GEMMWgmma},
		{"auto/wgmma at 24 rows per expert", GEMMAuto, 24 * 128, 128, true, GEMMWgmma},
		{"auto/wgmma at prefill", GEMMAuto, 16384, 128, true, GEMMWgmma},
		{"auto/tiled when the weights do not fold", GEMMAuto, 16384, 128, false, GEMMTiled},
		{"auto/decode even when the weights do not fold", GEMMAuto, 4, 128, false, GEMMDecode},
		{"wgmma asked, weights fold", GEMMWgmma, 4, 128, true, GEMMWgmma},
		{"wgmma asked, weights do not fold", GEMMWgmma, 16384, 128, false, GEMMTiled},
		{"decode asked at prefill", GEMMDecode, 16384, 128, true, GEMMDecode},
		{"tiled asked", GEMMTiled, 1, 128, true, GEMMTiled},
		{"auto/expert parallel shard of 32 experts", GEMMAuto, 384, 32, true, GEMMDecode},
		{"auto/expert parallel shard, over 12 rows each", GEMMAuto, 385, 32, true, GEMMWgmma},
	} {
		if got := c.k.resolve(c.p, c.e, autoDecodeRows, c.foldable); got != c.want {
			t.Errorf("%s: %v.resolve(%d, %d, %d, %v) = %v, want %v", c.name, c.k, c.p, c.e, autoDecodeRows, c.foldable, got, c.want)
		}
	}
	// With the layer's own crossover (decodeRowsFor): layers of small experts keep the decode
	// GEMM to 24 rows an expert on every device, and on devices that take the 64-row kernels
	// large experts keep it to 13 (the bench shapes' batches at the crossover).
	for _, c := range []struct {
		name string
		p, e int
		k, i int
		wide bool
		want GEMMKernel
	}{
		{"small experts/decode at 24 rows per expert", 24 * 128, 128, 2048, 768, false, GEMMDecode},
		{"small experts/wgmma above 24 rows per expert", 24*128 + 1, 128, 2048, 768, false, GEMMWgmma},
		{"wide/gptoss120b 416 tokens (13 rows)", 416 * 4, 128, 2880, 2880, true, GEMMDecode},
		{"wide/gptoss120b 417 tokens", 417 * 4, 128, 2880, 2880, true, GEMMWgmma},
		{"wide/gptoss120b 448 tokens (14 rows)", 448 * 4, 128, 2880, 2880, true, GEMMWgmma},
		{"wide/deepseekv3 416 tokens (13 rows)", 416 * 8, 256, 7168, 2048, true, GEMMDecode},
		{"wide/deepseekv3 448 tokens (14 rows)", 448 * 8, 256, 7168, 2048, true, GEMMWgmma},
		{"wide/deepseekv4-flash 555 tokens (13.01 rows)", 555 * 6, 256, 4096, 2048, true, GEMMWgmma},
		{"wide/gptoss20b 104 tokens (13 rows)", 104 * 4, 32, 2880, 2880, true, GEMMDecode},
		{"wide/gptoss20b 112 tokens (14 rows)", 112 * 4, 32, 2880, 2880, true, GEMMWgmma},
		{"wide/qwen3-30b-a3b 384 tokens (24 rows)", 384 * 8, 128, 2048, 768, true, GEMMDecode},
		{"wide/qwen3-30b-a3b above 24 rows per expert", 24*128 + 1, 128, 2048, 768, true, GEMMWgmma},
	} {
		rows := decodeRowsFor(c.k, c.i, c.wide)
		if got := GEMMAuto.resolve(c.p, c.e, rows, true); got != c.want {
			t.Errorf("%s: resolve(%d, %d, %d, true) = %v, want %v", c.name, c.p, c.e, rows, got, c.want)
		}
	}
}

func TestDecodeRowsFor(t *testing.T) {
	for _, c := range []struct {
		name string
		k, i int
		wide bool
		want int
	}{
		{"qwen3-30b-a3b", 2048, 768, false, 24},
		{"qwen3-30b-a3b, wide", 2048, 768, true, 24},
		{"gptoss120b", 2944, 2944, false, 12},
		{"gptoss120b, wide", 2944, 2944, true, 13},
		{"deepseekv3", 7168, 2048, false, 12},
		{"deepseekv3, wide", 7168, 2048, true, 13},
		{"at the bound", 4096, 1024, false, 24},
		{"at the bound, wide", 4096, 1024, true, 24},
		{"just past the bound", 4096, 1025, false, 12},
		{"just past the bound, wide", 4096, 1025, true, 13},
	} {
		if got := decodeRowsFor(c.k, c.i, c.wide); got != c.want {
			t.Errorf("%s: decodeRowsFor(%d, %d, %v) = %d, want %d", c.name, c.k, c.i, c.wide, got, c.want)
		}
	}
}
