// Package conformance is the conformance suite of the layer: a direct float64 reference, a
// generator of random calls, the checks of case files (fp4moe-case/1 against their reference
// outputs, fp4moe-quant/1 bit for bit), and TestBackend, which runs all of them against any
// moe.Backend in one line:
//
//	func TestConformance(t *testing.T) { conformance.TestBackend(t, native.Backend{}) }
package conformance

import (
	"math"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// Reference computes the layer directly in float64, one (token, slot) pair at a time, with
// the weights decoded from their bits here: h and z are float64 sums, y is rounded to float32
// before the FP8 requant (native's group quantizer, which the quant vectors check bit for bit),
// and the output is the float64 weighted sum. b must hold A1q and A1qScale (b.X is ignored).
func Reference(w *moe.Weights, cfg *moe.Config, b *moe.Batch) []float64 {
	M, K, I, topk := b.M, w.K, w.I, b.TopK
	out := make([]float64, M*K)
	x := make([]float64, K)
	h := make([]float64, 2*I)
	y := make([]float32, I)
	q := make([]uint8, moe.ActGroup)
	yd := make([]float64, I)
	w13 := make([]float64, K)
	w2 := make([]float64, I)
	for t := range M {
		for j := range K {
			x[j] = fp8Value(b.A1q[t*K+j]) * float64(b.A1qScale[t*K/moe.ActGroup+j/moe.ActGroup])
		}
		acc := out[t*K : (t+1)*K]
		for k := range topk {
			e := cfg.LocalExpert(b.TopKIDs[t*topk+k])
			if e < 0 {
				continue
			}
			for n := range 2 * I {
				row := e*2*I + n
				mxfp4Row(w13, w.W13[row*K/2:(row+1)*K/2], w.W13Scale[row*K/32:(row+1)*K/32])
				s := 0.0
				for j := range K {
					s += x[j] * w13[j]
				}
				if w.W13Bias != nil {
					s += float64(w.W13Bias[row])
				}
				h[n] = s
			}
			activation(y, h, cfg)
			for g := 0; g < I; g += moe.ActGroup {
				sc := native.QuantizeGroup(q, y[g:g+moe.ActGroup], cfg.ScaleFormat)
				for j := range q {
					yd[g+j] = fp8Value(q[j]) * float64(sc)
				}
			}
			wt := float64(b.TopKWeights[t*topk+k])
			if cfg.ApplyRouterWeightOnInput {
				wt = 1
			}
			for c := range K {
				row := e*K + c
				mxfp4Row(w2, w.W2[row*I/2:(row+1)*I/2], w.W2Scale[row*I/32:(row+1)*I/32])
				s := 0.0
				for j := range I {
					s += yd[j] * w2[j]
				}
				if w.W2Bias != nil {
					s += float64(w.W2Bias[row])
				}
				acc[c] += wt * s
			}
		}
	}
	return out
}

// activation evaluates the activation in float64 and rounds y to float32.
func activation(y []float32, h []float64, cfg *moe.Config) {
	I := len(y)
	L, clamp := cfg.Limit()
	lim := float64(L)
	sig := func(v float64) float64 { return 1 / (1 + math.Exp(-v)) }
	for j := range y {
		g, u := h[j], h[I+j]
		var v float64
		switch cfg.Activation {
		case moe.SiLU:
			if clamp {
				g, u = math.Min(g, lim), math.Max(-lim, math.Min(u, lim))
			}
			v = g * sig(g) * u
		case moe.SwiGLUStep:
			v = math.Min(g*sig(g), 7) * math.Max(-7, math.Min(u, 7))
		case moe.SwiGLUOAI:
			g, u = math.Min(g, lim), math.Max(-lim, math.Min(u, lim))
			v = (u + float64(cfg.Beta)) * g * sig(float64(cfg.Alpha)*g)
		}
		y[j] = float32(v)
	}
}

// fp8Value decodes an FP8 e4m3fn byte from its fields.
func fp8Value(b uint8) float64 {
	e, m := int(b>>3&0xF), float64(b&7)
	var v float64
	switch {
	case b&0x7F == 0x7F:
		return math.NaN()
	case e == 0:
		v = m / 8 * math.Ldexp(1, -6)
	default:
		v = (1 + m/8) * math.Ldexp(1, e-7)
	}
	if b&0x80 != 0 {
		v = -v
	}
	return v
}

// mxfp4Row decodes one MXFP4 row into float64.
func mxfp4Row(dst []float64, packed, scales []uint8) {
	mag := [8]float64{0, .5, 1, 1.5, 2, 3, 4, 6}
	for j := range dst {
		nib := packed[j/2] >> (4 * (j % 2)) & 0xF
		v := mag[nib&7]
		if nib&8 != 0 {
			v = -v
		}
		s := scales[j/32]
		sc := math.Ldexp(1, int(s)-127)
		if s == 255 {
			sc = math.NaN()
		}
		dst[j] = v * sc
	}
}

// RelL2 returns ||got - want|| / ||want|| (or ||got|| when want is all zeros).
func RelL2[T float32 | float64](got []float32, want []T) float64 {
	var num, den float64
	for i, g := range got {
		d := float64(g) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
