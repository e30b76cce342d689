// Two E2M1 expansions for the FP16 MMA, timed in the decode GEMM's inner shape: a standalone
// program (not part of moe.fatbin). Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/expand expand_bench.cu && /tmp/expand
//
// Why: the decode GEMMs spend more than half of their loop on expanding E2M1 codes to FP16 (v44's
// device words: 9 instructions a 32-bit word, LOP3 and constant multiplies). A device layout whose
// codes expand to E4M3 instead (v · 2^-6, exact: E2M1 embeds in E4M3 with its subnormal) would
// let a GEMM2 on FP8 wgmma take the weights at about 5 instructions a word: four codes in bits 7,
// 4, 3, 2 of each byte (one AND), the other four in bits 5, 6, 1, 0 (sign, then magnitude; a shift
// left by 2 and one right by 2, each masked, two shifts and two LOP3). The FP16 paths would then
// expand from E4M3 with the hardware conversion (cvt.rn.f16x2.e4m3x2, F2FP): 5 ALU instructions
// and 4 F2FP a word instead of 9 ALU instructions. This program measures whether that costs the
// FP16 paths anything: the same loop (words from shared memory, each 16-row block's two k16 MMAs
// and the scale FFMAs, as block_mma does) with each expansion, in a full grid of warps.
//
// v44: e2m1_pair_f16<0..3> of each word (common.cuh). e4m3: X0 = w & 0x9C9C9C9C, X1 = ((w << 2) &
// 0x8C8C8C8C) | ((w >> 2) & 0x10101010), then the four 16-bit halves through cvt to f16x2. The k
// order differs between the two (a layout would permute the tokens to match), so their sums
// differ; this program times them only (the sums are stored so that nothing is left out).
#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

#define XB_WARPS 4
#define XB_WORDS 512  // words of codes a warp's shared-memory buffer holds per lane group

// A warp's loop: iters passes over its words (wa, wb of 16-row block rows g and g + 8, four
// 32-element blocks a group as block_mma takes them), each block's two k16 MMAs into a fresh
// accumulator, times a scale into the partial sums. MODE 0: v44's expansion; 1: the E4M3 one.
template <int MODE>
__global__ void __launch_bounds__(XB_WARPS * 32) expand_loop(const uint32_t* __restrict__ words, const uint32_t* __restrict__ tok,
                                                               float* __restrict__ out, int iters) {
  __shared__ uint32_t sw[XB_WARPS][XB_WORDS];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = lane; i < XB_WORDS; i += 32) sw[warp][i] = words[(blockIdx.x * XB_WARPS + warp) * XB_WORDS + i];
  __syncwarp();
  const uint32_t b0[2] = {tok[lane], tok[32 + lane]}, b1[2] = {tok[64 + lane], tok[96 + lane]};
  float p[4] = {0.f, 0.f, 0.f, 0.f};
  const float ws = 1.0f + lane * 0x1p-10f;
  int o = 2 * lane;
#pragma unroll 1
  for (int it = 0; it < iters; it++) {
#pragma unroll
    for (int b = 0; b < 8; b++) {  // 8 blocks of 32 elements: two groups of 16 rows' words
      const uint2 v = *reinterpret_cast<const uint2*>(&sw[warp][(o + 64 * b) & (XB_WORDS - 1)]);
      const uint32_t wa = v.x, wb = v.y;
      float dd[4] = {0.f, 0.f, 0.f, 0.f};
      if constexpr (MODE == 0) {
        const uint32_t a0[4] = {e2m1_pair_f16<0>(wa), e2m1_pair_f16<0>(wb), e2m1_pair_f16<1>(wa), e2m1_pair_f16<1>(wb)};
        mma_f16(dd, a0, b0);
        const uint32_t a1[4] = {e2m1_pair_f16<2>(wa), e2m1_pair_f16<2>(wb), e2m1_pair_f16<3>(wa), e2m1_pair_f16<3>(wb)};
        mma_f16(dd, a1, b1);
      } else {
        uint32_t xa0, xa1, xb0, xb1;
        e4m3_layout_word(wa, xa0, xa1);
        e4m3_layout_word(wb, xb0, xb1);
        const uint32_t a0[4] = {e4m3_lo_f16(xa0), e4m3_lo_f16(xb0), e4m3_hi_f16(xa0), e4m3_hi_f16(xb0)};
        mma_f16(dd, a0, b0);
        const uint32_t a1[4] = {e4m3_lo_f16(xa1), e4m3_lo_f16(xb1), e4m3_hi_f16(xa1), e4m3_hi_f16(xb1)};
        mma_f16(dd, a1, b1);
      }
      p[0] += dd[0] * ws;
      p[1] += dd[1] * ws;
      p[2] += dd[2] * ws;
      p[3] += dd[3] * ws;
    }
    o += 2;
  }
  float* r = out + ((size_t)blockIdx.x * XB_WARPS * 32 + threadIdx.x) * 4;
  r[0] = p[0], r[1] = p[1], r[2] = p[2], r[3] = p[3];
}

int main(int argc, char** argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 2048;
  int sms, dev = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  int clk;
  CK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, dev));
  // Random codes without NaN concerns (E2M1 has none); tokens: small f16 values.
  for (int per : {4, 3, 2}) {  // blocks an SM: 16, 12 and 8 warps
    const int blocks = per * sms, nw = blocks * XB_WARPS;
    std::vector<uint32_t> hw((size_t)nw * XB_WORDS), ht(128);
    for (auto& x : hw) x = rnd();
    for (auto& x : ht) x = 0x3c003c00u ^ (rnd() & 0x03ff03ffu);  // f16 pairs in [1, 2)
    uint32_t *w, *t;
    float* out;
    CK(cudaMalloc(&w, hw.size() * 4));
    CK(cudaMalloc(&t, ht.size() * 4));
    CK(cudaMalloc(&out, (size_t)nw * 32 * 16));
    CK(cudaMemcpy(w, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(t, ht.data(), ht.size() * 4, cudaMemcpyHostToDevice));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double ms[2];
    for (int mode = 0; mode < 2; mode++) {
      auto launch = [&] {
        if (mode == 0) expand_loop<0><<<blocks, XB_WARPS * 32>>>(w, t, out, iters);
        else expand_loop<1><<<blocks, XB_WARPS * 32>>>(w, t, out, iters);
      };
      for (int i = 0; i < 3; i++) launch();
      CK(cudaDeviceSynchronize());
      std::vector<float> v;
      for (int r = 0; r < 9; r++) {
        cudaEventRecord(e0);
        launch();
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float m;
        cudaEventElapsedTime(&m, e0, e1);
        v.push_back(m);
      }
      CK(cudaGetLastError());
      std::sort(v.begin(), v.end());
      ms[mode] = v[v.size() / 2];
    }
    // Per 32-element block of a 16-row block (two words a lane: 16 codes of rows g, g + 8), the
    // SM cycles each warp's block step took, and words a µs over the device.
    const double steps = (double)iters * 8;
    for (int mode = 0; mode < 2; mode++) {
      const double us = ms[mode] * 1e3;
      printf("%-5s %2d warps an SM: %8.1f µs, %.2f ns a block step per warp, %.1f G words/s (device), %.2f SM-cycles a step per SM\n",
             mode == 0 ? "v44" : "e4m3", per * XB_WARPS, us, us * 1e3 / steps, (double)nw * 32 * 2 * steps / (us * 1e3),
             us * 1e-6 * clk * 1e3 / (steps * per * XB_WARPS));
    }
    cudaFree(w), cudaFree(t), cudaFree(out);
  }
  return 0;
}
