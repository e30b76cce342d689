//go:build cudaops

package cudaops

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
)

// benchLayers are the expert layers BenchmarkForward runs: hidden size K, intermediate size I,
// E experts, top-k.
var benchLayers = []struct {
	name       string
	k, i, e, n int
}{
	{"gptoss120b", 2944, 2944, 128, 4},
	{"deepseekv3", 7168, 2048, 256, 8},
	{"qwen3-30b-a3b", 2048, 768, 128, 8},
}

// BenchmarkForward times the whole layer per call (routing metadata, permute, GEMM1, activation
// and requant, GEMM2, reduce) by CUDA-graph replay at the shapes of GPT-OSS-120B, DeepSeek-V3 and
// Qwen3-30B-A3B, for batches of M tokens of FP8 input with uniform routing:
// BenchmarkForward/gptoss120b/M=1 and so on. The weights are random E2M1 codes with block scales
// near 2^-4 (the shape, not the values, sets the time). Each iteration is one replay; the replays
// rotate over 8 batches of different routings (2 when every expert is touched anyway), so that
// small batches read their weights from memory rather than from L2. Besides ns/op (the wall time
// of b.N back-to-back replays, ending with one synchronization) it reports the device time per
// call from events (device-µs/call) and the weight bytes of the touched experts over it
// (weight-GB/s); SetBytes makes MB/s the same bytes over the wall time. Select one shape or size
// with -bench, e.g. -bench 'Forward/gptoss120b/M=1$'; a shape's weights are drawn and uploaded
// only when one of its sizes runs.
func BenchmarkForward(b *testing.B) {
	for _, s := range benchLayers {
		b.Run(s.name, func(b *testing.B) {
			w := benchWeights(s.k, s.i, s.e, 1)
			l, err := NewLayer(w, moe.GPTOSSConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			perExpert := float64(3 * s.k * s.i * (16 + 1) / 32) // E2M1 codes and E8M0 scales of W13 and W2
			for _, m := range []int{1, 8, 64, 512, 4096} {
				b.Run(fmt.Sprintf("M=%d", m), func(b *testing.B) {
					benchForward(b, l, s.k, s.e, s.n, m, perExpert)
				})
			}
		})
	}
}

// benchForward captures the rotated batches of m tokens on l, checks that a replay writes a
// nonzero, finite output, and times b.N replays.
func benchForward(b *testing.B, l *Layer, k, e, topk, m int, perExpert float64) {
	rotate := 8
	if m*topk >= 4*e {
		rotate = 2
	}
	var graphs []*Graph
	var bufs []*DeviceBuffers
	defer func() {
		for _, g := range graphs {
			g.Close()
		}
		for _, d := range bufs {
			d.Free()
		}
	}()
	touched := 0
	for r := range rotate {
		batch, t := benchBatch(k, e, topk, m, uint64(1000*m+r))
		touched += t
		d, err := l.Upload(batch)
		if err != nil {
			b.Fatal(err)
		}
		bufs = append(bufs, d)
	}
	for _, d := range bufs {
		g, err := l.Capture(d.Out, d.Batch)
		if err != nil {
			b.Fatal(err)
		}
		graphs = append(graphs, g)
	}
	// Every graph once (the warm-up), then the first output: never time a layer that writes
	// nothing.
	if _, err := l.TimeGraphs(graphs, 1, len(graphs)); err != nil {
		b.Fatal(err)
	}
	out, err := bufs[0].Download(m * k)
	if err != nil {
		b.Fatal(err)
	}
	nonzero := 0
	for i, v := range out {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b.Fatalf("output[%d] = %v", i, v)
		}
		if v != 0 {
			nonzero++
		}
	}
	if nonzero < len(out)/2 {
		b.Fatalf("%d of %d outputs nonzero", nonzero, len(out))
	}
	bytes := float64(touched) / float64(rotate) * perExpert
	b.SetBytes(int64(bytes))
	b.ResetTimer()
	ts, err := l.TimeGraphs(graphs, 1, b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(ts[0].Nanoseconds())/1e3, "device-µs/call")
	b.ReportMetric(bytes/ts[0].Seconds()/1e9, "weight-GB/s")
}

// benchWeights draws random weights of the shape quickly: random E2M1 bytes, E8M0 scales of
// 2^-9 to 2^-2.
func benchWeights(k, i, e int, seed uint64) *moe.Weights {
	rng := rand.New(rand.NewPCG(seed, 7))
	fill := func(n int, scale bool) []uint8 {
		b := make([]uint8, n)
		for j := 0; j < n; j += 8 {
			v := rng.Uint64()
			for q := 0; q < 8 && j+q < n; q++ {
				x := uint8(v >> (8 * q))
				if scale {
					x = 118 + x%8
				}
				b[j+q] = x
			}
		}
		return b
	}
	return &moe.Weights{E: e, K: k, I: i,
		W13: fill(e*2*i*k/2, false), W13Scale: fill(e*2*i*k/32, true),
		W2: fill(e*k*i/2, false), W2Scale: fill(e*k*i/32, true)}
}

// benchBatch draws m tokens of FP8 input (E4M3 codes without NaN, group scales 1/64) routed to
// topk distinct experts each, uniformly; it returns the batch and how many experts it touches.
func benchBatch(k, e, topk, m int, seed uint64) (*moe.Batch, int) {
	rng := rand.New(rand.NewPCG(seed, 11))
	b := &moe.Batch{M: m, TopK: topk, TopKIDs: make([]int32, m*topk), TopKWeights: make([]float32, m*topk),
		A1q: make([]uint8, m*k), A1qScale: make([]float32, m*k/128)}
	for j := range b.A1q {
		b.A1q[j] = uint8(rng.IntN(0x7F)) | uint8(rng.IntN(2))<<7
	}
	for j := range b.A1qScale {
		b.A1qScale[j] = 1.0 / 64
	}
	touched := map[int32]bool{}
	for t := range m {
		used := map[int32]bool{}
		for q := 0; q < topk; {
			x := int32(rng.IntN(e))
			if used[x] {
				continue
			}
			used[x], touched[x] = true, true
			b.TopKIDs[t*topk+q], b.TopKWeights[t*topk+q] = x, 1/float32(topk)
			q++
		}
	}
	return b, len(touched)
}
