package cudaops

import (
	"math/rand/v2"
	"testing"
)

// listSizes counts the entries of the routing kernels' lists for the given rows per local
// expert, by their rules (route.cu: list_expert, and moe_route's heavy list): tiles of 32 rows,
// the last one short when it holds 1..8 rows; the chunk list with each long tile as its 8-row
// chunks; the heavy list with two entries a long tile. rows is the permuted layout's.
func listSizes(counts []int) (rows, tiles, chunks, heavy int) {
	for _, c := range counts {
		n := (c + segmentRows - 1) / segmentRows
		short := 0
		if r := c % segmentRows; r > 0 && r <= routeShortTile {
			short = 1
		}
		long := n - short
		rows += n * segmentRows
		tiles += n
		chunks += (min(c, long*segmentRows)+7)/8 + short
		heavy += 2*long + short
	}
	return rows, tiles, chunks, heavy
}

// TestListBounds checks that the bounds sizing the workspace and the decode GEMMs' grids hold
// every list the routing can write: the counts of named batches (one hot expert, a repeated
// expert, many experts of one row, full tiles, ones of 9 and 17 rows) and of random ones, Zipf-
// skewed or uniform, up to 65535 pairs (the chunk and heavy lists' limit).
func TestListBounds(t *testing.T) {
	check := func(name string, counts []int) {
		t.Helper()
		p := 0
		for _, c := range counts {
			p += c
		}
		e := len(counts)
		rows, tiles, chunks, heavy := listSizes(counts)
		rb, tb := tileBound(p, e)
		if rows > rb || tiles > tb || chunks > chunkBound(p, e) || heavy > heavyBound(p, e) {
			t.Fatalf("%s (%d pairs, %d experts): rows %d (bound %d), tiles %d (%d), chunks %d (%d), heavy %d (%d)",
				name, p, e, rows, rb, tiles, tb, chunks, chunkBound(p, e), heavy, heavyBound(p, e))
		}
		if heavy > chunks || heavy > 2*tiles {
			t.Fatalf("%s: %d heavy entries against %d chunks and %d tiles", name, heavy, chunks, tiles)
		}
	}
	for _, tc := range []struct {
		name   string
		counts []int
	}{
		{"one pair", []int{1}},
		{"one hot expert", []int{4096, 0, 0, 1}},
		{"full tiles", []int{32, 64, 96}},
		{"9 and 17 rows", []int{9, 17, 41, 49}},
		{"short tiles only", []int{8, 1, 40, 72}},
		{"many experts of one row", make1(256)},
	} {
		check(tc.name, tc.counts)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		e := 1 + rng.IntN(512)
		p := 1 + rng.IntN(65535)
		check("random", randomCounts(rng, p, e))
	}
}

// randomCounts routes p pairs over e experts at random, uniformly or, half the time, skewed (a
// few experts take most pairs), and returns each expert's count.
func randomCounts(rng *rand.Rand, p, e int) []int {
	counts := make([]int, e)
	skew := rng.IntN(2) == 0
	for j := 0; j < p; j++ {
		x := rng.IntN(e)
		if skew {
			x = int(float64(e) * rng.Float64() * rng.Float64() * rng.Float64())
		}
		counts[x]++
	}
	return counts
}

// make1 returns n counts of one pair each.
func make1(n int) []int {
	c := make([]int, n)
	for i := range c {
		c[i] = 1
	}
	return c
}

// wgTiles counts the wgmma path's tiles of the given rows per local expert by moe_route's rule
// (each expert's rows in ceil(count/cap) tiles of equal size rounded up to 8 rows, the last
// smaller), and fails the test unless every tile holds at most cap rows and the tiles cover the
// rows exactly.
func wgTiles(t *testing.T, counts []int, cap int) int {
	t.Helper()
	n := 0
	for _, c := range counts {
		wn := (c + cap - 1) / cap
		if wn == 0 {
			continue
		}
		wsize := ((c+wn-1)/wn + 7) / 8 * 8
		if wsize > cap || (wn-1)*wsize >= c {
			t.Fatalf("%d rows at cap %d: %d tiles of %d rows", c, cap, wn, wsize)
		}
		n += wn
	}
	return n
}

// wgRows lists the (small-tile, middle) kernels' row limits the bounds are checked under: both
// off, the defaults, each alone, the middle one below the small one, and both everywhere.
var wgRows = [][2]int{{0, 0}, {wg4sMaxRows, wg4mMaxRows}, {wg4sMaxRows, 0}, {0, wg4mMaxRows}, {40, 16}, {1 << 20, 1 << 20}, {0, 1 << 20}}

// TestWgTileBounds checks the bounds of the wgmma path's tile list: random batches, uniform or
// Zipf-skewed, under the small-tile kernel's cap (32 tokens), the middle kernel's (64) and the
// 256-row kernel's (152), fit wgTileBound; and wgTileBoundUpTo bounds wgTileBound over every
// smaller batch, which needs it: at 24 rows an expert on the small-tile kernel a batch lists more
// tiles than one just past it, and at 44 on the middle kernel too.
func TestWgTileBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 2000; i++ {
		e := 1 + rng.IntN(256)
		p := 1 + rng.IntN(64*e)
		counts := randomCounts(rng, p, e)
		for _, r := range wgRows {
			cap := wgTileCap(p, e, r[0], r[1])
			if n, b := wgTiles(t, counts, cap), wgTileBound(p, e, r[0], r[1]); n > b {
				t.Fatalf("%d pairs over %d experts, kernel rows %v: %d tiles of at most %d, bound %d", p, e, r, n, cap, b)
			}
		}
	}
	for _, e := range []int{1, 8, 32, 128, 256} {
		for _, r := range wgRows {
			most := 0
			for p := 1; p <= 64*e; p++ {
				most = max(most, wgTileBound(p, e, r[0], r[1]))
				if up := wgTileBoundUpTo(p, e, r[0], r[1]); up < most {
					t.Fatalf("%d experts, kernel rows %v: wgTileBoundUpTo(%d) = %d, below %d of a batch up to it", e, r, p, up, most)
				}
			}
		}
	}
	if a, b := wgTileBound(24*8, 8, 24, 0), wgTileBound(24*8+1, 8, 24, 0); a <= b {
		t.Fatalf("at 24 rows an expert %d tiles, just past it %d: the case the workspace's bound is for is gone", a, b)
	}
	if a, b := wgTileBound(44*8, 8, 24, 44), wgTileBound(44*8+1, 8, 24, 44); a <= b {
		t.Fatalf("at 44 rows an expert %d tiles, just past it %d: the middle kernel's case is gone", a, b)
	}
	for _, c := range []struct{ p, e, want int }{{24 * 8, 8, wg4sTokens}, {24*8 + 1, 8, wg4mTokens}, {44 * 8, 8, wg4mTokens}, {44*8 + 1, 8, wgfTokens}} {
		if got := wgTileCap(c.p, c.e, 24, 44); got != c.want {
			t.Fatalf("wgTileCap(%d, %d) = %d, want %d", c.p, c.e, got, c.want)
		}
	}
}
