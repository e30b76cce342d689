package cudaops

import (
	"math"
	"testing"
)

func TestWaveFill(t *testing.T) {
	for _, c := range []struct {
		name        string
		blocks, wav int
		want        float64
	}{
		{"one full wave", 528, 528, 1},
		{"under a wave", 368, 396, 368.0 / 396},
		{"a thin second wave", 512, 396, 512.0 / 792},
		{"two full waves", 1056, 528, 1},
		{"one block", 1, 528, 1.0 / 528},
		{"empty grid", 0, 528, 0},
		{"no wave", 10, 0, 0},
	} {
		if got := waveFill(c.blocks, c.wav); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s: waveFill(%d, %d) = %v, want %v", c.name, c.blocks, c.wav, got, c.want)
		}
	}
}

// TestWideSplit checks the split kernels' grid comparison at the decode GEMMs of the bench
// shapes on 132 SMs: the split kernel with 64 rows a warp (n·S/256 blocks a tile, 3 an SM)
// against the one with 32 (n·S/128, 4 an SM), one tile per routed pair.
func TestWideSplit(t *testing.T) {
	for _, c := range []struct {
		name     string
		n        int64
		s, tiles int
		want     bool
	}{
		{"GPT-OSS-120B GEMM1 M=1: 368 of 396 against 736 of 1056", 5888, 4, 4, true},
		{"GPT-OSS-120B GEMM2 M=1: 184 of 396 against 368 of 528", 2944, 4, 4, false},
		{"GPT-OSS-120B GEMM2 M=2: 368 of 396 against 736 of 1056", 2944, 4, 8, true},
		{"DeepSeek-V3 GEMM1 M=2, split 2: 512 of 792 against 1024 of 1056", 4096, 2, 16, false},
		{"DeepSeek-V3 GEMM2 M=1, split 2: 448 of 792 against 896 of 1056", 7168, 2, 8, false},
		{"Qwen3-30B-A3B GEMM1 M=1: 192 of 396 against 384 of 528", 1536, 4, 8, false},
		{"Qwen3-30B-A3B GEMM1 M=2: 384 of 396 against 768 of 1056", 1536, 4, 16, true},
		{"Qwen3-30B-A3B GEMM1 M=4: 768 of 792 against 1536 of 1584 (equal)", 1536, 4, 32, true},
	} {
		if got := wideSplit(c.n, c.s, c.tiles, 132); got != c.want {
			t.Errorf("%s: wideSplit(%d, %d, %d, 132) = %v, want %v", c.name, c.n, c.s, c.tiles, got, c.want)
		}
	}
}

// TestChainWide checks the two GEMMs' choice at the bench shapes' decode forwards on 132 SMs
// (splits as decSplit gives them there) and at the corners of its inputs.
func TestChainWide(t *testing.T) {
	fill := func(n, s, tiles int) bool { return s > 1 && wideSplit(int64(n), s, tiles, 132) }
	for _, c := range []struct {
		name                  string
		n1, s1, n2, s2, tiles int
		want1, want2          bool
	}{
		{"GPT-OSS-120B M=1: GEMM2 keeps the 32-row split kernel, so GEMM1 does too", 5888, 4, 2944, 4, 4, false, false},
		{"GPT-OSS-120B M=2: both fill as well", 5888, 4, 2944, 4, 8, true, true},
		{"Qwen3-30B-A3B M=1: neither fills as well", 1536, 4, 2048, 2, 8, false, false},
		{"Qwen3-30B-A3B M=2: GEMM2 at split 1", 1536, 4, 2048, 1, 16, true, false},
		{"DeepSeek-V3 M=2: GEMM1 fills worse, GEMM2 at split 1", 4096, 2, 7168, 1, 16, false, false},
	} {
		w1, w2 := chainWide(c.s1 > 1, fill(c.n1, c.s1, c.tiles), c.s2 > 1, fill(c.n2, c.s2, c.tiles))
		if w1 != c.want1 || w2 != c.want2 {
			t.Errorf("%s: chainWide gives GEMM1 %v, GEMM2 %v; want %v, %v", c.name, w1, w2, c.want1, c.want2)
		}
	}
	for _, c := range []struct {
		split1, fill1, split2, fill2, want1, want2 bool
	}{
		{true, true, false, false, true, false},
		{true, true, true, false, false, false},
		{true, true, true, true, true, true},
		{false, true, true, true, false, true},
		{true, false, true, true, false, true},
		{false, false, false, true, false, false},
	} {
		w1, w2 := chainWide(c.split1, c.fill1, c.split2, c.fill2)
		if w1 != c.want1 || w2 != c.want2 {
			t.Errorf("chainWide(%v, %v, %v, %v) = %v, %v; want %v, %v", c.split1, c.fill1, c.split2, c.fill2, w1, w2, c.want1, c.want2)
		}
	}
}

// TestEarlyTrigger checks the early trigger's choice at the bench shapes' decode batches (one
// tile per routed pair) and at the ends of its range.
func TestEarlyTrigger(t *testing.T) {
	for _, c := range []struct {
		name     string
		p, tiles int
		k, i     int64
		want     bool
	}{
		{"GPT-OSS-120B M=1: 17.3 MB", 4, 4, 2944, 2944, false},
		{"GPT-OSS-120B M=2: 34.7 MB", 8, 8, 2944, 2944, true},
		{"DeepSeek-V3 M=1: 58.7 MB", 8, 8, 7168, 2048, true},
		{"Qwen3-30B-A3B M=2: 12.6 MB", 16, 16, 2048, 768, false},
		{"Qwen3-30B-A3B M=4: 25.2 MB", 32, 32, 2048, 768, true},
		{"at the bound: 20 MiB", 2, 2, 5120, 4096, true},
		{"a byte under it", 1, 1, 20<<20*2 - 2, 1, false},
		{"earlyTriggerPairs pairs", 512, 512, 2048, 768, true},
		{"more pairs", 513, 513, 2048, 768, false},
	} {
		if got := earlyTrigger(c.p, c.tiles, c.k, c.i); got != c.want {
			t.Errorf("%s: earlyTrigger(%d, %d, %d, %d) = %v, want %v", c.name, c.p, c.tiles, c.k, c.i, got, c.want)
		}
	}
}

// TestDecSplitFor checks the streaming GEMMs' split at the bench shapes' decode batches on 132
// SMs (tiles: the bound of M·TopK pairs), the GEMM1 exception's edges included.
func TestDecSplitFor(t *testing.T) {
	for _, c := range []struct {
		name  string
		n, kd int64
		tiles int
		first bool
		want  int
	}{
		{"GPT-OSS-120B M=1 GEMM1: S=4 takes 1.39 waves, S=2 one", 5888, 2944, 4, true, 2},
		{"GPT-OSS-120B M=1 GEMM2: S=4 in one wave", 2944, 2944, 4, false, 4},
		{"GPT-OSS-120B M=2 GEMM1: S=4 takes 2.79 waves", 5888, 2944, 8, true, 4},
		{"GPT-OSS-120B M=2 GEMM2: 1.39 waves, not GEMM1", 2944, 2944, 8, false, 4},
		{"the same grid as a GEMM1", 2944, 2944, 8, true, 2},
		{"DeepSeek-V3 M=1 GEMM1: S=4 takes 1.94 waves", 4096, 7168, 8, true, 4},
		{"DeepSeek-V3 M=1 GEMM2: S=2 in 1.7 waves", 7168, 2048, 8, false, 2},
		{"DeepSeek-V3 M=2 GEMM1: S=2 in 1.94 waves", 4096, 7168, 16, true, 2},
		{"DeepSeek-V3 M=2 GEMM2: S=2 in 3.4 waves", 7168, 2048, 16, false, 2},
		{"DeepSeek-V3 M=4 GEMM1: S=2 in 3.9 waves", 4096, 7168, 32, true, 2},
		{"DeepSeek-V3 M=4 GEMM2: S=2 would take 6.8 waves", 7168, 2048, 32, false, 1},
		{"DeepSeek-V3 M=8 GEMM1: S=2 would take 7.8 waves", 4096, 7168, 64, true, 1},
		{"GPT-OSS-120B M=8 GEMM1: S=2 in 5.6 waves", 5888, 2944, 32, true, 2},
		{"GPT-OSS-120B M=16 GEMM2: S=2 in 5.6 waves", 2944, 2944, 64, false, 2},
		{"GPT-OSS-120B M=16 GEMM1: S=2 would take 11 waves", 5888, 2944, 64, true, 1},
		{"Qwen3-30B-A3B M=32 GEMM1: S=2 in 6 waves exactly (3168 blocks)", 1536, 2048, 132, true, 2},
		{"Qwen3-30B-A3B M=64 GEMM1: S=2 would take 6.4 waves", 1536, 2048, 140, true, 1},
		{"Qwen3-30B-A3B M=1 GEMM1: S=4 in one wave", 1536, 2048, 8, true, 4},
		{"Qwen3-30B-A3B M=1 GEMM2: 6 groups, S=2 within 3 blocks an SM", 2048, 768, 8, false, 2},
		{"Qwen3-30B-A3B M=2 GEMM1: S=4 takes 1.45 waves", 1536, 2048, 16, true, 2},
		{"Qwen3-30B-A3B M=2 GEMM2: split 1", 2048, 768, 16, false, 1},
		{"1.5 waves exactly (792 blocks) takes S=2", 1056, 2048, 24, true, 2},
		{"past 1.5 waves (800 blocks) keeps S=4", 3200, 2048, 8, true, 4},
		{"just past one wave (544 blocks) takes S=2", 2176, 2048, 8, true, 2},
		{"one wave exactly (528 blocks) keeps S=4", 2112, 2048, 8, true, 4},
	} {
		if got := decSplitFor(c.n, c.kd, c.tiles, 132, c.first); got != c.want {
			t.Errorf("%s: decSplitFor(%d, %d, %d, 132, %v) = %d, want %d", c.name, c.n, c.kd, c.tiles, c.first, got, c.want)
		}
	}
}

// gemm1Rule is a case of a rule on the forward's GEMM1 (wideFirst, deepFirst): n rows of kd
// columns in tiles tiles, on an H200's 132 SMs.
type gemm1Rule struct {
	name  string
	n, kd int64
	tiles int
	want  bool
}

// checkGEMM1Rule runs rule's cases.
func checkGEMM1Rule(t *testing.T, name string, rule func(n, kd int64, tiles, sms int) bool, cases []gemm1Rule) {
	t.Helper()
	for _, c := range cases {
		if got := rule(c.n, c.kd, c.tiles, 132); got != c.want {
			t.Errorf("%s: %s(%d, %d, %d, 132) = %v, want %v", c.name, name, c.n, c.kd, c.tiles, got, c.want)
		}
	}
}

func TestWideFirst(t *testing.T) {
	checkGEMM1Rule(t, "wideFirst", wideFirst, []gemm1Rule{
		{"deepseekv3 one token", 4096, 7168, 8, true},    // split 4: 1024 blocks; 64-row split 2: 256
		{"deepseekv3 two tokens", 4096, 7168, 16, false}, // 64-row split 2: 512 blocks, over a wave
		{"gptoss120b one token", 5760, 2944, 4, false},   // split 4: 720 blocks, one and a half waves at most
		{"qwen3 one token", 1536, 2048, 8, false},        // split 4 fits in a wave
		{"few groups", 4096, 512, 8, false},              // 4 groups a row
	})
}

// TestDeepFirst checks deepFirst's rule on the bench shapes' GEMM1 (H200: 132 SMs).
func TestDeepFirst(t *testing.T) {
	checkGEMM1Rule(t, "deepFirst", deepFirst, []gemm1Rule{
		{"deepseekv3 two tokens", 4096, 7168, 16, true},       // 64-row split 2: 512 blocks, 1.3 waves
		{"deepseekv3 eight tokens", 4096, 7168, 64, true},     // 2048 blocks, 5.2 waves
		{"deepseekv3 sixteen tokens", 4096, 7168, 128, false}, // 4096 blocks, over six waves
		{"gptoss120b eight tokens", 5888, 2944, 32, false},    // 23 groups a row
		{"qwen3 eight tokens", 1536, 2048, 64, false},         // 16 groups a row
		{"31 groups a row", 4096, 3968, 16, false},
		{"32 groups a row", 4096, 4096, 16, true},
	})
}

// TestDeepSplit checks deepSplit on the GEMM1 grids deepFirst takes (H200: 132 SMs, 396 blocks a
// wave of the 64-row kernel).
func TestDeepSplit(t *testing.T) {
	for _, c := range []struct {
		name  string
		n     int64
		tiles int
		want  int
	}{
		{"deepseekv4-flash one token", 4096, 6, 4},   // split 4: 384 blocks
		{"qwen3-235b-a22b one token", 3072, 8, 4},    // 384 blocks
		{"deepseekv4-flash two tokens", 4096, 12, 2}, // split 4: 768 blocks, over a wave
		{"deepseekv3 two tokens", 4096, 16, 2},       // 1024 blocks
		{"qwen3-235b-a22b two tokens", 3072, 16, 2},  // 768 blocks
	} {
		if got := deepSplit(c.n, c.tiles, 132); got != c.want {
			t.Errorf("%s: deepSplit(%d, %d, 132) = %d, want %d", c.name, c.n, c.tiles, got, c.want)
		}
	}
}

// TestRouteSmallGrid checks moe_route_small's block count at the bench shapes' decode batches.
func TestRouteSmallGrid(t *testing.T) {
	cases := []struct {
		name string
		p    int
		k    int64
		want int
	}{
		{"gptoss120b one token", 4, 2944, 1},
		{"deepseekv3 one token", 8, 7168, 1}, // 56 KiB
		{"qwen3 four tokens", 32, 2048, 1},   // 64 KiB exactly
		{"gptoss120b eight tokens", 32, 2944, 6},
		{"qwen3 eight tokens", 64, 2048, 8},
		{"deepseekv3 eight tokens", 64, 7168, 28},
		{"capped at the SMs", 64, 65536, 132},
	}
	for _, c := range cases {
		if got := routeSmallGrid(c.p, c.k, 132); got != c.want {
			t.Errorf("%s: routeSmallGrid(%d, %d, 132) = %d, want %d", c.name, c.p, c.k, got, c.want)
		}
	}
}

// TestActWarps checks the activation kernel's block size at the bench shapes' batches (blocks:
// pairs times ceil(I/128 / 8)) on 132 SMs: a group a warp up to one wave of 8 blocks an SM.
func TestActWarps(t *testing.T) {
	cases := []struct {
		name   string
		blocks int
		want   int
	}{
		{"gptoss120b one token", 4 * 3, 8},
		{"qwen3 eight tokens", 64 * 1, 8},
		{"gptoss120b 64 tokens", 256 * 3, 8},
		{"one wave exactly", 8 * 132, 8},
		{"one block past the wave", 8*132 + 1, 4},
		{"deepseekv3 64 tokens", 512 * 2, 8},
		{"gptoss120b 4096 tokens", 16384 * 3, 4},
	}
	for _, c := range cases {
		if got := actWarps(c.blocks, 132); got != c.want {
			t.Errorf("%s: actWarps(%d, 132) = %d, want %d", c.name, c.blocks, got, c.want)
		}
	}
}

// TestPassTokens checks the split-1 decode kernels' tokens a pass at the bench shapes' batches
// around each threshold, on devices that take the 64-row kernels (wide) and on the others:
// GPT-OSS-120B (128 experts, top-4), DeepSeek-V3 (256, top-8) and Qwen3-30B-A3B (128, top-8).
func TestPassTokens(t *testing.T) {
	cases := []struct {
		name    string
		m, k, e int
		wide    bool
		small   bool
		want    int
	}{
		{"gptoss120b 128 tokens (4 rows), wide", 128, 4, 128, true, false, 8},
		{"gptoss120b 160 tokens (5 rows), wide", 160, 4, 128, true, false, 16},
		{"gptoss120b 160 tokens (5 rows)", 160, 4, 128, false, false, 8},
		{"gptoss120b 192 tokens (6 rows)", 192, 4, 128, false, false, 8},
		{"gptoss120b 224 tokens (7 rows)", 224, 4, 128, false, false, 16},
		{"gptoss120b 288 tokens (9 rows)", 288, 4, 128, false, false, 16},
		{"gptoss120b 320 tokens (10 rows)", 320, 4, 128, false, false, 32},
		{"gptoss120b 320 tokens (10 rows), wide", 320, 4, 128, true, false, 16},
		{"gptoss120b 416 tokens (13 rows), wide", 416, 4, 128, true, false, 16},
		{"deepseekv3 352 tokens (11 rows), wide", 352, 8, 256, true, false, 16},
		{"deepseekv3 384 tokens (12 rows), wide", 384, 8, 256, true, false, 16},
		{"deepseekv3 416 tokens (13 rows), wide", 416, 8, 256, true, false, 16},
		{"deepseekv3 448 tokens (14 rows), wide", 448, 8, 256, true, false, 32},
		{"deepseekv3 416 tokens (13 rows)", 416, 8, 256, false, false, 32},
		{"qwen3 80 tokens (5 rows)", 80, 8, 128, false, true, 8},
		{"qwen3 80 tokens (5 rows), wide", 80, 8, 128, true, true, 16},
		{"qwen3 160 tokens (10 rows)", 160, 8, 128, false, true, 32},
		{"qwen3 160 tokens (10 rows), wide", 160, 8, 128, true, true, 16},
		{"qwen3 192 tokens (12 rows), wide", 192, 8, 128, true, true, 16},
		{"qwen3 208 tokens (13 rows), wide", 208, 8, 128, true, true, 32},
	}
	for _, c := range cases {
		t32, t16 := passRows(c.wide, c.small)
		if got := passTokens(c.m*c.k, c.e, t16, t32); got != c.want {
			t.Errorf("%s: %d tokens a pass, want %d", c.name, got, c.want)
		}
	}
}
