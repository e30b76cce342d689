package cudaops

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/fp4moe/fp4moe/moe"
)

// TestParallelCopy copies sizes below, at and above the parallel threshold (odd sizes among
// them) into a longer destination and checks every byte, and that the bytes past the source's
// length are untouched.
func TestParallelCopy(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		name string
		n    int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"small", 4099},
		{"below the threshold", parallelCopyMin - 1},
		{"at the threshold", parallelCopyMin},
		{"odd, two pieces", 2*parallelCopyPiece + 17},
		{"large odd", 3*parallelCopyMin + 12345},
		{"many pieces", 9*parallelCopyMin + 3},
	} {
		src := make([]byte, c.n)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		dst := make([]byte, c.n+100)
		for i := range dst {
			dst[i] = 0xA5
		}
		parallelCopy(dst, src)
		if !bytes.Equal(dst[:c.n], src) {
			t.Fatalf("%s (%d bytes): copy differs from the source", c.name, c.n)
		}
		for i, v := range dst[c.n:] {
			if v != 0xA5 {
				t.Fatalf("%s: byte %d past the source changed to %#x", c.name, c.n+i, v)
			}
		}
	}
}

// TestOutPiece checks Forward's output pieces on named sizes: one piece up to 2·hostPiece, else
// at most outPieces pieces, each at least hostPiece bytes and a multiple of 4096 that cover n.
func TestOutPiece(t *testing.T) {
	for _, c := range []struct {
		name   string
		n      int
		pieces int
	}{
		{"one float", 4, 1},
		{"one token of GPT-OSS-120B", 4 * 2944, 1},
		{"two pieces' worth", 2 * hostPiece, 1},
		{"just above", 2*hostPiece + 4, 3},
		{"GPT-OSS-120B at 4096 tokens", 4 * 4096 * 2944, 6},
		{"DeepSeek-V3 at 16384 tokens", 4 * 16384 * 7168, 8},
	} {
		p := outPiece(c.n)
		pieces := (c.n + p - 1) / p
		if pieces != c.pieces {
			t.Errorf("%s (%d bytes): %d pieces of %d, want %d", c.name, c.n, pieces, p, c.pieces)
		}
		if pieces > 1 && (p < hostPiece || p%4096 != 0) {
			t.Errorf("%s: piece %d bytes, want a multiple of 4096 of at least %d", c.name, p, hostPiece)
		}
	}
}

// TestForwardChunks checks forwardChunks on named batches.
func TestForwardChunks(t *testing.T) {
	for _, c := range []struct {
		name string
		m, k int
		want int
	}{
		{"one token", 1, 2944, 1},
		{"GPT-OSS-120B, 4095 tokens", 4095, 2944, 1},
		{"GPT-OSS-120B, 4096 tokens", 4096, 2944, 2},
		{"GPT-OSS-120B, 8191 tokens", 8191, 2944, 2},
		{"Qwen3-30B-A3B, 4096 tokens", 4096, 2048, 2},
		{"narrow rows, 4096 tokens", 4096, 512, 1},
		{"GPT-OSS-120B, 8192 tokens", 8192, 2944, 2},
		{"GPT-OSS-120B, 16384 tokens", 16384, 2944, 4},
		{"DeepSeek-V3, 65536 tokens", 65536, 7168, 4},
		{"narrow rows", 16384, 256, 1},
	} {
		if got := forwardChunks(c.m, c.k); got != c.want {
			t.Errorf("%s: forwardChunks(%d, %d) = %d, want %d", c.name, c.m, c.k, got, c.want)
		}
	}
}

// TestInputLayout lays out batches of both input kinds at assorted sizes: every tensor at a
// multiple of 256 bytes, in order, the next one past its end, its source and length the
// batch's, and the whole within inputBytes.
func TestInputLayout(t *testing.T) {
	for _, c := range []struct {
		name       string
		m, topk, k int
		float      bool
	}{
		{"one token, FP8", 1, 4, 2944, false},
		{"one token, float", 1, 4, 2944, true},
		{"odd pairs, FP8", 3, 1, 256, false},
		{"odd pairs, float", 7, 3, 128, true},
		{"prefill, FP8", 4096, 8, 7168, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := c.m * c.topk
			b := &moe.Batch{M: c.m, TopK: c.topk, TopKIDs: make([]int32, p), TopKWeights: make([]float32, p)}
			type tensor struct {
				src unsafe.Pointer
				n   int
			}
			want := []tensor{{unsafe.Pointer(&b.TopKIDs[0]), 4 * p}, {unsafe.Pointer(&b.TopKWeights[0]), 4 * p}}
			if c.float {
				b.X = make([]float32, c.m*c.k)
				want = append(want, tensor{unsafe.Pointer(&b.X[0]), 4 * c.m * c.k})
			} else {
				b.A1q, b.A1qScale = make([]uint8, c.m*c.k), make([]float32, c.m*c.k/128)
				want = append(want, tensor{unsafe.Pointer(&b.A1q[0]), c.m * c.k}, tensor{unsafe.Pointer(&b.A1qScale[0]), 4 * c.m * c.k / 128})
			}
			segs, total := inputLayout(b)
			if len(segs) != len(want) {
				t.Fatalf("%d tensors, want %d", len(segs), len(want))
			}
			end := 0
			for i, sg := range segs {
				if sg.src != want[i].src || sg.n != want[i].n {
					t.Fatalf("tensor %d: %d bytes from %p, want %d from %p", i, sg.n, sg.src, want[i].n, want[i].src)
				}
				if sg.off%256 != 0 || sg.off < end || sg.off >= end+256 {
					t.Fatalf("tensor %d at %d, want the first multiple of 256 from %d", i, sg.off, end)
				}
				end = sg.off + sg.n
			}
			if total != end || total > inputBytes(c.m, p, c.k) || 4*c.m*c.k > inputBytes(c.m, p, c.k) {
				t.Fatalf("total %d (last end %d), inputBytes %d, output %d", total, end, inputBytes(c.m, p, c.k), 4*c.m*c.k)
			}
		})
	}
}

// BenchmarkParallelCopy times parallelCopy, and one goroutine's copy, of the host path's copy
// sizes: the output of 64 tokens of Qwen3-30B-A3B (512 KiB) and of GPT-OSS-120B (736 KiB), and
// 2, 8 and 32 MiB (BenchmarkParallelCopy/736KiB/parallel and so on; MB/s is the copy's rate).
// Each iteration copies the same pair of buffers, so the source is warm in the caches as far as
// it fits, as the host path's output is not (the device has just written it to pinned memory).
func BenchmarkParallelCopy(b *testing.B) {
	for _, n := range []int{512 << 10, 736 << 10, 2 << 20, 8 << 20, 32 << 20} {
		src, dst := make([]byte, n), make([]byte, n)
		for i := range src {
			src[i] = byte(i)
		}
		for _, how := range []string{"one", "parallel"} {
			b.Run(fmt.Sprintf("%dKiB/%s", n>>10, how), func(b *testing.B) {
				b.SetBytes(int64(n))
				for range b.N {
					if how == "one" {
						copy(dst, src)
					} else {
						parallelCopy(dst, src)
					}
				}
			})
		}
	}
}

// TestStageRange stages a float batch's layout in pieces that cross its tensors' bounds (and the
// padding between them) and checks every tensor's bytes at its offset and the padding untouched.
func TestStageRange(t *testing.T) {
	const m, topk, k = 3, 3, 128
	b := &moe.Batch{M: m, TopK: topk, TopKIDs: make([]int32, m*topk), TopKWeights: make([]float32, m*topk), X: make([]float32, m*k)}
	for i := range b.TopKIDs {
		b.TopKIDs[i], b.TopKWeights[i] = int32(i+1), float32(i)+0.5
	}
	for i := range b.X {
		b.X[i] = float32(i) - 7.25
	}
	segs, total := inputLayout(b)
	host := bytes.Repeat([]byte{0xAB}, total+64)
	for lo := 0; lo < total; lo += 100 { // 100-byte pieces: none on a tensor's bound
		stageRange(host, segs, lo, min(lo+100, total))
	}
	want := bytes.Repeat([]byte{0xAB}, total+64)
	for _, sg := range segs {
		copy(want[sg.off:], unsafe.Slice((*byte)(sg.src), sg.n))
	}
	if !bytes.Equal(host, want) {
		t.Fatal("the staged bytes differ from the tensors laid out at their offsets")
	}
}
