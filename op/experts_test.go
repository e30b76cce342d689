package op

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

func testLayer(t testing.TB) *Layer {
	c := conformance.Generate(conformance.Spec{M: 1, K: 256, I: 128, E: 4, TopK: 2, Seed: 1})
	l, err := NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// FuzzExpertsOp runs the experts op's Do on values of fuzzed shapes and contents: it must
// return an error or an (M, K) output, never panic, and never run on an invalid id.
func FuzzExpertsOp(f *testing.F) {
	l := testLayer(f)
	defer l.Close()
	f.Add(uint8(3), uint8(2), uint16(256), uint8(2), []byte{0, 1, 2, 3, 3, 0})
	f.Add(uint8(1), uint8(1), uint16(256), uint8(2), []byte{255, 255, 255, 255})
	f.Add(uint8(2), uint8(2), uint16(128), uint8(1), []byte{4, 0, 0, 0})
	f.Add(uint8(0), uint8(3), uint16(256), uint8(2), []byte{})
	f.Fuzz(func(t *testing.T, m, topk uint8, k uint16, groups uint8, idBytes []byte) {
		M, TK, Kc, Gc := int(m%40), int(topk%6), int(k%600), int(groups%5)
		ids := make([]int32, M*TK)
		for i := range ids {
			if 4*i+4 <= len(idBytes) {
				ids[i] = int32(binary.LittleEndian.Uint32(idBytes[4*i:]))
			} else if i < len(idBytes) {
				ids[i] = int32(int8(idBytes[i]))
			}
		}
		a1q := tensor.New(tensor.WithShape(M, Kc), tensor.WithBacking(make([]uint8, M*Kc)))
		scale := tensor.New(tensor.WithShape(M, Gc), tensor.WithBacking(make([]float32, M*Gc)))
		idt := tensor.New(tensor.WithShape(M, TK), tensor.WithBacking(ids))
		wt := tensor.New(tensor.WithShape(M, TK), tensor.WithBacking(make([]float32, M*TK)))
		if M == 0 || TK == 0 || Kc == 0 || Gc == 0 {
			return // tensor cannot hold empty matrices; the graph never passes them
		}
		op := &expertsOp{l: l}
		out, err := op.Do(a1q, scale, idt, wt)
		valid := Kc == 256 && Gc == 2 && TK >= 1
		for _, id := range ids {
			valid = valid && id >= -1 && id < 4
		}
		if valid != (err == nil) {
			t.Fatalf("M=%d topk=%d K=%d groups=%d ids=%v: error %v", M, TK, Kc, Gc, ids, err)
		}
		if err == nil && !out.Shape().Eq(tensor.Shape{M, 256}) {
			t.Fatalf("output shape %v", out.Shape())
		}
	})
}

func TestExpertsOpValues(t *testing.T) {
	l := testLayer(t)
	defer l.Close()
	op := &expertsOp{l: l}
	ok := []G.Value{
		tensor.New(tensor.WithShape(1, 256), tensor.WithBacking(make([]uint8, 256))),
		tensor.New(tensor.WithShape(1, 2), tensor.WithBacking([]float32{1, 1})),
		tensor.New(tensor.WithShape(1, 2), tensor.WithBacking([]int32{0, 1})),
		tensor.New(tensor.WithShape(1, 2), tensor.WithBacking([]float32{.5, .5})),
	}
	if _, err := op.Do(ok...); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, want string
		i          int
		v          G.Value
	}{
		{"a1q as int32", "a1q has dtype", 0, tensor.New(tensor.WithShape(1, 256), tensor.WithBacking(make([]int32, 256)))},
		{"ids as float32", "topk_ids has dtype", 2, tensor.New(tensor.WithShape(1, 2), tensor.WithBacking([]float32{0, 1}))},
		{"scalar weights", "topk_weights", 3, tensor.New(tensor.FromScalar(float32(1)))},
		{"short scales", "a1q_scale", 1, tensor.New(tensor.WithShape(1, 1), tensor.WithBacking([]float32{1}))},
		{"weights shape", "topk_weights", 3, tensor.New(tensor.WithShape(2, 2), tensor.WithBacking(make([]float32, 4)))},
	}
	for _, c := range cases {
		in := append([]G.Value(nil), ok...)
		in[c.i] = c.v
		if _, err := op.Do(in...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", c.name, err, c.want)
		}
	}
	if _, err := op.Do(ok[:3]...); err == nil {
		t.Error("three inputs accepted")
	}
	// A transposed (non-contiguous) view is read in logical order.
	idsT := tensor.New(tensor.WithShape(2, 1), tensor.WithBacking([]int32{0, 1}))
	if err := idsT.T(); err != nil {
		t.Fatal(err)
	}
	in := append([]G.Value(nil), ok...)
	in[2] = idsT
	if _, err := op.Do(in...); err != nil {
		t.Fatalf("transposed ids: %v", err)
	}
}

func TestNewLayerErrors(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 1, K: 256, I: 128, E: 4, TopK: 2, Seed: 1})
	bad := c.Weights
	bad.W13 = bad.W13[:10]
	if _, err := NewLayer(&bad, c.Config); err == nil || !strings.Contains(err.Error(), "w13") {
		t.Fatalf("short w13: %v", err)
	}
	if _, err := NewLayer(&c.Weights, moe.Config{Activation: 9}); err == nil {
		t.Fatal("unknown activation accepted")
	}
	if _, err := NewLayer(&c.Weights, c.Config, WithBackend(nil)); err == nil {
		t.Fatal("nil backend accepted")
	}
}
