package op

import (
	"fmt"
	"hash"
	"hash/fnv"
	"sync"

	"github.com/chewxy/hm"
	"github.com/fp4moe/fp4moe/moe"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Experts adds the expert layer to the graph of its inputs, for FP8 input:
//
//	a1q          (M, K)     Uint8    FP8 e4m3fn bit patterns of the tokens
//	a1q_scale    (M, K/128) Float32  one scale per token per 128 columns
//	topk_ids     (M, topk)  Int32    global expert ids in [-1, NumGlobalExperts)
//	topk_weights (M, topk)  Float32  router weights
//
// and returns the layer's output, (M, K) Float32 (see package moe for the formula). Dtypes and
// shapes are checked here; expert ids are checked when the graph runs.
func Experts(l *Layer, a1q, a1qScale, topkIDs, topkWeights *G.Node) (*G.Node, error) {
	if l == nil {
		return nil, fmt.Errorf("op: Experts: nil layer")
	}
	if _, err := checkNodes(l, []nodeSpec{
		{"a1q", a1q, tensor.Uint8, l.w.K},
		{"a1q_scale", a1qScale, tensor.Float32, l.w.K / moe.ActGroup},
		{"topk_ids", topkIDs, tensor.Int32, -1},
		{"topk_weights", topkWeights, tensor.Float32, -1},
	}); err != nil {
		return nil, err
	}
	return G.ApplyOp(&expertsOp{l: l}, a1q, a1qScale, topkIDs, topkWeights)
}

// ExpertsFloat adds the expert layer to the graph for float32 input x (M, K), which the layer
// quantizes itself (per token, groups of 128, the configuration's scale format; with
// ApplyRouterWeightOnInput, x is first multiplied by its router weight):
//
//	x            (M, K)    Float32
//	topk_ids     (M, topk) Int32
//	topk_weights (M, topk) Float32
//
// It returns the layer's output, (M, K) Float32.
func ExpertsFloat(l *Layer, x, topkIDs, topkWeights *G.Node) (*G.Node, error) {
	if l == nil {
		return nil, fmt.Errorf("op: ExpertsFloat: nil layer")
	}
	if _, err := checkNodes(l, []nodeSpec{
		{"x", x, tensor.Float32, l.w.K},
		{"topk_ids", topkIDs, tensor.Int32, -1},
		{"topk_weights", topkWeights, tensor.Float32, -1},
	}); err != nil {
		return nil, err
	}
	return G.ApplyOp(&expertsOp{l: l, float: true}, x, topkIDs, topkWeights)
}

// nodeSpec is the expected dtype and column count (-1: topk, shared by the routing tensors) of
// a rank-2 input whose first dimension is M.
type nodeSpec struct {
	name string
	n    *G.Node
	dt   tensor.Dtype
	cols int
}

// checkNodes checks the inputs' dtypes and shapes and returns M.
func checkNodes(l *Layer, specs []nodeSpec) (int, error) {
	m, topk := -1, -1
	for _, s := range specs {
		if s.n == nil {
			return 0, fmt.Errorf("op: %s is nil", s.name)
		}
		if s.n.Dtype() != s.dt {
			return 0, fmt.Errorf("op: %s has dtype %v, expected %v", s.name, s.n.Dtype(), s.dt)
		}
		shape := s.n.Shape()
		if len(shape) != 2 {
			return 0, &moe.ShapeError{Tensor: s.name, Got: shape, Want: []int{m, s.cols}, Reason: "a matrix"}
		}
		if m < 0 {
			m = shape[0]
		}
		cols := s.cols
		if cols < 0 {
			if topk < 0 {
				topk = shape[1]
			}
			cols = topk
		}
		if shape[0] != m || shape[1] != cols {
			return 0, &moe.ShapeError{Tensor: s.name, Got: shape, Want: []int{m, cols}}
		}
	}
	if topk < 1 {
		return 0, &moe.ShapeError{Tensor: "topk_ids", Got: []int{m, topk}, Want: []int{m, 1}, Reason: "topk must be at least 1"}
	}
	if l.cfg.ApplyRouterWeightOnInput && topk != 1 {
		return 0, &moe.ConfigError{Msg: fmt.Sprintf("apply_router_weight_on_input needs topk == 1, got topk = %d", topk)}
	}
	return m, nil
}

// expertsOp is the Gorgonia op of the expert layer.
type expertsOp struct {
	l     *Layer
	float bool // input is float32 x instead of a1q and a1q_scale

	mu   sync.Mutex
	last *tensor.Dense // the output of the last run, with the layer's WithReusedOutput
}

var (
	_ G.Op              = (*expertsOp)(nil)
	_ G.UsePreallocDoer = (*expertsOp)(nil)
)

func (o *expertsOp) Arity() int {
	if o.float {
		return 3
	}
	return 4
}

func (o *expertsOp) Type() hm.Type {
	f32 := G.TensorType{Dims: 2, Of: tensor.Float32}
	i32 := G.TensorType{Dims: 2, Of: tensor.Int32}
	if o.float {
		return hm.NewFnType(f32, i32, f32, f32)
	}
	u8 := G.TensorType{Dims: 2, Of: tensor.Uint8}
	return hm.NewFnType(u8, f32, i32, f32, f32)
}

func (o *expertsOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	if len(in) != o.Arity() {
		return nil, fmt.Errorf("op: %v takes %d inputs, got %d", o, o.Arity(), len(in))
	}
	m, err := in[0].DimSize(0)
	if err != nil {
		return nil, err
	}
	return tensor.Shape{m, o.l.w.K}, nil
}

func (o *expertsOp) Do(in ...G.Value) (G.Value, error) {
	return o.run(nil, in)
}

func (o *expertsOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	return o.run(prealloc, in)
}

// run converts the values to a batch, validates it and runs the layer. The output is
// allocated (or taken from prealloc) only after the inputs passed validation.
func (o *expertsOp) run(prealloc G.Value, in []G.Value) (G.Value, error) {
	if len(in) != o.Arity() {
		return nil, fmt.Errorf("op: %v takes %d inputs, got %d", o, o.Arity(), len(in))
	}
	K := o.l.w.K
	var b moe.Batch
	var err error
	ids, weights := in[len(in)-2], in[len(in)-1]
	if b.TopKIDs, err = values[int32]("topk_ids", ids, tensor.Int32); err != nil {
		return nil, err
	}
	if b.TopKWeights, err = values[float32]("topk_weights", weights, tensor.Float32); err != nil {
		return nil, err
	}
	shape := ids.Shape()
	if len(shape) != 2 {
		return nil, &moe.ShapeError{Tensor: "topk_ids", Got: shape, Want: []int{-1, -1}, Reason: "a matrix"}
	}
	b.M, b.TopK = shape[0], shape[1]
	if o.float {
		if b.X, err = values[float32]("x", in[0], tensor.Float32); err != nil {
			return nil, err
		}
	} else {
		if b.A1q, err = values[uint8]("a1q", in[0], tensor.Uint8); err != nil {
			return nil, err
		}
		if b.A1qScale, err = values[float32]("a1q_scale", in[1], tensor.Float32); err != nil {
			return nil, err
		}
	}
	if err := b.Validate(o.l.w, &o.l.cfg); err != nil {
		return nil, err
	}
	usable := func(v G.Value) (*tensor.Dense, bool) {
		d, ok := v.(*tensor.Dense)
		return d, ok && d != nil && d.Dtype() == tensor.Float32 && d.Shape().Eq(tensor.Shape{b.M, K}) && !d.RequiresIterator()
	}
	out, ok := usable(prealloc)
	if !ok && o.l.reuseOutput {
		o.mu.Lock()
		if out, ok = usable(o.last); !ok {
			out, ok = tensor.New(tensor.Of(tensor.Float32), tensor.WithShape(b.M, K)), true
			o.last = out
		}
		o.mu.Unlock()
	}
	if !ok {
		out = tensor.New(tensor.Of(tensor.Float32), tensor.WithShape(b.M, K))
	}
	if err := o.l.forward(out.Data().([]float32)[:b.M*K], &b); err != nil {
		return nil, err
	}
	return out, nil
}

// values returns the elements of a contiguous row-major copy of v, checking its dtype.
func values[T any](name string, v G.Value, dt tensor.Dtype) ([]T, error) {
	d, ok := v.(*tensor.Dense)
	if !ok {
		return nil, fmt.Errorf("op: %s is a %T, expected a *tensor.Dense", name, v)
	}
	if d.Dtype() != dt {
		return nil, fmt.Errorf("op: %s has dtype %v, expected %v", name, d.Dtype(), dt)
	}
	if d.RequiresIterator() {
		d = d.Materialize().(*tensor.Dense)
	}
	if d.Shape().IsScalar() {
		return nil, &moe.ShapeError{Tensor: name, Got: []int{}, Want: []int{-1, -1}, Reason: "a matrix"}
	}
	s, ok := d.Data().([]T)
	if !ok {
		return nil, fmt.Errorf("op: %s holds %T", name, d.Data())
	}
	return s[:d.Shape().TotalSize()], nil
}

func (o *expertsOp) ReturnsPtr() bool     { return false }
func (o *expertsOp) CallsExtern() bool    { return false }
func (o *expertsOp) OverwritesInput() int { return -1 }

func (o *expertsOp) WriteHash(h hash.Hash) {
	fmt.Fprintf(h, "fp4moe.Experts{float=%v,reuse=%v,%s}", o.float, o.l.reuseOutput, o.l.digest)
}

func (o *expertsOp) Hashcode() uint32 {
	h := fnv.New32a()
	o.WriteHash(h)
	return h.Sum32()
}

func (o *expertsOp) String() string {
	in := "fp8"
	if o.float {
		in = "f32"
	}
	w := o.l.w
	return fmt.Sprintf("Experts[%s,E=%d,K=%d,I=%d,%v,%s]", in, w.E, w.K, w.I, o.l.cfg.Activation, o.l.backend.Name())
}
