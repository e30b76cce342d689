package cudaops

// The split decode kernels' grids (the kernels' DEC_WARPS, DEC_BLOCKS and DECW_BLOCKS): blocks of
// decWarps warps, decSplitBlocks blocks an SM for the kernel of 32 weight rows a warp and
// decwBlocks for the one of 64.
const (
	decWarps       = 4
	decSplitBlocks = 4
	decwBlocks     = 3
)

// decSplitFor's grid measure: blocks of decWarps warps on decSplitRows rows each (the 32-row
// kernel's own), decSplitBlocks per SM (its occupancy) for warps of at least 4 column groups,
// decSplitThin per SM for fewer.
const decSplitRows, decSplitThin = 32, 3

// The most waves of decSplitBlocks blocks an SM that decSplitFor lets a grid of split 4 and of
// split 2 take.
const decSplitWaves4, decSplitWaves2 = 3, 6

// decSplitFor returns how many warps share each weight row of the streaming GEMM for n rows of
// kd columns and a bound of tiles, on sms SMs: the largest S of 4, 2 whose grid of 32-row warps
// fits on the device in one wave (decSplitBlocks blocks per SM while each warp keeps at least 4
// of the kd/128 column groups, decSplitThin with fewer), or, while each warp keeps at least 4
// groups, in three waves of decSplitBlocks at S = 4 or six at S = 2 (decSplitWaves4,
// decSplitWaves2); else 1. (Two waves of warps with half the groups each beat
// one wave: GPT-OSS M = 1 43.7 -> 40.5 µs, DeepSeek-V3 108.8 -> 97.3 on an H200; three waves
// took DeepSeek-V3 M = 1 from 85.9 to 82.8 µs. Warps of 1-3 groups, Qwen3's GEMM2, lose to their
// partial sums' reduction unless the grid is small: measuring them at 4 blocks per SM instead of
// 3 made Qwen3 M = 1 and 2 3-4 % slower, while the 4-group rule at 4 blocks per SM made GPT-OSS
// M = 4 and Qwen3 M = 8 about 5 % faster. S = 2 up to six waves instead of three: a grid of
// split 1 in 2.5-5 waves ends with a thin last wave of whole-K blocks, while S = 2's blocks of half
// the work fill their last wave better. On an H100 that took GPT-OSS-120B at 8 and 16 tokens 3.7
// and 2.8 % lower, DeepSeek-V3 at 4 2 %, Qwen3-30B-A3B at 16 and 32 1-2 %; on an H200 DeepSeek-V3
// at 4 tokens 7-9 % and GPT-OSS-120B at 8 2 %. Nine waves were no better on the H200, and
// DeepSeek-V3's GEMM2 at 4 tokens (6.8 waves at S = 2) gave back most of that row's gain.
// docs/perf.md, v28.)
//
// One exception, for the forward's GEMM1 (first): where S = 4 would take more than one wave but
// at most one and a half, it takes S = 2, which then fits in one. A block takes about as long in a
// thin second wave as in a full one (the stage timeline), so the second wave of S = 4 costs a
// block's whole time for a few blocks. On an H200 this took GPT-OSS-120B at one token (1.39
// waves) 2-3 % lower and Qwen3-30B-A3B at two (1.45 waves) 2-4 % lower; DeepSeek-V3 at one token
// (1.94 waves, not taken) was 1-1.4 % slower with it, and GPT-OSS-120B's GEMM2 at two tokens
// (1.39 waves, under the early trigger) 12 % slower. docs/perf.md, v27.
func decSplitFor(n, kd int64, tiles, sms int, first bool) int {
	units, groups := int(n/decSplitRows)*tiles, int(kd/128)
	wave, thin := decSplitBlocks*sms, decSplitThin*sms
	for _, s := range []int{4, 2} {
		blocks, deep := units*s/decWarps, groups >= 4*s
		waves := decSplitWaves4
		if s == 2 {
			waves = decSplitWaves2
		}
		if (deep && blocks <= waves*wave) || blocks <= thin {
			if s == 4 && first && deep && blocks > wave && 2*blocks <= 3*wave {
				return 2
			}
			return s
		}
	}
	return 1
}

// waveFill is the share of its waves' block slots that a grid of blocks fills, at wave blocks a
// wave (resident blocks per SM times SMs): blocks / (⌈blocks / wave⌉ · wave). 0 for an empty
// grid or wave.
func waveFill(blocks, wave int) float64 {
	if blocks <= 0 || wave <= 0 {
		return 0
	}
	return float64(blocks) / float64((blocks+wave-1)/wave*wave)
}

// fillsAsWell reports whether a grid of a blocks at aPerSM resident blocks an SM fills its waves
// at least as well as a grid of b blocks at bPerSM, on sms SMs.
func fillsAsWell(a, aPerSM, b, bPerSM, sms int) bool {
	return waveFill(a, aPerSM*sms) >= waveFill(b, bPerSM*sms)
}

// chainWide decides which of a forward's two streaming GEMMs take the split kernel of 64 weight
// rows a warp, from whether each is a split GEMM (split1, split2: S > 1) and whether its 64-row
// grid fills its waves at least as well as the 32-row kernel's (fill1, fill2; fillsAsWell).
// GEMM2 takes it where its grid fills as well. GEMM1 takes it where its grid fills as well and
// GEMM2 does not then run the 32-row split kernel: on an H200, GPT-OSS-120B at one token with
// GEMM1 on the 64-row kernel and GEMM2 on the 32-row one measured 6.5-8.4 % slower than with both
// on the 32-row kernel, though GEMM1 alone was not slower and both on the 64-row kernel were
// 1.4-2.3 % slower; GEMM1 on the 64-row kernel before a split-1 GEMM2 (Qwen3-30B-A3B, 2 and 4
// tokens) or a 64-row one (GPT-OSS-120B, 2 and 4 tokens) was 1.5-5 % faster (docs/perf.md, v25).
func chainWide(split1, fill1, split2, fill2 bool) (wide1, wide2 bool) {
	wide2 = split2 && fill2
	wide1 = split1 && fill1 && (!split2 || wide2)
	return wide1, wide2
}

// wideSplit reports whether the grid of a split GEMM (n rows, split S, tiles tiles) on the split
// kernel of 64 rows a warp (n·S/256 blocks a tile, decwBlocks an SM) fills its last wave at least
// as well as on the 32-row kernel (n·S/128 a tile, decSplitBlocks an SM). The 64-row kernel
// spends fewer instructions per weight byte, but half the blocks of a grid of under a wave or
// with a thin last wave leave SMs idle. (H200: 2-6 % faster where its waves are as full,
// GPT-OSS-120B and Qwen3-30B-A3B at 2-4 tokens; 3-10 % slower where they are not, DeepSeek-V3's
// GEMM1 at 2 tokens (1.3 waves against 1.9) and Qwen3's at 1 (0.48 wave against 0.73):
// docs/perf.md v24.) splitWide decides from it with chainWide.
func wideSplit(n int64, split, tiles, sms int) bool {
	return fillsAsWell(splitBlocks(n, 64, split, tiles), decwBlocks, splitBlocks(n, 32, split, tiles), decSplitBlocks, sms)
}

// splitBlocks is the grid of a split kernel of rows weight rows a warp (32 or 64) for n rows at
// split S over tiles tiles: n·S/(rows·decWarps) blocks a tile.
func splitBlocks(n int64, rows, split, tiles int) int {
	return int(n) * split / (rows * decWarps) * tiles
}

// wideFirst reports whether the forward's GEMM1 (n rows of kd columns, tiles tiles, on sms SMs),
// which decSplitFor leaves at split 4 in more than one and a half waves of the 32-row kernel
// (with at least 4 column groups a warp), takes the 64-row split kernel at split 2 instead,
// where that grid fits in one wave of decwBlocks an SM. (n is a multiple of 256, as 2I is.)
// (H200: alone, DeepSeek-V3's one-token GEMM1, 1.94 waves at split 4, took 37.3 µs, and 35.2 on
// the 64-row kernel at split 2, 0.65 of a wave (cudaops/kernels/experimental/deci_bench.cu); in
// the forward the rule took DeepSeek-V3 at one token 2.9-3.9 %, GPT-OSS-120B at two 1.8-3.8 % and
// Qwen3-30B-A3B at four 5.6-6.9 % lower, the rows it changes; docs/perf.md, v41.)
func wideFirst(n, kd int64, tiles, sms int) bool {
	narrow, wide := splitBlocks(n, 32, 4, tiles), splitBlocks(n, 64, 2, tiles)
	return kd/128 >= 16 && 2*narrow > 3*decSplitBlocks*sms && wide <= decwBlocks*sms
}

// deepFirst reports whether the forward's GEMM1 (n rows of kd columns, tiles tiles, on sms SMs),
// which decSplitFor and chainWide leave at split 1, or at split 2 on the 32-row kernel, takes
// split 2 on the 64-row kernel whatever its grid's fill (decSplits then also puts a split GEMM2
// on the 64-row kernel, as chainWide asks): where each warp keeps at least 16 column groups
// (kd/128 >= 32, DeepSeek-V3's 7168) and the grid takes at most decSplitWaves2 waves of
// decwBlocks an SM. With that many groups a warp, the 64-row kernel's fewer instructions a
// weight byte outweigh a thinner last wave, which wideSplit's fill measure does not see. (H200,
// alone: DeepSeek-V3's GEMM1 at 16 one-token tiles 71.5 µs at split 2 on the 32-row kernel,
// 67.5 on the 64-row one; at 32 tiles 138.4 and 129.7; at 64 tiles, split 1 on the 64-row kernel,
// 248.8 and 240.0 (cudaops/kernels/experimental/deci_bench.cu). In the forward, interleaved
// A/B, two passes: DeepSeek-V3 at 2 tokens −3.1/−3.0 %, at 4 −2.2/−2.9 %, at 8 −3.3 % in the
// passes' mean (their medians 4 % apart there), 1 and 16 within the spread; docs/perf.md, v42.)
func deepFirst(n, kd int64, tiles, sms int) bool {
	return kd/128 >= 32 && splitBlocks(n, 64, 2, tiles) <= decSplitWaves2*decwBlocks*sms
}

// deepSplit is the split of a GEMM1 that deepFirst puts on the 64-row split kernel (n rows, tiles
// tiles, on sms SMs): 4 where that grid still fits in one wave of decwBlocks an SM, else 2. (A
// grid of under half a wave leaves each SM about six warps to stream with. H200, interleaved A/B,
// two passes: DeepSeek-V4-Flash at one token (6 tiles, 192 blocks at split 2, 384 at 4) 6.1-7.5 %
// lower, Qwen3-235B-A22B at one token (8 tiles) 13.2-13.6 %; every other row's plan unchanged;
// docs/perf.md, "Four more model shapes".)
func deepSplit(n int64, tiles, sms int) int {
	if splitBlocks(n, 64, 4, tiles) <= decwBlocks*sms {
		return 4
	}
	return 2
}

// actWarps is the activation kernel's warps a block for a grid of blocks blocks (a pair's row and
// eight groups of 128 columns each) on sms SMs: 8, a group a warp, while the grid fits one wave
// of 8 such blocks an SM (2048 threads), so that no warp runs a second group's chain after its
// first (at one token 0.7–1.1 µs off the activation's path on an H200); else 4, two groups a
// warp, whose loads in flight together keep twice the bytes in flight an SM (GPT-OSS-120B at
// 4096 tokens: 161 µs against 180 with a group a warp; docs/perf.md v53).
func actWarps(blocks, sms int) int {
	if blocks <= 8*sms {
		return 8
	}
	return 4
}

// moe_route_small's gather (routeSmallGrid): one block gathers rows of up to fusedPermuteBytes
// (one block's gather of larger rows was slower than moe_permute's grid after moe_route on an
// H200, docs/perf.md v13b), larger gathers take a block per routeSmallBlockBytes (8 and 32 KiB
// were within the spread of 16 at 8 tokens on an H200, docs/perf.md v43).
const (
	fusedPermuteBytes    = 64 << 10
	routeSmallBlockBytes = 16 << 10
)

// routeSmallGrid is moe_route_small's grid for p routed pairs of k FP8 bytes a row on sms SMs:
// one block while the rows it gathers, p·k bytes, are at most fusedPermuteBytes, else a block per
// routeSmallBlockBytes, at most one an SM.
func routeSmallGrid(p int, k int64, sms int) int {
	b := int64(p) * k
	if b <= fusedPermuteBytes {
		return 1
	}
	return max(1, min(sms, int((b+routeSmallBlockBytes-1)/routeSmallBlockBytes)))
}

// The early trigger's range (earlyTrigger): GEMM2 weights of at least earlyTriggerBytes over the
// batch's tile bound, and at most earlyTriggerPairs routed pairs.
const (
	earlyTriggerBytes = 20 << 20
	earlyTriggerPairs = 512
)

// earlyTrigger reports whether a decode-path batch of p routed pairs in tiles tiles, on a layer
// of hidden size k and intermediate size i, takes the early trigger (kernels/common.cuh: the
// activation kernel and GEMM2 let the next kernel launch before they wait): where GEMM2's FP4
// weights over the tile bound, tiles·k·i/2 bytes, are at least earlyTriggerBytes. The bound is
// fitted to the bench shapes (docs/perf.md, v26): from 25 MB on (GPT-OSS-120B at 2-8 tokens,
// DeepSeek-V3 at 1-8, Qwen3-30B-A3B at 4 and 8) the early trigger was up to 2.6 % faster on an
// H100 and up to 4 % on an H200, and within the calls' spread at 64 and 512 tokens; at 17 MB and
// less (GPT-OSS-120B at one token, Qwen3-30B-A3B at 1 and 2) it was 2-12 % slower on both cards:
// GEMM2's early blocks delayed GEMM1's last blocks and the activation kernel by about a
// microsecond (the stage timeline), for a GEMM2 too short to win it back. Batches of more than
// earlyTriggerPairs pairs were not measured and keep the trigger after the wait.
func earlyTrigger(p, tiles int, k, i int64) bool {
	return p <= earlyTriggerPairs && int64(tiles)*k*i/2 >= earlyTriggerBytes
}

// The split-1 decode kernels' tokens a pass, by the average routed rows a local expert (at 8
// tokens a pass a tile of 9-16 rows streams its weights twice, one of 17-32 four times):
//   - dec16Rows, dec32Rows: the 16-token kernel (moe_gemm_dec16s) takes batches of more than
//     dec16Rows rows an expert, the 32-token kernel more than dec32Rows. (At 8 rows the 16-token
//     kernel was 14-16 % faster than moe_gemm_dec1 for every bench shape, at 6 rows within
//     noise, at 4 and fewer slower: docs/perf.md v22. At 16 rows an expert over 40 % of the
//     experts route more than 16 under uniform routing, which the 16-token kernel streams twice;
//     at 12 rows about 12 %, and the 32-token kernel with short passes was 4-7 % faster there
//     for GPT-OSS, as fast for DeepSeek-V3: v30.)
//   - wide16Rows, wide32Rows: the same on devices that take the 64-row kernels, where every
//     GEMM's 16-token passes run on 64 rows a warp (moe_gemm_dec16w): 12-13 % fewer
//     instructions a weight byte than the 32-row kernels pay off from 5 rows an expert, and up
//     to 13 over the 32-token kernel's single stream of tiles of 17-32 rows (H200: GPT-OSS-120B
//     and DeepSeek-V3 at 176-192 tokens 2.9-8.9 % faster, at 320-352 1.7-9.2 %, GPT-OSS-120B at
//     384 3.5-7.5 %, GPT-OSS-20B at 48, 88 and 96 tokens 3-7.5 %, Qwen3-30B-A3B at 80-176 tokens
//     2.6-6.4 %; at 13 rows, decode forced, against the 32-token kernel GPT-OSS-120B,
//     DeepSeek-V3, DeepSeek-V4-Flash and Qwen3-235B-A22B 3.7-6.1 % faster, GPT-OSS-20B 1.1 %
//     slower; at 14 rows -5.1 … +6.3 %, at 16 1.1-8.9 % slower; docs/perf.md, entries "The
//     thresholds after v56", "The wide thresholds under Zipf routing" and "GEMMAuto's crossover
//     after v59").
//   - wide32RowsSmall: wide32Rows for layers of small experts (smallExperts), whose 13-row
//     batches were 2.6-3.2 % slower on the 16-token passes than on the 32-token kernel
//     (Qwen3-30B-A3B at 208 tokens, DeepSeek-V2-Lite at 138; docs/perf.md, "GEMMAuto's crossover
//     after v59").
const (
	dec16Rows       = 6
	dec32Rows       = 9
	wide16Rows      = 4
	wide32Rows      = 13
	wide32RowsSmall = 12
)

// passRows returns the thresholds of rows an expert above which a split-1 decode GEMM takes the
// 32- and the 16-token kernel: on devices that take the 64-row kernels (wide) wide32Rows, or
// wide32RowsSmall for layers of small experts (small), and wide16Rows; else dec32Rows and
// dec16Rows.
func passRows(wide, small bool) (t32, t16 int) {
	switch {
	case wide && small:
		return wide32RowsSmall, wide16Rows
	case wide:
		return wide32Rows, wide16Rows
	}
	return dec32Rows, dec16Rows
}

// passTokens returns the tokens a pass of the split-1 decode kernel over p routed pairs on e
// local experts: 32 above t32 rows an expert on average, 16 above t16, else 8.
func passTokens(p, e, t16, t32 int) int {
	switch {
	case p > t32*e:
		return 32
	case p > t16*e:
		return 16
	}
	return 8
}
