package gptoss

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"

	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
	"github.com/fp4moe/fp4moe/safetensors"
)

var (
	openaiFloatRE = regexp.MustCompile(`^block\.(\d+)\.mlp\.mlp([12])_weight$`)
	hfFloatRE     = regexp.MustCompile(`^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$`)
	layerRE       = regexp.MustCompile(`^(?:block|model\.layers)\.(\d+)\.`)
)

// Convert writes to w a checkpoint file in layout `to` made from the file f: the unquantized
// expert weights of either layout (OpenAI's block.N.mlp.mlp1_weight (E, 2I, K) and
// mlp2_weight (E, K, I); Hugging Face's model.layers.N.mlp.experts.gate_up_proj (E, K, 2I) and
// down_proj (E, I, K), stored transposed), BF16 or F32, are quantized to MXFP4 blocks and
// scales with package native's OCP quantizer; the MoE block's other tensors (biases, router,
// blocks already quantized) are renamed into `to`; every other tensor is copied unchanged.
// Input is read one expert at a time; progress, if not nil, gets the rows quantized so far and
// their total.
func Convert(w io.Writer, f *safetensors.File, to Layout, progress func(done, total int)) error {
	rename := map[string]string{}
	for _, name := range f.Names() {
		if m := layerRE.FindStringSubmatch(name); m != nil {
			n, _ := strconv.Atoi(m[1])
			for _, from := range []Layout{OpenAI, HuggingFace} {
				a, b := from.Names(n), to.Names(n)
				for _, p := range [][2]string{{a.W1Blocks, b.W1Blocks}, {a.W1Scales, b.W1Scales}, {a.B1, b.B1},
					{a.W2Blocks, b.W2Blocks}, {a.W2Scales, b.W2Scales}, {a.B2, b.B2}, {a.RouterW, b.RouterW}, {a.RouterB, b.RouterB}} {
					rename[p[0]] = p[1]
				}
			}
		}
	}
	var outs []Output
	for _, name := range f.Names() {
		t := f.Info(name)
		n, which, transposed := -1, 0, false
		if m := openaiFloatRE.FindStringSubmatch(name); m != nil {
			n, _ = strconv.Atoi(m[1])
			which, _ = strconv.Atoi(m[2])
		} else if m := hfFloatRE.FindStringSubmatch(name); m != nil {
			n, _ = strconv.Atoi(m[1])
			which, transposed = map[string]int{"gate_up_proj": 1, "down_proj": 2}[m[2]], true
		}
		if n < 0 {
			newName := name
			if r, ok := rename[name]; ok {
				newName = r
			}
			outs = append(outs, Output{Name: newName, Src: t})
			continue
		}
		nm := to.Names(n)
		o := Output{Name: nm.W1Blocks, ScalesName: nm.W1Scales, Src: t, Quantize: true, Transposed: transposed, Blocks: true}
		if which == 2 {
			o.Name, o.ScalesName = nm.W2Blocks, nm.W2Scales
		}
		outs = append(outs, o)
	}
	return WriteOutputs(w, f, outs, map[string]string{"format": "pt"}, progress)
}

// Output is one tensor of a file written by WriteOutputs: a copy of Src named Name, or, with
// Quantize, Src's rows quantized to MXFP4: the codes named Name, shaped (E, rows, cols/32, 16)
// with Blocks (the checkpoint layout) or (E, rows, cols/2) without (the packed layout), then the
// E8M0 scales (E, rows, cols/32) named ScalesName. Transposed marks a weight stored
// (E, cols, rows).
type Output struct {
	Name, ScalesName     string
	Src                  *safetensors.Info
	Quantize, Transposed bool
	Blocks               bool
}

// WriteOutputs writes the outputs as a safetensors file, reading f one tensor (one expert, for
// the weights it quantizes) at a time. Every output is checked before anything is written;
// progress, if not nil, gets the rows quantized so far and their total.
func WriteOutputs(w io.Writer, f *safetensors.File, outs []Output, metadata map[string]string, progress func(done, total int)) error {
	var entries []safetensors.Entry
	var from []int // the output behind each entry
	total := 0
	for k, o := range outs {
		t := o.Src
		if !o.Quantize {
			entries, from = append(entries, safetensors.Entry{Name: o.Name, DType: t.DType, Shape: t.Shape}), append(from, k)
			continue
		}
		if len(t.Shape) != 3 || (t.DType != safetensors.BF16 && t.DType != safetensors.F32) {
			return fmt.Errorf("%w: expert weight %q is %s %v, expected BF16 or F32 (experts, rows, columns)", ErrFormat, t.Name, t.DType, t.Shape)
		}
		E, R, C := t.Shape[0], t.Shape[1], t.Shape[2]
		if o.Transposed {
			R, C = C, R
		}
		if C%moe.WeightBlock != 0 {
			return fmt.Errorf("%w: expert weight %q has rows of %d values, not a multiple of 32", ErrFormat, t.Name, C)
		}
		codes := []int{E, R, C / 2}
		if o.Blocks {
			codes = []int{E, R, C / moe.WeightBlock, 16}
		}
		entries = append(entries,
			safetensors.Entry{Name: o.Name, DType: safetensors.U8, Shape: codes},
			safetensors.Entry{Name: o.ScalesName, DType: safetensors.U8, Shape: []int{E, R, C / moe.WeightBlock}})
		from = append(from, k, k)
		total += E * R
	}
	done := 0
	var pendingScales []byte
	return safetensors.WriteFunc(w, entries, metadata, func(i int) ([]byte, error) {
		o := outs[from[i]]
		switch {
		case !o.Quantize:
			b := make([]byte, o.Src.End-o.Src.Begin)
			return b, f.ReadInto(o.Src, b)
		case i > 0 && from[i-1] == from[i]: // the scales of the weight quantized just before
			s := pendingScales
			pendingScales = nil
			return s, nil
		}
		blocks, scales, err := QuantizeTensor(f, o.Src, o.Transposed, func(rows int) {
			done += rows
			if progress != nil {
				progress(done, total)
			}
		})
		if err != nil {
			return nil, err
		}
		pendingScales = scales
		return blocks, nil
	})
}

// QuantizeTensor reads an unquantized expert weight t of f, BF16 or F32, (E, rows, cols) or,
// transposed, (E, cols, rows), one expert at a time, and quantizes its rows to MXFP4: blocks
// (E, rows, cols/32, 16), which is also the packed (E, rows, cols/2) layout, and scales
// (E, rows, cols/32). progress, if not nil, gets the rows of each expert when it is done.
func QuantizeTensor(f *safetensors.File, t *safetensors.Info, transposed bool, progress func(rows int)) (blocks, scales []byte, err error) {
	if len(t.Shape) != 3 || (t.DType != safetensors.BF16 && t.DType != safetensors.F32) {
		return nil, nil, fmt.Errorf("%w: expert weight %q is %s %v, expected BF16 or F32 (experts, rows, columns)", ErrFormat, t.Name, t.DType, t.Shape)
	}
	E, R, C := t.Shape[0], t.Shape[1], t.Shape[2]
	if transposed {
		R, C = C, R
	}
	if C%moe.WeightBlock != 0 {
		return nil, nil, fmt.Errorf("%w: expert weight %q has rows of %d values, not a multiple of 32", ErrFormat, t.Name, C)
	}
	es := t.DType.Size()
	raw := make([]byte, R*C*es)
	vals, tmp := make([]float32, R*C), make([]float32, R*C)
	blocks = make([]byte, 0, E*R*C/2)
	scales = make([]byte, 0, E*R*C/moe.WeightBlock)
	for e := range E {
		if err := f.ReadRange(t, int64(e*R*C*es), raw); err != nil {
			return nil, nil, err
		}
		decodeFloats(tmp, raw, t.DType)
		if transposed { // element k is (in = k/R, out = k%R) of an (in, out) matrix
			for k, v := range tmp {
				vals[(k%R)*C+k/R] = v
			}
		} else {
			copy(vals, tmp)
		}
		b, s := QuantizeRows(vals, C, nil)
		blocks, scales = append(blocks, b...), append(scales, s...)
		if progress != nil {
			progress(R)
		}
	}
	return blocks, scales, nil
}

// decodeFloats converts little-endian BF16 or F32 bytes to float32.
func decodeFloats(dst []float32, raw []byte, d safetensors.DType) {
	if d == safetensors.BF16 {
		for i := range dst {
			dst[i] = native.DecodeBF16(uint16(raw[2*i]) | uint16(raw[2*i+1])<<8)
		}
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24)
	}
}
