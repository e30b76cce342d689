package conformance

import (
	"fmt"
	"math"

	"github.com/fp4moe/fp4moe/casefile"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// Result is the outcome of one case on one backend.
type Result struct {
	Name string
	// RelL2 is the relative L2 error against the float32-precision reference (Expected), and
	// RelL2BF16 against the bf16-engine reference (NaN when the case has none).
	RelL2, RelL2BF16 float64
	Tolerance        float64
	Pass             bool
	Output           []float32
}

func (r Result) String() string {
	verdict := "FAIL"
	if r.Pass {
		verdict = "PASS"
	}
	return fmt.Sprintf("%-28s rel_l2 %.3e  rel_l2_bf16 %.3e  tol %.0e  %s", r.Name, r.RelL2, r.RelL2BF16, r.Tolerance, verdict)
}

// RunCase runs a case's quantized call on a layer made by b and compares the output with the
// case's Expected reference (the precision of every backend of this project: float32
// accumulation, h and z unrounded).
func RunCase(b moe.Backend, c *casefile.Case) (Result, error) {
	l, err := b.NewLayer(&c.Weights, c.Config)
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	out := make([]float32, c.Batch.M*c.Weights.K)
	if err := l.Forward(out, &c.Batch); err != nil {
		return Result{}, err
	}
	r := Result{Name: c.Name, Tolerance: c.Tolerance, Output: out, RelL2: RelL2(out, c.Expected), RelL2BF16: math.NaN()}
	if c.ExpectedBF16 != nil {
		r.RelL2BF16 = RelL2(out, c.ExpectedBF16)
	}
	r.Pass = r.RelL2 <= c.Tolerance && !math.IsNaN(r.RelL2)
	for _, v := range out {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			r.Pass = false
		}
	}
	return r, nil
}

// QuantResult is the bit-exact comparison of one quantizer on one vector set.
type QuantResult struct {
	Name       string
	Mismatches int // elements that differ (bitwise for codes and scales)
	Total      int
}

// Pass reports whether every element matched.
func (q QuantResult) Pass() bool { return q.Mismatches == 0 }

func (q QuantResult) String() string {
	verdict := "PASS"
	if !q.Pass() {
		verdict = "FAIL"
	}
	return fmt.Sprintf("%-28s %d/%d mismatches  %s", q.Name, q.Mismatches, q.Total, verdict)
}

// CheckQuant runs native's FP8 group quantizer (both scale formats), the packed ue8m0 export
// and the MXFP4 codec on the vectors of q and counts mismatches bit for bit.
func CheckQuant(q *casefile.Quant) []QuantResult {
	var res []QuantResult
	G := q.C / moe.ActGroup
	for _, f := range []struct {
		fmt moe.ScaleFormat
		q   []uint8
		s   []float32
	}{{moe.CeilUE8M0, q.QCeil, q.SCeil}, {moe.Float32, q.QFloat32, q.SFloat32}} {
		codes := make([]uint8, q.R*q.C)
		scales := make([]float32, q.R*G)
		native.QuantizeFP8Rows(codes, scales, q.Y, q.R, q.C, moe.ActGroup, f.fmt)
		res = append(res,
			QuantResult{"fp8 codes " + f.fmt.String(), countDiff(codes, f.q), len(codes)},
			QuantResult{"fp8 scales " + f.fmt.String(), countDiffF(scales, f.s), len(scales)})
		if f.fmt == moe.CeilUE8M0 {
			words := make([]int32, q.R*((G+3)/4))
			native.PackUE8M0(words, scales, q.R, G)
			res = append(res, QuantResult{"packed ue8m0", countDiff(words, q.PackedUE8M0), len(words)})
		}
	}
	packed := make([]uint8, q.WR*q.WC/2)
	scales := make([]uint8, q.WR*q.WC/moe.WeightBlock)
	deq := make([]float32, q.WR*q.WC)
	for r := range q.WR {
		native.QuantizeMXFP4(packed[r*q.WC/2:(r+1)*q.WC/2], scales[r*q.WC/32:(r+1)*q.WC/32], q.W[r*q.WC:(r+1)*q.WC])
		// Dequantize the file's own bytes, so the decoder is checked independently of the encoder.
		native.DequantizeMXFP4(deq[r*q.WC:(r+1)*q.WC], q.WPacked[r*q.WC/2:(r+1)*q.WC/2], q.WScales[r*q.WC/32:(r+1)*q.WC/32])
	}
	return append(res,
		QuantResult{"mxfp4 packed", countDiff(packed, q.WPacked), len(packed)},
		QuantResult{"mxfp4 scales", countDiff(scales, q.WScales), len(scales)},
		QuantResult{"mxfp4 dequant", countDiffF(deq, q.WDequant), len(deq)})
}

func countDiff[T comparable](a, b []T) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// countDiffF compares float32 values bit for bit.
func countDiffF(a, b []float32) int {
	n := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
		}
	}
	return n
}
