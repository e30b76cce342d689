package main

import "testing"

// TestMoEBlock runs the example with 4 experts and 2 tokens (it checks itself that padded
// output columns stay zero).
func TestMoEBlock(t *testing.T) {
	if err := run(2, 4, 1); err != nil {
		t.Fatal(err)
	}
}
