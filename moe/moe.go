// Package moe states the contract of the fused FP8 × MXFP4 Mixture-of-Experts expert layer:
// the tensors of a call, their shapes, dtypes and layouts, the configuration, the validation
// every implementation performs before it computes anything, and the Backend interface that
// the pure-Go implementation (package native) and the CUDA implementation (package cudaops)
// both satisfy.
//
// For M tokens with hidden size K, intermediate size I, E local experts and topk experts per
// token, the layer computes
//
//	out[t] = Σ_k  w[t,k] · ( W2[e] · q( act( W13[e] · a[t] + b13[e] ) ) + b2[e] ),  e = map(ids[t,k]) ≥ 0
//
// where a[t] is the FP8 (e4m3fn) row of token t times its per-128-column scales, W13 and W2
// are MXFP4 (E2M1 values with one E8M0 scale per 32 K-elements), act is a SwiGLU-family
// activation of the gate half and the up half of GEMM1's output, and q(·) rounds the activation
// to FP8 with one power-of-two (or float32) scale per 128 columns. docs/numerics.md gives the
// precise rules; the stages are Permute, GEMM1, Activation + requant, GEMM2 and Reduce.
//
// Nothing in this package computes: it has no dependencies and is imported by every backend.
package moe

import (
	"fmt"
	"time"
)

// Block sizes fixed by the formats.
const (
	// ActGroup is the number of consecutive K-elements (or I-elements after GEMM1) that share
	// one FP8 activation scale.
	ActGroup = 128
	// WeightBlock is the number of consecutive K-elements of a weight row that share one E8M0
	// scale (the OCP MX block).
	WeightBlock = 32
	// FP8Max is the largest finite magnitude of FP8 e4m3fn.
	FP8Max = 448
)

// Activation selects the SwiGLU-family function applied to GEMM1's output h, split into the
// gate half g = h[:, :I] and the up half u = h[:, I:].
type Activation uint8

const (
	// SiLU computes y = g·sigmoid(g)·u, after g = min(g, L) and u = clamp(u, -L, L) when a clamp
	// limit L is set.
	SiLU Activation = iota
	// SwiGLUStep computes y = min(g·sigmoid(g), 7) · clamp(u, -7, 7).
	SwiGLUStep
	// SwiGLUOAI (GPT-OSS) computes y = (u + beta) · g · sigmoid(alpha·g) after g = min(g, L)
	// and u = clamp(u, -L, L); L is 7 when no clamp limit is set.
	SwiGLUOAI
)

// String returns the activation's name as case files spell it.
func (a Activation) String() string {
	switch a {
	case SiLU:
		return "silu"
	case SwiGLUStep:
		return "swiglustep"
	case SwiGLUOAI:
		return "swigluoai"
	}
	return fmt.Sprintf("Activation(%d)", uint8(a))
}

// ParseActivation parses "silu", "swiglustep" or "swigluoai".
func ParseActivation(s string) (Activation, error) {
	switch s {
	case "silu":
		return SiLU, nil
	case "swiglustep":
		return SwiGLUStep, nil
	case "swigluoai":
		return SwiGLUOAI, nil
	}
	return 0, fmt.Errorf("moe: unknown activation %q (want silu, swiglustep or swigluoai)", s)
}

// ScaleFormat selects how per-group FP8 scales are chosen: the scale of a group is
// s = max(amax, 1e-10) / 448, kept as is (Float32) or rounded up to a power of two (CeilUE8M0).
type ScaleFormat uint8

const (
	// CeilUE8M0 rounds each scale up to the smallest power of two >= s (the default, and what
	// Hopper FP8 kernels use: the scale multiplication is then exact).
	CeilUE8M0 ScaleFormat = iota
	// Float32 keeps s as computed in float32.
	Float32
)

// String returns the format's name as case files spell it.
func (f ScaleFormat) String() string {
	switch f {
	case CeilUE8M0:
		return "ceil_ue8m0"
	case Float32:
		return "float32"
	}
	return fmt.Sprintf("ScaleFormat(%d)", uint8(f))
}

// ParseScaleFormat parses "ceil_ue8m0" or "float32".
func ParseScaleFormat(s string) (ScaleFormat, error) {
	switch s {
	case "ceil_ue8m0":
		return CeilUE8M0, nil
	case "float32":
		return Float32, nil
	}
	return 0, fmt.Errorf("moe: unknown scale format %q (want ceil_ue8m0 or float32)", s)
}

// Config is the configuration of one layer: everything but the weights and the tokens.
// The zero value is SiLU without clamp and ceil_ue8m0 scales, with all experts local.
type Config struct {
	// Activation between the two GEMMs.
	Activation Activation
	// Clamp enables the clamp limit ClampLimit for SiLU and SwiGLUOAI (SwiGLUStep always clamps
	// at 7). For SwiGLUOAI, Clamp false means a limit of 7.
	Clamp      bool
	ClampLimit float32
	// Alpha and Beta of SwiGLUOAI (GPT-OSS uses 1.702 and 1); ignored by the other activations.
	Alpha, Beta float32
	// ScaleFormat of the FP8 requant between the GEMMs, and of the input quantization when the
	// layer quantizes float32 input itself.
	ScaleFormat ScaleFormat
	// ApplyRouterWeightOnInput multiplies each token's input by its router weight before
	// quantization and reduces with weight 1. Only valid with topk == 1.
	ApplyRouterWeightOnInput bool
	// ExpertMap, when not nil, maps each of NumGlobalExperts global expert ids to a local expert
	// index in [0, E) or to -1 (the expert lives elsewhere: its (token, k) pairs are skipped).
	ExpertMap []int32
	// NumGlobalExperts is the range of valid ids in topk_ids: [0, NumGlobalExperts). Zero means
	// len(ExpertMap) when ExpertMap is set, else the number of local experts.
	NumGlobalExperts int
}

// DefaultAlpha, DefaultBeta and DefaultLimit are GPT-OSS's SwiGLU constants.
const (
	DefaultAlpha = 1.702
	DefaultBeta  = 1
	DefaultLimit = 7
)

// GPTOSSConfig returns the configuration of GPT-OSS's experts: SwiGLUOAI with alpha 1.702,
// beta 1 and clamp limit 7, ceil_ue8m0 scales.
func GPTOSSConfig() Config {
	return Config{Activation: SwiGLUOAI, Clamp: true, ClampLimit: DefaultLimit, Alpha: DefaultAlpha, Beta: DefaultBeta}
}

// Limit returns the clamp limit in effect and whether one applies.
func (c *Config) Limit() (float32, bool) {
	switch c.Activation {
	case SwiGLUStep:
		return 7, true
	case SwiGLUOAI:
		if !c.Clamp {
			return DefaultLimit, true
		}
	}
	return c.ClampLimit, c.Clamp
}

// GlobalExperts returns the number of valid global expert ids for a layer with e local experts.
func (c *Config) GlobalExperts(e int) int {
	switch {
	case c.NumGlobalExperts > 0:
		return c.NumGlobalExperts
	case c.ExpertMap != nil:
		return len(c.ExpertMap)
	}
	return e
}

// LocalExpert maps a global id to a local expert index, or -1 when the pair is skipped (id -1,
// or an expert that lives elsewhere). The id must have passed Batch validation.
func (c *Config) LocalExpert(id int32) int {
	if id < 0 {
		return -1
	}
	if c.ExpertMap != nil {
		return int(c.ExpertMap[id])
	}
	return int(id)
}

// Weights holds the expert weights of one layer in host memory, in the layouts below. All
// slices are row-major. Backends read them and never write them.
type Weights struct {
	// E local experts, hidden size K and intermediate size I; K and I are multiples of 128.
	E, K, I int
	// W13 (E, 2I, K/2) packed E2M1: rows [0, I) are the gate projection, rows [I, 2I) the up
	// projection. Byte j of a row holds element 2j in its low nibble and 2j+1 in its high nibble.
	W13 []uint8
	// W13Scale (E, 2I, K/32) E8M0: the scale of elements [32b, 32b+32) of a row is 2^(s-127).
	W13Scale []uint8
	// W2 (E, K, I/2) packed E2M1, same nibble order.
	W2 []uint8
	// W2Scale (E, K, I/32) E8M0.
	W2Scale []uint8
	// W13Bias (E, 2I) float32, optional: added to GEMM1's output.
	W13Bias []float32
	// W2Bias (E, K) float32, optional: added to GEMM2's output, before the router weight.
	W2Bias []float32
}

// Batch holds the per-call tensors: the tokens and their routing.
type Batch struct {
	// M tokens, each routed to TopK experts.
	M, TopK int
	// X (M, K) float32: when not nil, the layer quantizes it itself (per-token groups of 128,
	// Config.ScaleFormat) and A1q and A1qScale are ignored.
	X []float32
	// A1q (M, K) FP8 e4m3fn bit patterns, and A1qScale (M, K/128) float32: the quantized input,
	// used when X is nil. With Config.ApplyRouterWeightOnInput the router weight must already be
	// applied.
	A1q      []uint8
	A1qScale []float32
	// TopKIDs (M, TopK) int32 global expert ids in [-1, NumGlobalExperts); -1 means no expert.
	TopKIDs []int32
	// TopKWeights (M, TopK) float32 router weights.
	TopKWeights []float32
}

// Backend creates layers. Implementations: native.Backend (pure Go, every machine) and
// cudaops.Backend (Hopper GPUs, build tag cuda).
type Backend interface {
	// Name identifies the backend ("native", "cuda").
	Name() string
	// NewLayer validates w and cfg and returns a layer bound to them. The backend may copy or
	// transform the weights (a GPU backend uploads them); w must not change while the layer is
	// in use.
	NewLayer(w *Weights, cfg Config) (Layer, error)
}

// Layer runs the expert layer on batches. A Layer is not safe for concurrent use: it owns a
// workspace that it reuses from call to call.
type Layer interface {
	// Forward validates b and writes the layer's output, (M, K) float32, to out. On error out
	// is untouched.
	Forward(out []float32, b *Batch) error
	// Close releases the layer's resources. The layer must not be used afterwards.
	Close() error
}

// StageTimes is the wall time of each stage of one Forward, for layers that record it
// (native.Layer does; see StageTimer).
type StageTimes struct {
	Prepare, Permute, GEMM1, Activation, GEMM2, Reduce time.Duration
}

// Total returns the sum of the stages.
func (s StageTimes) Total() time.Duration {
	return s.Prepare + s.Permute + s.GEMM1 + s.Activation + s.GEMM2 + s.Reduce
}

// StageTimer is implemented by layers that time their stages.
type StageTimer interface {
	StageTimes() StageTimes
}

// StageTimeSwitch is implemented by layers that time their stages only when asked
// (cudaops.Layer, whose timing events cost device time).
type StageTimeSwitch interface {
	SetStageTimes(on bool)
	RecordsStageTimes() bool
}

// AskStageTimes switches on the stage timing of l where it times its stages only when asked (a
// StageTimeSwitch); other layers are left as they are.
func AskStageTimes(l Layer) {
	if sw, ok := l.(StageTimeSwitch); ok {
		sw.SetStageTimes(true)
	}
}

// RecordedStageTimes returns l's stage times of its last Forward and true when l records them:
// it is a StageTimer and, if a StageTimeSwitch, switched on. Else zero and false (also for a
// nil l).
func RecordedStageTimes(l Layer) (StageTimes, bool) {
	if sw, ok := l.(StageTimeSwitch); ok && !sw.RecordsStageTimes() {
		return StageTimes{}, false
	}
	if st, ok := l.(StageTimer); ok {
		return st.StageTimes(), true
	}
	return StageTimes{}, false
}

// Slice returns tokens [t0, t1) of a batch whose rows have k columns, sharing its memory.
func (b *Batch) Slice(k, t0, t1 int) *Batch {
	s := &Batch{M: t1 - t0, TopK: b.TopK,
		TopKIDs: b.TopKIDs[t0*b.TopK : t1*b.TopK], TopKWeights: b.TopKWeights[t0*b.TopK : t1*b.TopK]}
	if b.X != nil {
		s.X = b.X[t0*k : t1*k]
	}
	if b.A1q != nil {
		s.A1q = b.A1q[t0*k : t1*k]
		s.A1qScale = b.A1qScale[t0*k/ActGroup : t1*k/ActGroup]
	}
	return s
}
