package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fp4moe/fp4moe/gptoss"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
)

var synth = gptoss.Synthetic{Layers: 2, Experts: 3, TopK: 2, Hidden: 160, Intermediate: 96, Shards: 2, Seed: 5}

// quantizeDir runs fp4moe quantize on every shard of src into dst and copies config.json.
func quantizeDir(t *testing.T, src, dst string, args ...string) {
	t.Helper()
	os.MkdirAll(dst, 0o755)
	files, _ := filepath.Glob(filepath.Join(src, "*.safetensors"))
	for _, f := range files {
		var out, errb bytes.Buffer
		a := append(append([]string(nil), args...), f, filepath.Join(dst, filepath.Base(f)))
		if code := quantize(a, &out, &errb); code != 0 {
			t.Fatalf("quantize %v: exit %d: %s", a, code, errb.String())
		}
	}
	cfg, _ := os.ReadFile(filepath.Join(src, "config.json"))
	os.WriteFile(filepath.Join(dst, "config.json"), cfg, 0o644)
}

func loadLayers(t *testing.T, dir string) []*gptoss.Layer {
	t.Helper()
	ck, err := gptoss.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var ls []*gptoss.Layer
	for n := range ck.Layers {
		l, err := ck.LoadLayer(n)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// TestQuantizeRoundTrip writes unquantized bf16 checkpoints in both layouts, quantizes them
// into both layouts, and loads them: every route must give the same MXFP4 bytes, biases and
// router as a checkpoint quantized directly from the same values.
func TestQuantizeRoundTrip(t *testing.T) {
	root := t.TempDir()
	direct := filepath.Join(root, "direct")
	if err := synth.Write(direct, gptoss.OpenAI, false, nil); err != nil {
		t.Fatal(err)
	}
	want := loadLayers(t, direct)
	for _, from := range []gptoss.Layout{gptoss.OpenAI, gptoss.HuggingFace} {
		src := filepath.Join(root, "float-"+from.String())
		if err := synth.Write(src, from, true, nil); err != nil {
			t.Fatal(err)
		}
		for _, to := range []string{"", "openai", "huggingface"} {
			dst := filepath.Join(root, from.String()+"-to-"+to)
			args := []string{}
			if to != "" {
				args = []string{"--layout", to}
			}
			quantizeDir(t, src, dst, args...)
			got := loadLayers(t, dst)
			for n := range want {
				a, b := want[n], got[n]
				if !bytes.Equal(a.Weights.W13, b.Weights.W13) || !bytes.Equal(a.Weights.W13Scale, b.Weights.W13Scale) ||
					!bytes.Equal(a.Weights.W2, b.Weights.W2) || !bytes.Equal(a.Weights.W2Scale, b.Weights.W2Scale) ||
					!slices.Equal(a.Weights.W13Bias, b.Weights.W13Bias) || !slices.Equal(a.Weights.W2Bias, b.Weights.W2Bias) ||
					!slices.Equal(a.RouterWeight, b.RouterWeight) || !slices.Equal(a.RouterBias, b.RouterBias) {
					t.Fatalf("%v float checkpoint quantized to %q: layer %d differs from the directly quantized one", from, to, n)
				}
			}
		}
	}
}

func TestQuantizePacked(t *testing.T) {
	dir := t.TempDir()
	l := synth.Layer(0)
	E, K, I := synth.Experts, synth.Hidden, synth.Intermediate
	in := filepath.Join(dir, "in.safetensors")
	var buf bytes.Buffer
	bias := make([]float32, E*K)
	if err := safetensors.Write(&buf, []safetensors.Entry{
		safetensors.NewEntry("w13", safetensors.F32, []int{E, 2 * I, K}, l.MLP1),
		safetensors.NewEntry("w2", safetensors.F32, []int{E, K, I}, l.MLP2),
		safetensors.NewEntry("w2_bias", safetensors.F32, []int{E, K}, bias),
	}, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(in, buf.Bytes(), 0o644)
	out := filepath.Join(dir, "out.safetensors")
	var so, se bytes.Buffer
	if code := quantize([]string{in, out}, &so, &se); code != 0 || !strings.Contains(so.String(), "fp4moe layout") {
		t.Fatalf("exit %d: %s%s", code, so.String(), se.String())
	}
	f, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	shape, codes, err := safetensors.Tensor[uint8](f, "w13", safetensors.U8)
	if err != nil || !slices.Equal(shape, []int{E, 2 * I, K / 2}) {
		t.Fatalf("w13: %v %v", shape, err)
	}
	_, scales, _ := safetensors.Tensor[uint8](f, "w13_scale", safetensors.U8)
	wantCodes, wantScales := make([]uint8, K/2), make([]uint8, K/32)
	for r := range E * 2 * I {
		native.QuantizeMXFP4(wantCodes, wantScales, l.MLP1[r*K:(r+1)*K])
		if !bytes.Equal(codes[r*K/2:(r+1)*K/2], wantCodes) || !bytes.Equal(scales[r*K/32:(r+1)*K/32], wantScales) {
			t.Fatalf("row %d of w13 differs from native.QuantizeMXFP4", r)
		}
	}
	if f.Info("w2_scale") == nil || f.Info("w2_bias") == nil || f.Info("w2_bias").DType != safetensors.F32 {
		t.Fatal("w2_scale missing or w2_bias not copied")
	}
}

func TestQuantizeErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.safetensors")
	var buf bytes.Buffer
	safetensors.Write(&buf, []safetensors.Entry{safetensors.NewEntry("block.0.mlp.mlp1_weight", safetensors.F32, []int{1, 2, 40}, make([]float32, 80))}, nil)
	os.WriteFile(bad, buf.Bytes(), 0o644)
	for _, args := range [][]string{
		{},
		{"only-one"},
		{filepath.Join(dir, "missing.safetensors"), filepath.Join(dir, "o1")},
		{"--layout", "gguf", bad, filepath.Join(dir, "o2")},
		{bad, filepath.Join(dir, "o3")}, // rows of 40 values
	} {
		var so, se bytes.Buffer
		if code := quantize(args, &so, &se); code != 2 {
			t.Errorf("args %q: exit %d, want 2", args, code)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "o3")); err == nil {
		t.Error("a failed conversion left its output file")
	}
}
