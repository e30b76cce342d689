// Activation + FP8 requant: for every real row of GEMM1's output h (gate h[:, :I], up h[:, I:],
// plus the GEMM1 bias), y = act(g, u) in float32, then per group of 128: the group scale and
// the E4M3 codes of y / s, in the byte order of the GEMM that reads them (order: 0 as they are, 1
// each chunk in the wgmma GEMM's order, 2 the decode GEMM's, dec_order8; plus ORDER_TRIGGER for
// the early trigger, common.cuh).
#include "common.cuh"

// 1/d by the sequence the compiler's round-to-nearest division by d takes for divisors of 2^-126
// up to 2^126 (MUFU.RCP and one Newton step), without the range test and branch it places around
// each division. For d in [1, 2^126) only.
__device__ __forceinline__ float rcp_near(float d) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return fmaf(r, -fmaf(d, r, -1.f), r);
}

// sigmoid(x) = 1 / (1 + exp(-x)) of a lane's four values, bit for bit as 1.f / (1.f + expf(-x)):
// rcp_near for every value, then the division for those whose 1 + exp(-x) is 2^126 or more, or
// NaN (x below about -87), one branch for the four instead of one each.
__device__ __forceinline__ void sigmoid4(const float (&x)[4], float (&s)[4]) {
  float d[4];
  bool far = false;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    d[i] = 1.f + expf(-x[i]);
    s[i] = rcp_near(d[i]);
    far |= !(d[i] < 0x1p126f);
  }
  if (far) {
#pragma unroll
    for (int i = 0; i < 4; i++)
      if (!(d[i] < 0x1p126f)) s[i] = 1.f / d[i];
  }
}

// min(x, l) and clamp(x, -l, l) that keep a NaN x (as torch.clamp does; fminf would drop it).
__device__ __forceinline__ float min_nan(float x, float l) { return x > l ? l : x; }
__device__ __forceinline__ float clamp_nan(float x, float l) { return x > l ? l : (x < -l ? -l : x); }

// y = act(g, u) of a lane's four values, the GEMM1 bias already added. A NaN input gives NaN.
__device__ __forceinline__ void act4(float (&g)[4], float (&u)[4], float (&y)[4], i64 act, i64 clamp, float L, float A,
                                     float B) {
  float x[4], s[4];
  if (act == ACT_SILU) {
    if (clamp) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        g[i] = min_nan(g[i], L);
        u[i] = clamp_nan(u[i], L);
      }
    }
    sigmoid4(g, s);
#pragma unroll
    for (int i = 0; i < 4; i++) y[i] = g[i] * s[i] * u[i];
    return;
  }
  if (act == ACT_SWIGLUSTEP) {
    sigmoid4(g, s);
#pragma unroll
    for (int i = 0; i < 4; i++) y[i] = min_nan(g[i] * s[i], 7.f) * clamp_nan(u[i], 7.f);
    return;
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    g[i] = min_nan(g[i], L);
    u[i] = clamp_nan(u[i], L);
    x[i] = A * g[i];
  }
  sigmoid4(x, s);
#pragma unroll
  for (int i = 0; i < 4; i++) y[i] = (u[i] + B) * g[i] * s[i];
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

// One warp per routed pair's row and one or two groups of it, 4 consecutive columns per lane and
// group: grid = (P, ceil(I/128 / 8)), the block's warps taking eight groups of pair
// blockIdx.x's row, inv_perm[pair] (padding rows get no block): with block = 256, group
// 8·blockIdx.y + warp each; with block = 128, groups 8·blockIdx.y + warp and 8·blockIdx.y + warp
// + 4, both groups' loads issued before either is computed. A group is a chain of dependent
// steps (the activation's exp and reciprocal, the maximum over the warp, the scale, the codes),
// and a warp of two runs its second after its first: the host takes 256 threads for grids of one
// wave (actWarps), where every chain then runs beside the others, and 128 for larger ones, where
// a warp's two groups' loads in flight keep more bytes in flight an SM (at 2048 threads an SM)
// than one group's (docs/perf.md v53).
// Two memory round trips before the values: the row and its expert (for the bias), then its
// values.
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
  const int nw = blockDim.x / 32;  // 8: a group a warp; 4: two
  const i64 grp0 = (i64)blockIdx.y * 8 + threadIdx.x / 32;
  if (grp0 >= G) return;
  const i64 r = __ldcg(inv_perm + blockIdx.x);
  if (r < 0) return;  // a pair without a local expert
  const int e = bias ? __ldcg(expert_ids + r) : 0;
  if (trig)
    pdl_wait();
  else
    pdl_begin();
  TRACE_STEP(TRACE_ACT, 0, 0);
  const int lane = threadIdx.x % 32;
  const bool two = nw == 4 && grp0 + 4 < G;
  const float* hr = h + r * 2 * I + grp0 * MOE_GROUP + 4 * lane;
  float4 g4[2], u4[2];
  g4[0] = *reinterpret_cast<const float4*>(hr);
  u4[0] = *reinterpret_cast<const float4*>(hr + I);
  if (two) {
    g4[1] = *reinterpret_cast<const float4*>(hr + 4 * MOE_GROUP);
    u4[1] = *reinterpret_cast<const float4*>(hr + I + 4 * MOE_GROUP);
  }
  TRACE_STEP(TRACE_ACT, 1, __float_as_uint(g4[0].x) ^ __float_as_uint(u4[0].x));
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
    act4(gv, uv, y, act, clamp, L, A, B);
    if (k == 0) TRACE_STEP(TRACE_ACT, 2, __float_as_uint(y[0]));
    uint32_t q;
    const float s = quant_group(y, fmt, &q);
    if (k == 0) TRACE_STEP(TRACE_ACT, 3, q);
    if (order == 1) q = wg_reorder(q, lane);
    else if (order == 2) {  // the decode GEMM's order: pieces of 8 columns over two lanes
      const uint32_t o = __shfl_xor_sync(0xffffffffu, q, 1);
      q = lane & 1 ? __byte_perm(o, q, 0x7362) : __byte_perm(q, o, 0x5140);
    }
    *reinterpret_cast<uint32_t*>(a2q + r * I + grp * MOE_GROUP + 4 * lane) = q;
    if (lane == 0) a2s[r * G + grp] = s;
    if (k == 0) TRACE_STEP(TRACE_ACT, 4, q);
  }
}
