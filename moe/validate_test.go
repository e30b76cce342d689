package moe

import (
	"errors"
	"strings"
	"testing"
)

func weights(e, k, i int) *Weights {
	return &Weights{E: e, K: k, I: i,
		W13: make([]uint8, e*2*i*k/2), W13Scale: make([]uint8, e*2*i*k/32),
		W2: make([]uint8, e*k*i/2), W2Scale: make([]uint8, e*k*i/32)}
}

func TestValidate(t *testing.T) {
	ok := weights(2, 128, 256)
	batch := func() *Batch {
		return &Batch{M: 2, TopK: 2, A1q: make([]uint8, 256), A1qScale: make([]float32, 2),
			TopKIDs: []int32{0, 1, -1, 1}, TopKWeights: make([]float32, 4)}
	}
	cases := []struct {
		name string
		w    func() *Weights
		c    Config
		b    func() *Batch
		want string // substring of the error; "" for none
	}{
		{"valid", func() *Weights { return ok }, Config{}, batch, ""},
		{"K 100", func() *Weights { w := *ok; w.K = 100; return &w }, Config{}, batch, "hidden size K = 100"},
		{"I 0", func() *Weights { w := *ok; w.I = 0; return &w }, Config{}, batch, "intermediate size I = 0"},
		{"E 0", func() *Weights { w := *ok; w.E = 0; return &w }, Config{}, batch, "number of experts"},
		{"short w13", func() *Weights { w := *ok; w.W13 = w.W13[1:]; return &w }, Config{}, batch, "w13 has shape (65535), expected (2, 512, 64)"},
		{"short w2_scale", func() *Weights { w := *ok; w.W2Scale = nil; return &w }, Config{}, batch, "w2_scale"},
		{"bias length", func() *Weights { w := *ok; w.W13Bias = make([]float32, 3); return &w }, Config{}, batch, "w13_bias"},
		{"unknown activation", func() *Weights { return ok }, Config{Activation: 7}, batch, "unknown activation"},
		{"NaN alpha", func() *Weights { return ok }, Config{Alpha: float32(nan())}, batch, "finite"},
		{"expert map entry", func() *Weights { return ok }, Config{ExpertMap: []int32{0, 2}}, batch, "expert_map[1] = 2"},
		{"expert map length", func() *Weights { return ok }, Config{ExpertMap: []int32{0, 1}, NumGlobalExperts: 3}, batch, "expert_map has shape (2)"},
		{"globals without map", func() *Weights { return ok }, Config{NumGlobalExperts: 5}, batch, "no expert map"},
		{"id 2 of 2", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.TopKIDs[3] = 2; return b }, "topk_ids[1,1] = 2, outside [-1, 2)"},
		{"id -3", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.TopKIDs[0] = -3; return b }, "topk_ids[0,0] = -3"},
		{"id within map range", func() *Weights { return ok }, Config{ExpertMap: []int32{-1, 0, 1, -1}}, func() *Batch { b := batch(); b.TopKIDs[3] = 3; return b }, ""},
		{"arwoi topk 2", func() *Weights { return ok }, Config{ApplyRouterWeightOnInput: true}, batch, "needs topk == 1"},
		{"short scales", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.A1qScale = b.A1qScale[:1]; return b }, "a1q_scale has shape (1), expected (2, 1)"},
		{"x replaces a1q", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.A1q = nil; b.X = make([]float32, 256); return b }, ""},
		{"short x", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.X = make([]float32, 255); return b }, "x has shape"},
		{"topk 0", func() *Weights { return ok }, Config{}, func() *Batch { b := batch(); b.TopK = 0; return b }, "topk = 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(make([]float32, 256), c.b(), c.w(), &c.c)
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	var se *ShapeError
	if err := Check(make([]float32, 3), batch(), ok, &Config{}); !errors.As(err, &se) || se.Tensor != "output" {
		t.Fatalf("short output: %v", err)
	}
}

func nan() float64 {
	var z float64
	return z / z
}

func TestParse(t *testing.T) {
	for _, a := range []Activation{SiLU, SwiGLUStep, SwiGLUOAI} {
		if got, err := ParseActivation(a.String()); err != nil || got != a {
			t.Fatalf("%v round trip: %v %v", a, got, err)
		}
	}
	for _, f := range []ScaleFormat{CeilUE8M0, Float32} {
		if got, err := ParseScaleFormat(f.String()); err != nil || got != f {
			t.Fatalf("%v round trip: %v %v", f, got, err)
		}
	}
	if _, err := ParseActivation("gelu"); err == nil {
		t.Fatal("gelu parsed")
	}
	c := GPTOSSConfig()
	if l, ok := c.Limit(); !ok || l != 7 || c.Alpha != float32(1.702) {
		t.Fatalf("GPT-OSS config %+v", c)
	}
	if l, ok := (&Config{}).Limit(); ok || l != 0 {
		t.Fatal("silu without clamp has a limit")
	}
}
