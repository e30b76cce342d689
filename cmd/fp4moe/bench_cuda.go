//go:build cudaops

package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fp4moe/fp4moe/cudaops"
	"github.com/fp4moe/fp4moe/internal/benchdata"
	"github.com/fp4moe/fp4moe/moe"
)

// benchUsage is the bench's help; %[1]s stands for the default shapes, %[2]s for every shape
// (benchShapes).
const benchUsage = `usage: fp4moe bench [--shapes %[1]s] [--m 1,8,64,512,4096,16384]
                    [--routing uniform,zipf,zipf:S] [--gemm auto|tiled|decode|wgmma] [--stages] [--csv FILE]
                    [--min-time 300ms] [--seed 1] [--uploads 1] [--input fp8|float] [--plan] [--trace N] [--trace-blocks FILE]
                    [--graph-floor=false] [--host]

Shapes: %[2]s.
Times the whole layer (routing metadata to reduce) per call with CUDA-graph replay, rotating
batches with different routings so that small batches read their weights from memory, not L2.
Replays run back to back in rounds (one per rotated batch) with events around each round only;
the median is over rounds of the mean per call.
Per row: median µs, weight bytes of the touched experts, achieved GB/s and TFLOP/s
(2·M·topk·3·K·I FLOPs), and the weight floor (those bytes over the device-to-device copy
bandwidth measured in the same run) with the ratio to it, and the grouped GEMM kernel that ran.
The first line also gives the graph replay's floor measured in the same run: the time per replay
of a graph of 1 and of 5 chained one-block kernels launched as the layer launches its stages
(CSV columns graph1_us, graph5_us), what a forward pays per call whatever its kernels do;
--graph-floor=false leaves it out (0 in the CSV), so that a profiler's first kernels are the
layer's.
With --uploads N the weights of each shape are uploaded N times, each into fresh device memory
while the earlier copies stay allocated, every row is timed on each copy, and the row reports the
copy with the median time, with the fastest and slowest copies' times beside it (CSV columns
uploads, min_upload_us, max_upload_us): the spread that where the weights land in memory
gives, which a single upload cannot show.
--routing takes uniform (each token's experts drawn uniformly), zipf (expert popularity ∝
1/rank^1.2: a few experts take most rows) and zipf:S (popularity ∝ 1/rank^S, e.g. zipf:0.4, a
milder skew), comma-separated.
--input float gives the layer float32 tokens, which it quantizes to FP8 itself, instead of FP8
tokens with their scales (the default); the CSV's input column says which.
With --host each row is followed by the host path's time a call: Forward from Go slices to Go
slices, as the Gorgonia ops call it (the batch validated, copied to the device through pinned
memory, every stage, the output copied back and the stream synchronized), wall time, median and
10th and 90th percentiles over calls that rotate over the row's batches, and its ratio to the
graph replay's median (CSV columns host_us, host_p10_us, host_p90_us; empty without --host).
With --plan each row is followed by how its two grouped GEMMs run: the kernel and split the layer
picks, the grid's blocks (for the batch's tile bound; blocks without a tile return at once), the
blocks a multiprocessor holds at once (the driver's occupancy) and the waves they make.
With --trace N (kernels built with MOE_DEFS=-DMOE_TRACE cudaops/kernels/build.sh, loaded through
FP4MOE_FATBIN) each row is followed by its stage timeline: N replays of each rotated batch, one at
a time, and per stage of the decode path the medians of when its first and last blocks began and
its first and last warps ended, in µs after the forward's first block began; under each stage,
the steps its kernel stamps (cudaops.TraceSteps: the routing kernel's count, tile list, rows,
token stores and scale store, each kernel's wait, the activation's loads and first group), when its first and
last blocks passed each.
With --trace-blocks FILE (kernels built with MOE_DEFS="-DMOE_TRACE -DMOE_TRACE_BLOCKS") one
replay of each row's first batch records every block of each stage (up to 8192 a stage): the
CSV has its stage, blockIdx.x and .y, the SM it ran on, and when it began and its last warp
ended, in µs after the forward's first block began.
`

// benchShapes returns the default shapes as --shapes takes them (comma-separated) and every
// shape the bench knows as the help lists them, the default set marked.
func benchShapes() (defaults, all string) {
	var d, a []string
	for i, s := range benchdata.Shapes {
		a = append(a, s.Name)
		if i < benchdata.DefaultShapes {
			d = append(d, s.Name)
		}
	}
	a[benchdata.DefaultShapes-1] += " (the default set)"
	return strings.Join(d, ","), strings.Join(a, ", ")
}

func bench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defaults, all := benchShapes()
	fs.Usage = func() { fmt.Fprintf(stderr, benchUsage, defaults, all) }
	shapes := fs.String("shapes", defaults, "shapes to run")
	ms := fs.String("m", "1,8,64,512,4096,16384", "token counts")
	routings := fs.String("routing", "uniform,zipf", "routings: uniform, zipf, zipf:S (popularity exponent S)")
	csvPath := fs.String("csv", "", "write the rows as CSV to this file")
	minTime := fs.Duration("min-time", 300*time.Millisecond, "time spent timing each row, at least")
	seed := fs.Uint64("seed", 1, "seed of weights, inputs and routing")
	stages := fs.Bool("stages", false, "also print each stage's device time (host-path forward, median of 5)")
	plan := fs.Bool("plan", false, "also print how each row's two grouped GEMMs run: kernel, split, blocks, blocks an SM, waves")
	gemmName := fs.String("gemm", "auto", "grouped GEMM kernel: auto, tiled, decode or wgmma")
	uploads := fs.Int("uploads", 1, "uploads of each shape's weights, each timed (median reported)")
	input := fs.String("input", "fp8", "the tokens: fp8 (quantized, with scales) or float (float32, quantized by the layer)")
	graphFloor := fs.Bool("graph-floor", true, "measure the graph replay's floor first (thousands of one-block launches)")
	host := fs.Bool("host", false, "also time the host path (Forward from and to Go slices, wall time a call)")
	trace := fs.Int("trace", 0, "also print each row's stage timeline over this many replays of each batch (kernels built with MOE_TRACE)")
	traceBlocks := fs.String("trace-blocks", "", "write every traced block's span and SM, one replay of each row, as CSV to this file (kernels built with MOE_TRACE and MOE_TRACE_BLOCKS)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *input != "fp8" && *input != "float" {
		fmt.Fprintf(stderr, "fp4moe bench: --input %q: want fp8 or float\n", *input)
		return 2
	}
	if *trace < 0 {
		fmt.Fprintf(stderr, "fp4moe bench: --trace %d: want 0 or more\n", *trace)
		return 2
	}
	if *uploads < 1 {
		fmt.Fprintf(stderr, "fp4moe bench: --uploads %d: want at least 1\n", *uploads)
		return 2
	}
	var mvals []int
	for _, mstr := range strings.Split(*ms, ",") {
		m, err := strconv.Atoi(mstr)
		if err != nil || m < 1 {
			fmt.Fprintf(stderr, "fp4moe bench: bad M %q\n", mstr)
			return 2
		}
		mvals = append(mvals, m)
	}
	kernel, ok := map[string]cudaops.GEMMKernel{"auto": cudaops.GEMMAuto, "tiled": cudaops.GEMMTiled, "decode": cudaops.GEMMDecode, "wgmma": cudaops.GEMMWgmma}[*gemmName]
	if !ok {
		fmt.Fprintf(stderr, "fp4moe bench: unknown GEMM kernel %q\n", *gemmName)
		return 2
	}
	d, err := cudaops.Open()
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe bench: %v\n", err)
		return 2
	}
	copyBW, err := cudaops.MeasureCopy(2<<30, 10)
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe bench: measuring copy bandwidth: %v\n", err)
		return 2
	}
	// The graph replay's floor: the time per replay of graphs of one and of five chained
	// one-block kernels, what the decode path's five stages pay per call whatever they do.
	var floors [2]time.Duration
	floorText := "graph replay floor not measured (--graph-floor=false)"
	if *graphFloor {
		for i, n := range []int{1, 5} {
			if floors[i], err = cudaops.MeasureGraphFloor(n, 5, 200); err != nil {
				fmt.Fprintf(stderr, "fp4moe bench: measuring the graph floor: %v\n", err)
				return 2
			}
		}
		floorText = fmt.Sprintf("graph replay of 1 and 5 chained one-block kernels %.1f and %.1f µs", us(floors[0]), us(floors[1]))
	}
	fmt.Fprintf(stdout, "device %s (%d SMs, peak memory %.0f GB/s, %.1f bytes per SM cycle), kernels %s, GEMM %s; device-to-device copy %.0f GB/s (read + write); %s\n",
		d.Name, d.SMs, d.MemBandwidth/1e9, d.BytesPerSMCycle(), d.Fatbin, *gemmName, copyBW/1e9, floorText)
	run := benchRun{device: d.Name, copyBW: copyBW, graph: floors}
	w, closeCSV, err := createCSV(*csvPath, []string{"device", "date", "shape", "K", "I", "E", "topk", "routing", "M", "experts_touched", "weight_bytes",
		"median_us", "p10_us", "p90_us", "weight_GBps", "TFLOPs", "copy_GBps", "floor_us", "ratio_to_floor", "launches", "gemm",
		"uploads", "min_upload_us", "max_upload_us", "input", "graph1_us", "graph5_us", "host_us", "host_p10_us", "host_p90_us"})
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe bench: %v\n", err)
		return 2
	}
	defer closeCSV()
	tr := traceOpts{n: *trace}
	blocks, closeBlocks, err := createCSV(*traceBlocks, []string{"shape", "routing", "M", "stage", "x", "y", "sm", "start_us", "end_us"})
	if err != nil {
		fmt.Fprintf(stderr, "fp4moe bench: %v\n", err)
		return 2
	}
	defer closeBlocks()
	tr.blocks = blocks
	fmt.Fprintf(stdout, "%-14s %-8s %6s %5s %9s %11s %9s %8s %9s %7s  %-7s %s\n", "shape", "routing", "M", "exp", "weight MB", "median µs", "GB/s", "TFLOP/s", "floor µs", "×floor", "GEMM", "uploads µs")
	for _, name := range strings.Split(*shapes, ",") {
		s, ok := benchdata.Lookup(name)
		if !ok {
			fmt.Fprintf(stderr, "fp4moe bench: unknown shape %q\n", name)
			return 2
		}
		layers, err := uploadLayers(s, *seed, kernel, *uploads)
		if err != nil {
			fmt.Fprintf(stderr, "fp4moe bench: %s: %v\n", s.Name, err)
			return 2
		}
		code := benchShapeRows(layers, s, strings.Split(*routings, ","), *input, mvals, *seed, *minTime, run, rowOpts{*stages, *plan, *host}, tr, w, stdout, stderr)
		closeLayers(layers)
		if code != 0 {
			return code
		}
	}
	return 0
}

// uploadLayers uploads shape s's weights n times, each into fresh device memory (the earlier
// copies stay allocated until the caller closes them).
func uploadLayers(s benchdata.Shape, seed uint64, kernel cudaops.GEMMKernel, n int) ([]*cudaops.Layer, error) {
	w := benchdata.Weights(s, seed)
	var layers []*cudaops.Layer
	for range n {
		ml, err := cudaops.Backend{Options: cudaops.Options{GEMM: kernel}}.NewLayer(w, moe.GPTOSSConfig())
		if err != nil {
			closeLayers(layers)
			return nil, err
		}
		layers = append(layers, ml.(*cudaops.Layer))
	}
	return layers, nil
}

func closeLayers(layers []*cudaops.Layer) {
	for _, l := range layers {
		l.Close()
	}
}

// benchRun is what the bench measures once a run: the device's name, its copy bandwidth (bytes
// read plus written per second) and the graph replay's floor for 1 and 5 chained kernels.
type benchRun struct {
	device string
	copyBW float64
	graph  [2]time.Duration
}

// rowOpts are the bench's per-row extras: stage times (--stages), the GEMMs' plans (--plan) and
// the host path's time (--host).
type rowOpts struct{ stages, plan, host bool }

// benchShapeRows times every (routing, M) of one shape on each of its uploads and prints (and
// writes, when w is set) the rows; it returns the command's exit code.
func benchShapeRows(layers []*cudaops.Layer, s benchdata.Shape, routings []string, input string, ms []int, seed uint64, minTime time.Duration, run benchRun,
	opts rowOpts, tr traceOpts, w *csv.Writer, stdout, stderr io.Writer) int {
	l := layers[0]
	for _, routing := range routings {
		for _, m := range ms {
			batches, experts, err := rowBatches(s, routing, input, m, seed)
			if err != nil {
				fmt.Fprintf(stderr, "fp4moe bench: %s %s M=%d: %v\n", s.Name, routing, m, err)
				return 2
			}
			rs := make([]benchResult, len(layers))
			for i, li := range layers {
				if rs[i], err = benchRow(li, s, batches, experts, minTime, run.copyBW, tr); err != nil {
					fmt.Fprintf(stderr, "fp4moe bench: %s %s M=%d: %v\n", s.Name, routing, m, err)
					return 2
				}
			}
			sort.Slice(rs, func(i, j int) bool { return rs[i].median < rs[j].median })
			r, lo, hi := rs[(len(rs)-1)/2], rs[0].median, rs[len(rs)-1].median
			gemm := l.Kernel(m, s.TopK).String()
			spread := ""
			if len(rs) > 1 {
				spread = fmt.Sprintf("%.1f–%.1f", us(lo), us(hi))
			}
			fmt.Fprintf(stdout, "%-14s %-8s %6d %5.0f %9.1f %11.1f %9.0f %8.1f %9.1f %7.2f  %-7s %s\n", s.Name, routing, m, r.experts,
				r.bytes/1e6, us(r.median), r.bytes/r.median.Seconds()/1e9, r.flops/r.median.Seconds()/1e12, us(r.floor), r.median.Seconds()/r.floor.Seconds(), gemm, spread)
			if opts.stages {
				st, err := stageTimes(l, batches[0], s.K)
				if err != nil {
					fmt.Fprintf(stderr, "fp4moe bench: stages: %v\n", err)
					return 2
				}
				fmt.Fprintf(stdout, "    stages µs: permute+route %.1f  GEMM1 %.1f  activation %.1f  GEMM2 %.1f  reduce %.1f  (sum %.1f)\n",
					us(st.Permute), us(st.GEMM1), us(st.Activation), us(st.GEMM2), us(st.Reduce), us(st.Total()))
			}
			if opts.plan {
				p, err := l.Plan(m, s.TopK)
				if err != nil {
					fmt.Fprintf(stderr, "fp4moe bench: plan: %v\n", err)
					return 2
				}
				fmt.Fprintf(stdout, "    plan: GEMM1 %v; GEMM2 %v\n", p[0], p[1])
			}
			if tr.n > 0 {
				printTrace(stdout, r.trace)
			}
			hostCols := []string{"", "", ""}
			if opts.host {
				h, err := hostTimes(l, batches, s.K, minTime)
				if err != nil {
					fmt.Fprintf(stderr, "fp4moe bench: host path: %v\n", err)
					return 2
				}
				fmt.Fprintf(stdout, "    host path µs: median %.1f (p10 %.1f, p90 %.1f), %.2f× the graph replay\n",
					us(h.median), us(h.p10), us(h.p90), h.median.Seconds()/r.median.Seconds())
				hostCols = []string{ff(us(h.median)), ff(us(h.p10)), ff(us(h.p90))}
			}
			for _, b := range r.blocks {
				tr.blocks.Write([]string{s.Name, routing, itoa(m), cudaops.TraceStages[b.Stage], itoa(b.X), itoa(b.Y), itoa(b.SM), ff(us(b.Start)), ff(us(b.End))})
			}
			if w != nil {
				w.Write([]string{run.device, time.Now().UTC().Format("2006-01-02"), s.Name, itoa(s.K), itoa(s.I), itoa(s.E), itoa(s.TopK), routing, itoa(m),
					ff(r.experts), ff(r.bytes), ff(us(r.median)), ff(us(r.p10)), ff(us(r.p90)), ff(r.bytes / r.median.Seconds() / 1e9),
					ff(r.flops / r.median.Seconds() / 1e12), ff(run.copyBW / 1e9), ff(us(r.floor)), ff(r.median.Seconds() / r.floor.Seconds()), itoa(r.launches), gemm,
					itoa(len(rs)), ff(us(lo)), ff(us(hi)), input, ff(us(run.graph[0])), ff(us(run.graph[1])), hostCols[0], hostCols[1], hostCols[2]})
			}
		}
	}
	return 0
}

func itoa(v int) string          { return strconv.Itoa(v) }
func ff(v float64) string        { return strconv.FormatFloat(v, 'g', 6, 64) }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

type benchResult struct {
	median, p10, p90, floor time.Duration
	experts, bytes, flops   float64
	launches                int
	trace                   [len(cudaops.TraceStages)]cudaops.StageSpan // with --trace
	blocks                  []cudaops.BlockSpan                         // with --trace-blocks
}

// createCSV creates a CSV file at path with its header row, or does nothing for an empty path
// (a nil writer); done flushes the rows and closes the file.
func createCSV(path string, header []string) (w *csv.Writer, done func(), err error) {
	if path == "" {
		return nil, func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	w = csv.NewWriter(f)
	w.Write(header)
	return w, func() {
		w.Flush()
		f.Close()
	}, nil
}

// traceOpts are bench's trace flags: replays of each batch for the stage timeline (--trace), and
// where the traced blocks go (--trace-blocks; nil without).
type traceOpts struct {
	n      int
	blocks *csv.Writer
}

// printTrace prints a row's stage timeline (the stages that ran), in µs, with each stage's share
// of the critical path: its last end less the previous stage's (each stage waits for the one
// before it to finish). Under each stage, the steps its kernel stamped (cudaops.TraceSteps):
// when its first and last block passed each, in the start columns, and the last block's time
// since the stage's previous step (the first step: since the previous stage's last end) in the
// path column.
func printTrace(w io.Writer, sp [len(cudaops.TraceStages)]cudaops.StageSpan) {
	fmt.Fprintf(w, "    %-16s %12s %11s %10s %9s %8s\n", "trace µs", "first start", "last start", "first end", "last end", "+ path")
	var prev time.Duration
	for i, name := range cudaops.TraceStages {
		s := sp[i]
		if !s.Ran {
			continue
		}
		fmt.Fprintf(w, "    %-16s %12.1f %11.1f %10.1f %9.1f %8.1f\n", name, us(s.FirstStart), us(s.LastStart), us(s.FirstEnd), us(s.LastEnd), us(s.LastEnd-prev))
		from := prev
		for k, st := range s.Steps {
			if st.Ran {
				fmt.Fprintf(w, "      %-14s %12.1f %11.1f %10s %9s %8.1f\n", cudaops.TraceSteps[i][k], us(st.First), us(st.Last), "", "", us(st.Last-from))
				from = st.Last
			}
		}
		prev = s.LastEnd
	}
}

// rowBatches draws one (shape, routing, M) row's rotated batches (s.Rotations) and returns them
// with the mean number of experts they touch.
func rowBatches(s benchdata.Shape, routing, input string, m int, seed uint64) ([]*moe.Batch, float64, error) {
	batches := make([]*moe.Batch, s.Rotations(m))
	experts := 0.0
	for r := range batches {
		b, touched, err := benchdata.Batch(s, routing, input, m, seed+uint64(1000*m+r))
		if err != nil {
			return nil, 0, err
		}
		experts += float64(touched) / float64(len(batches))
		batches[r] = b
	}
	return batches, experts, nil
}

// percentiles returns the median, 10th and 90th percentiles of ts (sorted in place).
func percentiles(ts []time.Duration) (median, p10, p90 time.Duration) {
	sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	return ts[len(ts)/2], ts[len(ts)/10], ts[len(ts)*9/10]
}

// benchRow times one (shape, routing, M) over its rotated batches (rowBatches; experts: the
// experts they touch) by graph replay (and, with tr.n > 0, traces that many replays of each;
// with tr.blocks, the blocks of one replay of the first).
func benchRow(l *cudaops.Layer, s benchdata.Shape, batches []*moe.Batch, experts float64, minTime time.Duration, copyBW float64, tr traceOpts) (benchResult, error) {
	res := benchResult{experts: experts}
	m := batches[0].M
	graphs, _, release, err := l.CaptureBatches(batches)
	if err != nil {
		return res, err
	}
	defer release()
	// Rounds of len(graphs) back-to-back replays, timed with events around each round only.
	warm, err := l.TimeGraphs(graphs, 2, len(graphs)) // warm-up
	if err != nil {
		return res, err
	}
	per := warm[len(warm)-1] * time.Duration(len(graphs))
	n := int(minTime / max(per, time.Microsecond))
	n = max(10, min(n, 200))
	ts, err := l.TimeGraphs(graphs, n, len(graphs))
	if err != nil {
		return res, err
	}
	res.median, res.p10, res.p90 = percentiles(ts)
	res.launches = n * len(graphs)
	res.bytes = res.experts * s.ExpertBytes()
	res.flops = s.FLOPs(m)
	res.floor = time.Duration(res.bytes / copyBW * 1e9)
	if tr.n > 0 {
		runs, err := l.TraceGraphs(graphs, tr.n)
		if err != nil {
			return res, err
		}
		res.trace = cudaops.MedianSpans(runs)
	}
	if tr.blocks != nil {
		if res.blocks, err = l.TraceBlocks(graphs[0]); err != nil {
			return res, err
		}
	}
	return res, nil
}

// hostTimes times the host path of one row: Forward from the row's batches (rowBatches, in Go
// slices) into a Go slice of k columns, wall time a call, after three warm-up calls; at least 10
// calls and as many as fit in minTime (at most 200). It returns the median, 10th and 90th
// percentiles.
func hostTimes(l *cudaops.Layer, batches []*moe.Batch, k int, minTime time.Duration) (benchResult, error) {
	var res benchResult
	out := make([]float32, batches[0].M*k)
	call := func(i int) (time.Duration, error) {
		t0 := time.Now()
		err := l.Forward(out, batches[i%len(batches)])
		return time.Since(t0), err
	}
	var warm time.Duration
	for i := range 3 {
		d, err := call(i)
		if err != nil {
			return res, err
		}
		warm = d
	}
	n := max(10, min(200, int(minTime/max(warm, time.Microsecond))))
	ts := make([]time.Duration, n)
	for i := range ts {
		d, err := call(i)
		if err != nil {
			return res, err
		}
		ts[i] = d
	}
	res.median, res.p10, res.p90 = percentiles(ts)
	return res, nil
}

// stageTimes runs a row's first batch b (k output columns) through the host path five times and
// returns the median device time of each stage (the layer's stage timing on for these five).
func stageTimes(l *cudaops.Layer, b *moe.Batch, k int) (moe.StageTimes, error) {
	l.SetStageTimes(true)
	defer l.SetStageTimes(false)
	out := make([]float32, b.M*k)
	var all []moe.StageTimes
	for range 5 {
		if err := l.Forward(out, b); err != nil {
			return moe.StageTimes{}, err
		}
		all = append(all, l.StageTimes())
	}
	med := func(f func(moe.StageTimes) time.Duration) time.Duration {
		v := make([]time.Duration, len(all))
		for i, st := range all {
			v[i] = f(st)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	return moe.StageTimes{
		Permute:    med(func(s moe.StageTimes) time.Duration { return s.Permute }),
		GEMM1:      med(func(s moe.StageTimes) time.Duration { return s.GEMM1 }),
		Activation: med(func(s moe.StageTimes) time.Duration { return s.Activation }),
		GEMM2:      med(func(s moe.StageTimes) time.Duration { return s.GEMM2 }),
		Reduce:     med(func(s moe.StageTimes) time.Duration { return s.Reduce }),
	}, nil
}
