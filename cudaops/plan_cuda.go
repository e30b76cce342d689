//go:build cudaops

package cudaops

import (
	"fmt"

	"github.com/fp4moe/fp4moe/moe"
	"gorgonia.org/cu"
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

// decSplit returns how many warps share each weight row of the streaming GEMM for n rows of kd
// columns and a bound of tiles on this device (decSplitFor); first marks the forward's GEMM1.
func (l *Layer) decSplit(n, kd int64, tiles int, first bool) int {
	return decSplitFor(n, kd, tiles, l.dev.SMs, first)
}

// decSplits returns a decode forward's two streaming GEMMs' splits (decSplit) and whether each
// takes the split kernel of 64 rows a warp (splitWide), at a bound of tiles over p routed pairs;
// GEMM1 takes the 64-row kernel where deepFirst (from split 1 or 2, at deepSplit's split, GEMM2
// then on the 64-row kernel too where it is split) or wideFirst (from split 4, at split 2) says
// so. A batch of more than unsplitRows rows a local expert on average runs both GEMMs unsplit,
// on the kernels of 16 or 32 tokens a pass (decPass), so that its tiles of 9-32 rows stream their
// weights once: the split kernels' passes of 8 tokens would stream them two to four times.
func (l *Layer) decSplits(tiles, p int) (split1, split2 int, wide1, wide2 bool) {
	if p > unsplitRows*l.E {
		return 1, 1, false, false
	}
	K, I := int64(l.K), int64(l.I)
	split1, split2 = l.decSplit(2*I, K, tiles, true), l.decSplit(K, I, tiles, false)
	wide1, wide2 = l.splitWide(2*I, K, split1, split2, tiles)
	if l.splitRows == 0 && split1 <= 2 && !wide1 && deepFirst(2*I, K, tiles, l.dev.SMs) {
		split1, wide1, wide2 = deepSplit(2*I, tiles, l.dev.SMs), true, split2 > 1
	}
	if l.splitRows == 0 && split1 == 4 && wideFirst(2*I, K, tiles, l.dev.SMs) {
		split1, wide1 = 2, true
	}
	return split1, split2, wide1, wide2
}

// predicted reports whether GEMM1 of a batch of p routed pairs works out its tiles from the ids
// (dec_tile's mode 2): decode batches of at most segmentRows pairs, which moe_route_small routes.
func (l *Layer) predicted(p int) bool {
	return l.kernel(p) == GEMMDecode && p <= segmentRows && p <= fusedPermutePairs && !l.noPredict
}

// chunked reports whether GEMM g (1 or 2) of a decode batch of m tokens and p routed pairs, at
// split s, takes the routing's list of 8-row chunks (moe_route's tiles8; chunkTiles
// bounds it) instead of its tile list: on the kernels of 8 tokens a pass (the split kernels, and
// the split-1 ones up to the 16- and 32-token kernels' thresholds: decPass), unless GEMM1
// predicts its tiles (predicted), and unless the batch has at most 8 tokens (there a tile has
// more than 8 rows only where a token repeats an expert, which the tile list serves as well). A
// tile of more than 8 rows is there as its chunks, a block each, so that a hot expert's 9-32 rows
// take one 8-token pass in each of up to four blocks at once (reading the same weights at about
// the same time) instead of up to four passes one after another in one block. The rows and every
// sum are the same.
func (l *Layer) chunked(g, m, p, split int) bool {
	return l.kernel(p) == GEMMDecode && !l.noChunks && m > routeShortTile && p <= maxChunkPairs && (g == 2 || !l.predicted(p)) &&
		l.decPass(split, p) == 8
}

// heavyWide reports whether a decode GEMM of n weight rows over a batch of m tokens and p routed
// pairs, at split s, takes moe_gemm_dec1wh over the routing's heavy list instead of
// moe_gemm_dec1w (the 64-row kernel, which decKernel picks for it) over the chunk list: batches
// of more than 16 tokens (fewer give a tile more than 16 rows only where a token repeats an
// expert) that moe_route routes, on the split-1 GEMMs of 8 tokens a pass (decPass). Each tile
// of more than 16 rows then takes the 32-token pass in two blocks of 128 weight rows each, its
// weights expanded once for its rows, where the 8-row chunks expand them once a chunk; the
// others take the 64-row kernel's pass as before, in the same launch.
func (l *Layer) heavyWide(m, p, split int, n int64) bool {
	return l.kernel(p) == GEMMDecode && !l.noHeavy && m > 16 && p > fusedPermutePairs && p <= maxChunkPairs &&
		l.decPass(split, p) == 8 && split == 1 && n >= l.wideRows
}

// decodeList is the routing's list a streaming GEMM reads its tiles from.
type decodeList uint8

const (
	listTiles  decodeList = iota // the tile list
	listChunks                   // the list of 8-row chunks (chunked)
	listHeavy                    // the heavy list, for moe_gemm_dec1wh (heavyWide)
)

// decList returns the list GEMM g (1 or 2) of n weight rows reads in a batch of m tokens and p
// routed pairs at split s: the heavy list where heavyWide says, else the chunks where chunked
// says, else the tile list.
func (l *Layer) decList(g, m, p, split int, n int64) decodeList {
	switch {
	case l.heavyWide(m, p, split, n):
		return listHeavy
	case l.chunked(g, m, p, split):
		return listChunks
	}
	return listTiles
}

// onList sets a streaming GEMM's launch for the list it reads: the grid's rows, the list's bound,
// and for the heavy list its kernel. launchAll and Plan both take it.
func (l *Layer) onList(gl *gemmLaunch, dl decodeList, p int) {
	switch dl {
	case listChunks:
		gl.grid.y = l.chunkTiles(p)
	case listHeavy:
		gl.fn, gl.grid.y = l.dev.fn.gemmDec1wh, l.heavyTiles(p)
	}
}

// gemmLaunch is the launch of a grouped GEMM's main kernel: its function, grid, block and
// dynamic shared memory.
type gemmLaunch struct {
	fn          cu.Function
	grid, block dim3
	smem        int
}

// gemmMain returns the main kernel's launch for an n-row GEMM of the given kernel over p routed
// pairs in tiles tiles: the streaming GEMM's (decKernel, split and wide as decSplits picks
// them), the wgmma path's moe_gemm_wg4, moe_gemm_wg4m (wgMid) or moe_gemm_wg4s (wgSmall; after
// its tile and staging kernels, which launchAll sizes from this grid), or the tiled moe_gemm. launchAll launches
// it, Layer.Plan reports it.
func (l *Layer) gemmMain(kernel GEMMKernel, n int64, split, p, tiles int, wide bool) gemmLaunch {
	switch kernel {
	case GEMMDecode:
		fn, smem, gx := l.decKernel(n, split, p, wide)
		return gemmLaunch{fn, dim3{gx, tiles, 1}, dim3{32 * decWarps, 1, 1}, smem}
	case GEMMWgmma:
		if l.wgSmall(p) {
			return gemmLaunch{l.dev.fn.gemmWg4s, dim3{int((n + wg4sRows - 1) / wg4sRows), l.wgfTiles(p), 1}, dim3{wg4sThreads, 1, 1}, wg4sSmem}
		}
		if l.wgMid(p) {
			return gemmLaunch{l.dev.fn.gemmWg4m, dim3{int((n + wg4mRows - 1) / wg4mRows), l.wgfTiles(p), 1}, dim3{wg4mThreads, 1, 1}, wg4mSmem}
		}
		return gemmLaunch{l.dev.fn.gemmWg4, dim3{int((n + wg4Rows - 1) / wg4Rows), l.wgfTiles(p), 1}, dim3{wg4Threads, 1, 1}, wg4Smem}
	}
	return gemmLaunch{l.dev.fn.gemm, dim3{int(n / gemmRows), tiles, 1}, dim3{128, 1, 1}, 0}
}

// decKernel picks the streaming GEMM's kernel for an n-row GEMM of split S (decSplit) over p
// routed pairs: its function, dynamic shared memory and grid width (blocks per tile). Split-1
// GEMMs take the kernel of decPass's tokens a pass: of 32 its instance with short passes up to
// dec32sRows rows per local expert on average, of 16 moe_gemm_dec16w on devices that take the
// 64-row kernels (wide16), else moe_gemm_dec16s, of 8 the 64-row kernel when n >= wideRows,
// else the 32-row one. Split GEMMs take the split kernel of 64 rows a warp if wide, else the one
// of 32 (splitWide).
func (l *Layer) decKernel(n int64, split, p int, wide bool) (fn cu.Function, smem, gx int) {
	f := &l.dev.fn
	switch {
	case split > 1 && wide:
		return f.gemmDecW, decwSmem, int(n) * split / (64 * decWarps)
	case split > 1:
		return f.gemmDec, decSmem, int(n) * split / (32 * decWarps)
	}
	switch l.decPass(split, p) {
	case 32:
		if p <= dec32sRows*l.E {
			return f.gemmDec32s, dec32Smem, int(n) / (32 * decWarps)
		}
		return f.gemmDec32, dec32Smem, int(n) / (32 * decWarps)
	case 16:
		if l.wide16 {
			return f.gemmDec16w, dec16wSmem, (int(n) + dec1wRows*decWarps - 1) / (dec1wRows * decWarps)
		}
		return f.gemmDec16s, dec16Smem, int(n) / (32 * decWarps)
	}
	if n >= l.wideRows {
		return f.gemmDec1w, dec1wSmem, (int(n) + dec1wRows*decWarps - 1) / (dec1wRows * decWarps)
	}
	return f.gemmDec1, dec1Smem, int(n) / (32 * decWarps)
}

// decPass returns the tokens a pass (8, 16 or 32) of the streaming kernel decKernel picks for a
// GEMM at split S over p routed pairs: 8 for the split kernels, else by the average rows a local
// expert (passRows: wide32Rows, or wide32RowsSmall for small experts, and wide16Rows on devices
// that take the 64-row kernels, else dec32Rows and dec16Rows; a test's tok32Rows replaces the
// 32-token threshold).
func (l *Layer) decPass(split, p int) int {
	if split > 1 {
		return 8
	}
	t32, t16 := passRows(l.wide16, smallExperts(l.K, l.I))
	if l.tok32Rows >= 0 {
		t32 = l.tok32Rows
	}
	return passTokens(p, l.E, t16, t32)
}

// splitWide reports whether GEMM1 (n1 = 2I rows over K columns, split s1) and GEMM2 (K rows,
// split s2) take the split kernel of 64 rows a warp, at tiles tiles: as splitRows says (64: every
// split GEMM, 32: none), or by chainWide from their splits and grids (wideSplit).
func (l *Layer) splitWide(n1, k int64, s1, s2, tiles int) (wide1, wide2 bool) {
	switch l.splitRows {
	case 64:
		return s1 > 1, s2 > 1
	case 32:
		return false, false
	}
	return chainWide(s1 > 1, s1 > 1 && wideSplit(n1, s1, tiles, l.dev.SMs), s2 > 1, s2 > 1 && wideSplit(k, s2, tiles, l.dev.SMs))
}

// kernel returns the grouped GEMM kernel for a batch of p routed pairs.
func (l *Layer) kernel(p int) GEMMKernel {
	return l.opt.GEMM.resolve(p, l.E, decodeRowsFor(l.K, l.I, l.wide16), l.foldable)
}

// Kernel returns the grouped GEMM kernel a batch of m tokens with topk experts each runs.
func (l *Layer) Kernel(m, topk int) GEMMKernel { return l.kernel(m * topk) }
