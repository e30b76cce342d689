package native

import (
	"math"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
)

func TestDecodeE4M3(t *testing.T) {
	cases := []struct {
		b    uint8
		want float64
	}{
		{0x00, 0}, {0x01, math.Ldexp(1, -9)}, {0x07, 7 * math.Ldexp(1, -9)}, {0x08, math.Ldexp(1, -6)},
		{0x38, 1}, {0x39, 1.125}, {0x40, 2}, {0x7E, 448}, {0x7D, 416}, {0xB8, -1}, {0xFE, -448},
	}
	for _, c := range cases {
		if got := float64(DecodeE4M3(c.b)); got != c.want {
			t.Errorf("DecodeE4M3(%#02x) = %v, want %v", c.b, got, c.want)
		}
	}
	for _, b := range []uint8{0x7F, 0xFF} {
		if v := DecodeE4M3(b); v == v {
			t.Errorf("DecodeE4M3(%#02x) = %v, want NaN", b, v)
		}
	}
	if v := DecodeE4M3(0x80); v != 0 || !math.Signbit(float64(v)) {
		t.Errorf("DecodeE4M3(0x80) = %v, want -0", v)
	}
}

func TestEncodeE4M3(t *testing.T) {
	sub := math.Ldexp(1, -9)
	cases := []struct {
		name string
		f    float32
		want uint8
	}{
		{"zero", 0, 0x00},
		{"negative zero", float32(math.Copysign(0, -1)), 0x80},
		{"one", 1, 0x38},
		{"max", 448, 0x7E},
		{"clamp 500", 500, 0x7E},
		{"clamp -1e30", -1e30, 0xFE},
		{"+inf clamps", float32(math.Inf(1)), 0x7E},
		{"-inf clamps", float32(math.Inf(-1)), 0xFE},
		{"tie 1.0625 to even 1.0", 1.0625, 0x38},
		{"tie 1.1875 to even 1.25", 1.1875, 0x3A},
		{"above tie rounds up", 1.0626, 0x39},
		{"464 rounds to 448", 464, 0x7E},
		{"smallest subnormal", float32(sub), 0x01},
		{"half smallest subnormal ties to 0", float32(sub / 2), 0x00},
		{"negative tiny to -0", float32(-sub / 4), 0x80},
		{"1.5 subnormals ties to 2", float32(1.5 * sub), 0x02},
		{"2.5 subnormals ties to 2", float32(2.5 * sub), 0x02},
		{"7.5 subnormals ties to min normal", float32(7.5 * sub), 0x08},
		{"float32 denormal", math.Float32frombits(1), 0x00},
	}
	for _, c := range cases {
		if got := EncodeE4M3(c.f); got != c.want {
			t.Errorf("%s: EncodeE4M3(%v) = %#02x, want %#02x", c.name, c.f, got, c.want)
		}
	}
	if got := EncodeE4M3(float32(math.NaN())); got&0x7F != 0x7F {
		t.Errorf("EncodeE4M3(NaN) = %#02x, want NaN", got)
	}
	// Every finite code round-trips, and encoding is monotone between codes.
	for b := range 256 {
		v := DecodeE4M3(uint8(b))
		if v != v {
			continue
		}
		if got := EncodeE4M3(v); got != uint8(b) {
			t.Errorf("EncodeE4M3(DecodeE4M3(%#02x) = %v) = %#02x", b, v, got)
		}
	}
}

// TestEncodeE4M3Exhaustive compares EncodeE4M3 with a nearest-value search over all finite
// codes, for float32 values sampled densely across the whole FP8 range.
func TestEncodeE4M3Exhaustive(t *testing.T) {
	var vals [127]float64
	for b := range 127 {
		vals[b] = float64(DecodeE4M3(uint8(b)))
	}
	near := func(a float64) uint8 {
		a = math.Min(a, 448)
		best := 0
		for b := 1; b < 127; b++ {
			d, db := math.Abs(vals[b]-a), math.Abs(vals[best]-a)
			if d < db || (d == db && b%2 == 0) {
				best = b
			}
		}
		return uint8(best)
	}
	for bits := uint32(0x30000000); bits < 0x44000000; bits += 0x1357 {
		f := math.Float32frombits(bits)
		if got, want := EncodeE4M3(f), near(float64(f)); got != want {
			t.Fatalf("EncodeE4M3(%v) = %#02x, nearest is %#02x", f, got, want)
		}
		if got, want := EncodeE4M3(-f), 0x80|near(float64(f)); got != want {
			t.Fatalf("EncodeE4M3(%v) = %#02x, want %#02x", -f, got, want)
		}
	}
}

func TestE2M1(t *testing.T) {
	want := []float32{0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6}
	for c, w := range want {
		if got := DecodeE2M1(uint8(c)); got != w {
			t.Errorf("DecodeE2M1(%d) = %v, want %v", c, got, w)
		}
	}
	enc := []struct {
		v    float64
		want uint8
	}{
		{0, 0}, {0.25, 0}, {0.2501, 1}, {0.75, 2}, {1.25, 2}, {1.26, 3}, {1.75, 4}, {2.5, 4}, {2.51, 5},
		{3.5, 6}, {5, 6}, {5.01, 7}, {6, 7}, {100, 7}, {-0.1, 8}, {-0.25, 8}, {-0.75, 10}, {-5, 14}, {-7, 15},
	}
	for _, c := range enc {
		if got := EncodeE2M1(c.v); got != c.want {
			t.Errorf("EncodeE2M1(%v) = %#x, want %#x", c.v, got, c.want)
		}
	}
}

func TestE8M0AndExponent(t *testing.T) {
	if DecodeE8M0(127) != 1 || DecodeE8M0(128) != 2 || DecodeE8M0(1) != float32(math.Ldexp(1, -126)) ||
		DecodeE8M0(0) != float32(math.Ldexp(1, -127)) || DecodeE8M0(254) != float32(math.Ldexp(1, 127)) {
		t.Error("DecodeE8M0 values")
	}
	if v := DecodeE8M0(255); v == v {
		t.Error("DecodeE8M0(255) is not NaN")
	}
	cases := []struct {
		amax float32
		want int
	}{
		{0, -127}, {1, -2}, {6, 0}, {7.999, 0}, {8, 1}, {0.5, -3},
		{math.Nextafter32(8, 0), 0}, // a float32 log2 rounds this to 3
		{math.Float32frombits(1), -127},
		{math.MaxFloat32, 125},
	}
	for _, c := range cases {
		if got := MXFP4Exponent(c.amax); got != c.want {
			t.Errorf("MXFP4Exponent(%v) = %d, want %d", c.amax, got, c.want)
		}
	}
}

func TestMXFP4RoundTrip(t *testing.T) {
	src := make([]float32, 64)
	for i := range src {
		src[i] = float32(i-20) * 0.37
	}
	src[40] = 0
	packed := make([]uint8, 32)
	scales := make([]uint8, 2)
	QuantizeMXFP4(packed, scales, src)
	back := make([]float32, 64)
	DequantizeMXFP4(back, packed, scales)
	for b := range 2 {
		sc := float64(DecodeE8M0(scales[b]))
		for i := b * 32; i < (b+1)*32; i++ {
			// Within half the coarsest E2M1 step (2·scale), or clipped at 6·scale from below
			// 8·scale: within 2·scale either way.
			if d := math.Abs(float64(back[i] - src[i])); d > 2*sc {
				t.Fatalf("element %d: %v back as %v (scale %v)", i, src[i], back[i], sc)
			}
		}
	}
	// An all-zero block gets scale byte 0.
	QuantizeMXFP4(packed[:16], scales[:1], make([]float32, 32))
	if scales[0] != 0 {
		t.Fatalf("all-zero block scale %d, want 0", scales[0])
	}
}

func TestGroupScale(t *testing.T) {
	cases := []struct {
		name string
		amax float32
		f    moe.ScaleFormat
		want float32
	}{
		{"float32 keeps amax/448", 448, moe.Float32, 1},
		{"float32 3", 3, moe.Float32, 3.0 / 448},
		{"ceil exact power of two", 448 * 0.25, moe.CeilUE8M0, 0.25},
		{"ceil rounds up", 449, moe.CeilUE8M0, 2},
		{"zero group uses 1e-10", 0, moe.Float32, float32(1e-10) / 448},
		{"zero group ceil", 0, moe.CeilUE8M0, float32(math.Ldexp(1, -42))},
		// amax/448 = 2^-10·(1+2^-23): a float log2 gets this wrong.
		{"one ulp above a power", float32(0.4375) + float32(math.Ldexp(1, -25)), moe.CeilUE8M0, float32(math.Ldexp(1, -9))},
	}
	for _, c := range cases {
		if got := GroupScale(c.amax, c.f); got != c.want {
			t.Errorf("%s: GroupScale(%v) = %v, want %v", c.name, c.amax, got, c.want)
		}
	}
}

func TestPackUE8M0(t *testing.T) {
	s := []float32{1, 2, 0.5, 4, 8, 1, 1, 1, 1, 0.25}
	words := make([]int32, 2*2)
	PackUE8M0(words, s, 2, 5)
	// row 0: groups 1,2,0.5,4 | 8 ; row 1: 1,1,1,1 | 0.25
	want := []uint32{127 | 128<<8 | 126<<16 | 129<<24, 130, 127 | 127<<8 | 127<<16 | 127<<24, 125}
	for i, w := range want {
		if uint32(words[i]) != w {
			t.Errorf("word %d = %#08x, want %#08x", i, uint32(words[i]), w)
		}
	}
}

func TestBF16(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3F80}, {-2, 0xC000}, {0, 0}, {float32(math.Inf(1)), 0x7F80},
		{math.Float32frombits(0x3F808000), 0x3F80}, // tie to even (down)
		{math.Float32frombits(0x3F818000), 0x3F82}, // tie to even (up)
		{math.Float32frombits(0x3F808001), 0x3F81},
		{math.MaxFloat32, 0x7F80}, // rounds to infinity
	}
	for _, c := range cases {
		if got := EncodeBF16(c.f); got != c.want {
			t.Errorf("EncodeBF16(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if v := DecodeBF16(EncodeBF16(float32(math.NaN()))); v == v {
		t.Error("NaN did not survive bf16")
	}
	for _, b := range []uint16{0x3F80, 0xC2F7, 0x0001, 0x8000} {
		if EncodeBF16(DecodeBF16(b)) != b {
			t.Errorf("bf16 %#04x does not round-trip", b)
		}
	}
}
