package cudaops

// The kernels' blocked weight layouts: a tensor of n rows, each of g column groups of piece bytes
// (row-major), is laid out (n/16, g, 16, piece): per block of 16 rows, per group, the piece of
// each of the 16 rows. blockRows writes that layout of src to dst (both n·g·piece bytes; n is a
// multiple of 16).
func blockRows(dst, src []uint8, n, g, piece int) {
	rb := g * piece
	for r := 0; r < n; r++ {
		row := src[r*rb : (r+1)*rb]
		for q := 0; q < g; q++ {
			copy(dst[((r/16*g+q)*16+r%16)*piece:][:piece], row[piece*q:piece*(q+1)])
		}
	}
}

// blockedScales returns the E8M0 block scales s of E experts' n weight rows of kd columns,
// laid out (E, n, kd/32) row-major, in the kernels' device layout (E, n/16, kd/128, 16, 4): per
// block of 16 rows, per 128-column group, the four scale bytes of each of the 16 rows
// (scale_row in kernels/common.cuh). A group's scales of 16 consecutive rows are then 64
// contiguous bytes, two 32-byte sectors, where the row-major layout puts each row's four bytes
// in a sector of its own; a block of 16 rows keeps all its scales together, as row-major does.
// n is a multiple of 16 and kd of 128.
func blockedScales(s []uint8, e, n, kd int) []uint8 {
	out := make([]uint8, len(s))
	per := n * kd / 32
	for x := 0; x < e; x++ {
		blockRows(out[x*per:(x+1)*per], s[x*per:(x+1)*per], n, kd/128, 4)
	}
	return out
}

// blockedWeights writes to dst the packed E2M1 codes src of n weight rows of kd columns (kd/2
// bytes a row, row-major, one expert's W13 or W2) in the kernels' device layout (n/16, kd/128,
// 16, 64): per block of 16 rows, per 128-column group, the 64 bytes of each of the 16 rows
// (weight_row in kernels/common.cuh). A 16-row block's group is then 1 KB contiguous, which is
// what one warp of the decode GEMM reads per group, where row-major puts each row's 64 bytes in
// half a 128-byte line of its own. dst and src have n·kd/2 bytes; n is a multiple of 16 and kd
// of 128.
func blockedWeights(dst, src []uint8, n, kd int) { blockRows(dst, src, n, kd/128, 64) }
