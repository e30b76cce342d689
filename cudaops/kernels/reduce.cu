// Reduce: out[t, c] = Σ_k w[t, k] · z[inv_perm[t, k], c] over the slots k = 0 ... topk-1 in
// order, float32; weight 1 with apply_router_weight_on_input; zeros for a token without a local
// expert. Every output element is written.
#include "common.cuh"

// Each thread writes 4 columns. The slots go in batches of 8: every slot's row and weight are
// loaded at once, then every row's 4 values, then they are added in slot order, so that a
// thread waits for two memory round trips per batch instead of two per slot. The first batch's
// rows and weights load before the wait for the previous kernel (GEMM2): the routing kernel and
// the caller wrote them earlier (read past L1), so under programmatic launch that round trip
// overlaps GEMM2's end. grid = M · ceil(K / 512), block = 128.
extern "C" __global__ void moe_reduce(const float* __restrict__ z, const int* __restrict__ inv_perm,
                                      const float* __restrict__ topk_w, float* __restrict__ out,
                                      i64 M, i64 K, i64 topk, i64 arwoi) {
  TRACE_SCOPE(TRACE_REDUCE);
  const i64 cb = (K + 511) / 512;
  const i64 t = blockIdx.x / cb;
  const i64 c = ((blockIdx.x % cb) * blockDim.x + threadIdx.x) * 4;
  if (c >= K) return;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  int r[8];
  float w[8];
  auto slots = [&](i64 k0) {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      r[k] = k0 + k < topk ? __ldcg(inv_perm + t * topk + k0 + k) : -1;
      w[k] = k0 + k < topk && !arwoi ? __ldcg(topk_w + t * topk + k0 + k) : 1.f;
    }
  };
  slots(0);
  pdl_begin();
  TRACE_STEP(TRACE_REDUCE, 0, 0);
  for (i64 k0 = 0; k0 < topk; k0 += 8) {
    if (k0 > 0) slots(k0);
    float4 v[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
      if (r[k] >= 0) v[k] = *reinterpret_cast<const float4*>(z + (i64)r[k] * K + c);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      if (r[k] < 0) continue;
      acc.x += w[k] * v[k].x;
      acc.y += w[k] * v[k].y;
      acc.z += w[k] * v[k].z;
      acc.w += w[k] * v[k].w;
    }
    if (k0 == 0) TRACE_STEP(TRACE_REDUCE, 1, __float_as_uint(acc.x));
  }
  *reinterpret_cast<float4*>(out + t * K + c) = acc;
}
