package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/safetensors"
)

func TestCheckGolden(t *testing.T) {
	files := conformance.GoldenFiles(t)
	var out, errb bytes.Buffer
	if code := run(append([]string{"check"}, files...), &out, &errb); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	if n := strings.Count(out.String(), "PASS"); n < len(files) {
		t.Fatalf("%d PASS lines for %d files:\n%s", n, len(files), out.String())
	}
	if strings.Contains(out.String(), "FAIL") || errb.Len() != 0 {
		t.Fatalf("unexpected output:\n%s%s", out.String(), errb.String())
	}
}

// caseEntries returns the tensors and metadata of a small generated case, in file form.
func caseEntries(t *testing.T) (map[string]safetensors.Entry, map[string]string) {
	c := conformance.Generate(conformance.Spec{M: 3, K: 128, I: 128, E: 2, TopK: 2, Seed: 1})
	M, K, I, E, topk := 3, 128, 128, 2, 2
	e := map[string]safetensors.Entry{}
	add := func(en safetensors.Entry) { e[en.Name] = en }
	add(safetensors.NewEntry("x", safetensors.F32, []int{M, K}, c.X))
	add(safetensors.NewEntry("a1q", safetensors.U8, []int{M, K}, c.Batch.A1q))
	add(safetensors.NewEntry("a1q_scale", safetensors.F32, []int{M, K / 128}, c.Batch.A1qScale))
	add(safetensors.NewEntry("topk_ids", safetensors.I32, []int{M, topk}, c.Batch.TopKIDs))
	add(safetensors.NewEntry("topk_weights", safetensors.F32, []int{M, topk}, c.Batch.TopKWeights))
	add(safetensors.NewEntry("w13", safetensors.U8, []int{E, 2 * I, K / 2}, c.Weights.W13))
	add(safetensors.NewEntry("w13_scale", safetensors.U8, []int{E, 2 * I, K / 32}, c.Weights.W13Scale))
	add(safetensors.NewEntry("w2", safetensors.U8, []int{E, K, I / 2}, c.Weights.W2))
	add(safetensors.NewEntry("w2_scale", safetensors.U8, []int{E, K, I / 32}, c.Weights.W2Scale))
	add(safetensors.NewEntry("expected", safetensors.F32, []int{M, K}, c.Expected))
	add(safetensors.NewEntry("expected_bf16", safetensors.F32, []int{M, K}, c.Expected))
	md := map[string]string{"format": "fp4moe-case/1", "activation": "silu", "clamp_limit": "", "swiglu_alpha": "1.702",
		"swiglu_beta": "1.0", "scale_fmt": "ceil_ue8m0", "apply_router_weight_on_input": "false",
		"num_global_experts": "2", "tolerance_rel_l2": "1e-3", "bf16_variant_rel_l2": "0"}
	return e, md
}

func writeCase(t *testing.T, dir, name string, e map[string]safetensors.Entry, md map[string]string) string {
	t.Helper()
	var list []safetensors.Entry
	for _, n := range []string{"x", "a1q", "a1q_scale", "topk_ids", "topk_weights", "w13", "w13_scale", "w2", "w2_scale", "expected", "expected_bf16", "expert_map"} {
		if en, ok := e[n]; ok {
			list = append(list, en)
		}
	}
	var buf bytes.Buffer
	if err := safetensors.Write(&buf, list, md); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".safetensors")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCheckExitCodes checks the verdicts and exit codes on a valid case, a failing case, and
// malformed or inconsistent files, each of which must give status 2 and a one-line message.
func TestCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := func() (map[string]safetensors.Entry, map[string]string) { return caseEntries(t) }
	e, md := good()
	valid := writeCase(t, dir, "valid", e, md)

	e, md = good()
	exp := append([]float32(nil), conformance.Generate(conformance.Spec{M: 3, K: 128, I: 128, E: 2, TopK: 2, Seed: 1}).Expected...)
	for i := range exp {
		exp[i] *= 1.01
	}
	e["expected"] = safetensors.NewEntry("expected", safetensors.F32, []int{3, 128}, exp)
	failing := writeCase(t, dir, "failing", e, md)

	type mut func(e map[string]safetensors.Entry, md map[string]string)
	bad := []struct {
		name, msg string
		m         mut
	}{
		{"unknown activation", "unknown activation", func(_ map[string]safetensors.Entry, md map[string]string) { md["activation"] = "gelu" }},
		{"unknown scale format", "unknown scale format", func(_ map[string]safetensors.Entry, md map[string]string) { md["scale_fmt"] = "ue4m3" }},
		{"unknown format", "format", func(_ map[string]safetensors.Entry, md map[string]string) { md["format"] = "fp4moe-case/2" }},
		{"bad clamp", "clamp_limit", func(_ map[string]safetensors.Entry, md map[string]string) { md["clamp_limit"] = "seven" }},
		{"bad tolerance", "tolerance_rel_l2", func(_ map[string]safetensors.Entry, md map[string]string) { md["tolerance_rel_l2"] = "" }},
		{"missing tensor", "missing tensor \"w2_scale\"", func(e map[string]safetensors.Entry, _ map[string]string) { delete(e, "w2_scale") }},
		{"wrong dtype", "dtype", func(e map[string]safetensors.Entry, _ map[string]string) {
			e["topk_ids"] = safetensors.NewEntry("topk_ids", safetensors.F32, []int{3, 2}, make([]float32, 6))
		}},
		{"wrong shape", "shape", func(e map[string]safetensors.Entry, _ map[string]string) {
			e["w2"] = safetensors.NewEntry("w2", safetensors.U8, []int{2, 128, 32}, make([]uint8, 2*128*32))
		}},
		{"K not multiple of 128", "multiples of 128", func(e map[string]safetensors.Entry, _ map[string]string) {
			e["a1q"] = safetensors.NewEntry("a1q", safetensors.U8, []int{3, 96}, make([]uint8, 3*96))
		}},
		{"id out of range", "topk_ids[1,0] = 2", func(e map[string]safetensors.Entry, _ map[string]string) {
			e["topk_ids"] = safetensors.NewEntry("topk_ids", safetensors.I32, []int{3, 2}, []int32{0, 1, 2, 0, 1, 0})
		}},
		{"expert map out of range", "expert_map", func(e map[string]safetensors.Entry, md map[string]string) {
			e["expert_map"] = safetensors.NewEntry("expert_map", safetensors.I32, []int{2}, []int32{0, 5})
		}},
	}
	args := []string{"check", valid}
	var badFiles []string
	for i, b := range bad {
		e, md := good()
		b.m(e, md)
		p := writeCase(t, dir, "bad"+string(rune('a'+i)), e, md)
		badFiles = append(badFiles, p)
		var out, errb bytes.Buffer
		if code := run([]string{"check", p}, &out, &errb); code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s%s", b.name, code, out.String(), errb.String())
		}
		if msg := errb.String(); !strings.Contains(msg, b.msg) || strings.Count(msg, "\n") != 1 || strings.Contains(msg, "goroutine") {
			t.Errorf("%s: message %q, want one line containing %q", b.name, msg, b.msg)
		}
	}
	// Raw corruptions of a valid file.
	raw, _ := os.ReadFile(valid)
	corrupt := map[string][]byte{
		"empty":             {},
		"truncated data":    raw[:len(raw)-10],
		"truncated header":  raw[:20],
		"header not json":   append(append([]byte{}, raw[:8]...), bytes.Repeat([]byte("x"), len(raw)-8)...),
		"huge header":       append([]byte{255, 255, 255, 255, 0, 0, 0, 0}, raw[8:]...),
		"offsets past end":  []byte(strings.Replace(string(raw), `"data_offsets":[0,`, `"data_offsets":[9000000,`, 1)),
		"not a safetensors": []byte("hello, world"),
	}
	for name, b := range corrupt {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".safetensors")
		os.WriteFile(p, b, 0o644)
		var out, errb bytes.Buffer
		if code := run([]string{"check", p}, &out, &errb); code != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%s: exit %d, message %q", name, code, errb.String())
		}
	}

	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("valid case: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"check", valid, failing}, &out, &errb); code != 1 || !strings.Contains(out.String(), "FAIL") {
		t.Fatalf("failing case: exit %d\n%s", code, out.String())
	}
	// A bad file among good ones: every file is reported, and the status is 2.
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", valid, badFiles[0], failing}, &out, &errb); code != 2 || strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("mixed files: exit %d\n%s%s", code, out.String(), errb.String())
	}
	for _, a := range [][]string{{}, {"check"}, {"frobnicate"}, {"check", "--backend", "tpu", valid}, {"check", "--nope", valid}} {
		if code := run(a, &out, &errb); code != 2 {
			t.Errorf("args %q: exit %d, want 2", a, code)
		}
	}
}
