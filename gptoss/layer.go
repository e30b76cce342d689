package gptoss

import (
	"fmt"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/op"
	"github.com/fp4moe/fp4moe/safetensors"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// DefaultTopK is GPT-OSS's experts per token, used when config.json does not say.
const DefaultTopK = 4

// Layer is one GPT-OSS MoE block: its experts in the layer's contract (padded sizes) and its
// router. Close it when done.
type Layer struct {
	// Index is the layer's index in the checkpoint.
	Index int
	// Hidden and Intermediate are the model's sizes (2880 for GPT-OSS); Weights.K and Weights.I
	// are the same rounded up to multiples of 128.
	Hidden, Intermediate int
	// Experts and TopK: the number of experts and of experts per token.
	Experts, TopK int
	// Weights holds the experts de-interleaved (gate rows, then up rows) and padded.
	Weights moe.Weights
	// Config is GPT-OSS's activation: swigluoai, alpha 1.702, beta 1, clamp limit from
	// config.json (default 7).
	Config moe.Config
	// RouterWeight (Experts, Hidden) and RouterBias (Experts), converted to float32.
	RouterWeight, RouterBias []float32
	// Backend runs the experts (nil: op.DefaultBackend()). Set it before the first Forward or
	// Block.
	Backend moe.Backend
	// StageTimes asks the backend to time the expert layer's stages (StageTimes,
	// GraphStageTimes), where it does so only when asked: the CUDA backend's timing events cost
	// device time (cudaops.Options.StageTimes). Set it before the first Forward or Block.
	StageTimes bool

	direct moe.Layer
	graph  *op.Layer
}

// LoadLayer reads layer n's MoE tensors (and nothing else) and converts them.
func (c *Checkpoint) LoadLayer(n int) (*Layer, error) {
	if n < 0 || n >= c.Layers || !c.layers[n] {
		return nil, fmt.Errorf("gptoss: layer %d out of range: the checkpoint has MoE layers 0 ... %d", n, c.Layers-1)
	}
	names := c.Layout.Names(n)
	f1b, t1b, err := c.info(names.W1Blocks, 4, safetensors.U8)
	if err != nil {
		return nil, err
	}
	E, N, nb1 := t1b.Shape[0], t1b.Shape[1], t1b.Shape[2]
	if t1b.Shape[3] != 16 || N%2 != 0 || E < 1 || nb1 < 1 {
		return nil, fmt.Errorf("%w: tensor %q has shape %v, expected (experts, 2·intermediate, hidden/32, 16)", ErrFormat, names.W1Blocks, t1b.Shape)
	}
	K, I := nb1*moe.WeightBlock, N/2
	if I%moe.WeightBlock != 0 {
		return nil, fmt.Errorf("%w: intermediate size %d is not a multiple of 32", ErrFormat, I)
	}
	want := map[string][]int{
		names.W1Scales: {E, N, nb1},
		names.B1:       {E, N},
		names.W2Blocks: {E, K, I / moe.WeightBlock, 16},
		names.W2Scales: {E, K, I / moe.WeightBlock},
		names.B2:       {E, K},
		names.RouterW:  {E, K},
		names.RouterB:  {E},
	}
	type tensorRef struct {
		f *safetensors.File
		t *safetensors.Info
	}
	refs := map[string]tensorRef{}
	for name, shape := range want {
		dtypes := []safetensors.DType{safetensors.BF16, safetensors.F32}
		if name == names.W1Scales || name == names.W2Blocks || name == names.W2Scales {
			dtypes = []safetensors.DType{safetensors.U8}
		}
		f, t, err := c.info(name, len(shape), dtypes...)
		if err != nil {
			return nil, err
		}
		for i := range shape {
			if t.Shape[i] != shape[i] {
				return nil, fmt.Errorf("%w: tensor %q has shape %v, expected %v", ErrFormat, name, t.Shape, shape)
			}
		}
		refs[name] = tensorRef{f, t}
	}
	if c.Config.Experts > 0 && c.Config.Experts != E {
		return nil, fmt.Errorf("%w: config.json has %d experts, tensor %q has %d", ErrFormat, c.Config.Experts, names.W1Blocks, E)
	}

	Kp, Ip := pad(K), pad(I)
	l := &Layer{Index: n, Hidden: K, Intermediate: I, Experts: E, TopK: DefaultTopK, Config: moe.GPTOSSConfig()}
	if c.Config.TopK > 0 {
		l.TopK = c.Config.TopK
	}
	if l.TopK > E {
		return nil, fmt.Errorf("%w: %d experts per token but %d experts", ErrFormat, l.TopK, E)
	}
	if c.Config.SwiGLULimit > 0 {
		l.Config.ClampLimit = float32(c.Config.SwiGLULimit)
	}
	w := &l.Weights
	w.E, w.K, w.I = E, Kp, Ip
	w.W13 = make([]uint8, E*2*Ip*Kp/2)
	w.W13Scale = make([]uint8, E*2*Ip*Kp/moe.WeightBlock)
	w.W2 = make([]uint8, E*Kp*Ip/2)
	w.W2Scale = make([]uint8, E*Kp*Ip/moe.WeightBlock)

	// mlp1, one expert at a time: source row r is gate row r/2 when r is even, up row r/2 when
	// it is odd; the destination rows are Kp/2 bytes wide, the source rows K/2.
	row := func(r int) int {
		if r%2 == 0 {
			return r / 2
		}
		return Ip + r/2
	}
	if err := copyRows(f1b, t1b, w.W13, E, N, K/2, 2*Ip, Kp/2, row); err != nil {
		return nil, err
	}
	s1 := refs[names.W1Scales]
	if err := copyRows(s1.f, s1.t, w.W13Scale, E, N, nb1, 2*Ip, Kp/moe.WeightBlock, row); err != nil {
		return nil, err
	}
	same := func(r int) int { return r }
	b2 := refs[names.W2Blocks]
	if err := copyRows(b2.f, b2.t, w.W2, E, K, I/2, Kp, Ip/2, same); err != nil {
		return nil, err
	}
	s2 := refs[names.W2Scales]
	if err := copyRows(s2.f, s2.t, w.W2Scale, E, K, I/moe.WeightBlock, Kp, Ip/moe.WeightBlock, same); err != nil {
		return nil, err
	}

	// Biases and router, converted to float32.
	bias1, err := floats(refs[names.B1].f, refs[names.B1].t)
	if err != nil {
		return nil, err
	}
	w.W13Bias = make([]float32, E*2*Ip)
	for e := range E {
		for r := range N {
			w.W13Bias[e*2*Ip+row(r)] = bias1[e*N+r]
		}
	}
	bias2, err := floats(refs[names.B2].f, refs[names.B2].t)
	if err != nil {
		return nil, err
	}
	w.W2Bias = make([]float32, E*Kp)
	for e := range E {
		copy(w.W2Bias[e*Kp:e*Kp+K], bias2[e*K:(e+1)*K])
	}
	if l.RouterWeight, err = floats(refs[names.RouterW].f, refs[names.RouterW].t); err != nil {
		return nil, err
	}
	if l.RouterBias, err = floats(refs[names.RouterB].f, refs[names.RouterB].t); err != nil {
		return nil, err
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// copyRows copies a tensor of E × rows source rows of srcW bytes into dst, whose experts hold
// dstRows rows of dstW >= srcW bytes: source row r of expert e goes to row rowOf(r), the rest of
// each destination row (padding) stays zero. One expert is read at a time.
func copyRows(f *safetensors.File, t *safetensors.Info, dst []uint8, E, rows, srcW, dstRows, dstW int, rowOf func(int) int) error {
	buf := make([]byte, rows*srcW)
	for e := range E {
		if err := f.ReadRange(t, int64(e*rows*srcW), buf); err != nil {
			return err
		}
		for r := range rows {
			d := (e*dstRows + rowOf(r)) * dstW
			copy(dst[d:d+srcW], buf[r*srcW:(r+1)*srcW])
		}
	}
	return nil
}

// floats reads a BF16 or F32 tensor as float32.
func floats(f *safetensors.File, t *safetensors.Info) ([]float32, error) {
	raw := make([]byte, t.End-t.Begin)
	if err := f.ReadInto(t, raw); err != nil {
		return nil, err
	}
	if t.DType != safetensors.BF16 && t.DType != safetensors.F32 {
		return nil, fmt.Errorf("%w: tensor %q has dtype %s, expected BF16 or F32", ErrFormat, t.Name, t.DType)
	}
	out := make([]float32, t.NumElements())
	decodeFloats(out, raw, t.DType)
	return out, nil
}

func (l *Layer) backend() moe.Backend {
	if l.Backend != nil {
		return l.Backend
	}
	return op.DefaultBackend()
}

// BackendName names the backend that runs the experts.
func (l *Layer) BackendName() string { return l.backend().Name() }

// Route computes GPT-OSS's routing of m tokens x (m, Hidden): logits = x·Wᵀ + b accumulated in
// float64, the TopK largest logits, and the softmax over those TopK values.
func (l *Layer) Route(x []float32, m int) (ids []int32, weights []float32, err error) {
	if len(x) != m*l.Hidden {
		return nil, nil, &moe.ShapeError{Tensor: "x", Got: []int{len(x)}, Want: []int{m, l.Hidden}}
	}
	ids, weights = make([]int32, m*l.TopK), make([]float32, m*l.TopK)
	logits := make([]float32, l.Experts)
	r := op.Routing{TopK: l.TopK, Mode: op.TopKThenSoftmax}
	for t := range m {
		xt := x[t*l.Hidden : (t+1)*l.Hidden]
		for e := range l.Experts {
			s := float64(l.RouterBias[e])
			for j, v := range l.RouterWeight[e*l.Hidden : (e+1)*l.Hidden] {
				s += float64(v) * float64(xt[j])
			}
			logits[e] = float32(s)
		}
		r.Select(ids[t*l.TopK:(t+1)*l.TopK], weights[t*l.TopK:(t+1)*l.TopK], logits)
	}
	return ids, weights, nil
}

// Forward runs the MoE block (router, routing, experts; no residual, no norm) on m tokens of
// hidden states x (m, Hidden) and returns its output (m, Hidden).
func (l *Layer) Forward(x []float32, m int) ([]float32, error) {
	ids, weights, err := l.Route(x, m)
	if err != nil {
		return nil, err
	}
	if l.direct == nil {
		if l.direct, err = l.backend().NewLayer(&l.Weights, l.Config); err != nil {
			return nil, err
		}
		if l.StageTimes {
			moe.AskStageTimes(l.direct)
		}
	}
	Kp := l.Weights.K
	xp := l.padRows(x, m)
	out := make([]float32, m*Kp)
	if err := l.direct.Forward(out, &moe.Batch{M: m, TopK: l.TopK, X: xp, TopKIDs: ids, TopKWeights: weights}); err != nil {
		return nil, err
	}
	return l.unpadRows(out, m), nil
}

// ForwardStageTimes returns the expert layer's stage times of the last Forward and true, when
// the backend records them (see the StageTimes field); else zero and false.
func (l *Layer) ForwardStageTimes() (moe.StageTimes, bool) { return moe.RecordedStageTimes(l.direct) }

// padRows returns x (m, Hidden) with zero columns up to Weights.K.
func (l *Layer) padRows(x []float32, m int) []float32 {
	Kp := l.Weights.K
	if Kp == l.Hidden {
		return x
	}
	xp := make([]float32, m*Kp)
	for t := range m {
		copy(xp[t*Kp:t*Kp+l.Hidden], x[t*l.Hidden:(t+1)*l.Hidden])
	}
	return xp
}

// unpadRows strips the padded columns of an (m, Weights.K) output.
func (l *Layer) unpadRows(out []float32, m int) []float32 {
	Kp := l.Weights.K
	if Kp == l.Hidden {
		return out
	}
	res := make([]float32, m*l.Hidden)
	for t := range m {
		copy(res[t*l.Hidden:(t+1)*l.Hidden], out[t*Kp:t*Kp+l.Hidden])
	}
	return res
}

// Block adds the MoE block to the graph of x, hidden states (M, Hidden) Float32: the input
// padded with zero columns, the router matmul plus bias, top-k then softmax routing, the
// experts op, and the output with the padding stripped, (M, Hidden) Float32. The residual add
// is the caller's.
func (l *Layer) Block(x *G.Node) (*G.Node, error) {
	shape := x.Shape()
	if x.Dtype() != tensor.Float32 || len(shape) != 2 || shape[1] != l.Hidden {
		return nil, fmt.Errorf("gptoss: hidden states have dtype %v and shape %v, expected Float32 (M, %d)", x.Dtype(), shape, l.Hidden)
	}
	if l.graph == nil {
		var err error
		opts := []op.Option{op.WithBackend(l.backend())}
		if l.StageTimes {
			opts = append(opts, op.WithStageTimes())
		}
		if l.graph, err = op.NewLayer(&l.Weights, l.Config, opts...); err != nil {
			return nil, err
		}
	}
	g, M, Kp, E := x.Graph(), shape[0], l.Weights.K, l.Experts
	xp := x
	if Kp != l.Hidden {
		zeros := G.NewMatrix(g, tensor.Float32, G.WithShape(M, Kp-l.Hidden), G.WithName(fmt.Sprintf("gptoss%d.pad", l.Index)),
			G.WithValue(tensor.New(tensor.Of(tensor.Float32), tensor.WithShape(M, Kp-l.Hidden))))
		var err error
		if xp, err = G.Concat(1, x, zeros); err != nil {
			return nil, err
		}
	}
	// The router weight transposed and padded: (Kp, E).
	wt := make([]float32, Kp*E)
	for e := range E {
		for j := range l.Hidden {
			wt[j*E+e] = l.RouterWeight[e*l.Hidden+j]
		}
	}
	wr := G.NewMatrix(g, tensor.Float32, G.WithShape(Kp, E), G.WithName(fmt.Sprintf("gptoss%d.router.weight", l.Index)),
		G.WithValue(tensor.New(tensor.WithShape(Kp, E), tensor.WithBacking(wt))))
	br := G.NewVector(g, tensor.Float32, G.WithShape(E), G.WithName(fmt.Sprintf("gptoss%d.router.bias", l.Index)),
		G.WithValue(tensor.New(tensor.WithShape(E), tensor.WithBacking(append([]float32(nil), l.RouterBias...)))))
	mm, err := G.Mul(xp, wr)
	if err != nil {
		return nil, err
	}
	logits, err := G.BroadcastAdd(mm, br, nil, []byte{0})
	if err != nil {
		return nil, err
	}
	ids, weights, err := op.Route(logits, op.Routing{TopK: l.TopK, Mode: op.TopKThenSoftmax})
	if err != nil {
		return nil, err
	}
	y, err := op.ExpertsFloat(l.graph, xp, ids, weights)
	if err != nil {
		return nil, err
	}
	if Kp == l.Hidden {
		return y, nil
	}
	return G.Slice(y, nil, G.S(0, l.Hidden))
}

// GraphStageTimes returns the expert layer's stage times of the last graph run and true, when
// the backend records them (see the StageTimes field); else zero and false.
func (l *Layer) GraphStageTimes() (moe.StageTimes, bool) {
	if l.graph == nil {
		return moe.StageTimes{}, false
	}
	return l.graph.StageTimes()
}

// Close releases the layer's backend resources.
func (l *Layer) Close() error {
	var first error
	if l.direct != nil {
		first = l.direct.Close()
		l.direct = nil
	}
	if l.graph != nil {
		if err := l.graph.Close(); err != nil && first == nil {
			first = err
		}
		l.graph = nil
	}
	return first
}
