//go:build cudaops

package cudaops

import (
	"errors"
	"testing"

	"github.com/fp4moe/fp4moe/moe"
)

// TestOpen opens the GPU and checks that it is a Hopper part and that layers report what the
// backend cannot do yet.
func TestOpen(t *testing.T) {
	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device %s, compute capability %d.%d", d.Name, d.Major, d.Minor)
	if d.Major != 9 {
		t.Fatalf("compute capability %d.%d, expected a Hopper GPU (9.x)", d.Major, d.Minor)
	}
	_, err = Backend{}.NewLayer(&moe.Weights{}, moe.Config{})
	if !errors.Is(err, ErrNotImplemented) {
		t.Fatalf("NewLayer: %v, want ErrNotImplemented", err)
	}
}
