package gptoss

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
)

// QuantizeRows quantizes rows of float32 values (len(src) = rows·cols, cols a multiple of 32)
// to MXFP4 in the checkpoint layout: blocks (rows, cols/32, 16) and scales (rows, cols/32),
// which is also the packed layout of package moe. Rows are spread over GOMAXPROCS goroutines;
// progress, if not nil, is called with the number of rows finished (from several goroutines).
func QuantizeRows(src []float32, cols int, progress func(rows int)) (blocks, scales []uint8) {
	rows := len(src) / cols
	blocks = make([]uint8, rows*cols/2)
	scales = make([]uint8, rows*cols/moe.WeightBlock)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	const chunk = 256
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r0 := range next {
				r1 := min(r0+chunk, rows)
				for r := r0; r < r1; r++ {
					native.QuantizeMXFP4(blocks[r*cols/2:(r+1)*cols/2], scales[r*cols/32:(r+1)*cols/32], src[r*cols:(r+1)*cols])
				}
				if progress != nil {
					progress(r1 - r0)
				}
			}
		}()
	}
	for r0 := 0; r0 < rows; r0 += chunk {
		next <- r0
	}
	close(next)
	wg.Wait()
	return blocks, scales
}

// bf16Entry converts float32 values to a BF16 tensor entry (round to nearest even).
func bf16Entry(name string, shape []int, v []float32) safetensors.Entry {
	b := make([]uint16, len(v))
	for i, x := range v {
		b[i] = native.EncodeBF16(x)
	}
	return safetensors.NewEntry(name, safetensors.BF16, shape, b)
}

// Synthetic describes a random checkpoint in GPT-OSS's layout.
type Synthetic struct {
	Layers, Experts, TopK int
	// Hidden and Intermediate sizes; GPT-OSS uses 2880 for both (not multiples of 128).
	Hidden, Intermediate int
	// Shards is the number of safetensors files the layers are spread over (default 1).
	Shards int
	// HStd is the standard deviation of GEMM1's pre-activations (default 2).
	HStd float64
	Seed uint64
}

// SyntheticLayer is one layer of a synthetic checkpoint in float form: the values that were
// quantized, in GPT-OSS's interleaved layout.
type SyntheticLayer struct {
	MLP1     []float32 // (E, 2I, K), rows interleaved: even rows gate, odd rows up
	MLP1Bias []float32 // (E, 2I), interleaved the same way
	MLP2     []float32 // (E, K, I)
	MLP2Bias []float32 // (E, K)
	RouterW  []float32 // (E, K)
	RouterB  []float32 // (E)
}

// Layer draws layer n of the synthetic checkpoint (deterministic in Seed and n).
func (s Synthetic) Layer(n int) *SyntheticLayer {
	E, K, I := s.Experts, s.Hidden, s.Intermediate
	hstd := s.HStd
	if hstd == 0 {
		hstd = 2
	}
	rng := rand.New(rand.NewPCG(s.Seed, uint64(n)))
	normal := func(size int, std float64) []float32 {
		v := make([]float32, size)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
		return v
	}
	// Every value is drawn as a bf16 value, so a bf16 file stores it exactly and quantizing the
	// bf16 file gives the same MXFP4 bytes as quantizing the values.
	bf := func(v []float32) []float32 {
		for i, x := range v {
			v[i] = native.DecodeBF16(native.EncodeBF16(x))
		}
		return v
	}
	return &SyntheticLayer{
		MLP1:     bf(normal(E*2*I*K, hstd/math.Sqrt(float64(K)))),
		MLP1Bias: bf(normal(E*2*I, 0.5)),
		MLP2:     bf(normal(E*K*I, 1/math.Sqrt(float64(I)))),
		MLP2Bias: bf(normal(E*K, 0.5)),
		RouterW:  bf(normal(E*K, 1/math.Sqrt(float64(K)))),
		RouterB:  bf(normal(E, 0.1)),
	}
}

// Entries returns layer n's tensors in the given layout: MXFP4 blocks and scales for the
// experts (quantized with package native), BF16 biases and router. With float true the expert
// weights are written unquantized as BF16 (block.N.mlp.mlp1_weight (E, 2I, K) in the OpenAI
// layout; transposed, model.layers.N.mlp.experts.gate_up_proj (E, K, 2I), in the Hugging Face
// one), as a checkpoint before quantization holds them.
func (l *SyntheticLayer) Entries(layout Layout, n, experts, hidden, intermediate int, float bool) []safetensors.Entry {
	E, K, I := experts, hidden, intermediate
	nm := layout.Names(n)
	var out []safetensors.Entry
	if float {
		w1, w2 := l.MLP1, l.MLP2
		s1, s2 := []int{E, 2 * I, K}, []int{E, K, I}
		if layout == HuggingFace {
			w1, w2 = transpose(w1, E, 2*I, K), transpose(w2, E, K, I)
			s1, s2 = []int{E, K, 2 * I}, []int{E, I, K}
		}
		out = append(out, bf16Entry(FloatName(layout, n, 1), s1, w1), bf16Entry(FloatName(layout, n, 2), s2, w2))
	} else {
		b1, sc1 := QuantizeRows(l.MLP1, K, nil)
		b2, sc2 := QuantizeRows(l.MLP2, I, nil)
		out = append(out,
			safetensors.NewEntry(nm.W1Blocks, safetensors.U8, []int{E, 2 * I, K / 32, 16}, b1),
			safetensors.NewEntry(nm.W1Scales, safetensors.U8, []int{E, 2 * I, K / 32}, sc1),
			safetensors.NewEntry(nm.W2Blocks, safetensors.U8, []int{E, K, I / 32, 16}, b2),
			safetensors.NewEntry(nm.W2Scales, safetensors.U8, []int{E, K, I / 32}, sc2))
	}
	return append(out,
		bf16Entry(nm.B1, []int{E, 2 * I}, l.MLP1Bias),
		bf16Entry(nm.B2, []int{E, K}, l.MLP2Bias),
		bf16Entry(nm.RouterW, []int{E, K}, l.RouterW),
		bf16Entry(nm.RouterB, []int{E}, l.RouterB))
}

// FloatName is the name of the unquantized expert weight w (1: mlp1 / gate_up_proj, 2: mlp2 /
// down_proj) of layer n in a layout.
func FloatName(layout Layout, n, w int) string {
	if layout == HuggingFace {
		return fmt.Sprintf("model.layers.%d.mlp.experts.%s", n, map[int]string{1: "gate_up_proj", 2: "down_proj"}[w])
	}
	return fmt.Sprintf("block.%d.mlp.mlp%d_weight", n, w)
}

// transpose swaps the last two dimensions of an (E, R, C) tensor.
func transpose(v []float32, e, r, c int) []float32 {
	t := make([]float32, len(v))
	for x := range e {
		for i := range r {
			for j := range c {
				t[x*r*c+j*r+i] = v[x*r*c+i*c+j]
			}
		}
	}
	return t
}

// Write writes the synthetic checkpoint into dir: config.json in the layout's spelling, and the
// layers spread over Shards files named as the layout's publisher names them, each layer with
// one tensor that is not part of the MoE block (its attention norm), as real checkpoints have.
// progress, if not nil, is called once per layer written.
func (s Synthetic) Write(dir string, layout Layout, float bool, progress func()) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	shards := max(1, s.Shards)
	files := make([][]safetensors.Entry, shards)
	for n := range s.Layers {
		l := s.Layer(n)
		sh := n * shards / max(1, s.Layers)
		files[sh] = append(files[sh], l.Entries(layout, n, s.Experts, s.Hidden, s.Intermediate, float)...)
		norm := make([]float32, s.Hidden)
		for i := range norm {
			norm[i] = 1
		}
		files[sh] = append(files[sh], safetensors.NewEntry(otherName(layout, n), safetensors.F32, []int{s.Hidden}, norm))
		if progress != nil {
			progress()
		}
	}
	for i, entries := range files {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i, shards-1)
		if layout == OpenAI {
			name = fmt.Sprintf("model--%05d-of-%05d.safetensors", i+1, shards)
		}
		if err := writeFile(filepath.Join(dir, name), entries); err != nil {
			return err
		}
	}
	cfg := map[string]any{"num_hidden_layers": s.Layers, "hidden_size": s.Hidden, "intermediate_size": s.Intermediate, "swiglu_limit": 7.0}
	if layout == HuggingFace {
		cfg["num_local_experts"], cfg["num_experts_per_tok"] = s.Experts, s.TopK
	} else {
		cfg["num_experts"], cfg["experts_per_token"] = s.Experts, s.TopK
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
}

func otherName(layout Layout, n int) string {
	if layout == HuggingFace {
		return fmt.Sprintf("model.layers.%d.input_layernorm.weight", n)
	}
	return fmt.Sprintf("block.%d.attn.norm.scale", n)
}

func writeFile(path string, entries []safetensors.Entry) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := safetensors.Write(f, entries, map[string]string{"format": "pt"}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
