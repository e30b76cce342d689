// Command moe_block runs a GPT-OSS-20B-shaped MoE block as one Gorgonia graph: router matmul
// plus bias, top-4-then-softmax routing, the fused FP8 × MXFP4 expert layer (32 experts,
// swigluoai with limit 7, biases) and the residual add, on random weights put through the
// MXFP4 quantizer. The hidden and intermediate sizes, 2880, are padded to 2944 as a checkpoint
// loader pads them; padded columns stay zero.
//
//	go run ./examples/moe_block [-tokens 4] [-experts 32] [-seed 1]
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"github.com/fp4moe/fp4moe/examples/internal/synth"
	"github.com/fp4moe/fp4moe/internal/progress"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/op"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

const (
	hidden       = 2880 // GPT-OSS hidden size
	intermediate = 2880 // GPT-OSS expert intermediate size
	topk         = 4
)

func main() {
	tokens := flag.Int("tokens", 4, "tokens to run through the block")
	experts := flag.Int("experts", 32, "experts of the layer (GPT-OSS-20B: 32, 120B: 128)")
	seed := flag.Uint64("seed", 1, "seed of the random weights and tokens")
	flag.Parse()
	if err := run(*tokens, *experts, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "moe_block:", err)
		os.Exit(1)
	}
}

func run(m, e int, seed uint64) error {
	if m < 1 || e < topk {
		return fmt.Errorf("need at least 1 token and %d experts", topk)
	}
	K := synth.Pad(hidden)
	fmt.Printf("GPT-OSS-20B-shaped MoE block: hidden %d (padded to %d), intermediate %d (padded to %d), %d experts, top-%d, swigluoai\n",
		hidden, K, intermediate, synth.Pad(intermediate), e, topk)

	start := time.Now()
	bar := progress.New(os.Stderr, "quantizing experts to MXFP4", int64(e))
	w := synth.Experts(synth.Spec{E: e, K: hidden, I: intermediate, HStd: 2, Bias: true, Seed: seed}, func() { bar.Add(1) })
	bar.Finish()
	genTime := time.Since(start)
	weightBytes := len(w.W13) + len(w.W13Scale) + len(w.W2) + len(w.W2Scale)

	layer, err := op.NewLayer(w, moe.GPTOSSConfig(), op.WithStageTimes())
	if err != nil {
		return err
	}
	defer layer.Close()

	// Router weights (K, E) with zero rows for the padded columns, and a bias.
	rng := rand.New(rand.NewPCG(seed, 99))
	wr := make([]float32, K*e)
	for j := range hidden {
		for x := range e {
			wr[j*e+x] = float32(rng.NormFloat64() / math.Sqrt(hidden))
		}
	}
	br := synth.Normal(rng, e, 0.1)
	x := make([]float32, m*K)
	for t := range m {
		for j := range hidden {
			x[t*K+j] = float32(rng.NormFloat64())
		}
	}

	g := G.NewGraph()
	xn := G.NewMatrix(g, tensor.Float32, G.WithShape(m, K), G.WithName("x"))
	wrn := G.NewMatrix(g, tensor.Float32, G.WithShape(K, e), G.WithName("router.weight"),
		G.WithValue(tensor.New(tensor.WithShape(K, e), tensor.WithBacking(wr))))
	brn := G.NewVector(g, tensor.Float32, G.WithShape(e), G.WithName("router.bias"),
		G.WithValue(tensor.New(tensor.WithShape(e), tensor.WithBacking(br))))
	logits, err := G.BroadcastAdd(G.Must(G.Mul(xn, wrn)), brn, nil, []byte{0})
	if err != nil {
		return err
	}
	ids, weights, err := op.Route(logits, op.Routing{TopK: topk, Mode: op.TopKThenSoftmax})
	if err != nil {
		return err
	}
	expertsOut, err := op.ExpertsFloat(layer, xn, ids, weights)
	if err != nil {
		return err
	}
	out, err := G.Add(xn, expertsOut)
	if err != nil {
		return err
	}
	var outV, expV, idsV, wV G.Value
	G.Read(out, &outV)
	G.Read(expertsOut, &expV)
	G.Read(ids, &idsV)
	G.Read(weights, &wV)

	machine := G.NewTapeMachine(g)
	defer machine.Close()
	if err := G.Let(xn, tensor.New(tensor.WithShape(m, K), tensor.WithBacking(x))); err != nil {
		return err
	}
	const runs = 3
	var graphTime time.Duration
	for r := range runs {
		t0 := time.Now()
		if err := machine.RunAll(); err != nil {
			return err
		}
		graphTime = time.Since(t0) // the last run is reported: the first one warms the caches
		if r < runs-1 {
			machine.Reset()
		}
	}

	y := outV.(*tensor.Dense).Data().([]float32)
	ex := expV.(*tensor.Dense).Data().([]float32)
	idv := idsV.(*tensor.Dense).Data().([]int32)
	wv := wV.(*tensor.Dense).Data().([]float32)
	fmt.Printf("\nweights: %.1f MB of MXFP4 experts, generated and quantized in %.1fs\n", float64(weightBytes)/1e6, genTime.Seconds())
	fmt.Printf("\n%-6s %-28s %-34s %10s %10s %10s\n", "token", "experts", "router weights", "|x|", "|experts|", "|out|")
	for t := range m {
		var pad float64
		for j := hidden; j < K; j++ {
			pad += math.Abs(float64(y[t*K+j]))
		}
		if pad != 0 {
			return fmt.Errorf("token %d: padded output columns are not zero", t)
		}
		fmt.Printf("%-6d %-28s %-34s %10.3f %10.3f %10.3f\n", t, fmt.Sprint(idv[t*topk:(t+1)*topk]), fmtWeights(wv[t*topk:(t+1)*topk]),
			norm(x[t*K:t*K+hidden]), norm(ex[t*K:t*K+hidden]), norm(y[t*K:t*K+hidden]))
	}
	st, _ := layer.StageTimes()
	fmt.Printf("\nstage times of the expert layer (%s backend, run %d of %d):\n", layer.Backend().Name(), runs, runs)
	for _, s := range []struct {
		name string
		d    time.Duration
	}{{"prepare (FP8 quantization)", st.Prepare}, {"permute", st.Permute}, {"GEMM1", st.GEMM1},
		{"activation + FP8 requant", st.Activation}, {"GEMM2", st.GEMM2}, {"reduce", st.Reduce}} {
		fmt.Printf("  %-28s %9.3f ms\n", s.name, ms(s.d))
	}
	fmt.Printf("  %-28s %9.3f ms\n", "expert layer total", ms(st.Total()))
	fmt.Printf("  %-28s %9.3f ms\n", "whole graph (router, routing, experts, residual)", ms(graphTime))
	return nil
}

func norm(v []float32) float64 {
	s := 0.0
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fmtWeights(w []float32) string {
	s := "["
	for i, v := range w {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%.3f", v)
	}
	return s + "]"
}
