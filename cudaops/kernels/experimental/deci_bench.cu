// The decode GEMM on the integer MMA (mma.sync m16n8k32 s8), against moe_gemm_dec: a standalone
// program (not part of moe.fatbin) that times both on the same weights and checks the new
// kernel against a float64 reference. Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/deci deci_bench.cu
//   /tmp/deci m1 1    (one token a tile at each shape's M = 1 tiles; m8: batches of 8 tokens;
//                      sweep: splits 2 and 4; multi: 2 and 4 tokens (DECI_MULTI) at splits 1, 2, 4; ovh:
//                      GPT-OSS GEMM1 at 1-12 groups a warp; prof: launches only, for ncu)
// DECI_POOL_MB sets the weight pool the tiles rotate over (default 400 MB, several times L2).
// It prints, per GEMM, the median µs of moe_gemm_dec, of this kernel, and of this kernel with the
// block scales folded into integer multipliers (fold), and their errors against float64.
//
// Why: at decode the FP16 path spends 11 instructions a 32-bit word of E2M1 codes on the
// expansion (shifts and masks; no bit layout does better, docs/perf.md), and at M = 1 the loop
// pays for each of its instructions. On the integer MMA the expansion is a byte lookup: `prmt` on an 8-byte table of the
// magnitudes (times 2: 0, 1, 2, 3, 4, 6, 8, 12) with the code as selector gives four s8 weights
// in one instruction, a negative code giving 0 (the selector's top bit replicates the table
// byte's sign, which is 0). The same lookup on the code with its sign bits flipped gives the
// magnitudes of the negative codes. So
//   Σ_k w_k x_k = Σ_k pos_k x_k + Σ_k neg_k (−x_k),
// two MMAs a 32-element block (as the FP16 path's two k16 MMAs), with the tokens as exact s8
// "planes": an E4M3 value is sgn · M · 2^(E − 10) (E = max(e, 1) in 1..15, M = 8 + m for e ≥ 1,
// m for e = 0), and plane p (E in 4p+1 .. 4p+4) holds sgn · M · 2^(E − 4p − 1), at most 120, so
// x = Σ_p 2^(4p − 9) · plane_p(x). A token is 8 rows of s8 (planes 0..3 of x, then of −x), which
// the kernel's 8 MMA columns take as (plane) for the positive and the negative MMA. The integer
// sums are exact; each block's sum is converted to float and multiplied by its weight scale
// (as the FP16 path does with its float block sums), the groups' sums by the token's scale, and
// the planes' sums combined by their powers of two at the end. Per word of codes: one XOR, two
// shifts, four `prmt` (7 instructions instead of 11); no FP8 → FP16 conversion of tokens.
#include <string>

#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

__device__ __forceinline__ void imma(int d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// prmt in its default mode: the selector nibble's top bit replicates the selected byte's sign
// (__byte_perm ignores that bit, so the compiler would drop the sign flip).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
}

// Token planes: X (rows, Kd) E4M3 -> P (rows, 8, Kd) s8, rows 0..3 planes of x, 4..7 of -x.
extern "C" __global__ void deci_planes(const u8* __restrict__ X, u8* __restrict__ P, i64 rows, i64 Kd) {
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * Kd) return;
  const i64 r = i / Kd, k = i % Kd;
  const unsigned b = X[i], e = (b >> 3) & 15, m = b & 7;
  const int E = e ? (int)e : 1, M = e ? 8 + (int)m : (int)m, sg = (b >> 7) ? -1 : 1;
  const int p = (E - 1) / 4;
  for (int q = 0; q < 4; q++) {
    const int v = q == p ? sg * (M << (E - 4 * q - 1)) : 0;
    P[(r * 8 + q) * Kd + k] = (u8)(int8_t)v;
    P[(r * 8 + 4 + q) * Kd + k] = (u8)(int8_t)(-v);
  }
}

// The float64 reference of one (tile, row) output with standard E2M1 codes in the blocked layout.
extern "C" __global__ void deci_ref(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X,
                                    const float* __restrict__ Xs, const int* __restrict__ tiles, int ntiles,
                                    double* __restrict__ out, i64 N, i64 Kd) {
  const i64 n = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y;
  if (n >= N || y >= ntiles) return;
  const int e = tiles[2 * y] & DEC_EXPERT_MASK, row0 = tiles[2 * y + 1];  // list_word (common.cuh)
  const i64 G = Kd / MOE_GROUP, R = (i64)e * N + n;
  double s = 0;
  for (i64 k = 0; k < Kd; k++) {
    const u8 byte = weight_row(W, R, G)[(k / 128) * 1024 + (k % 128) / 2];
    const unsigned c = (k & 1) ? byte >> 4 : byte & 15;
    const double mags[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    const double w = (c & 8 ? -1 : 1) * mags[c & 7];
    const unsigned sb = scale_row(Ws, R, G)[scale_blk(k / 32)];
    const double ws = ldexp(1.0, (int)sb - 127);
    __nv_fp8_e4m3 xv;
    xv.__x = X[(i64)row0 * Kd + k];
    s += w * ws * (double)(float)xv * (double)Xs[(i64)row0 * G + k / 128];
  }
  out[(i64)y * N + n] = s;
}

// gemm_dec's structure (S warps share 32 rows, each its groups q ≡ r mod S, a DEC_STAGES ring a
// warp, partial sums added in the order of r), one token a pass, EXACT false, the MMAs on s8.
template <int S, bool F, int MODE = 0>
__device__ __forceinline__ void gemm_deci(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ P,
                                          const float* __restrict__ Xs, int e, int row0, const int* __restrict__ counts,
                                          const int* __restrict__ offsets, float* __restrict__ out, i64 N, i64 Kd) {
  extern __shared__ __align__(128) u8 dec_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int r = warp % S;
  constexpr int RB = 2, WR = 32;
  const i64 nb = (i64)blockIdx.x * (WR * DEC_WARPS / S) + (warp / S) * WR;
  const i64 G = Kd / MOE_GROUP;
  const int mine = (int)((G - r + S - 1) / S);
  using Stage = DecStageT<1, RB>;
  constexpr int D = S == 1 ? DEC1_STAGES : DEC_STAGES;
  Stage* const st = reinterpret_cast<Stage*>(dec_smem) + warp * D;
  float4* const wsc = reinterpret_cast<float4*>(dec_smem + DEC_WARPS * D * sizeof(Stage)) + WR * warp;
  auto red = [&](int w) { return reinterpret_cast<float(*)[32]>(dec_smem + DEC_WARPS * D * sizeof(Stage) + DEC_WSC(RB)) + 8 * w; };
  const u8* const wp0 = weight_row(W, (i64)e * N + nb + (lane >> 2), G) + 16 * (lane & 3) + 1024 * r;
  const u8* const sp0 = scale_row(Ws, (i64)e * N + nb + 16 * ((lane >> 2) & (RB - 1)), G) + r * 64 + 16 * (lane & 3);
  const i64 wblk = G * 1024;
  u8* const dw = &st[0].w[lane >> 2][16 * ((lane & 3) ^ ((lane >> 3) & 3))];
  u8* const dx = &st[0].x[lane >> 3][16 * ((lane & 7) ^ (2 * ((lane >> 3) & 3)))];
  const int wo = 16 * ((g >> 1) & 3) + 4 * t, xo = 32 * (g & 3) + 8 * t;
  u8* const ds = lane < 4 * RB ? &st[0].s[4 * lane][0] : reinterpret_cast<u8*>(&st[0].xs[max(lane - 16, 0)]);
  const uint64_t wpol = l2_evict_first();
  const u8* wq = wp0;
  const u8* sq = sp0;
  const u8* xq = nullptr;
  const float* xsq = nullptr;
  bool xs = false;
  auto issue_w = [&](int o, auto grp) {
    constexpr int q = decltype(grp)::value;
    if constexpr (S == 1) o += opaque_zero();
#pragma unroll
    for (int h = 0; h < RB; h++) {
      cp_async16_pol(dw + o + 16 * h * 64, wq + h * wblk + q * 1024 * S, wpol);
      cp_async16_pol(dw + o + (16 * h + 8) * 64, wq + h * wblk + 512 + q * 1024 * S, wpol);
    }
    if (lane < 4 * RB) cp_async16_pol(ds + o, sq + q * 64 * S, wpol);
  };
  // The token's 8 plane rows (all real), its scale.
  auto issue_x = [&](int o, auto grp) {
    constexpr int q = decltype(grp)::value;
    cp_async16(dx + o, xq + q * MOE_GROUP * S);
    cp_async16(dx + o + 4 * 128, xq + 4 * Kd + q * MOE_GROUP * S);
    if (xs) cp_async4(ds + o, xsq + q * S);
  };
  constexpr int SZ = (int)sizeof(Stage);
  auto issue_w_head = [&] {
    static_for<D - 1>([&](auto q) {
      if (mine > q.value) issue_w(q.value * SZ, q);
    });
  };
  issue_w_head();
  const int nvalid = min(GEMM_TOK, offsets[e] + counts[e] - row0);
  const uint32_t T0 = 0x03020100u, T1 = 0x0C080604u;  // 2 · |E2M1|
  for (int j = 0; j < nvalid; j++) {
    const i64 tok = row0 + j;
    xq = P + (tok * 8 + (lane >> 3)) * Kd + 16 * (lane & 7) + MOE_GROUP * r;
    xsq = Xs + tok * G + r;
    xs = lane == 16;
    if (j > 0) {
      wq = wp0;
      sq = sp0;
      issue_w_head();
    }
    static_for<D - 1>([&](auto q) {
      if (mine > q.value) issue_x(q.value * SZ, q);
      cp_async_commit();
    });
    float acc[4 * RB] = {};
    int cur = 0, nxt = (D - 1) * SZ;
#pragma unroll 1
    for (int i = 0; i < mine; i++) {
      if (MODE != 2 && i + D - 1 < mine) {  // MODE 2: the ring head only (the compute alone)
        issue_w(nxt, Ic<D - 1>{});
        issue_x(nxt, Ic<D - 1>{});
      }
      cp_async_commit();
      cp_async_wait<D - 1>();
      __syncwarp();
      const Stage& d = *reinterpret_cast<const Stage*>(reinterpret_cast<const u8*>(st) + cur);
      if constexpr (MODE != 1) {  // MODE 1: the copies and waits alone
      {
        const uint32_t w4 = *reinterpret_cast<const uint32_t*>(&d.s[lane][0]);
        if constexpr (F) {
          // The row's four block scales relative to its smallest: integer multipliers (the
          // blocks' integer sums are added exactly, while the scales differ by at most 11).
          const int s0 = w4 & 255, s1 = (w4 >> 8) & 255, s2 = (w4 >> 16) & 255, s3 = w4 >> 24;
          const int sm = min(min(s0, s1), min(s2, s3));
          reinterpret_cast<int4*>(wsc)[lane] = make_int4(1 << (s0 - sm), 1 << (s1 - sm), 1 << (s2 - sm), 1 << (s3 - sm));
          red(warp)[0][lane] = __uint_as_float((uint32_t)sm << 23);
        } else {
          wsc[lane] = make_float4(dec_scale<false>(w4, 0), dec_scale<false>(w4, 1), dec_scale<false>(w4, 2), dec_scale<false>(w4, 3));
        }
      }
      __syncwarp();
      float4 sw[2 * RB];
      int4 mi[2 * RB];
      float fm[2 * RB];
#pragma unroll
      for (int k = 0; k < 2 * RB; k++) {
        if constexpr (F) {
          mi[k] = reinterpret_cast<const int4*>(wsc)[g + 8 * k];
          fm[k] = red(warp)[0][g + 8 * k];
        } else {
          sw[k] = wsc[g + 8 * k];
        }
      }
      float part[4 * RB] = {};
      int ia[4 * RB] = {};
#pragma unroll
      for (int b = 0; b < 4; b++) {
        const uint2 bp = *reinterpret_cast<const uint2*>(&d.x[g & 3][xo ^ (32 * b)]);
        const uint2 bn = *reinterpret_cast<const uint2*>(&d.x[4 + (g & 3)][xo ^ (32 * b)]);
#pragma unroll
        for (int h = 0; h < RB; h++) {
          const uint32_t c0 = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g][wo ^ (16 * b)]);
          const uint32_t c1 = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g + 8][wo ^ (16 * b)]);
          const uint32_t n0 = c0 ^ 0x88888888u, n1 = c1 ^ 0x88888888u;
          const uint32_t ap[4] = {prmt(T0, T1, c0), prmt(T0, T1, c1), prmt(T0, T1, c0 >> 16),
                                  prmt(T0, T1, c1 >> 16)};
          const uint32_t an[4] = {prmt(T0, T1, n0), prmt(T0, T1, n1), prmt(T0, T1, n0 >> 16),
                                  prmt(T0, T1, n1 >> 16)};
          int dd[4] = {0, 0, 0, 0};
          imma(dd, ap, bp.x, bp.y);
          imma(dd, an, bn.x, bn.y);
          if constexpr (F) {
            const int m0 = b == 0 ? mi[2 * h].x : b == 1 ? mi[2 * h].y : b == 2 ? mi[2 * h].z : mi[2 * h].w;
            const int m1 = b == 0 ? mi[2 * h + 1].x : b == 1 ? mi[2 * h + 1].y : b == 2 ? mi[2 * h + 1].z : mi[2 * h + 1].w;
            ia[4 * h + 0] += dd[0] * m0;
            ia[4 * h + 1] += dd[1] * m0;
            ia[4 * h + 2] += dd[2] * m1;
            ia[4 * h + 3] += dd[3] * m1;
          } else {
            const float ws0 = f4_at(sw[2 * h], b), ws1 = f4_at(sw[2 * h + 1], b);
            part[4 * h + 0] += (float)dd[0] * ws0;
            part[4 * h + 1] += (float)dd[1] * ws0;
            part[4 * h + 2] += (float)dd[2] * ws1;
            part[4 * h + 3] += (float)dd[3] * ws1;
          }
        }
      }
      const float x0 = d.xs[0];
      if constexpr (F) {
#pragma unroll
        for (int h = 0; h < RB; h++) {
          const float f0 = fm[2 * h] * x0, f1 = fm[2 * h + 1] * x0;
          acc[4 * h + 0] += (float)ia[4 * h + 0] * f0;
          acc[4 * h + 1] += (float)ia[4 * h + 1] * f0;
          acc[4 * h + 2] += (float)ia[4 * h + 2] * f1;
          acc[4 * h + 3] += (float)ia[4 * h + 3] * f1;
        }
      } else {
#pragma unroll
        for (int c = 0; c < 4 * RB; c++) acc[c] += part[c] * x0;
      }
      }
      __syncwarp();
      wq += 1024 * S;
      sq += 64 * S;
      xq += MOE_GROUP * S;
      xsq += S;
      cur = cur == (D - 1) * SZ ? 0 : cur + SZ;
      nxt = nxt == (D - 1) * SZ ? 0 : nxt + SZ;
    }
    cp_async_wait<0>();
    // Planes: columns 2t, 2t + 1 are planes 2t, 2t + 1 (t < 2; lanes t >= 2 hold copies); their
    // factors 2^(4p - 9), and 1/2 for the doubled weights.
    float v[2 * RB];
#pragma unroll
    for (int c = 0; c < 2 * RB; c++) {
      const float f0 = t & 1 ? 0x1p-2f : 0x1p-10f, f1 = t & 1 ? 0x1p2f : 0x1p-6f;
      v[c] = acc[2 * c] * f0 + acc[2 * c + 1] * f1;
      v[c] += __shfl_xor_sync(0xffffffffu, v[c], 1);
    }
    if constexpr (S > 1) {
#pragma unroll
      for (int c = 0; c < 2 * RB; c++) red(warp)[c][lane] = v[c];
      __syncthreads();
    }
    if (r == 0 && t == 0) {
#pragma unroll
      for (int c = 0; c < 2 * RB; c++) {
        float s = v[c];
        if constexpr (S > 1) {
#pragma unroll
          for (int k = 1; k < S; k++) s += red(warp + k)[c][lane];
        }
        // c = 2h + (row g or g + 8)
        out[(tok)*N + nb + 16 * (c >> 1) + g + 8 * (c & 1)] = s;
      }
    }
    if constexpr (S > 1) __syncthreads();
    __syncwarp();
  }
}

__device__ __forceinline__ void deci_entry(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ P, const float* __restrict__ Xs,
              const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,
              const int* __restrict__ offsets, float* __restrict__ out, i64 N, i64 Kd, i64 split, i64 fold) {
  if ((int)blockIdx.y >= *ntiles) return;
  const int e = tiles[2 * blockIdx.y] & DEC_EXPERT_MASK, row0 = tiles[2 * blockIdx.y + 1];  // list_word (common.cuh)
#define DECI_RUN(f, m)                                                \
  do {                                                               \
    if (split == 4)                                                  \
      gemm_deci<4, f, m>(W, Ws, P, Xs, e, row0, counts, offsets, out, N, Kd); \
    else if (split == 2)                                             \
      gemm_deci<2, f, m>(W, Ws, P, Xs, e, row0, counts, offsets, out, N, Kd); \
    else                                                             \
      gemm_deci<1, f, m>(W, Ws, P, Xs, e, row0, counts, offsets, out, N, Kd); \
  } while (0)
  // fold: 0 the integer MMA, 1 with the folded scales, 2 its copies and waits alone (no
  // arithmetic), 3 its arithmetic alone (on the ring's first groups, no further copies).
  if (fold == 1)
    DECI_RUN(true, 0);
  else if (fold == 2)
    DECI_RUN(false, 1);
  else if (fold == 3)
    DECI_RUN(false, 2);
  else
    DECI_RUN(false, 0);
#undef DECI_RUN
}
// The kernel at four blocks an SM (128 registers at most, as the split kernels), and at three
// (moe_gemm_deci3: room for more registers, which one-token GEMMs of one wave lose nothing by).
#define DECI_KERNEL(name, blocks)                                                                                       \
  extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32, blocks)                                                   \
  name(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ P, const float* __restrict__ Xs,      \
       const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,                    \
       const int* __restrict__ offsets, float* __restrict__ out, i64 N, i64 Kd, i64 split, i64 fold) {                   \
    deci_entry(W, Ws, P, Xs, tiles, ntiles, counts, offsets, out, N, Kd, split, fold);                                  \
  }
DECI_KERNEL(moe_gemm_deci, DEC_BLOCKS)
DECI_KERNEL(moe_gemm_deci3, 3)
#undef DECI_KERNEL

// The split kernel's shared memory (the fold keeps each row's smallest scale in the partial sums'
// area, which the pass uses only after its groups).
#define DECI_SMEM DEC_SMEM

int main(int argc, char** argv) {
  // GEMM1 and GEMM2 of GPT-OSS-120B, DeepSeek-V3 and Qwen3-30B-A3B at one token (T experts).
  struct Shape {
    const char* name;
    i64 N, Kd;
    int T, S;
  };
  // One token (M = 1: top-k tiles, the host's split), or with argument "m8" batches of 8 tokens
  // on distinct experts (8 · top-k tiles of one token, split 1; 2 for GPT-OSS's GEMM2, whose
  // 2880 rows the 128-row blocks of split 1 do not divide).
  std::vector<Shape> shapes = {{"gptoss-gemm1", 5760, 2944, 4, 2}, {"gptoss-gemm2", 2880, 2944, 4, 2},
                               {"dsv3-gemm1", 4096, 7168, 8, 2},   {"dsv3-gemm2", 7168, 2048, 8, 2},
                               {"qwen3-gemm1", 1536, 2048, 8, 4},  {"qwen3-gemm2", 2048, 768, 8, 4}};
  const bool m8 = argc > 1 && std::string(argv[1]) == "m8";
  if (m8)
    shapes = {{"gptoss-gemm1", 5760, 2944, 32, 1}, {"gptoss-gemm2", 2880, 2944, 32, 2}, {"dsv3-gemm1", 4096, 7168, 64, 1},
              {"dsv3-gemm2", 7168, 2048, 64, 1},   {"qwen3-gemm1", 1536, 2048, 64, 1},  {"qwen3-gemm2", 2048, 768, 64, 1}};
  if (argc > 1 && std::string(argv[1]) == "split")  // GPT-OSS's one-token GEMMs at each split
    shapes = {{"gptoss-gemm1", 5760, 2944, 4, 1}, {"gptoss-gemm1", 5760, 2944, 4, 2}, {"gptoss-gemm1", 5760, 2944, 4, 4},
              {"gptoss-gemm2", 2880, 2944, 4, 2}, {"gptoss-gemm2", 2880, 2944, 4, 4}};
  if (argc > 1 && std::string(argv[1]) == "ovh")  // GPT-OSS GEMM1's rows with 1, 2, 6 and 23 groups
    shapes = {{"gptoss-k128", 5760, 128, 4, 1},  {"gptoss-k256", 5760, 256, 4, 2}, {"gptoss-k1536", 5760, 1536, 4, 2},
              {"gptoss-gemm1", 5760, 2944, 4, 2}};
  // sweep: each one-token GEMM at splits 2 and 4 (the 32-row and 64-row split kernels).
  if (argc > 1 && std::string(argv[1]) == "sweep") {
    std::vector<Shape> all;
    for (const Shape& x : shapes)
      for (int sp : {2, 4}) all.push_back({x.name, x.N, x.Kd, x.T, sp});
    shapes = all;
  }
  // multi: 2 and 4 tokens (tiles of one token on distinct experts; DECI_MULTI="8,16" for others)
  // at splits 1, 2 and 4.
  if (argc > 1 && std::string(argv[1]) == "multi") {
    std::vector<int> mult;
    for (const char* p = getenv("DECI_MULTI") ? getenv("DECI_MULTI") : "2,4"; *p;) {
      char* end;
      mult.push_back((int)strtol(p, &end, 10));
      p = *end ? end + 1 : end;
    }
    // DECI_PAD=1: GPT-OSS at the bench's sizes (K = I = 2944, 23 groups of 128), whose GEMM2
    // rows the 64-row kernel's blocks divide at split 2.
    if (getenv("DECI_PAD") && atoi(getenv("DECI_PAD")))
      shapes[0].N = 5888, shapes[1].N = 2944;
    std::vector<Shape> all;
    for (const Shape& x : shapes)
      for (int m : mult)
        for (int sp : {1, 2, 4})
          if (x.N * sp % 128 == 0) all.push_back({x.name, x.N, x.Kd, x.T * m, sp});
    shapes = all;
  }
  // prof: GPT-OSS GEMM1 only, each variant launched three times in turn (for ncu), no timing.
  const bool prof = argc > 1 && std::string(argv[1]) == "prof";
  if (prof) shapes = {{"gptoss-gemm1", 5760, 2944, 4, 2}};
  const int tokens = argc > 2 ? atoi(argv[2]) : 1;  // tokens a tile
  CK(cudaFuncSetAttribute(moe_gemm_dec, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_dec1, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC1_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_deci, cudaFuncAttributeMaxDynamicSharedMemorySize, DECI_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_deci3, cudaFuncAttributeMaxDynamicSharedMemorySize, DECI_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_decw, cudaFuncAttributeMaxDynamicSharedMemorySize, DECW_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_dec1w, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC1W_SMEM));
  printf("copy %.0f GB/s\n", copy_gbps());
  printf("%-15s %6s %9s %9s %9s %7s %7s %9s %9s %9s %9s %9s %9s %9s\n", "shape", "tokens", "dec us", "deci us", "decif us", "deci/", "decif/",
         "decif GB/s", "deci err", "decif err", "copies us", "arith us", "deci3 us", "64-row us");
  for (const Shape& sh : shapes) {
    const i64 N = sh.N, Kd = sh.Kd;
    TilePool tp = make_pool(N, Kd, sh.T, tokens, "DECI_POOL_MB");
    const i64 wbytes = tp.wbytes, sbytes = tp.sbytes, rows = tp.rows;
    const int pool = tp.pool, sets = tp.sets;
    u8 *const W = tp.W, *const Ws = tp.Ws, *const X = tp.X;
    float* const Xs = tp.Xs;
    int *const tiles = tp.tiles, *const counts = tp.counts, *const offs = tp.offs, *const nt = tp.nt;
    std::vector<int> htiles(2 * sh.T);  // set 0's tile list, for the reference
    CK(cudaMemcpy(htiles.data(), tiles, htiles.size() * 4, cudaMemcpyDeviceToHost));
    u8* P;
    float *out, *outi;
    double* ref;
    CK(cudaMalloc(&P, rows * Kd * 8));
    CK(cudaMalloc(&out, rows * N * 4));
    CK(cudaMalloc(&outi, rows * N * 4));
    CK(cudaMalloc(&ref, sh.T * N * 8));
    deci_planes<<<(unsigned)((rows * Kd + 255) / 256), 256>>>(X, P, rows, Kd);
    CK(cudaGetLastError());
    if (N * sh.S % 128) {
      printf("%s: N · S not a multiple of 128\n", sh.name);
      continue;
    }
    const dim3 grid((unsigned)(N * sh.S / 128), sh.T), block(128);
    auto run_dec = [&](int s) {
      (sh.S == 1 ? moe_gemm_dec1 : moe_gemm_dec)<<<grid, block, sh.S == 1 ? DEC1_SMEM : DEC_SMEM>>>(W, Ws, X, Xs, tiles + s * 2 * sh.T, nt, counts + s * pool, offs + s * pool, nullptr, out,
                                              N, Kd, sh.S, 0, 0, nullptr, nullptr, 0);
    };
    auto run_deci = [&](int s, int fold) {
      moe_gemm_deci<<<grid, block, DECI_SMEM>>>(W, Ws, P, Xs, tiles + s * 2 * sh.T, nt, counts + s * pool, offs + s * pool, outi, N,
                                                Kd, sh.S, fold);
    };
    // Variants: 0 moe_gemm_dec, 1 the integer MMA, 2 the same with the block scales folded, 3 its
    // copies alone, 4 its arithmetic alone, 5 the integer MMA at three blocks an SM, 6
    // moe_gemm_decw (FP16, 64 weight rows a warp, three blocks an SM) at split 2 or 4, and
    // moe_gemm_dec1w (the same at split 1).
    auto run = [&](int v, int s) {
      if (v == 0)
        run_dec(s);
      else if (v == 5)
        moe_gemm_deci3<<<grid, block, DECI_SMEM>>>(W, Ws, P, Xs, tiles + s * 2 * sh.T, nt, counts + s * pool, offs + s * pool, outi,
                                                   N, Kd, sh.S, 0);
      else if (v == 6 && sh.S == 1)
        moe_gemm_dec1w<<<dim3((unsigned)((N + 255) / 256), sh.T), block, DEC1W_SMEM>>>(
            W, Ws, X, Xs, tiles + s * 2 * sh.T, nt, counts + s * pool, offs + s * pool, nullptr, out, N, Kd, 1, 0, 0, nullptr, nullptr,
            0);
      else if (v == 6)
        moe_gemm_decw<<<dim3((unsigned)(N * sh.S / 256), sh.T), block, DECW_SMEM>>>(
            W, Ws, X, Xs, tiles + s * 2 * sh.T, nt, counts + s * pool, offs + s * pool, nullptr, out, N, Kd, sh.S, 0, 0, nullptr,
            nullptr, 0);
      else
        run_deci(s, v - 1);
    };
    // Check: set 0, every token of every tile against float64.
    double maxrel[3] = {0, 0, 0};
    const int NV = sh.S == 1 || N * sh.S % 256 == 0 ? 7 : 6;
    for (int v = 1; v < 3; v++) {
      run(v, 0);
      CK(cudaDeviceSynchronize());
      for (int j = 0; j < tokens; j++) {
        // the reference reads row row0 of each tile: shift the tiles by j rows
        std::vector<int> tj(htiles.begin(), htiles.begin() + 2 * sh.T);
        for (int y = 0; y < sh.T; y++) tj[2 * y + 1] += j;
        int* dtj;
        CK(cudaMalloc(&dtj, tj.size() * 4));
        CK(cudaMemcpy(dtj, tj.data(), tj.size() * 4, cudaMemcpyHostToDevice));
        deci_ref<<<dim3((unsigned)((N + 127) / 128), sh.T), 128>>>(W, Ws, X, Xs, dtj, sh.T, ref, N, Kd);
        CK(cudaDeviceSynchronize());
        std::vector<double> hr(sh.T * N);
        std::vector<float> ho(rows * N);
        CK(cudaMemcpy(hr.data(), ref, hr.size() * 8, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(ho.data(), outi, ho.size() * 4, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (int y = 0; y < sh.T; y++)
          for (i64 n = 0; n < N; n++) {
            const double a = ho[(32 * y + j) * N + n], b = hr[y * N + n];
            num += (a - b) * (a - b);
            den += b * b;
          }
        maxrel[v] = std::max(maxrel[v], std::sqrt(num / den));
        cudaFree(dtj);
      }
    }
    if (prof) {
      for (int v = 0; v < NV; v++)
        for (int i = 0; i < 3; i++) run(v, i % sets);
      CK(cudaDeviceSynchronize());
      printf("prof: variants 0..%d launched 3 times each\n", NV - 1);
      continue;
    }
    // Time: rounds of 20 launches over rotating sets, each variant in turn, medians.
    const std::vector<double> mv = time_variants(NV, sets, run);
    double med[7] = {0, 0, 0, 0, 0, 0, 0};
    std::copy(mv.begin(), mv.end(), med);
    printf("%-12s S%d %6d %9.2f %9.2f %9.2f %7.3f %7.3f %9.0f %9.2e %9.2e %9.2f %9.2f %9.2f %9.2f\n", sh.name, sh.S, tokens, med[0], med[1], med[2],
           med[1] / med[0], med[2] / med[0], (double)(wbytes + sbytes) * sh.T / (med[2] * 1e-6) / 1e9, maxrel[1], maxrel[2], med[3],
           med[4], med[5], med[6]);
    cudaFree(P), cudaFree(out), cudaFree(outi), cudaFree(ref);
    tp.release();
  }
  return 0;
}
