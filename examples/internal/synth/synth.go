// Package synth makes random expert layers for the examples: float weights drawn from a normal
// distribution, put through the MXFP4 quantizer, with K and I padded to multiples of 128 the
// way a checkpoint loader pads them (zero weights and biases in the padding).
package synth

import (
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// Pad returns n rounded up to a multiple of 128.
func Pad(n int) int { return (n + moe.ActGroup - 1) / moe.ActGroup * moe.ActGroup }

// Spec describes a random layer: e experts of hidden size K and intermediate size I (before
// padding), with GEMM1 pre-activations of standard deviation HStd and optional biases.
type Spec struct {
	E, K, I int
	HStd    float64
	Bias    bool
	Seed    uint64
}

// Experts builds the layer described by s; progress, if not nil, is called once per finished
// expert (from several goroutines).
func Experts(s Spec, progress func()) *moe.Weights {
	kp, ip := Pad(s.K), Pad(s.I)
	w := &moe.Weights{E: s.E, K: kp, I: ip,
		W13: make([]uint8, s.E*2*ip*kp/2), W13Scale: make([]uint8, s.E*2*ip*kp/32),
		W2: make([]uint8, s.E*kp*ip/2), W2Scale: make([]uint8, s.E*kp*ip/32)}
	if s.Bias {
		w.W13Bias = make([]float32, s.E*2*ip)
		w.W2Bias = make([]float32, s.E*kp)
	}
	hstd := s.HStd
	if hstd == 0 {
		hstd = 1
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			row := make([]float32, max(kp, ip))
			for e := range next {
				rng := rand.New(rand.NewPCG(s.Seed, uint64(e)))
				for r := range 2 * ip {
					clear(row)
					half, n := r/ip, r%ip // gate rows first, then up rows
					if n < s.I {
						for j := range s.K {
							row[j] = float32(rng.NormFloat64() * hstd / math.Sqrt(float64(s.K)))
						}
						if s.Bias {
							w.W13Bias[e*2*ip+half*ip+n] = float32(rng.NormFloat64() * 0.5)
						}
					}
					o := e*2*ip + r
					native.QuantizeMXFP4(w.W13[o*kp/2:(o+1)*kp/2], w.W13Scale[o*kp/32:(o+1)*kp/32], row[:kp])
				}
				for c := range kp {
					clear(row)
					if c < s.K {
						for j := range s.I {
							row[j] = float32(rng.NormFloat64() / math.Sqrt(float64(s.I)))
						}
						if s.Bias {
							w.W2Bias[e*kp+c] = float32(rng.NormFloat64() * 0.5)
						}
					}
					o := e*kp + c
					native.QuantizeMXFP4(w.W2[o*ip/2:(o+1)*ip/2], w.W2Scale[o*ip/32:(o+1)*ip/32], row[:ip])
				}
				if progress != nil {
					progress()
				}
			}
		}()
	}
	for e := range s.E {
		next <- e
	}
	close(next)
	wg.Wait()
	return w
}

// Normal returns n float32 values drawn from N(0, std²).
func Normal(rng *rand.Rand, n int, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * std)
	}
	return v
}
