// Package gptoss loads the MoE layers of GPT-OSS checkpoints (safetensors, MXFP4 experts) into
// the layer's contract (package moe) and puts them into Gorgonia graphs.
//
// Both published layouts are read:
//
//   - OpenAI's original checkpoint (the gpt-oss repository's gpt_oss/torch/weights.py reads it):
//     block.N.mlp.mlp1_weight.blocks (E, 2I, K/32, 16) and .scales (E, 2I, K/32), mlp1_bias
//     (E, 2I), mlp2_weight.blocks (E, K, I/32, 16) and .scales, mlp2_bias (E, K), and the router
//     block.N.mlp.gate.weight (E, K) and gate.bias (E);
//   - the Hugging Face layout of the same model (transformers' convert_gpt_oss_weights_to_hf.py
//     with mxfp4, read by modeling_gpt_oss.py): model.layers.N.mlp.experts.gate_up_proj_blocks,
//     gate_up_proj_scales, gate_up_proj_bias, down_proj_blocks, down_proj_scales,
//     down_proj_bias, and model.layers.N.mlp.router.weight and router.bias, same shapes.
//
// The MXFP4 blocks hold 32 E2M1 values in 16 bytes, element 2j in the low nibble of byte j (the
// reference dequantizer takes the low nibble for even columns), with one E8M0 scale per block:
// a blocks tensor (E, N, K/32, 16) is the packed (E, N, K/2) layout of package moe. GPT-OSS
// interleaves gate and up rows in mlp1 (even rows gate, odd rows up; swiglu takes x[..., ::2]
// and x[..., 1::2]); the loader de-interleaves them into the gate-first layout, biases with
// them. Hidden and intermediate sizes that are not multiples of 128 (2880) are padded (to 2944)
// with zero weights, zero biases and zero scales; inputs are padded with zero columns and the
// padding is stripped from outputs, so results are unchanged.
//
// Loading a layer reads only that layer's tensors, from whichever shard holds them; the other
// layers' bytes are never read (see Checkpoint.BytesRead).
package gptoss

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/safetensors"
)

// Layout names a checkpoint's tensor naming.
type Layout uint8

const (
	// OpenAI is the original checkpoint's naming (block.N.mlp.mlp1_weight.blocks, ...).
	OpenAI Layout = iota + 1
	// HuggingFace is transformers' naming (model.layers.N.mlp.experts.gate_up_proj_blocks, ...).
	HuggingFace
)

func (l Layout) String() string {
	switch l {
	case OpenAI:
		return "openai"
	case HuggingFace:
		return "huggingface"
	}
	return fmt.Sprintf("Layout(%d)", uint8(l))
}

// Names returns the tensor names of layer n's MoE block in this layout: the mlp1 blocks,
// scales and bias, the mlp2 blocks, scales and bias, the router weight and bias.
func (l Layout) Names(n int) TensorNames {
	if l == HuggingFace {
		p := fmt.Sprintf("model.layers.%d.mlp.", n)
		return TensorNames{
			W1Blocks: p + "experts.gate_up_proj_blocks", W1Scales: p + "experts.gate_up_proj_scales", B1: p + "experts.gate_up_proj_bias",
			W2Blocks: p + "experts.down_proj_blocks", W2Scales: p + "experts.down_proj_scales", B2: p + "experts.down_proj_bias",
			RouterW: p + "router.weight", RouterB: p + "router.bias",
		}
	}
	p := fmt.Sprintf("block.%d.mlp.", n)
	return TensorNames{
		W1Blocks: p + "mlp1_weight.blocks", W1Scales: p + "mlp1_weight.scales", B1: p + "mlp1_bias",
		W2Blocks: p + "mlp2_weight.blocks", W2Scales: p + "mlp2_weight.scales", B2: p + "mlp2_bias",
		RouterW: p + "gate.weight", RouterB: p + "gate.bias",
	}
}

// TensorNames are the names of one layer's MoE tensors.
type TensorNames struct {
	W1Blocks, W1Scales, B1 string
	W2Blocks, W2Scales, B2 string
	RouterW, RouterB       string
}

// Config holds the fields of config.json that the MoE block uses. Zero fields were absent.
type Config struct {
	Layers, Experts, TopK, Hidden, Intermediate int
	SwiGLULimit                                 float64
}

// Checkpoint is an opened checkpoint: one or several safetensors files whose headers have been
// read, and config.json when present. Close it when done.
type Checkpoint struct {
	Layout Layout
	Config Config
	// Layers is the number of MoE layers found (the largest layer index plus one).
	Layers int

	files  []*safetensors.File
	paths  []string
	where  map[string]int // tensor name → index in files
	layers map[int]bool
}

// ErrFormat is wrapped by errors about a checkpoint that does not have the expected tensors.
var ErrFormat = errors.New("gptoss: unexpected checkpoint")

var (
	openaiRE = regexp.MustCompile(`^block\.(\d+)\.mlp\.mlp1_weight\.blocks$`)
	hfRE     = regexp.MustCompile(`^model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_blocks$`)
)

// Open opens a checkpoint: a directory (every *.safetensors file in it, and its config.json)
// or a single .safetensors file (and config.json beside it). Only headers are read.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	dir, files := path, []string(nil)
	if st.IsDir() {
		files, err = filepath.Glob(filepath.Join(path, "*.safetensors"))
		if err != nil {
			return nil, err
		}
		sort.Strings(files)
	} else {
		dir, files = filepath.Dir(path), []string{path}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no .safetensors files in %s", ErrFormat, path)
	}
	c := &Checkpoint{where: map[string]int{}, layers: map[int]bool{}}
	for _, p := range files {
		f, err := safetensors.Open(p)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.files, c.paths = append(c.files, f), append(c.paths, p)
		for _, n := range f.Names() {
			if other, dup := c.where[n]; dup {
				c.Close()
				return nil, fmt.Errorf("%w: tensor %q is in two shards (%s and %s)", ErrFormat, n, c.paths[other], p)
			}
			c.where[n] = len(c.files) - 1
			for layout, re := range map[Layout]*regexp.Regexp{OpenAI: openaiRE, HuggingFace: hfRE} {
				if m := re.FindStringSubmatch(n); m != nil {
					if c.Layout != 0 && c.Layout != layout {
						c.Close()
						return nil, fmt.Errorf("%w: both OpenAI and Hugging Face tensor names in %s", ErrFormat, path)
					}
					c.Layout = layout
					i, _ := strconv.Atoi(m[1])
					c.layers[i] = true
					c.Layers = max(c.Layers, i+1)
				}
			}
		}
	}
	if c.Layout == 0 {
		c.Close()
		return nil, fmt.Errorf("%w: no GPT-OSS MoE tensors (block.N.mlp.mlp1_weight.blocks or model.layers.N.mlp.experts.gate_up_proj_blocks) in %s", ErrFormat, path)
	}
	if err := c.readConfig(filepath.Join(dir, "config.json")); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readConfig reads the MoE fields of config.json, in either layout's spelling, if it exists.
func (c *Checkpoint) readConfig(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var raw struct {
		Layers       int     `json:"num_hidden_layers"`
		Experts      int     `json:"num_experts"`
		LocalExperts int     `json:"num_local_experts"`
		TopK         int     `json:"experts_per_token"`
		TopKHF       int     `json:"num_experts_per_tok"`
		Hidden       int     `json:"hidden_size"`
		Intermediate int     `json:"intermediate_size"`
		Limit        float64 `json:"swiglu_limit"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrFormat, path, err)
	}
	c.Config = Config{Layers: raw.Layers, Experts: max(raw.Experts, raw.LocalExperts), TopK: max(raw.TopK, raw.TopKHF),
		Hidden: raw.Hidden, Intermediate: raw.Intermediate, SwiGLULimit: raw.Limit}
	return nil
}

// Close closes the checkpoint's files.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	c.files = nil
	return first
}

// BytesRead returns how many tensor bytes have been read from all shards so far.
func (c *Checkpoint) BytesRead() int64 {
	var n int64
	for _, f := range c.files {
		n += f.BytesRead()
	}
	return n
}

// info returns a tensor's file and description after checking its dtype and rank.
func (c *Checkpoint) info(name string, rank int, dtypes ...safetensors.DType) (*safetensors.File, *safetensors.Info, error) {
	i, ok := c.where[name]
	if !ok {
		return nil, nil, fmt.Errorf("%w: missing tensor %q", ErrFormat, name)
	}
	f := c.files[i]
	t := f.Info(name)
	ok = false
	for _, d := range dtypes {
		ok = ok || t.DType == d
	}
	if !ok {
		return nil, nil, fmt.Errorf("%w: tensor %q has dtype %s, expected %v", ErrFormat, name, t.DType, dtypes)
	}
	if len(t.Shape) != rank {
		return nil, nil, fmt.Errorf("%w: tensor %q has shape %v, expected rank %d", ErrFormat, name, t.Shape, rank)
	}
	return f, t, nil
}

// pad returns n rounded up to a multiple of 128.
func pad(n int) int { return (n + moe.ActGroup - 1) / moe.ActGroup * moe.ActGroup }
