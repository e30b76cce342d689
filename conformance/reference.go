// Package conformance is the conformance suite of the layer: a direct float64 reference, a
// generator of random calls, the checks of case files (fp4moe-case/1 against their reference
// outputs, fp4moe-quant/1 bit for bit), and TestBackend, which runs all of them against any
// moe.Backend in one line:
//
//	func TestConformance(t *testing.T) { conformance.TestBackend(t, native.Backend{}) }
package conformance

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// Reference computes the layer directly in float64, with the weights decoded from their bits
// here: each routed (token, slot) pair's h and z are float64 sums in column order, y is rounded
// to float32 before the FP8 requant (native's group quantizer, which the quant vectors check bit
// for bit), and each token's output is the float64 sum of its slots' router-weighted z, in slot
// order from 0. b must hold A1q and A1qScale (b.X is ignored).
//
// Each weight row is decoded once per chunk of tokens (whose pairs' outputs fit in about 64 MB)
// and applied to every pair of its expert in the chunk, and the experts run on up to GOMAXPROCS
// goroutines; every sum is still taken in the order above, so the result depends on neither
// (TestReferenceSerial compares it bit for bit with the pair-by-pair evaluation).
func Reference(w *moe.Weights, cfg *moe.Config, b *moe.Batch) []float64 {
	return reference(w, cfg, b, 64<<20)
}

// reference is Reference over chunks of tokens whose pairs' z fit in about zBytes.
func reference(w *moe.Weights, cfg *moe.Config, b *moe.Batch, zBytes int) []float64 {
	M, K, topk := b.M, w.K, b.TopK
	out := make([]float64, M*K)
	chunk := max(1, M)
	if per := 8 * topk * K; per > 0 {
		chunk = max(1, zBytes/per)
	}
	for t0 := 0; t0 < M; t0 += chunk {
		referenceTokens(w, cfg, b, t0, min(t0+chunk, M), out)
	}
	return out
}

// referenceTokens computes Reference's rows t0 .. t1-1 into out.
func referenceTokens(w *moe.Weights, cfg *moe.Config, b *moe.Batch, t0, t1 int, out []float64) {
	K, I, topk := w.K, w.I, b.TopK
	p0, p1 := t0*topk, t1*topk
	// The pairs of each local expert, in pair order.
	pairs := make([][]int, w.E)
	for p := p0; p < p1; p++ {
		if e := cfg.LocalExpert(b.TopKIDs[p]); e >= 0 && e < w.E {
			pairs[e] = append(pairs[e], p)
		}
	}
	// z[p - p0]: pair p's router-weighted GEMM2 output, K values (nil for a skipped pair).
	z := make([][]float64, p1-p0)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), w.E)) {
		wg.Go(func() {
			r := newRefExpert(K, I)
			for {
				e := int(next.Add(1) - 1)
				if e >= w.E {
					return
				}
				if len(pairs[e]) > 0 {
					r.expert(w, cfg, b, e, pairs[e], z, p0)
				}
			}
		})
	}
	wg.Wait()
	for t := t0; t < t1; t++ {
		acc := out[t*K : (t+1)*K]
		for k := range topk {
			if zp := z[t*topk+k-p0]; zp != nil {
				for c := range acc {
					acc[c] += zp[c]
				}
			}
		}
	}
}

// refExpert is one goroutine's scratch for Reference.
type refExpert struct {
	K, I int
	row  []float64 // a decoded weight row (K or I values)
	y    []float32
	q    []uint8
}

func newRefExpert(K, I int) *refExpert {
	return &refExpert{K: K, I: I, row: make([]float64, max(K, I)), y: make([]float32, I), q: make([]uint8, moe.ActGroup)}
}

// expert evaluates expert e's pairs (their indices into b's ids, in order) and stores each
// pair's router-weighted z in z[p - p0].
func (r *refExpert) expert(w *moe.Weights, cfg *moe.Config, b *moe.Batch, e int, pairs []int, z [][]float64, p0 int) {
	K, I, topk := r.K, r.I, b.TopK
	n := len(pairs)
	// x: the pairs' dequantized inputs; h: their GEMM1 outputs; yd: their requantized activations.
	x := make([]float64, n*K)
	for i, p := range pairs {
		t := p / topk
		for j := range K {
			x[i*K+j] = fp8Value(b.A1q[t*K+j]) * float64(b.A1qScale[t*K/moe.ActGroup+j/moe.ActGroup])
		}
	}
	h := make([]float64, n*2*I)
	s := make([]float64, n)
	for c := range 2 * I {
		r.dots(s, x, w.W13, w.W13Scale, w.W13Bias, e*2*I+c)
		for i, v := range s {
			h[i*2*I+c] = v
		}
	}
	yd := make([]float64, n*I)
	for i := range n {
		activation(r.y, h[i*2*I:(i+1)*2*I], cfg)
		for g := 0; g < I; g += moe.ActGroup {
			sc := native.QuantizeGroup(r.q, r.y[g:g+moe.ActGroup], cfg.ScaleFormat)
			for j := range r.q {
				yd[i*I+g+j] = fp8Value(r.q[j]) * float64(sc)
			}
		}
	}
	for _, p := range pairs {
		z[p-p0] = make([]float64, K)
	}
	for c := range K {
		r.dots(s, yd, w.W2, w.W2Scale, w.W2Bias, e*K+c)
		for i, p := range pairs {
			wt := float64(b.TopKWeights[p])
			if cfg.ApplyRouterWeightOnInput {
				wt = 1
			}
			z[p-p0][c] = wt * s[i]
		}
	}
}

// dots decodes weight row row of codes and scales (len(v)/len(out) values a row) and sets out[i]
// to its dot product with vector i of v, summed in column order, plus the row's bias when there
// is one.
func (r *refExpert) dots(out, v []float64, codes, scales []uint8, bias []float32, row int) {
	n := len(v) / len(out)
	w := r.row[:n]
	mxfp4Row(w, codes[row*n/2:(row+1)*n/2], scales[row*n/32:(row+1)*n/32])
	for i := range out {
		vi := v[i*n : (i+1)*n]
		s := 0.0
		for j := range n {
			s += vi[j] * w[j]
		}
		if bias != nil {
			s += float64(bias[row])
		}
		out[i] = s
	}
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

// mxfp4Row decodes one MXFP4 row into float64: each code's E2M1 value (sign bit 3, magnitude
// 0, 0.5, 1, 1.5, 2, 3, 4, 6) times its 32-value block's scale 2^(s-127) (NaN for s = 255).
func mxfp4Row(dst []float64, packed, scales []uint8) {
	var val [16]float64
	for c, m := range [8]float64{0, .5, 1, 1.5, 2, 3, 4, 6} {
		val[c], val[c+8] = m, -m // -0 for code 8
	}
	for b0 := 0; b0 < len(dst); b0 += 32 {
		s := scales[b0/32]
		sc := math.Ldexp(1, int(s)-127)
		if s == 255 {
			sc = math.NaN()
		}
		for j := b0; j < min(b0+32, len(dst)); j++ {
			dst[j] = val[packed[j/2]>>(4*(j%2))&0xF] * sc
		}
	}
}

// RelL2 returns ||got - want|| / ||want|| (or ||got|| when want is all zeros). A NaN in
// either slice, or infinities that cancel, give +Inf rather than NaN, so that a check
// written e > tol fails as surely as one written !(e <= tol).
func RelL2[T float32 | float64](got []float32, want []T) float64 {
	var num, den float64
	for i, g := range got {
		d := float64(g) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	e := math.Sqrt(num)
	if den != 0 {
		e = math.Sqrt(num / den)
	}
	if math.IsNaN(e) {
		return math.Inf(1)
	}
	return e
}
