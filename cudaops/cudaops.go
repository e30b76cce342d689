// Package cudaops is the CUDA backend of the layer for Hopper GPUs (H100, H200), built with
// the build tag cudaops over gorgonia.org/cu. Without the tag, or on a machine without a usable
// GPU, its Backend returns errors wrapping ErrNoCUDA and callers fall back to package native.
//
// The tag is not "cuda": that tag also switches on Gorgonia's own CUDA path (gorgonia.org/cu/dnn,
// which needs cuDNN 7/8 headers and libraries, and a managed-memory arena per tape machine), and
// every graph program that links this backend links Gorgonia, so the two must not share a tag.
//
// The kernels (kernels/*.cu) are built into kernels/moe.fatbin by kernels/build.sh on a machine
// with nvcc (sm_90a SASS and compute_90 PTX) and embedded; kernels/manifest.txt records the
// sources' hashes, which CI compares with the sources. FP4MOE_FATBIN loads another fatbin.
//
//go:generate bash kernels/build.sh
package cudaops

import "errors"

// ErrNoCUDA is returned when the package was built without the cuda tag or no GPU is usable.
var ErrNoCUDA = errors.New("cudaops: CUDA backend not available")

// Backend is the CUDA backend. Its zero value uses device 0.
type Backend struct{}

// Name returns "cuda".
func (Backend) Name() string { return "cuda" }
