// Package benchdata draws the data the benchmarks run on: random MXFP4 expert weights of a real
// model's expert-layer shape, and token batches (FP8 with group scales, or float32) routed
// uniformly or with Zipf-distributed expert popularity. The same seed gives the same data, so
// that runs of `fp4moe bench` and of the Go benchmarks are comparable across versions.
package benchdata

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"github.com/fp4moe/fp4moe/moe"
)

// Shape is an expert layer of a real model: hidden size K and intermediate size I (padded to
// multiples of 128), E experts, TopK experts a token.
type Shape struct {
	Name          string
	K, I, E, TopK int
}

// Shapes are the layers the benchmarks know; the first three are the default set.
var Shapes = []Shape{
	{"gptoss120b", 2944, 2944, 128, 4},
	{"deepseekv3", 7168, 2048, 256, 8},
	{"qwen3-30b-a3b", 2048, 768, 128, 8},
	// Not in the default set: more shapes for the kernel choices' rules.
	{"qwen3-235b-a22b", 4096, 1536, 128, 8},
	{"deepseekv2-lite", 2048, 1408, 64, 6},
	{"deepseekv4-flash", 4096, 2048, 256, 6}, // ships MXFP4 experts
	{"gptoss20b", 2944, 2944, 32, 4},
}

// DefaultShapes is how many of Shapes the benchmarks run unless told otherwise.
const DefaultShapes = 3

// Lookup returns the shape of that name.
func Lookup(name string) (Shape, bool) {
	for _, s := range Shapes {
		if s.Name == name {
			return s, true
		}
	}
	return Shape{}, false
}

// ExpertBytes is one expert's weight bytes as stored: the E2M1 codes (half a byte a value) and
// E8M0 scales (a byte per 32 values) of W13 (2I × K) and W2 (K × I).
func (s Shape) ExpertBytes() float64 {
	return float64(2*s.I*s.K/2 + 2*s.I*s.K/32 + s.K*s.I/2 + s.K*s.I/32)
}

// FLOPs is the layer's multiply-add work for m tokens, counting 2 a multiply-add: 2·m·topk·3·K·I.
func (s Shape) FLOPs(m int) float64 {
	return 2 * float64(m) * float64(s.TopK) * 3 * float64(s.K) * float64(s.I)
}

// Rotations is how many batches of m tokens with different routings a benchmark rotates over, so
// that a small batch reads its experts' weights from memory rather than from L2: 8, or 2 when
// the batch routes at least 4 rows an expert (every expert is touched anyway).
func (s Shape) Rotations(m int) int {
	if m*s.TopK >= 4*s.E {
		return 2
	}
	return 8
}

// Weights draws weights of the shape quickly: random E2M1 bytes and E8M0 scale bytes of 118 to
// 125 (2^-9 to 2^-2).
func Weights(s Shape, seed uint64) *moe.Weights {
	rng := rand.New(rand.NewPCG(seed, 7))
	fill := func(n int, scale bool) []uint8 {
		b := make([]uint8, n)
		for i := 0; i+8 <= n; i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				x := uint8(v >> (8 * j))
				if scale {
					x = 118 + x%8
				}
				b[i+j] = x
			}
		}
		return b
	}
	return &moe.Weights{E: s.E, K: s.K, I: s.I,
		W13: fill(s.E*2*s.I*s.K/2, false), W13Scale: fill(s.E*2*s.I*s.K/32, true),
		W2: fill(s.E*s.K*s.I/2, false), W2Scale: fill(s.E*s.K*s.I/32, true)}
}

// Batch draws m tokens and their routing. input "fp8" gives E4M3 codes (no NaN) with group
// scales of 1/64, "float" standard-normal float32 values. routing "uniform" gives each token
// TopK distinct experts drawn uniformly, "zipf" TopK distinct experts by popularity ∝ 1/rank^1.2
// (the ranks a random permutation of the experts), "zipf:S" by popularity ∝ 1/rank^S for an
// exponent S in (0, 8] (e.g. "zipf:0.4", milder); every router weight is 1/TopK. It returns the
// batch and how many distinct experts it touches.
func Batch(s Shape, routing, input string, m int, seed uint64) (*moe.Batch, int, error) {
	if input != "fp8" && input != "float" {
		return nil, 0, fmt.Errorf("unknown input %q (want fp8 or float)", input)
	}
	rng := rand.New(rand.NewPCG(seed, 11))
	b := &moe.Batch{M: m, TopK: s.TopK, TopKIDs: make([]int32, m*s.TopK), TopKWeights: make([]float32, m*s.TopK)}
	if input == "float" {
		b.X = make([]float32, m*s.K)
		for i := range b.X {
			b.X[i] = float32(rng.NormFloat64())
		}
	} else {
		b.A1q, b.A1qScale = make([]uint8, m*s.K), make([]float32, m*s.K/128)
		for i := range b.A1q {
			b.A1q[i] = uint8(rng.IntN(0x7F)) | uint8(rng.IntN(2))<<7 // no NaN codes
		}
		for i := range b.A1qScale {
			b.A1qScale[i] = 1.0 / 64
		}
	}
	var cdf []float64
	perm := rng.Perm(s.E)
	if routing != "uniform" {
		exp, err := zipfExponent(routing)
		if err != nil {
			return nil, 0, err
		}
		sum := 0.0
		for r := range s.E {
			sum += 1 / math.Pow(float64(r+1), exp)
			cdf = append(cdf, sum)
		}
		for r := range cdf {
			cdf[r] /= sum
		}
	}
	touched := map[int32]bool{}
	for t := range m {
		used := map[int32]bool{}
		for k := 0; k < s.TopK; {
			var e int32
			if cdf == nil {
				e = int32(rng.IntN(s.E))
			} else {
				e = int32(perm[sort.SearchFloat64s(cdf, rng.Float64())])
			}
			if used[e] {
				continue
			}
			used[e], touched[e] = true, true
			b.TopKIDs[t*s.TopK+k] = e
			b.TopKWeights[t*s.TopK+k] = 1 / float32(s.TopK)
			k++
		}
	}
	return b, len(touched), nil
}

// zipfExponent returns the popularity exponent of a Zipf routing's name: 1.2 for "zipf", S for
// "zipf:S" with S in (0, 8].
func zipfExponent(routing string) (float64, error) {
	if routing == "zipf" {
		return 1.2, nil
	}
	if v, ok := strings.CutPrefix(routing, "zipf:"); ok {
		if exp, err := strconv.ParseFloat(v, 64); err == nil && exp > 0 && exp <= 8 {
			return exp, nil
		}
		return 0, fmt.Errorf("routing %q: the Zipf exponent must be a number in (0, 8]", routing)
	}
	return 0, fmt.Errorf("unknown routing %q (want uniform, zipf or zipf:S)", routing)
}

// CheckNonzero returns an error unless at least half of out is nonzero: a benchmark checks its
// layer's output with it before timing, so as never to time a layer that writes nothing.
func CheckNonzero(out []float32) error {
	nonzero := 0
	for _, v := range out {
		if v != 0 {
			nonzero++
		}
	}
	if nonzero < len(out)/2 {
		return fmt.Errorf("%d of %d outputs nonzero", nonzero, len(out))
	}
	return nil
}
