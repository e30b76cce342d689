//go:build cudaops

package cudaops

// What gorgonia.org/cu v0.9.6 lacks, over the driver API: launching with an argument array
// built in C, raising a function's dynamic shared memory limit, pinned host memory, and stream
// capture into CUDA graphs. cu's handle types are single-field structs around the driver's
// handles; raw() reads them (checked at Open by size).

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include <string.h>

// Every kernel parameter of this package is 8 bytes wide; vals holds them in order. Every launch
// allows programmatic dependent launch: the kernel may start while the previous kernel on the
// stream still runs (once all of that kernel's blocks have asked for it), and waits for it
// itself (pdl_begin in kernels/common.cuh, which every kernel of the module calls first).
static CUresult fp4_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                           unsigned smem, CUstream s, unsigned long long* vals, int n) {
	void* ptrs[32];
	if (n > 32) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < n; i++) ptrs[i] = &vals[i];
	CUlaunchAttribute attr;
	memset(&attr, 0, sizeof attr);
	attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
	attr.value.programmaticStreamSerializationAllowed = 1;
	CUlaunchConfig cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.gridDimX = gx;
	cfg.gridDimY = gy;
	cfg.gridDimZ = gz;
	cfg.blockDimX = bx;
	cfg.blockDimY = by;
	cfg.blockDimZ = bz;
	cfg.sharedMemBytes = smem;
	cfg.hStream = s;
	cfg.attrs = &attr;
	cfg.numAttrs = 1;
	return cuLaunchKernelEx(&cfg, f, ptrs, 0);
}

static CUresult fp4_set_max_dynamic_smem(CUfunction f, int bytes) {
	return cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
}

// Prefer the largest shared-memory carveout of the unified L1/shared memory for f.
static CUresult fp4_prefer_shared(CUfunction f) {
	return cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100);
}

static CUresult fp4_host_alloc(void** p, size_t n) { return cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_DEVICEMAP); }
static CUresult fp4_host_device_ptr(CUdeviceptr* d, void* p) { return cuMemHostGetDevicePointer(d, p, 0); }
static CUresult fp4_host_free(void* p) { return cuMemFreeHost(p); }
static CUresult fp4_host_register(void* p, size_t n) { return cuMemHostRegister(p, n, 0); }
static CUresult fp4_host_unregister(void* p) { return cuMemHostUnregister(p); }

static CUresult fp4_begin_capture(CUstream s) { return cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL); }

static CUresult fp4_end_capture(CUstream s, CUgraphExec* exec) {
	CUgraph g;
	CUresult r = cuStreamEndCapture(s, &g);
	if (r != CUDA_SUCCESS) return r;
	r = cuGraphInstantiateWithFlags(exec, g, 0);
	cuGraphDestroy(g);
	return r;
}

static CUresult fp4_graph_launch(CUgraphExec e, CUstream s) { return cuGraphLaunch(e, s); }
static CUresult fp4_graph_destroy(CUgraphExec e) { return cuGraphExecDestroy(e); }

static const char* fp4_error_name(CUresult r) {
	const char* s = 0;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || !s) return "unknown CUDA error";
	return s;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// driverError wraps a driver result code.
type driverError struct {
	op   string
	code C.CUresult
}

func (e *driverError) Error() string {
	return fmt.Sprintf("cudaops: %s: %s (%d)", e.op, C.GoString(C.fp4_error_name(e.code)), int(e.code))
}

func check(op string, r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return &driverError{op, r}
}

// raw reads the driver handle inside one of cu's single-field handle structs.
func raw[R any, T any](v T) R { return *(*R)(unsafe.Pointer(&v)) }

// handlesFit reports whether cu's handle structs hold exactly one pointer, as raw assumes.
func handlesFit() bool {
	p := unsafe.Sizeof(uintptr(0))
	return unsafe.Sizeof(cu.Stream{}) == p && unsafe.Sizeof(cu.Function{}) == p
}

type dim3 struct{ x, y, z int }

// launch starts f on stream with the given grid, block, dynamic shared memory and 8-byte
// parameters (pointers, int64, float64 bits).
func launch(f cu.Function, grid, block dim3, smem int, s cu.Stream, args ...uint64) error {
	if grid.x == 0 || grid.y == 0 || grid.z == 0 {
		return nil // nothing to do
	}
	vals := make([]C.ulonglong, len(args)+1) // +1: never a zero-length slice
	for i, a := range args {
		vals[i] = C.ulonglong(a)
	}
	return check("cuLaunchKernelEx", C.fp4_launch(raw[C.CUfunction](f), C.uint(grid.x), C.uint(grid.y), C.uint(grid.z),
		C.uint(block.x), C.uint(block.y), C.uint(block.z), C.uint(smem), raw[C.CUstream](s), &vals[0], C.int(len(args))))
}

// setMaxDynamicSmem raises f's dynamic shared memory limit (above 48 KB needs it).
func setMaxDynamicSmem(f cu.Function, bytes int) error {
	return check("cuFuncSetAttribute", C.fp4_set_max_dynamic_smem(raw[C.CUfunction](f), C.int(bytes)))
}

// preferShared asks the driver to give f the largest shared-memory carveout, so that as many
// blocks as its shared memory allows are resident on a multiprocessor.
func preferShared(f cu.Function) error {
	return check("cuFuncSetAttribute", C.fp4_prefer_shared(raw[C.CUfunction](f)))
}

// pinned is page-locked host memory, which asynchronous copies need to be asynchronous (and
// CUDA graphs need to capture them).
type pinned struct {
	p unsafe.Pointer
	n int
}

func allocPinned(n int) (pinned, error) {
	var p unsafe.Pointer
	if err := check("cuMemHostAlloc", C.fp4_host_alloc(&p, C.size_t(max(n, 1)))); err != nil {
		return pinned{}, err
	}
	return pinned{p, n}, nil
}

func (h *pinned) free() error {
	if h.p == nil {
		return nil
	}
	err := check("cuMemFreeHost", C.fp4_host_free(h.p))
	*h = pinned{}
	return err
}

// registerHost page-locks n bytes of host memory at p (memory of the caller's, e.g. a Go slice)
// so that the device copies straight into or out of it; unregisterHost undoes it. A Go slice
// stays registered only while the call that holds it runs (Forward's output, registerOutMin):
// once its caller lets it go, its pages may be handed back to the system.
func registerHost(p unsafe.Pointer, n int) error {
	return check("cuMemHostRegister", C.fp4_host_register(p, C.size_t(n)))
}

func unregisterHost(p unsafe.Pointer) error {
	return check("cuMemHostUnregister", C.fp4_host_unregister(p))
}

// device returns the device's address of the pinned memory (mapped into the device's address
// space: kernels read and write it over the host link).
func (h pinned) device() (cu.DevicePtr, error) {
	var d C.CUdeviceptr
	if err := check("cuMemHostGetDevicePointer", C.fp4_host_device_ptr(&d, h.p)); err != nil {
		return 0, err
	}
	return cu.DevicePtr(d), nil
}

// bytes returns the pinned memory as a byte slice.
func (h pinned) bytes() []byte { return unsafe.Slice((*byte)(h.p), h.n) }

// graphExec is an instantiated CUDA graph.
type graphExec struct{ e C.CUgraphExec }

// beginCapture starts capturing the work issued to s into a graph.
func beginCapture(s cu.Stream) error {
	return check("cuStreamBeginCapture", C.fp4_begin_capture(raw[C.CUstream](s)))
}

// endCapture ends the capture and instantiates the graph.
func endCapture(s cu.Stream) (*graphExec, error) {
	g := &graphExec{}
	if err := check("cuStreamEndCapture", C.fp4_end_capture(raw[C.CUstream](s), &g.e)); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *graphExec) launch(s cu.Stream) error {
	return check("cuGraphLaunch", C.fp4_graph_launch(g.e, raw[C.CUstream](s)))
}

func (g *graphExec) destroy() error {
	if g == nil || g.e == nil {
		return nil
	}
	err := check("cuGraphExecDestroy", C.fp4_graph_destroy(g.e))
	g.e = nil
	return err
}
