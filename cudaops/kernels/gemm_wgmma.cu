// Grouped GEMM for prefill-sized batches on Hopper's FP16 warpgroup MMA (wgmma, sm_90a):
//
//   out[r, n] = Σ_k fp8(X[r, k]) · xs[r, k/128] · W[e, n, k] (+ bias[e, n])
//
// Why FP16: E2M1 and E4M3 values are exact in FP16, and the FP16 MMA sums its products in
// float32, while the FP8 MMA keeps about 14 bits of the sum of one instruction's products (too
// few for the 1e-3 contract once the requant to FP8 amplifies the error).
//
// The MXFP4 block scales are folded into the FP16 expansion: every weight row has a reference
// exponent R (the largest E8M0 exponent among its blocks that hold a nonzero value, computed
// once at upload by moe_fold_ref) and a block with exponent s enters the MMA as
// E2M1 · 2^(s - R), which FP16 holds exactly while s - R >= -23. The upload check sends layers
// whose rows span more than 24 binades (or hold a NaN scale) to the mma.sync kernels instead,
// so the fold is always exact here. 2^(R-127) multiplies the result in the epilogue. The
// activation scales, one per token per 128 columns, take one of two paths (below).
//
// A block: 256 weight rows (four warpgroups of 64, the MMA's M; 128 rows, two warpgroups, in the
// promoting kernel and the small-tile kernel; 384, six warpgroups, in the middle kernel) × one
// tile of up to 152 tokens of an expert (N; the route kernel splits an expert's rows into equal
// tiles that start at multiples of 8 rows, at most 32 for the small-tile kernel and 64 for the
// middle one, and the instruction width is picked per tile: a multiple of 16 up to 144, or 152;
// a multiple of 8 up to 32 in the small-tile kernel).
//
// Two paths, chosen per tile by moe_wg_tiles. Folded (every token's activation scales are finite
// powers of two within 15 binades of the token's largest, as the ceil_ue8m0 format gives): the
// scales are folded into FP16 tokens relative to that largest exponent, exactly. moe_wg_stage
// writes those FP16 tokens once per GEMM, already in the MMA's core-matrix layout, so the GEMM
// (moe_gemm_wg4) copies them into shared memory without touching them in registers; one float32
// accumulator runs over all of K, the next chunk's MMAs queue behind the current ones, and the
// epilogue applies 2^(R-127) · the token's largest scale. Promoting (any other scales,
// moe_gemm_wgp): each chunk's 8 k16 MMAs sum into a fresh float32 partial, which is multiplied
// by the tokens' scales and added to the accumulator (per-128 promotion), in passes of up to 128
// tokens, the tokens expanded from FP8 inside the GEMM. The weights are the A operand in
// registers: thread t of a quad owns E8M0 block t of each 128-element chunk, so one 16-byte
// shared-memory read per row feeds all 8 k16 steps. The tokens are B: the permute and
// activation kernels wrote their FP8 rows in the order of fp16_slot (common.cuh), the same
// permutation of k inside each block as the weights' (a dot product does not depend on the
// order of its terms), so each 8-value piece expands to FP16 (exact) as one 16-byte row of a
// core matrix of the MMA's K-major no-swizzle layout. A WGF_STAGES-deep cp.async ring brings
// each chunk's tokens, weights and scales; while the tensor cores run chunk q, the threads
// convert chunk q+1's (or the next half chunk's) weights into a second set of A registers (the
// kernels below say how each path synchronises).
#include "common.cuh"
#include "wgmma_f16.cuh"

#define WGF_ROWS 128   // weight rows per block
#define WGF_TOK MOE_WG_TOK  // most tokens per tile (the route kernel's wgmma tiles)
#define WGF_PTOK 128   // most tokens per pass of the promoting kernel
#define WGF_STAGES 4   // ring depth, in 128-element chunks (a power of two)
#define WGF_XROW 144   // promoting kernel: token row bytes in the ring, padded for conflict-free reads
#define WG4_ROWS 256     // weight rows per block of the folding kernel (moe_gemm_wg4): four warpgroups
#define WG4_THREADS 512  // its block
#define WG4S_ROWS 128    // weight rows per block of the small-tile folding kernel (moe_gemm_wg4s): two warpgroups
#define WG4S_THREADS 256 // its block
#define WG4S_TOK 32      // most tokens of its tiles (the route kernel's cap when the host picks it)
#define WG4M_ROWS 384    // weight rows per block of the middle folding kernel (moe_gemm_wg4m): six warpgroups
#define WG4M_THREADS 768 // its block
#define WG4M_TOK 64      // most tokens of its tiles (the route kernel's cap when the host picks it)
#define WGF_SPAN 23    // the largest exponent distance the weight fold keeps exact

// Promoting kernel: ring slots, then two FP16 B buffers.
struct WgfPStage {
  u8 x[WGF_PTOK * WGF_XROW];  // the tokens' FP8 values of the chunk, in fp16_slot order
  u8 w[WGF_ROWS * 64];
  uint32_t s[WGF_ROWS];
  float xs[WGF_PTOK];         // the tokens' activation scales of the chunk
};
#define WGF_PB (8 * WGF_PTOK * 32)
#define WGF_PSMEM (WGF_STAGES * (int)sizeof(WgfPStage) + 2 * WGF_PB)

// Rewrites n 32-bit words of E2M1 codes in place from the stored layout to the device layout
// (e2m1_device_word, common.cuh); run once per weight tensor at upload. grid-stride, block 256.
extern "C" __global__ void moe_reencode(uint32_t* __restrict__ w, i64 n) {
  pdl_begin();
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) w[i] = e2m1_device_word(w[i]);
}

// Per row: the reference exponent R of the fold (the largest E8M0 exponent of a block holding a
// nonzero value; 127 for an all-zero row), and *bad set when a nonzero block lies more than
// WGF_SPAN binades below R or any scale is NaN (255). W (rows, Kd/2) blocked (weight_row), Ws
// blocked (scale_row). grid = ceil(rows / 4), block = 128 (a warp per row).
extern "C" __global__ void moe_fold_ref(const u8* __restrict__ W, const u8* __restrict__ Ws, i64 rows, i64 Kd,
                                        u8* __restrict__ ref, int* __restrict__ bad) {
  pdl_begin();
  const i64 r = (i64)blockIdx.x * 4 + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const i64 KB = Kd / MOE_BLOCK;
  int hi = -1, lo = 256, nan = 0;
  for (i64 b = lane; b < KB; b += 32) {
    const uint4 v = *reinterpret_cast<const uint4*>(weight_row(W, r, KB / 4) + weight_blk(b));
    const int s = scale_row(Ws, r, KB / 4)[scale_blk(b)];
    nan |= s == 255;
    if (((v.x | v.y | v.z | v.w) & E2M1_MAG_MASK) != 0) {
      hi = max(hi, s);
      lo = min(lo, s);
    }
  }
  hi = __reduce_max_sync(0xffffffffu, hi);
  lo = __reduce_min_sync(0xffffffffu, lo);
  nan = __reduce_or_sync(0xffffffffu, nan);
  if (lane == 0) {
    ref[r] = hi < 0 ? 127 : (u8)hi;
    if (nan || (hi >= 0 && lo < hi - WGF_SPAN)) atomicOr(bad, 1);
  }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Shared-memory matrix descriptor, no swizzle: start address, leading (K) and stride (N) byte
// offsets between core matrices, all in 16-byte units.
__device__ __forceinline__ uint64_t wgf_desc(const void* smem, unsigned lbo, unsigned sbo) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32);
}

__device__ __forceinline__ uint32_t wgf_hmul2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
// 2^(14 + d) as an f16x2 pair, d = s - R clamped to <= 0 (a zero block's scale may exceed R);
// 0 below the exact range, which only zero blocks reach (moe_fold_ref checked the rest).
__device__ __forceinline__ uint32_t wgf_mult(int s, int R) {
  const int d = min(s - R, 0);
  const uint32_t h = d >= -WGF_SPAN ? (uint32_t)(29 + d) << 10 : 0u;
  return h | (h << 16);
}

// The A fragments of the two k16 steps of one word of the thread's bytes of rows g (wg) and
// g+8 (wh): the first step nibble pairs (0, 4) and (1, 5), the second (2, 6) and (3, 7).
__device__ __forceinline__ void wgf_convert_word(uint32_t wg, uint32_t wh, uint32_t mg, uint32_t mh, uint32_t (&a0)[4],
                                                 uint32_t (&a1)[4]) {
  a0[0] = wgf_hmul2(e2m1_pair_f16<0>(wg), mg);
  a0[1] = wgf_hmul2(e2m1_pair_f16<0>(wh), mh);
  a0[2] = wgf_hmul2(e2m1_pair_f16<1>(wg), mg);
  a0[3] = wgf_hmul2(e2m1_pair_f16<1>(wh), mh);
  a1[0] = wgf_hmul2(e2m1_pair_f16<2>(wg), mg);
  a1[1] = wgf_hmul2(e2m1_pair_f16<2>(wh), mh);
  a1[2] = wgf_hmul2(e2m1_pair_f16<3>(wg), mg);
  a1[3] = wgf_hmul2(e2m1_pair_f16<3>(wh), mh);
}
// The A fragments of a chunk's 8 k16 steps from the thread's 16 bytes of rows g and g+8:
// step j takes word j/2 (wgf_convert_word).
__device__ __forceinline__ void wgf_convert_a(const uint4& pg, const uint4& ph, uint32_t mg, uint32_t mh, uint32_t (&a)[8][4]) {
  const uint32_t wg[4] = {pg.x, pg.y, pg.z, pg.w}, wh[4] = {ph.x, ph.y, ph.z, ph.w};
#pragma unroll
  for (int w = 0; w < 4; w++) wgf_convert_word(wg[w], wh[w], mg, mh, a[2 * w], a[2 * w + 1]);
}

template <int NT>
__device__ __forceinline__ void wgf_mma(float (&d)[NT / 2], const uint32_t (&a)[4], uint64_t desc, int acc) {
  if constexpr (NT == 8) wgmma_f16_n8(d, a, desc, acc);
  else if constexpr (NT == 16) wgmma_f16_n16(d, a, desc, acc);
  else if constexpr (NT == 24) wgmma_f16_n24(d, a, desc, acc);
  else if constexpr (NT == 32) wgmma_f16_n32(d, a, desc, acc);
  else if constexpr (NT == 48) wgmma_f16_n48(d, a, desc, acc);
  else if constexpr (NT == 64) wgmma_f16_n64(d, a, desc, acc);
  else if constexpr (NT == 80) wgmma_f16_n80(d, a, desc, acc);
  else if constexpr (NT == 96) wgmma_f16_n96(d, a, desc, acc);
  else if constexpr (NT == 112) wgmma_f16_n112(d, a, desc, acc);
  else if constexpr (NT == 128) wgmma_f16_n128(d, a, desc, acc);
  else if constexpr (NT == 144) wgmma_f16_n144(d, a, desc, acc);
  else wgmma_f16_n152(d, a, desc, acc);
}

#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The kernels' arguments and the block's tile.
struct WgfArgs {
  const u8 *W, *Ws, *ref, *X;
  const float *Xs, *bias;
  float* out;
  i64 N, Kd, G, wrow0;  // wrow0: the block's first row of W viewed as (E·N, Kd/2)
  int e;
};

// Orders a register array's uses around the asynchronous MMAs (no instructions).
template <int N>
__device__ __forceinline__ void wgf_keep(float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(v[i])::"memory");
}
template <int S>
__device__ __forceinline__ void wgf_keep(uint32_t (&a)[S][4]) {
#pragma unroll
  for (int j = 0; j < S; j++)
#pragma unroll
    for (int k = 0; k < 4; k++) asm volatile("" : "+r"(a[j][k])::"memory");
}

// Eight k16 MMAs of one chunk: B buffer b (NT tokens), A fragments a.
template <int NT>
__device__ __forceinline__ void wgf_chunk(float (&d)[NT / 2], const uint32_t (&a)[8][4], const u8* b, bool first) {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int j = 0; j < 8; j++) wgf_mma<NT>(d, a[j], wgf_desc(b + j * NT * 32, 128, 256), (j > 0 || !first) ? 1 : 0);
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Eight FP8 values (a piece pair: 16 bytes as 4 words) -> two 16-byte FP16 core-matrix rows,
// each value times the f16x2 multiplier m (exact) when MUL.
template <bool MUL>
__device__ __forceinline__ void wgf_expand(const uint4& v, uint32_t m, u8* d) {
  const uint32_t in[4] = {v.x, v.y, v.z, v.w};
  uint32_t o[8];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(in[i] & 0xffffu), __NV_E4M3);
    const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(in[i] >> 16), __NV_E4M3);
    o[2 * i] = (uint32_t)lo.x | ((uint32_t)lo.y << 16);
    o[2 * i + 1] = (uint32_t)hi.x | ((uint32_t)hi.y << 16);
    if constexpr (MUL) {
      o[2 * i] = wgf_hmul2(o[2 * i], m);
      o[2 * i + 1] = wgf_hmul2(o[2 * i + 1], m);
    }
  }
  *reinterpret_cast<uint4*>(d) = make_uint4(o[0], o[1], o[2], o[3]);
  *reinterpret_cast<uint4*>(d + 128) = make_uint4(o[4], o[5], o[6], o[7]);
}

// An output value of the wgmma GEMMs: a · 2^(e - 127) + b. Where the power of two is a normal
// float (e in 1 .. 254, the usual case: the weights' reference exponents lie near 127) the scale is
// one multiply by it built from its bits, which rounds the exact product once, as ldexpf does;
// else ldexpf (the same value). The multiply and the bias's add stay two roundings (__fmul_rn is
// never fused into an FMA).
// wg_rescale_normal and wg_rescale_any are the two forms, for a caller that chooses once for
// many values.
__device__ __forceinline__ float wg_rescale_normal(float a, int e, float b) {
  return __fadd_rn(__fmul_rn(a, __int_as_float(e << 23)), b);
}
__device__ __forceinline__ float wg_rescale_any(float a, int e, float b) { return ldexpf(a, e - 127) + b; }
__device__ __forceinline__ float wg_rescale(float a, int e, float b) {
  return (unsigned)(e - 1) < 254u ? wg_rescale_normal(a, e, b) : wg_rescale_any(a, e, b);
}

// The promoting kernel's epilogue: stores acc · 2^(R - 127) plus the bias for the real tokens
// (the tokens' scales are already in acc; wg_rescale's two forms, chosen once a thread). Thread
// (g, t) holds rows wrow, wrow+8 and tokens 8i + 2t, 8i + 2t + 1. The two output rows of a token
// column are walked by pointers (8 columns = 8·N floats a step), so a store costs a few
// instructions.
template <int NT>
__device__ __forceinline__ void wgf_store(const WgfArgs& A, int row0, int nvalid, int wrow, int t, const int (&R)[2],
                                          const float (&acc)[NT / 2]) {
  const float b0 = A.bias ? A.bias[A.wrow0 + wrow] : 0.f;
  const float b1 = A.bias ? A.bias[A.wrow0 + wrow + 8] : 0.f;
  const i64 n = A.wrow0 - (i64)A.e * A.N + wrow;  // this thread's first row within the expert
  const bool fast = min(R[0], R[1]) >= 1 && max(R[0], R[1]) <= 254;
  float* q = A.out + (i64)(row0 + 2 * t) * A.N + n;  // token 8i + 2t's row, i = 0
  const i64 N = A.N;
#pragma unroll
  for (int i = 0; i < NT / 8; i++, q += 8 * N) {
#pragma unroll
    for (int c = 0; c < 2; c++) {
      if (8 * i + 2 * t + c >= nvalid) continue;
      float* o = q + c * N;
      if (fast) {
        o[0] = wg_rescale_normal(acc[4 * i + c], R[0], b0);
        o[8] = wg_rescale_normal(acc[4 * i + 2 + c], R[1], b1);
      } else {
        o[0] = wg_rescale_any(acc[4 * i + c], R[0], b0);
        o[8] = wg_rescale_any(acc[4 * i + 2 + c], R[1], b1);
      }
    }
  }
}

// This thread's A fragments of a chunk from a ring stage: its rows wrow and wrow + 8 (packed
// E2M1 codes w, 64 bytes a row; E8M0 words s, one a row), piece t, each block's scale folded
// against the rows' reference exponents R (wgf_mult), expanded to FP16 (wgf_convert_a).
__device__ __forceinline__ void wgf_load_a(const u8* w, const uint32_t* s, int wrow, int t, const int (&R)[2],
                                           uint32_t (&a)[8][4]) {
  const uint4 pg = *reinterpret_cast<const uint4*>(&w[wrow * 64 + 16 * t]);
  const uint4 ph = *reinterpret_cast<const uint4*>(&w[(wrow + 8) * 64 + 16 * t]);
  const int sg = (s[wrow] >> (8 * t)) & 0xff, sh = (s[wrow + 8] >> (8 * t)) & 0xff;
  wgf_convert_a(pg, ph, wgf_mult(sg, R[0]), wgf_mult(sh, R[1]), a);
}

// The start of a WGF_STAGES-deep cp.async ring over G chunks: this thread's copies of chunks
// 0 .. WGF_STAGES-2 (one commit group each, empty past G), then the wait for chunk 0's.
template <class Issue>
__device__ __forceinline__ void wgf_ring_start(i64 G, Issue issue) {
#pragma unroll
  for (int q = 0; q < WGF_STAGES - 1; q++) {
    if (q < G) issue(q);
    cp_async_commit();
  }
  cp_async_wait<WGF_STAGES - 2>();
}

// The promoting path, in passes of up to WGF_PTOK tokens: each chunk's MMAs into a fresh
// partial, which is multiplied by the tokens' scales and added to the accumulator. Two block
// barriers per chunk: chunk q+1's copies are visible to every thread, and its B buffer is
// complete before the MMAs read it.
template <int NT>
struct WgfPromote {
  static constexpr int NA = NT / 2;
  static constexpr int TOKC = (NT * 8 + 255) / 256;
  const WgfArgs& A;
  u8* smem;
  int row0, nvalid, tid, wrow, t, xtok;
  const u8 *xp, *wp, *sp;
  const float* xsp;

  __device__ __forceinline__ WgfPromote(const WgfArgs& a, u8* sm, int r0, int nv) : A(a), smem(sm), row0(r0), nvalid(nv) {
    tid = threadIdx.x;
    t = tid & 3;
    wrow = (tid / 128) * 64 + ((tid % 128) / 32) * 16 + ((tid & 31) >> 2);
    xp = A.X + (i64)(row0 + min(tid >> 3, nvalid - 1)) * A.Kd + 16 * (tid & 7);
    wp = weight_row(A.W, A.wrow0 + (tid >> 2), A.G) + 16 * (tid & 3);
    sp = scale_row(A.Ws, A.wrow0 + min(tid, WGF_ROWS - 1), A.G);
    xtok = tid - WGF_ROWS;
    xsp = A.Xs + (i64)(row0 + min(max(xtok, 0), nvalid - 1)) * A.G;
  }
  __device__ __forceinline__ WgfPStage& stage(i64 q) const { return reinterpret_cast<WgfPStage*>(smem)[q & (WGF_STAGES - 1)]; }
  __device__ __forceinline__ u8* bbuf(i64 q) const { return smem + WGF_STAGES * sizeof(WgfPStage) + (q & 1) * WGF_PB; }

  __device__ __forceinline__ void issue(i64 q) const {
    WgfPStage& s = stage(q);
#pragma unroll
    for (int k = 0; k < TOKC; k++) {
      const int tok = (tid >> 3) + 32 * k;
      if (tok < nvalid && tok < NT) cp_async16(&s.x[tok * WGF_XROW + 16 * (tid & 7)], xp + (i64)32 * k * A.Kd + q * MOE_GROUP);
    }
    cp_async16(&s.w[(tid >> 2) * 64 + 16 * (tid & 3)], wp + q * 1024);
    cp_async16(&s.w[((tid >> 2) + 64) * 64 + 16 * (tid & 3)], wp + 4 * A.G * 1024 + q * 1024);  // row + 64
    if (tid < WGF_ROWS) cp_async4(&s.s[tid], sp + 64 * q);
    else if (xtok < nvalid && xtok < NT) cp_async4(&s.xs[xtok], xsp + q);
  }

  __device__ __forceinline__ void convert(i64 q, const int (&R)[2], uint32_t (&a)[8][4]) const {
    const WgfPStage& s = stage(q);
    u8* b = bbuf(q);
#pragma unroll
    for (int k = 0; k < TOKC; k++) {
      const int task = tid + 256 * k;
      if ((NT * 8) % 256 != 0 && task >= NT * 8) break;
      const int tok = (task >> 6) * 8 + (task & 7), j = (task >> 3) & 7;
      const uint4 v = *reinterpret_cast<const uint4*>(&s.x[tok * WGF_XROW + 16 * j]);
      wgf_expand<false>(v, 0, b + j * NT * 32 + (tok >> 3) * 256 + (tok & 7) * 16);
    }
    wgf_load_a(s.w, s.s, wrow, t, R, a);
  }

  __device__ __forceinline__ void run(const int (&R)[2]) const {
    float acc[NA], part[NA];
#pragma unroll
    for (int i = 0; i < NA; i++) acc[i] = 0.f;
    uint32_t a0[8][4], a1[8][4];
    wgf_ring_start(A.G, [&](int q) { issue(q); });
    __syncthreads();
    convert(0, R, a0);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    auto step = [&](i64 q, uint32_t(&cur)[8][4], uint32_t(&nxt)[8][4]) {
      wgf_chunk<NT>(part, cur, bbuf(q), true);
      cp_async_wait<WGF_STAGES - 3>();
      __syncthreads();  // chunk q+1 has landed; every thread waited for chunk q-1's MMAs
      if (q + 1 < A.G) convert(q + 1, R, nxt);
      if (q + WGF_STAGES - 1 < A.G) issue(q + WGF_STAGES - 1);
      cp_async_commit();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      wgf_keep(part);
      wgf_keep(cur);
      const WgfPStage& s = stage(q);
#pragma unroll
      for (int i = 0; i < NT / 8; i++) {
        const float2 xs = *reinterpret_cast<const float2*>(&s.xs[8 * i + 2 * t]);
        acc[4 * i + 0] = fmaf(part[4 * i + 0], xs.x, acc[4 * i + 0]);
        acc[4 * i + 1] = fmaf(part[4 * i + 1], xs.y, acc[4 * i + 1]);
        acc[4 * i + 2] = fmaf(part[4 * i + 2], xs.x, acc[4 * i + 2]);
        acc[4 * i + 3] = fmaf(part[4 * i + 3], xs.y, acc[4 * i + 3]);
      }
      __syncthreads();  // chunk q+1's B buffer is complete
    };
    for (i64 q = 0; q < A.G; q += 2) {
      step(q, a0, a1);
      if (q + 1 < A.G) step(q + 1, a1, a0);
    }
    cp_async_wait<0>();
    wgf_store<NT>(A, row0, nvalid, wrow, t, R, acc);
  }
};

// mbarrier and bulk-copy helpers (shared::cta addresses).
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint32_t bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred p;\nMBAR_WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra MBAR_WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// bytes (a multiple of 16) from global src to shared dst, completing on mbarrier bar.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, unsigned bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
#endif

// W (E, N, Kd/2) packed E2M1 blocked (weight_row), Ws (E, N, Kd/32) E8M0 blocked (scale_row), ref
// (E, N) the weight fold's reference exponents, X (rows, Kd) FP8 with each chunk in fp16_slot
// order, Xs (rows, Kd/128), tiles (expert, first row, rows) of up to WGF_TOK rows, bias (E, N) or
// null, out (rows, N) float32.
// moe_gemm_wgp computes the tiles that moe_wg_tiles listed in plist (*nplist of them; the
// tiles whose activation scales do not fold), block (x, y) taking list entries y, y + grid.y,
// ...: grid = (N / 128, any), block = 256, WGF_PSMEM bytes of dynamic shared memory. moe_gemm_wg4
// (below) computes the others: two kernels rather than two branches of one, so that each gets
// its own register allocation, and a compact list so that the promoting kernel costs little
// when no tile needs it.
extern "C" __global__ void __launch_bounds__(256, 1)
moe_gemm_wgp(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ ref, const u8* __restrict__ X,
             const float* __restrict__ Xs, const int* __restrict__ tiles, const int* __restrict__ plist,
             const int* __restrict__ nplist, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd) {
  pdl_begin();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // wgmma exists on sm_90a only; the compute_90 PTX traps
  extern __shared__ __align__(1024) u8 wgf_smem[];
  const int tid = threadIdx.x;
  const i64 G = Kd / MOE_GROUP;
  const int wrow = (tid / 128) * 64 + ((tid % 128) / 32) * 16 + ((tid & 31) >> 2);
  bool first = true;
  for (int idx = blockIdx.y; idx < *nplist; idx += gridDim.y) {
    const int tile = plist[idx];
    const int e = tiles[3 * tile], row0 = tiles[3 * tile + 1], nvalid = tiles[3 * tile + 2];
    const WgfArgs args{W, Ws, ref, X, Xs, bias, out, N, Kd, G, (i64)e * N + (i64)blockIdx.x * WGF_ROWS, e};
    const int R[2] = {ref[args.wrow0 + wrow], ref[args.wrow0 + wrow + 8]};
    for (int p0 = 0; p0 < nvalid; p0 += WGF_PTOK) {
      const int nv = min(WGF_PTOK, nvalid - p0);
      if (!first) __syncthreads();  // the previous pass is done with the shared memory
      first = false;
#define WGF_PROMOTE(nt) WgfPromote<nt>(args, wgf_smem, row0 + p0, nv).run(R)
      if (nv <= 16) WGF_PROMOTE(16);
      else if (nv <= 32) WGF_PROMOTE(32);
      else if (nv <= 64) WGF_PROMOTE(64);
      else WGF_PROMOTE(128);
#undef WGF_PROMOTE
    }
  }
#else
  __trap();
#endif
}

// Per tile of the wgmma GEMM: can its tokens' activation scales fold exactly into FP16? Every
// scale must be a finite power of two within 15 binades below its token's largest (the
// ceil_ue8m0 format gives powers of two). flags[tile] = 1 if so; for every row of the tile,
// trow[row] = that largest exponent (biased); the tiles that do not fold are appended to plist
// (*nplist, zeroed before the launch, counts them). Xs (rows, G). grid = tile bound, block = 256.
extern "C" __global__ void moe_wg_tiles(const float* __restrict__ Xs, const int* __restrict__ tiles, const int* __restrict__ ntiles,
                                        i64 G, int* __restrict__ flags, int* __restrict__ trow, int* __restrict__ plist,
                                        int* __restrict__ nplist) {
  pdl_begin();
  __shared__ int tmax[WGF_TOK];
  if ((int)blockIdx.x >= *ntiles) return;
  const int row0 = tiles[3 * blockIdx.x + 1], nvalid = tiles[3 * blockIdx.x + 2], g = (int)G;
  const int tid = threadIdx.x;
  for (int i = tid; i < nvalid; i += blockDim.x) tmax[i] = 0;
  __syncthreads();
  const float* xs = Xs + (i64)row0 * G;
  int ok = 1;
  for (int i = tid; i < nvalid * g; i += blockDim.x) {
    const uint32_t b = __float_as_uint(xs[i]);
    const int ex = (b >> 23) & 0xff;
    ok &= (b & 0x807fffffu) == 0 && ex != 0 && ex != 255;
    atomicMax(&tmax[i / g], ex);
  }
  __syncthreads();
  for (int i = tid; i < nvalid * g; i += blockDim.x) ok &= (int)((__float_as_uint(xs[i]) >> 23) & 0xff) - tmax[i / g] >= -15;
  for (int i = tid; i < nvalid; i += blockDim.x) trow[row0 + i] = tmax[i];
  ok = __syncthreads_and(ok);
  if (tid == 0) {
    flags[blockIdx.x] = ok;
    if (!ok) plist[atomicAdd(nplist, 1)] = blockIdx.x;  // list order varies; each tile's result does not
  }
}

// Piece kc (16 bytes, halves 2kc and 2kc + 1: fp16_slot_half) of a 128-column chunk in fp16_slot
// order, from the chunk in column order in shared memory (its 16-byte pieces at piece ^ sw, as
// moe_wg_stage stores them): words 2w, 2w + 1 of block b (w = kc/2) are one 8-byte read.
__device__ __forceinline__ uint4 wg_slot_piece(const u8* row, int sw, int kc) {
  uint2 x[4];
#pragma unroll
  for (int b = 0; b < 4; b++) {
    const int o = 8 * b + 2 * (kc >> 1);  // word o, inside piece o / 4
    x[b] = *reinterpret_cast<const uint2*>(row + 16 * ((o >> 2) ^ sw) + 4 * (o & 3));
  }
  const uint2 lo = fp16_slot_half(x, 2 * (kc & 1)), hi = fp16_slot_half(x, 2 * (kc & 1) + 1);
  return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

// The token of routed row r when the rows are the tokens' pairs in the routing's order: row_pair[r]
// is the row's pair, topk pairs a token.
__device__ __forceinline__ i64 token_of(const int* row_pair, int r, i64 topk) { return (i64)__ldg(row_pair + r) / topk; }

// Stages chunk q = blockIdx.y of every folding tile's tokens for moe_gemm_wg4: X (rows, 128·G)
// FP8 in fp16_slot order (or, with row_pair, the unpermuted tokens (M, 128·G) in column order: row
// r's token is row_pair[r] / topk, and the chunk is put in fp16_slot order here, so that GEMM1
// needs no permuted copy of its tokens), Xs (rows, G), flags and trow from moe_wg_tiles -> xb, FP16 times
// 2^(exponent - trow), chunk q of row r at xb + q·cstride + (r/8)·2048 + c·128 + (r%8)·16 for its
// 16 8-value pieces c (8-row core matrices of the MMA's K-major layout; every tile starts at a
// multiple of 8 rows). The rows pass through shared memory, so that both the reads (128 bytes
// of a row) and the writes (16-byte core-matrix rows of consecutive rows) are contiguous. With
// row_pair, the blocks of the tiles that do not fold write chunk q of their rows, permuted and in
// fp16_slot order, to xp (rows, 128·G) for moe_gemm_wgp instead. grid = (tile bound, G), block = 256.
extern "C" __global__ void moe_wg_stage(const u8* __restrict__ X, const float* __restrict__ Xs, const int* __restrict__ tiles,
                                        const int* __restrict__ ntiles, const int* __restrict__ flags, const int* __restrict__ trow,
                                        i64 G, u8* __restrict__ xb, i64 cstride, const int* __restrict__ row_pair, i64 topk,
                                        u8* __restrict__ xp) {
  pdl_begin();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ __align__(16) u8 xs_[WGF_TOK * 128];
  if ((int)blockIdx.x >= *ntiles) return;
  const int row0 = tiles[3 * blockIdx.x + 1], nvalid = tiles[3 * blockIdx.x + 2], q = blockIdx.y;
  const int tid = threadIdx.x;
  const i64 Kd = G * MOE_GROUP;
  if (!flags[blockIdx.x]) {
    // A tile that does not fold: with row_pair (GEMM1, whose gather wrote only the scales), chunk
    // q of its rows in fp16_slot order into xp, the permuted rows moe_gemm_wgp reads.
    if (row_pair)
      for (int it = tid; it < nvalid * 16; it += 256) {
        const int r = it >> 4;
        const i64 src = token_of(row_pair, row0 + r, topk), p = (i64)q * 16 + (it & 15);
        reinterpret_cast<uint2*>(xp + (i64)(row0 + r) * Kd)[p] = fp16_slot_piece(reinterpret_cast<const uint2*>(X + src * Kd), p);
      }
    return;
  }
  // Piece kc of row r at piece kc ^ (r % 8) of its shared row: conflict-free reads below.
  // With row_pair (GEMM1): the row's token, row_pair[row] / topk, from the unpermuted X.
  for (int it = tid; it < nvalid * 8; it += 256) {
    const int r = it >> 3, kc = it & 7;
    const i64 src = row_pair ? token_of(row_pair, row0 + r, topk) : (i64)(row0 + r);
    *reinterpret_cast<uint4*>(&xs_[r * 128 + 16 * (kc ^ (r & 7))]) =
        *reinterpret_cast<const uint4*>(X + src * Kd + (i64)q * MOE_GROUP + 16 * kc);
  }
  __syncthreads();
  u8* out = xb + q * cstride + (i64)(row0 >> 3) * 2048;
  const int ng = (nvalid + 7) / 8;
  for (int it = tid; it < ng * 64; it += 256) {  // (8-row group, piece kc, row in group)
    const int i = it & 7, kc = (it >> 3) & 7, gr = it >> 6, r = gr * 8 + i;
    if (r >= nvalid) continue;
    const uint4 v = row_pair ? wg_slot_piece(xs_ + r * 128, i, kc) : *reinterpret_cast<const uint4*>(&xs_[r * 128 + 16 * (kc ^ i)]);
    const int f = max((int)((__float_as_uint(Xs[(i64)(row0 + r) * G + q]) >> 23) & 0xff) - trow[row0 + r] + 15, 0);
    const uint32_t h = f ? (uint32_t)f << 10 : 0x0200u;
    wgf_expand<true>(v, h | (h << 16), out + gr * 2048 + 2 * kc * 128 + i * 16);
  }
#else
  __trap();
#endif
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The folding kernel (moe_gemm_wg4), for the tiles whose flag is set: moe_wg_stage already wrote
// the tile's tokens as FP16 in the MMA's core-matrix layout, contiguous per chunk, so a stage's
// tokens are one bulk copy, not a conversion. No block barrier after the start: the MMAs of
// chunk q wait for its tokens on the stage's FULL mbarrier, each warp releases a stage on its
// EMPTY mbarrier once its warpgroup's MMAs of that chunk are done, and the weights and scales a
// thread converts are its own (and its quad's) cp.async copies. 256 weight rows a block (four
// warpgroups of 64, four warps a scheduler; a token tile read from L2 once per 256 rows) at the
// 128 registers a thread that 512 threads leave: the A fragments are converted and issued in
// half chunks (4 k16 steps, two buffers of 16 registers) for tiles of up to 128 tokens, in
// quarter chunks (2 steps, two buffers of 8) for wider ones, whose accumulators take 72 or 76
// registers. Four ring stages of 152 tokens fit the shared memory (four of 160 would not). The
// last row block of a GEMM whose N is not a multiple of 256 holds 64, 128 or 192 rows; its other
// warpgroups only take part in the block barriers.
template <int TOK, int ROWS>
struct Wg4StageT {
  u8 b[TOK * 256];   // the tokens' FP16 values of the chunk, 8-row groups of 16 core matrices
  u8 w[ROWS * 64];   // the rows' packed E2M1 codes of the chunk
  uint32_t s[ROWS];  // the rows' 4 E8M0 exponents of the chunk
};
using Wg4Stage = Wg4StageT<WGF_TOK, WG4_ROWS>;
#define WG4_SMEM (WGF_STAGES * (int)sizeof(Wg4Stage) + 2 * WGF_STAGES * 8)

// The middle folding kernel (moe_gemm_wg4m), for batches of a few dozen tokens an expert (the
// route kernel's tiles then hold at most WG4M_TOK rows): moe_gemm_wg4's ring on 384 weight rows
// a block (six warpgroups, six warps a scheduler instead of four; the token tile read from L2 once
// per 384 rows) at the 85 registers a thread that 768 threads leave, the A fragments in quarter
// chunks; four stages of 64 tokens.
using Wg4MStage = Wg4StageT<WG4M_TOK, WG4M_ROWS>;
#define WG4M_SMEM (WGF_STAGES * (int)sizeof(Wg4MStage) + 2 * WGF_STAGES * 8)

// The small-tile folding kernel (moe_gemm_wg4s), for batches of a few tokens an expert (the
// route kernel's tiles then hold at most WG4S_TOK rows): the same loop on 128 weight rows a block
// (two warpgroups) at three blocks an SM, six warps a scheduler instead of four, for a loop whose
// pace at such tiles is its warps' chains (expanding the weights), not the MMAs or the memory
// (docs/perf.md, "next/wg4s3 and next/wg4s3n, measured"); its weight ring (WG4S_WSTAGES chunks
// deep, codes and exponents) apart from a token ring of WGF_STAGES stages of WG4S_TOK tokens, so
// that three blocks' rings fit the shared memory; MMA widths in steps of 8 tokens.
#define WG4S_WSTAGES 4   // weight ring depth, in chunks (a power of two)
#define WG4S_TSZ (WG4S_TOK * 256)                  // a token stage
#define WG4S_WSZ (WG4S_ROWS * 64 + WG4S_ROWS * 4)  // a weight stage: codes, then exponents
#define WG4S_SMEM (WGF_STAGES * WG4S_TSZ + WG4S_WSTAGES * WG4S_WSZ + 2 * WGF_STAGES * 8)

// A folding kernel's ring in its dynamic shared memory: TS token stages of TSTR bytes from 0,
// WS weight stages of WSTR bytes whose codes start at WOFF and exponents at SOFF, then the TS
// FULL and TS EMPTY mbarriers at BAR; ROWS weight rows a block of THREADS threads.
template <int ROWS_, int THREADS_, int TS_, int WS_, int TSTR_, int WSTR_, int WOFF_, int SOFF_, int BAR_>
struct Wg4Ring {
  static constexpr int ROWS = ROWS_, THREADS = THREADS_, TS = TS_, WS = WS_;
  static constexpr uint32_t TSTR = TSTR_, WSTR = WSTR_, WOFF = WOFF_, SOFF = SOFF_, BAR = BAR_;
};
// moe_gemm_wg4: one ring of stages that hold a chunk's tokens, codes and exponents together.
using Wg4Big = Wg4Ring<WG4_ROWS, WG4_THREADS, WGF_STAGES, WGF_STAGES, sizeof(Wg4Stage), sizeof(Wg4Stage), offsetof(Wg4Stage, w),
                       offsetof(Wg4Stage, s), WGF_STAGES * sizeof(Wg4Stage)>;
using Wg4Mid = Wg4Ring<WG4M_ROWS, WG4M_THREADS, WGF_STAGES, WGF_STAGES, sizeof(Wg4MStage), sizeof(Wg4MStage), offsetof(Wg4MStage, w),
                       offsetof(Wg4MStage, s), WGF_STAGES * sizeof(Wg4MStage)>;
// moe_gemm_wg4s: the token ring, then the weight ring.
using Wg4Small = Wg4Ring<WG4S_ROWS, WG4S_THREADS, WGF_STAGES, WG4S_WSTAGES, WG4S_TSZ, WG4S_WSZ, WGF_STAGES * WG4S_TSZ,
                         WGF_STAGES * WG4S_TSZ + WG4S_ROWS * 64, WGF_STAGES * WG4S_TSZ + WG4S_WSTAGES * WG4S_WSZ>;

// The fold multipliers (wgf_mult) of rows g and g+8 for the thread's 32-column block t of a
// chunk, from the chunk's E8M0 exponents s: the same for every part of the chunk, so computed once
// a chunk.
__device__ __forceinline__ void wg4_mults(const uint32_t* s, int wrow, int t, const int (&R)[2], uint32_t& mg, uint32_t& mh) {
  mg = wgf_mult((s[wrow] >> (8 * t)) & 0xff, R[0]);
  mh = wgf_mult((s[wrow + 8] >> (8 * t)) & 0xff, R[1]);
}
// The A fragments of part P of a chunk of NW words (NW = 2: half a chunk, k16 steps 4P .. 4P+3;
// NW = 1: a quarter, steps 2P, 2P+1): words NW·P .. NW·P+NW-1 of the thread's 16 bytes of rows g
// and g+8, each word two k16 steps, as wgf_convert_a does for a whole chunk; mg, mh: the chunk's
// multipliers (wg4_mults).
template <int NW, int P>
__device__ __forceinline__ void wg4_load_part(const u8* w, int wrow, int t, uint32_t mg, uint32_t mh, uint32_t (&a)[2 * NW][4]) {
  uint32_t wg[NW], wh[NW];
  if constexpr (NW == 2) {
    const uint2 pg = *reinterpret_cast<const uint2*>(&w[wrow * 64 + 16 * t + 8 * P]);
    const uint2 ph = *reinterpret_cast<const uint2*>(&w[(wrow + 8) * 64 + 16 * t + 8 * P]);
    wg[0] = pg.x, wg[1] = pg.y, wh[0] = ph.x, wh[1] = ph.y;
  } else {
    wg[0] = *reinterpret_cast<const uint32_t*>(&w[wrow * 64 + 16 * t + 4 * P]);
    wh[0] = *reinterpret_cast<const uint32_t*>(&w[(wrow + 8) * 64 + 16 * t + 4 * P]);
  }
#pragma unroll
  for (int w2 = 0; w2 < NW; w2++) wgf_convert_word(wg[w2], wh[w2], mg, mh, a[2 * w2], a[2 * w2 + 1]);
}

// The epilogue through shared memory: once every warpgroup's MMAs are done with the ring, the
// active warpgroups write their accumulators into a token-major tile there (rows of WG4_TROW
// floats, padded so that a warp's writes hit 32 banks), then thread i stores rows 4(i mod 64)
// .. 4(i mod 64)+3 of tokens i/64, i/64 + 8, ... (one 16-byte read, scale and bias, one 16-byte
// store; 8 tokens a pass, each a contiguous row of up to 1024 bytes). Each value is
// acc · 2^(R - 127 + x) plus the bias (wg_rescale, chosen per value), R the row's fold reference
// and x the token's largest exponent less 127 (tref). A rolled loop without per-value branches on
// the token count. nrows: the block's rows (64, 128, 192 or 256; 64 or 128 in moe_gemm_wg4s).
// tref: the tile's token exponents, which its first barrier publishes.
template <class C, int NT>
__device__ __forceinline__ void wg4_store(const WgfArgs& A, u8* smem, int row0, int nvalid, int nrows, bool active, int wrow, int t,
                                          const float (&acc)[NT / 2], const int* tref) {
  constexpr int TROW = C::ROWS + 4;  // the tile's row stride in floats (conflict-free writes)
  float* tile = reinterpret_cast<float*>(smem);
  __syncthreads();  // every warpgroup's MMAs are done reading the ring
  if (active) {
#pragma unroll
    for (int i = 0; i < NT / 8; i++)
#pragma unroll
      for (int c = 0; c < 2; c++) {
        tile[(8 * i + 2 * t + c) * TROW + wrow] = acc[4 * i + c];
        tile[(8 * i + 2 * t + c) * TROW + wrow + 8] = acc[4 * i + 2 + c];
      }
  }
  __syncthreads();
  const int c4 = threadIdx.x % (C::ROWS / 4);
  if (4 * c4 >= nrows) return;
  const uint32_t r4 = *reinterpret_cast<const uint32_t*>(A.ref + A.wrow0 + 4 * c4);
  const int R[4] = {(int)(r4 & 0xff), (int)((r4 >> 8) & 0xff), (int)((r4 >> 16) & 0xff), (int)(r4 >> 24)};
  const float4 b = A.bias ? *reinterpret_cast<const float4*>(A.bias + A.wrow0 + 4 * c4) : make_float4(0.f, 0.f, 0.f, 0.f);
  const float bb[4] = {b.x, b.y, b.z, b.w};
  float* o = A.out + (i64)row0 * A.N + (A.wrow0 - (i64)A.e * A.N) + 4 * c4;
  // The four rows' exponents of a token are all normal (wg_rescale's first form) unless the
  // token's or a row's exponent is extreme: one test a token instead of one a value.
  const int rlo = min(min(R[0], R[1]), min(R[2], R[3])), rhi = max(max(R[0], R[1]), max(R[2], R[3]));
  for (int tok = threadIdx.x / (C::ROWS / 4); tok < nvalid; tok += C::THREADS / (C::ROWS / 4)) {
    const int v = tref[tok] - 127;
    const float4 a = *reinterpret_cast<const float4*>(&tile[tok * TROW + 4 * c4]);
    const float av[4] = {a.x, a.y, a.z, a.w};
    float r[4];
    if (rlo + v >= 1 && rhi + v <= 254) {
#pragma unroll
      for (int k = 0; k < 4; k++) r[k] = wg_rescale_normal(av[k], R[k] + v, bb[k]);
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++) r[k] = wg_rescale(av[k], R[k] + v, bb[k]);
    }
    // One 16-byte store (PTX's v4 store: the compiler split the float4 assignment into four).
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(o + (i64)tok * A.N), "f"(r[0]), "f"(r[1]), "f"(r[2]), "f"(r[3])
                 : "memory");
  }
}

// One block's tile on ring C: tokens by thread 0's bulk copies two chunks ahead on the FULL
// barriers, each thread's own weight and scale copies C::WS - 1 chunks ahead, an EMPTY arrival
// per active warp; the MMAs in parts of NW words (NW = 2: halves, 1: quarters). The token
// exponents of the epilogue are loaded at the start, into a register of the tile's first nvalid
// threads, and stored in shared memory after the first chunk (a load before the start's barrier
// held every warp there); the epilogue's first barrier publishes them. Per chunk q,
// part 0: wait for the tokens; its MMAs; wait for the last part of chunk q-1, so that chunk
// q-1's stages are released and this thread's copies of chunk q + C::WS - 1 go into its weight
// stage; part 1's fragments. Each later part: its MMAs; wait for the part before; the next
// part's fragments (after the last, once chunk q+1's copies landed, part 0 of chunk q+1).
template <class C, int NT, int NW>
__device__ __forceinline__ void wg4_run(const WgfArgs& A, u8* smem, const u8* xbase, i64 cstride, int row0, int nvalid, int nrows,
                                        const int (&R)[2], int* tref, const int* trow) {
  constexpr int NA = NT / 2;
  constexpr int TS = C::TS, WS = C::WS;
  const int tid = threadIdx.x, t = tid & 3, lane = tid & 31;
  const int tr = tid < nvalid ? trow[row0 + tid] : 0;  // into tref once the first chunk is done
  const int wrow = (tid / 128) * 64 + ((tid % 128) / 32) * 16 + (lane >> 2);
  const bool active = (tid / 128) * 64 < nrows;
  const u8* tsrc = xbase + (i64)(row0 >> 3) * 2048;
  const u8* wp = weight_row(A.W, A.wrow0 + wrow, A.G) + 16 * t;
  const u8* sp = scale_row(A.Ws, A.wrow0 + wrow + 8 * (t & 1), A.G);
  const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(smem), full = s0 + C::BAR, empty = full + 8 * TS;
  const uint32_t wdst = s0 + C::WOFF + wrow * 64 + 16 * t;
  const uint32_t sdst = s0 + C::SOFF + (wrow + 8 * t) * 4;
  const uint64_t bdesc = wgf_desc(smem, 128, 2048);
  const int G = (int)A.G;  // a 32-bit chunk counter (a 64-bit one costs extended compares a chunk)
  // Chunk q's codes and exponents in the weight ring.
  auto wcodes = [&](int q) { return smem + C::WOFF + (q & (WS - 1)) * C::WSTR; };
  auto wexps = [&](int q) { return reinterpret_cast<const uint32_t*>(smem + C::SOFF + (q & (WS - 1)) * C::WSTR); };
  auto tokens = [&](int q) {
    const uint32_t st = (uint32_t)(q & (TS - 1));
    if (q >= TS) mbar_wait(empty + 8 * st, (unsigned)((q / TS - 1) & 1));
    mbar_expect(full + 8 * st, NT * 256);
    bulk_copy(s0 + st * C::TSTR, tsrc + q * cstride, NT * 256, full + 8 * st);
  };
  // This thread's copies of the next chunk in order (chunks 0, 1, 2, ... into weight stages 0,
  // 1, ..., WS - 1, 0, ...): running source pointers and stage offset, no per-chunk products.
  const u8* wq = wp;
  const u8* sq = sp;
  uint32_t oq = 0;
  auto issue = [&]() {
    cp_async16_s(wdst + oq, wq);
    cp_async16_s(wdst + oq + 8 * 64, wq + 512);
    if (t < 2) cp_async4_s(sdst + oq, sq);
    wq += 1024, sq += 64;
    oq = oq == (WS - 1) * C::WSTR ? 0 : oq + C::WSTR;
  };
  float acc[NA];
#pragma unroll
  for (int i = 0; i < NA; i++) acc[i] = 0.f;
  constexpr int NP = 4 / NW, S = 2 * NW;  // parts a chunk, k16 steps a part
  uint32_t a0[S][4], a1[S][4];
  if (active) {
    if (tid == 0) {
      tokens(0);
      if (G > 1) tokens(1);
    }
#pragma unroll
    for (int q = 0; q < WS - 1; q++) {
      if (q < G) issue();
      cp_async_commit();
    }
  }
  __syncthreads();  // publishes the mbarriers' initialisation
  if (active) {
    cp_async_wait<WS - 2>();
    __syncwarp();
    uint32_t mg, mh;  // the current chunk's multipliers
    wg4_mults(wexps(0), wrow, t, R, mg, mh);
    wg4_load_part<NW, 0>(wcodes(0), wrow, t, mg, mh, a0);
    auto mma = [&](const uint32_t(&a)[S][4], int q, int p) {
      const uint64_t d0 = bdesc + ((uint32_t)(q & (TS - 1)) * C::TSTR >> 4) + 16 * S * p;
      wgf_keep(acc);
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int j = 0; j < S; j++) wgf_mma<NT>(acc, a[j], d0 + 16 * j, (j > 0 || p > 0 || q > 0) ? 1 : 0);
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      wgf_keep(acc);
    };
    // Part p of chunk q: its MMAs from one register set while the other, free once the part
    // before is done, takes the next part's fragments.
    auto part = [&](auto pc, int q, auto steady) {
      constexpr int p = decltype(pc)::value;
      constexpr bool ST = decltype(steady)::value;  // 1 <= q and q + WS - 1 < G
      uint32_t(&cur)[S][4] = (p & 1) ? a1 : a0;
      uint32_t(&nxt)[S][4] = (p & 1) ? a0 : a1;
      if (p == 0) mbar_wait(full + 8 * (uint32_t)(q & (TS - 1)), (unsigned)((q / TS) & 1));
      mma(cur, q, p);
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // the part before is done: nxt is free
      wgf_keep(nxt);
      if (p == 0) {  // chunk q-1's MMAs are done: its stages are free
        if ((ST || q >= 1) && lane == 0) mbar_arrive(empty + 8 * (uint32_t)((q - 1) & (TS - 1)));
        if (tid == 0 && (ST || q + 2 < G)) tokens(q + 2);
        if (ST || q + WS - 1 < G) issue();  // chunk q + WS - 1, into chunk q-1's weight stage
        cp_async_commit();
      }
      if constexpr (p + 1 < NP) {
        wg4_load_part<NW, p + 1>(wcodes(q), wrow, t, mg, mh, nxt);
      } else if (ST || q + 1 < G) {
        cp_async_wait<WS - 2>();  // this thread's chunk q+1
        __syncwarp();
        wg4_mults(wexps(q + 1), wrow, t, R, mg, mh);
        wg4_load_part<NW, 0>(wcodes(q + 1), wrow, t, mg, mh, nxt);
      }
    };
    // The first chunk, the steady state (no end of the ring in sight: every condition above
    // holds), then the last WS - 1 chunks.
    using no = std::integral_constant<bool, false>;
    using yes = std::integral_constant<bool, true>;
    static_for<NP>([&](auto pc) { part(pc, 0, no{}); });
    if (tid < nvalid) tref[tid] = tr;  // long landed: no wait
    int q = 1;
    for (; q + WS - 1 < G; q++) static_for<NP>([&](auto pc) { part(pc, q, yes{}); });
    for (; q < G; q++) static_for<NP>([&](auto pc) { part(pc, q, no{}); });
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    wgf_keep(acc);
    wgf_keep(a0);
    wgf_keep(a1);
    cp_async_wait<0>();
  } else if (tid < nvalid) {
    tref[tid] = tr;
  }
  wg4_store<C, NT>(A, smem, row0, nvalid, nrows, active, wrow, t, acc, tref);
}
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// A folding kernel's block on ring C: its tile (blockIdx.y) and row block (blockIdx.x of C::ROWS
// rows), the mbarriers, then wg4_run at the tile's instruction width, the smallest that holds its
// tokens: of 16 … 144 in steps of 16, or 152, when MAXT is 152; of 8 … 32 in steps of 8 when it
// is 32 (moe_gemm_wg4s, whose tiles the host's route cap holds to 32 tokens).
template <class C, int MAXT>
__device__ __forceinline__ void wg4_block(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ ref,
                                          const u8* __restrict__ xb, i64 cstride, const int* __restrict__ tiles,
                                          const int* __restrict__ ntiles, const int* __restrict__ flags, const int* __restrict__ trow,
                                          const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd, u8* smem, int* tref) {
  const int by = blockIdx.y, count = *ntiles, fl = flags[by];
  const int e = tiles[3 * by], row0 = tiles[3 * by + 1], nvalid = tiles[3 * by + 2];
  if (by >= count || !fl) return;
  static_assert(C::THREADS >= MAXT, "a thread a token for the tile's exponents");
  const int tid = threadIdx.x;
  const int nrows = (int)min((i64)C::ROWS, N - (i64)blockIdx.x * C::ROWS);
  const WgfArgs args{W, Ws, ref, nullptr, nullptr, bias, out, N, Kd, Kd / MOE_GROUP, (i64)e * N + (i64)blockIdx.x * C::ROWS, e};
  const int wrow = (tid / 128) * 64 + ((tid % 128) / 32) * 16 + ((tid & 31) >> 2);
  int R[2] = {0, 0};
  if (wrow < nrows) R[0] = ref[args.wrow0 + wrow], R[1] = ref[args.wrow0 + wrow + 8];
  if (tid == 0) {  // FULL: thread 0's arrival; EMPTY: one per warp of the active warpgroups.
    const uint32_t bars = (uint32_t)__cvta_generic_to_shared(smem + C::BAR);
    for (int b = 0; b < 2 * C::TS; b++) mbar_init(bars + 8 * b, b < C::TS ? 1 : nrows / 16);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
#define WG4_RUN(nt) wg4_run<C, nt, (nt > 128 || C::THREADS > 512 ? 1 : 2)>(args, smem, xb, cstride, row0, nvalid, nrows, R, tref, trow)
  if constexpr (MAXT == 32) {  // widths in steps of 8
    if (nvalid <= 8) WG4_RUN(8);
    else if (nvalid <= 16) WG4_RUN(16);
    else if (nvalid <= 24) WG4_RUN(24);
    else WG4_RUN(32);
  } else if constexpr (MAXT == 64) {
    if (nvalid <= 16) WG4_RUN(16);
    else if (nvalid <= 32) WG4_RUN(32);
    else if (nvalid <= 48) WG4_RUN(48);
    else WG4_RUN(64);
  } else if (nvalid <= 16) WG4_RUN(16);
  else if (nvalid <= 32) WG4_RUN(32);
  else if (nvalid <= 48) WG4_RUN(48);
  else if (nvalid <= 64) WG4_RUN(64);
  else if (nvalid <= 80) WG4_RUN(80);
  else if (nvalid <= 96) WG4_RUN(96);
  else if (nvalid <= 112) WG4_RUN(112);
  else if (nvalid <= 128) WG4_RUN(128);
  else if (nvalid <= 144) WG4_RUN(144);
  else WG4_RUN(152);
#undef WG4_RUN
}
#endif

// The three folding kernels' entry: the same arguments, the tile's token exponents in static
// shared memory, wg4_block on ring RING for tiles of at most MAXT tokens; BLOCKS blocks an SM in
// the launch bounds.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG4_ENTRY(RING, MAXT)                                                                                     \
  extern __shared__ __align__(1024) u8 wgf_smem[];                                                               \
  __shared__ int tref[MAXT]; /* the tile's token exponents */                                                    \
  wg4_block<RING, MAXT>(W, Ws, ref, xb, cstride, tiles, ntiles, flags, trow, bias, out, N, Kd, wgf_smem, tref);
#else
#define WG4_ENTRY(RING, MAXT) __trap();
#endif
#define WG4_KERNEL(NAME, RING, MAXT, THREADS, BLOCKS)                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS)                                                  \
      NAME(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ ref, const u8* __restrict__ xb, \
           i64 cstride, const int* __restrict__ tiles, const int* __restrict__ ntiles, const int* __restrict__ flags,  \
           const int* __restrict__ trow, const float* __restrict__ bias, float* __restrict__ out, i64 N, i64 Kd) {     \
    pdl_begin();                                                                                                  \
    WG4_ENTRY(RING, MAXT)                                                                                         \
  }

// The folding kernel: the tokens from xb (moe_wg_stage's staging, chunk stride cstride bytes),
// trow from moe_wg_tiles, the rest as moe_gemm_wgp; grid = (ceil(N / 256), tile bound),
// block = WG4_THREADS, dynamic shared memory WG4_SMEM.
WG4_KERNEL(moe_gemm_wg4, Wg4Big, WGF_TOK, WG4_THREADS, 1)

// The middle folding kernel: moe_gemm_wg4's arguments, for tiles of at most WG4M_TOK tokens (the
// route kernel's cap when the host picks this kernel); grid = (ceil(N / 384), tile bound), block =
// WG4M_THREADS, dynamic shared memory WG4M_SMEM.
WG4_KERNEL(moe_gemm_wg4m, Wg4Mid, WG4M_TOK, WG4M_THREADS, 1)

// The small-tile folding kernel: moe_gemm_wg4's arguments, for tiles of at most WG4S_TOK tokens
// (the route kernel's cap when the host picks this kernel); grid = (ceil(N / 128), tile bound),
// block = WG4S_THREADS, dynamic shared memory WG4S_SMEM, three blocks an SM.
WG4_KERNEL(moe_gemm_wg4s, Wg4Small, WG4S_TOK, WG4S_THREADS, 3)
#undef WG4_KERNEL
#undef WG4_ENTRY

