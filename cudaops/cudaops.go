// Package cudaops is the CUDA backend of the layer for Hopper GPUs (H100, H200), built with
// the build tag cudaops over gorgonia.org/cu. Without the tag, or on a machine without a usable
// GPU, its Backend returns errors wrapping ErrNoCUDA and callers fall back to package native.
//
// A Layer keeps the expert weights on the device and runs the five stages as kernels on its own
// stream: Forward takes host slices (validated on the host, staged through pinned memory),
// ForwardDevice device pointers (queued without synchronising), and Capture records a forward
// as a CUDA graph. docs/design.md describes the kernels; docs/perf.md their measured speed.
//
// The tag is not "cuda": that tag also switches on Gorgonia's own CUDA path (gorgonia.org/cu/dnn,
// which needs cuDNN 7/8 headers and libraries, and a managed-memory arena per tape machine), and
// every graph program that links this backend links Gorgonia, so the two must not share a tag.
//
// The kernels (kernels/*.cu) are built into kernels/moe.fatbin by kernels/build.sh on a machine
// with nvcc (sm_90a SASS and compute_90 PTX) and embedded; kernels/manifest.txt records the
// sources' hashes, which CI compares with the sources. FP4MOE_FATBIN loads another fatbin.
//
//go:generate bash kernels/build.sh
package cudaops

import (
	"errors"
	"fmt"
)

// ErrNoCUDA is returned when the package was built without the cudaops tag or no GPU is usable.
var ErrNoCUDA = errors.New("cudaops: CUDA backend not available")

// Backend is the CUDA backend. Its zero value uses device 0 and picks kernels by batch size.
type Backend struct{ Options Options }

// Options tune the CUDA backend; the zero value picks defaults. No option changes results
// beyond float32 rounding.
type Options struct {
	// GEMM selects the grouped GEMM kernel (default GEMMAuto).
	GEMM GEMMKernel
	// StageTimes makes every host-path Forward time its stages (Layer.StageTimes) with events
	// between them. Off by default: the events cost time (on an H200 about 16 µs a call at one
	// and at 64 tokens of GPT-OSS-120B, BenchmarkHostPath; likely because each ends a stage's
	// programmatic overlap with the next), and a layer that records them runs no graph (Forward).
	StageTimes bool
}

// GEMMKernel names a grouped GEMM kernel.
type GEMMKernel uint8

const (
	// GEMMAuto picks GEMMDecode when the batch routes at most 12 rows per local expert on
	// average (13 on devices that take the 64-row kernels, the H200), or 24 for layers of small
	// experts (K·I at most 4Mi, e.g. Qwen3-30B-A3B; the crossovers measured on an H200,
	// docs/perf.md v45 and "v62's closing run and the crossover after it"), else GEMMWgmma, or
	// GEMMTiled for weights the wgmma kernel cannot take exactly (see GEMMWgmma).
	GEMMAuto GEMMKernel = iota
	// GEMMTiled: 64 weight rows by 32 tokens per block.
	GEMMTiled
	// GEMMDecode: FP16 mma.sync, 32 weight rows a warp, K split over up to 4 warps, weights and
	// tokens streamed through cp.async rings in shared memory, one 8-token fragment per pass, or
	// two (16 tokens) when the batch routes more than 6 rows per local expert on average, or
	// four (32 tokens) above 9 (on devices that take the 64-row kernels: more than 4, on 64
	// weight rows a warp, and above 13, or 12 for layers of small experts).
	GEMMDecode
	// GEMMWgmma: FP16 warpgroup MMA (sm_90a), 256 weight rows by up to 152 tokens per block
	// (128 rows by up to 32 tokens, three blocks an SM, for batches of at most 24 rows per local
	// expert on average; 384 rows by up to 64 tokens, one block an SM, up to 48 rows, where
	// experts of more than 64 rows take two tiles or more, each folding the weights again: on an
	// H200 under uniform routing GPT-OSS-120B 3-4 % and Qwen3-30B-A3B 4-6 % faster there than on
	// the 256-row blocks, GPT-OSS-120B 5-8.5 % slower under the bench's Zipf routing), the E8M0
	// block scales folded exactly into the FP16 weights relative to a per-row reference
	// exponent. Layers whose weight rows span more than 24 binades of nonzero block scales, or
	// hold a NaN scale, cannot be folded exactly and run GEMMTiled instead, also when this
	// kernel is asked for.
	GEMMWgmma
)

// String returns the kernel's name as fp4moe bench --gemm spells it: auto, tiled, decode or
// wgmma.
func (k GEMMKernel) String() string {
	switch k {
	case GEMMAuto:
		return "auto"
	case GEMMTiled:
		return "tiled"
	case GEMMDecode:
		return "decode"
	case GEMMWgmma:
		return "wgmma"
	}
	return fmt.Sprintf("GEMMKernel(%d)", uint8(k))
}

// autoDecodeRows is GEMMAuto's crossover: batches routing at most this many routed rows per
// local expert on average take GEMMDecode. Measured on an H200 with v44's kernels (docs/perf.md,
// the v45 entry; decode against wgmma, both forced, uniform routing): at 8 and 10 rows the
// decode GEMM was the faster or level for GPT-OSS-120B and DeepSeek-V3 (GPT-OSS 639.7 against
// 711.7 µs and 687.9 against 719.3); at 12 level in one call (731.9 against 730.2, DeepSeek-V3
// 2309.5 against 2284.1) and 11 % faster for GPT-OSS in another (666.4 against 739.7); from 14
// rows on the wgmma GEMM was 4-19 % faster for both. (v29 measured 24 on both cards; the wgmma
// GEMM has since become 25-40 % faster, v32-v37.) On an H100, whose copy bandwidth is 0.7 of
// the H200's, the streaming decode GEMM loses more than the wgmma GEMM, so its crossover likely
// lies at or below this one (not yet measured there). Skewed routing (Zipf) slows the wgmma GEMM
// and not the decode one, so up to this threshold decode stays the faster under skew too; beyond
// it some skewed batches would still gain from decode, which the host cannot tell before the
// routing runs (docs/perf.md, the crossover under Zipf).
const autoDecodeRows = 12

// autoDecodeRowsWide is GEMMAuto's crossover on devices that take the 64-row kernels (the
// H200), where batches of up to wide32Rows rows an expert run the 16-token passes on 64-row
// warps: with v62's kernels (the wgmma path's small-tile kernel at up to 24 rows) on an H200,
// decode against wgmma, both forced (docs/perf.md, "The crossover after v62"), the decode GEMM
// was 3.8-7.5 % faster at 12 rows and 1.5-5.2 % at 13 for the four large-expert shapes measured;
// at 14 rows the wgmma GEMM was 6.2-11.3 % faster for GPT-OSS-120B, DeepSeek-V3 and
// Qwen3-235B-A22B (GPT-OSS-120B 632.1 against 684.7 µs), though 5.8 % slower for GPT-OSS-20B's
// 32 experts. (With v60's wgmma GEMM the crossover was 14.)
const autoDecodeRowsWide = 13

// Layers of small experts, K·I at most smallExpertKI, keep the decode GEMM up to
// autoDecodeRowsSmall rows an expert: the wgmma GEMM's tiles of short K pay their start and
// epilogue on little work. Qwen3-30B-A3B (K·I = 1.5Mi) on an H200 with v44's kernels: decode
// 204.3 and 217.0 µs against 218.5 and 228.0 at 20 and 24 rows, 242.6 against 238.3 at 28, 286.4
// against 248.1 at 32. GPT-OSS-120B (8.3Mi) and DeepSeek-V3 (14Mi) do not. Fitted to those three
// shapes.
const (
	smallExpertKI       = 4 << 20
	autoDecodeRowsSmall = 24
)

// smallExperts reports whether a layer of hidden size k and intermediate size i has small
// experts: K·I at most smallExpertKI.
func smallExperts(k, i int) bool { return int64(k)*int64(i) <= smallExpertKI }

// decodeRowsFor is GEMMAuto's crossover for a layer of hidden size k and intermediate size i
// on a device that takes the 64-row kernels (wide) or not: autoDecodeRowsSmall for small
// experts, else autoDecodeRowsWide or autoDecodeRows.
func decodeRowsFor(k, i int, wide bool) int {
	if smallExperts(k, i) {
		return autoDecodeRowsSmall
	}
	if wide {
		return autoDecodeRowsWide
	}
	return autoDecodeRows
}

// resolve returns the kernel that k runs for p routed pairs over e local experts, with rows the
// layer's crossover (decodeRowsFor) and foldable telling whether the layer's weights fold
// exactly into the wgmma kernel's FP16.
func (k GEMMKernel) resolve(p, e, rows int, foldable bool) GEMMKernel {
	if k == GEMMAuto {
		k = GEMMWgmma
		if p <= rows*e {
			k = GEMMDecode
		}
	}
	if k == GEMMWgmma && !foldable {
		k = GEMMTiled
	}
	return k
}

// Name returns "cuda".
func (Backend) Name() string { return "cuda" }
