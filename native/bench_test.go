package native

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// benchLayer returns random weights and a random batch: E2M1 codes of every value, scales near
// 2^0, FP8 activations without NaN codes, uniform routing without duplicates.
func benchLayer(m, k, i, e, topk int) (*moe.Weights, *moe.Batch) {
	rng := rand.New(rand.NewPCG(uint64(m*k+i), uint64(e*topk)))
	fill := func(n int, lo, span int) []uint8 {
		b := make([]uint8, n)
		for j := range b {
			b[j] = uint8(lo + rng.IntN(span))
		}
		return b
	}
	w := &moe.Weights{E: e, K: k, I: i,
		W13: fill(e*2*i*k/2, 0, 256), W13Scale: fill(e*2*i*k/32, 120, 6),
		W2: fill(e*k*i/2, 0, 256), W2Scale: fill(e*k*i/32, 120, 6)}
	b := &moe.Batch{M: m, TopK: topk, A1q: fill(m*k, 0, 0x7F), A1qScale: make([]float32, m*k/moe.ActGroup),
		TopKIDs: make([]int32, m*topk), TopKWeights: make([]float32, m*topk)}
	for j := range b.A1q {
		b.A1q[j] |= uint8(rng.IntN(2)) << 7 // random sign; 0x7F is excluded above
	}
	for j := range b.A1qScale {
		b.A1qScale[j] = 1.0 / 64
	}
	for t := range m {
		for kk, id := range rng.Perm(e)[:topk] {
			b.TopKIDs[t*topk+kk] = int32(id)
			b.TopKWeights[t*topk+kk] = 1 / float32(topk)
		}
	}
	return w, b
}

// Expert shapes (K, I) of real models; K = 2880 padded to 2944 for GPT-OSS.
var benchShapes = []struct {
	name       string
	k, i, e, n int // n: top-k
}{
	{"gptoss120b", 2944, 2944, 128, 4},
	{"qwen3-30b-a3b", 2048, 768, 128, 8},
}

// BenchmarkGEMM times the two grouped GEMMs of M rows routed to one expert (GEMM1 M×K by
// K×2I, GEMM2 M×I by I×K, 6·M·K·I FLOPs, weights decoded from MXFP4), beside gonum's float32
// Sgemm of the same shapes on float32 weights.
func BenchmarkGEMM(b *testing.B) {
	for _, s := range benchShapes {
		for _, m := range []int{1, 16, 256} {
			flops := 6 * float64(m) * float64(s.k) * float64(s.i)
			b.Run(fmt.Sprintf("%s/M=%d/native", s.name, m), func(b *testing.B) {
				w, batch := benchLayer(m, s.k, s.i, 1, 1)
				l, err := NewLayer(w, moe.Config{}, Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				// Permute and gather once; time GEMM1 and GEMM2 only.
				out := make([]float32, m*s.k)
				if err := l.Forward(out, batch); err != nil {
					b.Fatal(err)
				}
				l.b = batch
				l.perm.Permute(batch.TopKIDs, m, 1, &l.cfg, 1, 1)
				b.ResetTimer()
				for b.Loop() {
					l.planGEMM(2 * s.i)
					l.pool.run(l, stGEMM1, len(l.items))
					l.planGEMM(s.k)
					l.pool.run(l, stGEMM2, len(l.items))
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
			b.Run(fmt.Sprintf("%s/M=%d/gonum-sgemm", s.name, m), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				r := func(n int) []float32 {
					v := make([]float32, n)
					for j := range v {
						v[j] = rng.Float32() - 0.5
					}
					return v
				}
				a, w13, h := r(m*s.k), r(2*s.i*s.k), make([]float32, m*2*s.i)
				y, w2, z := r(m*s.i), r(s.k*s.i), make([]float32, m*s.k)
				gen := func(rows, cols int, d []float32) blas32.General {
					return blas32.General{Rows: rows, Cols: cols, Stride: cols, Data: d}
				}
				for b.Loop() {
					blas32.Gemm(blas.NoTrans, blas.Trans, 1, gen(m, s.k, a), gen(2*s.i, s.k, w13), 0, gen(m, 2*s.i, h))
					blas32.Gemm(blas.NoTrans, blas.Trans, 1, gen(m, s.i, y), gen(s.k, s.i, w2), 0, gen(m, s.k, z))
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkForward times the whole layer at real expert shapes with 16 experts (fewer than the
// models' 128, to keep the benchmark's memory small; each expert then gets more rows).
func BenchmarkForward(b *testing.B) {
	for _, s := range benchShapes {
		for _, m := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("%s/E=16/M=%d", s.name, m), func(b *testing.B) {
				w, batch := benchLayer(m, s.k, s.i, 16, s.n)
				l, err := NewLayer(w, moe.Config{}, Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				out := make([]float32, m*s.k)
				for b.Loop() {
					if err := l.Forward(out, batch); err != nil {
						b.Fatal(err)
					}
				}
				flops := 6 * float64(m*s.n) * float64(s.k) * float64(s.i)
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				b.ReportMetric(float64(m)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}
