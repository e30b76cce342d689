//go:build cudaops

package cudaops

import (
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/fp4moe/fp4moe/internal/benchdata"
	"github.com/fp4moe/fp4moe/moe"
	"gorgonia.org/cu"
)

// BenchmarkForward times the whole layer per call (routing metadata, permute, GEMM1, activation
// and requant, GEMM2, reduce) by CUDA-graph replay at the shapes of GPT-OSS-120B, DeepSeek-V3 and
// Qwen3-30B-A3B, for batches of M tokens of FP8 input with uniform routing:
// BenchmarkForward/gptoss120b/M=1 and so on. The weights and batches are those `fp4moe bench`
// draws with its default seed (package benchdata: random E2M1 codes, block scales of 2^-9 to
// 2^-2; the shape, not the values, sets the time). Each iteration is one replay; the replays
// rotate over 8 batches of different routings (2 when every expert is touched anyway), so that
// small batches read their weights from memory rather than from L2. Besides ns/op (the wall time
// of b.N back-to-back replays, ending with one synchronization) it reports the device time per
// call from events (device-µs/call) and the weight bytes of the touched experts over it
// (weight-GB/s); SetBytes makes MB/s the same bytes over the wall time. Select one shape or size
// with -bench, e.g. -bench 'Forward/gptoss120b/M=1$'; a shape's weights are drawn and uploaded
// only when one of its sizes runs.
func BenchmarkForward(b *testing.B) {
	for _, s := range benchdata.Shapes[:benchdata.DefaultShapes] {
		b.Run(s.Name, func(b *testing.B) {
			l, err := NewLayer(benchdata.Weights(s, 1), moe.GPTOSSConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			for _, m := range []int{1, 8, 64, 512, 4096} {
				b.Run(fmt.Sprintf("M=%d", m), func(b *testing.B) { benchForward(b, l, s, m, "uniform") })
			}
		})
	}
}

// BenchmarkDecodeZipf times the decode path under Zipf routing (benchdata's: a few experts in
// most tokens), as BenchmarkForward does, with the streaming GEMM's kernel chosen by the average
// rows an expert (pass=auto) and with the 32-token kernel for every split-1 GEMM (pass=32,
// tok32Rows 0: a hot expert's tiles of 17-32 rows stream their weights once instead of in four
// 8-token passes, the others pay the 32-token kernel's larger passes):
// BenchmarkDecodeZipf/gptoss120b/M=64/pass=32 and so on.
func BenchmarkDecodeZipf(b *testing.B) {
	for _, s := range benchdata.Shapes[:benchdata.DefaultShapes] {
		b.Run(s.Name, func(b *testing.B) {
			l, err := Backend{Options: Options{GEMM: GEMMDecode}}.NewLayer(benchdata.Weights(s, 1), moe.GPTOSSConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			cl := l.(*Layer)
			for _, m := range []int{16, 32, 64, 128} {
				for _, pass := range []string{"auto", "32"} {
					b.Run(fmt.Sprintf("M=%d/pass=%s", m, pass), func(b *testing.B) {
						if pass == "32" {
							cl.tok32Rows = 0
							defer func() { cl.tok32Rows = -1 }()
						}
						benchForward(b, cl, s, m, "zipf")
					})
				}
			}
		})
	}
}

// benchForward captures the rotated batches of m tokens of shape s and the given routing
// (benchdata.Batch's) on l, checks that a replay writes a nonzero, finite output, and times b.N
// replays.
func benchForward(b *testing.B, l *Layer, s benchdata.Shape, m int, routing string) {
	rotate := s.Rotations(m)
	batches := make([]*moe.Batch, rotate)
	touched := 0
	for r := range rotate {
		batch, t, err := benchdata.Batch(s, routing, "fp8", m, 1+uint64(1000*m+r))
		if err != nil {
			b.Fatal(err)
		}
		touched += t
		batches[r] = batch
	}
	graphs, bufs, release, err := l.CaptureBatches(batches)
	if err != nil {
		b.Fatal(err)
	}
	defer release()
	// Every graph once (the warm-up), then the first output: never time a layer that writes
	// nothing.
	if _, err := l.TimeGraphs(graphs, 1, len(graphs)); err != nil {
		b.Fatal(err)
	}
	out, err := bufs[0].Download(m * s.K)
	if err != nil {
		b.Fatal(err)
	}
	for i, v := range out {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b.Fatalf("output[%d] = %v", i, v)
		}
	}
	if err := benchdata.CheckNonzero(out); err != nil {
		b.Fatal(err)
	}
	bytes := float64(touched) / float64(rotate) * s.ExpertBytes()
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

// BenchmarkHostPath takes the host path (Forward from Go slices into a Go slice) apart, wall
// time a call of each part, at the shapes of GPT-OSS-120B and Qwen3-30B-A3B for 1, 64 and 512
// tokens of FP8 input (benchdata's batch, one routing, so the weights may sit in L2):
//   - forward: the whole Forward; forward-nograph: without its graph (forwardGraph, batches of
//     at most hostGraphTokens tokens), the stages launched one by one; forward+capture: with
//     its graph captured anew each call;
//   - bind: the context made current on a locked thread, and released; sync: a
//     synchronization of the idle stream;
//   - stage: the batch copied into the workspace, then a synchronization; stage-copy: the batch
//     laid out in the pinned memory alone; h2d: its H2D copy alone, one copy, synchronized;
//     h2d-pageable: the batch's FP8 tokens copied to the device straight from the caller's slice;
//   - stages: every stage launched, no timing events, then a synchronization; stages+events: the
//     same with Forward's seven timing events; replay: the same stages as one captured graph,
//     launched and synchronized;
//   - output: the output copied back through pinned memory, after its event; d2h: that output's
//     D2H copy alone, one copy, synchronized; d2h+copyout: that copy, then the host copy reading
//     what it wrote; d2h+read: that copy, then the host reading it over the same goroutines, no
//     stores; d2h-pageable: the same copy straight into the caller's slice, pageable memory;
//     register: the caller's slice page-locked and released; d2h-registered: the D2H copy
//     straight into it, page-locked for the copy; copyout: the output's host copy into the
//     caller's slice alone;
//   - stagetimes: the six elapsed times read from the events.
//
// BenchmarkHostPath/gptoss120b/M=1/stage and so on. Without the graph, forward is about bind +
// stage + stages + output less the two synchronizations that stage and the stages end with and
// Forward does not.
func BenchmarkHostPath(b *testing.B) {
	for _, s := range benchdata.Shapes {
		if s.Name != "gptoss120b" && s.Name != "qwen3-30b-a3b" {
			continue
		}
		b.Run(s.Name, func(b *testing.B) {
			l, err := NewLayer(benchdata.Weights(s, 1), moe.GPTOSSConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			for _, m := range []int{1, 64, 512} {
				b.Run(fmt.Sprintf("M=%d", m), func(b *testing.B) { benchHostParts(b, l, s, m) })
			}
		})
	}
}

func benchHostParts(b *testing.B, l *Layer, s benchdata.Shape, m int) {
	batch, _, err := benchdata.Batch(s, "uniform", "fp8", m, 1+uint64(1000*m))
	if err != nil {
		b.Fatal(err)
	}
	out := make([]float32, m*s.K)
	if err := l.Forward(out, batch); err != nil { // grows the workspace; never time zeros
		b.Fatal(err)
	}
	if err := benchdata.CheckNonzero(out); err != nil {
		b.Fatal(err)
	}
	db, err := func() (DeviceBatch, error) {
		unbind, err := l.dev.bind()
		if err != nil {
			return DeviceBatch{}, err
		}
		defer unbind()
		return l.stageBatch(batch)
	}()
	if err != nil {
		b.Fatal(err)
	}
	g, err := l.Capture(l.ws.out, db)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	res := l.ws.host.bytes()[:4*len(out)]
	// Every part but forward and bind runs with the context bound.
	stages := func(b *testing.B, timing bool) error {
		db, err := l.stageBatch(batch) // staged once, outside the timer
		if err == nil {
			err = l.stream.Synchronize()
		}
		b.ResetTimer()
		for i := 0; i < b.N && err == nil; i++ {
			l.timing = timing
			err = l.launchAll(&db, l.ws.out)
			l.timing = false
			if err == nil {
				err = l.stream.Synchronize()
			}
		}
		return err
	}
	parts := []struct {
		name string
		run  func(b *testing.B) error
	}{
		{"forward", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				err = l.Forward(out, batch)
			}
			return err
		}},
		{"forward-nograph", func(b *testing.B) (err error) {
			l.noGraphs = true
			defer func() { l.noGraphs = false }()
			for i := 0; i < b.N && err == nil; i++ {
				err = l.Forward(out, batch)
			}
			return err
		}},
		{"forward+capture", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				l.graphGen = 0 // the next graph forward drops the graphs and captures its own
				err = l.Forward(out, batch)
			}
			return err
		}},
		{"bind", func(b *testing.B) error {
			for range b.N {
				unbind, err := l.dev.bind()
				if err != nil {
					return err
				}
				unbind()
			}
			return nil
		}},
		{"sync", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				err = l.stream.Synchronize()
			}
			return err
		}},
		{"stage", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				if _, err = l.stageBatch(batch); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"stage-copy", func(b *testing.B) error { // the batch laid out in the pinned memory alone
			segs, total := inputLayout(batch)
			for range b.N {
				stageRange(l.ws.host.bytes(), segs, 0, total)
			}
			return nil
		}},
		{"h2d", func(b *testing.B) (err error) { // the laid-out batch's H2D copy alone, one copy
			_, total := inputLayout(batch)
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyHtoDAsync(l.ws.in, unsafe.Pointer(&l.ws.host.bytes()[0]), int64(total), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"stages", func(b *testing.B) error { return stages(b, false) }},
		{"stages+events", func(b *testing.B) error { return stages(b, true) }},
		{"replay", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				if err = g.exec.launch(l.stream); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"output", func(b *testing.B) (err error) {
			for i := 0; i < b.N && err == nil; i++ {
				err = l.returnOutput(out, res)
			}
			return err
		}},
		{"d2h", func(b *testing.B) (err error) { // the output's D2H copy alone, one copy
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyDtoHAsync(unsafe.Pointer(&res[0]), l.ws.out, int64(len(res)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"d2h-pageable", func(b *testing.B) (err error) { // the output's D2H copy straight into out
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyDtoHAsync(unsafe.Pointer(&out[0]), l.ws.out, int64(len(res)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"h2d-pageable", func(b *testing.B) (err error) { // the batch's tokens straight from the caller's slice
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyHtoDAsync(l.ws.in, unsafe.Pointer(&batch.A1q[0]), int64(len(batch.A1q)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
			}
			return err
		}},
		{"d2h+copyout", func(b *testing.B) (err error) { // the two, the host copy reading what the device wrote
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyDtoHAsync(unsafe.Pointer(&res[0]), l.ws.out, int64(len(res)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
				parallelCopy(floatBytes(out), res)
			}
			return err
		}},
		{"d2h+read", func(b *testing.B) (err error) { // the same with the host reading it only
			var sink uint64
			for i := 0; i < b.N && err == nil; i++ {
				if err = cu.MemcpyDtoHAsync(unsafe.Pointer(&res[0]), l.ws.out, int64(len(res)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
				sink += readBytes(res)
			}
			if sink == 1 {
				b.Log(sink)
			}
			return err
		}},
		{"register", func(b *testing.B) (err error) { // out page-locked and released
			for i := 0; i < b.N && err == nil; i++ {
				if err = registerHost(unsafe.Pointer(&out[0]), 4*len(out)); err == nil {
					err = unregisterHost(unsafe.Pointer(&out[0]))
				}
			}
			return err
		}},
		{"d2h-registered", func(b *testing.B) (err error) { // the same around a D2H copy straight into out
			for i := 0; i < b.N && err == nil; i++ {
				if err = registerHost(unsafe.Pointer(&out[0]), 4*len(out)); err != nil {
					break
				}
				if err = cu.MemcpyDtoHAsync(unsafe.Pointer(&out[0]), l.ws.out, int64(len(res)), l.stream); err == nil {
					err = l.stream.Synchronize()
				}
				if uerr := unregisterHost(unsafe.Pointer(&out[0])); err == nil {
					err = uerr
				}
			}
			return err
		}},
		{"copyout", func(b *testing.B) error { // the output's host copy alone
			for range b.N {
				parallelCopy(floatBytes(out), res)
			}
			return nil
		}},
		{"stagetimes", func(b *testing.B) error {
			for range b.N {
				_ = stageTimes([][7]cu.Event{l.events}, false)
			}
			return nil
		}},
	}
	for _, p := range parts {
		b.Run(p.name, func(b *testing.B) {
			if !strings.HasPrefix(p.name, "forward") && p.name != "bind" {
				unbind, err := l.dev.bind()
				if err != nil {
					b.Fatal(err)
				}
				defer unbind()
			}
			b.ResetTimer()
			if err := p.run(b); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// readBytes reads p (8 bytes at a time) over the goroutines parallelCopy would copy it on and
// returns a sum of what it read.
func readBytes(p []byte) uint64 {
	n := len(p) / 8
	workers := max(1, min(parallelCopyWorkers, runtime.GOMAXPROCS(0), len(p)/parallelCopyPiece))
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&p[0])), n)
	sums := make([]uint64, workers)
	var wg sync.WaitGroup
	piece := (n + workers - 1) / workers
	for k := range workers {
		wg.Go(func() {
			var s uint64
			for _, v := range w[min(k*piece, n):min((k+1)*piece, n)] {
				s += v
			}
			sums[k] = s
		})
	}
	wg.Wait()
	var s uint64
	for _, v := range sums {
		s += v
	}
	return s
}
