//go:build !cudaops

package cudaops

import (
	"fmt"

	"github.com/fp4moe/fp4moe/moe"
)

// Device describes the opened GPU.
type Device struct {
	Name         string
	Major, Minor int
}

// Open returns an error wrapping ErrNoCUDA: this build has no CUDA support (build with -tags cudaops).
func Open() (*Device, error) {
	return nil, fmt.Errorf("%w: built without the cudaops build tag", ErrNoCUDA)
}

// NewLayer returns an error wrapping ErrNoCUDA.
func (Backend) NewLayer(*moe.Weights, moe.Config) (moe.Layer, error) {
	_, err := Open()
	return nil, err
}
