package native

import "github.com/fp4moe/fp4moe/moe"

// smallRows is the largest number of routed rows of one expert (in a chunk) that the fused
// kernel below handles; an expert with more rows amortises a decoded panel, and gonum's Sgemm
// is faster on it. The choice is made per expert, so a token's result depends (in the last
// bits) on how many rows its expert receives, as with any M-dependent GPU tiling; it never
// depends on the thread count or the segment alignment.
const smallRows = 4

// dotMXFP4 computes, for one MXFP4 weight row (packed, scales) of n = 2·len(packed) elements
// and up to smallRows activation rows a[r][0:n] (stride lda), out[r·ldo] = Σ_j a[r][j]·W[j]:
// each 32-element block is summed in float32 from the unscaled E2M1 values (a table of both
// nibbles of a byte) and multiplied by the block's scale once.
func dotMXFP4(out []float32, ldo int, a []float32, lda, rows int, packed, scales []uint8) {
	var acc [smallRows]float32
	for b, s := range scales {
		sc := DecodeE8M0(s)
		in := (*[moe.WeightBlock / 2]uint8)(packed[b*moe.WeightBlock/2:])
		for r := range rows {
			x := (*[moe.WeightBlock]float32)(a[r*lda+b*moe.WeightBlock:])
			// Four independent partial sums keep the float adds from serialising.
			var s0, s1, s2, s3 float32
			for j := 0; j < len(in); j += 4 {
				p0, p1, p2, p3 := &e2m1Pairs[in[j]], &e2m1Pairs[in[j+1]], &e2m1Pairs[in[j+2]], &e2m1Pairs[in[j+3]]
				s0 += x[2*j]*p0[0] + x[2*j+1]*p0[1]
				s1 += x[2*j+2]*p1[0] + x[2*j+3]*p1[1]
				s2 += x[2*j+4]*p2[0] + x[2*j+5]*p2[1]
				s3 += x[2*j+6]*p3[0] + x[2*j+7]*p3[1]
			}
			acc[r] += ((s0 + s1) + (s2 + s3)) * sc
		}
	}
	for r := range rows {
		out[r*ldo] = acc[r]
	}
}
