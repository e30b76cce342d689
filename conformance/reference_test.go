package conformance

import (
	"bytes"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// TestReferenceGolden checks Reference against the golden cases' outputs, which an independent
// PyTorch float64 reference wrote.
func TestReferenceGolden(t *testing.T) {
	for _, c := range GoldenCases(t) {
		got := Reference(&c.Weights, &c.Config, &c.Batch)
		g32 := make([]float32, len(got))
		for i, v := range got {
			g32[i] = float32(v)
		}
		e := RelL2(g32, c.Expected)
		t.Logf("%-24s rel L2 %.3e", c.Name, e)
		if !(e <= 1e-6) {
			t.Errorf("%s: Reference is %.3e (rel L2) from the golden output", c.Name, e)
		}
	}
}

// TestReferenceSerial compares Reference bitwise with referenceSerial, the plain pair-by-pair
// evaluation it reorders (every float64 sum in the same order), on calls that cover the
// contract's features, at one worker and at several, in one chunk of tokens and in several.
func TestReferenceSerial(t *testing.T) {
	specs := []Spec{
		{Name: "silu", M: 5, K: 256, I: 128, E: 4, TopK: 2, Activation: moe.SiLU, Seed: 1},
		{Name: "oai bias map neg dup", M: 9, K: 384, I: 256, E: 6, GlobalExperts: 11, TopK: 3, Activation: moe.SwiGLUOAI, Bias: true, Dup: true, NegIDs: 0.3, Seed: 2},
		{Name: "step float32 scales", M: 3, K: 128, I: 384, E: 3, TopK: 3, Activation: moe.SwiGLUStep, ScaleFormat: moe.Float32, Seed: 3},
		{Name: "clamp spread", M: 7, K: 512, I: 128, E: 5, TopK: 2, Activation: moe.SiLU, Clamp: true, Limit: 3, SpreadBits: 12, HStd: 4, Seed: 4},
		{Name: "arwoi", M: 6, K: 256, I: 256, E: 4, TopK: 1, Activation: moe.SwiGLUOAI, ARWOI: true, Seed: 5},
		{Name: "one token, all ids -1", M: 1, K: 128, I: 128, E: 2, TopK: 2, Activation: moe.SiLU, NegIDs: 1, Seed: 6},
	}
	for _, s := range specs {
		c := Generate(s)
		want := referenceSerial(&c.Weights, &c.Config, &c.Batch)
		for _, run := range []struct{ procs, chunkTokens int }{{1, 0}, {4, 0}, {4, 2}, {3, 1}} {
			old := runtime.GOMAXPROCS(run.procs)
			got := Reference(&c.Weights, &c.Config, &c.Batch)
			if run.chunkTokens > 0 {
				got = reference(&c.Weights, &c.Config, &c.Batch, run.chunkTokens*8*s.TopK*s.K)
			}
			runtime.GOMAXPROCS(old)
			for i := range want {
				if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
					t.Fatalf("%s, %d workers, chunks of %d tokens (0: one): output[%d] = %v, want %v", s.Name, run.procs, run.chunkTokens, i, got[i], want[i])
				}
			}
		}
	}
}

// TestMXFP4Row checks the row decoder against the format's definition on every code and scale
// byte (255 decodes to NaN).
func TestMXFP4Row(t *testing.T) {
	mag := [8]float64{0, .5, 1, 1.5, 2, 3, 4, 6}
	packed := make([]uint8, 128) // 256 values: codes 0..15 in every position of 8 blocks
	for i := range packed {
		packed[i] = uint8(i%8*2) | uint8(i%8*2+1)<<4
	}
	for s := range 256 {
		scales := make([]uint8, 8)
		for b := range scales {
			scales[b] = uint8(s)
		}
		dst := make([]float64, 256)
		mxfp4Row(dst, packed, scales)
		for j, v := range dst {
			nib := packed[j/2] >> (4 * (j % 2)) & 0xF
			want := mag[nib&7] * math.Ldexp(1, s-127)
			if nib&8 != 0 {
				want = -mag[nib&7] * math.Ldexp(1, s-127)
			}
			if s == 255 {
				want = math.NaN()
			}
			if math.Float64bits(v) != math.Float64bits(want) && !(math.IsNaN(v) && math.IsNaN(want)) {
				t.Fatalf("scale %d, code %#x: %v, want %v", s, nib, v, want)
			}
		}
	}
}

// rowDot decodes one MXFP4 weight row (codes and scales) into buf, then returns Σ_j x[j]·buf[j],
// summed in order of j.
func rowDot(buf []float64, codes, scales []uint8, x []float64) float64 {
	mxfp4Row(buf, codes, scales)
	s := 0.0
	for j := range x {
		s += x[j] * buf[j]
	}
	return s
}

// referenceSerial is Reference evaluated one (token, slot) pair at a time, decoding each weight
// row for every pair: slow, and the definition Reference must match bit for bit.
func referenceSerial(w *moe.Weights, cfg *moe.Config, b *moe.Batch) []float64 {
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
				s := rowDot(w13, w.W13[row*K/2:(row+1)*K/2], w.W13Scale[row*K/32:(row+1)*K/32], x)
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
				s := rowDot(w2, w.W2[row*I/2:(row+1)*I/2], w.W2Scale[row*I/32:(row+1)*I/32], yd)
				if w.W2Bias != nil {
					s += float64(w.W2Bias[row])
				}
				acc[c] += wt * s
			}
		}
	}
	return out
}

// TestQuantizeRows compares quantizeRows with a plain loop that draws and quantizes one row at a
// time, over more rows than a chunk and a last chunk that is not full.
func TestQuantizeRows(t *testing.T) {
	const rows, cols = 1300, 96
	draw := func(rng *rand.Rand) func([]float32) {
		return func(row []float32) {
			for j := range row {
				row[j] = float32(rng.NormFloat64() * math.Ldexp(1, j%7-3))
			}
		}
	}
	wantP, wantS := make([]uint8, rows*cols/2), make([]uint8, rows*cols/32)
	d := draw(rand.New(rand.NewPCG(9, 9)))
	row := make([]float32, cols)
	for r := range rows {
		d(row)
		native.QuantizeMXFP4(wantP[r*cols/2:(r+1)*cols/2], wantS[r*cols/32:(r+1)*cols/32], row)
	}
	for _, procs := range []int{1, 3} {
		old := runtime.GOMAXPROCS(procs)
		gotP, gotS := make([]uint8, rows*cols/2), make([]uint8, rows*cols/32)
		quantizeRows(gotP, gotS, rows, cols, draw(rand.New(rand.NewPCG(9, 9))))
		runtime.GOMAXPROCS(old)
		if !bytes.Equal(gotP, wantP) || !bytes.Equal(gotS, wantS) {
			t.Fatalf("%d workers: quantizeRows differs from the row-by-row loop", procs)
		}
	}
}

// TestRelL2 checks RelL2's value on named cases, NaN and cancelling infinities included (+Inf,
// so that a check written e > tol fails).
func TestRelL2(t *testing.T) {
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	for _, c := range []struct {
		name      string
		got, want []float32
		e         float64
	}{
		{"equal", []float32{1, -2, 3}, []float32{1, -2, 3}, 0},
		{"3-4-5", []float32{3, 4}, []float32{0, 8}, 5.0 / 8},
		{"zero want", []float32{3, -4}, []float32{0, 0}, 5},
		{"both zero", []float32{0, 0}, []float32{0, 0}, 0},
		{"NaN got", []float32{nan, 1}, []float32{1, 1}, math.Inf(1)},
		{"NaN want", []float32{1, 1}, []float32{1, nan}, math.Inf(1)},
		{"NaN both", []float32{nan}, []float32{nan}, math.Inf(1)},
		{"Inf got", []float32{inf, 1}, []float32{1, 1}, math.Inf(1)},
		{"Inf both", []float32{inf}, []float32{inf}, math.Inf(1)},
	} {
		if e := RelL2(c.got, c.want); e != c.e {
			t.Errorf("%s: RelL2 = %v, want %v", c.name, e, c.e)
		}
	}
}
