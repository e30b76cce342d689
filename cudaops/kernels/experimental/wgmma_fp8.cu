// Grouped GEMM for prefill-sized batches on Hopper's warpgroup MMA (wgmma, FP8):
//
//   out[r, n] = Σ_k fp8(X[r, k]) · xs[r, k/128] · W[e, n, k] (+ bias[e, n])
//
// One warpgroup per block computes 64 weight rows × 128 tokens of one expert's segment. The
// weights are wgmma's A operand in registers: each thread reads its 2-byte pieces of two rows
// and expands E2M1 to E4M3 (exact), one 128-element group ahead. The tokens are the B operand
// from shared memory, brought in by 16-byte cp.async copies through a WG_STAGES-deep ring laid
// out as K-major core matrices (8 tokens × 16 bytes) without swizzle. Each wgmma is k32, exactly
// one E8M0 weight block: its result is multiplied by the weight scale times the token's scale
// and added to a float32 accumulator (per-32 promotion, the contract's scales applied exactly).
#include "common.cuh"

#define WG_TOK 128     // tokens per block = the segment alignment this kernel needs
#define WG_STAGES 4    // ring depth, in 128-element groups

struct WgStage {
  u8 x[WG_TOK * MOE_GROUP];  // core matrix (token/8, byte/16) at ((token/8)·8 + byte/16)·128
  float xs[WG_TOK];
};

__device__ __forceinline__ void wg_cp16(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void wg_cp4(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}

// Shared-memory matrix descriptor: start address, leading (K) and stride (M/N) byte offsets,
// all in 16-byte units; no swizzle.
__device__ __forceinline__ uint64_t wg_desc(const void* smem, unsigned lbo, unsigned sbo) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32);
}

// d (64 floats per thread) = A (registers) × B (descriptor), m64n128k32, e4m3 × e4m3 → f32,
// overwriting d (scale-d false).
__device__ __forceinline__ void wgmma_m64n128k32(float* d, const uint32_t a[4], uint64_t bdesc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64,%65,%66,%67}, %68, p, 1, 1;\n}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]),
        "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]),
        "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]),
        "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]),
        "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]),
        "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]),
        "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]),
        "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
}

// grid = (N / 64, tile bound), block = 128, dynamic shared memory WG_STAGES · sizeof(WgStage).
extern "C" __global__ void __launch_bounds__(128, 1)
moe_gemm_wg(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X, const float* __restrict__ Xs,
            const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,
            const int* __restrict__ offsets, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // wgmma exists on sm_90a only; the compute_90 PTX traps
  extern __shared__ __align__(128) u8 wg_smem[];
  WgStage* ring = reinterpret_cast<WgStage*>(wg_smem);
  if ((int)blockIdx.y >= *ntiles) return;
  const int e = tiles[2 * blockIdx.y], row0 = tiles[2 * blockIdx.y + 1];
  const int nvalid = min(WG_TOK, offsets[e] + counts[e] - row0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const i64 n0 = (i64)blockIdx.x * 64 + warp * 16 + g;  // this thread's rows: n0, n0 + 8
  const i64 KB = Kd / MOE_BLOCK, G = Kd / MOE_GROUP;
  const u8* w0 = W + ((i64)e * N + n0) * (Kd / 2);
  const u8* w1 = w0 + 8 * (Kd / 2);
  const u8* s0 = Ws + ((i64)e * N + n0) * KB;
  const u8* s1 = s0 + 8 * KB;
  // Stage q: the 128 tokens' group q (16 KB, 8 copies of 16 bytes per thread) and their scales.
  auto issue = [&](i64 q) {
    WgStage& d = ring[q % WG_STAGES];
#pragma unroll
    for (int h = 0; h < 8; h++) {
      const int c = tid + 128 * h;          // chunk: token c / 8, bytes 16 (c % 8) ...
      const int tok = c >> 3, kc = c & 7;
      wg_cp16(&d.x[((tok >> 3) * 8 + kc) * 128 + (tok & 7) * 16], X + (i64)(row0 + tok) * Kd + q * MOE_GROUP + 16 * kc);
    }
    wg_cp4(&d.xs[tid], Xs + (i64)(row0 + tid) * G + q);
  };
  // The thread's weight pieces of group q: for each of the 4 blocks, bytes 2t, 2t+1 and
  // 8+2t, 8+2t+1 of rows n0 and n0+8.
  uint32_t wr[4][2];
  auto load_w = [&](i64 q) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const i64 o = q * 64 + b * 16 + 2 * t;
      wr[b][0] = (uint32_t)__ldg(reinterpret_cast<const uint16_t*>(w0 + o)) | ((uint32_t)__ldg(reinterpret_cast<const uint16_t*>(w0 + o + 8)) << 16);
      wr[b][1] = (uint32_t)__ldg(reinterpret_cast<const uint16_t*>(w1 + o)) | ((uint32_t)__ldg(reinterpret_cast<const uint16_t*>(w1 + o + 8)) << 16);
    }
  };
  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; i++) acc[i] = 0.f;
#pragma unroll
  for (int q = 0; q < WG_STAGES - 1; q++) {
    if (q < G) issue(q);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  load_w(0);
  for (i64 q = 0; q < G; q++) {
    if (q + WG_STAGES - 1 < G) issue(q + WG_STAGES - 1);
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group %0;\n" ::"n"(WG_STAGES - 1));
    __syncthreads();
    // This group's A fragments and scales; then the next group's weights in flight.
    uint32_t a[4][4];
    float ws[4][2];
#pragma unroll
    for (int b = 0; b < 4; b++) {
      a[b][0] = e2m1x4_to_e4m3x4(wr[b][0] & 0xffffu);
      a[b][1] = e2m1x4_to_e4m3x4(wr[b][1] & 0xffffu);
      a[b][2] = e2m1x4_to_e4m3x4(wr[b][0] >> 16);
      a[b][3] = e2m1x4_to_e4m3x4(wr[b][1] >> 16);
      ws[b][0] = e8m0_to_float(__ldg(s0 + q * 4 + b));
      ws[b][1] = e8m0_to_float(__ldg(s1 + q * 4 + b));
    }
    if (q + 1 < G) load_w(q + 1);
    const WgStage& d = ring[q % WG_STAGES];
    float xs[16][2];
#pragma unroll
    for (int i = 0; i < 16; i++) {
      xs[i][0] = d.xs[8 * i + 2 * t];
      xs[i][1] = d.xs[8 * i + 2 * t + 1];
    }
#pragma unroll
    for (int b = 0; b < 4; b++) {
      // Block b of the group: bytes 32b ... 32b+31 of each token, core matrices 2b and 2b+1.
      const uint64_t bdesc = wg_desc(&d.x[(2 * b) * 128], 128, 8 * 128);
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
      wgmma_m64n128k32(part, a[b], bdesc);
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
      for (int i = 0; i < 16; i++) {
        acc[4 * i + 0] += part[4 * i + 0] * (ws[b][0] * xs[i][0]);
        acc[4 * i + 1] += part[4 * i + 1] * (ws[b][0] * xs[i][1]);
        acc[4 * i + 2] += part[4 * i + 2] * (ws[b][1] * xs[i][0]);
        acc[4 * i + 3] += part[4 * i + 3] * (ws[b][1] * xs[i][1]);
      }
    }
    __syncthreads();  // the slot is refilled by a later issue
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  const float b0 = bias ? bias[(i64)e * N + n0] : 0.f;
  const float b1 = bias ? bias[(i64)e * N + n0 + 8] : 0.f;
#pragma unroll
  for (int i = 0; i < 16; i++) {
#pragma unroll
    for (int c = 0; c < 2; c++) {
      const int col = 8 * i + 2 * t + c;
      if (col < nvalid) {
        out[(i64)(row0 + col) * N + n0] = acc[4 * i + c] + b0;
        out[(i64)(row0 + col) * N + n0 + 8] = acc[4 * i + 2 + c] + b1;
      }
    }
  }
#else
  __trap();
#endif
}
