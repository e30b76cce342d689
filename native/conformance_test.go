package native_test

import (
	"testing"

	"github.com/fp4moe/fp4moe/conformance"
	"github.com/fp4moe/fp4moe/native"
)

func TestConformance(t *testing.T) { conformance.TestBackend(t, native.Backend{}) }

// The permuted layout's alignment and the thread count never change results.
func TestConformanceOptions(t *testing.T) {
	for _, o := range []native.Options{{BlockM: 8, Threads: 3}, {BlockM: 128, Threads: 1}, {BlockM: 1, Threads: 5, ChunkRows: 7}} {
		t.Run("", func(t *testing.T) { conformance.TestBackend(t, native.Backend{Options: o}) })
	}
}

func TestQuantVectors(t *testing.T) { conformance.TestQuant(t) }
