package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testBench = `device,date,shape,K,I,E,topk,routing,M,experts_touched,weight_bytes,median_us,p10_us,p90_us,weight_GBps,TFLOPs,copy_GBps,floor_us,ratio_to_floor,launches
GPU A,2026-11-27,gptoss120b,2944,2944,128,4,uniform,1,4,5.5e+07,55.5,55,56,996,3.7,3001,18.4,3.01,20
GPU A,2026-11-27,gptoss120b,2944,2944,128,4,uniform,4096,128,1.7e+09,3224.1,3200,3300,548,264.3,3001,589.1,5.47,20
GPU A,2026-11-27,qwen3-30b-a3b,2048,768,128,8,zipf,1,8,2.0e+07,36.5,36,37,549,2.1,3001,6.7,5.47,20
`

func TestPlot(t *testing.T) {
	dir := t.TempDir()
	bench := filepath.Join(dir, "bench.csv")
	peers := filepath.Join(dir, "peers.csv")
	os.WriteFile(bench, []byte(testBench), 0o644)
	os.WriteFile(peers, []byte("# comment\nshape,M,name,us\ngptoss120b,1,Peer X,79\nqwen3-30b-a3b,1,Peer Y,78\n"), 0o644)
	var out, errb bytes.Buffer
	if rc := run([]string{"plot", "--out", dir, "--peers", peers, "--fp8-tflops", "1440", bench}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	for shape, want := range map[string][]string{
		"gptoss120b":    {"uniform routing (GPU A)", "weight floor, uniform routing (copy bandwidth, GPU A)", "FP8 compute floor (1440 TFLOP/s)", "Peer X"},
		"qwen3-30b-a3b": {"zipf routing (GPU A)", "Peer Y"},
	} {
		svg, err := os.ReadFile(filepath.Join(dir, shape+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !bytes.Contains(svg, []byte(w)) {
				t.Errorf("%s.svg lacks %q", shape, w)
			}
		}
		if shape == "qwen3-30b-a3b" && bytes.Contains(svg, []byte("Peer X")) {
			t.Errorf("%s.svg shows another shape's peer", shape)
		}
	}
	if got := strings.Fields(out.String()); len(got) != 2 {
		t.Errorf("printed %q, want the two chart paths", out.String())
	}
}

func TestPlotErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	for _, c := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no files", []string{"plot"}, "usage"},
		{"missing file", []string{"plot", filepath.Join(dir, "nope.csv")}, "no such file"},
		{"not a bench CSV", []string{"plot", write("a.csv", "x,y\n1,2\n")}, `no column "device"`},
		{"bad median", []string{"plot", write("b.csv", strings.Replace(testBench, ",55.5,", ",-1,", 1))}, "median_us"},
		{"bad peers header", []string{"plot", "--peers", write("p.csv", "a,b\n"), write("c.csv", testBench)}, "header"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run(append(c.args[:1:1], append([]string{"--out", dir}, c.args[1:]...)...), &out, &errb); rc != 2 {
				t.Fatalf("exit %d, want 2", rc)
			}
			if !strings.Contains(errb.String(), c.msg) {
				t.Errorf("stderr %q lacks %q", errb.String(), c.msg)
			}
		})
	}
}
