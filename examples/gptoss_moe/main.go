// Command gptoss_moe loads one MoE layer of a GPT-OSS checkpoint (OpenAI's original layout or
// the Hugging Face one, one or several safetensors shards) and runs a few tokens of hidden
// states through its router and experts as one Gorgonia graph, printing the routing, the
// output and the time of each stage.
//
//	go run ./examples/gptoss_moe -checkpoint gpt-oss-20b/original -layer 3
//
// Without -checkpoint it first writes a small synthetic checkpoint in the real layout (GPT-OSS's
// hidden and intermediate size 2880, four experts, random weights through the MXFP4 quantizer),
// so the example always runs.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/fp4moe/fp4moe/gptoss"
	"github.com/fp4moe/fp4moe/internal/progress"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

func main() {
	ckpt := flag.String("checkpoint", "", "checkpoint directory or .safetensors file (default: write a synthetic one)")
	layer := flag.Int("layer", 0, "MoE layer to run")
	tokens := flag.Int("tokens", 4, "tokens of random hidden states")
	layout := flag.String("layout", "openai", "layout of the synthetic checkpoint: openai or huggingface")
	flag.Parse()
	if err := run(*ckpt, *layer, *tokens, *layout); err != nil {
		fmt.Fprintln(os.Stderr, "gptoss_moe:", err)
		os.Exit(1)
	}
}

func run(path string, n, m int, layoutName string) error {
	if m < 1 {
		return fmt.Errorf("need at least one token")
	}
	if path == "" {
		dir, err := os.MkdirTemp("", "gptoss-synthetic-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		layout := gptoss.OpenAI
		if layoutName == "huggingface" || layoutName == "hf" {
			layout = gptoss.HuggingFace
		}
		s := gptoss.Synthetic{Layers: 2, Experts: 4, TopK: 2, Hidden: 2880, Intermediate: 2880, Shards: 2, Seed: 1}
		bar := progress.New(os.Stderr, fmt.Sprintf("writing a synthetic %v-layout checkpoint", layout), int64(s.Layers))
		if err := s.Write(dir, layout, false, func() { bar.Add(1) }); err != nil {
			return err
		}
		bar.Finish()
		path = dir
	}

	t0 := time.Now()
	ck, err := gptoss.Open(path)
	if err != nil {
		return err
	}
	defer ck.Close()
	l, err := ck.LoadLayer(n)
	if err != nil {
		return err
	}
	defer l.Close()
	l.StageTimes = true // the stage times printed at the end
	load := time.Since(t0)
	fmt.Printf("%s: %v layout, %d MoE layers; layer %d: %d experts, top-%d, hidden %d (padded to %d), intermediate %d (padded to %d)\n",
		path, ck.Layout, ck.Layers, n, l.Experts, l.TopK, l.Hidden, l.Weights.K, l.Intermediate, l.Weights.I)
	fmt.Printf("loaded in %.1f ms, %.1f MB of tensors read\n", ms(load), float64(ck.BytesRead())/1e6)

	// Random hidden states with the scale of a post-norm residual stream.
	x := make([]float32, m*l.Hidden)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.7318) * 1.5)
	}
	g := G.NewGraph()
	xn := G.NewMatrix(g, tensor.Float32, G.WithShape(m, l.Hidden), G.WithName("hidden"),
		G.WithValue(tensor.New(tensor.WithShape(m, l.Hidden), tensor.WithBacking(x))))
	y, err := l.Block(xn)
	if err != nil {
		return err
	}
	var out G.Value
	G.Read(y, &out)
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	var graph time.Duration
	for run := range 3 { // report the last run: the first warms the caches
		t := time.Now()
		if err := vm.RunAll(); err != nil {
			return err
		}
		graph = time.Since(t)
		if run < 2 {
			vm.Reset()
		}
	}
	d := out.(*tensor.Dense)
	if d.RequiresIterator() {
		d = d.Materialize().(*tensor.Dense)
	}
	res := d.Data().([]float32)
	ids, weights, err := l.Route(x, m)
	if err != nil {
		return err
	}
	fmt.Printf("\n%-6s %-16s %-22s %10s  %s\n", "token", "experts", "weights", "|moe(x)|", "moe(x)[:4]")
	for t := range m {
		row := res[t*l.Hidden : (t+1)*l.Hidden]
		norm := 0.0
		for _, v := range row {
			norm += float64(v) * float64(v)
		}
		w := ""
		for _, v := range weights[t*l.TopK : (t+1)*l.TopK] {
			w += fmt.Sprintf("%.3f ", v)
		}
		fmt.Printf("%-6d %-16s %-22s %10.3f  %.4f\n", t, fmt.Sprint(ids[t*l.TopK:(t+1)*l.TopK]), w, math.Sqrt(norm), row[:4])
	}
	st, _ := l.GraphStageTimes()
	fmt.Printf("\nstage times (last of 3 graph runs, %s backend):\n", l.BackendName())
	fmt.Printf("  %-34s %9.3f ms\n", "router, routing, padding", ms(graph-st.Total()))
	for _, s := range []struct {
		name string
		d    time.Duration
	}{{"experts: prepare (FP8 quantization)", st.Prepare}, {"experts: permute", st.Permute}, {"experts: GEMM1", st.GEMM1},
		{"experts: activation + FP8 requant", st.Activation}, {"experts: GEMM2", st.GEMM2}, {"experts: reduce", st.Reduce}} {
		fmt.Printf("  %-34s %9.3f ms\n", s.name, ms(s.d))
	}
	fmt.Printf("  %-34s %9.3f ms\n", "whole graph", ms(graph))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
