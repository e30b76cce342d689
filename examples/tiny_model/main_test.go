package main

import "testing"

func TestTinyModelMatchesFloat64(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		rel, err := run(3, 9, seed, false)
		if err != nil {
			t.Fatal(err)
		}
		if rel > 1e-3 {
			t.Fatalf("seed %d: logits rel L2 %.3e against the float64 model", seed, rel)
		}
	}
}
