package gptoss_test

import (
	"fmt"
	"os"

	"github.com/fp4moe/fp4moe/gptoss"
)

// Run one MoE layer of a checkpoint: here a small synthetic one in OpenAI's layout, written
// first; a real checkpoint's directory works the same way.
func Example() {
	dir, _ := os.MkdirTemp("", "gptoss-example-")
	defer os.RemoveAll(dir)
	s := gptoss.Synthetic{Layers: 2, Experts: 4, TopK: 2, Hidden: 288, Intermediate: 160, Seed: 1}
	if err := s.Write(dir, gptoss.OpenAI, false, nil); err != nil {
		panic(err)
	}

	ck, err := gptoss.Open(dir)
	if err != nil {
		panic(err)
	}
	defer ck.Close()
	layer, err := ck.LoadLayer(1)
	if err != nil {
		panic(err)
	}
	defer layer.Close()
	hidden := make([]float32, 3*layer.Hidden) // three tokens
	for i := range hidden {
		hidden[i] = float32(i%7) - 3
	}
	out, err := layer.Forward(hidden, 3)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%v layout, layer %d: %d experts, top-%d, hidden %d padded to %d; output %d values\n",
		ck.Layout, layer.Index, layer.Experts, layer.TopK, layer.Hidden, layer.Weights.K, len(out))
	// Output: openai layout, layer 1: 4 experts, top-2, hidden 288 padded to 384; output 864 values
}
