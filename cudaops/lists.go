package cudaops

// The routing kernels' lists of GEMM work and their bounds, which size the workspace and the
// decode GEMMs' grids before the routing has run (the counts are known only on the device). The
// two constants are the kernels' too (layoutConsts checks them against the module at load).
const (
	// segmentRows (MOE_BM): the row alignment of the experts' segments in the permuted layout,
	// and the rows of a GEMM tile.
	segmentRows = 32
	// routeShortTile (ROUTE_SHORT_TILE): a tile of more than this many real rows (two passes or
	// more of the 8-token decode kernels) is long; the lists hold the long tiles' entries first,
	// so that the decode GEMMs place their blocks in the first waves.
	routeShortTile = 8
	// wgfTokens (WGF_TOK, MOE_WG_TOK): the most tokens of the wgmma path's tiles, wg4sTokens
	// (WG4S_TOK) of its small-tile kernel's (moe_gemm_wg4s) and wg4mTokens (WG4M_TOK) of its
	// middle kernel's (moe_gemm_wg4m), the routing's caps (moe_route's wg).
	wgfTokens  = 152
	wg4sTokens = 32
	wg4mTokens = 64
	// wg4sMaxRows: the most routed rows a local expert on average of the batches whose wgmma
	// GEMMs run on moe_gemm_wg4s (wgSmallBatch). Measured on an H200 against moe_gemm_wg4
	// (docs/perf.md, "next/wg4s3 and next/wg4s3n, measured"): 10–20 % faster at 6–24 rows, 2–16 %
	// slower at 32–48 rows of Qwen3-30B-A3B, where the cap splits most experts' rows in two tiles;
	// 5–14 % faster than moe_gemm_wg4m at 22–24 rows ("The middle kernel's tier edges").
	wg4sMaxRows = 24
	// wg4mMaxRows: the most routed rows a local expert on average of the batches past
	// wg4sMaxRows whose wgmma GEMMs run on moe_gemm_wg4m (wgMidBatch), its tiles capped at
	// wg4mTokens: few experts of such batches exceed the cap, whose rows take two tiles and stream
	// their weights twice. Measured on an H200 under GEMMAuto (docs/perf.md, "next/wgloop,
	// next/wg4x6b and next/wg4m, measured" and "The middle kernel's tier edges"): 2.9–5.6 % faster
	// than moe_gemm_wg4 at 26–48 rows an expert for GPT-OSS-120B and Qwen3-30B-A3B, 5–8.5 %
	// slower for GPT-OSS-120B under Zipf routing; at 56 rows −1.4 … +2.8 % (both forced).
	wg4mMaxRows = 48
)

// tileBound returns, for p routed pairs over e local experts, the most rows the permuted layout
// can take and the most tiles of the tile list: Σ_x roundup(count_x, 32) <= p + min(p, e)·31.
func tileBound(p, e int) (rows, tiles int) {
	rows = p + min(p, e)*(segmentRows-1)
	rows = (rows + segmentRows - 1) / segmentRows * segmentRows
	return rows, rows / segmentRows
}

// chunkBound bounds the list of 8-row chunks (a long tile as its chunks, a short tile whole) of
// p routed pairs over e local experts: at most Σ_x ceil(count_x/8) <= (p + 7·min(p, e))/8.
func chunkBound(p, e int) int { return (p + 7*min(p, e)) / 8 }

// heavyBound bounds the heavy list (two entries a long tile, one a short tile) of p routed pairs
// over e local experts: at most twice the tiles, and, as a long tile has at least two 8-row
// chunks, at most the chunk list's entries too. The second is the lower but for a few experts of
// many rows.
func heavyBound(p, e int) int {
	_, tiles := tileBound(p, e)
	return min(2*tiles, chunkBound(p, e))
}

// wgSmallBatch reports whether a wgmma batch of p routed pairs over e local experts runs on the
// small-tile kernel (moe_gemm_wg4s): at most smallRows routed rows a local expert on average.
func wgSmallBatch(p, e, smallRows int) bool { return p <= smallRows*e }

// wgMidBatch reports whether a wgmma batch of p routed pairs over e local experts runs on the
// middle kernel (moe_gemm_wg4m): past the small-tile kernel's rows, at most midRows routed rows
// a local expert on average.
func wgMidBatch(p, e, smallRows, midRows int) bool {
	return !wgSmallBatch(p, e, smallRows) && p <= midRows*e
}

// wgTileCap returns the routing's most tokens a wgmma tile for p routed pairs over e local
// experts: wg4sTokens on the small-tile kernel (wgSmallBatch), wg4mTokens on the middle one
// (wgMidBatch), else wgfTokens.
func wgTileCap(p, e, smallRows, midRows int) int {
	switch {
	case wgSmallBatch(p, e, smallRows):
		return wg4sTokens
	case wgMidBatch(p, e, smallRows, midRows):
		return wg4mTokens
	}
	return wgfTokens
}

// wgTileBound bounds the wgmma path's tile list of p routed pairs over e local experts (each
// expert's rows in ceil(count/cap) tiles, cap = wgTileCap): Σ_x ceil(count_x/cap) <= p/cap +
// min(p, e).
func wgTileBound(p, e, smallRows, midRows int) int {
	return p/wgTileCap(p, e, smallRows, midRows) + min(p, e)
}

// wgTileBoundUpTo bounds wgTileBound over every batch of up to p routed pairs, which a workspace
// sized for p serves: the smaller kernels' caps make more tiles of fewer pairs, so wgTileBound
// is not monotonic in p where each of them stops.
func wgTileBoundUpTo(p, e, smallRows, midRows int) int {
	return max(p/wgfTokens, min(p, midRows*e)/wg4mTokens, min(p, smallRows*e)/wg4sTokens) + min(p, e)
}
