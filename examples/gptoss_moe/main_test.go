package main

import "testing"

// TestSynthetic runs the example on its synthetic checkpoint in both layouts.
func TestSynthetic(t *testing.T) {
	for _, layout := range []string{"openai", "huggingface"} {
		if err := run("", 1, 2, layout); err != nil {
			t.Fatalf("%s: %v", layout, err)
		}
	}
}
