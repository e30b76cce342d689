//go:build !cudaops

package main

import (
	"fmt"
	"io"
)

// bench needs the CUDA backend.
func bench(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "fp4moe bench: this build has no CUDA backend (build with -tags cudaops)")
	return 2
}
