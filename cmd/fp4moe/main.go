// Command fp4moe checks the fused FP8 × MXFP4 MoE expert layer against case files and
// quantizes expert weights to MXFP4.
//
// Usage:
//
//	fp4moe check [--backend native|cuda] [--threads N] [--block-m N] FILE...
//	fp4moe quantize [--layout openai|huggingface|fp4moe] IN.safetensors OUT.safetensors
//	fp4moe bench [--shapes ...] [--m ...] [--routing uniform,zipf] [--csv FILE]
//	fp4moe plot [--out DIR] [--format svg|png] [--peers FILE] [--fp8-tflops R] BENCH.csv...
//
// check runs every fp4moe-case/1 file on the backend and prints one line per case: its name,
// the relative L2 error against the file's float32-precision reference ("expected") and against
// its bf16-engine reference ("expected_bf16"), the tolerance, and PASS or FAIL (the backend's
// precision is float32 accumulation, so "expected" decides). For fp4moe-quant/1 files it checks
// the FP8 group quantizers, the packed ue8m0 export and the MXFP4 codec bit for bit and prints
// one line per vector set with its mismatch count.
//
// Exit status: 0 when everything passes, 1 when a check fails, 2 when a file is unreadable,
// malformed or inconsistent (or the arguments are wrong); each such file gets a one-line error
// and the other files are still checked.
//
// quantize reads float32 or bf16 expert weights and writes them as MXFP4 (OCP MX rounding, see
// docs/numerics.md) in GPT-OSS's OpenAI or Hugging Face layout, which package gptoss loads, or
// in this project's packed layout (w13, w13_scale, w2, w2_scale), with a progress bar; every
// other tensor is copied. It reads one expert at a time. Exit status 0, or 2 with a one-line
// error.
//
// bench (builds with -tags cudaops) times the CUDA backend on GPT-OSS-120B, DeepSeek-V3 and
// Qwen3-30B-A3B expert shapes with CUDA-graph replay and prints and writes (CSV) per-call
// medians with the weight floor of the same run; docs/perf.md records its runs.
//
// plot draws bench CSV files as one log-log chart per shape (time per call against M, with
// the weight floor, optionally the FP8 compute floor and other implementations' points) as SVG or PNG.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/cudaops"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

const usage = `usage: fp4moe check [--backend native|cuda] [--threads N] [--block-m N] FILE...
       fp4moe quantize [--layout openai|huggingface|fp4moe] IN.safetensors OUT.safetensors
       fp4moe bench [--shapes ...] [--m ...] [--routing uniform,zipf] [--csv FILE]   (tag cudaops)
       fp4moe plot [--out DIR] [--format svg|png] [--peers FILE] [--fp8-tflops R] BENCH.csv...

commands:
  check      run fp4moe-case/1 and fp4moe-quant/1 files and report PASS or FAIL
  quantize   convert float32/bf16 expert weights to MXFP4
  bench      time the CUDA backend on real model shapes (builds with -tags cudaops)
  plot       draw bench CSV files as log-log charts, one per shape
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "check":
		return check(args[1:], stdout, stderr)
	case "quantize":
		return quantize(args[1:], stdout, stderr)
	case "bench":
		return bench(args[1:], stdout, stderr)
	case "plot":
		return plotCmd(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "fp4moe: unknown command %q\n%s", args[0], usage)
	return 2
}

// backendFor returns the named backend.
func backendFor(name string, threads, blockM int) (moe.Backend, error) {
	switch name {
	case "native":
		return native.Backend{Options: native.Options{Threads: threads, BlockM: blockM}}, nil
	case "cuda":
		if _, err := cudaops.Open(); err != nil {
			return nil, err
		}
		return cudaops.Backend{}, nil
	}
	return nil, fmt.Errorf("unknown backend %q (want native or cuda)", name)
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backend := fs.String("backend", "native", "backend that runs the cases: native or cuda")
	threads := fs.Int("threads", 0, "goroutines of the native backend (0: GOMAXPROCS)")
	blockM := fs.Int("block-m", 0, "row alignment of the native backend's permuted layout (0: default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "fp4moe check: no files given")
		return 2
	}
	b, err := backendFor(*backend, *threads, *blockM)
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe check: %v\n", err)
		return 2
	}
	status := 0
	worse := func(s int) {
		if s > status {
			status = s
		}
	}
	for _, path := range fs.Args() {
		v, err := casefile.Open(path)
		if err != nil {
			fmt.Fprintf(stderr, "fp4moe check: %s: %v\n", path, oneLine(err))
			worse(2)
			continue
		}
		switch c := v.(type) {
		case *casefile.Case:
			r, err := conformance.RunCase(b, c)
			if err != nil {
				fmt.Fprintf(stderr, "fp4moe check: %s: %v\n", path, oneLine(err))
				worse(2)
				continue
			}
			fmt.Fprintln(stdout, r)
			if !r.Pass {
				worse(1)
			}
		case *casefile.Quant:
			for _, q := range conformance.CheckQuant(c) {
				fmt.Fprintf(stdout, "%s: %v\n", c.Name, q)
				if !q.Pass() {
					worse(1)
				}
			}
		}
	}
	return status
}

// oneLine keeps an error message on one line.
func oneLine(err error) string {
	s := err.Error()
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == '\n' || r == '\r' {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}
