package benchdata

import (
	"testing"

	"github.com/fp4moe/fp4moe/moe"
)

func TestLookup(t *testing.T) {
	s, ok := Lookup("deepseekv3")
	if !ok || s.K != 7168 || s.I != 2048 || s.E != 256 || s.TopK != 8 {
		t.Fatalf("Lookup(deepseekv3) = %+v, %v", s, ok)
	}
	if _, ok := Lookup("nope"); ok {
		t.Fatal("Lookup(nope) found a shape")
	}
	for _, s := range Shapes {
		if s.K%128 != 0 || s.I%128 != 0 {
			t.Errorf("%s: K = %d, I = %d, want multiples of 128", s.Name, s.K, s.I)
		}
	}
}

func TestShapeSizes(t *testing.T) {
	s, _ := Lookup("gptoss120b")
	// 3·K·I values: 17/32 of a byte each (codes and scales).
	if got, want := s.ExpertBytes(), 3*2944.0*2944*17/32; got != want {
		t.Errorf("ExpertBytes = %v, want %v", got, want)
	}
	if got, want := s.FLOPs(2), 2*2*4*3*2944.0*2944; got != want {
		t.Errorf("FLOPs(2) = %v, want %v", got, want)
	}
	for _, c := range []struct{ m, want int }{{1, 8}, {127, 8}, {128, 2}, {4096, 2}} {
		if got := s.Rotations(c.m); got != c.want {
			t.Errorf("Rotations(%d) = %d, want %d", c.m, got, c.want)
		}
	}
}

func TestWeights(t *testing.T) {
	s := Shape{"small", 256, 128, 4, 2}
	w := Weights(s, 3)
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, b := range append(append([]uint8(nil), w.W13Scale...), w.W2Scale...) {
		if b < 118 || b > 125 {
			t.Fatalf("scale byte %d outside 118..125", b)
		}
	}
	if again := Weights(s, 3); string(again.W13) != string(w.W13) || string(again.W2Scale) != string(w.W2Scale) {
		t.Error("the same seed gave other weights")
	}
	if other := Weights(s, 4); string(other.W13) == string(w.W13) {
		t.Error("another seed gave the same weights")
	}
}

func TestBatch(t *testing.T) {
	s := Shape{"small", 256, 128, 16, 4}
	w := Weights(s, 1)
	cfg := moe.GPTOSSConfig()
	for _, c := range []struct{ routing, input string }{{"uniform", "fp8"}, {"zipf", "fp8"}, {"uniform", "float"}} {
		b, touched, err := Batch(s, c.routing, c.input, 32, 5)
		if err != nil {
			t.Fatalf("%s %s: %v", c.routing, c.input, err)
		}
		if err := b.Validate(w, &cfg); err != nil {
			t.Fatalf("%s %s: %v", c.routing, c.input, err)
		}
		seen := map[int32]bool{}
		for tok := range b.M {
			row := map[int32]bool{}
			for k := range b.TopK {
				id := b.TopKIDs[tok*b.TopK+k]
				if row[id] {
					t.Fatalf("%s: token %d routed twice to expert %d", c.routing, tok, id)
				}
				row[id], seen[id] = true, true
				if b.TopKWeights[tok*b.TopK+k] != 0.25 {
					t.Fatalf("%s: router weight %v, want 0.25", c.routing, b.TopKWeights[tok*b.TopK+k])
				}
			}
		}
		if touched != len(seen) {
			t.Errorf("%s: touched = %d, the ids hold %d experts", c.routing, touched, len(seen))
		}
		if c.input == "float" {
			if b.X == nil || b.A1q != nil {
				t.Fatalf("float input: X %d values, A1q %d", len(b.X), len(b.A1q))
			}
			continue
		}
		for i, q := range b.A1q {
			if q&0x7F == 0x7F {
				t.Fatalf("A1q[%d] = %#x, a NaN code", i, q)
			}
		}
		again, _, _ := Batch(s, c.routing, c.input, 32, 5)
		if string(again.A1q) != string(b.A1q) {
			t.Errorf("%s: the same seed gave other tokens", c.routing)
		}
	}
	// Zipf routing concentrates on the popular experts: with 2048 tokens, the most used expert
	// gets well over the uniform share.
	b, _, _ := Batch(s, "zipf", "fp8", 2048, 9)
	count := map[int32]int{}
	top := 0
	for _, id := range b.TopKIDs {
		count[id]++
		top = max(top, count[id])
	}
	if uniform := 2048 * 4 / 16; float64(top) < 1.5*float64(uniform) {
		t.Errorf("zipf: the most used expert has %d rows, uniform would give %d", top, uniform)
	}
	// A milder exponent concentrates less: the top expert's share between uniform and zipf's.
	mild, _, err := Batch(s, "zipf:0.4", "fp8", 2048, 9)
	if err != nil {
		t.Fatal(err)
	}
	mcount := map[int32]int{}
	mtop := 0
	for _, id := range mild.TopKIDs {
		mcount[id]++
		mtop = max(mtop, mcount[id])
	}
	if uniform := 2048 * 4 / 16; mtop >= top || float64(mtop) < 1.1*float64(uniform) {
		t.Errorf("zipf:0.4: the most used expert has %d rows, want between %d (uniform) and %d (zipf)", mtop, uniform, top)
	}
	for _, c := range []struct{ routing, input string }{{"round-robin", "fp8"}, {"uniform", "bf16"}, {"zipf:0", "fp8"}, {"zipf:-1", "fp8"}, {"zipf:x", "fp8"}, {"zipf:9", "fp8"}, {"zipf:NaN", "fp8"}} {
		if _, _, err := Batch(s, c.routing, c.input, 1, 1); err == nil {
			t.Errorf("Batch(%s, %s) gave no error", c.routing, c.input)
		}
	}
}

// TestCheckNonzero checks CheckNonzero on named outputs: at least half nonzero passes.
func TestCheckNonzero(t *testing.T) {
	for _, c := range []struct {
		name string
		out  []float32
		ok   bool
	}{
		{"all nonzero", []float32{1, -2, 3, 4}, true},
		{"half nonzero", []float32{1, 0, 3, 0}, true},
		{"under half", []float32{0, 0, 3, 0}, false},
		{"all zero", []float32{0, 0, 0, 0}, false},
	} {
		if err := CheckNonzero(c.out); (err == nil) != c.ok {
			t.Errorf("%s: CheckNonzero = %v, want ok %v", c.name, err, c.ok)
		}
	}
}
