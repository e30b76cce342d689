//go:build cudaops

package cudaops

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/internal/benchdata"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"gorgonia.org/cu"
)

func TestConformance(t *testing.T) {
	for _, k := range []struct {
		name string
		g    GEMMKernel
	}{{"auto", GEMMAuto}, {"tiled", GEMMTiled}, {"decode", GEMMDecode}, {"wgmma", GEMMWgmma}} {
		t.Run(k.name, func(t *testing.T) { conformance.TestBackend(t, Backend{Options: Options{GEMM: k.g}}) })
	}
}

func mustLayer(t *testing.T, w *moe.Weights, cfg moe.Config) *Layer {
	t.Helper()
	l, err := NewLayer(w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// kernelLayer is mustLayer with the grouped GEMM kernel k asked for.
func kernelLayer(t *testing.T, w *moe.Weights, cfg moe.Config, k GEMMKernel) *Layer {
	t.Helper()
	return optionsLayer(t, w, cfg, Options{GEMM: k})
}

// optionsLayer is mustLayer with the given options.
func optionsLayer(t *testing.T, w *moe.Weights, cfg moe.Config, o Options) *Layer {
	t.Helper()
	ml, err := Backend{Options: o}.NewLayer(w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ml.Close() })
	return ml.(*Layer)
}

// sameBits fails the test unless got and want hold the same float32 bits; what names the pair.
func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: output[%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
}

// nativeOutput runs b on the native backend, the comparison for the GPU's outputs.
func nativeOutput(t *testing.T, w *moe.Weights, cfg moe.Config, b *moe.Batch) []float32 {
	t.Helper()
	nl, err := native.NewLayer(w, cfg, native.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	return forward(t, nl, b, w.K)
}

func forward(t *testing.T, l moe.Layer, b *moe.Batch, k int) []float32 {
	t.Helper()
	out := make([]float32, b.M*k)
	if err := l.Forward(out, b); err != nil {
		t.Fatal(err)
	}
	return out
}

// download copies n values of type T from the device memory at p (the layer's workspace or
// weights) into a new slice, the layer's device bound to the calling thread for the copy.
func download[T any](t *testing.T, l *Layer, p cu.DevicePtr, n int) []T {
	t.Helper()
	v := make([]T, n)
	unbind, err := l.dev.bind()
	if err != nil {
		t.Fatal(err)
	}
	defer unbind()
	if err := cu.MemcpyDtoH(unsafe.Pointer(&v[0]), p, int64(n)*int64(unsafe.Sizeof(v[0]))); err != nil {
		t.Fatal(err)
	}
	return v
}

// forwardTwice runs the forward twice on the batch, fails the test unless the second output is
// bitwise the first (label names the case), and returns the first.
func forwardTwice(t *testing.T, l moe.Layer, b *moe.Batch, k int, label string) []float32 {
	t.Helper()
	got := forward(t, l, b, k)
	sameBits(t, label+": second run against the first", forward(t, l, b, k), got)
	return got
}

// nearNative fails the test unless got is within a rel L2 of 1e-4 of the native backend's output
// for the batch, and logs the distance.
func nearNative(t *testing.T, got []float32, w *moe.Weights, cfg moe.Config, b *moe.Batch) {
	t.Helper()
	e := conformance.RelL2(got, nativeOutput(t, w, cfg, b))
	t.Logf("rel L2 against native %.2e", e)
	if e > 1e-4 {
		t.Fatalf("rel L2 %.3e against native", e)
	}
}

// zeroWithoutLocalPair runs a batch of spec s with local pairs on l, so that the routing
// metadata the next batch replaces is not empty, then the batch b, which has no pair on a local
// expert, three times: every output must be 0.
func zeroWithoutLocalPair(t *testing.T, l *Layer, s conformance.Spec, b *moe.Batch) {
	t.Helper()
	full := s
	full.NegIDs = 0
	forward(t, l, &conformance.Generate(full).Batch, s.K)
	for run := range 3 {
		for i, v := range forward(t, l, b, s.K) {
			if v != 0 {
				t.Fatalf("run %d: output[%d] = %v without a local pair, want 0", run, i, v)
			}
		}
	}
}

// TestAgainstNative compares larger random calls with the native backend.
func TestAgainstNative(t *testing.T) {
	specs := []conformance.Spec{
		{M: 200, K: 1024, I: 512, E: 16, TopK: 4, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, HStd: 3, Seed: 1},
		{M: 1, K: 2944, I: 2944, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, HStd: 2, Seed: 2},
		{M: 64, K: 512, I: 256, E: 40, TopK: 8, GlobalExperts: 64, NegIDs: 0.2, Dup: true, ScaleFormat: moe.Float32, Seed: 3},
	}
	for _, s := range specs {
		c := conformance.Generate(s)
		l := mustLayer(t, &c.Weights, c.Config)
		got, want := forward(t, l, &c.Batch, s.K), nativeOutput(t, &c.Weights, c.Config, &c.Batch)
		e := conformance.RelL2(got, want)
		t.Logf("M=%d K=%d I=%d E=%d top%d: rel L2 against native %.2e, against float64 %.2e", s.M, s.K, s.I, s.E, s.TopK, e, conformance.RelL2(got, c.Expected))
		if e > 1e-3 || conformance.RelL2(got, c.Expected) > 1e-3 {
			t.Fatalf("rel L2 %.3e against native", e)
		}
	}
}

// TestModelShapes runs the hidden and intermediate sizes and top-k of models beyond the three
// benchmarked by default (fewer local experts than the models have, to keep the float64
// reference quick; an expert map places them among the model's experts) on every grouped GEMM:
// against native and float64 within the contract, twice (bitwise the same).
func TestModelShapes(t *testing.T) {
	for _, s := range []conformance.Spec{
		// DeepSeek-V4-Flash: K 4096, I 2048, top-6 of 256 experts; 16 of them local.
		{Name: "deepseekv4-flash", M: 48, K: 4096, I: 2048, E: 16, GlobalExperts: 256, TopK: 6, Activation: moe.SiLU, Seed: 31},
		{Name: "deepseekv4-flash/one token", M: 1, K: 4096, I: 2048, E: 16, TopK: 6, Activation: moe.SiLU, Seed: 32},
		// GPT-OSS-20B: GPT-OSS's sizes, top-4 of 32 experts; 8 of them local.
		{Name: "gptoss20b", M: 24, K: 2944, I: 2944, E: 8, GlobalExperts: 32, TopK: 4, Activation: moe.SwiGLUOAI,
			Clamp: true, Limit: 7, Bias: true, HStd: 2, Seed: 33},
		// Qwen3-235B-A22B: K 4096, I 1536, top-8 of 128 experts; 16 of them local.
		{Name: "qwen3-235b-a22b", M: 24, K: 4096, I: 1536, E: 16, GlobalExperts: 128, TopK: 8, Activation: moe.SiLU, Seed: 34},
	} {
		c := conformance.Generate(s)
		want := nativeOutput(t, &c.Weights, c.Config, &c.Batch)
		for _, k := range []GEMMKernel{GEMMAuto, GEMMDecode, GEMMWgmma} {
			label := fmt.Sprintf("%s M=%d %v", s.Name, s.M, k)
			l := kernelLayer(t, &c.Weights, c.Config, k)
			got := forwardTwice(t, l, &c.Batch, s.K, label)
			l.Close()
			e, e64 := conformance.RelL2(got, want), conformance.RelL2(got, c.Expected)
			t.Logf("%s: rel L2 against native %.2e, against float64 %.2e", label, e, e64)
			if e > 1e-3 || e64 > 1e-3 {
				t.Fatalf("%s: rel L2 %.3e against native, %.3e against float64", label, e, e64)
			}
		}
	}
}

// TestWgmma runs the wgmma GEMM on batches whose experts take one or several tiles of many
// widths, on both of its paths (folded and promoting activation scales), against native and
// float64, twice (bitwise the same).
func TestWgmma(t *testing.T) {
	for _, s := range []conformance.Spec{
		// ~150 rows per expert: one folded tile of 150 tokens.
		{M: 300, K: 512, I: 256, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, HStd: 2, Seed: 11},
		// float32 scales: the promoting path, in passes of 128 and 22 tokens.
		{M: 300, K: 384, I: 384, E: 4, TopK: 2, Activation: moe.SiLU, ScaleFormat: moe.Float32, Seed: 12},
		// small tiles of every width, skipped and repeated ids
		{M: 97, K: 256, I: 128, E: 16, TopK: 4, GlobalExperts: 20, NegIDs: 0.1, Dup: true, Seed: 13},
		// ~350 rows per expert: split into three tiles
		{M: 700, K: 256, I: 256, E: 2, TopK: 1, Activation: moe.SwiGLUStep, Seed: 15},
		// Rings that wrap (every stage waited free before it is refilled): I of 6 chunks into
		// GEMM2's 5 blocks of 128 rows (an odd number, as GPT-OSS's 23), then K of 8 chunks.
		{M: 300, K: 640, I: 768, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Bias: true, Seed: 17},
		{M: 200, K: 1024, I: 256, E: 2, TopK: 2, Seed: 18},
	} {
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMWgmma)
		if k := l.Kernel(s.M, s.TopK); k != GEMMWgmma {
			t.Fatalf("M=%d: kernel %d, want the wgmma GEMM", s.M, k)
		}
		got := forwardTwice(t, l, &c.Batch, s.K, fmt.Sprintf("M=%d K=%d", s.M, s.K))
		want := nativeOutput(t, &c.Weights, c.Config, &c.Batch)
		l.Close()
		e, e64 := conformance.RelL2(got, want), conformance.RelL2(got, c.Expected)
		t.Logf("M=%d K=%d I=%d E=%d top%d: rel L2 against native %.2e, against float64 %.2e", s.M, s.K, s.I, s.E, s.TopK, e, e64)
		if e > 1e-4 || e64 > 1e-3 {
			t.Fatalf("rel L2 %.3e against native, %.3e against float64", e, e64)
		}
	}
}

// TestWgmmaSmallTiles runs the wgmma path on the small-tile folding kernel (moe_gemm_wg4s, its
// tiles capped at 32 tokens, wg4sBlocks blocks an SM) the way testWgmmaTiles does: tiles of every
// width (8 … 32) with -1 ids, repeats and an expert map; experts of 150 rows split into five
// tiles; a K of 9 chunks (the rings wrap) and an I of 5 chunks; float32 scales (the promoting
// kernel over the capped tiles). Then one layer runs a batch on moe_gemm_wg4 and smaller ones on
// moe_gemm_wg4m and moe_gemm_wg4s: the capped tiles of fewer pairs outnumber the larger batch's,
// which its workspace must hold (wgfTilesUpTo).
func TestWgmmaSmallTiles(t *testing.T) {
	testWgmmaTiles(t, "moe_gemm_wg4s", wg4sBlocks, func(l *Layer) { l.wgSmallRows = 1 << 20 }, []conformance.Spec{
		{Name: "every width, map", M: 97, K: 256, I: 128, E: 16, TopK: 4, GlobalExperts: 20, NegIDs: 0.1, Dup: true, Seed: 13},
		{Name: "150 rows an expert", M: 300, K: 512, I: 256, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, HStd: 2, Seed: 11},
		{Name: "rings that wrap", M: 64, K: 1152, I: 640, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 19},
		{Name: "float32 scales", M: 100, K: 384, I: 384, E: 4, TopK: 2, Activation: moe.SiLU, ScaleFormat: moe.Float32, Seed: 12},
	})
	t.Run("workspace", func(t *testing.T) {
		s := conformance.Spec{M: 200, K: 256, I: 128, E: 8, TopK: 2, Activation: moe.SwiGLUOAI, Seed: 20}
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMWgmma)
		defer l.Close()
		l.wgSmallRows, l.wgMidRows = 24, 44
		// 50 rows an expert, on moe_gemm_wg4; it sizes the workspace.
		if n := planRuns(mustPlan(t, l, s.M, s.TopK), "moe_gemm_wg4"); n != 2 {
			t.Fatalf("%d GEMMs on moe_gemm_wg4 at %d tokens, want 2", n, s.M)
		}
		nearNative(t, forward(t, l, &c.Batch, s.K), &c.Weights, c.Config, &c.Batch)
		// The first 176 tokens (44 rows an expert, on moe_gemm_wg4m) and the first 80 (20 rows,
		// on moe_gemm_wg4s): more tiles than the whole batch, in its workspace.
		for _, sub := range []struct {
			m      int
			kernel string
		}{{176, "moe_gemm_wg4m"}, {80, "moe_gemm_wg4s"}} {
			b := c.Batch.Slice(s.K, 0, sub.m)
			if n := planRuns(mustPlan(t, l, b.M, s.TopK), sub.kernel); n != 2 {
				t.Fatalf("%d GEMMs on %s at %d tokens, want 2", n, sub.kernel, sub.m)
			}
			if l.wgfTiles(b.M*s.TopK) <= l.wgfTiles(s.M*s.TopK) {
				t.Fatalf("%d tiles at %d tokens, %d at %d: the case needs more at %d", l.wgfTiles(b.M*s.TopK), sub.m, l.wgfTiles(s.M*s.TopK), s.M, sub.m)
			}
			nearNative(t, forward(t, l, b, s.K), &c.Weights, c.Config, b)
		}
	})
}

// TestWgmmaMidTiles runs the wgmma path on the middle folding kernel (moe_gemm_wg4m, 384 rows a
// block, its tiles capped at 64 tokens) the same way: tiles of every width (16 … 64) with -1
// ids, repeats and an expert map, and experts of more than 64 rows split; experts of 150 rows;
// a K of 9 chunks and GEMMs of 1280 and 256 rows (row blocks of 128 and 256 rows, whose other
// warpgroups only join the barriers); float32 scales.
func TestWgmmaMidTiles(t *testing.T) {
	testWgmmaTiles(t, "moe_gemm_wg4m", 1, func(l *Layer) { l.wgSmallRows, l.wgMidRows = 0, 1<<20 }, []conformance.Spec{
		{Name: "every width, map", M: 200, K: 256, I: 128, E: 16, TopK: 4, GlobalExperts: 20, NegIDs: 0.1, Dup: true, Seed: 23},
		{Name: "150 rows an expert", M: 300, K: 512, I: 256, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, HStd: 2, Seed: 11},
		{Name: "rings that wrap", M: 96, K: 1152, I: 640, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 19},
		{Name: "float32 scales", M: 100, K: 384, I: 384, E: 4, TopK: 2, Activation: moe.SiLU, ScaleFormat: moe.Float32, Seed: 12},
	})
}

// testWgmmaTiles runs each spec on the wgmma path with force applied (the plan must take kernel
// for both GEMMs, perSM blocks an SM): twice (bitwise the same), near native, and bitwise against
// the same layer on moe_gemm_wg4 (each output value is the same sums in the same order; only the
// tiles' widths and splits differ).
func testWgmmaTiles(t *testing.T, kernel string, perSM int, force func(*Layer), specs []conformance.Spec) {
	t.Helper()
	for _, s := range specs {
		t.Run(s.Name, func(t *testing.T) {
			c := conformance.Generate(s)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMWgmma)
			defer l.Close()
			force(l)
			pl := mustPlan(t, l, s.M, s.TopK)
			if n := planRuns(pl, kernel); n != 2 {
				t.Fatalf("%d GEMMs on %s, want 2", n, kernel)
			}
			if pl[0].BlocksPerSM != perSM {
				t.Fatalf("%s holds %d blocks an SM, want %d", kernel, pl[0].BlocksPerSM, perSM)
			}
			got := forwardTwice(t, l, &c.Batch, s.K, kernel)
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
			l.wgSmallRows, l.wgMidRows = 0, 0
			if n := planRuns(mustPlan(t, l, s.M, s.TopK), "moe_gemm_wg4"); n != 2 {
				t.Fatalf("%d GEMMs on moe_gemm_wg4, want 2", n)
			}
			sameBits(t, kernel+" against moe_gemm_wg4", got, forward(t, l, &c.Batch, s.K))
		})
	}
}

// TestLargeBatch runs batches of more than scatterPairs routed pairs, where the routing block only
// counts the pairs and moe_route_scatter places them, on every GEMM: the routing metadata against
// the host's, the output within the contract of the float64 reference and of the native backend,
// and a second run against the first. (Against the
// native backend the output is not bitwise the same at this size: among some 10^6 activations a
// few round to the other FP8 neighbour, a last-bit difference of the activation function moving
// a value across a rounding boundary, which changes that token's whole output row by about one
// FP8 step of one intermediate value; rel. L2 about 3e-4 in the second case here.)
func TestLargeBatch(t *testing.T) {
	for _, s := range []conformance.Spec{
		// 5200 pairs, a last chunk of 80
		{M: 2600, K: 128, I: 128, E: 16, TopK: 2, Seed: 23},
		// ids outside the local experts, -1 ids and repeats
		{M: 2600, K: 128, I: 128, E: 16, GlobalExperts: 20, TopK: 2, NegIDs: 0.05, Dup: true, Bias: true,
			Activation: moe.SwiGLUOAI, Seed: 21},
		// 8800 pairs: more chunks than one round of loads
		{M: 1100, K: 256, I: 128, E: 64, TopK: 8, Seed: 22},
	} {
		P := s.M * s.TopK
		if P <= scatterPairs {
			t.Fatalf("M=%d top%d: %d pairs, want more than %d", s.M, s.TopK, P, scatterPairs)
		}
		c := conformance.Generate(s)
		want := nativeOutput(t, &c.Weights, c.Config, &c.Batch)
		// The host's routing: native.Permutation with the device layout's segment alignment.
		var perm native.Permutation
		perm.Permute(c.Batch.TopKIDs, s.M, s.TopK, &c.Config, s.E, segmentRows)
		inv := perm.InvPerm
		for _, k := range []GEMMKernel{GEMMDecode, GEMMWgmma, GEMMTiled} {
			l := kernelLayer(t, &c.Weights, c.Config, k)
			got := forwardTwice(t, l, &c.Batch, s.K, fmt.Sprintf("M=%d top%d GEMM %v", s.M, s.TopK, k))
			gotInv := download[int32](t, l, l.ws.invPerm, P)
			l.Close()
			for i := range inv {
				if gotInv[i] != inv[i] {
					t.Fatalf("M=%d top%d GEMM %v: inv_perm[%d] = %d, want %d", s.M, s.TopK, k, i, gotInv[i], inv[i])
				}
			}
			e, e64 := conformance.RelL2(got, want), conformance.RelL2(got, c.Expected)
			t.Logf("M=%d top%d E=%d GEMM %v: rel L2 against native %.2e, against float64 %.2e", s.M, s.TopK, s.E, k, e, e64)
			if e > 1e-3 || e64 > 1e-3 {
				t.Fatalf("M=%d top%d GEMM %v: rel L2 %.3e against native, %.3e against float64", s.M, s.TopK, k, e, e64)
			}
		}
	}
}

// TestPermuteScales checks the wgmma path's gather of the tokens' scales (moe_permute_scales)
// row by row after a forward: every row of the layout below offsets[E] holds the K/128 scales of
// its pair's token, a padding row zeros. At K = 2944 a row has 23 scales, so a block's run of rows
// (44 of them, 1012 scales) is not a multiple of the threads' stride; the batches take one block,
// several, and the spread routing (more than scatterPairs pairs), with -1 ids and repeats.
func TestPermuteScales(t *testing.T) {
	for _, s := range []conformance.Spec{
		{M: 3, K: 2944, I: 128, E: 4, TopK: 2, Seed: 31},
		{M: 300, K: 2944, I: 128, E: 8, TopK: 4, NegIDs: 0.05, Dup: true, Seed: 32},
		{M: 1100, K: 256, I: 128, E: 64, TopK: 8, Seed: 33},
	} {
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMWgmma)
		forward(t, l, &c.Batch, s.K)
		P, G := s.M*s.TopK, s.K/128
		rows, _ := l.bounds(P)
		offsets := download[int32](t, l, l.ws.offsets, s.E+1)
		rowPair := download[int32](t, l, l.ws.rowPair, rows)
		got := download[float32](t, l, l.ws.a1sPerm, rows*G)
		real, pad := 0, 0
		for r := range int(offsets[s.E]) {
			pair := int(rowPair[r])
			for g := range G {
				want := float32(0)
				if pair >= 0 {
					want = c.Batch.A1qScale[pair/s.TopK*G+g]
				}
				if math.Float32bits(got[r*G+g]) != math.Float32bits(want) {
					t.Fatalf("M=%d K=%d: row %d (pair %d) scale %d = %v, want %v", s.M, s.K, r, pair, g, got[r*G+g], want)
				}
			}
			if pair >= 0 {
				real++
			} else {
				pad++
			}
		}
		if real == 0 || pad == 0 {
			t.Fatalf("M=%d K=%d: %d real and %d padding rows, want both", s.M, s.K, real, pad)
		}
		t.Logf("M=%d K=%d: %d real and %d padding rows", s.M, s.K, real, pad)
	}
}

// TestWgmmaScaleSpread gives one token a group scale 2^-20 times its others: the tokens' scales
// cannot be folded exactly into FP16, so that tile takes the promoting path, with the right result.
func TestWgmmaScaleSpread(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 200, K: 512, I: 256, E: 4, TopK: 2, Seed: 16})
	b := c.Batch
	b.A1qScale = append([]float32(nil), b.A1qScale...)
	b.A1qScale[0] *= 1.0 / (1 << 20)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMWgmma)
	nearNative(t, forward(t, l, &b, 512), &c.Weights, c.Config, &b)
}

// TestWgmmaFoldFallback gives one weight row a nonzero block 30 binades below its largest:
// the fold cannot hold it exactly, so the layer runs the tiled kernel, with the right result.
func TestWgmmaFoldFallback(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 200, K: 256, I: 128, E: 4, TopK: 2, Seed: 14})
	w := c.Weights
	w.W13 = append([]uint8(nil), w.W13...)
	w.W13Scale = append([]uint8(nil), w.W13Scale...)
	for i := 16; i < 32; i++ {
		w.W13[i] = 0x22 // row 0, block 1: every value 1
	}
	w.W13Scale[0] = 140
	w.W13Scale[1] = 110
	l := kernelLayer(t, &w, c.Config, GEMMWgmma)
	if k := l.Kernel(200, 2); k != GEMMTiled {
		t.Fatalf("kernel %d, want the tiled GEMM for weights the fold cannot hold", k)
	}
	nearNative(t, forward(t, l, &c.Batch, 256), &w, c.Config, &c.Batch)
}

// TestWgmmaTinyScales runs the folding kernels where the epilogue's power of two 2^(e - 127),
// e = R + x - 127 (R a weight row's fold reference, x the largest scale exponent of its token,
// both biased), is not a normal float, so that wg4_store takes wg_rescale's second form
// (ldexpf). Each case lowers one GEMM's exponents by d binades (d about 115, chosen from the
// case's exponents so that e straddles 1), every scale still a normal power of two (the tiles
// fold), and is checked to hold token and four-row pairs of each kind: every power of two
// subnormal (the second form), some (a choice per value), none. GEMM1: the tokens' scales
// divided by 2^d; its outputs (about 2^-115) lie below the activation's amax floor of 1e-10, so
// the layer's output is 0 and GEMM1's output is checked against the host's float64 GEMM1.
// GEMM2: W2's scale bytes less d; its outputs reach the layer's output, checked against native
// and the float64 reference. The device's fold references against the host's; every case on
// moe_gemm_wg4, moe_gemm_wg4m and moe_gemm_wg4s, each twice (bitwise) and bitwise against
// moe_gemm_wg4.
func TestWgmmaTinyScales(t *testing.T) {
	s := conformance.Spec{M: 300, K: 512, I: 256, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Seed: 41}
	c := conformance.Generate(s)
	w, P := &c.Weights, s.M*s.TopK
	R1 := foldRefs(w.W13, w.W13Scale, s.E*2*s.I, s.K)
	R2 := foldRefs(w.W2, w.W2Scale, s.E*s.K, s.I)
	l := kernelLayer(t, w, c.Config, GEMMWgmma)
	sameRefs(t, "W13", download[uint8](t, l, l.ref13, len(R1)), R1)
	sameRefs(t, "W2", download[uint8](t, l, l.ref2, len(R2)), R2)
	// The routed rows (the same for every batch of these ids) and GEMM2's tokens' scales.
	forward(t, l, &c.Batch, s.K)
	rows, _ := l.bounds(P)
	rowPair := download[int32](t, l, l.ws.rowPair, rows)
	n := int(download[int32](t, l, l.ws.offsets, s.E+1)[s.E])
	a2s := download[float32](t, l, l.ws.a2s, n*s.I/128)

	t.Run("GEMM1", func(t *testing.T) {
		b := c.Batch
		x := rowExponents(b.A1qScale, s.K/128)
		var pairs [][2]int
		for p, id := range b.TopKIDs {
			pairs = append(pairs, [2]int{int(id), x[p/s.TopK]})
		}
		d := lowering(t, R1, 2*s.I, pairs)
		b.A1qScale = append([]float32(nil), b.A1qScale...)
		for i, v := range b.A1qScale {
			b.A1qScale[i] = float32(math.Ldexp(float64(v), -d))
			if e := biasedExp(b.A1qScale[i]); e < 1 || e != biasedExp(v)-d {
				t.Fatalf("token scale %d: %v / 2^%d has exponent %d, want a normal float", i, v, d, e)
			}
		}
		// GEMM1's output row r (pair rowPair[r]) in float64 from the decoded operands.
		want := make([]float64, n*2*s.I)
		wrow, xrow := make([]float32, s.K), make([]float64, s.K)
		for r := range n {
			p := int(rowPair[r])
			if p < 0 {
				continue
			}
			tok, e := p/s.TopK, int(b.TopKIDs[p])
			for j := range xrow {
				xrow[j] = float64(native.DecodeE4M3(b.A1q[tok*s.K+j])) * float64(b.A1qScale[tok*s.K/128+j/128])
			}
			for o := range 2 * s.I {
				row := e*2*s.I + o
				native.DequantizeMXFP4(wrow, w.W13[row*s.K/2:(row+1)*s.K/2], w.W13Scale[row*s.K/32:(row+1)*s.K/32])
				var acc float64
				for j, v := range wrow {
					acc += float64(v) * xrow[j]
				}
				want[r*2*s.I+o] = acc
			}
		}
		onFoldingKernels(t, l, s, func(name string) []float32 {
			got := forwardTwice(t, l, &b, s.K, name)
			nearNative(t, got, w, c.Config, &b)
			got = download[float32](t, l, l.ws.h, n*2*s.I)
			for r := range n {
				if rowPair[r] < 0 { // padding rows: never read
					clear(got[r*2*s.I : (r+1)*2*s.I])
				}
			}
			e := conformance.RelL2(got, want)
			t.Logf("%s: GEMM1's output, largest %.3g, rel L2 against float64 %.2e", name, slices.Max(got), e)
			if e > 1e-5 {
				t.Fatalf("%s: GEMM1's output rel L2 %.3e against float64", name, e)
			}
			return got
		})
	})

	t.Run("GEMM2", func(t *testing.T) {
		// The real rows' exponents (the padding rows' scales are never written).
		x := rowExponents(a2s, s.I/128)
		var pairs [][2]int
		for r, p := range rowPair[:n] {
			if p >= 0 {
				pairs = append(pairs, [2]int{int(c.Batch.TopKIDs[p]), x[r]})
			}
		}
		d := lowering(t, R2, s.K, pairs)
		w2 := *w
		w2.W2Scale = append([]uint8(nil), w.W2Scale...)
		for i, v := range w2.W2Scale {
			if int(v)-d < 1 {
				t.Fatalf("W2 scale %d: byte %d less %d is not a normal power of two", i, v, d)
			}
			w2.W2Scale[i] = v - uint8(d)
		}
		l2 := kernelLayer(t, &w2, c.Config, GEMMWgmma)
		want := make([]float32, s.M*s.K)
		for i, v := range conformance.Reference(&w2, &c.Config, &c.Batch) {
			want[i] = float32(v)
		}
		onFoldingKernels(t, l2, s, func(name string) []float32 {
			got := forwardTwice(t, l2, &c.Batch, s.K, name)
			for r, v := range rowExponents(download[float32](t, l2, l2.ws.a2s, len(a2s)), s.I/128) {
				if rowPair[r] >= 0 && v != x[r] {
					t.Fatalf("%s: row %d's GEMM2 token exponent %d, want %d (as with W2 unchanged)", name, r, v, x[r])
				}
			}
			nearNative(t, got, &w2, c.Config, &c.Batch)
			e := conformance.RelL2(got, want)
			t.Logf("%s: output largest %.3g, rel L2 against float64 %.2e", name, slices.Max(got), e)
			if e > 1e-3 {
				t.Fatalf("%s: rel L2 %.3e against float64", name, e)
			}
			return got
		})
	})
}

// onFoldingKernels runs check on l with the plan forced onto each folding kernel in turn
// (moe_gemm_wg4, moe_gemm_wg4m, moe_gemm_wg4s; both GEMMs), and fails the test unless each
// kernel's result is bitwise moe_gemm_wg4's.
func onFoldingKernels(t *testing.T, l *Layer, s conformance.Spec, check func(kernel string) []float32) {
	t.Helper()
	defer func() { l.wgSmallRows, l.wgMidRows = 0, 0 }()
	var first []float32
	for _, k := range []struct {
		name       string
		small, mid int
	}{{"moe_gemm_wg4", 0, 0}, {"moe_gemm_wg4m", 0, 1 << 20}, {"moe_gemm_wg4s", 1 << 20, 0}} {
		l.wgSmallRows, l.wgMidRows = k.small, k.mid
		if n := planRuns(mustPlan(t, l, s.M, s.TopK), k.name); n != 2 {
			t.Fatalf("%d GEMMs on %s, want 2", n, k.name)
		}
		got := check(k.name)
		if first == nil {
			first = got
		} else {
			sameBits(t, k.name+" against moe_gemm_wg4", got, first)
		}
	}
}

// lowering returns the binades d by which to lower a GEMM's exponents so that its token and
// four-row pairs hold the most of the rarest of three kinds: e = R + x - 127 - d below 1 for all
// four rows (every power of two subnormal), for some, for none (R the fold references, rowsPer
// rows an expert; pairs of an expert and its token's largest biased scale exponent x). It fails
// the test unless each kind occurs.
func lowering(t *testing.T, R []int, rowsPer int, pairs [][2]int) int {
	t.Helper()
	kinds := func(d int) (k [3]int) {
		for _, p := range pairs {
			v := p[1] - 127 - d
			for q := p[0] * rowsPer; q < (p[0]+1)*rowsPer; q += 4 {
				k[btoi(slices.Min(R[q:q+4])+v < 1)+btoi(slices.Max(R[q:q+4])+v < 1)]++
			}
		}
		return k
	}
	best, bestMin := 0, -1
	for d := range 254 {
		if k := kinds(d); slices.Min(k[:]) > bestMin {
			best, bestMin = d, slices.Min(k[:])
		}
	}
	k := kinds(best)
	t.Logf("d = %d: %d token and four-row pairs with every power of two subnormal, %d with some, %d with none", best, k[2], k[1], k[0])
	if bestMin == 0 {
		t.Fatalf("no lowering gives pairs of each kind")
	}
	return best
}

// biasedExp returns a float32's biased exponent.
func biasedExp(f float32) int { return int(math.Float32bits(f)>>23) & 0xff }

// rowExponents returns each row's largest biased exponent of scales (rows of g).
func rowExponents(scales []float32, g int) []int {
	x := make([]int, len(scales)/g)
	for i, v := range scales {
		x[i/g] = max(x[i/g], biasedExp(v))
	}
	return x
}

// sameRefs fails the test unless the device's fold references are the host's.
func sameRefs(t *testing.T, what string, got []uint8, want []int) {
	t.Helper()
	for r, v := range got {
		if int(v) != want[r] {
			t.Fatalf("%s row %d: device fold reference %d, want %d", what, r, v, want[r])
		}
	}
}

// foldRefs returns the wgmma GEMM's fold reference of each of rows MXFP4 rows of k values (packed
// codes, E8M0 scales): the largest scale byte among the row's blocks that hold a nonzero value,
// 127 for a row of zeros.
func foldRefs(packed, scales []uint8, rows, k int) []int {
	R := make([]int, rows)
	for r := range R {
		R[r] = 127
		best := -1
		for blk := range k / 32 {
			for _, p := range packed[r*k/2+16*blk : r*k/2+16*blk+16] {
				if p&0x77 != 0 { // a code other than ±0
					best = max(best, int(scales[r*k/32+blk]))
					break
				}
			}
		}
		if best >= 0 {
			R[r] = best
		}
	}
	return R
}

// TestDecodeScales runs the streaming GEMM on weights without and with special E8M0 scale
// bytes (0: 2^-127, 255: NaN), which take its exact scale conversion, against native: the same
// values, NaN in the same outputs.
func TestDecodeScales(t *testing.T) {
	for _, tc := range []struct {
		name  string
		set   map[int]uint8 // W13Scale index -> byte
		exact bool
	}{
		{"plain", nil, false},
		{"zero scale", map[int]uint8{3: 0, 70: 0}, true},
		{"NaN scale", map[int]uint8{5: 255}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range []int{1, 5, 40} {
				c := conformance.Generate(conformance.Spec{M: m, K: 512, I: 256, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Bias: true, Seed: 21})
				w := c.Weights
				w.W13Scale = append([]uint8(nil), w.W13Scale...)
				for i, v := range tc.set {
					w.W13Scale[i] = v
				}
				l := kernelLayer(t, &w, c.Config, GEMMDecode)
				if l.exactScales != tc.exact {
					t.Fatalf("exactScales %v, want %v", l.exactScales, tc.exact)
				}
				got := forward(t, l, &c.Batch, 512)
				l.Close()
				want := nativeOutput(t, &w, c.Config, &c.Batch)
				var g, n []float32
				nans := 0
				for i := range got {
					if gn, wn := math.IsNaN(float64(got[i])), math.IsNaN(float64(want[i])); gn || wn {
						if gn != wn {
							t.Fatalf("M=%d output[%d] = %v, native %v", m, i, got[i], want[i])
						}
						nans++
						continue
					}
					g, n = append(g, got[i]), append(n, want[i])
				}
				if nan := tc.set[5] == 255; (!nan && nans > 0) || (nan && m == 40 && nans == 0) {
					t.Fatalf("M=%d: %d NaN outputs", m, nans)
				}
				if e := conformance.RelL2(g, n); e > 1e-4 {
					t.Fatalf("M=%d: rel L2 %.3e against native", m, e)
				}
			}
		})
	}
}

// TestDecodeSplits runs the streaming GEMM at batch sizes whose grids split each 32 weight rows
// over 4, 2 and 1 warps (the first batch size of each, which depends on the device's SM count),
// against native and twice (bitwise the same).
func TestDecodeSplits(t *testing.T) {
	seen := map[int]bool{}
	s := conformance.Spec{M: 1, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 31}
	probe := conformance.Generate(s)
	pl := kernelLayer(t, &probe.Weights, probe.Config, GEMMDecode) // for the split of each M
	for _, m := range []int{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096} {
		_, tiles := pl.bounds(m * s.TopK)
		split := pl.decSplit(int64(2*s.I), int64(s.K), tiles, true)
		if seen[split] {
			continue
		}
		seen[split] = true
		s.M = m
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
		l.splitRows = 64 // the 64-row split kernel on every card, at every grid
		got := forwardTwice(t, l, &c.Batch, s.K, fmt.Sprintf("M=%d", m))
		if split > 1 {
			// The split kernels of 64 and 32 rows a warp add the same terms in the same order.
			l.splitRows = 32
			sameBits(t, fmt.Sprintf("M=%d, split %d, 64-row kernel against the 32-row one", m, split), got, forward(t, l, &c.Batch, s.K))
		}
		l.Close()
		t.Logf("M=%d: split %d", m, split)
		nearNative(t, got, &c.Weights, c.Config, &c.Batch)
	}
	if len(seen) != 3 {
		t.Fatalf("splits %v, want 4, 2 and 1", seen)
	}
}

// TestDecodeWideFirst runs a one-token batch whose GEMM1 at split 4 would take more than one and
// a half waves of the 32-row kernel (2I = 4096 rows, K = 2048, eight tiles), so that it takes the
// 64-row split kernel at split 2 (wideFirst), against native and twice (bitwise the same). It
// skips on devices where the rule does not apply (their SM count, or the 32-row kernels only).
func TestDecodeWideFirst(t *testing.T) {
	s := conformance.Spec{M: 1, K: 2048, I: 2048, E: 8, TopK: 8, Activation: moe.SiLU, Bias: true, Seed: 43}
	c := conformance.Generate(s)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
	defer l.Close()
	_, tiles := l.bounds(s.M * s.TopK)
	if split1, _, wide1, _ := l.decSplits(tiles, s.M*s.TopK); split1 != 2 || !wide1 {
		t.Skipf("GEMM1 takes split %d (64-row kernel %v) on this device (%d SMs): wideFirst does not apply", split1, wide1, l.dev.SMs)
	}
	nearNative(t, forwardTwice(t, l, &c.Batch, s.K, "forward"), &c.Weights, c.Config, &c.Batch)
}

// TestDecodeDeepFirst runs a two-token batch of K = 4096 (32 column groups a row) whose GEMM1
// and GEMM2 take split 2 on the 32-row kernel by the grid-fill measure (2I = 4096 rows, sixteen
// tiles), so that both take the 64-row split kernel (deepFirst), against native and twice
// (bitwise the same). It skips on devices where the rule does not apply.
func TestDecodeDeepFirst(t *testing.T) {
	s := conformance.Spec{M: 2, K: 4096, I: 2048, E: 16, TopK: 8, Activation: moe.SiLU, Bias: true, Seed: 47}
	c := conformance.Generate(s)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
	defer l.Close()
	_, tiles := l.bounds(s.M * s.TopK)
	split1, split2, wide1, wide2 := l.decSplits(tiles, s.M*s.TopK)
	if !deepFirst(int64(2*s.I), int64(s.K), tiles, l.dev.SMs) || l.splitRows != 0 {
		t.Skipf("deepFirst does not apply on this device (%d SMs, split rows %d)", l.dev.SMs, l.splitRows)
	}
	if split1 != 2 || !wide1 || split2 != 2 || !wide2 {
		t.Fatalf("GEMM1 split %d (64-row %v), GEMM2 split %d (64-row %v); want both at split 2 on the 64-row kernel", split1, wide1, split2, wide2)
	}
	nearNative(t, forwardTwice(t, l, &c.Batch, s.K, "forward"), &c.Weights, c.Config, &c.Batch)
}

// TestDecodeWide runs the streaming GEMM at batch sizes of more than dec16Rows routed rows per
// expert, against native and twice (bitwise the same): M = 64 (8 rows an expert) on the 16-token
// kernel (passes of 16 tokens, the last one partial; moe_gemm_dec16w on devices that take the
// 64-row kernels, else moe_gemm_dec16s), M = 80 (10 rows) on the 16-token one there, else on the
// 32-token one with short passes, and M = 200 and 768 (25 and 96 rows, in tiles of at most 32)
// on the 32-token one.
func TestDecodeWide(t *testing.T) {
	wide := 0 // GEMMs that ran the 16-token kernel
	for _, m := range []int{64, 80, 200, 768} {
		s := conformance.Spec{M: m, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 37}
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
		p := m * s.TopK
		pl := mustPlan(t, l, m, s.TopK)
		wide += planRuns(pl, "moe_gemm_dec16s") + planRuns(pl, "moe_gemm_dec16w")
		got := forwardTwice(t, l, &c.Batch, s.K, fmt.Sprintf("M=%d", m))
		l.Close()
		t.Logf("M=%d (%d rows an expert; GEMM1 %v; GEMM2 %v)", m, p/s.E, pl[0], pl[1])
		nearNative(t, got, &c.Weights, c.Config, &c.Batch)
	}
	if wide == 0 {
		t.Fatalf("no GEMM ran the 16-token kernel (split 1 with more than %d rows an expert)", dec16Rows)
	}
}

// TestDecode32 runs the streaming GEMM at batch sizes of more than wide32RowsSmall routed rows
// per expert (its experts are small) on the 32-token kernel (one pass of up to 32 tokens a tile,
// partial ones included; M = 416 and 512, 13 and 16 rows an expert, on its instance with short
// passes, moe_gemm_dec32s, M = 640-1024 on moe_gemm_dec32) against native, twice (bitwise the
// same), and against the 16-token kernel, which does each token's arithmetic in the same order
// (bitwise the same). 128 experts, so that the grids are large enough for split 1 (on 132 SMs).
func TestDecode32(t *testing.T) {
	n32, n32s := 0, 0 // GEMMs that ran the 32-token kernel without and with short passes
	for _, m := range []int{416, 512, 640, 768, 1024} {
		s := conformance.Spec{M: m, K: 1024, I: 512, E: 128, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 41}
		c := conformance.Generate(s)
		l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
		p := m * s.TopK
		pl := mustPlan(t, l, m, s.TopK)
		n32 += planRuns(pl, "moe_gemm_dec32")
		n32s += planRuns(pl, "moe_gemm_dec32s")
		got := forwardTwice(t, l, &c.Batch, s.K, fmt.Sprintf("M=%d", m))
		l.tok32Rows = math.MaxInt32
		sameBits(t, fmt.Sprintf("M=%d, the 16-token kernel against the 32-token one", m), forward(t, l, &c.Batch, s.K), got)
		l.Close()
		t.Logf("M=%d (%d rows an expert; GEMM1 %v; GEMM2 %v)", m, p/s.E, pl[0], pl[1])
		nearNative(t, got, &c.Weights, c.Config, &c.Batch)
	}
	if n32 == 0 || n32s == 0 {
		t.Fatalf("%d GEMMs ran the 32-token kernel and %d its instance with short passes (split 1 with more than %d rows an expert, at most %d for short passes), want both",
			n32, n32s, dec32Rows, dec32sRows)
	}
}

// scaleLayer returns a decode layer on a copy of w whose W13Scale[i13] and W2Scale[i2] are 0 (a
// special E8M0 byte, which takes the streaming GEMM's exact scale conversion) when exact, else on
// w itself, with the weights it holds; it fails the test unless the layer takes the exact
// conversion exactly then.
func scaleLayer(t *testing.T, w moe.Weights, cfg moe.Config, exact bool, i13, i2 int) (*Layer, *moe.Weights) {
	t.Helper()
	if exact {
		w.W13Scale = append([]uint8(nil), w.W13Scale...)
		w.W2Scale = append([]uint8(nil), w.W2Scale...)
		w.W13Scale[i13], w.W2Scale[i2] = 0, 0
	}
	l := kernelLayer(t, &w, cfg, GEMMDecode)
	if l.exactScales != exact {
		t.Fatalf("exactScales %v, want %v", l.exactScales, exact)
	}
	return l, &w
}

// decGEMM is one of a decode forward's streaming GEMMs: its name, weight rows and split.
type decGEMM struct {
	name  string
	n     int64
	split int
}

// mustTake fails the test unless decKernel gives each of gemms (of a batch of p routed pairs,
// not on the 64-row split kernel) the kernel want; when says under which setting.
func mustTake(t *testing.T, l *Layer, gemms []decGEMM, p int, want cu.Function, when string) {
	t.Helper()
	for _, g := range gemms {
		if fn, _, _ := l.decKernel(g.n, g.split, p, false); fn != want {
			t.Fatalf("%s (%d rows, split %d) %s takes %s, want %s", g.name, g.n, g.split, when, l.dev.names[fn], l.dev.names[want])
		}
	}
}

// TestDecodeWideRows runs split-1 batches of at most dec16Rows rows an expert on the 64-row
// kernel (moe_gemm_dec1w, wideRows lowered to 0 so that small GEMMs take it), on a GEMM whose
// rows fill its last block (GEMM1, 2I = 1024 rows) and one whose last block has two warps past
// the rows (GEMM2, K = 896), with and without the exact scale conversion: against native, twice
// (bitwise the same), and bitwise against the 32-row kernel, which adds the same terms in the
// same order. It also checks the default choice: these GEMMs are below dec1wMinRows and take
// the 32-row kernel.
func TestDecodeWideRows(t *testing.T) {
	for _, tc := range []struct {
		name  string
		exact bool
	}{{"plain", false}, {"exact scales", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := conformance.Spec{M: 16, K: 896, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 47}
			c := conformance.Generate(s)
			l, w := scaleLayer(t, c.Weights, c.Config, tc.exact, 7, 11)
			p := s.M * s.TopK
			_, tiles := l.bounds(p)
			gemms := []decGEMM{
				{"GEMM1", int64(2 * s.I), l.decSplit(int64(2*s.I), int64(s.K), tiles, true)},
				{"GEMM2", int64(s.K), l.decSplit(int64(s.K), int64(s.I), tiles, false)},
			}
			mustTake(t, l, gemms, p, l.dev.fn.gemmDec1, fmt.Sprintf("below %d rows", dec1wMinRows))
			narrow := forward(t, l, &c.Batch, s.K)
			l.wideRows = 0
			mustTake(t, l, gemms, p, l.dev.fn.gemmDec1w, "with wideRows 0")
			got := forwardTwice(t, l, &c.Batch, s.K, "64-row kernel")
			sameBits(t, "64-row kernel against the 32-row one", got, narrow)
			nearNative(t, got, w, c.Config, &c.Batch)
		})
	}
}

// TestDecodeWide16 runs a batch of 8 rows an expert (16 tokens a pass under either pair of
// thresholds, passRows) on the 64-row kernel of 16 tokens a pass (moe_gemm_dec16w, wide16 set),
// on a GEMM whose rows fill its last block (GEMM1, 1024 rows) and one whose last block has two
// warps past the rows (GEMM2, 896), with and without the exact scale conversion: against native,
// twice (bitwise the same), and bitwise against the 32-row 16-token kernel (moe_gemm_dec16s,
// wide16 cleared, as on devices that do not take the 64-row kernels).
func TestDecodeWide16(t *testing.T) {
	for _, tc := range []struct {
		name  string
		exact bool
	}{{"plain", false}, {"exact scales", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := conformance.Spec{M: 64, K: 896, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 53}
			c := conformance.Generate(s)
			l, w := scaleLayer(t, c.Weights, c.Config, tc.exact, 5, 9)
			p := s.M * s.TopK
			_, tiles := l.bounds(p)
			split1, split2, _, _ := l.decSplits(tiles, p)
			gemms := []decGEMM{{"GEMM1", int64(2 * s.I), split1}, {"GEMM2", int64(s.K), split2}}
			l.wide16 = false
			mustTake(t, l, gemms, p, l.dev.fn.gemmDec16s, "without wide16")
			narrow := forward(t, l, &c.Batch, s.K)
			l.wide16 = true
			mustTake(t, l, gemms, p, l.dev.fn.gemmDec16w, "with wide16")
			got := forwardTwice(t, l, &c.Batch, s.K, "64-row 16-token kernel")
			sameBits(t, "64-row 16-token kernel against the 32-row one", got, narrow)
			nearNative(t, got, w, c.Config, &c.Batch)
		})
	}
}

// TestDecodePredictedTiles runs batches of at most segmentRows routed pairs, whose GEMM1 blocks
// work out their tiles from the ids before the routing kernel has written them (the expert map,
// ids of -1 and repeated experts included), against native, and bitwise against the same layer
// waiting for the routing kernel's tiles.
func TestDecodePredictedTiles(t *testing.T) {
	for _, s := range []conformance.Spec{
		{Name: "M=1", M: 1, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 51},
		{Name: "M=2, map, -1, repeats", M: 2, K: 1024, I: 512, E: 16, GlobalExperts: 48, TopK: 4, Dup: true, NegIDs: 0.25, Activation: moe.SwiGLUOAI, Seed: 52},
		{Name: "M=8, 32 pairs", M: 8, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SiLU, Seed: 53},
		{Name: "M=4, top-8, map, repeats", M: 4, K: 1024, I: 512, E: 8, GlobalExperts: 24, TopK: 8, Dup: true, NegIDs: 0.1, Activation: moe.SwiGLUOAI, Bias: true, Seed: 54},
		{Name: "M=2, no local pair", M: 2, K: 1024, I: 512, E: 8, GlobalExperts: 24, TopK: 4, NegIDs: 1, Activation: moe.SiLU, Seed: 55},
	} {
		t.Run(s.Name, func(t *testing.T) {
			c := conformance.Generate(s)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
			if s.NegIDs == 1 {
				zeroWithoutLocalPair(t, l, s, &c.Batch)
				return
			}
			got := forward(t, l, &c.Batch, s.K)
			l.noPredict = true
			sameBits(t, "predicted tiles against the routing kernel's", got, forward(t, l, &c.Batch, s.K))
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
		})
	}
}

// TestDecodeRouteGrid runs decode batches whose routing kernel (moe_route_small) gathers more
// rows than one block takes, in blocks that each route the pairs and share the gather: against
// native, and bitwise against the same layer with the routing in one block and in three (the
// expert map, ids of -1 and repeated experts included).
func TestDecodeRouteGrid(t *testing.T) {
	for _, s := range []conformance.Spec{
		{Name: "M=16, 64 pairs", M: 16, K: 2048, I: 256, E: 16, TopK: 4, Activation: moe.SiLU, Seed: 71},
		{Name: "M=8, map, -1, repeats", M: 8, K: 4096, I: 256, E: 8, GlobalExperts: 24, TopK: 8, Dup: true, NegIDs: 0.2, Activation: moe.SwiGLUOAI, Bias: true, Seed: 72},
	} {
		t.Run(s.Name, func(t *testing.T) {
			c := conformance.Generate(s)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
			defer l.Close()
			p := s.M * s.TopK
			if n := routeSmallGrid(p, int64(s.K), l.dev.SMs); p > fusedPermutePairs || n < 2 {
				t.Fatalf("%d pairs of %d bytes: routing grid %d, want a fused routing of several blocks", p, s.K, n)
			}
			got := forward(t, l, &c.Batch, s.K)
			for _, g := range []int{1, 3} {
				l.routeGrid = g
				sameBits(t, fmt.Sprintf("routing in %d blocks against the default grid", g), forward(t, l, &c.Batch, s.K), got)
			}
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
		})
	}
}

// TestActivationWarps runs batches through the activation kernel with a group a warp (eight
// warps a block) and with two (four warps), bitwise against each other and near native, in each
// GEMM's token order: the decode GEMM's (with the early trigger; an expert map with ids of -1),
// the wgmma GEMM's (the clamped activation) and the tiled GEMM's; rows of 5 and 9 groups, so
// that the four-warp blocks have warps of one group and of two, and a block of one group.
func TestActivationWarps(t *testing.T) {
	for _, c := range []struct {
		k GEMMKernel
		s conformance.Spec
	}{
		{GEMMDecode, conformance.Spec{Name: "decode M=2", M: 2, K: 1024, I: 640, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 81}},
		{GEMMDecode, conformance.Spec{Name: "decode map -1", M: 5, K: 1024, I: 1152, E: 8, GlobalExperts: 16, TopK: 4, NegIDs: 0.2, Activation: moe.SiLU, Seed: 82}},
		{GEMMWgmma, conformance.Spec{Name: "wgmma", M: 300, K: 512, I: 640, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Seed: 83}},
		{GEMMTiled, conformance.Spec{Name: "tiled", M: 40, K: 512, I: 1152, E: 4, TopK: 2, Activation: moe.SwiGLUStep, Seed: 84}},
	} {
		t.Run(c.s.Name, func(t *testing.T) {
			cs := conformance.Generate(c.s)
			l := kernelLayer(t, &cs.Weights, cs.Config, c.k)
			if k := l.Kernel(c.s.M, c.s.TopK); k != c.k {
				t.Fatalf("kernel %v, want %v", k, c.k)
			}
			if c.k == GEMMDecode {
				l.trigger = 1
			}
			l.actWarps = 4
			two := forward(t, l, &cs.Batch, c.s.K)
			l.actWarps = 8
			sameBits(t, "a group a warp against two", forward(t, l, &cs.Batch, c.s.K), two)
			nearNative(t, two, &cs.Weights, cs.Config, &cs.Batch)
		})
	}
}

// TestDecodeEarlyTrigger runs decode batches with the early trigger (the activation kernel and
// GEMM2 let the next kernel launch before they wait) against native, and bitwise against the
// same layer without it: predicted and routed GEMM1 tiles, the expert map with ids of -1 and
// repeats, a batch without a local pair after one with, and several forwards in a row (each
// forward's early reads must not see the previous one's metadata).
func TestDecodeEarlyTrigger(t *testing.T) {
	for _, s := range []conformance.Spec{
		{Name: "M=1", M: 1, K: 1024, I: 512, E: 32, TopK: 4, Activation: moe.SwiGLUOAI, Bias: true, Seed: 61},
		{Name: "M=3, map, -1, repeats", M: 3, K: 1024, I: 512, E: 16, GlobalExperts: 48, TopK: 4, Dup: true, NegIDs: 0.25, Activation: moe.SwiGLUOAI, Seed: 62},
		{Name: "M=16, 128 pairs", M: 16, K: 2048, I: 768, E: 32, TopK: 8, Activation: moe.SiLU, Seed: 63},
		{Name: "M=2, no local pair", M: 2, K: 1024, I: 512, E: 8, GlobalExperts: 24, TopK: 4, NegIDs: 1, Activation: moe.SiLU, Seed: 64},
	} {
		t.Run(s.Name, func(t *testing.T) {
			c := conformance.Generate(s)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
			l.trigger = 1
			if s.NegIDs == 1 {
				zeroWithoutLocalPair(t, l, s, &c.Batch)
				return
			}
			// Another batch first, so that the routing metadata this one replaces differs.
			other := s
			other.Seed += 100
			forward(t, l, &conformance.Generate(other).Batch, s.K)
			got := forward(t, l, &c.Batch, s.K)
			sameBits(t, "the early trigger, a second forward", got, forward(t, l, &c.Batch, s.K))
			l.trigger = -1
			sameBits(t, "the early trigger against the trigger after the wait", got, forward(t, l, &c.Batch, s.K))
			l.noPredict, l.trigger = true, 1
			sameBits(t, "the early trigger with routed GEMM1 tiles", got, forward(t, l, &c.Batch, s.K))
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
		})
	}
}

// mustPlan returns l's plans of a forward of m tokens with topk experts each (Layer.Plan).
func mustPlan(t *testing.T, l *Layer, m, topk int) [2]GEMMPlan {
	t.Helper()
	pl, err := l.Plan(m, topk)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

// planRuns counts the GEMMs of a forward's plans that run the kernel named name.
func planRuns(pl [2]GEMMPlan, name string) int {
	return btoi(pl[0].Kernel == name) + btoi(pl[1].Kernel == name)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestWeightLayout reads the uploaded W13 back: in the blocked order (blockedWeights), every
// 32-bit word holds its 8 E2M1 codes in the kernels' device layout (code n's magnitude at bits
// MAG(n).., its sign at SGN(n), codes 4..7 16 bits above codes 0..3).
func TestWeightLayout(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 1, K: 256, I: 128, E: 2, TopK: 1, Seed: 41})
	l := mustLayer(t, &c.Weights, c.Config)
	got := download[uint32](t, l, l.w13, len(c.Weights.W13)/4)
	// The stored codes in the blocked order (blockedWeights), then each word re-encoded.
	stored := make([]uint8, len(c.Weights.W13))
	per := 2 * c.Weights.I * c.Weights.K / 2
	for x := 0; x < c.Weights.E; x++ {
		blockedWeights(stored[x*per:(x+1)*per], c.Weights.W13[x*per:(x+1)*per], 2*c.Weights.I, c.Weights.K)
	}
	mag, sgn := [4]uint{9, 6, 0, 3}, [4]uint{15, 12, 13, 14}
	for i := range got {
		var s, want uint32
		for b := range 4 {
			s |= uint32(stored[4*i+b]) << (8 * b)
		}
		for n := range uint(8) {
			code, off := s>>(4*n)&0xf, 16*(n/4)
			want |= (code&7)<<(mag[n%4]+off) | (code>>3)<<(sgn[n%4]+off)
		}
		if got[i] != want {
			t.Fatalf("word %d (stored %#08x): device %#08x, want %#08x", i, s, got[i], want)
		}
	}
}

// TestPoisonedWorkspace fills the whole workspace with 0xFF bytes (FP8 and float32 NaN) before
// a forward: the output must be bitwise the clean run's.
func TestPoisonedWorkspace(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 77, K: 512, I: 256, E: 8, TopK: 3, Bias: true, Activation: moe.SwiGLUOAI, Seed: 4})
	l := mustLayer(t, &c.Weights, c.Config)
	clean := forward(t, l, &c.Batch, c.Weights.K)
	for run := range 3 {
		unbind, err := l.dev.bind()
		if err != nil {
			t.Fatal(err)
		}
		// The memset runs on the default stream, which the layer's stream does not wait for, and
		// may return before it is done: wait for it, or it can land in the middle of the forward.
		if err := cu.MemsetD8(l.ws.mem, 0xFF, l.ws.size); err != nil {
			t.Fatal(err)
		}
		if err := cu.Synchronize(); err != nil {
			t.Fatal(err)
		}
		unbind()
		b := c.Batch
		if run == 1 {
			b.X = c.X // the float32 path too
		}
		got := forward(t, l, &b, c.Weights.K)
		sameBits(t, fmt.Sprintf("run %d after poisoning, against the clean run", run), got, clean)
	}
}

// TestMemoryStable runs 1000 forwards of varying size and checks that device memory stays put.
func TestMemoryStable(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 64, K: 256, I: 256, E: 8, TopK: 2, Seed: 5})
	l := mustLayer(t, &c.Weights, c.Config)
	l.noGraphs = true // the stages launched one by one (TestHostGraphs: the graphs' memory)
	out := make([]float32, 64*256)
	// The first forward has the largest batch, so the workspace has its final size after it.
	if err := l.Forward(out, &c.Batch); err != nil {
		t.Fatal(err)
	}
	free0, _, _ := memInfo(t, l)
	for i := range 1000 {
		m := 1 + (i*37)%64
		if err := l.Forward(out[:m*256], c.Batch.Slice(256, 0, m)); err != nil {
			t.Fatal(err)
		}
	}
	free1, _, _ := memInfo(t, l)
	if free1 != free0 {
		t.Fatalf("free device memory went from %d to %d bytes over 1000 forwards", free0, free1)
	}
}

// TestStageTimesOptIn checks that only a layer made with Options.StageTimes times its stages:
// every stage's time after a Forward of float input there, zero on the default layer; zero
// again after a Forward that fails validation, and after ForwardDevice the last Forward's.
func TestStageTimesOptIn(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 16, K: 256, I: 128, E: 8, TopK: 2, Seed: 3})
	plain := mustLayer(t, &c.Weights, c.Config)
	timed := optionsLayer(t, &c.Weights, c.Config, Options{StageTimes: true})
	if plain.RecordsStageTimes() || !timed.RecordsStageTimes() {
		t.Fatalf("RecordsStageTimes: %v without the option, %v with it", plain.RecordsStageTimes(), timed.RecordsStageTimes())
	}
	if st := timed.StageTimes(); st != (moe.StageTimes{}) {
		t.Fatalf("stage times before any Forward %+v, want zero", st)
	}
	out := make([]float32, 16*256)
	fb := &moe.Batch{M: 16, TopK: 2, X: c.X, TopKIDs: c.Batch.TopKIDs, TopKWeights: c.Batch.TopKWeights}
	for _, l := range []*Layer{plain, timed} {
		if err := l.Forward(out, fb); err != nil {
			t.Fatal(err)
		}
	}
	if st := plain.StageTimes(); st != (moe.StageTimes{}) {
		t.Fatalf("stage times without the option %+v, want zero", st)
	}
	st := timed.StageTimes()
	if st.Prepare <= 0 || st.Permute <= 0 || st.GEMM1 <= 0 || st.Activation <= 0 || st.GEMM2 <= 0 || st.Reduce <= 0 {
		t.Fatalf("stage times %+v, want every stage's", st)
	}
	if again := timed.StageTimes(); again != st {
		t.Fatalf("stage times read again %+v, want %+v", again, st)
	}
	db, dout, _ := uploadBatch(t, timed, &c.Batch, 256)
	if err := timed.ForwardDevice(dout, db); err != nil {
		t.Fatal(err)
	}
	if again := timed.StageTimes(); again != st {
		t.Fatalf("stage times after ForwardDevice %+v, want the last Forward's %+v", again, st)
	}
	if err := timed.Forward(out[:5], &c.Batch); err == nil {
		t.Fatal("Forward into a short output: no error")
	}
	if st := timed.StageTimes(); st != (moe.StageTimes{}) {
		t.Fatalf("stage times after a failed Forward %+v, want zero", st)
	}
}

func memInfo(t *testing.T, l *Layer) (int64, int64, error) {
	unbind, err := l.dev.bind()
	if err != nil {
		t.Fatal(err)
	}
	defer unbind()
	return cu.MemInfo()
}

// TestForwardPieces runs host-path forwards whose inputs and output move in several pieces
// (hostPiece, outPiece; 2048 tokens of a layer with K = 2944: 24 MB out) and in chunks of tokens
// (forwardChunks; 8192 tokens: two chunks of 4096). FP8 input: the host path bitwise against
// ForwardDevice of the whole batch in device memory (one run of every stage: the chunks' tiles
// differ, every token's sums do not, as every tile's scales fold here). Float32 input (three or
// more input pieces): bitwise against the host path on its FP8 quantization (the float path
// quantizes on the device exactly as the host does). Twice each, into an output first filled
// with NaN; with Options.StageTimes, the stage times of a chunked forward are its chunks'
// sums, none of them zero.
func TestForwardPieces(t *testing.T) {
	s := benchdata.Shape{Name: "pieces", K: 2944, I: 256, E: 8, TopK: 2}
	l := optionsLayer(t, benchdata.Weights(s, 3), moe.GPTOSSConfig(), Options{StageTimes: true})
	for _, c := range []struct {
		name   string
		m      int
		chunks int
	}{{"pieces", 2048, 1}, {"chunks", 8192, 2}} {
		t.Run(c.name, func(t *testing.T) {
			m := c.m
			if n := 4 * m * s.K; forwardChunks(m, s.K) != c.chunks || (n+outPiece(n)-1)/outPiece(n) < 2 || n < 2*hostPiece {
				t.Fatalf("%d tokens: %d chunks, want %d, and an output and input of several pieces", m, forwardChunks(m, s.K), c.chunks)
			}
			run := func(b *moe.Batch, label string) []float32 {
				var first []float32
				for range 2 {
					out := make([]float32, m*s.K)
					for i := range out {
						out[i] = float32(math.NaN())
					}
					if err := l.Forward(out, b); err != nil {
						t.Fatal(err)
					}
					if first == nil {
						first = out
					} else {
						sameBits(t, label+": second forward against the first", out, first)
					}
				}
				return first
			}
			b8, _, err := benchdata.Batch(s, "uniform", "fp8", m, 5)
			if err != nil {
				t.Fatal(err)
			}
			got8 := run(b8, "FP8 input")
			if st := l.StageTimes(); st.Permute <= 0 || st.GEMM1 <= 0 || st.Activation <= 0 || st.GEMM2 <= 0 || st.Reduce <= 0 {
				t.Fatalf("stage times %+v, want every stage's", st)
			}
			db, dout, read := uploadBatch(t, l, b8, s.K)
			if err := l.ForwardDevice(dout, db); err != nil {
				t.Fatal(err)
			}
			sameBits(t, "FP8 input: host path against ForwardDevice", got8, read())
			bf, _, err := benchdata.Batch(s, "uniform", "float", m, 6)
			if err != nil {
				t.Fatal(err)
			}
			gotf := run(bf, "float input")
			bq := *bf
			bq.X = nil
			bq.A1q, bq.A1qScale = make([]uint8, m*s.K), make([]float32, m*s.K/moe.ActGroup)
			native.QuantizeFP8Rows(bq.A1q, bq.A1qScale, bf.X, m, s.K, moe.ActGroup, moe.GPTOSSConfig().ScaleFormat)
			sameBits(t, "float input against its FP8 quantization", gotf, run(&bq, "quantized input"))
		})
	}
}

// TestGraphAfterGrowth captures a forward, lets a larger batch grow the workspace, and checks
// that the graph is refused from then on (its pointers are into the freed workspace, whatever
// address the new one got), and that a graph captured again replays the captured output.
func TestGraphAfterGrowth(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 300, K: 256, I: 128, E: 6, TopK: 2, Seed: 7})
	l := mustLayer(t, &c.Weights, c.Config)
	K := c.Weights.K
	small := c.Batch.Slice(K, 0, 4)
	want := forward(t, l, small, K)
	db, out, read := uploadBatch(t, l, small, K)
	// Captures the small batch, replays it and checks its output.
	captureAndLaunch := func(label string) *Graph {
		g, err := l.Capture(out, db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		if err := g.Launch(); err != nil {
			t.Fatal(err)
		}
		sameBits(t, label, read(), want)
		return g
	}
	g := captureAndLaunch("graph before the workspace grew")
	forward(t, l, &c.Batch, K) // 300 tokens: a larger workspace
	if err := g.Launch(); err == nil {
		t.Fatal("a graph of the old workspace launched; want an error")
	}
	captureAndLaunch("graph captured again")
}

// TestHostGraphs runs host-path forwards of 1 to 20 and of 300 tokens, FP8 and float input,
// through the captured graphs of the whole forward (forwardGraph, up to hostGraphTokens tokens)
// and without them: bitwise the same output, into an output first filled with NaN, and a graph
// for each size up to hostGraphTokens and kind; with stage timing on, no graph is captured
// and the stages are timed; a knob moved (the activation's warps) captures a graph of its own; a
// larger workspace drops the graphs; and, once each size has its graph, two more rounds of the
// same sizes leave the device's free memory as it was.
func TestHostGraphs(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 300, K: 256, I: 128, E: 8, TopK: 2, Activation: moe.SwiGLUOAI, Bias: true, Seed: 9})
	l := mustLayer(t, &c.Weights, c.Config)
	K := c.Weights.K
	batch := func(m int, float bool) *moe.Batch {
		b := c.Batch.Slice(K, 0, m)
		if float {
			b = &moe.Batch{M: m, TopK: b.TopK, X: c.X[:m*K], TopKIDs: b.TopKIDs, TopKWeights: b.TopKWeights}
		}
		return b
	}
	run := func(m int, float, graphs bool) []float32 {
		l.noGraphs = !graphs
		defer func() { l.noGraphs = false }()
		out := make([]float32, m*K)
		for i := range out {
			out[i] = float32(math.NaN())
		}
		if err := l.Forward(out, batch(m, float)); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// The workspace grown first: a growth drops the graphs (checked below).
	run(300, true, false)
	for _, float := range []bool{false, true} {
		for _, m := range []int{1, 3, 8, 20, 300} {
			want := run(m, float, false)
			for pass := range 2 { // capture, then replay
				sameBits(t, fmt.Sprintf("M=%d float %v pass %d: graph against the stages launched one by one", m, float, pass), run(m, float, true), want)
			}
		}
	}
	graphed := 0
	for _, m := range []int{1, 3, 8, 20, 300} {
		if m <= hostGraphTokens {
			graphed += 2
		}
	}
	if len(l.graphs) != graphed || graphed < 4 {
		t.Fatalf("%d graphs after five sizes of two input kinds, want %d (at least two sizes)", len(l.graphs), graphed)
	}
	n := len(l.graphs)
	l.SetStageTimes(true)
	run(5, false, true)
	if st := l.StageTimes(); len(l.graphs) != n || st.Permute <= 0 || st.GEMM1 <= 0 || st.GEMM2 <= 0 || st.Reduce <= 0 {
		t.Fatalf("with stage timing: %d graphs (want %d), stage times %+v (want every stage's)", len(l.graphs), n, st)
	}
	l.SetStageTimes(false)
	l.actWarps = 8
	run(3, false, true)
	l.actWarps = 0
	if len(l.graphs) != n+1 {
		t.Fatalf("%d graphs after a knob moved, want %d", len(l.graphs), n+1)
	}
	// A larger batch (past hostGraphTokens: no graph) grows the workspace: every graph is
	// dropped at the next graph forward (of 2 tokens, at most hostGraphTokens).
	big := conformance.Generate(conformance.Spec{M: 600, K: 256, I: 128, E: 8, TopK: 2, Activation: moe.SwiGLUOAI, Bias: true, Seed: 9})
	forward(t, l, &big.Batch, K)
	run(2, false, true)
	if len(l.graphs) != 1 {
		t.Fatalf("%d graphs after the workspace grew, want 1", len(l.graphs))
	}
	for m := 1; m <= hostGraphTokens; m++ {
		run(m, false, true)
	}
	free0, _, _ := memInfo(t, l)
	for range 2 {
		for m := 1; m <= hostGraphTokens; m++ {
			run(m, false, true)
		}
	}
	if free1, _, _ := memInfo(t, l); free1 != free0 {
		t.Fatalf("free device memory went from %d to %d bytes over replays", free0, free1)
	}
}

// TestPlanKnobsComplete checks that every field of Layer is either one of planKnobs' (a captured
// graph is replayed only with the knobs it was captured with) or named here as not a knob.
func TestPlanKnobsComplete(t *testing.T) {
	notKnobs := map[string]bool{"dev": true, "E": true, "K": true, "I": true, "cfg": true, "eg": true, "stream": true,
		"weights": true, "w13": true, "s13": true, "w2": true, "s2": true, "b13": true, "b2": true, "expertMap": true,
		"ref13": true, "ref2": true, "foldable": true, "exactScales": true, "ws": true, "wsAllocs": true, "closed": true,
		"events": true, "timing": true, "timed": true, "timedFloat": true, "pieceEvents": true, "chunkTiming": true, "chunkDone": true,
		"copyStream": true, "chunkReady": true, "markSet": true, "graphs": true, "graphGen": true, "noGraphs": true,
		"graphOut": true, "graphOutDev": true}
	knobs := map[string]bool{}
	kt := reflect.TypeOf(planKnobs{})
	for i := range kt.NumField() {
		knobs[kt.Field(i).Name] = true
	}
	lt := reflect.TypeOf(Layer{})
	for i := range lt.NumField() {
		if f := lt.Field(i).Name; !notKnobs[f] && !knobs[f] {
			t.Errorf("Layer.%s is neither a plan knob (planKnobs) nor listed as not one", f)
		}
	}
}

// uploadBatch copies batch b into device memory of its own for l's device (freed when the test
// ends) and allocates an output for it; read waits for l's stream and returns that output.
func uploadBatch(t *testing.T, l *Layer, b *moe.Batch, K int) (db DeviceBatch, out cu.DevicePtr, read func() []float32) {
	t.Helper()
	unbind, err := l.dev.bind()
	if err != nil {
		t.Fatal(err)
	}
	defer unbind()
	alloc := func(p unsafe.Pointer, n int) cu.DevicePtr {
		d, err := cu.MemAlloc(int64(n))
		if err != nil {
			t.Fatal(err)
		}
		if p != nil {
			if err := cu.MemcpyHtoD(d, p, int64(n)); err != nil {
				t.Fatal(err)
			}
			// The copy may return before its bytes land, and the layer's stream does not wait.
			if err := cu.Synchronize(); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { cu.MemFree(d) })
		return d
	}
	db = DeviceBatch{M: b.M, TopK: b.TopK,
		A1q: alloc(unsafe.Pointer(&b.A1q[0]), len(b.A1q)), A1qScale: alloc(unsafe.Pointer(&b.A1qScale[0]), 4*len(b.A1qScale)),
		TopKIDs: alloc(unsafe.Pointer(&b.TopKIDs[0]), 4*len(b.TopKIDs)), TopKWeights: alloc(unsafe.Pointer(&b.TopKWeights[0]), 4*len(b.TopKWeights))}
	out = alloc(nil, 4*b.M*K)
	read = func() []float32 {
		unbind, _ := l.dev.bind()
		defer unbind()
		if err := l.stream.Synchronize(); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, b.M*K)
		if err := cu.MemcpyDtoH(unsafe.Pointer(&got[0]), out, int64(4*len(got))); err != nil {
			t.Fatal(err)
		}
		return got
	}
	return db, out, read
}

// TestDeviceErrorsSpread gives a batch of more than scatterPairs pairs (the routing that counts
// each chunk of pairs in a block of its own) out-of-range ids in three of its chunks, on the
// device path: they are counted, and skipped as a -1 id is (the output is the host path's for
// the batch with -1 in their place), on every GEMM kernel.
func TestDeviceErrorsSpread(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 2600, K: 128, I: 128, E: 16, TopK: 2, NegIDs: 0.02, Seed: 24})
	b := c.Batch
	bad := []int{3, 2100, 5199}
	b.TopKIDs = append([]int32(nil), b.TopKIDs...)
	for _, i := range bad {
		b.TopKIDs[i] = -1
	}
	K := c.Weights.K
	for _, k := range []GEMMKernel{GEMMDecode, GEMMWgmma, GEMMTiled} {
		l := kernelLayer(t, &c.Weights, c.Config, k)
		want := forward(t, l, &b, K)
		withBad := b
		withBad.TopKIDs = append([]int32(nil), b.TopKIDs...)
		withBad.TopKIDs[bad[0]], withBad.TopKIDs[bad[1]], withBad.TopKIDs[bad[2]] = 16, 99, -7
		db, out, read := uploadBatch(t, l, &withBad, K)
		if err := l.ForwardDevice(out, db); err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("GEMM %v: invalid ids against -1 ids", k), read(), want)
		if n, err := l.DeviceErrors(); err != nil || n != len(bad) {
			t.Fatalf("GEMM %v: DeviceErrors = %d, %v; want %d", k, n, err, len(bad))
		}
	}
}

// TestDeviceForwardAndGraph runs the device-resident path directly and as a replayed CUDA
// graph, and checks both against the host path; an invalid id is skipped and counted.
func TestDeviceForwardAndGraph(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 19, K: 256, I: 128, E: 6, TopK: 2, Bias: true, Seed: 6})
	l := mustLayer(t, &c.Weights, c.Config)
	K := c.Weights.K
	want := forward(t, l, &c.Batch, K)
	b := c.Batch
	db, out, read := uploadBatch(t, l, &b, K)
	if err := l.ForwardDevice(out, db); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "ForwardDevice against the host path", read(), want)
	g, err := l.Capture(out, db)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	unbind, _ := l.dev.bind()
	cu.MemsetD8(out, 0xFF, int64(4*b.M*K))
	cu.Synchronize() // the graph's stream does not wait for the default stream
	unbind()
	for range 3 {
		if err := g.Launch(); err != nil {
			t.Fatal(err)
		}
	}
	sameBits(t, "graph replay against the host path", read(), want)
	if n, err := l.DeviceErrors(); err != nil || n != 0 {
		t.Fatalf("DeviceErrors = %d, %v", n, err)
	}
	// An id out of range on the device: skipped and counted.
	bad := append([]int32(nil), b.TopKIDs...)
	bad[3] = 99
	unbind, _ = l.dev.bind()
	cu.MemcpyHtoD(db.TopKIDs, unsafe.Pointer(&bad[0]), int64(4*len(bad)))
	cu.Synchronize()
	unbind()
	if err := l.ForwardDevice(out, db); err != nil {
		t.Fatal(err)
	}
	if n, err := l.DeviceErrors(); err != nil || n != 1 {
		t.Fatalf("DeviceErrors = %d, %v; want 1", n, err)
	}
}

func TestOpen(t *testing.T) {
	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device %s, compute capability %d.%d, %d SMs, kernels %s; peak memory %.0f GB/s, SM clock %.0f MHz, %.1f bytes per SM cycle",
		d.Name, d.Major, d.Minor, d.SMs, d.Fatbin, d.MemBandwidth/1e9, d.SMClock/1e6, d.BytesPerSMCycle())
	if d.Major != 9 {
		t.Fatalf("compute capability %d.%d, expected a Hopper GPU (9.x)", d.Major, d.Minor)
	}
	// Every Hopper part has HBM of 2-5 TB/s and SMs at 1-2 GHz; a value outside says the
	// attributes were read wrong, and the kernel choice that uses them would be arbitrary.
	if b := d.BytesPerSMCycle(); b < 5 || b > 40 {
		t.Fatalf("%.1f bytes per SM cycle (peak memory %.0f GB/s, %d SMs at %.0f MHz); expected 5-40 on Hopper", b, d.MemBandwidth/1e9, d.SMs, d.SMClock/1e6)
	}
}

// TestLayoutCheck changes one entry of the loaded module's moe_layout table (as kernels built with
// another DEC_SMEM would have it) and expects checkLayout to name it; then restores it.
func TestLayoutCheck(t *testing.T) {
	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	unbind, err := d.bind()
	if err != nil {
		t.Fatal(err)
	}
	defer unbind()
	if err := checkLayout(d.mod, d.Fatbin); err != nil {
		t.Fatalf("the loaded kernels: %v", err)
	}
	p, _, err := d.mod.Global("moe_layout")
	if err != nil {
		t.Fatal(err)
	}
	k := -1
	for j, c := range layoutConsts() {
		if c.name == "DEC_SMEM" {
			k = j
		}
	}
	if k < 0 {
		t.Fatal("layoutConsts has no DEC_SMEM")
	}
	at := p + cu.DevicePtr(8*k)
	wrong := int64(decSmem + 16)
	if err := cu.MemcpyHtoD(at, unsafe.Pointer(&wrong), 8); err != nil {
		t.Fatal(err)
	}
	err = checkLayout(d.mod, d.Fatbin)
	right := int64(decSmem)
	if err2 := cu.MemcpyHtoD(at, unsafe.Pointer(&right), 8); err2 != nil {
		t.Fatal(err2)
	}
	want := fmt.Sprintf("DEC_SMEM = %d, the host code expects %d", decSmem+16, decSmem)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("checkLayout with DEC_SMEM changed: %v, want an error containing %q", err, want)
	}
	if err := checkLayout(d.mod, d.Fatbin); err != nil {
		t.Fatalf("after restoring the table: %v", err)
	}
}

// TestForwardRegistered runs host-path forwards whose output (512 tokens, K = 2944: 6 MB) is
// copied straight into the caller's slice, page-locked for the call: bitwise against
// ForwardDevice, twice into an output first filled with NaN, and once into a slice already
// page-locked (the registration fails, the pinned path serves it).
func TestForwardRegistered(t *testing.T) {
	s := benchdata.Shape{Name: "registered", K: 2944, I: 256, E: 8, TopK: 2}
	l := optionsLayer(t, benchdata.Weights(s, 3), moe.GPTOSSConfig(), Options{})
	m := 512
	if n := 4 * m * s.K; n < registerOutMin || n > 2*hostPiece || forwardChunks(m, s.K) != 1 {
		t.Fatalf("%d output bytes: not the registered path's", n)
	}
	b8, _, err := benchdata.Batch(s, "uniform", "fp8", m, 5)
	if err != nil {
		t.Fatal(err)
	}
	db, dout, read := uploadBatch(t, l, b8, s.K)
	if err := l.ForwardDevice(dout, db); err != nil {
		t.Fatal(err)
	}
	want := read()
	fresh := func() []float32 {
		out := make([]float32, m*s.K)
		for i := range out {
			out[i] = float32(math.NaN())
		}
		return out
	}
	for i := range 2 {
		out := fresh()
		if err := l.Forward(out, b8); err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("forward %d against ForwardDevice", i), out, want)
	}
	out := fresh()
	unbind, err := l.dev.bind()
	if err != nil {
		t.Fatal(err)
	}
	if err := registerHost(unsafe.Pointer(&out[0]), 4*len(out)); err != nil {
		unbind()
		t.Fatal(err)
	}
	unbind()
	err = l.Forward(out, b8)
	unbind, berr := l.dev.bind()
	if berr != nil {
		t.Fatal(berr)
	}
	uerr := unregisterHost(unsafe.Pointer(&out[0]))
	unbind()
	if err != nil || uerr != nil {
		t.Fatal(err, uerr)
	}
	sameBits(t, "forward into a page-locked slice against ForwardDevice", out, want)
}
