package op

import (
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// switchBackend makes pure-Go layers that report their stage times only when asked, as the CUDA
// backend's do.
type switchBackend struct{}

func (switchBackend) Name() string { return "switch" }

func (switchBackend) NewLayer(w *moe.Weights, cfg moe.Config) (moe.Layer, error) {
	l, err := native.Backend{}.NewLayer(w, cfg)
	if err != nil {
		return nil, err
	}
	return &switchLayer{Layer: l}, nil
}

type switchLayer struct {
	moe.Layer
	on bool
}

func (l *switchLayer) SetStageTimes(on bool)      { l.on = on }
func (l *switchLayer) RecordsStageTimes() bool    { return l.on }
func (l *switchLayer) StageTimes() moe.StageTimes { return l.Layer.(moe.StageTimer).StageTimes() }

// TestStageTimes checks Layer.StageTimes over the three kinds of backend layer: one that always
// times (native: ok), one that times only when asked, without WithStageTimes (zero, not ok) and
// with it (asked once the layer exists, then ok with the stages' times).
func TestStageTimes(t *testing.T) {
	c := conformance.Generate(conformance.Spec{M: 3, K: 256, I: 128, E: 4, TopK: 2, Seed: 1})
	for _, tc := range []struct {
		name    string
		backend moe.Backend
		opts    []Option
		want    bool
	}{
		{"native", native.Backend{}, nil, true},
		{"switch, not asked", switchBackend{}, nil, false},
		{"switch, asked", switchBackend{}, []Option{WithStageTimes()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLayer(&c.Weights, c.Config, append([]Option{WithBackend(tc.backend)}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if _, ok := l.StageTimes(); ok {
				t.Fatal("stage times before the first run")
			}
			out := make([]float32, 3*256)
			if err := l.forward(out, &c.Batch); err != nil {
				t.Fatal(err)
			}
			st, ok := l.StageTimes()
			if ok != tc.want {
				t.Fatalf("StageTimes ok = %v, want %v", ok, tc.want)
			}
			if ok && (st.GEMM1 <= 0 || st.GEMM2 <= 0) {
				t.Fatalf("stage times %+v, want the GEMMs' nonzero", st)
			}
			if !ok && st != (moe.StageTimes{}) {
				t.Fatalf("stage times %+v with ok false, want zero", st)
			}
		})
	}
}
