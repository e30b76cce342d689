package gptoss

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// small is a synthetic checkpoint whose sizes are multiples of 32 but not of 128, so loading
// pads them (224 → 256, 160 → 256), spread over two shards.
var small = Synthetic{Layers: 3, Experts: 5, TopK: 2, Hidden: 224, Intermediate: 160, Shards: 2, Seed: 7}

func writeSmall(t *testing.T, layout Layout) string {
	t.Helper()
	dir := t.TempDir()
	if err := small.Write(dir, layout, false, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rawLayer reads layer n's tensors straight from the files, without the loader.
type rawLayer struct {
	w1b, w1s, w2b, w2s []uint8
	b1, b2, rw, rb     []float32
}

func readRaw(t *testing.T, dir string, layout Layout, n int) *rawLayer {
	t.Helper()
	nm := layout.Names(n)
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	r := &rawLayer{}
	bf := func(f *safetensors.File, name string) []float32 {
		_, v, err := safetensors.Tensor[uint16](f, name, safetensors.BF16)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]float32, len(v))
		for i, b := range v {
			out[i] = math.Float32frombits(uint32(b) << 16)
		}
		return out
	}
	u8 := func(f *safetensors.File, name string) []uint8 {
		_, v, err := safetensors.Tensor[uint8](f, name, safetensors.U8)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, p := range files {
		f, err := safetensors.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if f.Info(nm.W1Blocks) != nil {
			r.w1b, r.w1s, r.w2b, r.w2s = u8(f, nm.W1Blocks), u8(f, nm.W1Scales), u8(f, nm.W2Blocks), u8(f, nm.W2Scales)
			r.b1, r.b2, r.rw, r.rb = bf(f, nm.B1), bf(f, nm.B2), bf(f, nm.RouterW), bf(f, nm.RouterB)
		}
		f.Close()
	}
	if r.w1b == nil {
		t.Fatalf("layer %d not found", n)
	}
	return r
}

// dequant decodes one MXFP4 row from its blocks in float64, as the reference dequantizer does:
// element 2j from the low nibble of byte j, 2j+1 from the high nibble, times 2^(scale-127).
func dequant(blocks, scales []uint8) []float64 {
	lut := [16]float64{0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6}
	out := make([]float64, 2*len(blocks))
	for j, b := range blocks {
		s := math.Ldexp(1, int(scales[j/16])-127)
		out[2*j] = lut[b&0xF] * s
		out[2*j+1] = lut[b>>4] * s
	}
	return out
}

// fp8Round quantizes a float32 row, padded with zeros to a multiple of 128, as the layer's
// contract does, and returns the dequantized values (float64) of the unpadded part.
func fp8Round(v []float32, n int) []float64 {
	p := (n + 127) / 128 * 128
	row := make([]float32, p)
	copy(row, v)
	q := make([]uint8, p)
	s := make([]float32, p/128)
	native.QuantizeFP8Rows(q, s, row, 1, p, 128, moe.CeilUE8M0)
	out := make([]float64, n)
	for j := range n {
		out[j] = float64(native.DecodeE4M3(q[j])) * float64(s[j/128])
	}
	return out
}

// gptossMoE computes the GPT-OSS MoE formula in float64 from the checkpoint's raw tensors:
// router logits, top-k then softmax, mlp1 with interleaved gate (even) and up (odd) rows plus
// bias, swiglu with alpha 1.702 and limit 7 and (up + 1), mlp2 plus bias, the weighted sum; the
// FP8 roundings of the input and of the activation are the ones the layer's contract defines.
func gptossMoE(r *rawLayer, s Synthetic, x []float32, m int) ([]float64, [][]int) {
	E, K, I, topk := s.Experts, s.Hidden, s.Intermediate, s.TopK
	out := make([]float64, m*K)
	var chosen [][]int
	for t := range m {
		xt := x[t*K : (t+1)*K]
		logits := make([]float64, E)
		for e := range E {
			l := float64(r.rb[e])
			for j := range K {
				l += float64(r.rw[e*K+j]) * float64(xt[j])
			}
			logits[e] = l
		}
		used := make([]bool, E)
		var ids []int
		for range topk {
			best := -1
			for e := range E {
				if !used[e] && (best < 0 || logits[e] > logits[best]) {
					best = e
				}
			}
			used[best] = true
			ids = append(ids, best)
		}
		chosen = append(chosen, ids)
		den := 0.0
		for _, e := range ids {
			den += math.Exp(logits[e] - logits[ids[0]])
		}
		xd := fp8Round(xt, K)
		for _, e := range ids {
			wt := math.Exp(logits[e]-logits[ids[0]]) / den
			h := make([]float64, 2*I)
			for row := range 2 * I {
				o := e*2*I + row
				w := dequant(r.w1b[o*K/2:(o+1)*K/2], r.w1s[o*K/32:(o+1)*K/32])
				acc := float64(r.b1[o])
				for j := range K {
					acc += w[j] * xd[j]
				}
				h[row] = acc
			}
			y := make([]float32, I)
			for j := range I {
				gate, up := math.Min(h[2*j], 7), math.Max(-7, math.Min(h[2*j+1], 7))
				y[j] = float32((up + 1) * gate / (1 + math.Exp(-1.702*gate)))
			}
			yd := fp8Round(y, I)
			for c := range K {
				o := e*K + c
				w := dequant(r.w2b[o*I/2:(o+1)*I/2], r.w2s[o*I/32:(o+1)*I/32])
				acc := float64(r.b2[o])
				for j := range I {
					acc += w[j] * yd[j]
				}
				out[t*K+c] += wt * acc
			}
		}
	}
	return out, chosen
}

func randomHidden(m, k int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 3))
	x := make([]float32, m*k)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func TestLoadAndRun(t *testing.T) {
	for _, layout := range []Layout{OpenAI, HuggingFace} {
		t.Run(layout.String(), func(t *testing.T) {
			dir := writeSmall(t, layout)
			ck, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			if ck.Layout != layout || ck.Layers != 3 || ck.Config.TopK != 2 || ck.Config.Experts != 5 || len(ck.files) != 2 {
				t.Fatalf("layout %v, %d layers, config %+v, %d files", ck.Layout, ck.Layers, ck.Config, len(ck.files))
			}
			for _, n := range []int{0, 2} {
				l, err := ck.LoadLayer(n)
				if err != nil {
					t.Fatal(err)
				}
				if l.Weights.K != 256 || l.Weights.I != 256 || l.Hidden != 224 || l.Intermediate != 160 || l.TopK != 2 {
					t.Fatalf("sizes K %d I %d hidden %d intermediate %d topk %d", l.Weights.K, l.Weights.I, l.Hidden, l.Intermediate, l.TopK)
				}
				const m = 11
				x := randomHidden(m, small.Hidden, uint64(n))
				l.StageTimes = n == 0 // asked for on one layer: every backend then records them
				got, err := l.Forward(x, m)
				if err != nil {
					t.Fatal(err)
				}
				if st, ok := l.ForwardStageTimes(); n == 0 && (!ok || st.GEMM1 <= 0 || st.GEMM2 <= 0) {
					t.Fatalf("layer %d: stage times %+v (ok %v), want the GEMMs' nonzero", n, st, ok)
				}
				want, _ := gptossMoE(readRaw(t, dir, layout, n), small, x, m)
				if e := conformance.RelL2(got, want); e > 1e-3 {
					t.Fatalf("layer %d: rel L2 %.3e against the float64 GPT-OSS formula", n, e)
				} else {
					t.Logf("layer %d: rel L2 %.2e against the float64 GPT-OSS formula", n, e)
				}
				l.Close()
			}
		})
	}
}

// TestBytesRead checks that loading one layer of a multi-shard checkpoint reads exactly that
// layer's MoE tensors and nothing of the other layers.
func TestBytesRead(t *testing.T) {
	dir := writeSmall(t, OpenAI)
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	nm := OpenAI.Names(1)
	var want int64
	for _, name := range []string{nm.W1Blocks, nm.W1Scales, nm.B1, nm.W2Blocks, nm.W2Scales, nm.B2, nm.RouterW, nm.RouterB} {
		info := ck.files[ck.where[name]].Info(name)
		want += info.End - info.Begin
	}
	if ck.BytesRead() != 0 {
		t.Fatalf("Open read %d tensor bytes", ck.BytesRead())
	}
	if _, err := ck.LoadLayer(1); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, f := range ck.files {
		for _, n := range f.Names() {
			total += f.Info(n).End - f.Info(n).Begin
		}
	}
	if got := ck.BytesRead(); got != want {
		t.Fatalf("loading layer 1 read %d bytes, its MoE tensors hold %d (the checkpoint %d)", got, want, total)
	}
	t.Logf("layer 1: %d of the checkpoint's %d tensor bytes read", want, total)
}

// TestBlockGraph runs the MoE block as a Gorgonia graph and compares it with Forward.
func TestBlockGraph(t *testing.T) {
	dir := writeSmall(t, HuggingFace)
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	l, err := ck.LoadLayer(1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.StageTimes = true
	const m = 6
	x := randomHidden(m, small.Hidden, 9)
	g := G.NewGraph()
	xn := G.NewMatrix(g, tensor.Float32, G.WithShape(m, small.Hidden), G.WithName("h"),
		G.WithValue(tensor.New(tensor.WithShape(m, small.Hidden), tensor.WithBacking(append([]float32(nil), x...)))))
	y, err := l.Block(xn)
	if err != nil {
		t.Fatal(err)
	}
	if !y.Shape().Eq(tensor.Shape{m, small.Hidden}) {
		t.Fatalf("block output shape %v", y.Shape())
	}
	var v G.Value
	G.Read(y, &v)
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	d := v.(*tensor.Dense)
	if d.RequiresIterator() {
		d = d.Materialize().(*tensor.Dense)
	}
	got := d.Data().([]float32)[:m*small.Hidden]
	want, _ := gptossMoE(readRaw(t, dir, HuggingFace, 1), small, x, m)
	if e := conformance.RelL2(got, want); e > 1e-3 {
		t.Fatalf("graph: rel L2 %.3e against the float64 GPT-OSS formula", e)
	}
	if st, ok := l.GraphStageTimes(); !ok || st.GEMM1 <= 0 || st.GEMM2 <= 0 {
		t.Fatalf("stage times from the graph's layer %+v (ok %v), want the GEMMs' nonzero", st, ok)
	}
	if _, err := l.Block(G.NewMatrix(g, tensor.Float32, G.WithShape(m, 256), G.WithName("wrong"))); err == nil {
		t.Fatal("Block accepted (m, 256) hidden states")
	}
}

// TestLoadErrors checks missing tensors, wrong shapes and dtypes, layer indices and mixed or
// missing layouts.
func TestLoadErrors(t *testing.T) {
	one := Synthetic{Layers: 2, Experts: 2, TopK: 1, Hidden: 128, Intermediate: 128, Seed: 1}
	entries := func() []safetensors.Entry {
		var out []safetensors.Entry
		for n := range 2 {
			out = append(out, one.Layer(n).Entries(OpenAI, n, 2, 128, 128, false)...)
		}
		return out
	}
	write := func(t *testing.T, es []safetensors.Entry) string {
		dir := t.TempDir()
		if err := writeFile(filepath.Join(dir, "model.safetensors"), es); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	drop := func(name string) func([]safetensors.Entry) []safetensors.Entry {
		return func(es []safetensors.Entry) []safetensors.Entry {
			var out []safetensors.Entry
			for _, e := range es {
				if e.Name != name {
					out = append(out, e)
				}
			}
			return out
		}
	}
	replace := func(e safetensors.Entry) func([]safetensors.Entry) []safetensors.Entry {
		return func(es []safetensors.Entry) []safetensors.Entry {
			for i := range es {
				if es[i].Name == e.Name {
					es[i] = e
				}
			}
			return es
		}
	}
	cases := []struct {
		name, want string
		mut        func([]safetensors.Entry) []safetensors.Entry
		layer      int
	}{
		{"missing scales", `missing tensor "block.1.mlp.mlp2_weight.scales"`, drop("block.1.mlp.mlp2_weight.scales"), 1},
		{"missing router bias", `missing tensor "block.0.mlp.gate.bias"`, drop("block.0.mlp.gate.bias"), 0},
		{"bias shape", `"block.0.mlp.mlp1_bias" has shape [2 255]`, replace(safetensors.NewEntry("block.0.mlp.mlp1_bias", safetensors.BF16, []int{2, 255}, make([]uint16, 510))), 0},
		{"scales dtype", `"block.0.mlp.mlp1_weight.scales" has dtype F32`, replace(safetensors.NewEntry("block.0.mlp.mlp1_weight.scales", safetensors.F32, []int{2, 256, 4}, make([]float32, 2048))), 0},
		{"blocks of 8 bytes", `"block.0.mlp.mlp1_weight.blocks" has shape [2 256 8 8]`, replace(safetensors.NewEntry("block.0.mlp.mlp1_weight.blocks", safetensors.U8, []int{2, 256, 8, 8}, make([]uint8, 2*256*64))), 0},
		{"layer out of range", "layer 2 out of range", func(es []safetensors.Entry) []safetensors.Entry { return es }, 2},
		{"negative layer", "layer -1 out of range", func(es []safetensors.Entry) []safetensors.Entry { return es }, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := write(t, c.mut(entries()))
			ck, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			_, err = ck.LoadLayer(c.layer)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %s", err, c.want)
			}
		})
	}
	t.Run("no safetensors", func(t *testing.T) {
		if _, err := Open(t.TempDir()); err == nil {
			t.Fatal("opened an empty directory")
		}
	})
	t.Run("no MoE tensors", func(t *testing.T) {
		dir := write(t, []safetensors.Entry{safetensors.NewEntry("x", safetensors.F32, []int{1}, []float32{1})})
		if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "no GPT-OSS MoE tensors") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("both layouts", func(t *testing.T) {
		es := append(entries(), one.Layer(0).Entries(HuggingFace, 0, 2, 128, 128, false)...)
		if _, err := Open(write(t, es)); err == nil || !strings.Contains(err.Error(), "both") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		dir := write(t, entries())
		os.WriteFile(filepath.Join(dir, "config.json"), []byte("{"), 0o644)
		if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "config.json") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("config disagrees", func(t *testing.T) {
		dir := write(t, entries())
		os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"num_experts": 3}`), 0o644)
		ck, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer ck.Close()
		if _, err := ck.LoadLayer(0); err == nil || !strings.Contains(err.Error(), "3 experts") {
			t.Fatalf("error %v", err)
		}
	})
}
