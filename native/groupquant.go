package native

import (
	"math"

	"github.com/fp4moe/fp4moe/moe"
)

// GroupScale returns the FP8 scale of a group whose largest magnitude is amax:
// s = max(amax, 1e-10) / 448 in float32, and for CeilUE8M0 the smallest power of two >= s,
// taken exactly from the float32 bits (the exponent, plus one when the mantissa is not zero).
// A NaN amax gives a NaN scale.
func GroupScale(amax float32, f moe.ScaleFormat) float32 {
	s := max(amax, 1e-10) / moe.FP8Max
	if f == moe.CeilUE8M0 && s == s {
		bits := math.Float32bits(s)
		if bits&0x7FFFFF != 0 {
			bits = (bits&0x7F800000 + 0x800000) & 0x7F800000
		}
		s = math.Float32frombits(bits)
	}
	return s
}

// QuantizeGroup quantizes one group: q[i] = e4m3(clamp(y[i] / s, ±448)) with the division in
// float32, s = GroupScale(max|y|, f). It returns s.
func QuantizeGroup(q []uint8, y []float32, f moe.ScaleFormat) float32 {
	var amax float32
	for _, v := range y {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	s := GroupScale(amax, f)
	q = q[:len(y)]
	for i, v := range y {
		q[i] = EncodeE4M3(v / s) // EncodeE4M3 clamps to ±448
	}
	return s
}

// QuantizeFP8Rows quantizes a row-major (rows, cols) float32 matrix per token in groups of
// group consecutive columns (cols a multiple of group): q (rows, cols) FP8 e4m3fn bit
// patterns and s (rows, cols/group) float32 scales.
func QuantizeFP8Rows(q []uint8, s []float32, y []float32, rows, cols, group int, f moe.ScaleFormat) {
	g := cols / group
	for r := range rows {
		for j := range g {
			o := r*cols + j*group
			s[r*g+j] = QuantizeGroup(q[o:o+group], y[o:o+group], f)
		}
	}
}

// PackUE8M0 exports power-of-two scales s (rows, groups), as CeilUE8M0 makes them, in the
// packed ue8m0 layout: words (rows, ceil(groups/4)) row-major, byte b (bits 8b ... 8b+7) of word
// p holds the biased exponent log2(s)+127 of group 4p+b, and missing groups' bytes are 0.
func PackUE8M0(words []int32, s []float32, rows, groups int) {
	w := (groups + 3) / 4
	for r := range rows {
		for p := range w {
			var word uint32
			for b := 0; b < 4 && 4*p+b < groups; b++ {
				e := math.Float32bits(s[r*groups+4*p+b]) >> 23 & 0xFF
				word |= e << (8 * b)
			}
			words[r*w+p] = int32(word)
		}
	}
}
