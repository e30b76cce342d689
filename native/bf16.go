package native

import "math"

// DecodeBF16 returns the float32 value of a bfloat16 bit pattern (exact).
func DecodeBF16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// EncodeBF16 rounds f to bfloat16, to nearest with ties to even; NaN stays NaN.
func EncodeBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if f != f {
		return uint16(u>>16) | 0x40 // keep a quiet NaN
	}
	u += 0x7FFF + (u>>16)&1
	return uint16(u >> 16)
}
