package native

import (
	"math"
	"slices"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
)

func TestPermute(t *testing.T) {
	cases := []struct {
		name      string
		ids       []int32
		topk, e   int
		blockM    int
		expertMap []int32
		counts    []int
		offsets   []int
		invPerm   []int32
		expertIDs []int32
	}{
		{
			name: "two experts", ids: []int32{1, 0, 0, 1, 1, 0}, topk: 2, e: 2, blockM: 1,
			counts: []int{3, 3}, offsets: []int{0, 3, 6},
			invPerm:   []int32{3, 0, 1, 4, 5, 2},
			expertIDs: []int32{0, 0, 0, 1, 1, 1},
		},
		{
			name: "aligned to 4 with an empty expert", ids: []int32{2, 0, 2, 2, 0, 2}, topk: 3, e: 3, blockM: 4,
			counts: []int{2, 0, 4}, offsets: []int{0, 4, 4, 8},
			invPerm:   []int32{4, 0, 5, 6, 1, 7},
			expertIDs: []int32{0, 0, -1, -1, 2, 2, 2, 2},
		},
		{
			name: "-1 ids and duplicates", ids: []int32{-1, 1, 1, 1, -1, -1}, topk: 3, e: 2, blockM: 2,
			counts: []int{0, 3}, offsets: []int{0, 0, 4},
			invPerm:   []int32{-1, 0, 1, 2, -1, -1},
			expertIDs: []int32{1, 1, 1, -1},
		},
		{
			name: "expert map", ids: []int32{4, 0, 3, 2}, topk: 2, e: 2, blockM: 1,
			expertMap: []int32{1, -1, -1, 0, -1},
			counts:    []int{1, 1}, offsets: []int{0, 1, 2},
			invPerm:   []int32{-1, 1, 0, -1},
			expertIDs: []int32{0, 1},
		},
		{
			name: "no local expert at all", ids: []int32{-1, -1}, topk: 1, e: 3, blockM: 128,
			counts: []int{0, 0, 0}, offsets: []int{0, 0, 0, 0},
			invPerm: []int32{-1, -1}, expertIDs: []int32{},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Permutation
			cfg := moe.Config{ExpertMap: c.expertMap}
			// Permute twice to check that reused slices are fully rewritten.
			p.Permute([]int32{0, 0, 0, 0, 0, 0, 0, 0}, 8/c.topk, c.topk, &moe.Config{}, c.e, 3)
			p.Permute(c.ids, len(c.ids)/c.topk, c.topk, &cfg, c.e, c.blockM)
			if !slices.Equal(p.Counts, c.counts) || !slices.Equal(p.Offsets, c.offsets) || !slices.Equal(p.InvPerm, c.invPerm) || !slices.Equal(p.ExpertIDs, c.expertIDs) {
				t.Fatalf("counts %v offsets %v invPerm %v expertIDs %v\nwant   %v         %v         %v         %v",
					p.Counts, p.Offsets, p.InvPerm, p.ExpertIDs, c.counts, c.offsets, c.invPerm, c.expertIDs)
			}
			if p.MSum()%c.blockM != 0 {
				t.Fatalf("M_sum %d is not a multiple of %d", p.MSum(), c.blockM)
			}
			// Pairs is the inverse of InvPerm, and rows inside a segment ascend in (t, k).
			for i, r := range p.InvPerm {
				if r >= 0 && p.Pairs[r] != int32(i) {
					t.Fatalf("Pairs[%d] = %d, want %d", r, p.Pairs[r], i)
				}
			}
			for r := 1; r < p.MSum(); r++ {
				if p.ExpertIDs[r] >= 0 && p.ExpertIDs[r] == p.ExpertIDs[r-1] && p.Pairs[r] <= p.Pairs[r-1] {
					t.Fatalf("rows %d and %d of expert %d are not in ascending (t, k) order", r-1, r, p.ExpertIDs[r])
				}
			}
		})
	}
}

func TestActivate(t *testing.T) {
	sig := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	// h = [g0, g1 | u0, u1]
	h := []float32{2, 9, 3, -8}
	cases := []struct {
		name string
		cfg  moe.Config
		bias []float32
		want []float64
	}{
		{"silu", moe.Config{}, nil, []float64{2 * sig(2) * 3, 9 * sig(9) * -8}},
		{"silu clamp 5", moe.Config{Clamp: true, ClampLimit: 5}, nil, []float64{2 * sig(2) * 3, 5 * sig(5) * -5}},
		{"swiglustep", moe.Config{Activation: moe.SwiGLUStep}, nil, []float64{2 * sig(2) * 3, 7 * -7}},
		{"swigluoai", moe.GPTOSSConfig(), nil, []float64{(3 + 1) * 2 * sig(1.702*2), (-7 + 1) * 7 * sig(1.702*7)}},
		{"swigluoai no clamp means 7", moe.Config{Activation: moe.SwiGLUOAI, Alpha: 1.702, Beta: 1}, nil,
			[]float64{(3 + 1) * 2 * sig(1.702*2), (-7 + 1) * 7 * sig(1.702*7)}},
		{"bias before activation", moe.Config{}, []float32{1, 0, -1, 0}, []float64{3 * sig(3) * 2, 9 * sig(9) * -8}},
	}
	for _, c := range cases {
		y := make([]float32, 2)
		Activate(y, h, c.bias, &c.cfg)
		for i := range y {
			if math.Abs(float64(y[i])-c.want[i]) > 1e-6*math.Abs(c.want[i]) {
				t.Errorf("%s: y = %v, want %v", c.name, y, c.want)
			}
		}
	}
}

// TestSteadyStateAllocs checks that a reused layer allocates nothing per Forward, on the FP8
// path and the float32 path.
func TestSteadyStateAllocs(t *testing.T) {
	w, b := benchLayer(64, 512, 256, 8, 2)
	l, err := NewLayer(w, moe.Config{}, Options{Threads: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out := make([]float32, b.M*w.K)
	fb := *b
	fb.X = make([]float32, b.M*w.K)
	for i := range fb.X {
		fb.X[i] = float32(i%7) - 3
	}
	for _, batch := range []*moe.Batch{b, &fb} {
		if err := l.Forward(out, batch); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(20, func() { l.Forward(out, batch) }); n != 0 {
			t.Fatalf("%v allocations per Forward, want 0", n)
		}
	}
}

// TestThreadsAgree checks that thread count and alignment give bitwise-equal output, and that
// chunking (which changes how many rows each expert gets at once, and so its kernel) stays
// within rounding of the unchunked result.
func TestThreadsAgree(t *testing.T) {
	w, b := benchLayer(50, 256, 256, 6, 3)
	var first []float32
	for _, o := range []Options{{Threads: 1}, {Threads: 7}, {Threads: 2, BlockM: 16}, {Threads: 3, ChunkRows: 5}} {
		l, err := NewLayer(w, moe.Config{Activation: moe.SwiGLUStep}, o)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]float32, b.M*w.K)
		if err := l.Forward(out, b); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if first == nil {
			first = out
			continue
		}
		if o.ChunkRows != 0 {
			var num, den float64
			for i := range out {
				d := float64(out[i] - first[i])
				num, den = num+d*d, den+float64(first[i])*float64(first[i])
			}
			if math.Sqrt(num/den) > 1e-5 {
				t.Fatalf("options %+v: rel L2 %.3e from the unchunked run", o, math.Sqrt(num/den))
			}
			continue
		}
		for i := range out {
			if math.Float32bits(out[i]) != math.Float32bits(first[i]) {
				t.Fatalf("options %+v: output[%d] = %v, first run %v", o, i, out[i], first[i])
			}
		}
	}
}
