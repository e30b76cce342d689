//go:build cudaops

package cudaops

import (
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/fp4moe/fp4moe/moe"
	"gorgonia.org/cu"
)

// Launch constants shared with the kernels (kernels/common.cuh, gemm_fp8fp4.cu, route.cu).
const (
	gemmRows     = 64   // GEMM_ROWS: weight rows per GEMM block
	routeThreads = 1024 // ROUTE_THREADS
	// ROUTE_SMALL_THREADS: the routing kernel of small decode batches (fusedPermutePairs bounds
	// them; routeSmallGrid gives its blocks)
	routeSmallThreads = 256
	maxExperts        = 1024 // local experts the routing kernel handles
	// fusedPermutePairs: up to this many routed pairs (ROUTE_SMALL_PAIRS), the decode batch's
	// routing kernel (moe_route_small) gathers the rows itself.
	fusedPermutePairs = 64
	// scatterPairs: above this many routed pairs, moe_route_scatter places them.
	scatterPairs = 4096
	// maxChunkPairs bounds the batches that take the routing's list of 8-row chunks (chunked):
	// moe_route scans the chunks' count in 16 bits.
	maxChunkPairs = 0xffff
	// DEC_HEAVY_ROW, DEC_HALF_SHIFT: the heavy list's flag of a tile of more than 16 rows in an
	// entry's row field, and the bit of its half (heavyWide).
	decHeavyRow  = 1 << 30
	decHalfShift = 29
	// DEC_ROWS_SHIFT: every routing list's entry holds its real rows in its expert word's bits
	// from this one up (listEntry).
	decRowsShift = 16
	// PS_THREADS: the wgmma path's gather of the scales (moe_permute_scales), whose blocks take
	// runs of rows of about permScaleRun scales each.
	permScaleThreads = 256
	permScaleRun     = 1024
	wgfRows          = 128 // WGF_ROWS: weight rows per block of the wgmma GEMM
	wgfStages        = 4   // WGF_STAGES: the depth of both wgmma kernels' shared-memory rings
	// WG4_ROWS, WG4_THREADS, WG4_SMEM: the folding kernel (moe_gemm_wg4, the wgmma path's main
	// kernel): 256 weight rows a block, 512 threads; a ring of 152 FP16 token rows of a chunk
	// (256 bytes each), 256·64 weight bytes and 256 scale words per stage, then a FULL and an
	// EMPTY mbarrier (8 bytes each) per stage.
	wg4Rows    = 256
	wg4Threads = 512
	wg4Smem    = wgfStages*(wgfTokens*256+wg4Rows*64+wg4Rows*4) + 2*wgfStages*8
	// WG4S_ROWS, WG4S_THREADS, WG4S_TOK, WG4S_SMEM: the small-tile folding kernel
	// (moe_gemm_wg4s, the wgmma path's main kernel for batches of at most wg4sMaxRows routed
	// rows a local expert, whose tiles the routing then caps at 32 tokens): 128 weight rows a
	// block, 256 threads, three blocks an SM (wg4sBlocks); a ring of wgfStages token stages (32
	// FP16 rows of 256 bytes) and one of wg4sWStages weight stages (128·64 code bytes and 128
	// scale words), then the token stages' FULL and EMPTY mbarriers.
	wg4sRows    = 128
	wg4sThreads = 256
	wg4sWStages = 4
	wg4sBlocks  = 3
	wg4sSmem    = wgfStages*wg4sTokens*256 + wg4sWStages*(wg4sRows*64+wg4sRows*4) + 2*wgfStages*8
	// WG4M_ROWS, WG4M_THREADS, WG4M_TOK, WG4M_SMEM: the middle folding kernel (moe_gemm_wg4m,
	// the wgmma path's main kernel for batches past wg4sMaxRows and up to wg4mMaxRows routed rows
	// a local expert, whose tiles the routing then caps at 64 tokens): 384 weight rows a block,
	// 768 threads; moe_gemm_wg4's ring with stages of 64 FP16 token rows.
	wg4mRows    = 384
	wg4mThreads = 768
	wg4mSmem    = wgfStages*(wg4mTokens*256+wg4mRows*64+wg4mRows*4) + 2*wgfStages*8
	// WGF_PSMEM, the promoting kernel's: a ring of 128·144 token bytes, 128·64 weight bytes, 128
	// scale words and 128 token scales per stage, and two FP16 token buffers.
	wgfPSmem = wgfStages*(128*144+wgfRows*64+wgfRows*4+128*4) + 2*8*128*32
	// The streaming (decode) GEMM (DEC_WARPS, DEC_STAGES, DEC_SMEM; DEC1_STAGES, DEC1_SMEM): 4
	// warps a block, each on 32 weight rows with a ring of its own (a stage: 32 weight rows of 64
	// bytes, 8 token rows of 128, 32 scale words, 8 token scales); the split kernel's decStages a
	// warp and the warps' partial sums, 4 blocks per SM; the split-1 kernel's dec1Stages. Stages
	// are padded to 128-byte alignment (as the kernel's stage type is).
	decStage   = (32*64 + 8*128 + 32*4 + 8*4 + 127) / 128 * 128
	decStages  = 3
	decWsc     = decWarps * 32 * 16 // each warp's decoded block scales (32 rows × 4 floats)
	decSmem    = decWarps*decStages*decStage + decWsc + decWarps*8*32*4
	dec1Stages = 3
	dec1Smem   = decWarps*dec1Stages*decStage + decWsc
	// The 16-token kernel (DEC16_SMEM, moe_gemm_dec16s): split 1, stages of 16 token rows, for
	// batches of more than dec16Rows routed rows per local expert on average (a tile of 9-16 rows
	// then streams its weights once); a pass of at most 8 tokens runs one fragment's loop (short
	// passes: GEMMs of 7-9 rows an expert 6.8-16.3 % faster on an H200 than with both fragments'
	// MMAs in every pass, docs/perf.md v56).
	dec16Smem = decWarps*dec1Stages*((32*64+16*128+32*4+16*4+127)/128*128) + decWsc
	// The 32-token kernel (DEC32_SMEM): the same with stages of 32 token rows, for batches of more
	// than dec32Rows routed rows per local expert on average (a tile of 17-32 rows then streams
	// its weights once; a ring of dec32Stages a warp, DEC32_STAGES there, so that 3 blocks fit on
	// an SM).
	dec32Stages = 2
	dec32Smem   = decWarps*dec32Stages*((32*64+32*128+32*4+32*4+127)/128*128) + decWsc
	// The 64-row kernel (DEC1W_SMEM): split 1, 8 tokens a pass, each warp on 64 weight rows (the
	// token fragments' conversion, token scales and loop bookkeeping serve twice the rows), for
	// the split-1 batches the 16-token kernel does not take.
	dec1wRows = 64
	dec1wSmem = decWarps*dec1Stages*((64*64+8*128+64*4+8*4+127)/128*128) + 2*decWsc
	// The 64-row kernel of 16 tokens a pass (DEC16W_SMEM, moe_gemm_dec16w): the 16-token
	// kernel's passes (short ones included) on 64 weight rows a warp, for every GEMM's 16-token
	// passes on devices that take the 64-row kernels (wide16); a ring of dec32Stages, so that 3
	// blocks fit on an SM.
	dec16wSmem = decWarps*dec32Stages*((64*64+16*128+64*4+16*4+127)/128*128) + 2*decWsc
	// The split kernel with 64 weight rows a warp (DECW_SMEM; its partial sums in the rings).
	decwSmem = decWarps*decStages*((64*64+8*128+64*4+8*4+127)/128*128) + 2*decWsc
	// dec1wMinRows: the 64-row kernel takes GEMMs of at least this many weight rows an expert,
	// on devices of at least dec1wMinBytes peak memory bytes per SM cycle (Device.BytesPerSMCycle);
	// the others keep the 32-row kernel. The 64-row kernel spends fewer instructions per weight
	// byte but has fewer warps in flight: it pays where the SMs' issue rate, not the memory,
	// limits the stream. (H200, 18.8 bytes a cycle: 3-9 % faster for GEMMs of 4096 rows or more,
	// DeepSeek-V3's two and GPT-OSS-120B's GEMM1, at 32-128 tokens; 9 % slower for
	// Qwen3-30B-A3B's 1536-row GEMM1 at 64 tokens, up to 4 % for GPT-OSS-120B's 2944-row GEMM2.
	// H100, 12.8 bytes a cycle: 1-4 % slower for DeepSeek-V3 and GPT-OSS-120B at 8-128 tokens.
	// docs/perf.md v23.)
	dec1wMinRows  = 4096
	dec1wMinBytes = 16
	// dec32sRows: of those, batches of at most this many rows per local expert take its instance
	// with short passes (moe_gemm_dec32s: a tile of at most 16 rows does the 16-token MMAs only,
	// one of at most 8 the 8-token ones), whose second loop cost tiles of 17-32 rows 3-7 % on the
	// H200 (docs/perf.md v30; the third, v57, cost tiles of 14-16 rows nothing measurable).
	dec32sRows = 16
	// unsplitRows: decode batches of more than this many routed rows per local expert on average
	// run both streaming GEMMs at split 1 (decSplits), however few their tiles. Only layers of
	// few experts reach it with tile bounds small enough to split (GPT-OSS-20B's 32 experts from
	// 57 tokens, DeepSeek-V2-Lite's 64 from 75); the split kernels' passes of 8 tokens stream the
	// weights of a tile of 9-16 rows twice. On an H200: at 8-12 rows an expert both shapes 2.0-6.9 %
	// faster so; at 7 rows GPT-OSS-20B 3.7-4.0 % slower (fewer tiles above 8 rows, and split 1's
	// thinner grid). docs/perf.md, "Four more model shapes".
	unsplitRows = 7
)

// layoutConst is a launch constant the kernels define too (by its name there).
type layoutConst struct {
	name  string
	value int64
}

// layoutConsts returns the launch constants above that the kernels define too, in the order of
// the module's moe_layout table (kernels/moe.cu); Open compares them with that table, so that
// kernels built with other values are refused instead of launched with the wrong grid or shared
// memory.
func layoutConsts() []layoutConst {
	return []layoutConst{
		{"MOE_BM", segmentRows}, {"GEMM_ROWS", gemmRows}, {"ROUTE_THREADS", routeThreads},
		{"ROUTE_SMALL_THREADS", routeSmallThreads}, {"ROUTE_SMALL_PAIRS", fusedPermutePairs},
		{"WGF_ROWS", wgfRows}, {"WGF_TOK", wgfTokens}, {"WGF_STAGES", wgfStages},
		{"WGF_PSMEM", wgfPSmem}, {"DEC_WARPS", decWarps}, {"DEC_SMEM", decSmem}, {"DEC1_SMEM", dec1Smem},
		{"DEC16_SMEM", dec16Smem}, {"DEC1W_SMEM", dec1wSmem}, {"DECW_SMEM", decwSmem}, {"ORDER_TRIGGER", orderTrigger},
		{"DEC32_SMEM", dec32Smem},
		{"WG4_ROWS", wg4Rows}, {"WG4_THREADS", wg4Threads}, {"WG4_SMEM", wg4Smem},
		{"PS_THREADS", permScaleThreads}, {"ROUTE_SHORT_TILE", routeShortTile},
		{"DEC_HEAVY_ROW", decHeavyRow}, {"DEC_HALF_SHIFT", decHalfShift}, {"DEC_ROWS_SHIFT", decRowsShift},
		{"DEC16W_SMEM", dec16wSmem},
		{"WG4S_ROWS", wg4sRows}, {"WG4S_THREADS", wg4sThreads}, {"WG4S_TOK", wg4sTokens}, {"WG4S_SMEM", wg4sSmem},
		{"WG4M_ROWS", wg4mRows}, {"WG4M_THREADS", wg4mThreads}, {"WG4M_TOK", wg4mTokens}, {"WG4M_SMEM", wg4mSmem},
	}
}

// checkLayout reads the module's moe_layout table and compares it with layoutConsts.
func checkLayout(mod cu.Module, fatbin string) error {
	p, size, err := mod.Global("moe_layout")
	if err != nil {
		return fmt.Errorf("cudaops: the kernels (%s) have no moe_layout table: %v; rebuild them (cudaops/kernels/build.sh)", fatbin, err)
	}
	want := layoutConsts()
	if size != int64(8*len(want)) {
		return fmt.Errorf("cudaops: the kernels' (%s) moe_layout table has %d bytes, the host code expects %d; rebuild them (cudaops/kernels/build.sh)", fatbin, size, 8*len(want))
	}
	got := make([]int64, len(want))
	if err := cu.MemcpyDtoH(unsafe.Pointer(&got[0]), p, size); err != nil {
		return fmt.Errorf("cudaops: reading the kernels' moe_layout table: %v", err)
	}
	for k, c := range want {
		if got[k] != c.value {
			return fmt.Errorf("cudaops: the kernels (%s) were built with %s = %d, the host code expects %d; rebuild them (cudaops/kernels/build.sh)", fatbin, c.name, got[k], c.value)
		}
	}
	return nil
}

// NewLayer validates the weights and configuration, opens the device, and uploads the weights.
func (b Backend) NewLayer(w *moe.Weights, cfg moe.Config) (moe.Layer, error) {
	l, err := NewLayer(w, cfg)
	if err != nil {
		return nil, err
	}
	l.opt = b.Options
	return l, nil
}

// Layer is the CUDA layer: the expert weights on the device, one stream, and a workspace that
// grows with the batch and is reused. It is not safe for concurrent use.
type Layer struct {
	dev       *Device
	opt       Options
	E, K, I   int
	cfg       moe.Config
	eg        int
	stream    cu.Stream
	weights   cu.DevicePtr // one allocation: W13, S13, W2, S2, biases, expert map
	w13, s13  cu.DevicePtr
	w2, s2    cu.DevicePtr
	b13, b2   cu.DevicePtr // 0 when absent
	expertMap cu.DevicePtr // 0 when absent
	// The wgmma GEMM's per-row reference exponents (E·2I and E·K bytes), and whether every
	// row's block scales fold exactly (else that kernel is not used).
	ref13, ref2 cu.DevicePtr
	foldable    bool
	// Whether a weight scale byte is 0 (2^-127, subnormal) or 255 (NaN): then the streaming
	// GEMM converts scales with those cases, else straight from the exponent bits.
	exactScales bool
	// wideRows: split-1 GEMMs of at least this many rows not taken by the 16- or 32-token
	// kernels take the 64-row kernel, the others the 32-row one (dec1wMinRows on devices of
	// dec1wMinBytes a cycle or more, else none; tests move it to run either).
	wideRows int64
	// wide16: every split-1 GEMM's 16-token passes run on moe_gemm_dec16w, and every GEMM
	// takes the pass thresholds wide32Rows (wide32RowsSmall for small experts) and wide16Rows
	// (passRows), and GEMMAuto the crossover autoDecodeRowsWide for large experts
	// (decodeRowsFor); else moe_gemm_dec16s, dec32Rows, dec16Rows and autoDecodeRows. Set on the
	// devices that take the 64-row kernels (tests move it).
	wide16 bool
	// tok32Rows: -1, or a test's threshold of rows an expert above which every split-1 GEMM
	// takes the 32-token kernel instead of passRows' (0: every one; MaxInt32: none; decPass).
	tok32Rows int
	// splitRows: the weight rows a warp of the split kernels (32 or 64), or 0 for splitWide's
	// choice (devices of dec1wMinBytes a cycle or more, else 32; tests set it to compare the two).
	splitRows int
	// noPredict: GEMM1 waits for the routing kernel before it reads its tile, also for batches
	// whose tiles it could work out from the ids (tests compare the two).
	noPredict bool
	// noChunks: the decode kernels of 8 tokens a pass take the routing's tile list, not its list
	// of 8-row chunks (chunked; tests compare the two).
	noChunks bool
	// noHeavy: the 64-row kernel's GEMMs take moe_gemm_dec1w over the chunk list, not
	// moe_gemm_dec1wh over the heavy list (heavyWide; tests compare the two).
	noHeavy bool
	// trigger: on the decode path, the early trigger by earlyTrigger's rule (0), always (1) or
	// never (-1) (tests compare the two).
	trigger int
	// routeGrid: moe_route_small's blocks, or 0 for routeSmallGrid's count (tests compare them).
	routeGrid int
	// actWarps: the activation kernel's warps a block (4 or 8), or 0 for actWarps' choice (tests
	// compare them).
	actWarps int
	// wgSmallRows: the wgmma path takes moe_gemm_wg4s, its tiles capped at wg4sTokens, for
	// batches of at most this many routed rows a local expert (wg4sMaxRows; tests move it);
	// wgMidRows: moe_gemm_wg4m, its tiles capped at wg4mTokens, past that and up to this many
	// (wg4mMaxRows; tests move it).
	wgSmallRows, wgMidRows int
	ws                     workspace
	wsAllocs               uint64 // workspaces allocated so far (workspace.gen)
	closed                 bool
	// Host-path stage timing (Options.StageTimes): events recorded between the stages of
	// Forward (never by ForwardDevice or Capture); timed: the sets of them that the last Forward
	// recorded, read by StageTimes (the read costs a few µs, so a Forward does not do it);
	// timedFloat: that Forward quantized its input (its Prepare stage ran).
	events     [7]cu.Event
	timing     bool
	timed      [][7]cu.Event
	timedFloat bool
	// Forward's output comes back in pieces, each followed by one of these events, so that the
	// host copies a piece while the next one is still in transit.
	pieceEvents [outPieces]cu.Event
	// A chunked Forward (forwardChunks): each chunk's timing events, an event after each chunk's
	// stages, and the stream its output travels back on (made at the first chunked Forward).
	chunkTiming [maxChunks][7]cu.Event
	chunkDone   [maxChunks]cu.Event
	copyStream  cu.Stream
	chunkReady  bool
	// markSet: the timing events mark records (nil: events).
	markSet *[7]cu.Event
	// Forward's graphs for batches of at most hostGraphTokens tokens (forwardGraph, hostGraph),
	// by batch shape and plan knobs, valid for the workspace of allocation graphGen.
	graphs   map[graphKey]*graphExec
	graphGen uint64
	// noGraphs: Forward launches every stage itself (tests compare the two).
	noGraphs bool
	// graphOut: the output of Forward's graph (4·hostGraphTokens·K bytes of pinned memory mapped
	// into the device's address space, at graphOutDev there), which the reduce writes over the
	// host link; allocated with the first graph.
	graphOut    pinned
	graphOutDev cu.DevicePtr
}

// graphKey identifies a host-path Forward's captured graph: the batch's tokens, experts a token
// and input kind (which set inputLayout's offsets), and every plan knob of the layer
// (planKnobs).
type graphKey struct {
	m, topk int
	float   bool
	knobs   planKnobs
}

// planKnobs are the Layer's fields that tests move to steer the plan; a captured graph is only
// replayed with the knobs it was captured with (TestPlanKnobsComplete lists the fields).
type planKnobs struct {
	opt                                  Options
	wideRows                             int64
	wide16, noPredict, noChunks, noHeavy bool
	tok32Rows, splitRows, trigger        int
	routeGrid, actWarps                  int
	wgSmallRows, wgMidRows               int
}

func (l *Layer) knobs() planKnobs {
	return planKnobs{opt: l.opt, wideRows: l.wideRows, wide16: l.wide16, noPredict: l.noPredict, noChunks: l.noChunks,
		noHeavy: l.noHeavy, tok32Rows: l.tok32Rows, splitRows: l.splitRows, trigger: l.trigger, routeGrid: l.routeGrid,
		actWarps: l.actWarps, wgSmallRows: l.wgSmallRows, wgMidRows: l.wgMidRows}
}

// forwardGraph is Forward of a batch of at most hostGraphTokens tokens without stage timing
// (bound, the workspace grown to hold it): the batch laid out in the pinned memory
// (inputLayout), then one graph of the whole forward, its H2D copy and every stage, the reduce
// writing the output into graphOut (pinned memory mapped into the device's address space)
// over the host link, captured the first time its batch shape comes with the layer's knobs
// (hostGraph) and replayed after that (one launch instead of a dozen launches and copies), then
// one synchronization and the output copied out of graphOut.
func (l *Layer) forwardGraph(out []float32, b *moe.Batch) error {
	host := l.ws.host.bytes()
	segs, total := inputLayout(b)
	stageRange(host, segs, 0, total)
	if l.graphOut.p == nil {
		if err := l.allocGraphOut(); err != nil {
			return err
		}
	}
	g, err := l.hostGraph(b, segs, total)
	if err != nil {
		return err
	}
	if err := g.launch(l.stream); err != nil {
		l.stream.Synchronize() // the pinned memory is free again before the call returns
		return err
	}
	if err := l.stream.Synchronize(); err != nil {
		return fmt.Errorf("cudaops: forward: %v", err)
	}
	parallelCopy(floatBytes(out), l.graphOut.bytes()[:4*len(out)])
	return nil
}

// allocGraphOut allocates graphOut.
func (l *Layer) allocGraphOut() error {
	h, err := allocPinned(4 * hostGraphTokens * l.K)
	if err != nil {
		return err
	}
	d, err := h.device()
	if err != nil {
		h.free()
		return err
	}
	l.graphOut, l.graphOutDev = h, d
	return nil
}

// hostGraph returns forwardGraph's graph for batch b (laid out as segs, total bytes), capturing
// it if the layer has none for b's shape and its knobs. The graphs are dropped with the workspace
// they were captured on, and all of them when maxHostGraphs are held.
func (l *Layer) hostGraph(b *moe.Batch, segs []inputSeg, total int) (*graphExec, error) {
	if l.graphGen != l.ws.gen || len(l.graphs) >= maxHostGraphs {
		l.dropGraphs()
		l.graphGen = l.ws.gen
	}
	key := graphKey{m: b.M, topk: b.TopK, float: b.X != nil, knobs: l.knobs()}
	if g := l.graphs[key]; g != nil {
		return g, nil
	}
	ws := &l.ws
	// The batch goes in by one copy (stages reading it from the pinned memory over the host link
	// cost 50–360 µs more at 1 to 8 tokens on an H200), the output comes back written by the
	// reduce into graphOut over the host link (without a D2H copy node: 2.5–8.5 µs less).
	db := ws.inputBatch(b, segs)
	if err := beginCapture(l.stream); err != nil {
		return nil, err
	}
	err := cu.MemcpyHtoDAsync(ws.in, unsafe.Pointer(&ws.host.bytes()[0]), int64(total), l.stream)
	if err == nil {
		err = l.launchAll(&db, l.graphOutDev)
	}
	g, cerr := endCapture(l.stream) // always, so that the stream leaves the capture
	if err == nil {
		err = cerr
	}
	if err != nil {
		g.destroy()
		return nil, fmt.Errorf("cudaops: capturing the forward: %v", err)
	}
	if l.graphs == nil {
		l.graphs = map[graphKey]*graphExec{}
	}
	l.graphs[key] = g
	return g, nil
}

// dropGraphs destroys Forward's captured graphs.
func (l *Layer) dropGraphs() {
	for k, g := range l.graphs {
		g.destroy()
		delete(l.graphs, k)
	}
}

// NewLayer is Backend.NewLayer with the concrete type.
func NewLayer(w *moe.Weights, cfg moe.Config) (*Layer, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(w.E); err != nil {
		return nil, err
	}
	if w.E > maxExperts {
		return nil, &moe.ConfigError{Msg: fmt.Sprintf("the CUDA backend handles at most %d local experts, got %d", maxExperts, w.E)}
	}
	d, unbind, err := openBound()
	if err != nil {
		return nil, err
	}
	defer unbind()
	l := &Layer{dev: d, E: w.E, K: w.K, I: w.I, cfg: cfg, eg: cfg.GlobalExperts(w.E)}
	if l.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return nil, fmt.Errorf("cudaops: stream: %v", err)
	}
	if err := makeEvents(cu.DefaultEvent, l.events[:]); err != nil {
		l.stream.Destroy()
		return nil, err
	}
	if err := makeEvents(cu.DisableTiming, l.pieceEvents[:]); err != nil {
		destroyEvents(l.events[:])
		l.stream.Destroy()
		return nil, err
	}
	// One allocation for every weight tensor, each at a 256-byte aligned offset.
	var a arena
	o13, os13, o2, os2 := a.take(len(w.W13)), a.take(len(w.W13Scale)), a.take(len(w.W2)), a.take(len(w.W2Scale))
	var ob13, ob2, omap int64 = -1, -1, -1
	if w.W13Bias != nil {
		ob13 = a.take(4 * len(w.W13Bias))
	}
	if w.W2Bias != nil {
		ob2 = a.take(4 * len(w.W2Bias))
	}
	if cfg.ExpertMap != nil {
		omap = a.take(4 * len(cfg.ExpertMap))
	}
	oref13, oref2, obad := a.take(len(w.W13Scale)/(w.K/32)), a.take(len(w.W2Scale)/(w.I/32)), a.take(4)
	if l.weights, err = cu.MemAlloc(a.size); err != nil {
		l.stream.Destroy()
		return nil, fmt.Errorf("cudaops: allocating %d bytes for the weights: %v", a.size, err)
	}
	at := func(off int64) cu.DevicePtr { return l.weights + cu.DevicePtr(off) }
	l.w13, l.s13, l.w2, l.s2 = at(o13), at(os13), at(o2), at(os2)
	// The scales go up in the kernels' blocked layout (blockedScales), the codes below
	// (blockedWeights).
	s13 := blockedScales(w.W13Scale, w.E, 2*w.I, w.K)
	s2 := blockedScales(w.W2Scale, w.E, w.K, w.I)
	type upload struct {
		dst cu.DevicePtr
		src unsafe.Pointer
		n   int
	}
	uploads := []upload{{l.s13, ptr(s13), len(s13)}, {l.s2, ptr(s2), len(s2)}}
	if ob13 >= 0 {
		l.b13 = at(ob13)
		uploads = append(uploads, upload{l.b13, ptr(w.W13Bias), 4 * len(w.W13Bias)})
	}
	if ob2 >= 0 {
		l.b2 = at(ob2)
		uploads = append(uploads, upload{l.b2, ptr(w.W2Bias), 4 * len(w.W2Bias)})
	}
	if omap >= 0 {
		l.expertMap = at(omap)
		uploads = append(uploads, upload{l.expertMap, ptr(cfg.ExpertMap), 4 * len(cfg.ExpertMap)})
	}
	for _, u := range uploads {
		if err := cu.MemcpyHtoD(u.dst, u.src, int64(u.n)); err != nil {
			l.release()
			return nil, fmt.Errorf("cudaops: uploading the weights: %v", err)
		}
	}
	// The codes go up in the kernels' blocked layout (blockedWeights), an expert at a time through
	// one buffer: a copy from pageable memory has left the buffer when it returns.
	for _, t := range []struct {
		dst     cu.DevicePtr
		src     []uint8
		n, cols int
	}{{l.w13, w.W13, 2 * w.I, w.K}, {l.w2, w.W2, w.K, w.I}} {
		per := t.n * t.cols / 2
		buf := make([]uint8, per)
		for x := 0; x < w.E; x++ {
			blockedWeights(buf, t.src[x*per:(x+1)*per], t.n, t.cols)
			if err := cu.MemcpyHtoD(t.dst+cu.DevicePtr(x*per), ptr(buf), int64(per)); err != nil {
				l.release()
				return nil, fmt.Errorf("cudaops: uploading the weights: %v", err)
			}
		}
	}
	l.exactScales = specialScales(w.W13Scale) || specialScales(w.W2Scale)
	l.tok32Rows, l.wgSmallRows, l.wgMidRows = -1, wg4sMaxRows, wg4mMaxRows
	l.wideRows, l.splitRows, l.wide16 = math.MaxInt64, 32, false
	if l.dev.BytesPerSMCycle() >= dec1wMinBytes {
		l.wideRows, l.splitRows, l.wide16 = dec1wMinRows, 0, true
	}
	// A copy from pageable memory may return before its bytes land; the kernels below run on the
	// layer's non-blocking stream, so wait for the copies first.
	if err := cu.Synchronize(); err != nil {
		l.release()
		return nil, fmt.Errorf("cudaops: uploading the weights: %v", err)
	}
	// The E2M1 codes into the kernels' device layout (e2m1_device_word in kernels/common.cuh).
	for _, t := range []struct {
		p     cu.DevicePtr
		bytes int
	}{{l.w13, len(w.W13)}, {l.w2, len(w.W2)}} {
		words := int64(t.bytes / 4)
		if err := launch(l.dev.fn.reencode, dim3{int(min((words+255)/256, int64(8*l.dev.SMs))), 1, 1}, dim3{256, 1, 1}, 0, l.stream,
			uint64(t.p), uint64(words)); err != nil {
			l.release()
			return nil, fmt.Errorf("cudaops: weight layout: %w", err)
		}
	}
	l.ref13, l.ref2 = at(oref13), at(oref2)
	if l.foldable, err = l.foldRefs(at(obad)); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// foldRefs computes the wgmma GEMM's per-row reference exponents of both weights and reports
// whether all rows fold exactly (bad is a 4-byte device word).
func (l *Layer) foldRefs(bad cu.DevicePtr) (bool, error) {
	if err := cu.MemsetD32Async(bad, 0, 1, l.stream); err != nil {
		return false, fmt.Errorf("cudaops: %v", err)
	}
	for _, m := range []struct {
		w, s, ref cu.DevicePtr
		rows, kd  int64
	}{{l.w13, l.s13, l.ref13, int64(l.E) * 2 * int64(l.I), int64(l.K)}, {l.w2, l.s2, l.ref2, int64(l.E) * int64(l.K), int64(l.I)}} {
		if err := launch(l.dev.fn.foldRef, dim3{int((m.rows + 3) / 4), 1, 1}, dim3{128, 1, 1}, 0, l.stream,
			uint64(m.w), uint64(m.s), uint64(m.rows), uint64(m.kd), uint64(m.ref), uint64(bad)); err != nil {
			return false, fmt.Errorf("cudaops: scale fold check: %w", err)
		}
	}
	var n int32
	if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&n), bad, 4, l.stream); err != nil {
		return false, fmt.Errorf("cudaops: %v", err)
	}
	if err := l.stream.Synchronize(); err != nil {
		return false, fmt.Errorf("cudaops: scale fold check: %v", err)
	}
	return n == 0, nil
}

// specialScales reports whether an E8M0 scale byte is 0 or 255.
func specialScales(s []uint8) bool {
	for _, v := range s {
		if v == 0 || v == 255 {
			return true
		}
	}
	return false
}

// arena hands out 256-byte aligned offsets in one allocation.
type arena struct{ size int64 }

func (a *arena) take(n int) int64 {
	off := a.size
	a.size += (int64(n) + 255) &^ 255
	return off
}

// workspace holds the device buffers of a forward, sized for up to m tokens of up to p routed
// pairs, and the pinned staging memory of the host path.
type workspace struct {
	m, p, rows, tiles, wtiles int
	mem                       cu.DevicePtr
	size                      int64
	// gen counts the layer's workspace allocations: a graph captured with one is replayed only
	// while it is the current one (a new allocation may reuse the old one's address).
	gen uint64
	// in: the host path's batch, laid out as in its pinned staging memory (inputLayout), so that
	// it moves in one copy (or in pieces of one range); a1q, a1s: the float path's quantized
	// tokens; out: the output
	in, a1q, a1s, out cu.DevicePtr
	// permuted layout and intermediates
	a1qPerm, a1sPerm, h, a2q, a2s, z cu.DevicePtr
	// routing metadata
	counts, offsets, expertIDs, rowPair, invPerm, tileList, ntiles, errs cu.DevicePtr
	// the tile list's 8-row chunks (moe_route's tiles8; their number is ntiles' second word)
	chunkList cu.DevicePtr
	// the heavy list (moe_route's tilesh, two entries a tile of more than 8 rows; ntiles' third word)
	heavyList cu.DevicePtr
	// per chunk of 1024 routed pairs, each expert's pairs in the chunk (moe_route_count), then in
	// the chunks before it (moe_route, for moe_route_scatter); after them, each chunk's invalid ids
	routePre cu.DevicePtr
	// the wgmma GEMM's tiles, and per tile and row whether and how the activation scales fold
	wtileList, nwtiles, wflags, wtrow cu.DevicePtr
	// the tiles whose scales do not fold (moe_wg_tiles' list for the promoting kernel), and their number
	wplist, nwplist cu.DevicePtr
	// the wgmma GEMM's tokens staged as FP16 (moe_wg_stage), chunk-major, xbStride bytes a chunk
	xb       cu.DevicePtr
	xbStride int64
	host     pinned
}

// bounds returns, for p routed pairs over the layer's local experts, the most rows the permuted
// layout can take and the most GEMM tiles (tileBound).
func (l *Layer) bounds(p int) (rows, tiles int) { return tileBound(p, l.E) }

// chunkTiles bounds the routing's list of 8-row chunks of p routed pairs (chunkBound).
func (l *Layer) chunkTiles(p int) int { return chunkBound(p, l.E) }

// heavyTiles bounds the routing's heavy list of p routed pairs (heavyBound): the heavy GEMM's
// grid, whose blocks past the list's end still launch (docs/perf.md v49).
func (l *Layer) heavyTiles(p int) int { return heavyBound(p, l.E) }

// wgfTiles bounds the wgmma GEMM's tiles of p routed pairs (wgTileBound).
func (l *Layer) wgfTiles(p int) int { return wgTileBound(p, l.E, l.wgSmallRows, l.wgMidRows) }

// wgfTilesUpTo bounds wgfTiles over batches of up to p routed pairs, the workspace's tile
// lists (wgTileBoundUpTo).
func (l *Layer) wgfTilesUpTo(p int) int { return wgTileBoundUpTo(p, l.E, l.wgSmallRows, l.wgMidRows) }

// wgSmall reports whether the wgmma path's GEMMs of p routed pairs run on the small-tile
// folding kernel (moe_gemm_wg4s): at most wgSmallRows routed rows a local expert on average.
func (l *Layer) wgSmall(p int) bool { return wgSmallBatch(p, l.E, l.wgSmallRows) }

// wgMid reports whether the wgmma path's GEMMs of p routed pairs run on the middle folding
// kernel (moe_gemm_wg4m): past wgSmallRows, at most wgMidRows routed rows a local expert.
func (l *Layer) wgMid(p int) bool { return wgMidBatch(p, l.E, l.wgSmallRows, l.wgMidRows) }

// wgfCap returns the most tokens of the wgmma GEMM's tiles of p routed pairs, the routing's
// cap (wgTileCap).
func (l *Layer) wgfCap(p int) int { return wgTileCap(p, l.E, l.wgSmallRows, l.wgMidRows) }

// begin binds the device to the calling goroutine's thread and grows the workspace to hold m
// tokens with topk experts each; the returned function unbinds.
func (l *Layer) begin(m, topk int) (func(), error) {
	unbind, err := l.dev.bind()
	if err != nil {
		return nil, err
	}
	if err := l.ensure(m, topk); err != nil {
		unbind()
		return nil, err
	}
	return unbind, nil
}

// ensure grows the workspace to hold m tokens with topk experts each.
func (l *Layer) ensure(m, topk int) error {
	p := m * topk
	if m <= l.ws.m && p <= l.ws.p && l.wgfTilesUpTo(p) <= l.ws.wtiles && l.ws.mem != 0 {
		return nil
	}
	m, p = max(m, l.ws.m, 1), max(p, l.ws.p, 1)
	rows, tiles := l.bounds(p)
	wtiles := l.wgfTilesUpTo(p)
	K, I := int64(l.K), int64(l.I)
	// The wgmma GEMM's staged tokens, only when a batch this workspace holds can take that
	// kernel (the choice only moves towards it as p grows).
	xbBytes := 0
	if l.kernel(p) == GEMMWgmma {
		xbBytes = (rows + wgfTokens) * max(l.K, l.I) * 2
	}
	var a arena
	ws := workspace{m: m, p: p, rows: rows, tiles: tiles, wtiles: wtiles}
	offs := []int64{
		a.take(inputBytes(m, p, l.K)), a.take(m * l.K), a.take(m * l.K / 32), a.take(m * l.K * 4),
		a.take(rows * l.K), a.take(rows * l.K / 32), a.take(int(int64(rows) * 2 * I * 4)), a.take(rows * l.I), a.take(rows * l.I / 32),
		a.take(int(int64(rows) * K * 4)),
		a.take(l.E * 4), a.take((l.E + 1) * 4), a.take(rows * 4), a.take(rows * 4), a.take(p * 4), a.take(tiles * 8), a.take(l.chunkTiles(p) * 8), a.take(l.heavyTiles(p) * 8), a.take(12), a.take(4),
		a.take(wtiles * 12), a.take(4), a.take(wtiles * 4), a.take(rows * 4), a.take(wtiles * 4), a.take(4),
		a.take((p + routeThreads - 1) / routeThreads * (l.E + 1) * 4),
		a.take(xbBytes),
	}
	mem, err := cu.MemAlloc(a.size)
	if err != nil {
		return fmt.Errorf("cudaops: allocating a %d-byte workspace for %d tokens × %d experts: %v", a.size, m, topk, err)
	}
	host, err := allocPinned(inputBytes(m, p, l.K)) // also the output's 4·m·K bytes
	if err != nil {
		cu.MemFree(mem)
		return err
	}
	l.freeWorkspace()
	ws.mem, ws.size, ws.host = mem, a.size, host
	ptrs := []*cu.DevicePtr{&ws.in, &ws.a1q, &ws.a1s, &ws.out, &ws.a1qPerm, &ws.a1sPerm, &ws.h, &ws.a2q, &ws.a2s, &ws.z,
		&ws.counts, &ws.offsets, &ws.expertIDs, &ws.rowPair, &ws.invPerm, &ws.tileList, &ws.chunkList, &ws.heavyList, &ws.ntiles, &ws.errs,
		&ws.wtileList, &ws.nwtiles, &ws.wflags, &ws.wtrow, &ws.wplist, &ws.nwplist, &ws.routePre, &ws.xb}
	for i, p := range ptrs {
		*p = mem + cu.DevicePtr(offs[i])
	}
	// A tile's last MMA columns may lie past the layout's rows (they are never stored): the
	// staging keeps wgfTokens spare rows per chunk.
	ws.xbStride = int64(rows+wgfTokens) * 256
	l.wsAllocs++
	ws.gen = l.wsAllocs
	l.ws = ws
	return nil
}

func (l *Layer) freeWorkspace() {
	if l.ws.mem != 0 {
		cu.MemFree(l.ws.mem)
	}
	l.ws.host.free()
	l.ws = workspace{}
}

// DeviceBatch is a batch whose tensors are in device memory (same shapes and dtypes as
// moe.Batch): X (M, K) float32, or A1q (M, K) FP8 and A1qScale (M, K/128) float32; TopKIDs and
// TopKWeights (M, TopK) int32 and float32. Unused pointers are 0.
type DeviceBatch struct {
	M, TopK              int
	X, A1q, A1qScale     cu.DevicePtr
	TopKIDs, TopKWeights cu.DevicePtr
}

// Forward validates the batch on the host, copies it to the device through pinned memory, runs
// the layer and copies the output back. On error out is untouched, but for a device fault once
// output has started coming back (after every stage has run, or, in chunks, after the first
// chunk's): out may then hold part of it.
// A batch of at most hostGraphTokens tokens, on a layer without stage timing, runs as one CUDA
// graph of its H2D copy and stages, the reduce writing the output into mapped pinned memory,
// captured the first time its shape comes (forwardGraph; the capture cost that call 35-40 µs
// more at one token on an H200, docs/perf.md).
// An output of 4 to 16 MiB (registerOutMin) is copied straight into out, page-locked for the
// call (through the pinned memory where locking fails, e.g. out already page-locked).
// Larger inputs and outputs move in pieces (hostPiece bytes in; up to outPieces pieces out), the
// host's copy of one piece overlapping the device copy of the next, each host copy spread over
// several goroutines (parallelCopy). A batch of at least chunkTokens tokens runs in chunks
// (forwardChunks), each chunk's output copied back on a second stream while the next chunk's
// stages run. With Options.StageTimes the stages are timed (StageTimes). A token's output is the
// same as from one forward of the whole batch unless the chunking changes whether its tile's
// activation scales fold (moe_wg_tiles; a tile holding a token whose scales do not fold takes
// the promoting kernel), which rounds within the contract.
func (l *Layer) Forward(out []float32, b *moe.Batch) error {
	if l.closed {
		return fmt.Errorf("cudaops: layer is closed")
	}
	l.timed = nil
	if err := b.Validate(&moe.Weights{E: l.E, K: l.K, I: l.I}, &l.cfg); err != nil {
		return err
	}
	if len(out) != b.M*l.K {
		return &moe.ShapeError{Tensor: "output", Got: []int{len(out)}, Want: []int{b.M, l.K}}
	}
	if b.M == 0 {
		return nil
	}
	unbind, err := l.begin(b.M, b.TopK)
	if err != nil {
		return err
	}
	defer unbind()
	if b.M <= hostGraphTokens && !l.opt.StageTimes && !l.noGraphs {
		return l.forwardGraph(out, b)
	}
	db, err := l.stageBatch(b)
	if err != nil {
		return err
	}
	res := l.ws.host.bytes()[:4*len(out)]
	if n := forwardChunks(b.M, l.K); n > 1 {
		return l.runChunks(out, b, &db, res, n)
	}
	l.timing = l.opt.StageTimes
	err = l.launchAll(&db, l.ws.out)
	l.timing = false
	if err != nil {
		l.stream.Synchronize() // the batch's copies finish before the call returns
		return err
	}
	done := false
	if n := 4 * len(out); n >= registerOutMin && n <= 2*hostPiece {
		done, err = l.returnLocked(out)
	}
	if err == nil && !done {
		err = l.returnOutput(out, res)
	}
	if err != nil {
		return err
	}
	if l.opt.StageTimes {
		l.timed, l.timedFloat = [][7]cu.Event{l.events}, b.X != nil
	}
	return nil
}

// stageBatch copies a host batch into the workspace (bound, grown to hold it): laid out as
// inputLayout says, in the pinned staging memory and then in ws.in by one copy, or, for a
// batch above hostPiece bytes, by one copy a piece, each piece's H2D copy on the stream
// overlapping the next piece's staging. It returns the batch as the stages read it.
func (l *Layer) stageBatch(b *moe.Batch) (DeviceBatch, error) {
	ws := &l.ws
	host := ws.host.bytes()
	segs, total := inputLayout(b)
	for lo := 0; lo < total; lo += hostPiece {
		hi := min(lo+hostPiece, total)
		stageRange(host, segs, lo, hi)
		if err := cu.MemcpyHtoDAsync(ws.in+cu.DevicePtr(lo), unsafe.Pointer(&host[lo]), int64(hi-lo), l.stream); err != nil {
			// The copies already queued finish before the call returns (the next call stages
			// its batch in the same pinned memory).
			l.stream.Synchronize()
			return DeviceBatch{}, fmt.Errorf("cudaops: copying the batch: %v", err)
		}
	}
	return ws.inputBatch(b, segs), nil
}

// inputBatch returns host batch b, laid out as segs (inputLayout) in ws.in, as the stages read
// it.
func (ws *workspace) inputBatch(b *moe.Batch, segs []inputSeg) DeviceBatch {
	at := func(i int) cu.DevicePtr { return ws.in + cu.DevicePtr(segs[i].off) }
	db := DeviceBatch{M: b.M, TopK: b.TopK, TopKIDs: at(0), TopKWeights: at(1)}
	if b.X != nil {
		db.X = at(2)
	} else {
		db.A1q, db.A1qScale = at(2), at(3)
	}
	return db
}

// returnOutput copies the workspace's output, after the stages queued on the stream, into out
// through res (the pinned memory, len(out)·4 bytes): in pieces (outPiece), each followed by an
// event, so that a piece is copied into out while the next is in transit; the first piece's
// event also tells that every stage ran without a fault before out is touched.
func (l *Layer) returnOutput(out []float32, res []byte) error {
	var bounds []int
	for lo, piece := 0, outPiece(len(res)); lo < len(res); lo += piece {
		bounds = append(bounds, lo)
	}
	bounds = append(bounds, len(res))
	for i := range len(bounds) - 1 {
		lo, hi := bounds[i], bounds[i+1]
		// On an error, the copies already queued finish before the call returns.
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&res[lo]), l.ws.out+cu.DevicePtr(lo), int64(hi-lo), l.stream); err != nil {
			l.stream.Synchronize()
			return fmt.Errorf("cudaops: copying the output: %v", err)
		}
		if err := l.pieceEvents[i].Record(l.stream); err != nil {
			l.stream.Synchronize()
			return fmt.Errorf("cudaops: event: %v", err)
		}
	}
	return l.copyBack(out, res, bounds)
}

// returnLocked copies the workspace's output, after the stages queued on the stream, straight
// into out, page-locked for the copy (registerHost: no host copy then reads what the device
// wrote), and synchronizes the stream; done is false, and nothing done, where locking fails.
func (l *Layer) returnLocked(out []float32) (done bool, err error) {
	p, n := unsafe.Pointer(&out[0]), 4*len(out)
	if registerHost(p, n) != nil {
		return false, nil
	}
	if err = cu.MemcpyDtoHAsync(p, l.ws.out, int64(n), l.stream); err != nil {
		err = fmt.Errorf("cudaops: copying the output: %v", err)
	}
	// Every copy into out finishes before it is unlocked.
	if serr := l.stream.Synchronize(); err == nil && serr != nil {
		err = fmt.Errorf("cudaops: forward: %v", serr)
	}
	if uerr := unregisterHost(p); err == nil && uerr != nil {
		err = uerr
	}
	return true, err
}

// floatBytes returns the bytes of v (len(v) > 0), sharing its memory.
func floatBytes(v []float32) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)) }

// copyBack copies Forward's output from the pinned res into out, piece i (res[bounds[i]:
// bounds[i+1]]) once pieceEvents[i] has passed, so that a piece is copied while the next one is
// still in transit.
func (l *Layer) copyBack(out []float32, res []byte, bounds []int) error {
	ob := floatBytes(out)
	for i := range len(bounds) - 1 {
		if err := l.pieceEvents[i].Synchronize(); err != nil {
			return fmt.Errorf("cudaops: forward: %v", err)
		}
		parallelCopy(ob[bounds[i]:bounds[i+1]], res[bounds[i]:bounds[i+1]])
	}
	return nil
}

// runChunks is Forward's run of a batch already in the workspace (db) in n chunks of tokens:
// chunk c's stages on the layer's stream, then its output back into res (pinned, the whole
// output's size) on the copy stream once they ran, while chunk c+1's stages run; the host copies
// chunk c into out once it is back.
func (l *Layer) runChunks(out []float32, b *moe.Batch, db *DeviceBatch, res []byte, n int) (err error) {
	if err := l.makeChunkResources(); err != nil {
		return err
	}
	// On an error, the copies already queued finish before the call returns: the next call
	// stages its batch in the same pinned memory.
	defer func() {
		if err != nil {
			l.stream.Synchronize()
			l.copyStream.Synchronize()
		}
	}()
	ws := &l.ws
	K, topk := l.K, b.TopK
	bound := func(c int) int { return c * b.M / n }
	for c := range n {
		t0, t1 := bound(c), bound(c+1)
		cb := DeviceBatch{M: t1 - t0, TopK: topk,
			TopKIDs: db.TopKIDs + cu.DevicePtr(4*t0*topk), TopKWeights: db.TopKWeights + cu.DevicePtr(4*t0*topk)}
		if db.X != 0 {
			cb.X = db.X + cu.DevicePtr(4*t0*K)
		} else {
			cb.A1q, cb.A1qScale = db.A1q+cu.DevicePtr(t0*K), db.A1qScale+cu.DevicePtr(4*t0*K/moe.ActGroup)
		}
		off := 4 * t0 * K
		l.timing, l.markSet = l.opt.StageTimes, &l.chunkTiming[c]
		err = l.launchAll(&cb, ws.out+cu.DevicePtr(off))
		l.timing, l.markSet = false, nil
		if err != nil {
			return err
		}
		if err := l.chunkDone[c].Record(l.stream); err != nil {
			return fmt.Errorf("cudaops: event: %v", err)
		}
		if err := l.copyStream.Wait(l.chunkDone[c], 0); err != nil {
			return fmt.Errorf("cudaops: stream wait: %v", err)
		}
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&res[off]), ws.out+cu.DevicePtr(off), int64(4*(t1-t0)*K), l.copyStream); err != nil {
			return fmt.Errorf("cudaops: copying the output: %v", err)
		}
		if err := l.pieceEvents[c].Record(l.copyStream); err != nil {
			return fmt.Errorf("cudaops: event: %v", err)
		}
	}
	bounds := make([]int, n+1)
	for c := range bounds {
		bounds[c] = 4 * bound(c) * K
	}
	if err := l.copyBack(out, res, bounds); err != nil {
		return err
	}
	if l.opt.StageTimes {
		l.timed, l.timedFloat = l.chunkTiming[:n], b.X != nil
	}
	return nil
}

// makeChunkResources makes the events and the copy stream of chunked forwards, once.
func (l *Layer) makeChunkResources() error {
	if l.chunkReady {
		return nil
	}
	if err := makeEvents(cu.DisableTiming, l.chunkDone[:]); err != nil {
		return err
	}
	for c := range l.chunkTiming {
		if err := makeEvents(cu.DefaultEvent, l.chunkTiming[c][:]); err != nil {
			l.destroyChunkEvents(c)
			return err
		}
	}
	s, err := cu.MakeStream(cu.NonBlocking)
	if err != nil {
		l.destroyChunkEvents(len(l.chunkTiming))
		return fmt.Errorf("cudaops: stream: %v", err)
	}
	l.copyStream, l.chunkReady = s, true
	return nil
}

// destroyChunkEvents destroys chunkDone and the first n sets of chunkTiming.
func (l *Layer) destroyChunkEvents(n int) {
	destroyEvents(l.chunkDone[:])
	for c := range n {
		destroyEvents(l.chunkTiming[c][:])
	}
}

// makeEvents makes every event of ev with flags, or none: on an error it destroys the ones made.
func makeEvents(flags cu.EventFlags, ev []cu.Event) error {
	for i := range ev {
		var err error
		if ev[i], err = cu.MakeEvent(flags); err != nil {
			destroyEvents(ev[:i])
			return fmt.Errorf("cudaops: event: %v", err)
		}
	}
	return nil
}

func destroyEvents(ev []cu.Event) {
	for i := range ev {
		cu.DestroyEvent(&ev[i])
	}
}

// StageTimes returns the device time of each stage of the last host-path Forward, measured
// with events between the stages (Permute includes routing; a Forward in chunks sums its
// chunks'), on a layer made with Options.StageTimes; zero on others, before the first Forward
// and after a failed one.
func (l *Layer) StageTimes() moe.StageTimes {
	if len(l.timed) == 0 || l.closed {
		return moe.StageTimes{}
	}
	unbind, err := l.dev.bind()
	if err != nil {
		return moe.StageTimes{}
	}
	defer unbind()
	return stageTimes(l.timed, l.timedFloat)
}

// RecordsStageTimes reports whether the layer times its stages (Options.StageTimes,
// SetStageTimes).
func (l *Layer) RecordsStageTimes() bool { return l.opt.StageTimes }

// SetStageTimes turns the timing of the host path's stages on or off (Options.StageTimes) from
// the next Forward on.
func (l *Layer) SetStageTimes(on bool) { l.opt.StageTimes = on }

// stageTimes reads the stage times from sets of timing events (recorded by mark), each stage's
// summed over the sets (a chunked Forward's chunks).
func stageTimes(sets [][7]cu.Event, prepared bool) moe.StageTimes {
	var d [6]time.Duration
	for _, ev := range sets {
		for i := range d {
			if ms, err := ev[i].Elapsed(ev[i+1]); err == nil {
				d[i] += time.Duration(ms * float64(time.Millisecond))
			}
		}
	}
	t := moe.StageTimes{Prepare: d[0], Permute: d[1], GEMM1: d[2], Activation: d[3], GEMM2: d[4], Reduce: d[5]}
	if !prepared {
		t.Prepare = 0
	}
	return t
}

// mark records timing event i on the stream during a host-path Forward.
func (l *Layer) mark(i int) error {
	if !l.timing {
		return nil
	}
	ev := &l.events
	if l.markSet != nil {
		ev = l.markSet
	}
	if err := ev[i].Record(l.stream); err != nil {
		return fmt.Errorf("cudaops: event: %v", err)
	}
	return nil
}

// ForwardDevice runs the layer on a batch in device memory and writes out, (M, K) float32 in
// device memory, on the layer's stream, without synchronizing: the call returns once the work
// is queued, and the stream (Stream) orders what follows. Expert ids are checked on the device:
// an invalid id is skipped and counted, and DeviceErrors reports the count of the last forward.
func (l *Layer) ForwardDevice(out cu.DevicePtr, b DeviceBatch) error {
	if l.closed {
		return fmt.Errorf("cudaops: layer is closed")
	}
	if b.M < 0 || b.TopK < 1 || (l.cfg.ApplyRouterWeightOnInput && b.TopK != 1) {
		return &moe.ConfigError{Msg: fmt.Sprintf("device batch with M = %d, topk = %d", b.M, b.TopK)}
	}
	if (b.X == 0 && (b.A1q == 0 || b.A1qScale == 0)) || b.TopKIDs == 0 || b.TopKWeights == 0 || out == 0 {
		return &moe.ConfigError{Msg: "device batch without input, routing or output"}
	}
	if b.M == 0 {
		return nil
	}
	unbind, err := l.begin(b.M, b.TopK)
	if err != nil {
		return err
	}
	defer unbind()
	return l.launchAll(&b, out)
}

// DeviceErrors waits for the stream and returns how many expert ids of the last forward were
// outside [-1, NumGlobalExperts) (and skipped).
func (l *Layer) DeviceErrors() (int, error) {
	unbind, err := l.dev.bind()
	if err != nil {
		return 0, err
	}
	defer unbind()
	var n int32
	if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&n), l.ws.errs, 4, l.stream); err != nil {
		return 0, err
	}
	return int(n), l.stream.Synchronize()
}

// Stream returns the layer's stream.
func (l *Layer) Stream() cu.Stream { return l.stream }

// launchAll queues the stages on the stream: prepare (float input), route, permute, GEMM1,
// activation + requant, GEMM2, reduce. The workspace must hold the batch.
func (l *Layer) launchAll(b *DeviceBatch, out cu.DevicePtr) error {
	ws := &l.ws
	f := &l.dev.fn
	M, K, I, E, topk := int64(b.M), int64(l.K), int64(l.I), int64(l.E), int64(b.TopK)
	P := int(M * topk)
	rows, tiles := l.bounds(P)
	u := func(p cu.DevicePtr) uint64 { return uint64(p) }
	i := func(v int64) uint64 { return uint64(v) }
	fl := func(v float32) uint64 { return math.Float64bits(float64(v)) }
	flag := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	blocks := func(n, per int64) int { return int((n + per - 1) / per) }
	a1q, a1s := b.A1q, b.A1qScale
	if err := l.mark(0); err != nil {
		return err
	}
	if b.X != 0 {
		a1q, a1s = ws.a1q, ws.a1s
		if err := launch(f.prepare, dim3{blocks(M*K/128, 4), 1, 1}, dim3{128, 1, 1}, 0, l.stream,
			u(b.X), u(b.TopKWeights), u(a1q), u(a1s), i(M), i(K), i(topk), i(int64(l.cfg.ScaleFormat)), flag(l.cfg.ApplyRouterWeightOnInput)); err != nil {
			return fmt.Errorf("cudaops: prepare: %w", err)
		}
	}
	if err := l.mark(1); err != nil {
		return err
	}
	kernel := l.kernel(P)
	// Small decode batches: moe_route_small, which also gathers the rows (one launch fewer).
	fused := kernel == GEMMDecode && P <= fusedPermutePairs
	// Prefill-sized ones (more than scatterPairs): one block per 1024 pairs counts them, the
	// routing block scans the counts, and one block per 1024 pairs places them, so that neither
	// the loads nor the scattered stores wait on one block.
	spread := P > scatterPairs
	pre := uint64(0)
	if spread {
		pre = u(ws.routePre)
		if err := launch(f.routeCount, dim3{blocks(int64(P), routeThreads), 1, 1}, dim3{routeThreads, 1, 1}, int(4*E), l.stream,
			u(b.TopKIDs), u(l.expertMap), i(M), i(topk), i(E), i(int64(l.eg)), pre); err != nil {
			return fmt.Errorf("cudaops: route: %w", err)
		}
	}
	// The streaming GEMMs' splits (decSplit, once each), and whether their split kernels have 64
	// or 32 weight rows a warp (splitWide); whether GEMM1 works out its tiles from the ids
	// (predicted), and which of the routing's lists each GEMM reads (decList), which the
	// routing kernel then writes.
	split1, split2, wide1, wide2 := l.decSplits(tiles, P)
	list1, list2 := l.decList(1, int(M), P, split1, 2*I), l.decList(2, int(M), P, split2, K)
	chunks, heavies := cu.DevicePtr(0), cu.DevicePtr(0)
	if list1 == listChunks || list2 == listChunks {
		chunks = ws.chunkList
	}
	if list1 == listHeavy || list2 == listHeavy {
		heavies = ws.heavyList
	}
	meta := []uint64{u(b.TopKIDs), u(l.expertMap), i(M), i(topk), i(E), i(int64(l.eg)),
		u(ws.counts), u(ws.offsets), u(ws.expertIDs), u(ws.rowPair), u(ws.invPerm), u(ws.tileList), u(ws.ntiles), u(ws.errs)}
	// The wgmma path's tiles: at most wgfCap(P) tokens each (0: the routing lists none).
	wgCap := int64(0)
	if kernel == GEMMWgmma {
		wgCap = int64(l.wgfCap(P))
	}
	var err error
	if fused {
		grid := routeSmallGrid(P, K, l.dev.SMs)
		if l.routeGrid > 0 {
			grid = l.routeGrid
		}
		err = launch(f.routeSmall, dim3{grid, 1, 1}, dim3{routeSmallThreads, 1, 1}, int(8*E), l.stream,
			append(meta, u(a1q), u(a1s), i(K), u(ws.a1qPerm), u(ws.a1sPerm), u(chunks))...)
	} else {
		err = launch(f.route, dim3{1, 1, 1}, dim3{routeThreads, 1, 1}, int(4*(2*E+33)+36*E), l.stream,
			append(meta, u(ws.wtileList), u(ws.nwtiles), i(wgCap), pre, u(chunks), u(heavies))...)
	}
	if err != nil {
		return fmt.Errorf("cudaops: route: %w", err)
	}
	if spread {
		if err := launch(f.routeScatter, dim3{blocks(int64(P), routeThreads), 1, 1}, dim3{routeThreads, 1, 1}, int(40*E), l.stream,
			u(b.TopKIDs), u(l.expertMap), i(M), i(topk), i(E), i(int64(l.eg)), u(ws.offsets), pre, u(ws.expertIDs), u(ws.rowPair), u(ws.invPerm)); err != nil {
			return fmt.Errorf("cudaops: route: %w", err)
		}
	}
	switch {
	case fused: // the routing kernel gathered the rows
	case kernel == GEMMWgmma:
		// The wgmma path's gather writes only the scales: GEMM1's staging reads the tokens
		// unpermuted (moe_wg_stage with row_pair), and writes the permuted rows of the tiles that
		// do not fold itself. A block takes a run of rows.
		G := K / 128
		rpb := max(1, permScaleRun/G)
		if err := launch(f.permuteScales, dim3{blocks(int64(rows), rpb), 1, 1}, dim3{permScaleThreads, 1, 1}, 0, l.stream,
			u(a1s), u(ws.rowPair), u(ws.offsets), i(E), i(G), i(topk), i(rpb), u(ws.a1sPerm)); err != nil {
			return fmt.Errorf("cudaops: permute: %w", err)
		}
	default:
		// The decode GEMM's gather takes one block per pair (its padding rows are never read),
		// the tiled GEMM's one per row of the layout.
		grid := rows
		if kernel == GEMMDecode {
			grid = P
		}
		if err := launch(f.permute, dim3{grid, 1, 1}, dim3{128, 1, 1}, 0, l.stream,
			u(a1q), u(a1s), u(ws.rowPair), u(ws.invPerm), u(ws.offsets), i(E), i(K), i(topk), u(ws.a1qPerm), u(ws.a1sPerm),
			flag(kernel == GEMMDecode)); err != nil {
			return fmt.Errorf("cudaops: permute: %w", err)
		}
	}
	if err := l.mark(2); err != nil {
		return err
	}
	// early 1: the routing metadata comes from a kernel before the previous one (GEMM2), so the
	// streaming GEMM reads it and issues its first weight copies before it waits for the
	// previous kernel; 3: that and the early trigger (below); 2: GEMM1 works out its tiles from
	// the ids (below). Every list's entry carries its rows (list_word), so the chunk and heavy
	// lists take the same early.
	// gsrc: GEMM1's tokens unpermuted (a1q), which the wgmma path stages straight from; 0 for GEMM2.
	gemm := func(w, sc, ref, x, xs, gsrc, bias, out cu.DevicePtr, n, kd int64, split int, early int64, wide bool, dl decodeList) error {
		gl := l.gemmMain(kernel, n, split, P, tiles, wide)
		switch kernel {
		case GEMMDecode:
			// The list and its count (a word of ntiles each).
			l.onList(&gl, dl, P)
			list, nt := ws.tileList, ws.ntiles
			switch dl {
			case listChunks:
				list, nt = ws.chunkList, ws.ntiles+4
			case listHeavy:
				list, nt = ws.heavyList, ws.ntiles+8
			}
			return launch(gl.fn, gl.grid, gl.block, gl.smem, l.stream,
				u(w), u(sc), u(x), u(xs), u(list), u(nt), u(ws.counts), u(ws.offsets), u(bias), u(out), i(n), i(kd),
				i(int64(split)), flag(l.exactScales), i(early), u(b.TopKIDs), u(l.expertMap), i(int64(P)|int64(l.eg)<<32))
		case GEMMWgmma:
			// Per tile, whether the activation scales fold into FP16 (and if so its FP16 tokens);
			// the tiles that fold, then the others.
			grid := gl.grid
			if err := cu.MemsetD32Async(ws.nwplist, 0, 1, l.stream); err != nil {
				return fmt.Errorf("cudaops: %v", err)
			}
			if err := launch(f.wgTiles, dim3{grid.y, 1, 1}, dim3{256, 1, 1}, 0, l.stream,
				u(xs), u(ws.wtileList), u(ws.nwtiles), i(kd/128), u(ws.wflags), u(ws.wtrow), u(ws.wplist), u(ws.nwplist)); err != nil {
				return err
			}
			src, rowPair := x, cu.DevicePtr(0)
			if gsrc != 0 {
				src, rowPair = gsrc, ws.rowPair
			}
			// With row_pair (GEMM1), the staging also writes the permuted rows x of the tiles
			// that do not fold, for moe_gemm_wgp.
			if err := launch(f.wgStage, dim3{grid.y, int(kd / 128), 1}, dim3{256, 1, 1}, 0, l.stream,
				u(src), u(xs), u(ws.wtileList), u(ws.nwtiles), u(ws.wflags), u(ws.wtrow), i(kd/128), u(ws.xb), i(ws.xbStride),
				u(rowPair), i(topk), u(x)); err != nil {
				return err
			}
			if err := launch(gl.fn, grid, gl.block, gl.smem, l.stream,
				u(w), u(sc), u(ref), u(ws.xb), i(ws.xbStride), u(ws.wtileList), u(ws.nwtiles), u(ws.wflags), u(ws.wtrow), u(bias), u(out), i(n), i(kd)); err != nil {
				return err
			}
			// The promoting kernel walks the list of tiles that do not fold: about four waves of blocks
			// when every tile is on it, a few idle blocks when none is.
			px := int(n / wgfRows)
			py := min(l.wgfTiles(P), max(8, (4*l.dev.SMs+px-1)/px))
			return launch(f.gemmWgp, dim3{px, py, 1}, dim3{256, 1, 1}, wgfPSmem, l.stream,
				u(w), u(sc), u(ref), u(x), u(xs), u(ws.wtileList), u(ws.wplist), u(ws.nwplist), u(bias), u(out), i(n), i(kd))
		}
		return launch(gl.fn, gl.grid, gl.block, gl.smem, l.stream,
			u(w), u(sc), u(x), u(xs), u(ws.tileList), u(ws.ntiles), u(ws.counts), u(ws.offsets), u(bias), u(out), i(n), i(kd))
	}
	// GEMM1 of at most segmentRows pairs after moe_route_small: each block works out its tile
	// from the ids and starts its weight copies before the routing kernel ends (mode 2).
	early1 := int64(0)
	if l.predicted(P) {
		early1 = 2
	}
	if err := gemm(l.w13, l.s13, l.ref13, ws.a1qPerm, ws.a1sPerm, a1q, l.b13, ws.h, 2*I, K, split1, early1, wide1, list1); err != nil {
		return fmt.Errorf("cudaops: GEMM1: %w", err)
	}
	if err := l.mark(3); err != nil {
		return err
	}
	// The early trigger (kernels/common.cuh) on the decode path: the activation kernel takes it
	// as a bit of its order argument, GEMM2 as early 3.
	order, early2 := tokenOrder(kernel), int64(1)
	if kernel == GEMMDecode && (l.trigger > 0 || l.trigger == 0 && earlyTrigger(P, tiles, K, I)) {
		order, early2 = order|orderTrigger, 3
	}
	// GEMM1 added its bias in its epilogue; the activation kernel gets none.
	limit, clamp := l.cfg.Limit()
	ay := blocks(I/128, 8) // a block's eight groups of a pair's row
	aw := actWarps(P*ay, l.dev.SMs)
	if l.actWarps > 0 {
		aw = l.actWarps
	}
	if err := launch(f.actQuant, dim3{P, ay, 1}, dim3{32 * aw, 1, 1}, 0, l.stream,
		u(ws.h), u(ws.expertIDs), u(ws.invPerm), 0, u(ws.a2q), u(ws.a2s), i(int64(P)), i(I),
		i(int64(l.cfg.Activation)), flag(clamp), fl(limit), fl(l.cfg.Alpha), fl(l.cfg.Beta), i(int64(l.cfg.ScaleFormat)),
		i(order)); err != nil {
		return fmt.Errorf("cudaops: activation: %w", err)
	}
	if err := l.mark(4); err != nil {
		return err
	}
	if err := gemm(l.w2, l.s2, l.ref2, ws.a2q, ws.a2s, 0, l.b2, ws.z, K, I, split2, early2, wide2, list2); err != nil {
		return fmt.Errorf("cudaops: GEMM2: %w", err)
	}
	if err := l.mark(5); err != nil {
		return err
	}
	if err := launch(f.reduce, dim3{int(M) * blocks(K, 512), 1, 1}, dim3{128, 1, 1}, 0, l.stream,
		u(ws.z), u(ws.invPerm), u(b.TopKWeights), u(out), i(M), i(K), i(topk), flag(l.cfg.ApplyRouterWeightOnInput)); err != nil {
		return fmt.Errorf("cudaops: reduce: %w", err)
	}
	return l.mark(6)
}

// orderTrigger (ORDER_TRIGGER) is the activation kernel's order argument's bit for the early
// trigger.
const orderTrigger = 4

// tokenOrder is the byte order in which the GEMM kernel k reads its FP8 tokens (the activation
// kernel's order argument): 0 as stored, 1 the wgmma GEMM's, 2 the decode GEMM's.
func tokenOrder(k GEMMKernel) int64 {
	switch k {
	case GEMMWgmma:
		return 1
	case GEMMDecode:
		return 2
	}
	return 0
}

// release frees the layer's device memory and stream.
func (l *Layer) release() {
	l.freeWorkspace()
	if l.weights != 0 {
		cu.MemFree(l.weights)
		l.weights = 0
	}
	destroyEvents(l.events[:])
	destroyEvents(l.pieceEvents[:])
	l.dropGraphs()
	l.graphOut.free()
	if l.chunkReady {
		l.destroyChunkEvents(len(l.chunkTiming))
		l.copyStream.Destroy()
	}
	l.stream.Destroy()
}

// Close frees the layer's device memory.
func (l *Layer) Close() error {
	if l.closed {
		return nil
	}
	unbind, err := l.dev.bind()
	if err != nil {
		return err
	}
	defer unbind()
	l.stream.Synchronize()
	l.release()
	l.closed = true
	return nil
}

// Graph is a forward captured into a CUDA graph: one launch replays every stage. It is tied to
// the workspace it was captured with; capture again after the layer ran a larger batch.
type Graph struct {
	l    *Layer
	exec *graphExec
	gen  uint64 // the workspace's (workspace.gen)
}

// Capture records a ForwardDevice of b into out as a graph (nothing runs until Launch).
func (l *Layer) Capture(out cu.DevicePtr, b DeviceBatch) (*Graph, error) {
	if b.M < 1 {
		return nil, &moe.ConfigError{Msg: "capturing an empty batch"}
	}
	unbind, err := l.begin(b.M, b.TopK)
	if err != nil {
		return nil, err
	}
	defer unbind()
	if err := beginCapture(l.stream); err != nil {
		return nil, err
	}
	lerr := l.launchAll(&b, out)
	exec, err := endCapture(l.stream)
	if lerr != nil {
		exec.destroy()
		return nil, lerr
	}
	if err != nil {
		return nil, err
	}
	return &Graph{l: l, exec: exec, gen: l.ws.gen}, nil
}

// replayable reports an error unless g was captured by l with its current workspace and is open
// (TimeGraphs, TraceGraphs and TraceBlocks replay only such graphs).
func (l *Layer) replayable(g *Graph) error {
	if g.l != l || g.exec == nil || g.gen != l.ws.gen {
		return fmt.Errorf("cudaops: a graph does not belong to this layer's current workspace")
	}
	return nil
}

// Launch replays the captured forward on the layer's stream.
func (g *Graph) Launch() error {
	if g.exec == nil || g.l.closed || g.l.ws.gen != g.gen {
		return fmt.Errorf("cudaops: graph is closed or its layer's workspace changed; capture again")
	}
	unbind, err := g.l.dev.bind()
	if err != nil {
		return err
	}
	defer unbind()
	return g.exec.launch(g.l.stream)
}

// Close destroys the graph.
func (g *Graph) Close() error {
	unbind, err := g.l.dev.bind()
	if err != nil {
		return err
	}
	defer unbind()
	err = g.exec.destroy()
	g.exec = nil
	return err
}
