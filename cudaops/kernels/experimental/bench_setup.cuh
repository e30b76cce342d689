// What the standalone decode-GEMM benchmarks share (deci_bench.cu, dyn_bench.cu, d8_bench.cu,
// expand_bench.cu): error checks, the data generator, the device's copy bandwidth, a pool of
// one-token tiles, the timing loop, the launches of the decode kernels they time against, and the
// expansion of a weight layout of E4M3 codes (the error check from bench_check.cuh). Included
// after ../gemm_fp8fp4.cu (u8, i64, the decode kernels).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

// xorshift32 from a fixed seed: every run generates the same data.
static uint32_t bench_rs = 12345;
static uint32_t rnd() {
  bench_rs ^= bench_rs << 13;
  bench_rs ^= bench_rs >> 17;
  bench_rs ^= bench_rs << 5;
  return bench_rs;
}

// The device-to-device copy bandwidth (read + write, GB/s): 10 copies of 1 GiB after 3 warm-up
// copies.
static double copy_gbps() {
  const size_t B = 1ull << 30;
  void *a, *b;
  CK(cudaMalloc(&a, B));
  CK(cudaMalloc(&b, B));
  CK(cudaMemset(a, 1, B));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, B, cudaMemcpyDeviceToDevice));
  cudaEventRecord(e0);
  for (int i = 0; i < 10; i++) CK(cudaMemcpy(b, a, B, cudaMemcpyDeviceToDevice));
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * B * 10 / (ms * 1e-3) / 1e9;
}

// A pool of experts several times L2 (poolEnv MB, default 400), T of them a forward, in sets that
// the timing rotates over: N weight rows of Kd columns an expert (random E2M1 codes, block scales
// 2^-5 .. 2^6), 32·T token rows of random E4M3 codes (no NaN) with group scales 2^0 .. 2^-11, and
// set s's tile list (tile y: expert s·T + y, its rows from 32y; tokens rows each).
struct TilePool {
  i64 N, Kd, G, rows, wbytes, sbytes;
  int T, pool, sets;
  u8 *W, *Ws, *X;
  float* Xs;
  int *tiles, *counts, *offs, *nt;
  void release() { cudaFree(W), cudaFree(Ws), cudaFree(X), cudaFree(Xs), cudaFree(tiles), cudaFree(counts), cudaFree(offs), cudaFree(nt); }
};

static TilePool make_pool(i64 N, i64 Kd, int T, int tokens, const char* poolEnv) {
  TilePool p;
  p.N = N, p.Kd = Kd, p.G = Kd / 128, p.T = T, p.rows = 32 * T;
  p.wbytes = N * Kd / 2, p.sbytes = N * Kd / 32;
  const i64 poolBytes = getenv(poolEnv) ? atoll(getenv(poolEnv)) << 20 : 400ll << 20;
  p.pool = (int)std::max<i64>(2 * T, poolBytes / (p.wbytes + p.sbytes) / T * T);
  p.sets = p.pool / T;
  std::vector<u8> hw(p.wbytes * p.pool), hs(p.sbytes * p.pool);
  for (auto& x : hw) x = (u8)rnd();
  for (auto& x : hs) x = (u8)(122 + rnd() % 12);  // block scales 2^-5 .. 2^6 (deci's fold needs at most 11 apart)
  std::vector<u8> hx(p.rows * Kd);
  for (auto& x : hx) {
    u8 v;
    do v = (u8)rnd();
    while ((v & 0x7f) == 0x7f);
    x = v;
  }
  std::vector<float> hxs(p.rows * p.G);
  for (auto& x : hxs) x = ldexpf(1.f, -(int)(rnd() % 12));
  std::vector<int> htiles(p.sets * 2 * T), hcounts(p.sets * p.pool, 0), hoff(p.sets * p.pool, 0);
  for (int s = 0; s < p.sets; s++)
    for (int y = 0; y < T; y++) {
      const int e = s * T + y;
      htiles[s * 2 * T + 2 * y] = list_word(e, tokens);
      htiles[s * 2 * T + 2 * y + 1] = 32 * y;
      hcounts[s * p.pool + e] = tokens;
      hoff[s * p.pool + e] = 32 * y;
    }
  CK(cudaMalloc(&p.W, hw.size()));
  CK(cudaMalloc(&p.Ws, hs.size()));
  CK(cudaMalloc(&p.X, hx.size()));
  CK(cudaMalloc(&p.Xs, hxs.size() * 4));
  CK(cudaMalloc(&p.tiles, htiles.size() * 4));
  CK(cudaMalloc(&p.counts, hcounts.size() * 4));
  CK(cudaMalloc(&p.offs, hoff.size() * 4));
  CK(cudaMalloc(&p.nt, 4));
  CK(cudaMemcpy(p.W, hw.data(), hw.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.Ws, hs.data(), hs.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.X, hx.data(), hx.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.Xs, hxs.data(), hxs.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.tiles, htiles.data(), htiles.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.counts, hcounts.data(), hcounts.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.offs, hoff.data(), hoff.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.nt, &T, 4, cudaMemcpyHostToDevice));
  return p;
}

// The median µs a launch of each of nv variants (run(v, set) launches variant v on tile set
// `set`): three warm-up passes over the sets, then 15 rounds of 20 launches of each variant in
// turn, rotating the sets, timed with events.
template <class Run>
static std::vector<double> time_variants(int nv, int sets, Run run) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<std::vector<float>> tv(nv);
  for (int w = 0; w < 3 * sets; w++)
    for (int v = 0; v < nv; v++) run(v, w % sets);
  int s = 0;
  for (int round = 0; round < 15; round++)
    for (int v = 0; v < nv; v++) {
      cudaEventRecord(e0);
      for (int i = 0; i < 20; i++, s++) run(v, s % sets);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      tv[v].push_back(ms * 1000 / 20);
    }
  CK(cudaGetLastError());
  std::vector<double> med(nv);
  for (int v = 0; v < nv; v++) {
    std::sort(tv[v].begin(), tv[v].end());
    med[v] = tv[v][tv[v].size() / 2];
  }
  return med;
}

// The decode kernels on set `set` of a pool: moe_gemm_dec at split S (2 or 4; grid N · S / 128) and
// moe_gemm_dec1w (split 1, 64 weight rows a warp; grid N / 256 rounded up), their dynamic shared
// memory allowed first by allow_decode.
static void allow_decode() {
  CK(cudaFuncSetAttribute(moe_gemm_dec, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_dec1w, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC1W_SMEM));
}
static void launch_dec(const TilePool& tp, int set, float* out, int S) {
  moe_gemm_dec<<<dim3((unsigned)(tp.N * S / 128), tp.T), 128, DEC_SMEM>>>(tp.W, tp.Ws, tp.X, tp.Xs, tp.tiles + set * 2 * tp.T, tp.nt,
                                                                           tp.counts + set * tp.pool, tp.offs + set * tp.pool, nullptr,
                                                                           out, tp.N, tp.Kd, S, 0, 0, nullptr, nullptr, 0);
}
static void launch_dec1w(const TilePool& tp, int set, float* out) {
  moe_gemm_dec1w<<<dim3((unsigned)((tp.N + 255) / 256), tp.T), 128, DEC1W_SMEM>>>(
      tp.W, tp.Ws, tp.X, tp.Xs, tp.tiles + set * 2 * tp.T, tp.nt, tp.counts + set * tp.pool, tp.offs + set * tp.pool, nullptr, out,
      tp.N, tp.Kd, 1, 0, 0, nullptr, nullptr, 0);
}

// A 32-bit word of a weight layout of E4M3 codes as two registers of four E4M3 codes each (v ·
// 2^-6, exact: E2M1 embeds in E4M3 with its subnormal): x0 the codes in bits 7, 4, 3, 2 of each
// byte (one AND), x1 those in bits 5 (sign), 6, 1, 0 (two shifts, two LOP3).
__device__ __forceinline__ void e4m3_layout_word(uint32_t w, uint32_t& x0, uint32_t& x1) {
  x0 = w & 0x9C9C9C9Cu;
  x1 = ((w << 2) & 0x8C8C8C8Cu) | ((w >> 2) & 0x10101010u);
}
