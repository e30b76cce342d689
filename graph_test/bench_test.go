package graphtest

import (
	"fmt"
	"testing"

	"github.com/fp4moe/fp4moe/internal/benchdata"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/op"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// BenchmarkExpertsGraph times the experts op inside a Gorgonia graph against the layer it wraps,
// wall time a call, on op.DefaultBackend (the CUDA backend in a -tags cudaops build on a Hopper
// GPU: GPT-OSS-120B's and Qwen3-30B-A3B's shapes; else the pure-Go backend on a small layer of
// 16 experts), FP8 input, uniform routing, for 1, 64 and 512 tokens:
//   - forward: the backend layer's Forward on Go slices (the host path);
//   - graph: a tape machine over one Experts node: the four inputs bound (G.Let), RunAll, the
//     output read as the node's value, Reset;
//   - graph-read: the same with the output read through G.Read (which copies it every run);
//   - graph-reuse: graph with the layer made WithReusedOutput (no new output each run).
//
// graph less forward is what the graph adds a call. BenchmarkExpertsGraph/gptoss120b/M=1/graph
// and so on.
func BenchmarkExpertsGraph(b *testing.B) {
	shapes := []benchdata.Shape{{Name: "small", K: 512, I: 512, E: 16, TopK: 4}}
	if op.DefaultBackend().Name() != "native" {
		shapes = nil
		for _, name := range []string{"gptoss120b", "qwen3-30b-a3b"} {
			s, _ := benchdata.Lookup(name)
			shapes = append(shapes, s)
		}
	}
	for _, s := range shapes {
		b.Run(s.Name, func(b *testing.B) {
			w := benchdata.Weights(s, 1)
			cfg := moe.GPTOSSConfig()
			for _, m := range []int{1, 64, 512} {
				batch, _, err := benchdata.Batch(s, "uniform", "fp8", m, 7+uint64(m))
				if err != nil {
					b.Fatal(err)
				}
				b.Run(fmt.Sprintf("M=%d", m), func(b *testing.B) {
					b.Run("forward", func(b *testing.B) { benchForward(b, w, cfg, batch) })
					b.Run("graph", func(b *testing.B) { benchGraph(b, w, cfg, batch, false) })
					b.Run("graph-read", func(b *testing.B) { benchGraph(b, w, cfg, batch, true) })
					b.Run("graph-reuse", func(b *testing.B) { benchGraph(b, w, cfg, batch, false, op.WithReusedOutput()) })
				})
			}
		})
	}
}

// benchForward times the default backend's layer's Forward on batch.
func benchForward(b *testing.B, w *moe.Weights, cfg moe.Config, batch *moe.Batch) {
	l, err := op.DefaultBackend().NewLayer(w, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	out := make([]float32, batch.M*w.K)
	if err := l.Forward(out, batch); err != nil { // grows the workspace; never time zeros
		b.Fatal(err)
	}
	if err := benchdata.CheckNonzero(out); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := l.Forward(out, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// benchGraph times a tape machine over one Experts node on batch, its output read through
// G.Read (read) or as the node's value.
func benchGraph(b *testing.B, w *moe.Weights, cfg moe.Config, batch *moe.Batch, read bool, opts ...op.Option) {
	l, err := op.NewLayer(w, cfg, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	m, k := batch.M, w.K
	g := G.NewGraph()
	in := newInputs(g, m, k, batch.TopK)
	out, err := op.Experts(l, in.a1q, in.scale, in.ids, in.w)
	if err != nil {
		b.Fatal(err)
	}
	var got G.Value
	if read {
		G.Read(out, &got)
	}
	machine := G.NewTapeMachine(g)
	defer machine.Close()
	vals := []struct {
		n *G.Node
		v *tensor.Dense
	}{
		{in.a1q, dense(batch.A1q, m, k)},
		{in.scale, dense(batch.A1qScale, m, k/moe.ActGroup)},
		{in.ids, dense(batch.TopKIDs, m, batch.TopK)},
		{in.w, dense(batch.TopKWeights, m, batch.TopK)},
	}
	run := func() {
		for _, v := range vals {
			if err := G.Let(v.n, v.v); err != nil {
				b.Fatal(err)
			}
		}
		if err := machine.RunAll(); err != nil {
			b.Fatal(err)
		}
		if !read {
			got = out.Value()
		}
		machine.Reset()
	}
	run()
	if err := benchdata.CheckNonzero(got.Data().([]float32)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		run()
	}
}
