// Shared helpers of the layer's kernels. Every kernel parameter is 8 bytes wide (pointers,
// long long, double), so the Go side can pass each as one 64-bit word.
#pragma once
#include <cuda_fp8.h>
#include <stdint.h>

typedef long long i64;
typedef unsigned char u8;

#define MOE_GROUP 128   // activation scale group
#define MOE_BLOCK 32    // MXFP4 weight block
#define MOE_BM 32       // row alignment of expert segments and token tile of the GEMMs
#define MOE_WG_TOK 152  // most rows of a wgmma GEMM tile (moe_route splits larger segments)

// The routing lists (moe_route's tiles, tiles8 and tilesh; read by the GEMMs): every entry is
// (list_word(expert, rows), first row), rows the entry's real rows (1-32: a tile's, an 8-row
// chunk's, or for a heavy half its tile's), so that a GEMM block has its row count with its
// entry, one memory round trip before its first token copies rather than two (the expert's
// offset and count after the entry). Local experts are fewer than 2^16. In the heavy list
// (tilesh, for moe_gemm_dec1wh) the row field carries DEC_HEAVY_ROW for a tile of more than 16
// rows, with the half of the block's 256 weight rows it takes in bit DEC_HALF_SHIFT.
#define DEC_ROWS_SHIFT 16
#define DEC_EXPERT_MASK ((1 << DEC_ROWS_SHIFT) - 1)
#define DEC_HEAVY_ROW (1 << 30)
#define DEC_HALF_SHIFT 29
__host__ __device__ __forceinline__ int list_word(int e, int rows) { return e | rows << DEC_ROWS_SHIFT; }

// Activations, scale formats: the values of moe.Activation and moe.ScaleFormat.
#define ACT_SILU 0
#define ACT_SWIGLUSTEP 1
#define ACT_SWIGLUOAI 2
#define FMT_CEIL_UE8M0 0
#define FMT_FLOAT32 1

// Programmatic dependent launch (every kernel is launched with it, one after another on the
// layer's stream): wait until the previous kernel has finished and its writes are visible (at
// once when there is none), then let the next kernel's blocks launch into the room this one
// leaves, so that its launch overlaps this kernel's work. Called first by every kernel.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_begin() {
  pdl_wait();
  pdl_trigger();
}
// The early trigger (the host's earlyTrigger decides, per batch): on the decode path the
// activation kernel and GEMM2 may instead let the next kernel launch before they wait
// (pdl_trigger first, pdl_wait later), so that GEMM2's blocks are placed, and issue their first
// weight copies, while GEMM1 still runs, and the reduce's while GEMM2 waits. Every early read of
// the kernels after them is of the routing kernel's output or of inputs: each of them is launched
// only once the activation kernel's blocks have all started, which needs every GEMM1 block to
// have passed its wait, so the routing kernel has finished by then. Each kernel still waits for
// its predecessor before it writes, or reads what that one writes. The activation kernel takes it
// as a bit of its order argument, GEMM2 as early = 3 (moe_gemm_dec).
#define ORDER_TRIGGER 4

// A timeline of the forward's stages, in kernels built with -DMOE_TRACE only (cudaops/kernels/
// build.sh with MOE_DEFS=-DMOE_TRACE; never the committed fatbin): per stage, the %globaltimer
// (ns) at which its first and its last block began and its first and last warp ended, as
// moe_trace[4·slot + 0..3]. The host resets the table before a forward (first times to all ones,
// last times to 0) and reads it after (Layer.TraceGraphs). Each kernel of the decode path opens
// a TraceScope first thing; its destructor runs at every return. Slots: the host's traceStages.
#define TRACE_PREPARE 0
#define TRACE_ROUTE 1
#define TRACE_PERMUTE 2
#define TRACE_GEMM1 3
#define TRACE_ACT 4
#define TRACE_GEMM2 5
#define TRACE_REDUCE 6
#define TRACE_SLOTS 8
#ifdef MOE_TRACE
// With MOE_TRACE_BLOCKS as well, each block of the first TRACE_BLOCKS of a stage's grid records
// its own span in moe_trace_blk[3 · (TRACE_BLOCKS · slot + block)]: bit 63 set, the SM (%smid,
// bits 48..55), blockIdx.y (bits 24..47) and blockIdx.x (bits 0..23); the %globaltimer when it
// began; the latest end of its warps. The host zeroes it before a forward (Layer.TraceBlocks).
#define TRACE_BLOCKS 8192
extern "C" {
__device__ unsigned long long moe_trace[4 * TRACE_SLOTS];
#ifdef MOE_TRACE_BLOCKS
__device__ unsigned long long moe_trace_blk[3 * TRACE_BLOCKS * TRACE_SLOTS];
#endif
}
__device__ __forceinline__ unsigned long long trace_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned trace_block() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }
struct TraceScope {
  int slot;
  __device__ explicit TraceScope(int s) : slot(s) {
    if (threadIdx.x == 0) {
      const unsigned long long t = trace_now();
      atomicMin(&moe_trace[4 * s], t);
      atomicMax(&moe_trace[4 * s + 1], t);
#ifdef MOE_TRACE_BLOCKS
      const unsigned b = trace_block();
      if (b < TRACE_BLOCKS) {
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        unsigned long long* e = moe_trace_blk + 3 * ((unsigned long long)TRACE_BLOCKS * s + b);
        e[0] = 1ull << 63 | (unsigned long long)(sm & 0xff) << 48 | (unsigned long long)(blockIdx.y & 0xffffff) << 24 |
               (blockIdx.x & 0xffffff);
        e[1] = t;
      }
#endif
    }
  }
  __device__ ~TraceScope() {
    if (threadIdx.x % 32 == 0) {
      const unsigned long long t = trace_now();
      atomicMin(&moe_trace[4 * slot + 2], t);
      atomicMax(&moe_trace[4 * slot + 3], t);
#ifdef MOE_TRACE_BLOCKS
      const unsigned b = trace_block();
      if (b < TRACE_BLOCKS) atomicMax(moe_trace_blk + 3 * ((unsigned long long)TRACE_BLOCKS * slot + b) + 2, t);
#endif
    }
  }
};
#define TRACE_SCOPE(s) TraceScope trace_scope_(s)
// Steps inside a stage: moe_trace_step[2 · (TRACE_STEPS · slot + k)] and the word after it, the
// %globaltimer (ns) at which the first and the last block's thread 0 passed step k of stage slot
// (the host resets them as moe_trace's first and last times). dep is a value the step has
// produced: the branch on it makes thread 0 wait for that value (a load's, say) before it reads
// the timer; a dep of all ones skips the stamp (a block whose dep happens to be all ones, a NaN
// pattern or an XOR of two values, leaves that step unstamped: tracing only, the medians over
// blocks and replays take the others). The steps of each stage: the host's TraceSteps.
#define TRACE_STEPS 6
extern "C" {
__device__ unsigned long long moe_trace_step[2 * TRACE_STEPS * TRACE_SLOTS];
}
__device__ __forceinline__ void trace_step(int s, int k, unsigned dep) {
  if (threadIdx.x == 0 && dep != 0xffffffffu) {
    unsigned long long t;  // not moved above the memory operations before it
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    atomicMin(&moe_trace_step[2 * (TRACE_STEPS * s + k)], t);
    atomicMax(&moe_trace_step[2 * (TRACE_STEPS * s + k) + 1], t);
  }
}
#define TRACE_STEP(s, k, dep) trace_step(s, k, (unsigned)(dep))
#else
#define TRACE_SCOPE(s) ((void)0)
#define TRACE_STEP(s, k, dep) ((void)0)
#endif

// cp.async copies global -> shared (16 bytes bypassing L1, 4 bytes through it), by generic shared
// pointer or by shared-window address, and their commit groups.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem));
}
// The same 16-byte copy with an L2 eviction policy (l2_evict_first): for bytes a kernel reads
// once, so that streaming them does not push out of L2 what the next kernels and the next
// forward read again (their code, the tokens, the routing metadata).
__device__ __forceinline__ void cp_async16_pol(void* smem, const void* gmem, uint64_t pol) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)),
               "l"(gmem), "l"(pol));
}
// An L2 policy that marks every line it touches first to be evicted.
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  return pol;
}
// Zero, from an instruction the compiler cannot see through (the lane id shifted out), so that a
// value it is added to lives in a per-thread register.
__device__ __forceinline__ int opaque_zero() {
  unsigned l;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(l));
  return (int)(l >> 5);
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async16_s(uint32_t dst, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async4_s(uint32_t dst, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem));
}
// The device layout of the E8M0 block scales (the host's blockedScales): for weights viewed as
// E·N rows of Kd columns, (E·N/16, Kd/128, 16, 4): the byte of row R and 32-column block b is at
// ((R/16)·G + b/4)·64 + (R%16)·4 + b%4, G = Kd/128. A 16-row block's four scale bytes of a
// 128-column group are 64 contiguous bytes (so 16 or 128 consecutive rows' scales of a group take
// 2 or 16 sectors, where row-major takes one per row), and the block's groups follow each other.
// scale_row returns row R's word of group 0; group q's is 64·q bytes on.
__device__ __forceinline__ const u8* scale_row(const u8* Ws, i64 R, i64 G) { return Ws + (R >> 4) * G * 64 + (R & 15) * 4; }
// The byte of 32-column block b within a row's scale bytes from scale_row.
__device__ __forceinline__ i64 scale_blk(i64 b) { return (b >> 2) * 64 + (b & 3); }
// The device layout of the packed E2M1 codes (the host's blockedWeights), blocked the same way:
// for E·N rows of Kd/2 bytes, (E·N/16, Kd/128, 16, 64): the 64 bytes of row R's 128-column group
// q are at ((R/16)·G + q)·1024 + (R%16)·64. So a 16-row block's group is 1 KB contiguous (8
// whole 128-byte lines, where row-major spreads it over 16 half lines of 16 rows), and a 128-row
// block's group is 8 KB at a stride of G KB. weight_row returns row R's 64 bytes of group 0;
// group q's are 1024·q bytes on, and row R + 8's (R % 16 < 8) 512 bytes on.
__device__ __forceinline__ const u8* weight_row(const u8* W, i64 R, i64 G) { return W + (R >> 4) * G * 1024 + (R & 15) * 64; }
// The 16 bytes of 32-column block b within a row's bytes from weight_row.
__device__ __forceinline__ i64 weight_blk(i64 b) { return (b >> 2) * 1024 + (b & 3) * 16; }

// A hint: bytes (a multiple of 16) at p (16-byte aligned) into L2.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}
// A compile-time int as a value (to pass offsets and part numbers to generic lambdas).
template <int V>
struct Ic {
  static constexpr int value = V;
};

// f(Ic<0>{}), f(Ic<1>{}), ..., f(Ic<N - 1>{}), in that order, unrolled at compile time.
template <int N, int I = 0, class F>
__device__ __forceinline__ void static_for(F&& f) {
  if constexpr (I < N) {
    f(Ic<I>{});
    static_for<N, I + 1>(f);
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// E8M0 scale byte -> float: 2^(s-127), 2^-127 as a subnormal for s = 0, NaN for s = 255.
__device__ __forceinline__ float e8m0_to_float(unsigned s) {
  if (s == 0) return __int_as_float(0x00400000);
  if (s == 255) return __int_as_float(0x7fc00000);
  return __int_as_float(s << 23);
}

// Four E2M1 codes (the low 16 bits of p: element i in bits 4i..4i+3) -> four E4M3 bytes
// (element i in byte i). Every E2M1 value is exact in E4M3: the magnitude goes through an
// 8-entry byte table with a byte permute, the sign bit moves to bit 7 of its byte.
__device__ __forceinline__ uint32_t e2m1x4_to_e4m3x4(uint32_t p) {
  // magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 as E4M3 bytes
  const uint32_t lo = 0x3C383000u, hi = 0x4C484440u;
  uint32_t mag = __byte_perm(lo, hi, p & 0x7777u);
  uint32_t sgn = ((p & 0x8u) << 4) | ((p & 0x80u) << 8) | ((p & 0x800u) << 12) | ((p & 0x8000u) << 16);
  return mag | sgn;
}

// The device layout of the weights' E2M1 codes. Upload (moe_reencode) rearranges the bits of
// every aligned 32-bit word of a weight row, which holds 8 consecutive codes (code n in bits
// 4n..4n+3 as stored: magnitude in the low 3 bits, sign in the top one), so that the FP16
// expansion below takes fewer instructions: code n's magnitude goes to bits MAG(n)..MAG(n)+2
// and its sign to bit SGN(n), codes 4..7 at the positions of codes 0..3 plus 16:
//   n:    0   1   2   3
//   MAG:  9   6   0   3
//   SGN: 15  12  13  14
// Codes 0 and 4 then sit exactly where an f16x2 holds them (one AND), codes 1 and 5 one shift
// away (two instructions); codes 2, 6 and 3, 7 each take an AND that keeps their bits, one
// multiply that puts a copy of them at each of the two shifts they need, and an AND (the two
// copies share no bit but bit 20 of codes 3 and 7's, whose carry dies in bits 23 and 24, zero in
// both): 9 instructions a word instead of 16. Each pair depends only on the 8 bits its first
// AND (or its shift) keeps; all 2^32 words were checked against the stored codes (docs/perf.md,
// v44). Every kernel reads the weights through the helpers below.
#define E2M1_MAG_MASK 0x0FFF0FFFu  // the magnitude bits of a device word (nonzero test)

// Code n of a standard word -> its bits in a device word (moe_reencode).
__device__ __forceinline__ uint32_t e2m1_device_word(uint32_t s) {
  const int mag[4] = {9, 6, 0, 3}, sgn[4] = {15, 12, 13, 14};
  uint32_t d = 0;
#pragma unroll
  for (int n = 0; n < 8; n++) {
    const uint32_t c = (s >> (4 * n)) & 0xfu, off = n < 4 ? 0u : 16u;
    d |= (c & 7u) << (mag[n & 3] + off) | (c >> 3) << (sgn[n & 3] + off);
  }
  return d;
}

// Codes 4h..4h+3 of a device word, back in the stored 16-bit packing (code i in bits 4i..4i+3).
__device__ __forceinline__ uint32_t e2m1_std16(uint32_t w, int h) {
  const uint32_t x = w >> (16 * h);
  return ((x >> 9) & 0x7u) | ((x >> 12) & 0x8u) | ((x >> 2) & 0x70u) | ((x >> 5) & 0x80u) | ((x << 8) & 0x700u) |
         ((x >> 2) & 0x800u) | ((x << 9) & 0x7000u) | ((x << 1) & 0x8000u);
}

// m times the constant C in one 32-bit multiply (mul.lo), so that the compiler keeps it one
// instruction rather than splitting it into shifts and adds.
template <uint32_t C>
__device__ __forceinline__ uint32_t mul_lo(uint32_t m) {
  uint32_t r;
  asm("mul.lo.u32 %0, %1, %2;" : "=r"(r) : "r"(m), "n"(C));
  return r;
}

// Codes i and i+4 of a device word (i = 0..3) as an f16x2 (code i in the low half), each E2M1
// value v as v · 2^-14: the sign in bit 15, the 3 magnitude bits in the exponent's low bits and
// the mantissa's top bit (code 1, 0.5, lands on the subnormal 2^-15). Codes 2 and 6: magnitudes
// from bits 0 and 16 (× 2^9), signs from 13 and 29 (× 2^2); codes 3 and 7: magnitudes from 3 and
// 19 (× 2^6), signs from 14 and 30 (× 2^1).
template <int i>
__device__ __forceinline__ uint32_t e2m1_pair_f16(uint32_t w) {
  if constexpr (i == 0) return w & 0x8E008E00u;
  else if constexpr (i == 1) return (w << 3) & 0x8E008E00u;
  else if constexpr (i == 2) return mul_lo<(1u << 9) | (1u << 2)>(w & 0x20072007u) & 0x8E008E00u;
  else return mul_lo<(1u << 6) | (1u << 1)>(w & 0x40384038u) & 0x8E008E00u;
}

// The decode GEMM's token byte order: each 8-byte piece (elements 0..7 of its 8 columns) holds
// elements 0, 4, 1, 5, 2, 6, 3, 7, so that the pairs the MMA steps take, (0, 4), (1, 5), (2, 6)
// and (3, 7), are the 16-bit halves of its two words.
__device__ __forceinline__ uint2 dec_order8(uint32_t lo, uint32_t hi) {
  return make_uint2(__byte_perm(lo, hi, 0x5140), __byte_perm(lo, hi, 0x7362));
}
// A 16-byte piece (two 8-byte pieces) in the decode GEMM's byte order.
__device__ __forceinline__ uint4 dec_order16(uint4 v) {
  const uint2 lo = dec_order8(v.x, v.y), hi = dec_order8(v.z, v.w);
  return make_uint4(lo.x, lo.y, hi.x, hi.y);
}
// The low or high 16 bits of w (two E4M3 codes) as an f16x2, exact.
__device__ __forceinline__ uint32_t e4m3_lo_f16(uint32_t w) {
  uint32_t h;
  asm("{\n.reg .b16 l, u;\nmov.b32 {l, u}, %1;\ncvt.rn.f16x2.e4m3x2 %0, l;\n}" : "=r"(h) : "r"(w));
  return h;
}
__device__ __forceinline__ uint32_t e4m3_hi_f16(uint32_t w) {
  uint32_t h;
  asm("{\n.reg .b16 l, u;\nmov.b32 {l, u}, %1;\ncvt.rn.f16x2.e4m3x2 %0, u;\n}" : "=r"(h) : "r"(w));
  return h;
}

// The FP8 group scale: s = max(amax, 1e-10) / 448 in float32, rounded up to a power of two
// (exactly, from the bits) for ceil_ue8m0. NaN stays NaN.
__device__ __forceinline__ float group_scale(float amax, i64 fmt) {
  float s = (amax != amax ? amax : fmaxf(amax, 1e-10f)) / 448.0f;
  if (fmt == FMT_CEIL_UE8M0 && s == s) {
    uint32_t b = __float_as_uint(s);
    if (b & 0x7fffffu) b = ((b & 0x7f800000u) + 0x800000u) & 0x7f800000u;
    s = __uint_as_float(b);
  }
  return s;
}

// float -> FP8 e4m3fn: clamp to ±448, round to nearest even, NaN kept.
__device__ __forceinline__ u8 to_e4m3(float v) {
  return (u8)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Group-quantizes the 128 values a warp holds (4 per lane) to FP8: returns the group's scale
// (group_scale of the warp's largest magnitude) and the lane's 4 codes of v / s in *codes
// (value i in byte i).
__device__ __forceinline__ float quant_group(const float (&v)[4], i64 fmt, uint32_t* codes) {
  float amax = 0.f;
  bool nan = false;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    amax = fmaxf(amax, fabsf(v[i]));
    nan |= v[i] != v[i];
  }
  // fmaxf drops NaN; a group holding one has a NaN amax, hence a NaN scale and NaN codes.
  amax = warp_max(amax);
  if (__any_sync(0xffffffffu, nan)) amax = __int_as_float(0x7fc00000);
  const float s = group_scale(amax, fmt);
  uint32_t q = 0;
  // A power-of-two scale with a normal reciprocal (ceil_ue8m0 gives one): v · (1/s) is v / s
  // exactly, both being the rounding of the same exact value; otherwise the division.
  const uint32_t eb = __float_as_uint(s) >> 23;
  if (fmt == FMT_CEIL_UE8M0 && eb >= 1 && eb <= 253) {
    const float r = __uint_as_float((254u - eb) << 23);
#pragma unroll
    for (int i = 0; i < 4; i++) q |= (uint32_t)to_e4m3(v[i] * r) << (8 * i);
  } else {
#pragma unroll
    for (int i = 0; i < 4; i++) q |= (uint32_t)to_e4m3(v[i] / s) << (8 * i);
  }
  *codes = q;
  return s;
}

// The order of the wgmma GEMM's B operand (its tokens): each 128-column chunk of a row is 16
// pieces of 8 values; piece 2j + h, slot 2b + c holds column 32b + 8(j/2) + 2(j%2) + h + 4c of
// the chunk (k16 step j of the MMA, its K-core matrix h, the quad thread b that owns E8M0 block
// b of the weights). This order is called fp16_slot: column a = 32b + 8w + 4c + rr (rr < 4)
// of a chunk goes to index (piece · 8 + slot) = (4w + rr) · 8 + 2b + c. The permute and
// activation kernels write FP8 rows in this order (each computes the inverse mapping inline),
// so that 16 bytes expand to FP16 as one 16-byte row of a core matrix.
// 8 bytes of a chunk in fp16_slot order: for each 32-column block b, bytes rr and rr + 4 of the
// block's words 2w and 2w + 1 (x[b]), which hold columns 8w + rr and 8w + rr + 4; piece 2j + h of
// the chunk is the half with w = j/2, rr = 2(j%2) + h.
__device__ __forceinline__ uint2 fp16_slot_half(const uint2 (&x)[4], int rr) {
  uint32_t v[4];
#pragma unroll
  for (int b = 0; b < 4; b++) v[b] = __byte_perm(x[b].x, x[b].y, rr | ((rr + 4) << 4)) & 0xffffu;
  return make_uint2(v[0] | (v[1] << 16), v[2] | (v[3] << 16));
}
// Piece p (8 bytes) of an FP8 row in fp16_slot order, from the row as it is (src: its word pairs).
__device__ __forceinline__ uint2 fp16_slot_piece(const uint2* __restrict__ src, i64 p) {
  const i64 q = p >> 4;
  const int pj = (int)(p & 15), j = pj >> 1, h = pj & 1, w = j >> 1;
  uint2 x[4];
#pragma unroll
  for (int b = 0; b < 4; b++) x[b] = __ldg(src + q * 16 + b * 4 + w);  // words 2w, 2w + 1 of block b
  return fp16_slot_half(x, 2 * (j & 1) + h);
}
