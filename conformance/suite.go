package conformance

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// GoldenEnv names the environment variable that overrides where the golden cases are.
const GoldenEnv = "FP4MOE_GOLDEN"

// GoldenDir returns the directory of the public golden cases: $FP4MOE_GOLDEN, else
// ../shared/golden beside the module root.
func GoldenDir() (string, error) {
	if d := os.Getenv(GoldenEnv); d != "" {
		return d, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	g := filepath.Join(root, "..", "shared", "golden")
	if _, err := os.Stat(g); err != nil {
		return "", fmt.Errorf("golden cases not found at %s (set %s): %w", g, GoldenEnv, err)
	}
	return g, nil
}

// moduleRoot returns the directory holding go.mod, found upward from the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory; set " + GoldenEnv)
		}
		dir = parent
	}
}

// GoldenFiles returns the paths of the case files, sorted: the golden directory's, then the
// module's own testdata/cases (made by the same independent generator, see its README).
func GoldenFiles(tb testing.TB) []string {
	tb.Helper()
	dir, err := GoldenDir()
	if err != nil {
		tb.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no golden cases in %s: %v", dir, err)
	}
	sort.Strings(files)
	if root, err := moduleRoot(); err == nil {
		extra, _ := filepath.Glob(filepath.Join(root, "testdata", "cases", "*.safetensors"))
		sort.Strings(extra)
		files = append(files, extra...)
	}
	return files
}

// GoldenCases loads every fp4moe-case/1 file of the golden directory.
func GoldenCases(tb testing.TB) []*casefile.Case {
	tb.Helper()
	var cases []*casefile.Case
	for _, f := range GoldenFiles(tb) {
		v, err := casefile.Open(f)
		if err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		if c, ok := v.(*casefile.Case); ok {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		tb.Fatal("no fp4moe-case/1 files among the golden cases")
	}
	return cases
}

// TestBackend runs the conformance suite against b: every golden case within its tolerance,
// the float32-input path equal to the quantized path, random calls against Reference,
// bitwise-reproducible outputs, a layer reused across batch sizes, and invalid calls rejected
// with the output untouched.
func TestBackend(t *testing.T, b moe.Backend) {
	t.Run("golden", func(t *testing.T) {
		for _, c := range GoldenCases(t) {
			t.Run(c.Name, func(t *testing.T) {
				r, err := RunCase(b, c)
				if err != nil {
					t.Fatal(err)
				}
				if !r.Pass {
					t.Fatalf("%v", r)
				}
				if !c.Config.ApplyRouterWeightOnInput {
					checkFloatInput(t, b, c, r.Output)
				}
			})
		}
	})
	t.Run("random", func(t *testing.T) {
		for _, s := range RandomSpecs(1, 24) {
			t.Run(s.Name, func(t *testing.T) {
				c := Generate(s)
				r, err := RunCase(b, c)
				if err != nil {
					t.Fatal(err)
				}
				if !r.Pass {
					t.Fatalf("%+v: %v", s, r)
				}
			})
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		c := Generate(Spec{Name: "det", M: 37, K: 256, I: 256, E: 6, TopK: 3, Activation: moe.SwiGLUOAI, Bias: true, Dup: true, Seed: 7})
		first, err := RunCase(b, c)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			again, err := RunCase(b, c)
			if err != nil {
				t.Fatal(err)
			}
			if d := countDiffF(first.Output, again.Output); d != 0 {
				t.Fatalf("run %d: %d of %d outputs differ bitwise from the first run", i+1, d, len(again.Output))
			}
		}
	})
	t.Run("reuse", func(t *testing.T) { testReuse(t, b) })
	t.Run("errors", func(t *testing.T) { testErrors(t, b) })
}

// checkFloatInput runs the case from its float32 input: the layer's own quantization must
// reproduce the case's FP8 input exactly, so the output must equal the quantized path's. A case
// whose input was quantized with another scale format than its requant (native's quantizer,
// checked bit for bit by the quant vectors, tells) has no float32-input counterpart and is
// skipped.
func checkFloatInput(t *testing.T, b moe.Backend, c *casefile.Case, want []float32) {
	t.Helper()
	M, K := c.Batch.M, c.Weights.K
	q := make([]uint8, M*K)
	s := make([]float32, M*K/moe.ActGroup)
	native.QuantizeFP8Rows(q, s, c.X, M, K, moe.ActGroup, c.Config.ScaleFormat)
	if countDiff(q, c.Batch.A1q) != 0 || countDiffF(s, c.Batch.A1qScale) != 0 {
		t.Logf("a1q was not quantized with scale format %v: float32-input path not compared", c.Config.ScaleFormat)
		return
	}
	l, err := b.NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	batch := c.Batch
	batch.X = c.X
	out := make([]float32, len(want))
	if err := l.Forward(out, &batch); err != nil {
		t.Fatal(err)
	}
	if d := countDiffF(out, want); d != 0 {
		t.Fatalf("float32-input path: %d of %d outputs differ from the FP8-input path (rel L2 %.3e)", d, len(out), RelL2(out, want))
	}
}

// testReuse runs one layer on batches of growing and shrinking size and compares each output
// with a fresh layer's.
func testReuse(t *testing.T, b moe.Backend) {
	base := Generate(Spec{Name: "reuse", M: 300, K: 256, I: 128, E: 8, TopK: 2, Seed: 11})
	l, err := b.NewLayer(&base.Weights, base.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, m := range []int{1, 300, 7, 128, 0, 64, 1} {
		batch := base.Batch.Slice(base.Weights.K, 0, m)
		out := make([]float32, m*base.Weights.K)
		if err := l.Forward(out, batch); err != nil {
			t.Fatalf("M=%d: %v", m, err)
		}
		want := base.Expected[:m*base.Weights.K]
		if m > 0 && RelL2(out, want) > 1e-3 {
			t.Fatalf("M=%d on a reused layer: rel L2 %.3e", m, RelL2(out, want))
		}
	}
}

// testErrors checks that invalid calls return an error naming the tensor and leave the output
// untouched.
func testErrors(t *testing.T, b moe.Backend) {
	c := Generate(Spec{Name: "errors", M: 5, K: 256, I: 128, E: 4, TopK: 2, Seed: 3})
	K := c.Weights.K
	l, err := b.NewLayer(&c.Weights, c.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cases := []struct {
		name   string
		mutate func(b *moe.Batch)
		out    int
	}{
		{"id too large", func(b *moe.Batch) { b.TopKIDs = slices.Clone(b.TopKIDs); b.TopKIDs[3] = 4 }, 5 * K},
		{"id below -1", func(b *moe.Batch) { b.TopKIDs = slices.Clone(b.TopKIDs); b.TopKIDs[0] = -2 }, 5 * K},
		{"short a1q", func(b *moe.Batch) { b.A1q = b.A1q[:len(b.A1q)-1] }, 5 * K},
		{"short a1q_scale", func(b *moe.Batch) { b.A1qScale = b.A1qScale[:1] }, 5 * K},
		{"short topk_weights", func(b *moe.Batch) { b.TopKWeights = b.TopKWeights[:9] }, 5 * K},
		{"short x", func(b *moe.Batch) { b.X = make([]float32, 4*K) }, 5 * K},
		{"topk 0", func(b *moe.Batch) { b.TopK = 0 }, 5 * K},
		{"negative M", func(b *moe.Batch) { b.M = -1 }, 5 * K},
		{"short output", func(b *moe.Batch) {}, 5*K - 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			batch := c.Batch
			tc.mutate(&batch)
			out := make([]float32, tc.out)
			for i := range out {
				out[i] = float32(math.Pi)
			}
			err := l.Forward(out, &batch)
			if err == nil {
				t.Fatal("no error")
			}
			for i, v := range out {
				if v != float32(math.Pi) {
					t.Fatalf("output[%d] changed to %v on error %v", i, v, err)
				}
			}
		})
	}
	// The layer still works after rejected calls.
	out := make([]float32, 5*K)
	if err := l.Forward(out, &c.Batch); err != nil || RelL2(out, c.Expected) > 1e-3 {
		t.Fatalf("after errors: %v, rel L2 %.3e", err, RelL2(out, c.Expected))
	}
	// Invalid layers are rejected at creation.
	bad := c.Weights
	bad.W2Scale = bad.W2Scale[1:]
	if _, err := b.NewLayer(&bad, c.Config); err == nil {
		t.Fatal("NewLayer accepted a short w2_scale")
	}
	cfg := c.Config
	cfg.ExpertMap = []int32{0, 1, 9}
	if _, err := b.NewLayer(&c.Weights, cfg); err == nil {
		t.Fatal("NewLayer accepted an expert map entry outside [-1, E)")
	}
}

// TestQuant checks native's quantizers bit for bit against every fp4moe-quant/1 file.
func TestQuant(t *testing.T) {
	n := 0
	for _, f := range GoldenFiles(t) {
		v, err := casefile.Open(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		q, ok := v.(*casefile.Quant)
		if !ok {
			continue
		}
		n++
		for _, r := range CheckQuant(q) {
			if !r.Pass() {
				t.Errorf("%s: %v", f, r)
			}
		}
	}
	if n == 0 {
		t.Fatal("no fp4moe-quant/1 files")
	}
}
