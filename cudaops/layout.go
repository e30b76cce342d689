package cudaops

// groupMajorScales returns the E8M0 block scales s of E experts' n weight rows of kd columns,
// laid out (E, n, kd/32) row-major, in the streaming GEMM's layout (E, n/16, kd/128, 16, 4): per
// block of 16 rows, per 128-column group q, the four scale bytes of each of the 16 rows. So the 16
// rows a warp of moe_gemm_dec takes are 64 contiguous bytes per group (two 32-byte sectors, where
// the row-major layout puts each row's four bytes in a sector of its own), and a block of 16 rows
// keeps all its scales in one place, as row-major does. n is a multiple of 16 and kd of 128.
func groupMajorScales(s []uint8, e, n, kd int) []uint8 {
	kb, g := kd/32, kd/128
	out := make([]uint8, len(s))
	for x := 0; x < e; x++ {
		for r := 0; r < n; r++ {
			src := s[(x*n+r)*kb : (x*n+r+1)*kb]
			for q := 0; q < g; q++ {
				copy(out[(((x*(n/16)+r/16)*g+q)*16+r%16)*4:][:4], src[4*q:4*q+4])
			}
		}
	}
	return out
}
