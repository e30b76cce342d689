// Package native is the pure-Go implementation of the fused FP8 × MXFP4 MoE expert layer
// (package moe states the contract), and the home of the number formats: FP8 e4m3fn, E2M1,
// E8M0, MXFP4 and the per-token group FP8 quantizer.
//
// The layer runs the five stages of the contract on the CPU: Permute groups the routed rows by
// local expert, GEMM1 and GEMM2 multiply them by the expert's MXFP4 weights (decoded panel by
// panel into float32 through lookup tables, one scale per 32-element block, then multiplied
// with a float32 GEMM), the activation rounds its result to FP8 exactly as a GPU kernel would,
// and Reduce sums each token's rows in slot order. Work is spread over a fixed set of worker
// goroutines, and a Layer reuses its workspace, so a steady-state Forward allocates nothing.
package native

import (
	"runtime"
	"time"

	"github.com/fp4moe/fp4moe/moe"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Options tune the native layer; the zero value picks defaults. No option changes results.
type Options struct {
	// BlockM is the row alignment of expert segments in the permuted layout (default 1).
	BlockM int
	// Threads is the number of goroutines a Forward uses (default GOMAXPROCS).
	Threads int
	// ChunkRows bounds the routed rows processed at once, and so the workspace: tokens are
	// processed in chunks of max(1, ChunkRows/topk) (default 2048).
	ChunkRows int
}

func (o Options) withDefaults() Options {
	if o.BlockM < 1 {
		o.BlockM = 1
	}
	if o.Threads < 1 {
		o.Threads = runtime.GOMAXPROCS(0)
	}
	if o.ChunkRows < 1 {
		o.ChunkRows = 2048
	}
	return o
}

// Backend is the pure-Go backend. Its zero value uses default Options.
type Backend struct{ Options Options }

// Name returns "native".
func (Backend) Name() string { return "native" }

// NewLayer validates the weights and configuration and returns a layer bound to them. The
// layer reads w in place: w must not change while the layer is in use.
func (b Backend) NewLayer(w *moe.Weights, cfg moe.Config) (moe.Layer, error) {
	return NewLayer(w, cfg, b.Options)
}

// Layer is the native layer. It is not safe for concurrent use.
type Layer struct {
	w    *moe.Weights
	cfg  moe.Config
	opt  Options
	pool *pool

	perm  Permutation
	items []gemmItem
	ws    []workerScratch
	// Per chunk: a1q and a1qScale are the chunk's quantized input (the batch's, or xq/xs when
	// the layer quantizes float32 input itself).
	xq       []uint8
	xs       []float32
	af       []float32 // (M_sum, K): gathered activations for GEMM1, then GEMM2's output
	h        []float32 // (M_sum, 2I): GEMM1's output; its first I columns then hold the requantized activation
	b        *moe.Batch
	out      []float32
	t0, m    int // the chunk's first token and token count
	a1q      []uint8
	a1qScale []float32
	times    moe.StageTimes
}

type workerScratch struct {
	panel []float32 // (panelRows, max(K, I)) decoded weights
	row   []float32 // (max(K, I)): one activation row
	q     [moe.ActGroup]uint8
}

// panelRows is the number of weight rows decoded at once; rowsPerItem the number of routed
// rows of one GEMM work item. Both keep gonum's Sgemm on its serial path.
const (
	panelRows   = 64
	rowsPerItem = 64
)

type gemmItem struct {
	e, r0, r1, c0, c1 int32
}

const (
	stPrepare stage = iota
	stGather
	stGEMM1
	stActivation
	stGEMM2
	stReduce
)

// NewLayer validates the weights and configuration and returns a native layer.
func NewLayer(w *moe.Weights, cfg moe.Config, opt Options) (*Layer, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(w.E); err != nil {
		return nil, err
	}
	opt = opt.withDefaults()
	l := &Layer{w: w, cfg: cfg, opt: opt, pool: newPool(opt.Threads)}
	width := max(w.K, w.I)
	l.ws = make([]workerScratch, opt.Threads)
	for i := range l.ws {
		l.ws[i].panel = make([]float32, panelRows*width)
		l.ws[i].row = make([]float32, width)
	}
	// Idle workers hold only the pool; when the layer is dropped without Close, stop them.
	runtime.AddCleanup(l, func(p *pool) { p.close() }, l.pool)
	return l, nil
}

// Close stops the layer's worker goroutines.
func (l *Layer) Close() error {
	if l.pool != nil {
		l.pool.close()
	}
	return nil
}

// StageTimes returns the time each stage took in the last Forward.
func (l *Layer) StageTimes() moe.StageTimes { return l.times }

// Forward validates the batch and writes the layer's output (M, K) to out.
func (l *Layer) Forward(out []float32, b *moe.Batch) error {
	if err := b.Validate(l.w, &l.cfg); err != nil {
		return err
	}
	if len(out) != b.M*l.w.K {
		return &moe.ShapeError{Tensor: "output", Got: []int{len(out)}, Want: []int{b.M, l.w.K}}
	}
	l.times = moe.StageTimes{}
	l.b, l.out = b, out
	chunk := max(1, l.opt.ChunkRows/b.TopK)
	for t0 := 0; t0 < b.M; t0 += chunk {
		l.forwardChunk(t0, min(chunk, b.M-t0))
	}
	l.b, l.out, l.a1q, l.a1qScale = nil, nil, nil, nil
	return nil
}

func (l *Layer) forwardChunk(t0, m int) {
	w, b := l.w, l.b
	K, I, topk := w.K, w.I, b.TopK
	l.t0, l.m = t0, m
	tick := time.Now()
	lap := func(d *time.Duration) {
		now := time.Now()
		*d += now.Sub(tick)
		tick = now
	}
	if b.X != nil {
		l.xq = resize(l.xq, m*K)
		l.xs = resize(l.xs, m*K/moe.ActGroup)
		l.pool.run(l, stPrepare, m)
		l.a1q, l.a1qScale = l.xq, l.xs
	} else {
		l.a1q = b.A1q[t0*K : (t0+m)*K]
		l.a1qScale = b.A1qScale[t0*K/moe.ActGroup : (t0+m)*K/moe.ActGroup]
	}
	lap(&l.times.Prepare)

	l.perm.Permute(b.TopKIDs[t0*topk:(t0+m)*topk], m, topk, &l.cfg, w.E, l.opt.BlockM)
	rows := l.perm.MSum()
	l.af = resize(l.af, rows*K)
	l.h = resize(l.h, rows*2*I)
	l.pool.run(l, stGather, blocks(rows, rowsPerItem))
	lap(&l.times.Permute)

	l.planGEMM(2 * I)
	l.pool.run(l, stGEMM1, len(l.items))
	lap(&l.times.GEMM1)

	l.pool.run(l, stActivation, blocks(rows, rowsPerItem))
	lap(&l.times.Activation)

	l.planGEMM(K)
	l.pool.run(l, stGEMM2, len(l.items))
	lap(&l.times.GEMM2)

	l.pool.run(l, stReduce, blocks(m, 16))
	lap(&l.times.Reduce)
}

func blocks(n, b int) int { return (n + b - 1) / b }

// planGEMM splits a grouped GEMM with ncols output columns into work items: blocks of at most
// rowsPerItem rows of one expert, times column ranges (multiples of panelRows) chosen so that
// there are enough items for every worker even when few rows are routed.
func (l *Layer) planGEMM(ncols int) {
	p := &l.perm
	base := 0
	for _, c := range p.Counts {
		base += blocks(c, rowsPerItem)
	}
	split := 1
	for base*split < 4*l.opt.Threads && ncols/(2*split) >= panelRows {
		split *= 2
	}
	cols := blocks(blocks(ncols, split), panelRows) * panelRows
	l.items = l.items[:0]
	for e, c := range p.Counts {
		start := p.Offsets[e]
		for r0 := start; r0 < start+c; r0 += rowsPerItem {
			r1 := min(r0+rowsPerItem, start+c)
			for c0 := 0; c0 < ncols; c0 += cols {
				l.items = append(l.items, gemmItem{int32(e), int32(r0), int32(r1), int32(c0), int32(min(c0+cols, ncols))})
			}
		}
	}
}

func (l *Layer) runItem(s stage, wk, i int) {
	switch s {
	case stPrepare:
		l.prepareToken(wk, l.t0+i, i)
	case stGather:
		l.gather(i*rowsPerItem, min((i+1)*rowsPerItem, l.perm.MSum()))
	case stGEMM1:
		l.gemm1(wk, l.items[i])
	case stActivation:
		l.activate(wk, i*rowsPerItem, min((i+1)*rowsPerItem, l.perm.MSum()))
	case stGEMM2:
		l.gemm2(wk, l.items[i])
	case stReduce:
		l.reduce(i*16, min((i+1)*16, l.m))
	}
}

// prepareToken quantizes token t of the batch (row i of the chunk) to FP8, after multiplying
// it by its router weight when the configuration applies the weight on the input.
func (l *Layer) prepareToken(wk, t, i int) {
	K := l.w.K
	x := l.b.X[t*K : (t+1)*K]
	if l.cfg.ApplyRouterWeightOnInput {
		row := l.ws[wk].row[:K]
		wt := l.b.TopKWeights[t*l.b.TopK]
		for j, v := range x {
			row[j] = v * wt
		}
		x = row
	}
	QuantizeFP8Rows(l.xq[i*K:(i+1)*K], l.xs[i*K/moe.ActGroup:(i+1)*K/moe.ActGroup], x, 1, K, moe.ActGroup, l.cfg.ScaleFormat)
}

// gather decodes the FP8 input rows of permuted rows [r0, r1) into float32, times their
// scales; padding rows are skipped.
func (l *Layer) gather(r0, r1 int) {
	K, topk := l.w.K, l.b.TopK
	for r := r0; r < r1; r++ {
		pair := l.perm.Pairs[r]
		if pair < 0 {
			continue
		}
		t := int(pair) / topk
		src := l.a1q[t*K : (t+1)*K]
		sc := l.a1qScale[t*K/moe.ActGroup : (t+1)*K/moe.ActGroup]
		dst := l.af[r*K : (r+1)*K]
		for g, s := range sc {
			d := dst[g*moe.ActGroup : (g+1)*moe.ActGroup]
			for j, q := range src[g*moe.ActGroup : (g+1)*moe.ActGroup] {
				d[j] = fp8Table[q] * s
			}
		}
	}
}

var sgemm = gonum.Implementation{}

// gemm1 computes h[r, c] = Σ_j af[r, j] · W13[e, c, j] for the item's rows and columns.
func (l *Layer) gemm1(wk int, it gemmItem) {
	w := l.w
	K, N := w.K, 2*w.I
	rowBytes, rowScales := K/2, K/moe.WeightBlock
	rows := int(it.r1 - it.r0)
	a := l.af[int(it.r0)*K : int(it.r1)*K]
	if l.perm.Counts[it.e] <= smallRows {
		for c := int(it.c0); c < int(it.c1); c++ {
			row := int(it.e)*N + c
			dotMXFP4(l.h[int(it.r0)*N+c:], N, a, K, rows, w.W13[row*rowBytes:(row+1)*rowBytes], w.W13Scale[row*rowScales:(row+1)*rowScales])
		}
		return
	}
	panel := l.ws[wk].panel
	for c := int(it.c0); c < int(it.c1); c += panelRows {
		n := min(panelRows, int(it.c1)-c)
		first := int(it.e)*N + c
		decodeRows(panel[:n*K], w.W13[first*rowBytes:(first+n)*rowBytes], w.W13Scale[first*rowScales:(first+n)*rowScales])
		dst := l.h[int(it.r0)*N+c : (int(it.r1)-1)*N+c+n]
		sgemm.Sgemm(blas.NoTrans, blas.Trans, rows, n, K, 1, a, K, panel[:n*K], K, 0, dst, N)
	}
}

// gemm2 computes z[r, c] = Σ_j y[r, j] · W2[e, c, j] (+ b2[e, c]) for the item's rows and
// columns, where y is the requantized activation held in the first I columns of h; z goes to af.
func (l *Layer) gemm2(wk int, it gemmItem) {
	w := l.w
	K, I, N := w.K, w.I, 2*w.I
	rowBytes, rowScales := I/2, I/moe.WeightBlock
	rows := int(it.r1 - it.r0)
	a := l.h[int(it.r0)*N : (int(it.r1)-1)*N+I]
	if l.perm.Counts[it.e] <= smallRows {
		for c := int(it.c0); c < int(it.c1); c++ {
			row := int(it.e)*K + c
			dotMXFP4(l.af[int(it.r0)*K+c:], K, a, N, rows, w.W2[row*rowBytes:(row+1)*rowBytes], w.W2Scale[row*rowScales:(row+1)*rowScales])
		}
	} else {
		panel := l.ws[wk].panel
		for c := int(it.c0); c < int(it.c1); c += panelRows {
			n := min(panelRows, int(it.c1)-c)
			first := int(it.e)*K + c
			decodeRows(panel[:n*I], w.W2[first*rowBytes:(first+n)*rowBytes], w.W2Scale[first*rowScales:(first+n)*rowScales])
			dst := l.af[int(it.r0)*K+c : (int(it.r1)-1)*K+c+n]
			sgemm.Sgemm(blas.NoTrans, blas.Trans, rows, n, I, 1, a, N, panel[:n*I], I, 0, dst, K)
		}
	}
	if w.W2Bias != nil {
		bias := w.W2Bias[int(it.e)*K : (int(it.e)+1)*K]
		for r := int(it.r0); r < int(it.r1); r++ {
			z := l.af[r*K : (r+1)*K]
			for c := int(it.c0); c < int(it.c1); c++ {
				z[c] += bias[c]
			}
		}
	}
}

// decodeRows decodes MXFP4 rows into float32: for every 32-element block, a 16-entry table of
// the E2M1 values times the block's scale, then two lookups per packed byte.
func decodeRows(dst []float32, packed, scales []uint8) {
	var lut [16]float32
	for b, s := range scales {
		sc := DecodeE8M0(s)
		for i, v := range e2m1Table {
			lut[i] = v * sc
		}
		out := dst[b*moe.WeightBlock : (b+1)*moe.WeightBlock : (b+1)*moe.WeightBlock]
		in := packed[b*moe.WeightBlock/2 : (b+1)*moe.WeightBlock/2]
		for j, p := range in {
			out[2*j] = lut[p&0xF]
			out[2*j+1] = lut[p>>4]
		}
	}
}

// activate applies GEMM1's bias and the activation to rows [r0, r1), rounds the result to
// float32, quantizes it to FP8 per group of 128 and writes the dequantized values (exact in
// float32) over the row's first I columns of h.
func (l *Layer) activate(wk, r0, r1 int) {
	w := l.w
	I, N := w.I, 2*w.I
	sc := &l.ws[wk]
	y := sc.row[:I]
	for r := r0; r < r1; r++ {
		e := l.perm.ExpertIDs[r]
		if e < 0 {
			continue
		}
		h := l.h[r*N : (r+1)*N]
		var bias []float32
		if w.W13Bias != nil {
			bias = w.W13Bias[int(e)*N : (int(e)+1)*N]
		}
		Activate(y, h, bias, &l.cfg)
		for g := 0; g < I; g += moe.ActGroup {
			s := QuantizeGroup(sc.q[:], y[g:g+moe.ActGroup], l.cfg.ScaleFormat)
			for j, q := range sc.q {
				h[g+j] = fp8Table[q] * s
			}
		}
	}
}

// reduce writes output rows [t0, t1) of the chunk: the router-weighted sum of each token's
// rows, in slot order, and exact zeros for a token with no local expert.
func (l *Layer) reduce(t0, t1 int) {
	K, topk := l.w.K, l.b.TopK
	for t := t0; t < t1; t++ {
		gt := l.t0 + t
		out := l.out[gt*K : (gt+1)*K]
		clear(out)
		for k := range topk {
			r := l.perm.InvPerm[t*topk+k]
			if r < 0 {
				continue
			}
			wt := l.b.TopKWeights[gt*topk+k]
			if l.cfg.ApplyRouterWeightOnInput {
				wt = 1
			}
			z := l.af[int(r)*K : (int(r)+1)*K]
			for c, v := range z {
				out[c] += wt * v
			}
		}
	}
}
