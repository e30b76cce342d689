// How large a loop body an SM's schedulers run from their nearest instruction cache: a loop of N
// FFMA (16 bytes of code each, eight independent chains) run R times, N · R fixed, at 12 warps an
// SM (three a scheduler, as the decode GEMMs at one token), for N from 2 KB to 24 KB of code.
// While the body fits, a warp issues at the pipe's rate whatever N; past the cache, every trip
// fetches the body again and the rate drops. The decode loops are 4.9 KB (one token, 32 rows),
// 9.2 KB (64 rows) and 13 KB (the one-token loop unrolled by three, 18 % slower in the forward,
// docs/perf.md entry "The one-token loop unrolled by the ring's depth").
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/loopb loop_bench.cu && /tmp/loopb
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

template <int N>
__global__ void __launch_bounds__(384, 1) body(int trips, float* out, int spread) {
  // spread: the three warps of a scheduler (warps w, w + 4, w + 8) start a third of a trip apart
  // (a trip of N instructions takes a warp about 3N cycles beside two others), so that they run
  // at different places in the body, as the decode warps do, each waiting on its own copies.
  if (spread) {
    const long long t0 = clock64(), d = (long long)(threadIdx.x / 128) * N;
    while (clock64() - t0 < d) {
    }
  }
  float a[8];
#pragma unroll
  for (int c = 0; c < 8; c++) a[c] = threadIdx.x * 1e-7f + c;
  const float m = 0.999999f, k = 1e-7f;
  for (int r = 0; r < trips; r++) {
#pragma unroll
    for (int i = 0; i < N / 8; i++)
#pragma unroll
      for (int c = 0; c < 8; c++) asm volatile("fma.rn.f32 %0, %0, %1, %2;" : "+f"(a[c]) : "f"(m), "f"(k));
  }
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < 8; c++) s += a[c];
  if (s == 12345.f) out[threadIdx.x] = s;
}

template <int N>
static void run(int sms, float* out, int spread) {
  const long total = 1l << 20;  // FFMA a thread, whatever N
  const int trips = (int)(total / N);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int w = 0; w < 3; w++) body<N><<<sms, 384>>>(trips, out, spread);
  std::vector<float> t;
  for (int i = 0; i < 7; i++) {
    CK(cudaEventRecord(e0));
    body<N><<<sms, 384>>>(trips, out, spread);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  const double ms = t[t.size() / 2];
  // warp instructions a scheduler a ns: 12 warps an SM, 4 schedulers, total FFMA each
  const double ipns = 3.0 * (double)trips * N / (ms * 1e6);
  printf("%6d %8.1f %8d %10.3f %12.3f\n", N, N * 16 / 1024.0, trips, ms, ipns);
}

int main() {
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  float* out;
  CK(cudaMalloc(&out, 4096));
  for (int spread = 0; spread < 2; spread++) {
    printf("%s\n", spread ? "warps of a scheduler a third of a trip apart" : "warps in step");
    printf("%6s %8s %8s %10s %12s\n", "N", "body KB", "trips", "ms", "inst/ns/sch");
    run<128>(sms, out, spread);
    run<256>(sms, out, spread);
    run<384>(sms, out, spread);
    run<512>(sms, out, spread);
    run<576>(sms, out, spread);
    run<640>(sms, out, spread);
    run<768>(sms, out, spread);
    run<896>(sms, out, spread);
    run<1024>(sms, out, spread);
    run<1280>(sms, out, spread);
    run<1536>(sms, out, spread);
  }
  return 0;
}
