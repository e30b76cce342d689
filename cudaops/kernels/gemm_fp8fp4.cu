// Grouped GEMM, FP8 activations × MXFP4 weights, on the tensor cores (mma.sync m16n8k32 e4m3):
//
//   out[r, n] = Σ_k fp8(X[r, k]) · xs[r, k/128] · W[e, n, k] (+ bias[e, n])
//
// for every real row r of expert e's segment. The weights are the MMA's M dimension (16 weight
// rows per warp) and the tokens its N dimension (8 per MMA), so a batch of a few tokens pays for
// a tile of 32 token columns, not 128 rows. E2M1 codes are expanded to E4M3 in registers (exact);
// each k32 step, one MMA per 8 tokens, is exactly one E8M0 weight block, so its result is
// multiplied by the weight scale times the token's activation scale and added to a float32
// accumulator (per-32 promotion: the scales are applied exactly as the contract says).
#include "common.cuh"

#define GEMM_WARPS 4
#define GEMM_ROWS (16 * GEMM_WARPS)  // weight rows per block
#define GEMM_TOK MOE_BM              // token columns per block
#define GEMM_NF (GEMM_TOK / 8)       // n8 fragments per warp

__device__ __forceinline__ void mma_e4m3(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// W (E, N, Kd/2) packed E2M1, Ws (E, N, Kd/32) E8M0, X (rows, Kd) FP8, Xs (rows, Kd/128),
// bias (E, N) or null, out (rows, N) float32. grid = (N / GEMM_ROWS, tile bound), block = 128.
extern "C" __global__ void __launch_bounds__(GEMM_WARPS * 32)
moe_gemm(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X, const float* __restrict__ Xs,
         const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,
         const int* __restrict__ offsets, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd) {
  if ((int)blockIdx.y >= *ntiles) return;
  const int e = tiles[2 * blockIdx.y], row0 = tiles[2 * blockIdx.y + 1];
  const int nvalid = min(GEMM_TOK, offsets[e] + counts[e] - row0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const i64 n0 = (i64)blockIdx.x * GEMM_ROWS + warp * 16 + g;  // this thread's weight rows: n0, n0 + 8
  const i64 KB = Kd / MOE_BLOCK, G = Kd / MOE_GROUP;
  const u8* w0 = W + ((i64)e * N + n0) * (Kd / 2);
  const u8* w1 = w0 + 8 * (Kd / 2);
  const u8* s0 = Ws + ((i64)e * N + n0) * KB;
  const u8* s1 = s0 + 8 * KB;
  float acc[GEMM_NF][4];
#pragma unroll
  for (int j = 0; j < GEMM_NF; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  for (i64 kb = 0; kb < KB; kb++) {
    const i64 k0 = kb * MOE_BLOCK;
    // A: rows n0 and n0+8, k = k0 + 4t ... +3 and k0 + 16 + 4t ... +3 (2 packed bytes each).
    uint32_t a[4];
    a[0] = e2m1x4_to_e4m3x4(*reinterpret_cast<const uint16_t*>(w0 + k0 / 2 + 2 * t));
    a[1] = e2m1x4_to_e4m3x4(*reinterpret_cast<const uint16_t*>(w1 + k0 / 2 + 2 * t));
    a[2] = e2m1x4_to_e4m3x4(*reinterpret_cast<const uint16_t*>(w0 + k0 / 2 + 8 + 2 * t));
    a[3] = e2m1x4_to_e4m3x4(*reinterpret_cast<const uint16_t*>(w1 + k0 / 2 + 8 + 2 * t));
    const float ws0 = e8m0_to_float(s0[kb]), ws1 = e8m0_to_float(s1[kb]);
#pragma unroll
    for (int j = 0; j < GEMM_NF; j++) {
      // B: token row0 + 8j + g, k = k0 + 4t ... and k0 + 16 + 4t ...
      const u8* xr = X + (i64)(row0 + 8 * j + g) * Kd + k0 + 4 * t;
      uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(xr), *reinterpret_cast<const uint32_t*>(xr + 16)};
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      mma_e4m3(d, a, b);
      // C: rows (weights) n0, n0+8; columns (tokens) 8j + 2t, 8j + 2t + 1.
      const float xs0 = Xs[(i64)(row0 + 8 * j + 2 * t) * G + k0 / MOE_GROUP];
      const float xs1 = Xs[(i64)(row0 + 8 * j + 2 * t + 1) * G + k0 / MOE_GROUP];
      acc[j][0] += d[0] * (ws0 * xs0);
      acc[j][1] += d[1] * (ws0 * xs1);
      acc[j][2] += d[2] * (ws1 * xs0);
      acc[j][3] += d[3] * (ws1 * xs1);
    }
  }
  const float b0 = bias ? bias[(i64)e * N + n0] : 0.f;
  const float b1 = bias ? bias[(i64)e * N + n0 + 8] : 0.f;
#pragma unroll
  for (int j = 0; j < GEMM_NF; j++) {
#pragma unroll
    for (int c = 0; c < 2; c++) {
      const int col = 8 * j + 2 * t + c;
      if (col < nvalid) {
        out[(i64)(row0 + col) * N + n0] = acc[j][c] + b0;
        out[(i64)(row0 + col) * N + n0 + 8] = acc[j][2 + c] + b1;
      }
    }
  }
}
