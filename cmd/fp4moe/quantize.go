package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fp4moe/fp4moe/gptoss"
	"github.com/fp4moe/fp4moe/internal/progress"
	"github.com/fp4moe/fp4moe/safetensors"
)

const quantizeUsage = `usage: fp4moe quantize [--layout openai|huggingface|fp4moe] IN.safetensors OUT.safetensors

Quantizes float32 or bf16 expert weights to MXFP4 (E2M1 values, one E8M0 scale per 32).
  openai       block.N.mlp.mlp1_weight / mlp2_weight  ->  .blocks (E, rows, cols/32, 16) and .scales
  huggingface  model.layers.N.mlp.experts.gate_up_proj / down_proj  ->  ..._blocks and ..._scales
               (either GPT-OSS naming is read; biases and router are renamed into the layout)
  fp4moe       w13 (E, 2I, K) / w2 (E, K, I)  ->  w13 (E, 2I, K/2), w13_scale (E, 2I, K/32), w2, w2_scale
Other tensors are copied unchanged. The default layout follows the input's names.
`

func quantize(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quantize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, quantizeUsage) }
	layout := fs.String("layout", "", "output layout: openai, huggingface or fp4moe (default: the input's)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fmt.Fprint(stderr, quantizeUsage)
		return 2
	}
	in, outPath := fs.Arg(0), fs.Arg(1)
	f, err := safetensors.Open(in)
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe quantize: %v\n", oneLine(err))
		return 2
	}
	defer f.Close()
	to := *layout
	if to == "" {
		to = detectLayout(f)
	}
	out, err := os.Create(outPath)
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe quantize: %v\n", err)
		return 2
	}
	w := bufio.NewWriterSize(out, 1<<20)
	var bar *progress.Bar
	report := func(done, total int) {
		if bar == nil {
			bar = progress.New(stderr, "quantizing to MXFP4", int64(total))
		}
		bar.Add(int64(done) - bar.Done())
	}
	switch to {
	case "openai":
		err = gptoss.Convert(w, f, gptoss.OpenAI, report)
	case "huggingface", "hf":
		err = gptoss.Convert(w, f, gptoss.HuggingFace, report)
	case "fp4moe":
		err = convertPacked(w, f, report)
	default:
		err = fmt.Errorf("unknown layout %q (want openai, huggingface or fp4moe)", to)
	}
	if bar != nil {
		bar.Finish()
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(outPath)
		fmt.Fprintf(stderr, "fp4moe quantize: %v\n", oneLine(err))
		return 2
	}
	fmt.Fprintf(stdout, "wrote %s (%s layout)\n", outPath, to)
	return 0
}

// detectLayout picks the output layout from the input's tensor names.
func detectLayout(f *safetensors.File) string {
	for _, n := range f.Names() {
		switch {
		case n == "w13" || n == "w2":
			return "fp4moe"
		case strings.HasPrefix(n, "model.layers."):
			return "huggingface"
		}
	}
	return "openai"
}

// convertPacked quantizes w13 and w2, in this project's layout, and copies the rest.
func convertPacked(w io.Writer, f *safetensors.File, progress func(done, total int)) error {
	var outs []gptoss.Output
	for _, n := range f.Names() {
		t := f.Info(n)
		quantize := (n == "w13" || n == "w2") && t.DType != safetensors.U8
		outs = append(outs, gptoss.Output{Name: n, ScalesName: n + "_scale", Src: t, Quantize: quantize})
	}
	return gptoss.WriteOutputs(w, f, outs, nil, progress)
}
