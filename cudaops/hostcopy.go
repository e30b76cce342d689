package cudaops

import (
	"runtime"
	"sync"
	"unsafe"

	"github.com/fp4moe/fp4moe/moe"
)

// The host path's copies between Go slices and pinned staging memory: a copy of at least
// parallelCopyMin bytes is split into pieces of at least parallelCopyPiece bytes over up to
// parallelCopyWorkers goroutines (one core's copy moves about 10 GB/s; the batch in and the
// output out of a prefill-sized forward are tens to hundreds of MB).
const (
	parallelCopyMin     = 1 << 20
	parallelCopyPiece   = 256 << 10
	parallelCopyWorkers = 8
)

// parallelCopy copies src into dst (len(dst) >= len(src)), in parallel when src is large, and
// returns when every byte is copied.
func parallelCopy(dst, src []byte) {
	n := len(src)
	workers := min(parallelCopyWorkers, runtime.GOMAXPROCS(0), n/parallelCopyPiece)
	if n < parallelCopyMin || workers < 2 {
		copy(dst, src)
		return
	}
	// Equal pieces, each a multiple of 64 bytes (a cache line) but the last.
	piece := (n/workers + 63) &^ 63
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += piece {
		hi := min(lo+piece, n)
		wg.Go(func() { copy(dst[lo:hi], src[lo:hi]) })
	}
	wg.Wait()
}

// Forward's pieces: its inputs go to the device hostPiece bytes at a time, and its output comes
// back in at most outPieces pieces of at least hostPiece bytes (one piece below that).
const (
	hostPiece = 8 << 20
	outPieces = 8
)

// outPiece returns the size of Forward's output pieces for an n-byte output: n itself up to
// 2·hostPiece, else n split into outPieces (at most) pieces of at least hostPiece bytes, each a
// multiple of 4096 bytes but the last.
func outPiece(n int) int {
	if n <= 2*hostPiece {
		return max(n, 1)
	}
	p := max(hostPiece, (n+outPieces-1)/outPieces)
	return (p + 4095) &^ 4095
}

// A host-path Forward of at least chunkTokens tokens runs in two to maxChunks chunks of at least
// chunkTokens/2 tokens, so that a chunk's output travels back to the host while the next chunk's
// stages run (chunkTokens: the batches from which the layer's GEMMs run near their prefill rate).
const (
	chunkTokens = 4096
	maxChunks   = 4
)

// forwardChunks returns how many chunks Forward runs a batch of m tokens with k output columns
// in: m/chunkTokens, at most maxChunks, or two from chunkTokens to 2·chunkTokens tokens, when
// each chunk's output is at least 2·hostPiece bytes; else 1.
func forwardChunks(m, k int) int {
	n := min(maxChunks, m/chunkTokens)
	if n == 1 {
		n = 2
	}
	if n < 2 || 4*(m/n)*k < 2*hostPiece {
		return 1
	}
	return n
}

// inputSeg is one input tensor of a host batch in inputLayout: n bytes from src, at off.
type inputSeg struct {
	src    unsafe.Pointer
	off, n int
}

// inputLayout lays a host batch's tensors out one after another, each at a multiple of 256
// bytes: TopKIDs, TopKWeights, then X or A1q and A1qScale; total is where the last one ends.
// It fits in inputBytes(b.M, b.M·b.TopK, K) bytes.
func inputLayout(b *moe.Batch) (segs []inputSeg, total int) {
	add := func(src unsafe.Pointer, n int) {
		off := (total + 255) &^ 255
		segs = append(segs, inputSeg{src, off, n})
		total = off + n
	}
	add(unsafe.Pointer(&b.TopKIDs[0]), 4*len(b.TopKIDs))
	add(unsafe.Pointer(&b.TopKWeights[0]), 4*len(b.TopKWeights))
	if b.X != nil {
		add(unsafe.Pointer(&b.X[0]), 4*len(b.X))
	} else {
		add(unsafe.Pointer(&b.A1q[0]), len(b.A1q))
		add(unsafe.Pointer(&b.A1qScale[0]), 4*len(b.A1qScale))
	}
	return segs, total
}

// stageRange copies bytes [lo, hi) of inputLayout's layout (segs) from the batch's tensors into
// host, the pinned staging memory; the bytes between the tensors are left as they are.
func stageRange(host []byte, segs []inputSeg, lo, hi int) {
	for _, sg := range segs {
		if a, z := max(lo, sg.off), min(hi, sg.off+sg.n); a < z {
			parallelCopy(host[a:z], unsafe.Slice((*byte)(unsafe.Add(sg.src, a-sg.off)), z-a))
		}
	}
}

// inputBytes bounds inputLayout's total for m tokens of p routed pairs and K columns (float32
// input, the larger kind, and the alignment of three tensors); it is also at least the output's
// 4·m·K bytes.
func inputBytes(m, p, K int) int { return 8*p + 4*m*K + 3*256 }

// registerOutMin: an output of registerOutMin to 2·hostPiece bytes outside the graph and the
// chunks is copied straight into the caller's slice, page-locked for the call (cuMemHostRegister,
// 62-65 µs a MB to lock and release on an H200's host), instead of through the pinned memory,
// whose host copy reads what the device has just written at 9-14 GB/s there: at 512 tokens
// 5-20 % less host time (GPT-OSS-120B, DeepSeek-V3, Qwen3-30B-A3B), at 64 tokens the locking
// alone costs more than the copy it saves (docs/perf.md).
const registerOutMin = 4 << 20

// A host-path Forward of at most hostGraphTokens tokens without stage timing replays a captured
// graph of its H2D copy and stages, the reduce writing the output over the host link
// (Layer.forwardGraph); a layer keeps at most maxHostGraphs of them (all dropped when full). On
// an H200 the graph took 7-25 % off the host path at one token and nothing at 8 (GPT-OSS-120B,
// DeepSeek-V3, Qwen3-30B-A3B; at 64 tokens 0-5 % more, where the launches already hide behind the
// GPU's work), and its output written by the reduce over the host link, without a D2H copy node,
// 6.5-8.5 µs more at one and two tokens (docs/perf.md).
const (
	hostGraphTokens = 8
	maxHostGraphs   = 32
)
