//go:build cudaops

package cudaops

import (
	"fmt"
	"sync"

	"github.com/fp4moe/fp4moe/moe"
	"gorgonia.org/cu"
)

// Device describes the opened GPU.
type Device struct {
	Name         string
	Major, Minor int
	dev          cu.Device
}

var open = sync.OnceValues(func() (*Device, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: no CUDA device", ErrNoCUDA)
	}
	dev, err := cu.GetDevice(0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	name, err := dev.Name()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	major, minor, err := dev.ComputeCapability()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	return &Device{Name: name, Major: major, Minor: minor, dev: dev}, nil
})

// Open opens device 0 once and describes it.
func Open() (*Device, error) { return open() }

// NewLayer opens the device and returns an error wrapping ErrNotImplemented: the kernels are
// not part of this version.
func (Backend) NewLayer(w *moe.Weights, cfg moe.Config) (moe.Layer, error) {
	d, err := Open()
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: expert kernels for %s (sm_%d%d)", ErrNotImplemented, d.Name, d.Major, d.Minor)
}
