//go:build cudaops

package cudaops

import (
	"hash/fnv"
	"math"
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/moe"
)

// digest returns the FNV-1a hash of out's float32 bits.
func digest(out []float32) uint64 {
	h := fnv.New64a()
	var b [4]byte
	for _, v := range out {
		u := math.Float32bits(v)
		b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		h.Write(b[:])
	}
	return h.Sum64()
}

// TestOutputDigests runs batches that take each grouped GEMM kernel the layer chooses (decode
// sizes, the 16- and 32-token decode kernels, the wgmma GEMM), each activation with and without
// the clamp, both scale formats, and pre-activations wide enough that the sigmoid's exp
// overflows, twice each, and checks that the two runs agree bit for bit. It logs one line per
// case, "digest NAME HASH", a hash of the output bits: two builds of the kernels give the same
// output wherever their lines agree, which tells a change meant to keep every bit (a rewritten
// instruction sequence, a new launch order) from one that moves results within the tolerance.
//
//	go test -tags cudaops -run TestOutputDigests -v ./cudaops | grep digest
func TestOutputDigests(t *testing.T) {
	for _, c := range []struct {
		name string
		s    conformance.Spec
	}{
		{"decode-m1-oai-clamp", conformance.Spec{M: 1, K: 512, I: 256, E: 8, TopK: 4, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Bias: true, Seed: 41}},
		{"decode-m8-silu", conformance.Spec{M: 8, K: 512, I: 256, E: 8, TopK: 2, Seed: 42}},
		{"decode-m64-step-f32scale", conformance.Spec{M: 64, K: 1024, I: 512, E: 16, TopK: 4, Activation: moe.SwiGLUStep, ScaleFormat: moe.Float32, Seed: 43}},
		{"decode-m160-oai", conformance.Spec{M: 160, K: 512, I: 256, E: 16, TopK: 2, Activation: moe.SwiGLUOAI, Clamp: true, Limit: 7, Seed: 44}},
		{"wgmma-m600-oai-wide", conformance.Spec{M: 600, K: 1024, I: 512, E: 4, TopK: 2, Activation: moe.SwiGLUOAI, HStd: 40, Bias: true, Seed: 45}},
		{"wgmma-m1200-silu-clamp", conformance.Spec{M: 1200, K: 512, I: 384, E: 8, TopK: 4, Clamp: true, Limit: 10, HStd: 4, Seed: 46}},
		{"wgmma-m2600-silu-spread", conformance.Spec{M: 2600, K: 256, I: 128, E: 16, TopK: 2, NegIDs: 0.02, Dup: true, Seed: 47}},
	} {
		cs := conformance.Generate(c.s)
		l := mustLayer(t, &cs.Weights, cs.Config)
		got := forwardTwice(t, l, &cs.Batch, c.s.K, c.name)
		t.Logf("digest %s %016x (GEMM %v, rel L2 against float64 %.2e)", c.name, digest(got), l.kernel(c.s.M*c.s.TopK),
			conformance.RelL2(got, cs.Expected))
	}
}
