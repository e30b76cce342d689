// Package casefile reads the layer's test files: fp4moe-case/1 (one call of the layer with its
// float64-reference outputs) and fp4moe-quant/1 (bit-exact vectors for the FP8 group
// quantizers and the MXFP4 codec), both safetensors files described in docs/numerics.md.
//
// Every tensor's dtype and shape is checked against the others, every metadata field is
// parsed, and the result is validated as a call of the layer would be, so a case that loads is
// a valid call; anything else is an error wrapping ErrInvalid.
package casefile

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/safetensors"
)

// Format names.
const (
	CaseFormat  = "fp4moe-case/1"
	QuantFormat = "fp4moe-quant/1"
)

// ErrInvalid is wrapped by every error about a malformed or inconsistent file.
var ErrInvalid = errors.New("invalid case file")

func invalid(f string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(f, a...))
}

// Case is one call of the layer and its reference outputs.
type Case struct {
	Name    string
	Weights moe.Weights
	Config  moe.Config
	// Batch holds the quantized input (A1q, A1qScale) and the routing; Batch.X is nil.
	Batch moe.Batch
	// X (M, K) is the float32 input that A1q quantizes (with ApplyRouterWeightOnInput, the
	// router weight is already applied to it).
	X []float32
	// Expected (M, K) is the float64 reference rounded to float32; ExpectedBF16 follows the
	// bf16-rounding engine.
	Expected, ExpectedBF16 []float32
	// Tolerance is the relative L2 error allowed against the reference of a path's precision.
	Tolerance float64
	// BF16Spread is the relative L2 distance between the two references (information only).
	BF16Spread float64
}

// Quant holds the bit-exact quantizer vectors of an fp4moe-quant/1 file.
type Quant struct {
	Name string
	// Y (R, C) float32 inputs of the FP8 group quantizer (groups of 128), with the expected
	// codes and scales for both scale formats and the packed ue8m0 export (R, ceil(C/512)).
	R, C            int
	Y               []float32
	QCeil, QFloat32 []uint8
	SCeil, SFloat32 []float32
	PackedUE8M0     []int32
	// W (WR, 256) float32 inputs of the MXFP4 quantizer with the expected packed codes,
	// E8M0 scales and dequantized values.
	WR, WC           int
	W                []float32
	WPacked, WScales []uint8
	WDequant         []float32
}

// Open reads a file of either format; the result is a *Case or a *Quant.
func Open(path string) (any, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, wrapFormat(err)
	}
	defer f.Close()
	name := strings.TrimSuffix(filepath.Base(path), ".safetensors")
	return Read(f, name)
}

// Read decodes an opened safetensors file of either format.
func Read(f *safetensors.File, name string) (any, error) {
	switch fm := f.Metadata["format"]; fm {
	case CaseFormat:
		return readCase(f, name)
	case QuantFormat:
		return readQuant(f, name)
	default:
		return nil, invalid("format %q, expected %q or %q", fm, CaseFormat, QuantFormat)
	}
}

func wrapFormat(err error) error {
	if errors.Is(err, safetensors.ErrFormat) {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// reader reads tensors with fixed dtypes and checks their shapes.
type reader struct {
	f   *safetensors.File
	err error
}

func get[T safetensors.Elem](r *reader, name string, d safetensors.DType, want ...int) []T {
	if r.err != nil {
		return nil
	}
	info := r.f.Info(name)
	if info == nil {
		r.err = invalid("missing tensor %q", name)
		return nil
	}
	if info.DType != d {
		r.err = invalid("tensor %q has dtype %s, expected %s", name, info.DType, d)
		return nil
	}
	if !slices.Equal(info.Shape, want) {
		r.err = invalid("tensor %q has shape %v, expected %v", name, info.Shape, want)
		return nil
	}
	_, v, err := safetensors.Tensor[T](r.f, name, d)
	if err != nil {
		r.err = wrapFormat(err)
	}
	return v
}

// shape returns a tensor's shape after checking its rank and dtype.
func (r *reader) shape(name string, d safetensors.DType, rank int) []int {
	if r.err != nil {
		return nil
	}
	info := r.f.Info(name)
	switch {
	case info == nil:
		r.err = invalid("missing tensor %q", name)
	case info.DType != d:
		r.err = invalid("tensor %q has dtype %s, expected %s", name, info.DType, d)
	case len(info.Shape) != rank:
		r.err = invalid("tensor %q has shape %v, expected rank %d", name, info.Shape, rank)
	default:
		return info.Shape
	}
	return nil
}

func readCase(f *safetensors.File, name string) (*Case, error) {
	r := &reader{f: f}
	md := f.Metadata
	c := &Case{Name: name}
	var err error
	if c.Config.Activation, err = moe.ParseActivation(md["activation"]); err != nil {
		return nil, invalid("%v", err)
	}
	if c.Config.ScaleFormat, err = moe.ParseScaleFormat(md["scale_fmt"]); err != nil {
		return nil, invalid("%v", err)
	}
	if s := md["clamp_limit"]; s != "" {
		v, err := parseFloat("clamp_limit", s)
		if err != nil {
			return nil, err
		}
		c.Config.Clamp, c.Config.ClampLimit = true, float32(v)
	}
	alpha, err := parseFloat("swiglu_alpha", orDefault(md["swiglu_alpha"], "1.702"))
	if err != nil {
		return nil, err
	}
	beta, err := parseFloat("swiglu_beta", orDefault(md["swiglu_beta"], "1.0"))
	if err != nil {
		return nil, err
	}
	c.Config.Alpha, c.Config.Beta = float32(alpha), float32(beta)
	switch s := md["apply_router_weight_on_input"]; s {
	case "true":
		c.Config.ApplyRouterWeightOnInput = true
	case "false", "":
	default:
		return nil, invalid("apply_router_weight_on_input = %q, expected true or false", s)
	}
	if c.Tolerance, err = parseFloat("tolerance_rel_l2", md["tolerance_rel_l2"]); err != nil {
		return nil, err
	}
	if !(c.Tolerance > 0) {
		return nil, invalid("tolerance_rel_l2 = %v, expected a positive number", c.Tolerance)
	}
	if s := md["bf16_variant_rel_l2"]; s != "" {
		if c.BF16Spread, err = parseFloat("bf16_variant_rel_l2", s); err != nil {
			return nil, err
		}
	}

	// Sizes come from a1q (M, K), topk_ids (M, topk) and w13 (E, 2I, K/2).
	as := r.shape("a1q", safetensors.U8, 2)
	ts := r.shape("topk_ids", safetensors.I32, 2)
	ws := r.shape("w13", safetensors.U8, 3)
	if r.err != nil {
		return nil, r.err
	}
	M, K, topk, E, N := as[0], as[1], ts[1], ws[0], ws[1]
	if err := moe.ValidateSizes(E, K, N/2); err != nil || N%2 != 0 {
		return nil, invalid("tensor shapes a1q %v, w13 %v: K and I must be positive multiples of 128", as, ws)
	}
	I := N / 2
	if ts[0] != M {
		return nil, invalid("tensor \"topk_ids\" has shape %v, expected (%d, topk)", ts, M)
	}
	if topk < 1 {
		return nil, invalid("tensor \"topk_ids\" has shape %v: topk must be at least 1", ts)
	}
	w := &c.Weights
	w.E, w.K, w.I = E, K, I
	c.X = get[float32](r, "x", safetensors.F32, M, K)
	c.Batch = moe.Batch{M: M, TopK: topk}
	c.Batch.A1q = get[uint8](r, "a1q", safetensors.U8, M, K)
	c.Batch.A1qScale = get[float32](r, "a1q_scale", safetensors.F32, M, K/moe.ActGroup)
	c.Batch.TopKIDs = get[int32](r, "topk_ids", safetensors.I32, M, topk)
	c.Batch.TopKWeights = get[float32](r, "topk_weights", safetensors.F32, M, topk)
	w.W13 = get[uint8](r, "w13", safetensors.U8, E, N, K/2)
	w.W13Scale = get[uint8](r, "w13_scale", safetensors.U8, E, N, K/moe.WeightBlock)
	w.W2 = get[uint8](r, "w2", safetensors.U8, E, K, I/2)
	w.W2Scale = get[uint8](r, "w2_scale", safetensors.U8, E, K, I/moe.WeightBlock)
	if f.Info("w13_bias") != nil || f.Info("w2_bias") != nil {
		w.W13Bias = get[float32](r, "w13_bias", safetensors.F32, E, N)
		w.W2Bias = get[float32](r, "w2_bias", safetensors.F32, E, K)
	}
	c.Expected = get[float32](r, "expected", safetensors.F32, M, K)
	c.ExpectedBF16 = get[float32](r, "expected_bf16", safetensors.F32, M, K)
	if f.Info("expert_map") != nil {
		info := f.Info("expert_map")
		if len(info.Shape) != 1 {
			return nil, invalid("tensor \"expert_map\" has shape %v, expected (num_global_experts)", info.Shape)
		}
		c.Config.ExpertMap = get[int32](r, "expert_map", safetensors.I32, info.Shape[0])
	}
	if r.err != nil {
		return nil, r.err
	}
	if s := md["num_global_experts"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, invalid("num_global_experts = %q, expected a positive integer", s)
		}
		c.Config.NumGlobalExperts = n
	}
	if err := w.Validate(); err != nil {
		return nil, invalid("%v", err)
	}
	if err := c.Config.Validate(E); err != nil {
		return nil, invalid("%v", err)
	}
	if err := c.Batch.Validate(w, &c.Config); err != nil {
		return nil, invalid("%v", err)
	}
	return c, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func parseFloat(field, s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, invalid("%s = %q, expected a finite number", field, s)
	}
	return v, nil
}

func readQuant(f *safetensors.File, name string) (*Quant, error) {
	r := &reader{f: f}
	q := &Quant{Name: name}
	ys := r.shape("y", safetensors.F32, 2)
	ws := r.shape("w", safetensors.F32, 2)
	if r.err != nil {
		return nil, r.err
	}
	q.R, q.C, q.WR, q.WC = ys[0], ys[1], ws[0], ws[1]
	if q.C%moe.ActGroup != 0 || q.WC%moe.WeightBlock != 0 {
		return nil, invalid("y has shape %v (columns must be a multiple of 128), w has shape %v (a multiple of 32)", ys, ws)
	}
	G := q.C / moe.ActGroup
	q.Y = get[float32](r, "y", safetensors.F32, q.R, q.C)
	q.QCeil = get[uint8](r, "q_ceil_ue8m0", safetensors.U8, q.R, q.C)
	q.SCeil = get[float32](r, "s_ceil_ue8m0", safetensors.F32, q.R, G)
	q.QFloat32 = get[uint8](r, "q_float32", safetensors.U8, q.R, q.C)
	q.SFloat32 = get[float32](r, "s_float32", safetensors.F32, q.R, G)
	q.PackedUE8M0 = get[int32](r, "packed_ue8m0", safetensors.I32, q.R, (G+3)/4)
	q.W = get[float32](r, "w", safetensors.F32, q.WR, q.WC)
	q.WPacked = get[uint8](r, "w_packed", safetensors.U8, q.WR, q.WC/2)
	q.WScales = get[uint8](r, "w_scales", safetensors.U8, q.WR, q.WC/moe.WeightBlock)
	q.WDequant = get[float32](r, "w_dequant", safetensors.F32, q.WR, q.WC)
	if r.err != nil {
		return nil, r.err
	}
	return q, nil
}
