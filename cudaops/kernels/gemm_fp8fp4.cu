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

// d += A · B, m16n8k16, f16 operands, float32 accumulation.
__device__ __forceinline__ void mma_f16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_e4m3(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// W (E, N, Kd/2) packed E2M1 blocked (weight_row), Ws (E, N, Kd/32) E8M0 blocked (scale_row),
// X (rows, Kd) FP8, Xs (rows, Kd/128), bias (E, N) or null, out (rows, N) float32; tiles the
// routing's tile list (each entry with its rows, list_word), *ntiles its length; counts and
// offsets are not read (the decode kernels' parameter order).
// grid = (N / GEMM_ROWS, tile bound), block = 128.
extern "C" __global__ void __launch_bounds__(GEMM_WARPS * 32)
moe_gemm(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X, const float* __restrict__ Xs,
         const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,
         const int* __restrict__ offsets, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd) {
  pdl_begin();
  if ((int)blockIdx.y >= *ntiles) return;
  const int w = tiles[2 * blockIdx.y], row0 = tiles[2 * blockIdx.y + 1];
  const int e = w & DEC_EXPERT_MASK, nvalid = w >> DEC_ROWS_SHIFT;  // list_word (common.cuh)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const i64 n0 = (i64)blockIdx.x * GEMM_ROWS + warp * 16 + g;  // this thread's weight rows: n0, n0 + 8
  const i64 KB = Kd / MOE_BLOCK, G = Kd / MOE_GROUP;
  const u8* w0 = weight_row(W, (i64)e * N + n0, G);  // rows n0 and n0 + 8 share a 16-row block
  const u8* w1 = w0 + 512;
  const u8* s0 = scale_row(Ws, (i64)e * N + n0, G);  // rows n0 and n0 + 8 share a 16-row block
  const u8* s1 = s0 + 32;
  float acc[GEMM_NF][4];
#pragma unroll
  for (int j = 0; j < GEMM_NF; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  for (i64 kb = 0; kb < KB; kb++) {
    const i64 k0 = kb * MOE_BLOCK;
    // A: rows n0 and n0+8, k = k0 + 4t ... +3 and k0 + 16 + 4t ... +3 (2 packed bytes each).
    uint32_t a[4];
    // (codes 4t..4t+3 are half t % 2 of device word t / 2, and of word t / 2 + 2 for +16)
    const int wo = 4 * (t >> 1), h = t & 1;
    const i64 wb = weight_blk(kb) + wo;
    a[0] = e2m1x4_to_e4m3x4(e2m1_std16(*reinterpret_cast<const uint32_t*>(w0 + wb), h));
    a[1] = e2m1x4_to_e4m3x4(e2m1_std16(*reinterpret_cast<const uint32_t*>(w1 + wb), h));
    a[2] = e2m1x4_to_e4m3x4(e2m1_std16(*reinterpret_cast<const uint32_t*>(w0 + wb + 8), h));
    a[3] = e2m1x4_to_e4m3x4(e2m1_std16(*reinterpret_cast<const uint32_t*>(w1 + wb + 8), h));
    const i64 so = scale_blk(kb);
    const float ws0 = e8m0_to_float(s0[so]), ws1 = e8m0_to_float(s1[so]);
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

// The streaming variant (decode-shaped batches). A block is DEC_WARPS warps on 32 · DEC_WARPS / S
// consecutive weight rows of one token tile: S warps share each 32 rows, warp r of them taking
// the groups (128 elements) q ≡ r mod S, and their partial sums are added in the order of r, so
// the result does not depend on timing. The host picks S = 4, 2 or 1 (decSplit) so that small
// batches keep every SM streaming. A warp's 32 rows are two 16-row blocks, adjacent in the
// blocked layout (the second block's group q is G KB after the first's): they share each token
// fragment's FP16 conversion, the token scales and the loop's copies and bookkeeping, so a group
// costs fewer instructions a weight byte than two 16-row warps, and a warp start serves twice the
// bytes (at M = 1 the warps' time goes mostly to instruction fetch and issue, docs/perf.md). Each
// warp walks its groups through a ring of its own in shared memory (DEC_STAGES deep, DEC1_STAGES
// at S = 1) filled by cp.async copies: the 32 rows' 64 bytes and 4 scales, the tile's tokens' 128 bytes and scales
// (only the real tokens). A pass computes one 8-token fragment; a tile with more tokens takes
// more passes (decode tiles hold one or two tokens).
//
// Each 32-element block is two FP16 MMAs per 16 rows (mma.sync m16n8k16, float32 accumulation;
// E2M1 and E4M3 are exact in FP16, and FP16 is the MMA path the FP8 mma.sync runs on anyway on
// sm_90), with the k order inside the block permuted identically for weights and tokens (a dot
// product does not depend on the order of its terms): in step s, thread t of a quad feeds
// logical k 2t + c with element 8t + 2s + 4c and logical k 2t + 8 + c with element 8t + 2s + 1 +
// 4c. One 4-byte read of a weight row (bytes 4t..4t+3 of the block: nibble pairs (i, i+4) become
// f16x2 registers with a few bit operations) and one 8-byte read of a token row (bytes 8t..8t+7)
// fill both steps' fragments. Each block's product is multiplied by its weight scale into the
// group's partial sum, which the tokens' scales (and 2^14, the E2M1 expansion's factor) multiply
// into the accumulator. With EXACT false (the layer has no scale byte 0 or 255, checked at
// upload) a scale is 2^(s-127) straight from its bits.
#define DEC_WARPS 4
// The decode kernels' early argument: its mode (0-3, dec_tile).
#define DEC_MODE 3
#define DEC_STAGES 3     // ring depth of the split kernel (S = 2, 4)
#define DEC_BLOCKS 4     // its blocks per SM (registers)
#ifndef DEC1_STAGES
#define DEC1_STAGES 3    // ring depth of the S = 1 kernel
#endif
#ifndef DEC1_BLOCKS
#define DEC1_BLOCKS 4    // its blocks per SM
#endif
#ifndef DEC16_BLOCKS
#define DEC16_BLOCKS 3   // blocks per SM of the 16-token kernel (S = 1, 16 tokens a pass)
#endif
#ifndef DEC32_BLOCKS
#define DEC32_BLOCKS 3   // blocks per SM of the 32-token kernel (S = 1, 32 tokens a pass)
#endif
#define DEC32_STAGES 2   // its ring depth (three blocks' rings of three stages would not fit)
#ifndef DECW_BLOCKS
#define DECW_BLOCKS 3    // blocks per SM of the split kernel with 64 weight rows a warp
#endif
#ifndef DEC1W_BLOCKS
#define DEC1W_BLOCKS 3   // blocks per SM of the 64-row kernel (S = 1, 64 weight rows a warp)
#endif

// A ring stage. The rows are unpadded; their 16-byte pieces are swizzled instead, so that both
// the copies' writes and the lanes' reads are free of bank conflicts: weight row r's piece c at
// 16 · (c ^ ((r >> 1) & 3)), token row r's piece c at 16 · (c ^ 2 · (r & 3)). (Rows padded to 80
// bytes, the earlier layout, kept the reads apart but put two of each quarter warp's 16-byte
// copies of weight rows on the same banks; with the swizzle decode batches ran 2-11 % faster,
// docs/perf.md v20.) Stages are 128-byte aligned (padded at their end), so that a quarter warp's
// 16-byte copies of two weight rows land in one aligned 128-byte line: unpadded, two of a ring's
// three stages started off that alignment and such a copy took 7 shared-memory wavefronts
// instead of 4 (ncu, docs/perf.md).
template <int XT, int RB = 2>
struct alignas(128) DecStageT {
  u8 w[16 * RB][64];  // 16 · RB weight rows × 64 bytes (4 blocks of 32 E2M1 values)
  u8 x[8 * XT][128];  // 8 · XT token rows × 128 FP8 values
  u8 s[16 * RB][4];   // the rows' 4 E8M0 scales
  float xs[8 * XT];   // the tokens' activation scales of this group
};
using DecStage = DecStageT<1>;
// The dynamic shared memory: the warps' rings, then their partial sums (S > 1).
// The decoded block scales of a warp's group (16 · RB rows × 4 floats, after the rings).
#define DEC_WSC(RB) (DEC_WARPS * 16 * (RB) * 16)
#define DEC_SMEM (DEC_WARPS * DEC_STAGES * (int)sizeof(DecStage) + DEC_WSC(2) + DEC_WARPS * 8 * 32 * 4)
#define DEC1_SMEM (DEC_WARPS * DEC1_STAGES * (int)sizeof(DecStage) + DEC_WSC(2))
#define DEC16_SMEM (DEC_WARPS * DEC1_STAGES * (int)sizeof(DecStageT<2>) + DEC_WSC(2))
#define DEC32_SMEM (DEC_WARPS * DEC32_STAGES * (int)sizeof(DecStageT<4>) + DEC_WSC(2))
#define DEC1W_SMEM (DEC_WARPS * DEC1_STAGES * (int)sizeof(DecStageT<1, 4>) + DEC_WSC(4))
#define DEC16W_SMEM (DEC_WARPS * DEC32_STAGES * (int)sizeof(DecStageT<2, 4>) + DEC_WSC(4))
// The split kernel with 64 weight rows a warp: its partial sums live in the rings.
#define DECW_SMEM (DEC_WARPS * DEC_STAGES * (int)sizeof(DecStageT<1, 4>) + DEC_WSC(4))

// Scale byte b of a word of four E8M0 scales as a float.
template <bool EXACT>
__device__ __forceinline__ float dec_scale(uint32_t word, int b) {
  const uint32_t s = (word >> (8 * b)) & 0xffu;
  if constexpr (EXACT) return e8m0_to_float(s);
  else return __uint_as_float(s << 23);
}

// Component b (0..3, known at compile time after unrolling) of v.
__device__ __forceinline__ float f4_at(const float4& v, int b) { return b == 0 ? v.x : b == 1 ? v.y : b == 2 ? v.z : v.w; }

// A token fragment of one 32-element block as FP16 B fragments for its two k16 steps: the lane's
// 8 bytes of its token row (bytes 8t .. 8t + 7 of the block).
__device__ __forceinline__ void e4m3_frags(uint2 xv, uint32_t b0[2], uint32_t b1[2]) {
  b0[0] = e4m3_lo_f16(xv.x), b0[1] = e4m3_hi_f16(xv.x);
  b1[0] = e4m3_lo_f16(xv.y), b1[1] = e4m3_hi_f16(xv.y);
}

// One 16-row block times one token fragment over 32-element block b, added into p: the lane's 4
// bytes of rows g and g + 8 (wa, wb) expanded to FP16 A fragments for the block's two k16 steps
// (b0, b1: the token fragment's), two MMAs into a fresh accumulator, times the rows' block scales
// (element b of s0: row g, of s1: row g + 8). Called for several token fragments with the same
// weight words, the compiler expands them once (the 16-token kernel's SASS is the same as with
// the expansion written out before the fragments' loop). This order, each step's expansion next
// to its MMA and the scales picked after, is the 64-row kernel's leanest: with both steps
// expanded first and the scales picked before, CUDA 12.4's ptxas gave it 157 registers, not 155.
// ONE: the fragment holds one token, in the MMA's column 0, so only the sums of column 0 (p[0] and
// p[2], this lane's rows g and g + 8 when t = 0) are kept; column 1's are left out (16 of the
// 32-row loop's 40 FFMA a group, with the token scale of column 1 and its 4 FFMA).
template <bool ONE = false>
__device__ __forceinline__ void block_mma(uint32_t wa, uint32_t wb, const uint32_t b0[2], const uint32_t b1[2],
                                          const float4& s0, const float4& s1, int b, float p[4]) {
  float dd[4] = {0.f, 0.f, 0.f, 0.f};
  {
    const uint32_t a[4] = {e2m1_pair_f16<0>(wa), e2m1_pair_f16<0>(wb), e2m1_pair_f16<1>(wa), e2m1_pair_f16<1>(wb)};
    mma_f16(dd, a, b0);
  }
  {
    const uint32_t a[4] = {e2m1_pair_f16<2>(wa), e2m1_pair_f16<2>(wb), e2m1_pair_f16<3>(wa), e2m1_pair_f16<3>(wb)};
    mma_f16(dd, a, b1);
  }
  const float ws0 = f4_at(s0, b), ws1 = f4_at(s1, b);
  p[0] += dd[0] * ws0;
  if constexpr (!ONE) p[1] += dd[1] * ws0;
  p[2] += dd[2] * ws1;
  if constexpr (!ONE) p[3] += dd[3] * ws1;
}

// XT: 8-token fragments a pass (1, or 2 or 4 at S = 1: each expanded weight fragment then feeds
// the MMAs of 16 or 32 tokens, so a tile of 9-16 or 17-32 tokens streams its weights once).
// RB: 16-row blocks a warp (2, or 4 at S = 1 and XT = 1: the token fragments' conversion, the
// token scales, the copies' bookkeeping and the loop serve 64 rows instead of 32; N need then
// be a multiple of 64 only, the warps past N return at once).
// SHORT (XT = 2 or 4): a pass of at most 8 tokens runs the first fragment's MMAs only, and at
// XT = 4 a pass of at most 16 tokens those of the first two (the others hold no token); in the
// 32-token kernel for tiles of at most 16 rows on average, since the extra loops cost tiles of
// 17-32 rows about 3 % (docs/perf.md v30).
template <int S, bool EXACT, int XT, int RB = 2, bool SHORT = false>
__device__ __forceinline__ void gemm_dec(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X,
                                         const float* __restrict__ Xs, int e, int row0, int nvalid, const float* __restrict__ bias,
                                         float* __restrict__ out, i64 N, i64 Kd, int early, int bx) {
  extern __shared__ __align__(128) u8 dec_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int r = warp % S;  // this warp's share of K
  static_assert(RB == 2 || XT <= 2, "64-row warps only with 8 or 16 tokens a pass");
  constexpr int WR = 16 * RB;                                                // weight rows a warp
  const i64 nb = (i64)bx * (WR * DEC_WARPS / S) + (warp / S) * WR;  // the warp's first weight row (bx: the block's column)
  if constexpr (RB > 2 && S == 1) {
    if (nb >= N) return;  // no block barrier at S = 1 (at S > 1, N is a multiple of the block's rows)
  }
  const i64 G = Kd / MOE_GROUP;
  const int mine = (int)((G - r + S - 1) / S);  // groups of this warp
  static_assert(XT == 1 || S == 1, "16-token passes only at split 1");
  static_assert(!SHORT || XT >= 2, "short passes only in the 16- and 32-token kernels");
  using Stage = DecStageT<XT, RB>;
  // ring depth, tokens a pass (the 64-row 16-token kernel's ring as the 32-token kernel's, so
  // that three blocks' rings fit on an SM)
  constexpr int D = XT > 2 || (XT > 1 && RB > 2) ? DEC32_STAGES : S == 1 ? DEC1_STAGES : DEC_STAGES, FT = 8 * XT;
  Stage* const st = reinterpret_cast<Stage*>(dec_smem) + warp * D;
  float4* const wsc = reinterpret_cast<float4*>(dec_smem + DEC_WARPS * D * sizeof(Stage)) + WR * warp;
  // Warp w's partial sums at S > 1 (4 · RB values a lane): after the rings at 32 rows; at 64 rows
  // in warp w's own ring, which its copies and reads are done with by then (the wait for all
  // copies, and the block barrier after the sums are read comes before the next pass's copies).
  auto red = [&](int w) {
    if constexpr (RB > 2) return reinterpret_cast<float(*)[32]>(reinterpret_cast<Stage*>(dec_smem) + w * D);
    else return reinterpret_cast<float(*)[32]>(dec_smem + DEC_WARPS * D * sizeof(Stage) + DEC_WSC(RB)) + 8 * w;
  };
  // This lane's copy sources at the warp's first group: rows lane/4 and lane/4 + 8 of both 16-row
  // blocks (16 bytes each; the second block G KB on), the scales of rows 4·lane .. 4·lane + 3
  // (lanes < 8; a 16-row block's scales of a group are 64 contiguous bytes, scale_row).
  const u8* const wp0 = weight_row(W, (i64)e * N + nb + (lane >> 2), G) + 16 * (lane & 3) + 1024 * r;
  const u8* const sp0 = scale_row(Ws, (i64)e * N + nb + 16 * ((lane >> 2) & (RB - 1)), G) + r * 64 + 16 * (lane & 3);
  const i64 wblk = G * 1024;  // the second 16-row block
  // The lane's ring addresses: weight rows, token rows, and scale words (lanes < 8) or a
  // token scale (lanes >= 16).
  u8* const dw = &st[0].w[lane >> 2][16 * ((lane & 3) ^ ((lane >> 3) & 3))];
  u8* const dx = &st[0].x[lane >> 3][16 * ((lane & 7) ^ (2 * ((lane >> 3) & 3)))];
  // The lane's read offsets in a weight row (rows g, g + 8, 16 + g, 24 + g share the swizzle) and
  // in its token row g: block b at wo ^ 16 · b and xo ^ 32 · b.
  const int wo = 16 * ((g >> 1) & 3) + 4 * t, xo = 32 * (g & 3) + 8 * t;
  static_assert(4 * RB <= 16, "the scale lanes and the token-scale lanes (16 ...) apart");
  u8* const ds = lane < 4 * RB ? &st[0].s[4 * lane][0] : reinterpret_cast<u8*>(&st[0].xs[max(lane - 16, 0)]);
  float bs[2 * RB];
#pragma unroll
  for (int k = 0; k < 2 * RB; k++) bs[k] = bias ? bias[(i64)e * N + nb + g + 8 * k] : 0.f;
  const u8* wq = wp0;
  const u8* sq = sp0;
  const u8* xq = nullptr;
  const float* xsq = nullptr;
  bool x0 = false, x1 = false, x2 = false, x3 = false, xs = false;
  bool x4 = false, x5 = false, x6 = false, x7 = false, xs2 = false;  // XT = 4: token rows 16-31
  // Copies of one of the warp's groups into the ring slot at byte offset o: the weight rows and
  // scales (issue_w), the tokens and their scales (issue_x). The group is a compile-time offset
  // from the bases (moved by one group a step), so that every source address is a register plus
  // an immediate. Only the fragment's real tokens are copied: the other columns of the MMA are
  // never stored, so whatever the ring holds there cannot reach a result.
  // The weights and their scales are read once a forward (a tile of 32 tokens streams its
  // expert's rows once; decode batches rarely give an expert two tiles): they go through L2 marked
  // evict-first, so that they do not push out what is read again.
  const uint64_t wpol = l2_evict_first();
  auto issue_w = [&](int o, auto grp) {
    constexpr int q = decltype(grp)::value;
    // At S = 1 the slot offset is kept out of the uniform registers (opaque_zero): there ptxas
    // (CUDA 12.4's and 13.0's) addressed the ring through a uniform register beside the copies'
    // policy descriptor and the copies faulted (illegal instruction); the split kernels' copies
    // are addressed otherwise and need nothing.
    if constexpr (S == 1) o += opaque_zero();
#pragma unroll
    for (int h = 0; h < RB; h++) {
      cp_async16_pol(dw + o + 16 * h * 64, wq + h * wblk + q * 1024 * S, wpol);
      cp_async16_pol(dw + o + (16 * h + 8) * 64, wq + h * wblk + 512 + q * 1024 * S, wpol);
    }
    if (lane < 4 * RB) cp_async16_pol(ds + o, sq + q * 64 * S, wpol);
  };
  auto issue_x = [&](int o, auto grp) {
    constexpr int q = decltype(grp)::value;
    if (x0) cp_async16(dx + o, xq + q * MOE_GROUP * S);
    if (x1) cp_async16(dx + o + 4 * 128, xq + 4 * Kd + q * MOE_GROUP * S);
    if constexpr (XT > 1) {
      if (x2) cp_async16(dx + o + 8 * 128, xq + 8 * Kd + q * MOE_GROUP * S);
      if (x3) cp_async16(dx + o + 12 * 128, xq + 12 * Kd + q * MOE_GROUP * S);
    }
    if constexpr (XT > 2) {
      if (x4) cp_async16(dx + o + 16 * 128, xq + 16 * Kd + q * MOE_GROUP * S);
      if (x5) cp_async16(dx + o + 20 * 128, xq + 20 * Kd + q * MOE_GROUP * S);
      if (x6) cp_async16(dx + o + 24 * 128, xq + 24 * Kd + q * MOE_GROUP * S);
      if (x7) cp_async16(dx + o + 28 * 128, xq + 28 * Kd + q * MOE_GROUP * S);
      if (xs2) cp_async4(ds + o + 16 * 4, xsq + 16 * G + q * S);  // the scale of token lane
    }
    if (xs) cp_async4(ds + o, xsq + q * S);
  };
  // The first of the S warps of 32 rows asks L2 for both 16-row blocks' scales of all groups
  // (G · 64 contiguous bytes each) at once, as the row-major layout's first reads would bring them.
  if (r == 0 && lane < RB) prefetch_l2(scale_row(Ws, (i64)e * N + nb + 16 * lane, G), (uint32_t)G * 64);
  constexpr int SZ = (int)sizeof(Stage);
  // The first pass's first weights go out before the wait for the previous kernel at early
  // modes 1-3 (dec_tile; its tile and row count, nvalid, come with the list's entry or from the
  // ids).
  // The copies of the ring's first D - 1 groups.
  auto issue_w_head = [&] {
    static_for<D - 1>([&](auto q) {
      if (mine > q.value) issue_w(q.value * SZ, q);
    });
  };
  issue_w_head();
  const int mode = early & DEC_MODE;
  if (mode == 1 || mode == 2) pdl_begin();
  if (mode == 3) pdl_wait();  // its trigger came first (dec_tile)
  TRACE_STEP((early & 1) ? TRACE_GEMM2 : TRACE_GEMM1, 0, 0);
  for (int j = 0; FT * j < nvalid; j++) {
    const i64 tok0 = row0 + FT * j;
    const int live = min(FT, nvalid - FT * j);  // real tokens in this pass
    // Token rows lane/8 + 4k (16 bytes each), the scale of token lane - 16.
    xq = X + (tok0 + (lane >> 3)) * Kd + 16 * (lane & 7) + MOE_GROUP * r;
    xsq = Xs + (tok0 + max(lane - 16, 0)) * G + r;
    x0 = (lane >> 3) < live, x1 = (lane >> 3) + 4 < live, xs = lane >= 16 && lane - 16 < live;
    x2 = (lane >> 3) + 8 < live, x3 = (lane >> 3) + 12 < live;
    if constexpr (XT > 2) {
      x4 = (lane >> 3) + 16 < live, x5 = (lane >> 3) + 20 < live, x6 = (lane >> 3) + 24 < live;
      x7 = (lane >> 3) + 28 < live, xs2 = lane >= 16 && lane < live;
    }
    if (j > 0) {
      wq = wp0;
      sq = sp0;
      issue_w_head();
    }
    // One commit group a ring slot (empty for groups past the warp's), so that the wait below
    // counts slots.
    static_for<D - 1>([&](auto q) {
      if (mine > q.value) issue_x(q.value * SZ, q);
      cp_async_commit();
    });
    float acc[XT][4 * RB] = {};
    // The pass's groups, with the MMAs of its first NF token fragments: at SHORT, a pass of at
    // most 4 · XT tokens does those of its first XT / 2 fragments (the others hold no token, and
    // their sums are never stored). The pass picks its loop once, so that each loop is laid out as if
    // alone.
    auto groups = [&](auto nf, auto one) {
      constexpr int NF = decltype(nf)::value;
      constexpr bool ONE = decltype(one)::value;  // a pass of one token (block_mma's ONE)
      int cur = 0, nxt = (D - 1) * SZ;
  #pragma unroll 1
      for (int i = 0; i < mine; i++) {
        // Group i of the warp, in the slot at byte offset cur (slot i % D): the copies of group
        // i + D - 1 into the slot at nxt (the one group i - 1 used), then the wait for group i,
        // then its MMAs.
        if (i + D - 1 < mine) {
          issue_w(nxt, Ic<D - 1>{});
          issue_x(nxt, Ic<D - 1>{});
        }
        cp_async_commit();
        cp_async_wait<D - 1>();
        __syncwarp();
        const Stage& d = *reinterpret_cast<const Stage*>(reinterpret_cast<const u8*>(st) + cur);
        // The group's block scales, decoded once a warp: lane l converts rows l, l + 32, ... (four
        // scales each), and each lane then reads those of its rows g + 8k (the four lanes of a
        // quad share their rows, so decoding in every lane would do each four times).
  #pragma unroll
        for (int k = 0; k < RB / 2; k++) {
          const uint32_t w4 = *reinterpret_cast<const uint32_t*>(&d.s[lane + 32 * k][0]);
          wsc[lane + 32 * k] = make_float4(dec_scale<EXACT>(w4, 0), dec_scale<EXACT>(w4, 1), dec_scale<EXACT>(w4, 2),
                                           dec_scale<EXACT>(w4, 3));
        }
        __syncwarp();
        if constexpr (RB > 2 && NF == 1) {
          // 64 rows: the token fragments of all four blocks first, then each 16-row block over
          // them (its scales and partial sums only are live, not every block's), adding the same
          // terms in the same order as the 32-row loop below.
          uint32_t bt[4][2][2];
  #pragma unroll
          for (int b = 0; b < 4; b++) e4m3_frags(*reinterpret_cast<const uint2*>(&d.x[g][xo ^ (32 * b)]), bt[b][0], bt[b][1]);
          // 2^14: the expansion's factor
          const float xs0 = d.xs[2 * t] * 16384.f, xs1 = d.xs[2 * t + 1] * 16384.f;
  #pragma unroll
          for (int h = 0; h < RB; h++) {
            const float4 s0 = wsc[16 * h + g], s1 = wsc[16 * h + g + 8];
            float p[4] = {0.f, 0.f, 0.f, 0.f};
  #pragma unroll
            for (int b = 0; b < 4; b++) {
              block_mma(*reinterpret_cast<const uint32_t*>(&d.w[16 * h + g][wo ^ (16 * b)]),
                        *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g + 8][wo ^ (16 * b)]), bt[b][0], bt[b][1], s0, s1, b, p);
            }
            acc[0][4 * h + 0] += p[0] * xs0;
            acc[0][4 * h + 1] += p[1] * xs1;
            acc[0][4 * h + 2] += p[2] * xs0;
            acc[0][4 * h + 3] += p[3] * xs1;
          }
        } else if constexpr (RB > 2) {
          // 64 rows and two token fragments (the 16-token pass): the same, the weight words'
          // expansion serving both fragments' MMAs.
          uint32_t bt[NF][4][2][2];
  #pragma unroll
          for (int u = 0; u < NF; u++)
  #pragma unroll
            for (int b = 0; b < 4; b++)
              e4m3_frags(*reinterpret_cast<const uint2*>(&d.x[g + 8 * u][xo ^ (32 * b)]), bt[u][b][0], bt[u][b][1]);
          // 2^14: the expansion's factor
          float xs0[NF], xs1[NF];
  #pragma unroll
          for (int u = 0; u < NF; u++) xs0[u] = d.xs[8 * u + 2 * t] * 16384.f, xs1[u] = d.xs[8 * u + 2 * t + 1] * 16384.f;
  #pragma unroll
          for (int h = 0; h < RB; h++) {
            const float4 s0 = wsc[16 * h + g], s1 = wsc[16 * h + g + 8];
            float p[NF][4] = {};
  #pragma unroll
            for (int b = 0; b < 4; b++) {
              const uint32_t wa = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g][wo ^ (16 * b)]);
              const uint32_t wb = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g + 8][wo ^ (16 * b)]);
  #pragma unroll
              for (int u = 0; u < NF; u++) block_mma(wa, wb, bt[u][b][0], bt[u][b][1], s0, s1, b, p[u]);
            }
  #pragma unroll
            for (int u = 0; u < NF; u++) {
              acc[u][4 * h + 0] += p[u][0] * xs0[u];
              acc[u][4 * h + 1] += p[u][1] * xs1[u];
              acc[u][4 * h + 2] += p[u][2] * xs0[u];
              acc[u][4 * h + 3] += p[u][3] * xs1[u];
            }
          }
        } else {
          float4 sw[2 * RB];
  #pragma unroll
          for (int k = 0; k < 2 * RB; k++) sw[k] = wsc[g + 8 * k];
          // The group's MMAs for the pass's first NF token fragments (the others hold no token).
          auto mmas = [&](auto nf) {
            constexpr int NF = decltype(nf)::value;
            float part[NF][4 * RB] = {};
  #pragma unroll
            for (int b = 0; b < 4; b++) {
              // The weight words' expansion serves the MMAs of every token fragment u.
              uint32_t bf[NF][2][2];
  #pragma unroll
              for (int u = 0; u < NF; u++) e4m3_frags(*reinterpret_cast<const uint2*>(&d.x[g + 8 * u][xo ^ (32 * b)]), bf[u][0], bf[u][1]);
  #pragma unroll
              for (int h = 0; h < RB; h++) {  // the 16-row block
                const uint32_t wa = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g][wo ^ (16 * b)]);
                const uint32_t wb = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g + 8][wo ^ (16 * b)]);
  #pragma unroll
                for (int u = 0; u < NF; u++) block_mma<ONE>(wa, wb, bf[u][0], bf[u][1], sw[2 * h], sw[2 * h + 1], b, &part[u][4 * h]);
              }
            }
  #pragma unroll
            for (int u = 0; u < NF; u++) {
              // 2^14: the expansion's factor
              const float xs0 = d.xs[8 * u + 2 * t] * 16384.f, xs1 = ONE ? 0.f : d.xs[8 * u + 2 * t + 1] * 16384.f;
  #pragma unroll
              for (int h = 0; h < RB; h++) {
                acc[u][4 * h + 0] += part[u][4 * h + 0] * xs0;
                if constexpr (!ONE) acc[u][4 * h + 1] += part[u][4 * h + 1] * xs1;
                acc[u][4 * h + 2] += part[u][4 * h + 2] * xs0;
                if constexpr (!ONE) acc[u][4 * h + 3] += part[u][4 * h + 3] * xs1;
              }
            }
          };
          mmas(Ic<NF>{});
        }
        __syncwarp();  // every lane is done with this slot before it is refilled
        wq += 1024 * S;
        sq += 64 * S;
        xq += MOE_GROUP * S;
        xsq += S;
        cur = cur == (D - 1) * SZ ? 0 : cur + SZ;
        nxt = nxt == (D - 1) * SZ ? 0 : nxt + SZ;
      }
    };
    if constexpr (SHORT) {
      if (live <= 8)
        groups(Ic<1>{}, Ic<0>{});
      else if (XT > 2 && live <= 4 * XT)
        groups(Ic<(XT > 2 ? XT / 2 : 1)>{}, Ic<0>{});
      else
        groups(Ic<XT>{}, Ic<0>{});
    } else if constexpr (XT == 1 && RB == 2) {
      // A pass of one token (every tile at M = 1, most at a few tokens) takes a loop without
      // the second column's sums: 329 -> 307 instructions a group (CUDA 12.4's ptxas, split 2),
      // 3-5 % off GPT-OSS-120B at one token on an H200. Not in the 64-row kernels: there the same
      // loop (574 -> 528) was 2-4 % slower at GPT-OSS-120B's two tokens, though 2-3 % faster at
      // DeepSeek-V3's 2-8 (docs/perf.md v46).
      if (live == 1)
        groups(Ic<1>{}, Ic<1>{});
      else
        groups(Ic<1>{}, Ic<0>{});
    } else {
      groups(Ic<XT>{}, Ic<0>{});
    }
    cp_async_wait<0>();
    if constexpr (S > 1) {
#pragma unroll
      for (int c = 0; c < 4 * RB; c++) red(warp)[c][lane] = acc[0][c];
      __syncthreads();
    }
    if (r == 0) {
      if constexpr (S > 1) {
#pragma unroll
        for (int c = 0; c < 4 * RB; c++) {
          float v = acc[0][c];
#pragma unroll
          for (int k = 1; k < S; k++) v += red(warp + k)[c][lane];
          acc[0][c] = v;
        }
      }
#pragma unroll
      for (int u = 0; u < XT; u++)
#pragma unroll
        for (int h = 0; h < RB; h++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            const int col = FT * j + 8 * u + 2 * t + c;
            if (col < nvalid) {
              out[(i64)(row0 + col) * N + nb + 16 * h + g] = acc[u][4 * h + c] + bs[2 * h];
              out[(i64)(row0 + col) * N + nb + 16 * h + g + 8] = acc[u][4 * h + 2 + c] + bs[2 * h + 1];
            }
          }
    }
    if constexpr (S > 1) __syncthreads();  // the partial sums are read before the next pass writes them
    __syncwarp();
  }
}

// grid = (N · S / (32 · DEC_WARPS), tile bound), block = 32 · DEC_WARPS, dynamic shared memory
// DEC_SMEM; moe_gemm_dec takes split S = 2 or 4 (split), moe_gemm_dec1 S = 1 (a kernel of its own,
// which keeps the split kernels' code and registers as measured); exact != 0 when a weight scale
// byte may be 0 or 255; counts and offsets are not read (the entries carry their rows). early = 1
// when the routing metadata (tiles, ntiles) comes from a kernel before the previous one (GEMM2,
// after the activation kernel): the block then reads its tile and row count and issues its first
// weight copies before it waits for the previous kernel, so that under programmatic launch those
// round trips overlap the activation kernel. The entries are read past L1 (written by an earlier
// kernel of the stream, complete before the previous one began). early = 2 (GEMM1 of at most MOE_BM
// pairs, right after the routing kernel): the block works out its tile from the pairs' expert ids
// (ids, P of them, emap the expert map or null, Eg the global expert count; pe = P | Eg << 32) as
// the routing kernel places it, its row count the pairs of its expert, and issues its first weight
// copies before it waits for the routing kernel. early = 3: as 1, with the early trigger
// (common.cuh): the block lets the reduce launch before it reads its tile.
// At modes 0, 1 and 3 tiles may be the routing kernel's list of 8-row chunks (tiles8): a tile of
// more than 8 rows is there as one entry a chunk, each a block of its own, so that a hot expert's
// 9-32 rows run as one 8-token pass in each of up to four blocks at once instead of up to four
// passes one after another in one block. rows: the entry's real rows (list_word, common.cuh), or at
// mode 2 the expert's pairs.
__device__ __forceinline__ bool dec_tile(const int* __restrict__ tiles, const int* __restrict__ ntiles, i64 early, int& e,
                                         int& row0, int& rows, const int* __restrict__ ids, const int* __restrict__ emap,
                                         i64 pe) {
  const int mode = (int)(early & DEC_MODE);
  if (mode == 2) {
    // Tile blockIdx.y of a batch of at most MOE_BM routed pairs, before the routing kernel has
    // written it: the routing kernel gives each local expert ceil(count / MOE_BM) tiles in
    // ascending order of expert, so here one tile each, tile y the y-th distinct local expert,
    // its rows from y · MOE_BM. Pair j's local expert as the routing kernel takes it: -1 for
    // an id of -1, outside [0, Eg) or mapped to -1. (The ids are the layer's input, complete
    // before the kernel before the previous one ended.)
    const int lane = threadIdx.x % 32, P = (int)(pe & 0xffffffff), Eg = (int)(pe >> 32);
    int le = -1;
    if (lane < P) {
      const int id = __ldcg(ids + lane);
      le = id < 0 || id >= Eg ? -1 : (emap ? __ldcg(emap + id) : id);
    }
    bool first = le >= 0;  // the lowest lane with this expert
    int rank = 0;          // distinct local experts below this lane's
    for (int j = 0; j < P; j++) {
      const int o = __shfl_sync(0xffffffffu, le, j);
      if (o == le && j < lane) first = false;
    }
    for (int j = 0; j < P; j++) {
      const int o = __shfl_sync(0xffffffffu, le, j);
      const bool of = __shfl_sync(0xffffffffu, first, j);
      if (of && o < le) rank++;
    }
    const unsigned m = __ballot_sync(0xffffffffu, first && rank == (int)blockIdx.y);
    if (!m) {
      // No such tile. Tile 0's blocks still wait for the routing kernel when there is no tile at
      // all (no pair on a local expert): the kernels after this one read the routing kernel's
      // output before their own waits, relying on each kernel's completion implying its
      // predecessor's, which holds only if some block of each kernel waits.
      if (blockIdx.y == 0) pdl_begin();
      return false;
    }
    e = __shfl_sync(0xffffffffu, le, __ffs(m) - 1);
    row0 = (int)blockIdx.y * MOE_BM;
    rows = __popc(__ballot_sync(0xffffffffu, le == e));  // the expert's pairs: its tile's rows
    return true;
  }
  int nt, w;
  // The tile count and the tile load together (the list holds the grid's tiles, so the entry is
  // inside it even past the count).
  if (mode) {
    if (mode == 3) pdl_trigger();  // the early trigger (common.cuh): the reduce may launch now
    nt = __ldcg(ntiles), w = __ldcg(tiles + 2 * blockIdx.y), row0 = __ldcg(tiles + 2 * blockIdx.y + 1);
  } else {
    pdl_begin();
    nt = *ntiles, w = tiles[2 * blockIdx.y], row0 = tiles[2 * blockIdx.y + 1];
  }
  e = w & DEC_EXPERT_MASK, rows = w >> DEC_ROWS_SHIFT;  // list_word (common.cuh)
  return (int)blockIdx.y < nt;
}

// The block's column of weight rows (gemm_dec's bx) in the kernels that take one a block.
__device__ __forceinline__ int dec_col() { return (int)blockIdx.x; }

// The kernels' signature (the same parameters, so the host launches any of them the same way).
#define DEC_KERNEL(name, blocks)                                                                                       \
  extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32, blocks)                                                 \
  name(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X, const float* __restrict__ Xs,    \
       const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ counts,                  \
       const int* __restrict__ offsets, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd,        \
       i64 split, i64 exact, i64 early, const int* __restrict__ ids, const int* __restrict__ emap, i64 pe)

// gemm_dec with S splits, XT 8-token fragments a pass, RB 16-row blocks a warp and short passes
// or not (sh), in the instance for the kernel's scale format (exact: scales that need the exact
// path), on the block's column of weight rows bx (DEC_RUNS: the grid's, dec_col).
#define DEC_ONE(s, x, xt, rb, sh, bx) \
  gemm_dec<s, x, xt, rb, sh>(W, Ws, X, Xs, e, row0, rows, bias, out, N, Kd, (int)early, bx)
#define DEC_RUNS_AT(s, xt, rb, sh, bx)    \
  do {                                    \
    if (exact)                            \
      DEC_ONE(s, true, xt, rb, sh, bx);   \
    else                                  \
      DEC_ONE(s, false, xt, rb, sh, bx);  \
  } while (0)
#define DEC_RUNS(s, xt, rb, sh) DEC_RUNS_AT(s, xt, rb, sh, dec_col())
#define DEC_RUN(s, xt, rb) DEC_RUNS(s, xt, rb, false)

// A decode kernel: its stage in the trace, its tile (dec_tile; a block without one returns), then
// gemm_dec at split S (DEC_SPLIT: S = split, 4 or 2; else the given S) with XT token fragments a
// pass and RB 16-row blocks a warp.
#define DEC_DEFINE(name, blocks, run)                                    \
  DEC_KERNEL(name, blocks) {                                             \
    TRACE_SCOPE((early & 1) ? TRACE_GEMM2 : TRACE_GEMM1);                \
    int e, row0, rows;                                                         \
    if (!dec_tile(tiles, ntiles, early, e, row0, rows, ids, emap, pe)) return; \
    run;                                                                 \
  }
#define DEC_SPLIT(xt, rb)   \
  do {                      \
    if (split == 4)         \
      DEC_RUN(4, xt, rb);   \
    else                    \
      DEC_RUN(2, xt, rb);   \
  } while (0)

// The split kernels (S = 2 or 4) of 32 and of 64 weight rows a warp (grid x: N · S / 128 and
// N · S / 256; N is a multiple of 128, so every warp has rows), the split-1 kernels of 32 rows,
// of 16 tokens a pass (with short passes), of 32 (with and without) and of 64 rows (grid x: N /
// 256 rounded up).
DEC_DEFINE(moe_gemm_dec, DEC_BLOCKS, DEC_SPLIT(1, 2))
DEC_DEFINE(moe_gemm_dec1, DEC1_BLOCKS, DEC_RUN(1, 1, 2))
DEC_DEFINE(moe_gemm_dec16s, DEC16_BLOCKS, DEC_RUNS(1, 2, 2, true))
DEC_DEFINE(moe_gemm_dec32, DEC32_BLOCKS, DEC_RUN(1, 4, 2))
DEC_DEFINE(moe_gemm_dec32s, DEC32_BLOCKS, DEC_RUNS(1, 4, 2, true))
DEC_DEFINE(moe_gemm_decw, DECW_BLOCKS, DEC_SPLIT(1, 4))
DEC_DEFINE(moe_gemm_dec1w, DEC1W_BLOCKS, DEC_RUN(1, 1, 4))
DEC_DEFINE(moe_gemm_dec16w, DEC1W_BLOCKS, DEC_RUNS(1, 2, 4, true))
// The 64-row kernel with the 32-token kernel's pass for heavy tiles, one launch (grid x: N / 256
// rounded up; y: the heavy list, moe_route's tilesh, 2 entries a tile of more than 8 rows). An
// entry with DEC_HEAVY_ROW (a tile of more than 16 rows) runs the 32-token pass of 32 weight rows a
// warp over its half of the block's 256 rows (column 2 · blockIdx.x + half); the others, 8-row
// chunks of the tiles of 9-16 rows and the short tiles, run the 64-row kernel's pass. A hot
// expert's 17-32 rows then expand its weights once, not in four passes or four chunks. Registers:
// the 32-token pass's (about 168), which three blocks an SM still hold, as the 64-row kernel's 156
// do; shared memory DEC1W_SMEM, the larger ring.
DEC_KERNEL(moe_gemm_dec1wh, DEC1W_BLOCKS) {
  TRACE_SCOPE((early & 1) ? TRACE_GEMM2 : TRACE_GEMM1);
  int e, row0, rows;
  if (!dec_tile(tiles, ntiles, early, e, row0, rows, ids, emap, pe)) return;
  if (row0 & DEC_HEAVY_ROW) {
    const int bx = 2 * (int)blockIdx.x + ((row0 >> DEC_HALF_SHIFT) & 1);
    row0 &= (1 << DEC_HALF_SHIFT) - 1;
    if ((i64)bx * 32 * DEC_WARPS >= N) return;  // N a multiple of 128 but not of 256: the last half
    DEC_RUNS_AT(1, 4, 2, false, bx);
  } else {
    DEC_RUN(1, 1, 4);
  }
}
#undef DEC_SPLIT
#undef DEC_DEFINE
#undef DEC_RUN
#undef DEC_RUNS
#undef DEC_RUNS_AT
#undef DEC_ONE
#undef DEC_KERNEL
