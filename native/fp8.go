package native

import "math"

// FP8 e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; subnormals down to 2^-9,
// largest finite magnitude 448, no infinities, 0x7F and 0xFF are NaN.

// fp8Table decodes every FP8 e4m3fn byte to float32 (all values are exact in float32).
var fp8Table = func() (t [256]float32) {
	for b := range 256 {
		t[b] = decodeE4M3(uint8(b))
	}
	return t
}()

func decodeE4M3(b uint8) float32 {
	exp := int(b>>3) & 0xF
	man := int(b & 7)
	var v float64
	switch {
	case b&0x7F == 0x7F:
		return float32(math.NaN())
	case exp == 0:
		v = math.Ldexp(float64(man), -9)
	default:
		v = math.Ldexp(float64(8+man), exp-10)
	}
	if b&0x80 != 0 {
		v = -v
	}
	return float32(v)
}

// DecodeE4M3 returns the value of the FP8 e4m3fn bit pattern b.
func DecodeE4M3(b uint8) float32 { return fp8Table[b] }

// EncodeE4M3 rounds f to FP8 e4m3fn: NaN stays NaN (0x7F, or 0xFF when its sign bit is set),
// magnitudes are clamped to 448 (infinities included), and the rest is rounded to nearest,
// ties to the even code. A negative value that rounds to zero encodes as 0x80 (-0).
func EncodeE4M3(f float32) uint8 {
	bits := math.Float32bits(f)
	sign := uint8(bits>>24) & 0x80
	if f != f {
		return sign | 0x7F
	}
	a := bits & 0x7FFFFFFF
	if a >= 0x43E00000 { // |f| >= 448 (infinities too): the largest finite code
		return sign | 0x7E
	}
	exp := int(a>>23) - 127
	if exp < -6 {
		// Subnormal range: the code is |f| / 2^-9 rounded to an integer 0 ... 8 (8 is the
		// smallest normal, 0x08, which the integer code also encodes).
		q := math.RoundToEven(math.Ldexp(float64(math.Float32frombits(a)), 9))
		return sign | uint8(q)
	}
	// Normal: keep 3 of the 23 mantissa bits, round to nearest even on the 20 dropped ones.
	// A carry out of the mantissa moves to the next binade, which the addition handles.
	code := uint32(exp+7)<<3 | (a>>20)&7
	rest := a & 0xFFFFF
	if rest > 0x80000 || (rest == 0x80000 && code&1 == 1) {
		code++
	}
	return sign | uint8(code)
}
