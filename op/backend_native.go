//go:build !cudaops

package op

import (
	"github.com/fp4moe/fp4moe/moe"
	"github.com/fp4moe/fp4moe/native"
)

// DefaultBackend returns the backend layers use unless WithBackend says otherwise: in this
// build (without the cudaops tag), the pure-Go backend.
func DefaultBackend() moe.Backend { return native.Backend{} }
