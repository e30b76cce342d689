package graphtest

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/op"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// machines are the two Gorgonia VMs the ops must run under, with how each runs a graph again.
// A tape machine needs Reset between runs. Gorgonia v0.9.18's lisp machine cannot be reset:
// its Reset sets the forward cursor to the last node while the forward pass walks upward from
// it, so a reset machine runs only the last node and leaves every value stale; a fresh lisp
// machine on the same graph runs it correctly.
var machines = []struct {
	name  string
	make  func(g *G.ExprGraph) G.VM
	again func(m G.VM, g *G.ExprGraph) G.VM
}{
	{"tape", func(g *G.ExprGraph) G.VM { return G.NewTapeMachine(g) },
		func(m G.VM, _ *G.ExprGraph) G.VM { m.Reset(); return m }},
	{"lisp", func(g *G.ExprGraph) G.VM { return G.NewLispMachine(g, G.ExecuteFwdOnly()) },
		func(m G.VM, g *G.ExprGraph) G.VM { m.Close(); return G.NewLispMachine(g, G.ExecuteFwdOnly()) }},
}

func dense[T any](v []T, shape ...int) *tensor.Dense {
	return tensor.New(tensor.WithShape(shape...), tensor.WithBacking(append([]T(nil), v...)))
}

// inputs holds the input nodes of an FP8-input experts graph.
type inputs struct {
	a1q, scale, ids, w *G.Node
}

func newInputs(g *G.ExprGraph, m, k, topk int) inputs {
	return inputs{
		a1q:   G.NewMatrix(g, tensor.Uint8, G.WithShape(m, k), G.WithName("a1q")),
		scale: G.NewMatrix(g, tensor.Float32, G.WithShape(m, k/moe.ActGroup), G.WithName("a1q_scale")),
		ids:   G.NewMatrix(g, tensor.Int32, G.WithShape(m, topk), G.WithName("topk_ids")),
		w:     G.NewMatrix(g, tensor.Float32, G.WithShape(m, topk), G.WithName("topk_weights")),
	}
}

func (in inputs) let(t *testing.T, b *moe.Batch, k int) {
	t.Helper()
	for _, e := range []error{
		G.Let(in.a1q, dense(b.A1q, b.M, k)),
		G.Let(in.scale, dense(b.A1qScale, b.M, k/moe.ActGroup)),
		G.Let(in.ids, dense(b.TopKIDs, b.M, b.TopK)),
		G.Let(in.w, dense(b.TopKWeights, b.M, b.TopK)),
	} {
		if e != nil {
			t.Fatal(e)
		}
	}
}

func read(t *testing.T, v G.Value) []float32 {
	t.Helper()
	d, ok := v.(*tensor.Dense)
	if !ok {
		t.Fatalf("output is %T", v)
	}
	return append([]float32(nil), d.Data().([]float32)...)
}

// backendOutput runs a batch directly on the backend the ops use (op.DefaultBackend).
func backendOutput(t *testing.T, c *casefile.Case, b *moe.Batch) []float32 {
	t.Helper()
	l, err := op.DefaultBackend().NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out := make([]float32, b.M*c.Weights.K)
	if err := l.Forward(out, b); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExpertsInMachines runs the experts op under both VMs for M = 1 ... 300, several runs per
// graph with Reset and new inputs each time, against its backend's layer run directly
// (bitwise) and the float64 reference.
func TestExpertsInMachines(t *testing.T) {
	c := conformance.Generate(conformance.Spec{Name: "graph", M: 300, K: 256, I: 256, E: 8, TopK: 2,
		Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, HStd: 4, Seed: 5})
	K := c.Weights.K
	layer, err := op.NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	for _, vm := range machines {
		for _, m := range []int{1, 2, 17, 64, 300} {
			t.Run(vm.name, func(t *testing.T) {
				g := G.NewGraph()
				in := newInputs(g, m, K, c.Batch.TopK)
				out, err := op.Experts(layer, in.a1q, in.scale, in.ids, in.w)
				if err != nil {
					t.Fatal(err)
				}
				var got G.Value
				G.Read(out, &got)
				machine := vm.make(g)
				defer func() { machine.Close() }()
				// Run 1: the first m tokens; run 2: the last m tokens; run 3: the first again.
				for run, off := range []int{0, 300 - m, 0} {
					b := c.Batch.Slice(K, off, off+m)
					in.let(t, b, K)
					if err := machine.RunAll(); err != nil {
						t.Fatalf("run %d: %v", run, err)
					}
					res := read(t, got)
					want := backendOutput(t, c, b)
					for i := range want {
						if math.Float32bits(res[i]) != math.Float32bits(want[i]) {
							t.Fatalf("run %d M=%d: output[%d] = %v, the backend's layer gives %v", run, m, i, res[i], want[i])
						}
					}
					if e := conformance.RelL2(res, c.Expected[off*K:(off+m)*K]); e > 1e-3 {
						t.Fatalf("run %d M=%d: rel L2 %.3e against the float64 reference", run, m, e)
					}
					machine = vm.again(machine, g)
				}
			})
		}
	}
}

// TestTwoLayersNotMerged puts two experts ops with the same inputs but different parameters in
// one graph: hashing must keep them apart, and each must give its own layer's result. Two ops
// of the same layer on the same inputs are one node.
func TestTwoLayersNotMerged(t *testing.T) {
	s := conformance.Spec{Name: "a", M: 9, K: 256, I: 128, E: 4, TopK: 2, Seed: 1}
	ca := conformance.Generate(s)
	s.Seed = 2
	cb := conformance.Generate(s) // other weights
	cfgC := ca.Config
	cfgC.Activation = moe.SwiGLUStep // same weights, other activation
	K := ca.Weights.K
	la, _ := op.NewLayer(&ca.Weights, ca.Config)
	lb, _ := op.NewLayer(&cb.Weights, cb.Config)
	lc, err := op.NewLayer(&ca.Weights, cfgC)
	if err != nil {
		t.Fatal(err)
	}
	la2, _ := op.NewLayer(&ca.Weights, ca.Config)
	for _, l := range []*op.Layer{la, lb, lc, la2} {
		defer l.Close()
	}
	g := G.NewGraph()
	in := newInputs(g, 9, K, 2)
	var nodes []*G.Node
	for _, l := range []*op.Layer{la, lb, lc, la2} {
		n, err := op.Experts(l, in.a1q, in.scale, in.ids, in.w)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	if nodes[0] == nodes[1] || nodes[0] == nodes[2] || nodes[1] == nodes[2] {
		t.Fatal("experts ops with different weights or configuration were merged into one node")
	}
	if nodes[3] != nodes[0] {
		t.Fatal("two layers with identical parameters on the same inputs were not merged")
	}
	vals := make([]G.Value, 3)
	for i := range vals {
		G.Read(nodes[i], &vals[i])
	}
	m := G.NewTapeMachine(g)
	defer m.Close()
	in.let(t, &ca.Batch, K)
	if err := m.RunAll(); err != nil {
		t.Fatal(err)
	}
	cc := *ca
	cc.Config = cfgC
	for i, want := range [][]float32{backendOutput(t, ca, &ca.Batch), backendOutput(t, cb, &ca.Batch), backendOutput(t, &cc, &ca.Batch)} {
		if got := read(t, vals[i]); conformance.RelL2(got, want) != 0 {
			t.Fatalf("op %d: rel L2 %.3e from its own layer's output", i, conformance.RelL2(got, want))
		}
	}
}

// TestReusedOutput runs the experts op of a layer made WithReusedOutput under a tape machine:
// every run returns the same tensor (also after M changes back), holding that run's output
// (bitwise the backend layer's), while an op of a layer without it returns a new tensor each
// run; the two are not merged into one node.
func TestReusedOutput(t *testing.T) {
	c := conformance.Generate(conformance.Spec{Name: "reuse", M: 64, K: 256, I: 128, E: 8, TopK: 2, Seed: 3})
	K := c.Weights.K
	reused, err := op.NewLayer(&c.Weights, c.Config, op.WithReusedOutput())
	if err != nil {
		t.Fatal(err)
	}
	defer reused.Close()
	plain, err := op.NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, m := range []int{16, 16, 5, 16} {
		g := G.NewGraph()
		in := newInputs(g, m, K, c.Batch.TopK)
		nr, err := op.Experts(reused, in.a1q, in.scale, in.ids, in.w)
		if err != nil {
			t.Fatal(err)
		}
		np, err := op.Experts(plain, in.a1q, in.scale, in.ids, in.w)
		if err != nil {
			t.Fatal(err)
		}
		if nr == np {
			t.Fatal("the ops of a layer with WithReusedOutput and of one without were merged into one node")
		}
		machine := G.NewTapeMachine(g)
		var first, firstPlain G.Value
		for run, off := range []int{0, 64 - m} {
			b := c.Batch.Slice(K, off, off+m)
			in.let(t, b, K)
			if err := machine.RunAll(); err != nil {
				t.Fatal(err)
			}
			want := backendOutput(t, c, b)
			// The nodes' values are the ops' own outputs (G.Read would copy them).
			vr, vp := nr.Value(), np.Value()
			for name, v := range map[string]G.Value{"reused": vr, "plain": vp} {
				got := read(t, v)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("M=%d run %d, %s: output[%d] = %v, the backend's layer gives %v", m, run, name, i, got[i], want[i])
					}
				}
			}
			if run == 0 {
				first, firstPlain = vr, vp
			} else {
				if vr != first {
					t.Fatalf("M=%d: the reused output's second run returned another tensor", m)
				}
				if vp == firstPlain {
					t.Fatalf("M=%d: the plain op's second run returned the first run's tensor", m)
				}
			}
			machine.Reset()
		}
		machine.Close()
	}
}

// TestBuildErrors checks that wrong dtypes and shapes fail when the graph is built, with an
// error naming the tensor.
func TestBuildErrors(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 4, K: 256, I: 128, E: 4, TopK: 2, Seed: 1})
	layer, _ := op.NewLayer(&c.Weights, c.Config)
	defer layer.Close()
	g := G.NewGraph()
	good := newInputs(g, 4, 256, 2)
	cases := []struct {
		name, want string
		in         func() inputs
	}{
		{"a1q float32", "a1q", func() inputs {
			in := good
			in.a1q = G.NewMatrix(g, tensor.Float32, G.WithShape(4, 256), G.WithName("f"))
			return in
		}},
		{"a1q K", "a1q", func() inputs {
			in := good
			in.a1q = G.NewMatrix(g, tensor.Uint8, G.WithShape(4, 384), G.WithName("k"))
			return in
		}},
		{"scale groups", "a1q_scale", func() inputs {
			in := good
			in.scale = G.NewMatrix(g, tensor.Float32, G.WithShape(4, 3), G.WithName("s"))
			return in
		}},
		{"ids rows", "topk_ids", func() inputs {
			in := good
			in.ids = G.NewMatrix(g, tensor.Int32, G.WithShape(5, 2), G.WithName("i"))
			return in
		}},
		{"ids int64", "topk_ids", func() inputs {
			in := good
			in.ids = G.NewMatrix(g, tensor.Int64, G.WithShape(4, 2), G.WithName("i64"))
			return in
		}},
		{"weights topk", "topk_weights", func() inputs {
			in := good
			in.w = G.NewMatrix(g, tensor.Float32, G.WithShape(4, 3), G.WithName("w3"))
			return in
		}},
		{"ids vector", "topk_ids", func() inputs {
			in := good
			in.ids = G.NewVector(g, tensor.Int32, G.WithShape(4), G.WithName("iv"))
			return in
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in()
			_, err := op.Experts(layer, in.a1q, in.scale, in.ids, in.w)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, expected one naming %s", err, tc.want)
			}
		})
	}
	if _, err := op.ExpertsFloat(layer, good.a1q, good.ids, good.w); err == nil || !strings.Contains(err.Error(), "x has dtype") {
		t.Fatalf("ExpertsFloat with Uint8 x: %v", err)
	}
	if _, err := op.Experts(nil, good.a1q, good.scale, good.ids, good.w); err == nil {
		t.Fatal("nil layer accepted")
	}
	if _, _, err := op.Route(good.scale, op.Routing{TopK: 3}); err == nil {
		t.Fatal("Route accepted topk 3 of 2 experts")
	}
	if _, err := op.NewLayer(&moe.Weights{E: 1, K: 100, I: 128}, moe.Config{}); err == nil || !strings.Contains(err.Error(), "multiple of 128") {
		t.Fatalf("NewLayer with K = 100: %v", err)
	}
}

// TestRunErrors checks that invalid values fail when the graph runs, under both machines, with
// an error naming the tensor, and that the graph runs again once the values are fixed.
func TestRunErrors(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 4, K: 256, I: 128, E: 4, TopK: 2, Seed: 1})
	layer, _ := op.NewLayer(&c.Weights, c.Config)
	defer layer.Close()
	for _, vm := range machines {
		t.Run(vm.name, func(t *testing.T) {
			g := G.NewGraph()
			in := newInputs(g, 4, 256, 2)
			out, err := op.Experts(layer, in.a1q, in.scale, in.ids, in.w)
			if err != nil {
				t.Fatal(err)
			}
			var v G.Value
			G.Read(out, &v)
			m := vm.make(g)
			defer func() { m.Close() }()
			bad := c.Batch
			bad.TopKIDs = append([]int32(nil), bad.TopKIDs...)
			bad.TopKIDs[5] = 4
			in.let(t, &bad, 256)
			// Gorgonia's machines wrap op errors into messages without an error chain.
			err = m.RunAll()
			if err == nil || !strings.Contains(err.Error(), "topk_ids[2,1] = 4, outside [-1, 4)") {
				t.Fatalf("id 4 of 4 experts: error %v", err)
			}
			m = vm.again(m, g)
			in.let(t, &c.Batch, 256)
			if err := m.RunAll(); err != nil {
				t.Fatalf("after the error: %v", err)
			}
			if e := conformance.RelL2(read(t, v), c.Expected); e > 1e-3 {
				t.Fatalf("after the error: rel L2 %.3e", e)
			}
		})
	}
}

// TestMoEBlock builds a whole MoE block as one graph (router matmul plus bias, GPT-OSS
// routing, experts on float32 input, residual add) and compares it with a direct float64
// computation of the same block.
func TestMoEBlock(t *testing.T) {
	const M, K, I, E, topk = 23, 384, 256, 8, 3
	c := conformance.Generate(conformance.Spec{M: M, K: K, I: I, E: E, TopK: topk, Activation: moe.SwiGLUOAI,
		Clamp: true, Limit: 7, Bias: true, HStd: 2, Seed: 9})
	rng := rand.New(rand.NewPCG(3, 4))
	wr := make([]float32, K*E)
	br := make([]float32, E)
	for i := range wr {
		wr[i] = float32(rng.NormFloat64() / math.Sqrt(K))
	}
	for i := range br {
		br[i] = float32(rng.NormFloat64() * 0.1)
	}
	// The second run uses the tokens rotated by 5 rows.
	xs := [][]float32{c.X, append(append([]float32(nil), c.X[5*K:]...), c.X[:5*K]...)}
	layer, err := op.NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	for _, vm := range machines {
		t.Run(vm.name, func(t *testing.T) {
			g := G.NewGraph()
			xn := G.NewMatrix(g, tensor.Float32, G.WithShape(M, K), G.WithName("x"))
			wrn := G.NewMatrix(g, tensor.Float32, G.WithShape(K, E), G.WithName("router_w"), G.WithValue(dense(wr, K, E)))
			brn := G.NewVector(g, tensor.Float32, G.WithShape(E), G.WithName("router_b"), G.WithValue(dense(br, E)))
			logits := G.Must(G.BroadcastAdd(G.Must(G.Mul(xn, wrn)), brn, nil, []byte{0}))
			ids, weights, err := op.Route(logits, op.Routing{TopK: topk, Mode: op.TopKThenSoftmax})
			if err != nil {
				t.Fatal(err)
			}
			experts, err := op.ExpertsFloat(layer, xn, ids, weights)
			if err != nil {
				t.Fatal(err)
			}
			out := G.Must(G.Add(xn, experts))
			var got, gotIDs G.Value
			G.Read(out, &got)
			G.Read(ids, &gotIDs)
			m := vm.make(g)
			defer func() { m.Close() }()
			for run, x := range xs {
				if err := G.Let(xn, dense(x, M, K)); err != nil {
					t.Fatal(err)
				}
				if err := m.RunAll(); err != nil {
					t.Fatal(err)
				}
				wantIDs, want := moeBlock64(c, x, wr, br, topk)
				if g := gotIDs.(*tensor.Dense).Data().([]int32); !slices.Equal(g, wantIDs) {
					t.Fatalf("run %d: routed ids %v, float64 routing gives %v", run, g, wantIDs)
				}
				if e := conformance.RelL2(read(t, got), want); e > 1e-3 {
					t.Fatalf("run %d: rel L2 %.3e against the float64 block", run, e)
				}
				m = vm.again(m, g)
			}
		})
	}
}

// moeBlock64 computes the block in float64: router logits, top-k then softmax, the input's FP8
// quantization, the float64 expert reference, and the residual.
func moeBlock64(c *casefile.Case, x, wr, br []float32, topk int) ([]int32, []float64) {
	K, E := c.Weights.K, c.Weights.E
	M := len(x) / K
	b := moe.Batch{M: M, TopK: topk, TopKIDs: make([]int32, M*topk), TopKWeights: make([]float32, M*topk),
		A1q: make([]uint8, M*K), A1qScale: make([]float32, M*K/moe.ActGroup)}
	for t := range M {
		logits := make([]float64, E)
		for e := range E {
			s := float64(br[e])
			for j := range K {
				s += float64(x[t*K+j]) * float64(wr[j*E+e])
			}
			logits[e] = s
		}
		// top-k by value, lower index first on ties
		used := make([]bool, E)
		var sel []float64
		for k := range topk {
			best := -1
			for e := range E {
				if !used[e] && (best < 0 || logits[e] > logits[best]) {
					best = e
				}
			}
			used[best] = true
			b.TopKIDs[t*topk+k] = int32(best)
			sel = append(sel, logits[best])
		}
		sum := 0.0
		for _, v := range sel {
			sum += math.Exp(v - sel[0])
		}
		for k, v := range sel {
			b.TopKWeights[t*topk+k] = float32(math.Exp(v-sel[0]) / sum)
		}
	}
	native.QuantizeFP8Rows(b.A1q, b.A1qScale, x, M, K, moe.ActGroup, c.Config.ScaleFormat)
	out := conformance.Reference(&c.Weights, &c.Config, &b)
	for i := range out {
		out[i] += float64(x[i])
	}
	return b.TopKIDs, out
}

// TestRouting checks both routing modes on hand-computed values, tie-breaking and NaN.
func TestRouting(t *testing.T) {
	logits := []float32{1, 3, 2, 3, float32(math.NaN()), -1}
	cases := []struct {
		name    string
		r       op.Routing
		ids     []int32
		weights []float64
	}{
		{"topk-softmax", op.Routing{TopK: 2, Mode: op.TopKThenSoftmax}, []int32{1, 3}, []float64{0.5, 0.5}},
		{"topk-softmax 3", op.Routing{TopK: 3, Mode: op.TopKThenSoftmax}, []int32{1, 3, 2},
			[]float64{1 / (2 + math.Exp(-1)), 1 / (2 + math.Exp(-1)), math.Exp(-1) / (2 + math.Exp(-1))}},
	}
	for _, tc := range cases {
		ids := make([]int32, tc.r.TopK)
		w := make([]float32, tc.r.TopK)
		tc.r.Select(ids, w, logits)
		if !slices.Equal(ids, tc.ids) {
			t.Fatalf("%s: ids %v, want %v", tc.name, ids, tc.ids)
		}
		for i := range w {
			if math.Abs(float64(w[i])-tc.weights[i]) > 1e-7 {
				t.Fatalf("%s: weights %v, want %v", tc.name, w, tc.weights)
			}
		}
	}
	// softmax then top-k, with and without renormalisation
	l := []float32{0, 1, 2}
	z := 1 + math.E + math.E*math.E
	ids, w := make([]int32, 2), make([]float32, 2)
	op.Routing{TopK: 2}.Select(ids, w, l)
	if !slices.Equal(ids, []int32{2, 1}) || math.Abs(float64(w[0])-math.E*math.E/z) > 1e-7 || math.Abs(float64(w[1])-math.E/z) > 1e-7 {
		t.Fatalf("softmax-topk: %v %v", ids, w)
	}
	op.Routing{TopK: 2, Renormalize: true}.Select(ids, w, l)
	if math.Abs(float64(w[0])-math.E/(1+math.E)) > 1e-7 || math.Abs(float64(w[1])-1/(1+math.E)) > 1e-7 {
		t.Fatalf("softmax-topk renormalized: %v", w)
	}
}
