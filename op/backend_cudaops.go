//go:build cudaops

package op

import (
	"os"

	"github.com/fp4moe/fp4moe/cudaops"
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// DefaultBackend returns the backend layers use unless WithBackend says otherwise: in this
// build (tag cudaops), the CUDA backend when a Hopper GPU opens, else the pure-Go backend.
// FP4MOE_BACKEND=native forces the pure-Go backend.
func DefaultBackend() moe.Backend {
	if os.Getenv(BackendEnv) != "native" {
		if _, err := cudaops.Open(); err == nil {
			return cudaops.Backend{}
		}
	}
	return native.Backend{}
}
