// How long a dependent kernel's griddepcontrol.wait takes to return after the last block of the
// kernel before it ends, against how many of that kernel's blocks end at about the same time.
// In the one-token forward's stage timeline the activation kernel's wait returned 1.3-1.6 µs
// after GEMM1's last block ended at Qwen3-30B-A3B (about 120 of GEMM1's 384 blocks end within 0.1
// µs of each other there) and 0.4-0.5 µs at GPT-OSS-120B (whose GEMM1 blocks end over 3 µs);
// the reduce's after GEMM2 1.2-1.7 µs against 0.7-1.0. If the device retires a grid's blocks one
// after another at some cost each, blocks that end together delay the grid's completion.
//
// A primary kernel of N blocks lets its dependents launch at once (griddepcontrol
// .launch_dependents), then each block's thread 0 spins on %globaltimer until a common deadline
// plus blockIdx.x times a stagger, and records its end; the dependent (8 blocks of 256 threads,
// launched with programmatic stream serialization) records when its wait returns. Printed per
// configuration: the median over 40 runs of (first wait return - last primary end), of the
// spread of the primary's ends, and of the dependent's first start after the deadline.
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/retire retire_bench.cu && /tmp/retire
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

typedef unsigned long long u64;
__device__ u64 g_base, g_end_max, g_end_min, g_wait_min, g_wait_max, g_dep_start;

__device__ __forceinline__ u64 now() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
  return t;
}

__global__ void set_base(u64 lead_ns) {
  g_base = now() + lead_ns;
  g_end_max = 0, g_end_min = ~0ull, g_wait_min = ~0ull, g_wait_max = 0, g_dep_start = ~0ull;
}

// trig: 1 lets the dependents launch first thing; 0 at the end (they launch as the blocks exit).
// work: 0 spins only; 1 also streams a few KB of a buffer a block through cp.async-free loads, so
// that each block has memory traffic of its own before it ends.
__global__ void primary(u64 stagger_ns, int trig, const float4* __restrict__ buf, float* sink) {
  extern __shared__ float pad[];
  if (trig) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  if (threadIdx.x == 0) {
    const u64 d = *(volatile u64*)&g_base + blockIdx.x * stagger_ns;
    while (now() < d) {
    }
  }
  __syncthreads();
  if (buf) {
    float s = 0.f;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      const float4 v = buf[(size_t)blockIdx.x * 256 + i];
      s += v.x + v.y + v.z + v.w;
    }
    pad[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) sink[blockIdx.x] = pad[1] + pad[blockDim.x - 1];
  }
  if (threadIdx.x == 0) {
    const u64 t = now();
    atomicMax(&g_end_max, t);
    atomicMin(&g_end_min, t);
  }
}

__global__ void dependent() {
  if (threadIdx.x == 0) atomicMin(&g_dep_start, now());
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (threadIdx.x == 0) {
    const u64 t = now();
    atomicMin(&g_wait_min, t);
    atomicMax(&g_wait_max, t);
  }
}

struct Conf {
  int n, threads, smem_kb, trig, work;
  u64 stagger;
};

int main() {
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaFuncSetAttribute(primary, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 << 10));
  float4* buf;
  float* sink;
  CK(cudaMalloc(&buf, (size_t)2048 * 256 * 16));
  CK(cudaMemset(buf, 0, (size_t)2048 * 256 * 16));
  CK(cudaMalloc(&sink, 2048 * 4));
  std::vector<Conf> confs;
  for (int n : {1, 33, 66, 132, 264, 396, 528}) confs.push_back({n, 128, 46, 1, 0, 0});
  confs.push_back({396, 128, 46, 1, 1, 0});    // with loads
  confs.push_back({396, 256, 46, 1, 0, 0});    // 8 warps a block
  confs.push_back({198, 256, 46, 1, 0, 0});    // half the blocks, the same warps
  confs.push_back({396, 128, 0, 1, 0, 0});     // no shared memory
  for (u64 st : {2ull, 5ull, 10ull}) confs.push_back({396, 128, 46, 1, 0, st});  // ends spread over 0.8-4 µs
  confs.push_back({396, 128, 46, 0, 0, 0});    // dependents launched at the end
  confs.push_back({132, 128, 46, 0, 0, 0});
  printf("%d SMs; µs, medians of 40 runs\n", sms);
  printf("%5s %7s %5s %5s %5s %8s   %10s %10s %12s\n", "N", "threads", "smemK", "trig", "loads", "stagger", "wait-end", "end spread",
         "dep start-dl");
  for (const Conf& c : confs) {
    std::vector<double> gap, spread, dstart;
    for (int rep = 0; rep < 45; rep++) {
      set_base<<<1, 1>>>(40000);  // 40 µs ahead: every block is placed before its deadline
      CK(cudaGetLastError());
      // The primary after set_base in stream order (no programmatic launch: it reads g_base).
      primary<<<c.n, c.threads, (size_t)c.smem_kb << 10>>>(c.stagger, c.trig, c.work ? buf : nullptr, sink);
      CK(cudaGetLastError());
      void* da[] = {nullptr};
      launch_pdl((const void*)dependent, dim3(8), 256, 0, da);
      CK(cudaDeviceSynchronize());
      u64 base, emax, emin, wmin, wmax, ds;
      CK(cudaMemcpyFromSymbol(&base, g_base, 8));
      CK(cudaMemcpyFromSymbol(&emax, g_end_max, 8));
      CK(cudaMemcpyFromSymbol(&emin, g_end_min, 8));
      CK(cudaMemcpyFromSymbol(&wmin, g_wait_min, 8));
      CK(cudaMemcpyFromSymbol(&wmax, g_wait_max, 8));
      CK(cudaMemcpyFromSymbol(&ds, g_dep_start, 8));
      if (rep < 5) continue;
      gap.push_back(((double)wmin - (double)emax) / 1e3);
      spread.push_back(((double)emax - (double)emin) / 1e3);
      dstart.push_back(((double)ds - (double)base) / 1e3);
    }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    printf("%5d %7d %5d %5d %5d %8llu   %10.2f %10.2f %12.2f\n", c.n, c.threads, c.smem_kb, c.trig, c.work, c.stagger, med(gap),
           med(spread), med(dstart));
  }
  return 0;
}
