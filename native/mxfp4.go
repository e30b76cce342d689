package native

import (
	"math"

	"github.com/fp4moe/fp4moe/moe"
)

// E2M1 (4 bits): sign = bit 3, magnitude [0, .5, 1, 1.5, 2, 3, 4, 6][code & 7].
// E8M0 (8 bits): 2^(s-127); 255 is NaN.
// MXFP4: one E8M0 scale per 32 consecutive elements of a row, E2M1 elements packed two per
// byte, element 2j in the low nibble of byte j and element 2j+1 in its high nibble.

// e2m1Table holds the value of every E2M1 code; code 0x8 is negative zero.
var e2m1Table = [16]float32{0, .5, 1, 1.5, 2, 3, 4, 6, negZero, -.5, -1, -1.5, -2, -3, -4, -6}

var negZero = float32(math.Copysign(0, -1))

// e2m1Pairs holds, for every packed byte, the values of its low and high nibbles.
var e2m1Pairs = func() (t [256][2]float32) {
	for b := range 256 {
		t[b] = [2]float32{e2m1Table[b&0xF], e2m1Table[b>>4]}
	}
	return t
}()

// DecodeE2M1 returns the value of the E2M1 code in the low 4 bits of c (the high bits are
// ignored). The code 0x8 decodes to negative zero.
func DecodeE2M1(c uint8) float32 { return e2m1Table[c&0xF] }

// DecodeE8M0 returns 2^(s-127) as a float32 (exact: 2^-127 is a float32 subnormal), or NaN for
// s = 255.
func DecodeE8M0(s uint8) float32 {
	switch s {
	case 0:
		return math.Float32frombits(0x00400000) // 2^-127
	case 255:
		return float32(math.NaN())
	}
	return math.Float32frombits(uint32(s) << 23)
}

// EncodeE2M1 rounds v, already divided by its block scale, to the nearest E2M1 code after
// clamping it to [-6, 6]; ties go to the even code (0.25 → 0, 0.75 → 1, 2.5 → 2, 5 → 4), and a
// negative value that rounds to zero keeps its sign (0x8). NaN encodes as 0x7 or 0xF (±6): E2M1
// has no NaN, so a NaN input block should be avoided.
func EncodeE2M1(v float64) uint8 {
	var sign uint8
	if math.Signbit(v) {
		sign = 8
		v = -v
	}
	var code uint8
	switch {
	case !(v <= 6): // > 6 or NaN
		code = 7
	case v < 0.25:
		code = 0
	case v == 0.25:
		code = 0 // tie 0 (code 0) / 0.5 (code 1): even
	case v < 0.75:
		code = 1
	case v <= 1.25: // 0.75 ties to 1 (code 2); 1.25 ties to 1 (code 2, not 3)
		code = 2
	case v < 1.75:
		code = 3
	case v <= 2.5: // 1.75 ties to 2 (code 4); 2.5 ties to 2 (code 4)
		code = 4
	case v < 3.5:
		code = 5
	case v <= 5: // 3.5 ties to 4 (code 6); 5 ties to 4 (code 6)
		code = 6
	default:
		code = 7
	}
	return sign | code
}

// MXFP4Exponent returns the shared exponent x of a 32-block whose largest magnitude is amax,
// as OCP MX v1.0 defines it: floor(log2(amax)) - 2 taken from the float's exponent bits,
// clamped to [-127, 127]; -127 for an all-zero block. The block's E8M0 scale byte is x + 127.
func MXFP4Exponent(amax float32) int {
	bits := math.Float32bits(amax) & 0x7FFFFFFF
	if bits == 0 {
		return -127
	}
	var floorLog2 int
	if e := int(bits >> 23); e != 0 {
		floorLog2 = e - 127
	} else { // float32 subnormal: 2^-149 · mantissa
		floorLog2 = -149 + 31 - leadingZeros32(bits)
	}
	return max(-127, min(127, floorLog2-2))
}

func leadingZeros32(x uint32) int {
	n := 0
	for x&0x80000000 == 0 {
		x <<= 1
		n++
	}
	return n
}

// QuantizeMXFP4 quantizes one row of float32 values, len(src) a multiple of 32, to MXFP4:
// packed receives len(src)/2 bytes and scales len(src)/32 E8M0 bytes.
func QuantizeMXFP4(packed, scales []uint8, src []float32) {
	nb := len(src) / moe.WeightBlock
	_ = packed[len(src)/2-1]
	_ = scales[nb-1]
	for b := range nb {
		blk := src[b*moe.WeightBlock : (b+1)*moe.WeightBlock]
		var amax float32
		for _, v := range blk {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		x := MXFP4Exponent(amax)
		scales[b] = uint8(x + 127)
		inv := math.Ldexp(1, -x) // exact: a power of two
		out := packed[b*moe.WeightBlock/2 : (b+1)*moe.WeightBlock/2]
		for j := range out {
			lo := EncodeE2M1(float64(blk[2*j]) * inv)
			hi := EncodeE2M1(float64(blk[2*j+1]) * inv)
			out[j] = lo | hi<<4
		}
	}
}

// DequantizeMXFP4 writes the values of one MXFP4 row (len(dst) = 2·len(packed) =
// 32·len(scales)) to dst; every value is exact in float32.
func DequantizeMXFP4(dst []float32, packed, scales []uint8) {
	for b, s := range scales {
		sc := DecodeE8M0(s)
		out := dst[b*moe.WeightBlock : (b+1)*moe.WeightBlock]
		in := packed[b*moe.WeightBlock/2 : (b+1)*moe.WeightBlock/2]
		for j, p := range in {
			v := &e2m1Pairs[p]
			out[2*j] = v[0] * sc
			out[2*j+1] = v[1] * sc
		}
	}
}
