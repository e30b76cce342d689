// Prepare: quantize float32 input rows to FP8 with one scale per token per 128 columns,
// optionally multiplied by the token's router weight first (apply_router_weight_on_input).
#include "common.cuh"

// One warp per (token, group): each lane holds 4 of the group's 128 values.
// grid.x = ceil(M * K/128 / 4), block = 128.
extern "C" __global__ void moe_prepare(const float* __restrict__ x, const float* __restrict__ topk_w,
                                       u8* __restrict__ a1q, float* __restrict__ a1s,
                                       i64 M, i64 K, i64 topk, i64 fmt, i64 arwoi) {
  TRACE_SCOPE(TRACE_PREPARE);
  pdl_begin();
  const i64 G = K / MOE_GROUP;
  const i64 item = (i64)blockIdx.x * 4 + threadIdx.x / 32;
  if (item >= M * G) return;
  const int lane = threadIdx.x % 32;
  const i64 t = item / G, g = item % G;
  const float4 v4 = reinterpret_cast<const float4*>(x + t * K + g * MOE_GROUP)[lane];
  float v[4] = {v4.x, v4.y, v4.z, v4.w};
  if (arwoi) {
    const float w = topk_w[t * topk];
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] *= w;
  }
  uint32_t q;
  const float s = quant_group(v, fmt, &q);
  reinterpret_cast<uint32_t*>(a1q + t * K + g * MOE_GROUP)[lane] = q;
  if (lane == 0) a1s[t * G + g] = s;
}
