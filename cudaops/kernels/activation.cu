// Activation + FP8 requant: for every real row of GEMM1's output h (gate h[:, :I], up h[:, I:],
// plus the GEMM1 bias), y = act(g, u) in float32, then per group of 128: the group scale and
// the E4M3 codes of y / s (with wg_order set, each chunk in the wgmma GEMM's order).
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// One warp per (row, group), 4 values per lane: grid = (rows bound, ceil(I/128 / 4)), block = 128
// (the block's four warps take four groups of one row).
extern "C" __global__ void moe_act_quant(const float* __restrict__ h, const int* __restrict__ expert_ids,
                                         const int* __restrict__ offsets, const float* __restrict__ bias,
                                         u8* __restrict__ a2q, float* __restrict__ a2s, i64 E, i64 I,
                                         i64 act, i64 clamp, double limit, double alpha, double beta, i64 fmt, i64 wg_order) {
  const i64 G = I / MOE_GROUP;
  const i64 r = blockIdx.x, grp = (i64)blockIdx.y * 4 + threadIdx.x / 32;
  if (grp >= G || r >= offsets[E]) return;
  const int e = expert_ids[r];
  if (e < 0) return;  // padding row: never read by a real result
  const int lane = threadIdx.x % 32;
  // The lane's 4 columns of the group: 4·lane + i, or in the wgmma GEMM's order the columns
  // whose fp16_slot is 4·lane + i, so that each lane stores 4 consecutive bytes either way.
  int col[4];
  float gv[4], uv[4], y[4];
  const float* hr = h + r * 2 * I + grp * MOE_GROUP;
  if (wg_order) {
    const int w = lane >> 3, rr = (lane >> 1) & 3, b0 = 2 * (lane & 1);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      col[i] = 32 * (b0 + (i >> 1)) + 8 * w + 4 * (i & 1) + rr;
      gv[i] = hr[col[i]];
      uv[i] = hr[I + col[i]];
    }
  } else {
    const float4 g4 = *reinterpret_cast<const float4*>(hr + 4 * lane);
    const float4 u4 = *reinterpret_cast<const float4*>(hr + I + 4 * lane);
    gv[0] = g4.x, gv[1] = g4.y, gv[2] = g4.z, gv[3] = g4.w;
    uv[0] = u4.x, uv[1] = u4.y, uv[2] = u4.z, uv[3] = u4.w;
#pragma unroll
    for (int i = 0; i < 4; i++) col[i] = 4 * lane + i;
  }
  const float L = (float)limit, A = (float)alpha, B = (float)beta;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float gg = gv[i], uu = uv[i];
    if (bias) {
      gg += bias[(i64)e * 2 * I + grp * MOE_GROUP + col[i]];
      uu += bias[(i64)e * 2 * I + I + grp * MOE_GROUP + col[i]];
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
  uint32_t q;
  const float s = quant_group(y, fmt, &q);
  *reinterpret_cast<uint32_t*>(a2q + r * I + grp * MOE_GROUP + 4 * lane) = q;
  if (lane == 0) a2s[r * G + grp] = s;
}
