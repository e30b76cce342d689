package op

import (
	"fmt"
	"hash"
	"hash/fnv"
	"math"
	"sort"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// RoutingMode selects how router logits become top-k weights.
type RoutingMode uint8

const (
	// SoftmaxThenTopK takes the softmax over all experts, then the k largest probabilities
	// (Mixtral, Qwen3-MoE); with Renormalize they are divided by their sum.
	SoftmaxThenTopK RoutingMode = iota
	// TopKThenSoftmax takes the k largest logits, then the softmax over those k (GPT-OSS).
	TopKThenSoftmax
)

func (m RoutingMode) String() string {
	switch m {
	case SoftmaxThenTopK:
		return "softmax-topk"
	case TopKThenSoftmax:
		return "topk-softmax"
	}
	return fmt.Sprintf("RoutingMode(%d)", uint8(m))
}

// Routing configures Route.
type Routing struct {
	// TopK experts per token, 1 ... number of experts.
	TopK int
	Mode RoutingMode
	// Renormalize divides the selected probabilities by their sum (SoftmaxThenTopK only; the
	// weights of TopKThenSoftmax already sum to one).
	Renormalize bool
}

// Route adds routing to the graph of logits (M, E) Float32 (E experts, ids are column
// indices) and returns two nodes: ids (M, topk) Int32 and weights (M, topk) Float32, ordered
// by decreasing logit; equal logits are taken in increasing expert order, and NaN ranks below
// every number.
//
// Gorgonia ops have one output, so the two results are two ops of the same logits, each a
// pure function: both select the same experts because the selection is deterministic, and the
// selection costs O(M·E), nothing beside the experts.
func Route(logits *G.Node, r Routing) (ids, weights *G.Node, err error) {
	if logits == nil {
		return nil, nil, fmt.Errorf("op: Route: nil logits")
	}
	if logits.Dtype() != tensor.Float32 {
		return nil, nil, fmt.Errorf("op: router logits have dtype %v, expected %v", logits.Dtype(), tensor.Float32)
	}
	shape := logits.Shape()
	if len(shape) != 2 {
		return nil, nil, fmt.Errorf("op: router logits have shape %v, expected (M, experts)", shape)
	}
	if r.TopK < 1 || r.TopK > shape[1] {
		return nil, nil, fmt.Errorf("op: topk = %d, expected 1 ... %d (the number of experts)", r.TopK, shape[1])
	}
	switch r.Mode {
	case SoftmaxThenTopK, TopKThenSoftmax:
	default:
		return nil, nil, fmt.Errorf("op: unknown routing mode %v", r.Mode)
	}
	if ids, err = G.ApplyOp(&routeOp{r: r, ids: true}, logits); err != nil {
		return nil, nil, err
	}
	if weights, err = G.ApplyOp(&routeOp{r: r}, logits); err != nil {
		return nil, nil, err
	}
	return ids, weights, nil
}

// Select computes the routing of one row of logits into ids and weights (len topk each), as
// Route does.
func (r Routing) Select(ids []int32, weights []float32, logits []float32) {
	k := len(ids)
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	less := func(a, b float32) bool { // a ranks above b
		if a != a {
			return false
		}
		return b != b || a > b
	}
	sort.SliceStable(idx, func(i, j int) bool { return less(logits[idx[i]], logits[idx[j]]) })
	for i := range k {
		ids[i] = int32(idx[i])
	}
	switch r.Mode {
	case SoftmaxThenTopK:
		mx := math.Inf(-1)
		for _, v := range logits {
			mx = math.Max(mx, float64(v))
		}
		sum := 0.0
		for _, v := range logits {
			sum += math.Exp(float64(v) - mx)
		}
		sel := 0.0
		p := make([]float64, k)
		for i := range k {
			p[i] = math.Exp(float64(logits[idx[i]])-mx) / sum
			sel += p[i]
		}
		for i := range k {
			if r.Renormalize {
				p[i] /= sel
			}
			weights[i] = float32(p[i])
		}
	case TopKThenSoftmax:
		mx := float64(logits[idx[0]])
		sum := 0.0
		for i := range k {
			sum += math.Exp(float64(logits[idx[i]]) - mx)
		}
		for i := range k {
			weights[i] = float32(math.Exp(float64(logits[idx[i]])-mx) / sum)
		}
	}
}

// routeOp computes one of the two results of Route.
type routeOp struct {
	r   Routing
	ids bool // the ids result, else the weights
}

var _ G.Op = (*routeOp)(nil)

func (o *routeOp) Arity() int { return 1 }

func (o *routeOp) Type() hm.Type {
	out := G.TensorType{Dims: 2, Of: tensor.Float32}
	if o.ids {
		out = G.TensorType{Dims: 2, Of: tensor.Int32}
	}
	return hm.NewFnType(G.TensorType{Dims: 2, Of: tensor.Float32}, out)
}

func (o *routeOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	if len(in) != 1 {
		return nil, fmt.Errorf("op: %v takes 1 input, got %d", o, len(in))
	}
	m, err := in[0].DimSize(0)
	if err != nil {
		return nil, err
	}
	return tensor.Shape{m, o.r.TopK}, nil
}

func (o *routeOp) Do(in ...G.Value) (G.Value, error) {
	if len(in) != 1 {
		return nil, fmt.Errorf("op: %v takes 1 input, got %d", o, len(in))
	}
	logits, err := values[float32]("router logits", in[0], tensor.Float32)
	if err != nil {
		return nil, err
	}
	shape := in[0].Shape()
	if len(shape) != 2 || shape[1] < o.r.TopK {
		return nil, fmt.Errorf("op: router logits have shape %v, expected (M, >= %d)", shape, o.r.TopK)
	}
	m, e, k := shape[0], shape[1], o.r.TopK
	ids := make([]int32, m*k)
	w := make([]float32, m*k)
	for t := range m {
		o.r.Select(ids[t*k:(t+1)*k], w[t*k:(t+1)*k], logits[t*e:(t+1)*e])
	}
	if o.ids {
		return tensor.New(tensor.WithShape(m, k), tensor.WithBacking(ids)), nil
	}
	return tensor.New(tensor.WithShape(m, k), tensor.WithBacking(w)), nil
}

func (o *routeOp) ReturnsPtr() bool     { return false }
func (o *routeOp) CallsExtern() bool    { return false }
func (o *routeOp) OverwritesInput() int { return -1 }

func (o *routeOp) WriteHash(h hash.Hash) {
	fmt.Fprintf(h, "fp4moe.Route{topk=%d,mode=%v,renorm=%v,ids=%v}", o.r.TopK, o.r.Mode, o.r.Renormalize, o.ids)
}

func (o *routeOp) Hashcode() uint32 {
	h := fnv.New32a()
	o.WriteHash(h)
	return h.Sum32()
}

func (o *routeOp) String() string {
	what := "weights"
	if o.ids {
		what = "ids"
	}
	return fmt.Sprintf("Route[%s,top%d,%v]", what, o.r.TopK, o.r.Mode)
}
