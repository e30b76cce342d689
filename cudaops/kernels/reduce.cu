// Reduce: out[t, c] = Σ_k w[t, k] · z[inv_perm[t, k], c] over the slots k = 0 ... topk-1 in
// order, float32; weight 1 with apply_router_weight_on_input; zeros for a token without a local
// expert. Every output element is written.
#include "common.cuh"

// Each thread writes 4 columns. grid = M · ceil(K / 512), block = 128.
extern "C" __global__ void moe_reduce(const float* __restrict__ z, const int* __restrict__ inv_perm,
                                      const float* __restrict__ topk_w, float* __restrict__ out,
                                      i64 M, i64 K, i64 topk, i64 arwoi) {
  pdl_begin();
  const i64 cb = (K + 511) / 512;
  const i64 t = blockIdx.x / cb;
  const i64 c = ((blockIdx.x % cb) * blockDim.x + threadIdx.x) * 4;
  if (c >= K) return;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (i64 k = 0; k < topk; k++) {
    const int r = inv_perm[t * topk + k];
    if (r < 0) continue;
    const float w = arwoi ? 1.f : topk_w[t * topk + k];
    const float4 v = *reinterpret_cast<const float4*>(z + (i64)r * K + c);
    acc.x += w * v.x;
    acc.y += w * v.y;
    acc.z += w * v.z;
    acc.w += w * v.w;
  }
  *reinterpret_cast<float4*>(out + t * K + c) = acc;
}
