// What a load costs when its 2 MB page's address translation is cold: one thread's chain of
// dependent loads, each from another page of a large buffer, after a sweep of another region
// large enough to evict the translations (cold), then from other lines of the same pages (the
// translations warm, the lines not in L2), then the same lines again (L2 hits). The decode
// GEMMs' first copies at one token touch 15-40 pages of weights that the previous forward did
// not touch (a layer's experts are a few of many GB), so if a cold translation costs a large
// part of a microsecond, their first groups land that much later; a one-line touch of each page
// ahead of time (the routing kernel knows the experts first) would take it back.
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/tlb tlb_bench.cu && /tmp/tlb
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

typedef unsigned long long u64;

// Reads every 4 KB of n bytes (touches every page's translation and streams L2 full of other
// lines).
__global__ void sweep(const int4* __restrict__ p, size_t n, int* sink) {
  int s = 0;
  for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 256; i < n / 16; i += (size_t)gridDim.x * blockDim.x * 256)
    s += __ldcg(p + i).x;
  if (s == 123456789) *sink = s;
}

// One thread: for each of the n pages in order, a load at page · 2 MB + line · 128 whose address
// depends on the previous load's value (each word holds 0), timed with clock64; cycles a load.
__global__ void chase(const int* __restrict__ base, const int* __restrict__ pages, int n, int line, u64* out) {
  int v = 0;
  const u64 t0 = clock64();
  for (int i = 0; i < n; i++) v = __ldcg(base + (size_t)pages[i] * (512 * 1024) + line * 32 + v);
  const u64 t1 = clock64();
  out[0] = (t1 - t0) / n;
  out[1] = v;
}

int main() {
  const size_t page = 2ull << 20, nb = 24ull << 30, ns = 24ull << 30;  // 24 GB chased, 24 GB swept
  int *b, *s, *pages, *sink;
  u64* out;
  CK(cudaMalloc(&b, nb));
  CK(cudaMalloc(&s, ns));
  CK(cudaMemset(b, 0, nb));
  CK(cudaMemset(s, 0, ns));
  CK(cudaMalloc(&sink, 4));
  CK(cudaMalloc(&out, 16));
  const int n = 64;
  std::vector<int> hp(n);
  srand(7);
  for (int i = 0; i < n; i++) hp[i] = rand() % (int)(nb / page);
  CK(cudaMalloc(&pages, n * 4));
  CK(cudaMemcpy(pages, hp.data(), n * 4, cudaMemcpyHostToDevice));
  int clk;
  CK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0));
  printf("64 dependent loads, each on another 2 MB page of a 24 GB buffer; cycles a load (SM clock %d MHz nominal)\n", clk / 1000);
  printf("%5s %12s %14s %10s %12s\n", "round", "cold pages", "warm, L2 miss", "L2 hit", "sweep first");
  // Cycles a load of the chain over line `line` of each page.
  auto cycles = [&](int line) {
    u64 h[2];
    chase<<<1, 1>>>(b, pages, n, line, out);
    CK(cudaMemcpy(h, out, 16, cudaMemcpyDeviceToHost));
    return h[0];
  };
  for (int r = 0; r < 5; r++) {
    sweep<<<264, 256>>>(reinterpret_cast<const int4*>(s), ns, sink);
    CK(cudaDeviceSynchronize());
    const u64 cold = cycles(3 * r);      // line 3r of each page, after the sweep
    const u64 warm = cycles(3 * r + 1);  // the same pages, other lines
    const u64 hit = cycles(3 * r + 1);   // the same lines
    printf("%5d %12llu %14llu %10llu %12s\n", r, cold, warm, hit, "yes");
  }
  // Without the sweep between rounds: pages touched in the previous round at another line.
  for (int r = 5; r < 8; r++) printf("%5d %12llu %14s %10s %12s\n", r, cycles(3 * r), "-", "-", "no");
  return 0;
}
