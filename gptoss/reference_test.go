package gptoss

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
)

// TestReferenceDequantizer compares the loader's weights, dequantized, bit for bit with the
// public gpt-oss reference dequantizer's output on a checkpoint written by PyTorch
// (tools/gptoss_reference.py), in both layouts: de-interleaving, nibble order, scales and
// padding. The files are made on a machine with PyTorch; the test runs where
// FP4MOE_GPTOSS_REF names their directory and is skipped elsewhere.
func TestReferenceDequantizer(t *testing.T) {
	dir := os.Getenv("FP4MOE_GPTOSS_REF")
	if dir == "" {
		t.Skip("FP4MOE_GPTOSS_REF is not set (see tools/gptoss_reference.py)")
	}
	ref, err := safetensors.Open(filepath.Join(dir, "reference_dequant.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	for _, layout := range []Layout{OpenAI, HuggingFace} {
		ck, err := Open(filepath.Join(dir, layout.String()))
		if err != nil {
			t.Fatal(err)
		}
		if ck.Layout != layout {
			t.Fatalf("%s: detected layout %v", layout, ck.Layout)
		}
		for n := range ck.Layers {
			l, err := ck.LoadLayer(n)
			if err != nil {
				t.Fatal(err)
			}
			w := &l.Weights
			E, K, I, Kp, Ip := l.Experts, l.Hidden, l.Intermediate, w.K, w.I
			compared, mismatches, padding := 0, 0, 0
			check := func(name string, rows, cols, ourCols int, ourRow func(e, r int) int, packed, scales []uint8) {
				_, want, err := safetensors.Tensor[float32](ref, name, safetensors.F32)
				if err != nil {
					t.Fatal(err)
				}
				row := make([]float32, ourCols)
				for e := range E {
					for r := range rows {
						o := ourRow(e, r)
						native.DequantizeMXFP4(row, packed[o*ourCols/2:(o+1)*ourCols/2], scales[o*ourCols/32:(o+1)*ourCols/32])
						for j := range cols {
							compared++
							if math.Float32bits(row[j]) != math.Float32bits(want[(e*rows+r)*cols+j]) {
								if mismatches < 5 {
									t.Errorf("%s %s[%d,%d,%d]: loader %v, reference %v", layout, name, e, r, j, row[j], want[(e*rows+r)*cols+j])
								}
								mismatches++
							}
						}
						for j := cols; j < ourCols; j++ {
							if row[j] != 0 {
								padding++
							}
						}
					}
				}
			}
			check(FloatName(OpenAI, n, 1), 2*I, K, Kp, func(e, r int) int {
				if r%2 == 0 {
					return e*2*Ip + r/2
				}
				return e*2*Ip + Ip + r/2
			}, w.W13, w.W13Scale)
			check(FloatName(OpenAI, n, 2), K, I, Ip, func(e, r int) int { return e*Kp + r }, w.W2, w.W2Scale)
			if mismatches != 0 || padding != 0 {
				t.Fatalf("%s layer %d: %d of %d values differ from the reference dequantizer, %d padding values not zero", layout, n, mismatches, compared, padding)
			}
			t.Logf("%s layer %d: %d dequantized values equal the reference bit for bit", layout, n, compared)
			l.Close()
		}
		ck.Close()
	}
}
