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
