// What a kernel's code costs when it is not in the SM's instruction caches: chains of five
// kernels, each launched as the layer launches its stages (programmatic stream serialization,
// every block waiting for the kernel before it), replayed as one CUDA graph. Each kernel runs a
// straight-line body of N FFMA (16 bytes of code each, eight independent chains, so a warp
// issues about one a cycle once its code is fetched). "same" launches one function five times,
// "distinct" five functions with the same body at different addresses, "loop" five functions
// whose body is a loop of N/R FFMA run R times (the same instructions executed, 1/R of the code).
// The difference between same and distinct is what the code's fetch costs the chain; a sweep
// kernel reading 96 MB before the chain (once per replay) shows it with L2 emptied of code.
// Then the decode kernels themselves (real_chains): GPT-OSS-120B's one-token GEMM1 and GEMM2 in
// sequence, GEMM2 on its own instance of the loop (split 4) or on GEMM1's (split 2), against
// each alone. Then the routing kernel of one GPT-OSS-120B token (moe_route_small: 4 pairs of 128
// experts, the gather of a 2944-byte row), the forward's first kernel, which nothing before it
// can warm: after five kernels of 16 KB of other code each (its code then gone from the SM), and
// once more right after itself (its code there).
//
// Last (mode "act"), the activation kernel of one GPT-OSS-120B token (moe_act_quant: 4 pairs, 23
// groups of 128, SwiGLU with the clamp, the decode order) cold and warm the same way, and, built
// with -DMOE_TRACE, its steps (h loaded, activated, quantized, group stored) in each: whether its
// chain's microsecond in the forward's trace is its code's fetch.
//
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/icache icache_bench.cu && /tmp/icache
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -DMOE_TRACE -o /tmp/icache_t icache_bench.cu && /tmp/icache_t act
#include "../gemm_fp8fp4.cu"
#include "../route.cu"
#include "../activation.cu"
#include "bench_setup.cuh"
#include <cstring>

#define FMA8(b, c)                                                                                                    \
  asm volatile(                                                                                                       \
      "fma.rn.f32 %0, %0, %8, %9;\n fma.rn.f32 %1, %1, %8, %9;\n fma.rn.f32 %2, %2, %8, %9;\n fma.rn.f32 %3, %3, %8, " \
      "%9;\n fma.rn.f32 %4, %4, %8, %9;\n fma.rn.f32 %5, %5, %8, %9;\n fma.rn.f32 %6, %6, %8, %9;\n fma.rn.f32 %7, "   \
      "%7, %8, %9;\n"                                                                                                 \
      : "+f"(a[0]), "+f"(a[1]), "+f"(a[2]), "+f"(a[3]), "+f"(a[4]), "+f"(a[5]), "+f"(a[6]), "+f"(a[7])                \
      : "f"(b), "f"(c))

// V: the instance (its code's address); N: FFMA in the body; R: times the body's loop runs (N/R
// FFMA a pass, so 1/R of the code for the same work).
template <int V, int N, int R>
__global__ void __launch_bounds__(128) chain_k(float* out, float b, float c) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  float a[8];
#pragma unroll
  for (int j = 0; j < 8; j++) a[j] = (float)(threadIdx.x + j + V);
#pragma unroll 1
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int i = 0; i < N / R / 8; i++) FMA8(b, c);
  }
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 8; j++) s += a[j];
  if (s == 1234.5f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;  // never true for these inputs
}

// Reads n float4 (once per replay: L2 then holds the sweep's lines, not the chain's code).
__global__ void __launch_bounds__(256) sweep_k(const float4* __restrict__ in, size_t n, float* out) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  float s = 0.f;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float4 v = in[i];
    s += v.x + v.y + v.z + v.w;
  }
  if (s == 1234.5f) out[threadIdx.x] = s;
}

// The graph that capture(st) records on st, instantiated (*g: the graph, for its release).
template <class Capture>
static cudaGraphExec_t graph_of(Capture capture, cudaStream_t st, cudaGraph_t* g) {
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  capture(st);
  CK(cudaStreamEndCapture(st, g));
  cudaGraphExec_t ge;
  CK(cudaGraphInstantiateWithFlags(&ge, *g, 0));
  return ge;
}

// Median µs a replay of the graph that capture(stream) records: 50 replays of warm-up, then 9
// rounds of 100 back to back, timed with events.
template <class Capture>
static double time_graph(Capture capture) {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t g;
  cudaGraphExec_t ge = graph_of(capture, st, &g);
  for (int i = 0; i < 50; i++) CK(cudaGraphLaunch(ge, st));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<double> t;
  const int reps = 100;
  for (int k = 0; k < 9; k++) {
    cudaEventRecord(e0, st);
    for (int i = 0; i < reps; i++) CK(cudaGraphLaunch(ge, st));
    cudaEventRecord(e1, st);
    CK(cudaEventSynchronize(e1));
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    t.push_back(ms * 1e3 / reps);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  return t[t.size() / 2];
}

struct Chain {
  const char* name;
  std::vector<const void*> fns;
};

// Median µs a replay of a graph of the chain (after a sweep when sweep is set), grid blocks of 128.
static double time_chain(const Chain& ch, int grid, bool sweep, float* out, const float4* buf, size_t nbuf, int sms) {
  float b = 1.0001f, c = 0.5f;
  void* args[] = {&out, &b, &c};
  size_t n = nbuf;
  void* sargs[] = {(void*)&buf, &n, &out};
  return time_graph([&](cudaStream_t st) {
    if (sweep) launch_pdl((const void*)sweep_k, 4 * sms, 256, st, sargs);
    for (const void* f : ch.fns) launch_pdl(f, grid, 128, st, args);
  });
}

template <int N, int R>
static Chain distinct_chain(const char* name) {
  return {name, {(const void*)chain_k<0, N, R>, (const void*)chain_k<1, N, R>, (const void*)chain_k<2, N, R>,
                 (const void*)chain_k<3, N, R>, (const void*)chain_k<4, N, R>}};
}
template <int N>
static Chain same_chain(const char* name) {
  const void* f = (const void*)chain_k<0, N, 1>;
  return {name, {f, f, f, f, f}};
}
template <int N>
static Chain one_chain(const char* name) {
  return {name, {(const void*)chain_k<0, N, 1>}};
}


// The decode GEMMs of GPT-OSS-120B at one token (4 tiles of one token; GEMM1 5888 × 2944, GEMM2
// 2944 × 2944) in sequences as a forward runs them, with a kernel of 8 KB of code on 12 blocks
// between them (the activation's place): GEMM2 at split 4 (the layer's choice) or at split 2,
// whose code is GEMM1's (the same instance of gemm_dec), against each kernel alone (back to
// back with itself, so with its code warm).
static void real_chains() {
  allow_decode();
  TilePool g1 = make_pool(5888, 2944, 4, 1, "ICACHE_POOL_MB"), g2 = make_pool(2944, 2944, 4, 1, "ICACHE_POOL_MB");
  const int sets = std::min(g1.sets, g2.sets);
  float *o1, *o2, *oa;
  CK(cudaMalloc(&o1, 4 * 32 * 4 * 5888));
  CK(cudaMalloc(&o2, 4 * 32 * 4 * 2944));
  CK(cudaMalloc(&oa, 1 << 20));
  auto act = [&] { chain_k<5, 512, 1><<<12, 128>>>(oa, 1.0001f, 0.5f); };
  const char* names[] = {"G1(2) A G2(4)", "G1(2) A G2(2)", "G1(4) A G2(4)", "G1(2) G2(4)", "G1(2) G2(2)",
                         "G1(2) alone",   "G1(4) alone",   "G2(4) alone",   "G2(2) alone", "A alone"};
  auto run = [&](int v, int set) {
    switch (v) {
      case 0: launch_dec(g1, set, o1, 2), act(), launch_dec(g2, set, o2, 4); break;
      case 1: launch_dec(g1, set, o1, 2), act(), launch_dec(g2, set, o2, 2); break;
      case 2: launch_dec(g1, set, o1, 4), act(), launch_dec(g2, set, o2, 4); break;
      case 3: launch_dec(g1, set, o1, 2), launch_dec(g2, set, o2, 4); break;
      case 4: launch_dec(g1, set, o1, 2), launch_dec(g2, set, o2, 2); break;
      case 5: launch_dec(g1, set, o1, 2); break;
      case 6: launch_dec(g1, set, o1, 4); break;
      case 7: launch_dec(g2, set, o2, 4); break;
      case 8: launch_dec(g2, set, o2, 2); break;
      case 9: act(); break;
    }
  };
  for (int pass = 0; pass < 2; pass++) {
    const std::vector<double> t = time_variants(10, sets, run);
    printf("real chains, pass %d (µs a sequence, median):\n", pass + 1);
    for (int v = 0; v < 10; v++) printf("  %-16s %8.2f\n", names[v], t[v]);
  }
  g1.release();
  g2.release();
}

// The routing kernel of one token, cold and warm (see the header): µs a graph replay of the five
// 16 KB kernels alone, with the routing kernel after them, and with it twice.
static void route_chains(int sms) {
  const int E = 128, topk = 4, M = 1, K = 2944, G = K / 128, P = M * topk, rows = 128;
  int hids[topk] = {3, 40, 77, 101};
  int *ids, *counts, *offsets, *eids, *rpair, *inv, *tiles, *ntiles, *err;
  u8 *a1q, *a1qp;
  float *a1s, *a1sp, *out;
  CK(cudaMalloc(&ids, 4 * P));
  CK(cudaMemcpy(ids, hids, 4 * P, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&counts, 4 * E));
  CK(cudaMalloc(&offsets, 4 * (E + 1)));
  CK(cudaMalloc(&eids, 4 * rows));
  CK(cudaMalloc(&rpair, 4 * rows));
  CK(cudaMalloc(&inv, 4 * P));
  CK(cudaMalloc(&tiles, 8 * rows));
  CK(cudaMalloc(&ntiles, 16));
  CK(cudaMalloc(&err, 4));
  CK(cudaMalloc(&a1q, M * K));
  CK(cudaMemset(a1q, 0x38, M * K));
  CK(cudaMalloc(&a1s, 4 * M * G));
  CK(cudaMemset(a1s, 0, 4 * M * G));
  CK(cudaMalloc(&a1qp, rows * K));
  CK(cudaMalloc(&a1sp, 4 * rows * G));
  CK(cudaMalloc(&out, 1 << 20));
  i64 m = M, tk = topk, e = E, eg = E, k = K;
  const int* emap = nullptr;
  int* t8 = nullptr;
  void* rargs[] = {&ids, &emap, &m, &tk, &e, &eg, &counts, &offsets, &eids, &rpair, &inv, &tiles, &ntiles, &err,
                   &a1q, &a1s, &k, &a1qp, &a1sp, &t8};
  float b = 1.0001f, c = 0.5f;
  void* cargs[] = {&out, &b, &c};
  const Chain other = distinct_chain<1024, 1>("five 16 KB kernels");
  auto timed = [&](int nroute) {
    return time_graph([&](cudaStream_t st) {
      for (const void* f : other.fns) launch_pdl(f, sms, 128, st, cargs);
      for (int i = 0; i < nroute; i++) launch_pdl((const void*)moe_route_small, 1, ROUTE_SMALL_THREADS, st, rargs, 8 * E);
    });
  };
  int hn[2];
  const double t0 = timed(0), t1 = timed(1), t2 = timed(2);
  CK(cudaMemcpy(hn, ntiles, 8, cudaMemcpyDeviceToHost));
  printf("routing kernel of one token (%d tiles routed): five 16 KB kernels %.2f µs; + route %.2f (cold: +%.2f); + route twice %.2f (warm: +%.2f)\n",
         hn[0], t0, t1, t1 - t0, t2, t2 - t1);
}

// The activation kernel of one token, cold and warm (see the header): µs a graph replay of the
// five 16 KB kernels alone, with the activation kernel after them (cold), and with it twice
// (warm); with MOE_TRACE, the last block's steps after its values of h are back (h loaded), the
// median over 20 replays of each graph: the cold graph's are the cold launch's, the warm graph's
// the second launch's (the table keeps each step's latest time).
static void act_chains(int sms) {
  const int P = 4, I = 2944, G = I / 128;
  std::vector<float> hh(size_t(P) * 2 * I);
  uint64_t st = 7;
  for (float& v : hh) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    v = (float)((int)(st >> 40) % 2001 - 1000) / 250.f;  // about ±4
  }
  int hinv[P] = {0, 1, 2, 3}, heid[P] = {3, 40, 77, 101};
  float *h, *a2s, *out;
  int *inv, *eid;
  u8* a2q;
  CK(cudaMalloc(&h, hh.size() * 4));
  CK(cudaMemcpy(h, hh.data(), hh.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&inv, 4 * P));
  CK(cudaMemcpy(inv, hinv, 4 * P, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&eid, 4 * P));
  CK(cudaMemcpy(eid, heid, 4 * P, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&a2q, size_t(P) * I));
  CK(cudaMalloc(&a2s, 4 * P * G));
  CK(cudaMalloc(&out, 1 << 20));
  const float* bias = nullptr;
  i64 p = P, ii = I, act = ACT_SWIGLUOAI, clamp = 1, fmt = FMT_CEIL_UE8M0, order = 2;
  double limit = 7, alpha = 1.702, beta = 1;
  void* aargs[] = {&h, &eid, &inv, &bias, &a2q, &a2s, &p, &ii, &act, &clamp, &limit, &alpha, &beta, &fmt, &order};
  float b = 1.0001f, c = 0.5f;
  void* cargs[] = {&out, &b, &c};
  const Chain other = distinct_chain<1024, 1>("five 16 KB kernels");
  auto capture = [&](int nact) {
    return [&, nact](cudaStream_t s) {
      for (const void* f : other.fns) launch_pdl(f, sms, 128, s, cargs);
      for (int i = 0; i < nact; i++) launch_pdl((const void*)moe_act_quant, dim3(P, (G + 7) / 8), 256, s, aargs);
    };
  };
  const double t0 = time_graph(capture(0)), t1 = time_graph(capture(1)), t2 = time_graph(capture(2));
  printf("activation kernel of one token: five 16 KB kernels %.2f µs; + activation %.2f (cold: +%.2f); + activation twice %.2f (warm: +%.2f)\n",
         t0, t1, t1 - t0, t2, t2 - t1);
#ifdef MOE_TRACE
  // Steps 2-4 of the activation's (TraceSteps), each after step 1, h loaded.
  const char* names[] = {"activated", "quantized", "group stored"};
  for (int nact = 1; nact <= 2; nact++) {
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge = graph_of(capture(nact), s, &g);
    std::vector<std::vector<double>> d(3);
    unsigned long long tab[2 * TRACE_STEPS * TRACE_SLOTS];
    for (int r = 0; r < 25; r++) {
      for (int k = 0; k < TRACE_STEPS * TRACE_SLOTS; k++) tab[2 * k] = ~0ull, tab[2 * k + 1] = 0;
      CK(cudaMemcpyToSymbol(moe_trace_step, tab, sizeof tab));
      CK(cudaGraphLaunch(ge, s));
      CK(cudaStreamSynchronize(s));
      CK(cudaMemcpyFromSymbol(tab, moe_trace_step, sizeof tab));
      if (r < 5) continue;  // warm-up
      const unsigned long long* a = tab + 2 * TRACE_STEPS * TRACE_ACT;
      for (int k = 0; k < 3; k++) d[k].push_back(((double)a[2 * (k + 2) + 1] - (double)a[2 * 1 + 1]) / 1e3);
    }
    printf("  %s launch, the last block's steps after h loaded (µs, median of 20):", nact == 1 ? "cold" : "warm");
    for (int k = 0; k < 3; k++) {
      std::sort(d[k].begin(), d[k].end());
      printf("  %s %.2f", names[k], d[k][d[k].size() / 2]);
    }
    printf("\n");
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
  }
#endif
}

int main(int argc, char** argv) {
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  float* out;
  CK(cudaMalloc(&out, 1 << 20));
  const size_t nbuf = (96ull << 20) / 16;
  float4* buf;
  CK(cudaMalloc(&buf, nbuf * 16));
  CK(cudaMemset(buf, 0, nbuf * 16));
  printf("icache_bench: %s, %d SMs, L2 %d MB; µs a graph replay (median of 9 × 100)\n", prop.name, sms,
         prop.l2CacheSize >> 20);
  if (argc > 1 && strcmp(argv[1], "act") == 0) {
    for (int i = 0; i < 3; i++) act_chains(sms);
    return 0;
  }
  std::vector<Chain> chains = {
      one_chain<64>("one N=64"),          one_chain<1024>("one N=1024"),        one_chain<4096>("one N=4096"),
      same_chain<64>("same N=64"),        distinct_chain<64, 1>("distinct N=64"),
      same_chain<256>("same N=256"),      distinct_chain<256, 1>("distinct N=256"),
      distinct_chain<384, 1>("distinct N=384"),  distinct_chain<512, 1>("distinct N=512"),
      distinct_chain<768, 1>("distinct N=768"),  same_chain<2048>("same N=2048"),
      same_chain<1024>("same N=1024"),    distinct_chain<1024, 1>("distinct N=1024"), distinct_chain<1024, 8>("loop N=1024 R=8"),
      same_chain<4096>("same N=4096"),    distinct_chain<4096, 1>("distinct N=4096"), distinct_chain<4096, 8>("loop N=4096 R=8"),
      same_chain<8192>("same N=8192"),    distinct_chain<8192, 1>("distinct N=8192"), distinct_chain<8192, 16>("loop N=8192 R=16"),
  };
  printf("%-20s %6s %10s %10s %10s %10s\n", "chain", "code", "1/SM", "3/SM", "1/SM+sw", "3/SM+sw");
  for (const Chain& ch : chains) {
    double v[4];
    for (int k = 0; k < 4; k++) v[k] = time_chain(ch, (k & 1) ? 3 * sms : sms, k >= 2, out, buf, nbuf, sms);
    int n = 0;
    sscanf(ch.name, "%*s N=%d", &n);
    printf("%-20s %5dK %10.2f %10.2f %10.2f %10.2f\n", ch.name, n * 16 / 1024, v[0], v[1], v[2], v[3]);
  }
  // The sweep alone (for the +sw columns).
  {
    Chain none = {"sweep only", {}};
    printf("%-20s %6s %10s %10s %10.2f\n", "sweep only", "-", "-", "-", time_chain(none, sms, true, out, buf, nbuf, sms));
  }
  real_chains();
  for (int i = 0; i < 3; i++) route_chains(sms);
  return 0;
}
