// Package graphtest holds the tests of the layer's ops inside Gorgonia graphs: both virtual
// machines, repeated runs with Reset, a whole MoE block against a float64 computation, hashing
// of ops with different parameters, and errors at build and run time. It has no non-test code.
package graphtest
