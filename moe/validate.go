package moe

import (
	"fmt"
	"math"
	"strings"
)

// ShapeError reports a tensor whose shape (or length) differs from what the layer expects.
type ShapeError struct {
	Tensor string // the tensor's name, e.g. "w13_scale"
	Got    []int  // its shape, or its length as a one-element shape
	Want   []int  // the expected shape
	Reason string // optional detail
}

func (e *ShapeError) Error() string {
	s := fmt.Sprintf("moe: %s has shape %s, expected %s", e.Tensor, shapeString(e.Got), shapeString(e.Want))
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	return s
}

// ValueError reports an element of a tensor outside its valid range.
type ValueError struct {
	Tensor string // the tensor's name
	Index  []int  // the element's index
	Value  string // its value
	Valid  string // the valid range
}

func (e *ValueError) Error() string {
	idx := make([]string, len(e.Index))
	for i, v := range e.Index {
		idx[i] = fmt.Sprint(v)
	}
	return fmt.Sprintf("moe: %s[%s] = %s, outside %s", e.Tensor, strings.Join(idx, ","), e.Value, e.Valid)
}

// ConfigError reports an invalid configuration or size.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return "moe: " + e.Msg }

func shapeString(s []int) string {
	p := make([]string, len(s))
	for i, v := range s {
		p[i] = fmt.Sprint(v)
	}
	return "(" + strings.Join(p, ", ") + ")"
}

func prod(s []int) int {
	n := 1
	for _, v := range s {
		n *= v
	}
	return n
}

// checkLen reports a ShapeError when a flat slice of n elements does not hold an (a, b)
// matrix; checkLen3 does the same for (a, b, c). They take fixed arguments so that the checks
// of every Forward allocate nothing.
func checkLen(name string, n, a, b int) error {
	if n != a*b {
		return lenError(name, n, []int{a, b})
	}
	return nil
}

func checkLen3(name string, n, a, b, c int) error {
	if n != a*b*c {
		return lenError(name, n, []int{a, b, c})
	}
	return nil
}

func lenError(name string, n int, want []int) error {
	return &ShapeError{Tensor: name, Got: []int{n}, Want: want, Reason: fmt.Sprintf("%d elements, expected %d", n, prod(want))}
}

// maxDim bounds every dimension so that no size product can overflow an int.
const maxDim = 1 << 24

// ValidateSizes checks the layer sizes: E >= 1, K and I positive multiples of 128.
func ValidateSizes(e, k, i int) error {
	switch {
	case e < 1 || e > maxDim:
		return &ConfigError{fmt.Sprintf("number of experts E = %d, expected 1 ... %d", e, maxDim)}
	case k <= 0 || k%ActGroup != 0 || k > maxDim:
		return &ConfigError{fmt.Sprintf("hidden size K = %d is not a positive multiple of %d (pad it, see docs/numerics.md)", k, ActGroup)}
	case i <= 0 || i%ActGroup != 0 || i > maxDim:
		return &ConfigError{fmt.Sprintf("intermediate size I = %d is not a positive multiple of %d (pad it, see docs/numerics.md)", i, ActGroup)}
	}
	return nil
}

// Validate checks the sizes and the length of every weight tensor.
func (w *Weights) Validate() error {
	if w == nil {
		return &ConfigError{"nil weights"}
	}
	if err := ValidateSizes(w.E, w.K, w.I); err != nil {
		return err
	}
	E, K, I := w.E, w.K, w.I
	for _, c := range []struct {
		name    string
		n       int
		a, b, c int
	}{
		{"w13", len(w.W13), E, 2 * I, K / 2},
		{"w13_scale", len(w.W13Scale), E, 2 * I, K / WeightBlock},
		{"w2", len(w.W2), E, K, I / 2},
		{"w2_scale", len(w.W2Scale), E, K, I / WeightBlock},
	} {
		if err := checkLen3(c.name, c.n, c.a, c.b, c.c); err != nil {
			return err
		}
	}
	if w.W13Bias != nil {
		if err := checkLen("w13_bias", len(w.W13Bias), E, 2*I); err != nil {
			return err
		}
	}
	if w.W2Bias != nil {
		if err := checkLen("w2_bias", len(w.W2Bias), E, K); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the configuration against a layer of e local experts.
func (c *Config) Validate(e int) error {
	switch c.Activation {
	case SiLU, SwiGLUStep, SwiGLUOAI:
	default:
		return &ConfigError{fmt.Sprintf("unknown activation %v", c.Activation)}
	}
	switch c.ScaleFormat {
	case CeilUE8M0, Float32:
	default:
		return &ConfigError{fmt.Sprintf("unknown scale format %v", c.ScaleFormat)}
	}
	if c.Clamp && (math.IsNaN(float64(c.ClampLimit)) || c.ClampLimit < 0) {
		return &ConfigError{fmt.Sprintf("clamp limit %v, expected a non-negative number", c.ClampLimit)}
	}
	for _, v := range []float32{c.Alpha, c.Beta, c.ClampLimit} {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return &ConfigError{fmt.Sprintf("alpha %v, beta %v and clamp limit %v must be finite", c.Alpha, c.Beta, c.ClampLimit)}
		}
	}
	if c.NumGlobalExperts < 0 || c.NumGlobalExperts > maxDim {
		return &ConfigError{fmt.Sprintf("number of global experts %d, expected 0 ... %d", c.NumGlobalExperts, maxDim)}
	}
	if c.ExpertMap != nil {
		if c.NumGlobalExperts != 0 && len(c.ExpertMap) != c.NumGlobalExperts {
			return &ShapeError{Tensor: "expert_map", Got: []int{len(c.ExpertMap)}, Want: []int{c.NumGlobalExperts}, Reason: "one entry per global expert"}
		}
		if len(c.ExpertMap) == 0 {
			return &ShapeError{Tensor: "expert_map", Got: []int{0}, Want: []int{c.GlobalExperts(e)}, Reason: "an expert map needs one entry per global expert"}
		}
		for g, l := range c.ExpertMap {
			if l < -1 || int(l) >= e {
				return &ValueError{Tensor: "expert_map", Index: []int{g}, Value: fmt.Sprint(l), Valid: fmt.Sprintf("[-1, %d) (-1 or a local expert index)", e)}
			}
		}
	} else if c.NumGlobalExperts != 0 && c.NumGlobalExperts != e {
		return &ConfigError{fmt.Sprintf("%d global experts but %d local experts and no expert map", c.NumGlobalExperts, e)}
	}
	return nil
}

// Validate checks a batch against the layer's weights and configuration: every length, the
// topk == 1 rule of ApplyRouterWeightOnInput, and every id in [-1, NumGlobalExperts).
func (b *Batch) Validate(w *Weights, c *Config) error {
	if b == nil {
		return &ConfigError{"nil batch"}
	}
	if b.M < 0 || b.M > maxDim {
		return &ConfigError{fmt.Sprintf("M = %d tokens, expected 0 ... %d", b.M, maxDim)}
	}
	if b.TopK < 1 || b.TopK > 1024 {
		return &ConfigError{fmt.Sprintf("topk = %d, expected 1 ... 1024", b.TopK)}
	}
	if c.ApplyRouterWeightOnInput && b.TopK != 1 {
		return &ConfigError{fmt.Sprintf("apply_router_weight_on_input needs topk == 1, got topk = %d", b.TopK)}
	}
	M, K := b.M, w.K
	if b.X != nil {
		if err := checkLen("x", len(b.X), M, K); err != nil {
			return err
		}
	} else {
		if err := checkLen("a1q", len(b.A1q), M, K); err != nil {
			return err
		}
		if err := checkLen("a1q_scale", len(b.A1qScale), M, K/ActGroup); err != nil {
			return err
		}
	}
	if err := checkLen("topk_ids", len(b.TopKIDs), M, b.TopK); err != nil {
		return err
	}
	if err := checkLen("topk_weights", len(b.TopKWeights), M, b.TopK); err != nil {
		return err
	}
	eg := int32(c.GlobalExperts(w.E))
	for i, id := range b.TopKIDs {
		if id < -1 || id >= eg {
			return &ValueError{Tensor: "topk_ids", Index: []int{i / b.TopK, i % b.TopK}, Value: fmt.Sprint(id),
				Valid: fmt.Sprintf("[-1, %d) (-1 = no expert, else a global expert id)", eg)}
		}
	}
	return nil
}

// Check validates a whole call: weights, configuration, batch and output length.
func Check(out []float32, b *Batch, w *Weights, c *Config) error {
	if err := w.Validate(); err != nil {
		return err
	}
	if err := c.Validate(w.E); err != nil {
		return err
	}
	if err := b.Validate(w, c); err != nil {
		return err
	}
	return checkLen("output", len(out), b.M, w.K)
}
