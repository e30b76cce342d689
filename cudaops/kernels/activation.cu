// Activation + FP8 requant: for every real row of GEMM1's output h (gate h[:, :I], up h[:, I:],
// plus the GEMM1 bias), y = act(g, u) in float32, then per group of 128: the group scale and
// the E4M3 codes of y / s.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// One warp per (row, group), 4 values per lane. grid.x = ceil(rows bound * I/128 / 4), block = 128.
extern "C" __global__ void moe_act_quant(const float* __restrict__ h, const int* __restrict__ expert_ids,
                                         const int* __restrict__ offsets, const float* __restrict__ bias,
                                         u8* __restrict__ a2q, float* __restrict__ a2s, i64 E, i64 I,
                                         i64 act, i64 clamp, double limit, double alpha, double beta, i64 fmt) {
  const i64 G = I / MOE_GROUP;
  const i64 item = (i64)blockIdx.x * 4 + threadIdx.x / 32;
  const i64 r = item / G, grp = item % G;
  if (r >= offsets[E]) return;
  const int e = expert_ids[r];
  if (e < 0) return;  // padding row: never read by a real result
  const int lane = threadIdx.x % 32;
  const i64 j0 = grp * MOE_GROUP + 4 * lane;
  const float4 g4 = *reinterpret_cast<const float4*>(h + r * 2 * I + j0);
  const float4 u4 = *reinterpret_cast<const float4*>(h + r * 2 * I + I + j0);
  float gv[4] = {g4.x, g4.y, g4.z, g4.w}, uv[4] = {u4.x, u4.y, u4.z, u4.w}, y[4];
  const float L = (float)limit, A = (float)alpha, B = (float)beta;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float gg = gv[i], uu = uv[i];
    if (bias) {
      gg += bias[(i64)e * 2 * I + j0 + i];
      uu += bias[(i64)e * 2 * I + I + j0 + i];
    }
    if (act == ACT_SILU) {
      if (clamp) {
        gg = fminf(gg, L);
        uu = fmaxf(-L, fminf(uu, L));
      }
      y[i] = gg * sigmoidf_(gg) * uu;
    } else if (act == ACT_SWIGLUSTEP) {
      y[i] = fminf(gg * sigmoidf_(gg), 7.f) * fmaxf(-7.f, fminf(uu, 7.f));
    } else {
      gg = fminf(gg, L);
      uu = fmaxf(-L, fminf(uu, L));
      y[i] = (uu + B) * gg * sigmoidf_(A * gg);
    }
  }
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) amax = fmaxf(amax, fabsf(y[i]));
  const float s = group_scale(warp_max(amax), fmt);
  uint32_t q = 0;
#pragma unroll
  for (int i = 0; i < 4; i++) q |= (uint32_t)to_e4m3(y[i] / s) << (8 * i);
  *reinterpret_cast<uint32_t*>(a2q + r * I + j0) = q;
  if (lane == 0) a2s[r * G + grp] = s;
}
