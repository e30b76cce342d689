// condprobe: what a conditional node costs in a replayed CUDA graph on this machine, against
// the same kernels chained with and without programmatic dependent launch, and whether a
// kernel that sets a conditional handle loads from a device-linked fatbin through the driver
// API (the way cudaops loads its kernels). Built and run on the GPU machine by run.sh; not part
// of the library.
#include <cuda.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// The first kernel of each graph: spins for spin cycles (so that with a long spin the host's
// graph launches run ahead and only the device's time is measured), sets the handle (when given)
// and lets its dependents launch.
__global__ void head(cudaGraphConditionalHandle h, unsigned v, int set, int* flag, long long spin) {
  if (spin > 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
  }
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    if (set) cudaGraphSetConditional(h, v);
    flag[0] = (int)v;
  }
  asm volatile("griddepcontrol.launch_dependents;");
}

// A stand-in for a stage: every block waits for the kernel before it, reads and writes a word.
__global__ void stage(int* buf, int tag) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (threadIdx.x == 0) buf[1 + blockIdx.x] += tag + buf[0];
  asm volatile("griddepcontrol.launch_dependents;");
}

static cudaKernelNodeParams kparams(void* fn, void** args, unsigned grid) {
  cudaKernelNodeParams p = {};
  p.func = fn;
  p.gridDim = dim3(grid);
  p.blockDim = dim3(128);
  p.kernelParams = args;
  return p;
}

// cudaGraphAddNode: the edge-data form where the toolkit has it, else the plain one.
template <class T>
static auto add_node(int, T* n, cudaGraph_t g, const T* d, size_t nd, cudaGraphNodeParams* p)
    -> decltype(cudaGraphAddNode(n, g, d, (const cudaGraphEdgeData*)nullptr, nd, p)) {
  return cudaGraphAddNode(n, g, d, (const cudaGraphEdgeData*)nullptr, nd, p);
}
template <class T>
static cudaError_t add_node(long, T* n, cudaGraph_t g, const T* d, size_t nd, cudaGraphNodeParams* p) {
  return cudaGraphAddNode(n, g, d, nd, p);
}

struct Bufs {
  int* flag;
  int* buf;
};

// Times a graph: 20 warm-up replays, then 15 rounds of 200, the median round's mean.
static double time_graph(cudaGraph_t g, cudaStream_t s) {
  cudaGraphExec_t x;
  CK(cudaGraphInstantiate(&x, g, 0));
  for (int i = 0; i < 20; i++) CK(cudaGraphLaunch(x, s));
  CK(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> r;
  for (int k = 0; k < 15; k++) {
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < 200; i++) CK(cudaGraphLaunch(x, s));
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    r.push_back(ms * 1000.f / 200.f);
  }
  std::sort(r.begin(), r.end());
  CK(cudaGraphExecDestroy(x));
  return r[r.size() / 2];
}

// One stage kernel on s, under programmatic launch when pdl is set.
static void launch_stage(cudaStream_t s, unsigned grid, bool pdl, int* buf, int tag) {
  cudaLaunchConfig_t c = {};
  c.gridDim = dim3(grid);
  c.blockDim = dim3(128);
  c.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  c.attrs = at;
  c.numAttrs = pdl ? 1 : 0;
  CK(cudaLaunchKernelEx(&c, stage, buf, tag));
}

// A chain of n stage kernels after head, captured with programmatic launch (pdl) or plain.
static cudaGraph_t captured_chain(cudaStream_t s, Bufs b, int n, bool pdl, unsigned grid, long long spin) {
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraphConditionalHandle h0 = 0;
  unsigned v = 1;
  int set = 0;
  head<<<1, 128, 0, s>>>(h0, v, set, b.flag, spin);
  for (int i = 0; i < n; i++) {
    launch_stage(s, grid, pdl, b.buf, i);
  }
  cudaGraph_t g;
  CK(cudaStreamEndCapture(s, &g));
  return g;
}

// head -> conditional node (IF when nbody is 0, else SWITCH of nbody bodies, each a chain of
// inner stage kernels captured with programmatic launch) -> tail stage kernels. head sets the
// handle to v.
static cudaGraph_t cond_graph(cudaStream_t s, Bufs b, int nbody, unsigned v, int inner, int tail, unsigned grid,
                              long long spin) {
  cudaGraph_t g;
  CK(cudaGraphCreate(&g, 0));
  cudaGraphConditionalHandle h;
  CK(cudaGraphConditionalHandleCreate(&h, g, 0, 0));
  int set = 1;
  void* hargs[] = {&h, &v, &set, &b.flag, &spin};
  cudaKernelNodeParams hp = kparams((void*)head, hargs, 1);
  cudaGraphNode_t hn;
  CK(cudaGraphAddKernelNode(&hn, g, nullptr, 0, &hp));
  cudaGraphNodeParams cp = {};
  cp.type = cudaGraphNodeTypeConditional;
  cp.conditional.handle = h;
  cp.conditional.type = nbody == 0 ? cudaGraphCondTypeIf : cudaGraphCondTypeSwitch;
  cp.conditional.size = nbody == 0 ? 1 : nbody;
  cudaGraphNode_t cn;
  CK(add_node(0, &cn, g, &hn, 1, &cp));
  for (unsigned k = 0; k < cp.conditional.size; k++) {
    cudaGraph_t body = cp.conditional.phGraph_out[k];
    CK(cudaStreamBeginCaptureToGraph(s, body, nullptr, nullptr, 0, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < inner; i++) {
      launch_stage(s, grid, i > 0, b.buf, (int)(100 * k + i));
    }
    cudaGraph_t out = nullptr;
    CK(cudaStreamEndCapture(s, &out));
  }
  cudaGraphNode_t prev = cn;
  for (int i = 0; i < tail; i++) {
    int tag = 1000 + i;
    void* sargs[] = {&b.buf, &tag};
    cudaKernelNodeParams sp = kparams((void*)stage, sargs, grid);
    cudaGraphNode_t sn;
    CK(cudaGraphAddKernelNode(&sn, g, &prev, 1, &sp));
    prev = sn;
  }
  return g;
}

// Whether a kernel calling cudaGraphSetConditional loads from a device-linked fatbin through the
// driver API.
static void driver_load(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::printf("fatbin %s: not found\n", path);
    return;
  }
  std::vector<char> img(1 << 24);
  size_t n = std::fread(img.data(), 1, img.size(), f);
  std::fclose(f);
  img.resize(n);
  CUmodule m;
  CUresult r = cuModuleLoadData(&m, img.data());
  const char* es = nullptr;
  cuGetErrorString(r, &es);
  std::printf("driver load of %s (%zu bytes): %s\n", path, n, r == CUDA_SUCCESS ? "ok" : es);
  if (r != CUDA_SUCCESS) return;
  CUfunction fn;
  r = cuModuleGetFunction(&fn, m, "set_tier");
  cuGetErrorString(r, &es);
  std::printf("driver function set_tier: %s\n", r == CUDA_SUCCESS ? "ok" : es);
}

int main(int argc, char** argv) {
  CK(cudaSetDevice(0));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Bufs b;
  CK(cudaMalloc(&b.flag, 4));
  CK(cudaMalloc(&b.buf, 4 * 4096));
  CK(cudaMemset(b.buf, 0, 4 * 4096));
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  std::printf("driver %d runtime %d\n", drv, rt);
  const unsigned grid = 528;  // four blocks an SM of a 132-SM card
  struct Row {
    const char* name;
    cudaGraph_t g;
    long long spin;
  };
  std::vector<Row> rows;
  // Without a spin the host's launch rate may set the pace; with a spin of 200000 cycles (about
  // 100 us at 1.98 GHz) a replay's time is the device's, the spin included.
  for (long long spin : {0LL, 200000LL}) {
    rows.push_back({"head + 3 stages, programmatic", captured_chain(s, b, 3, true, grid, spin), spin});
    rows.push_back({"head + 3 stages, plain", captured_chain(s, b, 3, false, grid, spin), spin});
    rows.push_back({"head + 2 stages, programmatic", captured_chain(s, b, 2, true, grid, spin), spin});
    rows.push_back({"head + 1 stage, programmatic", captured_chain(s, b, 1, true, grid, spin), spin});
    rows.push_back({"head -> IF(1 stage), taken -> 2 stages", cond_graph(s, b, 0, 1, 1, 2, grid, spin), spin});
    rows.push_back({"head -> IF(1 stage), skipped -> 2 stages", cond_graph(s, b, 0, 0, 1, 2, grid, spin), spin});
    rows.push_back({"head -> SWITCH(3 bodies of 1 stage), body 1 -> 2 stages", cond_graph(s, b, 3, 1, 1, 2, grid, spin), spin});
    rows.push_back({"head -> SWITCH(3 bodies of 3 stages, programmatic inside), body 2", cond_graph(s, b, 3, 2, 3, 0, grid, spin), spin});
    rows.push_back({"head -> SWITCH(3 bodies), value 3: none -> 2 stages", cond_graph(s, b, 3, 3, 1, 2, grid, spin), spin});
  }
  // The switch's choice, checked: a body writes its own tag into buf[1 + block].
  {
    CK(cudaMemset(b.buf, 0, 4 * 4096));
    cudaGraph_t g = cond_graph(s, b, 3, 2, 1, 0, grid, 0);
    cudaGraphExec_t x;
    CK(cudaGraphInstantiate(&x, g, 0));
    CK(cudaGraphLaunch(x, s));
    CK(cudaStreamSynchronize(s));
    int v[2];
    CK(cudaMemcpy(v, b.buf, 8, cudaMemcpyDeviceToHost));
    std::printf("switch check: buf[1] = %d (body 2's first stage adds 200)\n", v[1]);
  }
  for (auto& r : rows) std::printf("spin %6lld  %-68s %8.2f us a replay\n", r.spin, r.name, time_graph(r.g, s));
  CK(cudaGetLastError());
  if (argc > 1) {
    cuInit(0);
    driver_load(argv[1]);
  }
  return 0;
}
