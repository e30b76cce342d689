//go:build cudaops

package cudaops

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
)

// countedCase generates the case of spec s (its M and TopK set here: a token a pair) whose routing
// gives local expert e counts[e] pairs, the pairs in an order shuffled by seed; it returns the
// case and its pair count.
func countedCase(counts []int, s *conformance.Spec, seed uint64) (*casefile.Case, int) {
	var ids []int32
	for e, n := range counts {
		for range n {
			ids = append(ids, int32(e))
		}
	}
	s.M, s.TopK = len(ids), 1
	c := conformance.Generate(*s)
	rand.New(rand.NewPCG(seed, seed+1)).Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	copy(c.Batch.TopKIDs, ids)
	return c, len(ids)
}

// TestRouteTileOrder checks the routing kernel's tile list: every segmentRows-row tile of each
// expert's rows once, as (expert, its first row), those of more than 8 real rows (routeShortTile)
// first and the others after, each group in order of expert and row, and a forward against
// native. The batches give each local expert a chosen count (short and long tiles, a full tile
// then a short one, an expert without pairs), in shuffled order, through the one-block routing,
// above scatterPairs the counting and scattering kernels around it, and up to fusedPermutePairs
// the small batches' routing (moe_route_small; at most segmentRows pairs, GEMM1 working out its
// tiles from the ids). The small routing's scan gives each of its 256 threads a run of
// ceil(E/256) experts: 520 experts take runs of 3, the last thread's run cut short, with pairs on
// experts at the runs' and the warps' edges.
func TestRouteTileOrder(t *testing.T) {
	many := func(at map[int]int) []int {
		c := make([]int, 520)
		for e, n := range at {
			c[e] = n
		}
		return c
	}
	for _, tc := range []struct {
		name, path string
		counts     []int
	}{
		{"one block", "one block", []int{3, 12, 0, 40, 41, 64, 8, 1}},
		{"counted chunks", "counted chunks", []int{3, 1200, 0, 1064, 41, 2000, 8, 1}},
		{"small", "small", []int{3, 12, 0, 9, 1, 20, 8}},
		{"small, predicted", "small, predicted", []int{12, 3, 0, 9, 1}},
		{"small, 520 experts", "small", many(map[int]int{0: 3, 95: 9, 96: 12, 255: 1, 256: 20, 518: 8, 519: 2})},
		{"small, 520 experts, predicted", "small, predicted", many(map[int]int{2: 12, 300: 3, 517: 9, 519: 1})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := conformance.Spec{K: 256, I: 128, E: len(tc.counts), Activation: moe.SiLU, Seed: 81}
			c, P := countedCase(tc.counts, &s, 7)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
			path := "one block"
			switch {
			case P <= segmentRows:
				path = "small, predicted"
			case P <= fusedPermutePairs:
				path = "small"
			case P > scatterPairs:
				path = "counted chunks"
			}
			if path != tc.path {
				t.Fatalf("%d pairs: routing path %q, want %q", P, path, tc.path)
			}
			got := forwardTwice(t, l, &c.Batch, s.K, "forward")
			_, bound := l.bounds(P)
			tiles := download[int32](t, l, l.ws.tileList, 2*bound)
			offsets := download[int32](t, l, l.ws.offsets, s.E+1)
			nt := download[int32](t, l, l.ws.ntiles, 1)[0]
			// The expected list: the long tiles in order of expert and row, then the short ones.
			var long, short []string
			for e, n := range tc.counts {
				for j := 0; j*segmentRows < n; j++ {
					r := min(segmentRows, n-j*segmentRows)
					tile := listEntry(e, r, int(offsets[e])+j*segmentRows)
					if r > routeShortTile {
						long = append(long, tile)
					} else {
						short = append(short, tile)
					}
				}
			}
			checkList(t, "tile list", tiles, nt, long, short, bound)
			t.Logf("%d pairs: %d long tiles, then %d short", P, len(long), len(short))
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
		})
	}
}

// listEntry formats a routing list's entry as the test expects it: expert, real rows, first row
// (the row field with the heavy list's flags).
func listEntry(e, rows, row int) string { return fmt.Sprintf("(%d, %d rows, %d)", e, rows, row) }

// entryOf formats entry k of a routing list read back from the device, (expert | rows <<
// decRowsShift, first row) each, as listEntry does.
func entryOf(list []int32, k int) string {
	w := int(list[2*k])
	return listEntry(w&(1<<decRowsShift-1), w>>decRowsShift, int(list[2*k+1]))
}

// checkList compares a routing list read back from the device (n entries in list) with the long
// tiles' entries followed by the short tiles', and n with the list's bound (its GEMM's grid).
func checkList(t *testing.T, what string, list []int32, n int32, long, short []string, bound int) {
	t.Helper()
	want := append(append([]string(nil), long...), short...)
	if int(n) != len(want) || len(want) > bound {
		t.Fatalf("%s: %d entries, want %d (bound %d)", what, n, len(want), bound)
	}
	for k, w := range want {
		if g := entryOf(list, k); g != w {
			t.Fatalf("%s: entry %d is %s, want %s (long tiles' entries %v, then short tiles %v)", what, k, g, w, long, short)
		}
	}
}

// heavyCounts returns the pairs of 64 experts of a skewed decode batch: a full tile and one of
// 18, a full tile and one of 8, tiles of 20, 17, 12 and 9 rows, then experts of 1-3 rows: 255
// pairs, at most wide16Rows (4) an expert on average, so that every GEMM takes the 8-token
// kernels at split 1 under either pair of thresholds (passRows).
func heavyCounts() []int {
	c := []int{50, 40, 20, 17, 12, 9}
	for e := len(c); e < 64; e++ {
		c = append(c, []int{2, 1, 3, 2, 1, 2}[e%6])
	}
	return c
}

// TestDecodeChunks runs decode batches whose routing gives a few experts tiles of more than 8 rows
// (a full tile and one of 18, tiles of 20, 17, 12 and 9 rows) and the others few, on the
// kernels of 8 tokens a pass (the split ones, and at split 1): it reads back the routing
// kernel's list of 8-row chunks (each long tile's chunks in order of expert and row, then the
// short tiles, as the tile list orders them),
// runs the forward against native and twice (bitwise the same), and against the tile list
// (noChunks), bitwise: the chunks change which block computes a row, not its sums. Through the
// one-block routing, and the small batches' (moe_route_small), with GEMM1 on the list and with
// GEMM1 working out its tiles from the ids (then GEMM2 alone on the chunks).
func TestDecodeChunks(t *testing.T) {
	// The split-1 kernels: 64 experts, about 4 rows each on average (heavyCounts), 8 tokens a
	// pass under either pair of thresholds (passRows).
	c1 := heavyCounts()
	for _, tc := range []struct {
		name   string
		counts []int
		E      int  // local experts: counts, then experts of no pair
		gemm1  bool // GEMM1 takes the chunks
	}{
		{"one block", []int{50, 3, 20, 9, 1, 0, 17, 8, 12, 2, 5, 1, 0, 4, 6, 2}, 40, true},
		{"small", []int{3, 20, 0, 9, 1, 12, 2, 5}, 16, true},
		{"small, predicted", []int{17, 3, 0, 9, 1, 2}, 16, false},
		{"split 1", c1, 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := conformance.Spec{K: 512, I: 256, E: tc.E, Activation: moe.SwiGLUOAI, Bias: true, Seed: 87}
			c, P := countedCase(tc.counts, &s, 11)
			l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
			_, tiles := l.bounds(P)
			split1, split2, _, _ := l.decSplits(tiles, P)
			if l.chunked(1, P, P, split1) != tc.gemm1 || !l.chunked(2, P, P, split2) {
				t.Fatalf("%d pairs over %d experts (splits %d, %d): GEMM1 on the chunks %v, GEMM2 %v; want %v and true",
					P, tc.E, split1, split2, l.chunked(1, P, P, split1), l.chunked(2, P, P, split2), tc.gemm1)
			}
			if l.chunked(2, routeShortTile, P, split2) {
				t.Errorf("a batch of %d tokens on the chunks: its tiles are longer than 8 rows only where a token repeats an expert", routeShortTile)
			}
			got := forwardTwice(t, l, &c.Batch, s.K, "chunks")
			offsets := download[int32](t, l, l.ws.offsets, s.E+1)
			nt := download[int32](t, l, l.ws.ntiles, 2)
			list := download[int32](t, l, l.ws.chunkList, 2*l.chunkTiles(P))
			var long, short []string
			for e, n := range tc.counts {
				rest := n % segmentRows
				longRows := n
				if rest > 0 && rest <= routeShortTile {
					longRows = n - rest
					short = append(short, listEntry(e, rest, int(offsets[e])+longRows))
				}
				for r := 0; r < longRows; r += 8 {
					long = append(long, listEntry(e, min(8, longRows-r), int(offsets[e])+r))
				}
			}
			checkList(t, "chunk list", list, nt[1], long, short, l.chunkTiles(P))
			nearNative(t, got, &c.Weights, c.Config, &c.Batch)
			l.noChunks = true
			sameBits(t, "chunks against tiles", got, forward(t, l, &c.Batch, s.K))
			t.Logf("%d pairs: %d chunks of long tiles, then %d short tiles; splits %d, %d", P, len(long), len(short), split1, split2)
		})
	}
}

// TestDecodeHeavyWide runs a decode batch on the 64-row kernel (wideRows lowered to the test's
// GEMMs) whose routing gives a few experts tiles of more than 16 rows (a full tile and one of 18,
// a full tile and one of 8, tiles of 20 and 17) and tiles of 12 and 9 rows: it reads back the
// routing kernel's heavy list (two entries a tile of more than 8 rows at twice its index in the
// tile list, the halves of a tile of more than 16 rows flagged, the others' 8-row chunks; then
// the short tiles), runs the forward on moe_gemm_dec1wh against native and twice (bitwise the
// same), and against moe_gemm_dec1w over the chunk list (noHeavy), bitwise: the 32-token pass
// adds each row's terms in the order the 8-token pass does.
func TestDecodeHeavyWide(t *testing.T) {
	counts := heavyCounts()
	s := conformance.Spec{K: 512, I: 256, E: len(counts), Activation: moe.SwiGLUOAI, Bias: true, Seed: 89}
	c, P := countedCase(counts, &s, 13)
	l := kernelLayer(t, &c.Weights, c.Config, GEMMDecode)
	l.wideRows = 256
	_, tiles := l.bounds(P)
	split1, split2, _, _ := l.decSplits(tiles, P)
	if !l.heavyWide(P, P, split1, int64(2*s.I)) || !l.heavyWide(P, P, split2, int64(s.K)) {
		t.Fatalf("%d pairs over %d experts (splits %d, %d): not both GEMMs on the heavy list", P, s.E, split1, split2)
	}
	if l.heavyWide(16, P, split1, int64(2*s.I)) {
		t.Error("a batch of 16 tokens on the heavy list: its tiles have more than 16 rows only where a token repeats an expert")
	}
	got := forwardTwice(t, l, &c.Batch, s.K, "heavy list")
	offsets := download[int32](t, l, l.ws.offsets, s.E+1)
	nt := download[int32](t, l, l.ws.ntiles, 3)
	list := download[int32](t, l, l.ws.heavyList, 2*l.heavyTiles(P))
	var long, short []string
	for e, n := range counts {
		for j := 0; j*segmentRows < n; j++ {
			r0, r := int(offsets[e])+j*segmentRows, n-j*segmentRows
			switch {
			case r > 16:
				r = min(r, segmentRows)
				long = append(long, listEntry(e, r, r0|decHeavyRow), listEntry(e, r, r0|decHeavyRow|1<<decHalfShift))
			case r > routeShortTile:
				long = append(long, listEntry(e, 8, r0), listEntry(e, r-8, r0+8))
			default:
				short = append(short, listEntry(e, r, r0))
			}
		}
	}
	checkList(t, "heavy list", list, nt[2], long, short, l.heavyTiles(P))
	nearNative(t, got, &c.Weights, c.Config, &c.Batch)
	l.noHeavy = true
	sameBits(t, "heavy list against chunks", got, forward(t, l, &c.Batch, s.K))
	t.Logf("%d pairs: %d entries of long tiles, then %d short tiles; splits %d, %d", P, len(long), len(short), split1, split2)
}
