// Package op puts the fused FP8 × MXFP4 MoE expert layer into Gorgonia graphs: the experts
// op (FP8 input, or float32 input that it quantizes itself) and the routing ops that turn
// router logits into top-k expert ids and weights, so that a whole MoE block is one graph.
//
// The expert weights and the configuration are parameters of the op, bound to it through a
// Layer, not graph inputs: they are large (GPT-OSS-120B holds 1.6 GB of MXFP4 experts per
// layer), constant across calls, and a backend prepares them once (the CUDA backend uploads
// them to the device when the layer first runs) instead of receiving them on every call. The
// tokens and their routing are the graph inputs.
//
// A minimal graph:
//
//	layer, _ := op.NewLayer(weights, moe.GPTOSSConfig())
//	g := gorgonia.NewGraph()
//	x := gorgonia.NewMatrix(g, tensor.Float32, gorgonia.WithShape(m, k), gorgonia.WithName("x"))
//	logits := gorgonia.NewMatrix(g, tensor.Float32, gorgonia.WithShape(m, e), gorgonia.WithName("logits"))
//	ids, w, _ := op.Route(logits, op.Routing{TopK: 4, Mode: op.TopKThenSoftmax})
//	out, _ := op.ExpertsFloat(layer, x, ids, w)
//
// Every contract check of package moe runs when the graph is built (dtypes and shapes) and
// again before the layer runs (values, such as expert ids), and reports an error value.
package op

import (
	"fmt"
	"hash/crc32"
	"math"
	"sync"

	"github.com/fp4moe/fp4moe/moe"
)

// Layer binds one expert layer's weights and configuration to a backend. One Layer may serve
// several experts ops (several graphs, or several calls in one graph); their runs are
// serialised. Close it when done.
type Layer struct {
	w       *moe.Weights
	cfg     moe.Config
	backend moe.Backend
	digest  string // fingerprint of every parameter, for WriteHash

	stageTimes  bool // WithStageTimes
	reuseOutput bool // WithReusedOutput

	mu   sync.Mutex
	impl moe.Layer // created by the backend on first use
	err  error
}

// Option configures NewLayer.
type Option func(*Layer)

// WithBackend selects the backend that runs the layer (default: DefaultBackend()).
func WithBackend(b moe.Backend) Option { return func(l *Layer) { l.backend = b } }

// WithStageTimes asks the backend's layer to time its stages (StageTimes) on every run, where
// it does so only when asked: the CUDA backend's events between the stages cost device time
// (cudaops.Options.StageTimes). The pure-Go backend always times its stages.
func WithStageTimes() Option { return func(l *Layer) { l.stageTimes = true } }

// WithReusedOutput makes each experts op of the layer return the same output tensor on every
// run of its graph (one per op node, allocated on the first run and again when M changes),
// instead of a new one: a run then allocates nothing of the output's size (a Gorgonia tape
// machine's Reset drops the values it held, so the op never gets its last output back as
// preallocated memory). The next run overwrites the value a run returned: copy it first to keep
// it. A graph with such an op must not run in two machines at once.
func WithReusedOutput() Option { return func(l *Layer) { l.reuseOutput = true } }

// BackendEnv names the environment variable that forces a backend: "native" or "cuda".
const BackendEnv = "FP4MOE_BACKEND"

// NewLayer validates the weights and configuration and returns a Layer. The weights are read
// in place and must not change while the layer is in use.
func NewLayer(w *moe.Weights, cfg moe.Config, opts ...Option) (*Layer, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(w.E); err != nil {
		return nil, err
	}
	l := &Layer{w: w, cfg: cfg, backend: DefaultBackend()}
	for _, o := range opts {
		o(l)
	}
	if l.backend == nil {
		return nil, fmt.Errorf("op: nil backend")
	}
	l.digest = fingerprint(w, &cfg, l.backend.Name())
	return l, nil
}

// Weights returns the layer's weights.
func (l *Layer) Weights() *moe.Weights { return l.w }

// Config returns the layer's configuration.
func (l *Layer) Config() moe.Config { return l.cfg }

// Backend returns the layer's backend.
func (l *Layer) Backend() moe.Backend { return l.backend }

// StageTimes returns the stage times of the layer's last run and true, when its backend records
// them (the CUDA backend with WithStageTimes, the pure-Go backend always); else zero and false.
func (l *Layer) StageTimes() (moe.StageTimes, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return moe.RecordedStageTimes(l.impl)
}

// forward runs the backend's layer, creating it on first use.
func (l *Layer) forward(out []float32, b *moe.Batch) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.impl == nil && l.err == nil {
		l.impl, l.err = l.backend.NewLayer(l.w, l.cfg)
		if l.err == nil && l.stageTimes {
			moe.AskStageTimes(l.impl)
		}
	}
	if l.err != nil {
		return fmt.Errorf("op: %s backend: %w", l.backend.Name(), l.err)
	}
	return l.impl.Forward(out, b)
}

// Close releases the backend's layer.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.impl == nil {
		return nil
	}
	err := l.impl.Close()
	l.impl = nil
	return err
}

// fingerprint describes every parameter of a layer: sizes, configuration, backend, and a
// CRC-32C of each weight tensor (hardware-accelerated, so a GB of weights hashes in well
// under a second).
func fingerprint(w *moe.Weights, c *moe.Config, backend string) string {
	tab := crc32.MakeTable(crc32.Castagnoli)
	sum := func(b []byte) uint32 { return crc32.Checksum(b, tab) }
	f32 := func(v []float32) string {
		if v == nil {
			return "-"
		}
		h := crc32.New(tab)
		var buf [4]byte
		for _, x := range v {
			u := math.Float32bits(x)
			buf[0], buf[1], buf[2], buf[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
			h.Write(buf[:])
		}
		return fmt.Sprintf("%08x/%d", h.Sum32(), len(v))
	}
	m := "-"
	if c.ExpertMap != nil {
		h := crc32.New(tab)
		for _, v := range c.ExpertMap {
			h.Write([]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
		}
		m = fmt.Sprintf("%08x/%d", h.Sum32(), len(c.ExpertMap))
	}
	return fmt.Sprintf("E=%d,K=%d,I=%d,act=%v,clamp=%v:%g,alpha=%g,beta=%g,scales=%v,arwoi=%v,global=%d,map=%s,"+
		"w13=%08x,s13=%08x,w2=%08x,s2=%08x,b13=%s,b2=%s,backend=%s",
		w.E, w.K, w.I, c.Activation, c.Clamp, c.ClampLimit, c.Alpha, c.Beta, c.ScaleFormat, c.ApplyRouterWeightOnInput,
		c.GlobalExperts(w.E), m, sum(w.W13), sum(w.W13Scale), sum(w.W2), sum(w.W2Scale), f32(w.W13Bias), f32(w.W2Bias), backend)
}
