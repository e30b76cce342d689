// Activation + FP8 requant: for every real row of GEMM1's output h (gate h[:, :I], up h[:, I:],
// plus the GEMM1 bias), y = act(g, u) in float32, then per group of 128: the group scale and
// the E4M3 codes of y / s, in the byte order of the GEMM that reads them (order: 0 as they are, 1
// each chunk in the wgmma GEMM's order, 2 the decode GEMM's, dec_order8; plus ORDER_TRIGGER for
// the early trigger, common.cuh).
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// min(x, l) and clamp(x, -l, l) that keep a NaN x (as torch.clamp does; fminf would drop it).
__device__ __forceinline__ float min_nan(float x, float l) { return x > l ? l : x; }
__device__ __forceinline__ float clamp_nan(float x, float l) { return x > l ? l : (x < -l ? -l : x); }

// act(g, u) of one value, the GEMM1 bias already added. A NaN input gives NaN.
__device__ __forceinline__ float act_value(float gg, float uu, i64 act, i64 clamp, float L, float A, float B) {
  if (act == ACT_SILU) {
    if (clamp) {
      gg = min_nan(gg, L);
      uu = clamp_nan(uu, L);
    }
    return gg * sigmoidf_(gg) * uu;
  }
  if (act == ACT_SWIGLUSTEP) return min_nan(gg * sigmoidf_(gg), 7.f) * clamp_nan(uu, 7.f);
  gg = min_nan(gg, L);
  uu = clamp_nan(uu, L);
  return (uu + B) * gg * sigmoidf_(A * gg);
}

// The group's codes in the wgmma GEMM's order (fp16_slot, common.cuh), from each lane's codes of
// columns 4·lane .. 4·lane + 3: byte i of lane l gets column 32(b0 + i/2) + 8w + 4(i%2) + rr
// (w = l/8, rr = (l/2)%4, b0 = 2(l%2)), which lane 8(b0 + i/2) + 2w + i%2 holds as its byte rr.
__device__ __forceinline__ uint32_t wg_reorder(uint32_t q, int lane) {
  const int w = lane >> 3, rr = (lane >> 1) & 3, b0 = 2 * (lane & 1);
  uint32_t out = 0;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t v = __shfl_sync(0xffffffffu, q, 8 * (b0 + (i >> 1)) + 2 * w + (i & 1));
    out |= ((v >> (8 * rr)) & 0xffu) << (8 * i);
  }
  return out;
}

// One warp per routed pair's row and two groups of it (grp and grp + 4), 4 consecutive columns
// per lane and group, both groups' loads issued before either is computed: grid = (P, ceil(I/128
// / 8)), block = 128 (the block's four warps take groups 8·blockIdx.y + warp and 8·blockIdx.y +
// warp + 4 of pair blockIdx.x's row, inv_perm[pair]; padding rows get no block). Two memory round
// trips before the values: the row and its expert (for the bias), then its values.
extern "C" __global__ void moe_act_quant(const float* __restrict__ h, const int* __restrict__ expert_ids,
                                         const int* __restrict__ inv_perm, const float* __restrict__ bias,
                                         u8* __restrict__ a2q, float* __restrict__ a2s, i64 P, i64 I,
                                         i64 act, i64 clamp, double limit, double alpha, double beta, i64 fmt, i64 order) {
  TRACE_SCOPE(TRACE_ACT);
  // The pair's row (and its expert) before the wait for the previous kernel: the routing kernel
  // wrote them at least one kernel earlier (read past L1), so under programmatic launch that
  // round trip overlaps GEMM1's end.
  // order & ORDER_TRIGGER: the early trigger (common.cuh), before anything else.
  const bool trig = order & ORDER_TRIGGER;
  if (trig) pdl_trigger();
  order &= ~(i64)ORDER_TRIGGER;
  const i64 G = I / MOE_GROUP;
  const i64 grp0 = (i64)blockIdx.y * 8 + threadIdx.x / 32;
  if (grp0 >= G) return;
  const i64 r = __ldcg(inv_perm + blockIdx.x);
  if (r < 0) return;  // a pair without a local expert
  const int e = bias ? __ldcg(expert_ids + r) : 0;
  if (trig)
    pdl_wait();
  else
    pdl_begin();
  const int lane = threadIdx.x % 32;
  const bool two = grp0 + 4 < G;
  const float* hr = h + r * 2 * I + grp0 * MOE_GROUP + 4 * lane;
  float4 g4[2], u4[2];
  g4[0] = *reinterpret_cast<const float4*>(hr);
  u4[0] = *reinterpret_cast<const float4*>(hr + I);
  if (two) {
    g4[1] = *reinterpret_cast<const float4*>(hr + 4 * MOE_GROUP);
    u4[1] = *reinterpret_cast<const float4*>(hr + I + 4 * MOE_GROUP);
  }
  const float L = (float)limit, A = (float)alpha, B = (float)beta;
#pragma unroll
  for (int k = 0; k < 2; k++) {
    if (k == 1 && !two) break;
    const i64 grp = grp0 + 4 * k;
    float gv[4] = {g4[k].x, g4[k].y, g4[k].z, g4[k].w}, uv[4] = {u4[k].x, u4[k].y, u4[k].z, u4[k].w};
    if (bias) {
      const float* br = bias + (i64)e * 2 * I + grp * MOE_GROUP + 4 * lane;
      const float4 bg = *reinterpret_cast<const float4*>(br), bu = *reinterpret_cast<const float4*>(br + I);
      gv[0] += bg.x, gv[1] += bg.y, gv[2] += bg.z, gv[3] += bg.w;
      uv[0] += bu.x, uv[1] += bu.y, uv[2] += bu.z, uv[3] += bu.w;
    }
    float y[4];
#pragma unroll
    for (int i = 0; i < 4; i++) y[i] = act_value(gv[i], uv[i], act, clamp, L, A, B);
    uint32_t q;
    const float s = quant_group(y, fmt, &q);
    if (order == 1) q = wg_reorder(q, lane);
    else if (order == 2) {  // the decode GEMM's order: pieces of 8 columns over two lanes
      const uint32_t o = __shfl_xor_sync(0xffffffffu, q, 1);
      q = lane & 1 ? __byte_perm(o, q, 0x7362) : __byte_perm(q, o, 0x5140);
    }
    *reinterpret_cast<uint32_t*>(a2q + r * I + grp * MOE_GROUP + 4 * lane) = q;
    if (lane == 0) a2s[r * G + grp] = s;
  }
}
