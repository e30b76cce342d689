// Command tiny_model runs the forward pass of a tiny MoE language model as one Gorgonia graph
// (token embedding, a stack of MoE blocks with router, routing, fused FP8 × MXFP4 experts and
// residual, then the output projection to logits) and checks its logits against the same model
// computed directly in float64: routing from float64 logits, the float64 expert reference of
// package conformance, and float64 residuals. The only roundings the two share are the ones the
// layer's contract defines (each block's input is rounded to float32 and quantized to FP8).
//
//	go run ./examples/tiny_model [-layers 4] [-tokens 12]
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/examples/internal/synth"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/op"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// model is a tiny MoE model: vocab × hidden embedding, layers of experts, hidden × vocab head.
type model struct {
	vocab, hidden, experts, topk int
	embed, head                  []float32 // (vocab, hidden), (hidden, vocab)
	routerW, routerB             [][]float32
	layers                       []*moe.Weights
	cfg                          moe.Config
}

func newModel(layers int, seed uint64) *model {
	m := &model{vocab: 96, hidden: 256, experts: 8, topk: 2, cfg: moe.GPTOSSConfig()}
	rng := rand.New(rand.NewPCG(seed, 1))
	m.embed = synth.Normal(rng, m.vocab*m.hidden, 1)
	m.head = synth.Normal(rng, m.hidden*m.vocab, 1/math.Sqrt(float64(m.hidden)))
	for l := range layers {
		m.routerW = append(m.routerW, synth.Normal(rng, m.hidden*m.experts, 1/math.Sqrt(float64(m.hidden))))
		m.routerB = append(m.routerB, synth.Normal(rng, m.experts, 0.1))
		m.layers = append(m.layers, synth.Experts(synth.Spec{E: m.experts, K: m.hidden, I: 256, HStd: 2, Bias: true, Seed: seed + uint64(l)}, nil))
	}
	return m
}

func matrix(v []float32, r, c int) *tensor.Dense {
	return tensor.New(tensor.WithShape(r, c), tensor.WithBacking(v))
}

// forwardGraph builds and runs the model as one graph and returns the logits (tokens, vocab).
func (m *model) forwardGraph(tokens []int) ([]float32, error) {
	g := G.NewGraph()
	M := len(tokens)
	onehot := make([]float32, M*m.vocab)
	for t, tok := range tokens {
		onehot[t*m.vocab+tok] = 1
	}
	in := G.NewMatrix(g, tensor.Float32, G.WithShape(M, m.vocab), G.WithName("tokens"), G.WithValue(matrix(onehot, M, m.vocab)))
	emb := G.NewMatrix(g, tensor.Float32, G.WithShape(m.vocab, m.hidden), G.WithName("embed"), G.WithValue(matrix(m.embed, m.vocab, m.hidden)))
	h, err := G.Mul(in, emb)
	if err != nil {
		return nil, err
	}
	for l, w := range m.layers {
		layer, err := op.NewLayer(w, m.cfg)
		if err != nil {
			return nil, err
		}
		defer layer.Close()
		wr := G.NewMatrix(g, tensor.Float32, G.WithShape(m.hidden, m.experts), G.WithName(fmt.Sprintf("router%d.w", l)),
			G.WithValue(matrix(m.routerW[l], m.hidden, m.experts)))
		br := G.NewVector(g, tensor.Float32, G.WithShape(m.experts), G.WithName(fmt.Sprintf("router%d.b", l)),
			G.WithValue(tensor.New(tensor.WithShape(m.experts), tensor.WithBacking(m.routerB[l]))))
		logits, err := G.BroadcastAdd(G.Must(G.Mul(h, wr)), br, nil, []byte{0})
		if err != nil {
			return nil, err
		}
		ids, weights, err := op.Route(logits, op.Routing{TopK: m.topk, Mode: op.TopKThenSoftmax})
		if err != nil {
			return nil, err
		}
		out, err := op.ExpertsFloat(layer, h, ids, weights)
		if err != nil {
			return nil, err
		}
		if h, err = G.Add(h, out); err != nil {
			return nil, err
		}
	}
	head := G.NewMatrix(g, tensor.Float32, G.WithShape(m.hidden, m.vocab), G.WithName("head"), G.WithValue(matrix(m.head, m.hidden, m.vocab)))
	logits, err := G.Mul(h, head)
	if err != nil {
		return nil, err
	}
	var v G.Value
	G.Read(logits, &v)
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		return nil, err
	}
	return append([]float32(nil), v.(*tensor.Dense).Data().([]float32)...), nil
}

// forward64 computes the same model directly in float64.
func (m *model) forward64(tokens []int) []float64 {
	M, H := len(tokens), m.hidden
	h := make([]float64, M*H)
	for t, tok := range tokens {
		for j := range H {
			h[t*H+j] = float64(m.embed[tok*H+j])
		}
	}
	x32 := make([]float32, M*H)
	for l, w := range m.layers {
		b := moe.Batch{M: M, TopK: m.topk, TopKIDs: make([]int32, M*m.topk), TopKWeights: make([]float32, M*m.topk),
			A1q: make([]uint8, M*H), A1qScale: make([]float32, M*H/moe.ActGroup)}
		for t := range M {
			logits := make([]float64, m.experts)
			for e := range m.experts {
				s := float64(m.routerB[l][e])
				for j := range H {
					s += h[t*H+j] * float64(m.routerW[l][j*m.experts+e])
				}
				logits[e] = s
			}
			top64(b.TopKIDs[t*m.topk:(t+1)*m.topk], b.TopKWeights[t*m.topk:(t+1)*m.topk], logits)
		}
		for i, v := range h {
			x32[i] = float32(v) // the layer's input is float32 by contract
		}
		native.QuantizeFP8Rows(b.A1q, b.A1qScale, x32, M, H, moe.ActGroup, m.cfg.ScaleFormat)
		out := conformance.Reference(w, &m.cfg, &b)
		for i := range h {
			h[i] += out[i]
		}
	}
	logits := make([]float64, M*m.vocab)
	for t := range M {
		for v := range m.vocab {
			s := 0.0
			for j := range H {
				s += h[t*H+j] * float64(m.head[j*m.vocab+v])
			}
			logits[t*m.vocab+v] = s
		}
	}
	return logits
}

// top64 picks the k largest logits (lower index first on ties) and their softmax.
func top64(ids []int32, w []float32, logits []float64) {
	used := make([]bool, len(logits))
	sel := make([]float64, len(ids))
	for k := range ids {
		best := -1
		for e, v := range logits {
			if !used[e] && (best < 0 || v > logits[best]) {
				best = e
			}
		}
		used[best], ids[k], sel[k] = true, int32(best), logits[best]
	}
	sum := 0.0
	for _, v := range sel {
		sum += math.Exp(v - sel[0])
	}
	for k, v := range sel {
		w[k] = float32(math.Exp(v-sel[0]) / sum)
	}
}

// run builds the model, runs both forwards and returns the relative L2 distance of the logits.
func run(layers, tokens int, seed uint64, verbose bool) (float64, error) {
	m := newModel(layers, seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	toks := make([]int, tokens)
	for i := range toks {
		toks[i] = rng.IntN(m.vocab)
	}
	got, err := m.forwardGraph(toks)
	if err != nil {
		return 0, err
	}
	want := m.forward64(toks)
	rel := conformance.RelL2(got, want)
	if verbose {
		fmt.Printf("tiny MoE model: vocab %d, hidden %d, %d layers of %d experts (top-%d, swigluoai), %d tokens\n",
			m.vocab, m.hidden, layers, m.experts, m.topk, tokens)
		for t := range min(tokens, 4) {
			fmt.Printf("token %2d -> argmax %2d (float64 run: %2d)\n", toks[t], argmax(got[t*m.vocab:(t+1)*m.vocab]), argmax(want[t*m.vocab:(t+1)*m.vocab]))
		}
		fmt.Printf("logits rel L2 against the float64 model: %.3e\n", rel)
	}
	return rel, nil
}

func argmax[T float32 | float64](v []T) int {
	b := 0
	for i := range v {
		if v[i] > v[b] {
			b = i
		}
	}
	return b
}

func main() {
	layers := flag.Int("layers", 4, "MoE blocks")
	tokens := flag.Int("tokens", 12, "tokens")
	seed := flag.Uint64("seed", 1, "seed")
	flag.Parse()
	rel, err := run(*layers, *tokens, *seed, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tiny_model:", err)
		os.Exit(1)
	}
	if rel > 1e-3 {
		fmt.Fprintf(os.Stderr, "tiny_model: logits differ from the float64 model by %.3e (> 1e-3)\n", rel)
		os.Exit(1)
	}
}
