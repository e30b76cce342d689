//go:build cudaops

package cudaops

import (
	"fmt"
	"sort"
	"time"
	"unsafe"

	"github.com/fp4moe/fp4moe/moe"
	"gorgonia.org/cu"
)

// DeviceBuffers is device memory holding one batch (and room for its output), as Upload makes
// it. Free releases it.
type DeviceBuffers struct {
	Batch DeviceBatch
	Out   cu.DevicePtr // (M, K) float32
	mem   cu.DevicePtr
	dev   *Device
}

// Upload copies a host batch into new device memory laid out as a DeviceBatch, with an output
// buffer for a layer of hidden size k.
func (l *Layer) Upload(b *moe.Batch) (*DeviceBuffers, error) {
	if err := b.Validate(&moe.Weights{E: l.E, K: l.K, I: l.I}, &l.cfg); err != nil {
		return nil, err
	}
	unbind, err := l.dev.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	var a arena
	parts := []struct {
		p unsafe.Pointer
		n int
	}{{ptr(b.X), 4 * len(b.X)}, {ptr(b.A1q), len(b.A1q)}, {ptr(b.A1qScale), 4 * len(b.A1qScale)},
		{ptr(b.TopKIDs), 4 * len(b.TopKIDs)}, {ptr(b.TopKWeights), 4 * len(b.TopKWeights)}, {nil, 4 * b.M * l.K}}
	offs := make([]int64, len(parts))
	for i, p := range parts {
		offs[i] = a.take(p.n)
	}
	mem, err := cu.MemAlloc(max(a.size, 1))
	if err != nil {
		return nil, fmt.Errorf("cudaops: allocating %d bytes for a batch: %v", a.size, err)
	}
	d := &DeviceBuffers{mem: mem, dev: l.dev}
	at := make([]cu.DevicePtr, len(parts))
	for i, p := range parts {
		if p.n == 0 {
			continue
		}
		at[i] = mem + cu.DevicePtr(offs[i])
		if p.p != nil {
			if err := cu.MemcpyHtoD(at[i], p.p, int64(p.n)); err != nil {
				cu.MemFree(mem)
				return nil, fmt.Errorf("cudaops: uploading a batch: %v", err)
			}
		}
	}
	// A copy from pageable memory may return before its bytes land, and the layer's stream does
	// not wait for the default stream's copies: wait here, so that the batch is in place for
	// any stream.
	if err := cu.Synchronize(); err != nil {
		cu.MemFree(mem)
		return nil, fmt.Errorf("cudaops: uploading a batch: %v", err)
	}
	d.Batch = DeviceBatch{M: b.M, TopK: b.TopK, X: at[0], A1q: at[1], A1qScale: at[2], TopKIDs: at[3], TopKWeights: at[4]}
	d.Out = at[5]
	return d, nil
}

// CaptureBatches uploads each batch into device memory of its own (Upload), then captures a
// forward of each into its own output (Capture), in order: graph i replays batch i. release
// closes the graphs and frees the buffers; on error everything made so far is released already.
func (l *Layer) CaptureBatches(bs []*moe.Batch) (gs []*Graph, bufs []*DeviceBuffers, release func(), err error) {
	release = func() {
		for _, g := range gs {
			g.Close()
		}
		for _, d := range bufs {
			d.Free()
		}
	}
	for _, b := range bs {
		d, err := l.Upload(b)
		if err != nil {
			release()
			return nil, nil, nil, err
		}
		bufs = append(bufs, d)
	}
	for _, d := range bufs {
		g, err := l.Capture(d.Out, d.Batch)
		if err != nil {
			release()
			return nil, nil, nil, err
		}
		gs = append(gs, g)
	}
	return gs, bufs, release, nil
}

func ptr[T any](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}

// Download waits for all work queued on the device (every layer's stream, so a ForwardDevice or a
// graph launch into Out has finished), then copies the first n float32 values of Out.
func (d *DeviceBuffers) Download(n int) ([]float32, error) {
	unbind, err := d.dev.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	if err := cu.Synchronize(); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	if n > 0 {
		if err := cu.MemcpyDtoH(unsafe.Pointer(&out[0]), d.Out, int64(4*n)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Free releases the buffers.
func (d *DeviceBuffers) Free() error {
	unbind, err := d.dev.bind()
	if err != nil {
		return err
	}
	defer unbind()
	return cu.MemFree(d.mem)
}

// TimeGraphs measures the graphs' device time per launch: rounds rounds of per launches each
// (round-robin over gs), with events only around each round, so the GPU runs a round back to
// back whatever the cost of submitting a launch; it returns each round's mean per launch.
func (l *Layer) TimeGraphs(gs []*Graph, rounds, per int) ([]time.Duration, error) {
	unbind, err := l.dev.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	evs := make([]cu.Event, rounds+1)
	for i := range evs {
		if evs[i], err = cu.MakeEvent(cu.DefaultEvent); err != nil {
			return nil, err
		}
	}
	defer func() {
		for i := range evs {
			cu.DestroyEvent(&evs[i])
		}
	}()
	if err := evs[0].Record(l.stream); err != nil {
		return nil, err
	}
	n := 0
	for r := range rounds {
		for range per {
			g := gs[n%len(gs)]
			n++
			if err := l.replayable(g); err != nil {
				return nil, err
			}
			if err := g.exec.launch(l.stream); err != nil {
				return nil, err
			}
		}
		if err := evs[r+1].Record(l.stream); err != nil {
			return nil, err
		}
	}
	if err := l.stream.Synchronize(); err != nil {
		return nil, err
	}
	ts := make([]time.Duration, rounds)
	for i := range ts {
		ms, err := evs[i].Elapsed(evs[i+1])
		if err != nil {
			return nil, err
		}
		ts[i] = time.Duration(ms * float64(time.Millisecond) / float64(per))
	}
	return ts, nil
}

// MeasureCopy returns the device-to-device copy bandwidth, bytes read plus bytes written per
// second, of an n-byte copy: the median of reps copies timed with events.
func MeasureCopy(n int64, reps int) (float64, error) {
	d, err := Open()
	if err != nil {
		return 0, err
	}
	unbind, err := d.bind()
	if err != nil {
		return 0, err
	}
	defer unbind()
	src, err := cu.MemAlloc(n)
	if err != nil {
		return 0, err
	}
	defer cu.MemFree(src)
	dst, err := cu.MemAlloc(n)
	if err != nil {
		return 0, err
	}
	defer cu.MemFree(dst)
	s, err := cu.MakeStream(cu.NonBlocking)
	if err != nil {
		return 0, err
	}
	defer s.Destroy()
	if err := cu.MemsetD8Async(src, 0x5A, n, s); err != nil {
		return 0, err
	}
	ms, err := medianTime(s, 2, reps, func() error { return cu.MemcpyDtoDAsync(dst, src, n, s) })
	if err != nil {
		return 0, err
	}
	return 2 * float64(n) / (ms / 1e3), nil
}

// medianTime runs f (work queued on s) warm times untimed, then reps times each between two
// events, waiting for each, and returns the median of the timed runs in milliseconds.
func medianTime(s cu.Stream, warm, reps int, f func() error) (float64, error) {
	a, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&a)
	b, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&b)
	var ms []float64
	for i := range warm + reps {
		if err := a.Record(s); err != nil {
			return 0, err
		}
		if err := f(); err != nil {
			return 0, err
		}
		if err := b.Record(s); err != nil {
			return 0, err
		}
		if err := s.Synchronize(); err != nil {
			return 0, err
		}
		t, err := a.Elapsed(b)
		if err != nil {
			return 0, err
		}
		if i >= warm {
			ms = append(ms, t)
		}
	}
	sort.Float64s(ms)
	return ms[len(ms)/2], nil
}

// MeasureGraphFloor returns the device time per replay of a CUDA graph of n chained one-block
// kernels (moe_reduce on one 128-column row with one slot, each launched as the layer launches
// its stages: waiting for the one before under programmatic launch), replayed back to back on
// one stream, as Layer.TimeGraphs replays a forward: the median over reps rounds of per replays
// each. A forward of n kernels pays at least this per graph launch, whatever its kernels do;
// the decode path's forward is 5 kernels (6 with the gather, 7 with float input).
func MeasureGraphFloor(n, reps, per int) (time.Duration, error) {
	if n < 1 || reps < 1 || per < 1 {
		return 0, fmt.Errorf("cudaops: graph floor of %d kernels, %d rounds of %d", n, reps, per)
	}
	d, err := Open()
	if err != nil {
		return 0, err
	}
	unbind, err := d.bind()
	if err != nil {
		return 0, err
	}
	defer unbind()
	const k = 128
	// z: one row of k floats, then inv_perm (one int, 0: row 0), the slot's weight, the output row.
	mem, err := cu.MemAlloc(4 * (2*k + 64))
	if err != nil {
		return 0, err
	}
	defer cu.MemFree(mem)
	s, err := cu.MakeStream(cu.NonBlocking)
	if err != nil {
		return 0, err
	}
	defer s.Destroy()
	if err := cu.MemsetD32Async(mem, 0, 2*k+64, s); err != nil {
		return 0, err
	}
	if err := s.Synchronize(); err != nil {
		return 0, err
	}
	z, inv, w, out := uint64(mem), uint64(mem)+4*k, uint64(mem)+4*k+4, uint64(mem)+4*k+256
	if err := beginCapture(s); err != nil {
		return 0, err
	}
	var lerr error
	for range n {
		if lerr = launch(d.fn.reduce, dim3{1, 1, 1}, dim3{128, 1, 1}, 0, s, z, inv, w, out, 1, k, 1, 0); lerr != nil {
			break
		}
	}
	exec, err := endCapture(s)
	if lerr != nil {
		exec.destroy()
		return 0, lerr
	}
	if err != nil {
		return 0, err
	}
	defer exec.destroy()
	// The first round warms up.
	ms, err := medianTime(s, 1, reps, func() error {
		for range per {
			if err := exec.launch(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(ms * float64(time.Millisecond) / float64(per)), nil
}
