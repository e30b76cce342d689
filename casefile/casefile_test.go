package casefile_test

import (
	"os"
	"testing"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
)

func TestGoldenLoad(t *testing.T) {
	cases, quants := 0, 0
	for _, f := range conformance.GoldenFiles(t) {
		v, err := casefile.Open(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		switch c := v.(type) {
		case *casefile.Case:
			cases++
			if c.Tolerance != 1e-3 || c.BF16Spread <= 0 || len(c.Expected) != c.Batch.M*c.Weights.K || len(c.X) != len(c.Expected) {
				t.Fatalf("%s: tolerance %v spread %v, %d expected values", c.Name, c.Tolerance, c.BF16Spread, len(c.Expected))
			}
		case *casefile.Quant:
			quants++
			if q := c; q.R*q.C != len(q.Y) || q.WR*q.WC != len(q.W) {
				t.Fatalf("quant shapes %d×%d, %d×%d", q.R, q.C, q.WR, q.WC)
			}
		}
	}
	if cases == 0 || quants == 0 {
		t.Fatalf("%d cases and %d quant files", cases, quants)
	}
}

// FuzzRead checks that no file makes the reader panic, and that every file it accepts is a
// valid call: the native layer runs it without error.
func FuzzRead(f *testing.F) {
	for _, p := range conformance.GoldenFiles(f) {
		if st, err := os.Stat(p); err == nil && st.Size() < 400_000 {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte("not a file"))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := safetensors.Parse(b)
		if err != nil {
			return
		}
		v, err := casefile.Read(file, "fuzz")
		if err != nil {
			return
		}
		c, ok := v.(*casefile.Case)
		if !ok {
			return
		}
		w := c.Weights
		if c.Batch.M*c.Batch.TopK*w.K*w.I > 1<<24 {
			return // valid but too slow to run in a fuzz iteration
		}
		if _, err := conformance.RunCase(native.Backend{}, c); err != nil {
			t.Fatalf("accepted case fails to run: %v", err)
		}
	})
}

func TestReadRejectsTruncated(t *testing.T) {
	files := conformance.GoldenFiles(t)
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 7, 100, len(b) / 2, len(b) - 1} {
		file, err := safetensors.Parse(b[:n])
		if err == nil {
			_, err = casefile.Read(file, "t")
		}
		if err == nil {
			t.Fatalf("truncated to %d bytes: accepted", n)
		}
	}
}
