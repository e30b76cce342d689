package conformance

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// Spec describes a random call of the layer.
type Spec struct {
	Name             string
	M, K, I, E, TopK int
	Activation       moe.Activation
	Clamp            bool
	Limit            float32
	ScaleFormat      moe.ScaleFormat
	// GlobalExperts > E places the E local experts among GlobalExperts through an expert map.
	GlobalExperts int
	// ARWOI applies the router weight on the input (TopK must be 1).
	ARWOI bool
	// Dup lets a token pick the same expert more than once.
	Dup bool
	// NegIDs is the fraction of ids replaced by -1.
	NegIDs float64
	// Bias adds random GEMM1 and GEMM2 biases.
	Bias bool
	// HStd scales W13 so that pre-activations have this standard deviation (default 1).
	HStd float64
	// SpreadBits scales the K-blocks of W13 by 2^-d and the input columns by 2^d, d random in
	// [0, SpreadBits], so the E8M0 scales of one row differ by up to SpreadBits binades.
	SpreadBits int
	Seed       uint64
}

// Generate builds the call described by s: float weights drawn from a normal distribution and
// quantized to MXFP4, a float32 input and its FP8 quantization, random routing, and Expected
// from Reference (ExpectedBF16 is left nil).
func Generate(s Spec) *casefile.Case {
	rng := rand.New(rand.NewPCG(s.Seed, 0x5eed))
	eg := s.E
	if s.GlobalExperts > 0 {
		eg = s.GlobalExperts
	}
	hstd := s.HStd
	if hstd == 0 {
		hstd = 1
	}
	M, K, I, E, topk := s.M, s.K, s.I, s.E, s.TopK
	c := &casefile.Case{Name: s.Name, Tolerance: 1e-3}
	c.Config = moe.Config{Activation: s.Activation, Clamp: s.Clamp, ClampLimit: s.Limit,
		Alpha: moe.DefaultAlpha, Beta: moe.DefaultBeta, ScaleFormat: s.ScaleFormat, ApplyRouterWeightOnInput: s.ARWOI}
	// d[b]: the binade shift of K-block b.
	d := make([]int, K/32)
	for b := range d {
		if s.SpreadBits > 0 {
			d[b] = rng.IntN(s.SpreadBits + 1)
		}
	}
	w := &c.Weights
	w.E, w.K, w.I = E, K, I
	w.W13 = make([]uint8, E*2*I*K/2)
	w.W13Scale = make([]uint8, E*2*I*K/32)
	quantizeRows(w.W13, w.W13Scale, E*2*I, K, func(row []float32) {
		for j := range row {
			row[j] = float32(rng.NormFloat64() / math.Sqrt(float64(K)) * hstd * math.Ldexp(1, -d[j/32]))
		}
	})
	w.W2 = make([]uint8, E*K*I/2)
	w.W2Scale = make([]uint8, E*K*I/32)
	quantizeRows(w.W2, w.W2Scale, E*K, I, func(row []float32) {
		for j := range row {
			row[j] = float32(rng.NormFloat64() / math.Sqrt(float64(I)))
		}
	})
	if s.Bias {
		w.W13Bias = normals(rng, E*2*I, 0.5)
		w.W2Bias = normals(rng, E*K, 0.5)
	}
	if s.GlobalExperts > 0 {
		c.Config.ExpertMap = make([]int32, eg)
		for i := range c.Config.ExpertMap {
			c.Config.ExpertMap[i] = -1
		}
		for l, g := range rng.Perm(eg)[:E] {
			c.Config.ExpertMap[g] = int32(l)
		}
		c.Config.NumGlobalExperts = eg
	}
	b := &c.Batch
	b.M, b.TopK = M, topk
	b.TopKIDs = make([]int32, M*topk)
	b.TopKWeights = make([]float32, M*topk)
	for t := range M {
		perm := rng.Perm(eg)
		sum := 0.0
		logits := make([]float64, topk)
		for k := range topk {
			id := int32(perm[k%eg])
			if s.Dup {
				id = int32(rng.IntN(eg))
			}
			if rng.Float64() < s.NegIDs {
				id = -1
			}
			b.TopKIDs[t*topk+k] = id
			logits[k] = math.Exp(rng.NormFloat64())
			sum += logits[k]
		}
		for k := range topk {
			b.TopKWeights[t*topk+k] = float32(logits[k] / sum)
		}
	}
	c.X = make([]float32, M*K)
	for t := range M {
		for j := range K {
			v := rng.NormFloat64() * math.Ldexp(1, d[j/32])
			if s.ARWOI {
				v *= float64(b.TopKWeights[t*topk])
			}
			c.X[t*K+j] = float32(v)
		}
	}
	b.A1q = make([]uint8, M*K)
	b.A1qScale = make([]float32, M*K/moe.ActGroup)
	native.QuantizeFP8Rows(b.A1q, b.A1qScale, c.X, M, K, moe.ActGroup, s.ScaleFormat)
	ref := Reference(w, &c.Config, b)
	c.Expected = make([]float32, len(ref))
	for i, v := range ref {
		c.Expected[i] = float32(v)
	}
	return c
}

// quantizeRows fills rows rows of cols values with draw, one row after another (so the random
// stream is the one a plain loop would use), and quantizes each to MXFP4 into packed (cols/2
// bytes a row) and scales (cols/32 a row): draws a chunk of rows, then quantizes the chunk's rows
// on up to GOMAXPROCS goroutines (each row's codes depend on that row only).
func quantizeRows(packed, scales []uint8, rows, cols int, draw func(row []float32)) {
	const chunk = 512
	buf := make([]float32, min(rows, chunk)*cols)
	workers := runtime.GOMAXPROCS(0)
	for r0 := 0; r0 < rows; r0 += chunk {
		n := min(chunk, rows-r0)
		for r := range n {
			draw(buf[r*cols : (r+1)*cols])
		}
		var wg sync.WaitGroup
		for wk := range min(workers, n) {
			wg.Go(func() {
				for r := wk; r < n; r += workers {
					g := r0 + r
					native.QuantizeMXFP4(packed[g*cols/2:(g+1)*cols/2], scales[g*cols/32:(g+1)*cols/32], buf[r*cols:(r+1)*cols])
				}
			})
		}
		wg.Wait()
	}
}

func normals(rng *rand.Rand, n int, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * std)
	}
	return v
}

// RandomSpecs returns n random specs drawn from seed: small shapes (K and I up to 512, up to
// 40 tokens) over every activation, scale format and routing feature of the contract.
func RandomSpecs(seed uint64, n int) []Spec {
	rng := rand.New(rand.NewPCG(seed, 0xca5e))
	acts := []moe.Activation{moe.SiLU, moe.SwiGLUStep, moe.SwiGLUOAI}
	specs := make([]Spec, n)
	for i := range specs {
		s := Spec{
			M: 1 + rng.IntN(40), K: 128 * (1 + rng.IntN(4)), I: 128 * (1 + rng.IntN(3)),
			E: 1 + rng.IntN(8), Activation: acts[rng.IntN(3)], ScaleFormat: moe.ScaleFormat(rng.IntN(2)),
			HStd: []float64{1, 4}[rng.IntN(2)], Seed: rng.Uint64(),
		}
		s.TopK = 1 + rng.IntN(min(s.E, 4))
		if rng.IntN(3) == 0 {
			s.GlobalExperts = s.E + 1 + rng.IntN(8)
		}
		s.Dup = rng.IntN(4) == 0
		if rng.IntN(3) == 0 {
			s.NegIDs = 0.3
		}
		s.Bias = rng.IntN(3) == 0
		if s.Activation != moe.SwiGLUStep && rng.IntN(2) == 0 {
			s.Clamp, s.Limit = true, float32(1+rng.IntN(10))
		}
		if s.TopK == 1 && rng.IntN(2) == 0 {
			s.ARWOI = true
		}
		if rng.IntN(4) == 0 {
			s.SpreadBits = 10
		}
		s.Name = fmt.Sprintf("random%02d_M%d_K%d_I%d_E%d_top%d_%v", i, s.M, s.K, s.I, s.E, s.TopK, s.Activation)
		specs[i] = s
	}
	return specs
}
