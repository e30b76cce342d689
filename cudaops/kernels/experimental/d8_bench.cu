// A decode GEMM on FP8 wgmma with the weights as the A operand in registers, against the decode
// kernels: a standalone program (not part of moe.fatbin) that times both on weights of the same
// size and checks the new kernel against a float64 model of its own weight layout. Build and run
// on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/d8 d8_bench.cu && /tmp/d8
// D8_POOL_MB sets the weight pool the tiles rotate over (default 400 MB, several times L2).
//
// Why: the decode loops spend about 60 % of their instructions expanding E2M1 to FP16 (9 a 32-bit
// word) and are near their issue limit (docs/perf.md, v51 entry). The contract allows FP8 MMAs
// for GEMM2 (1.1-1.5e-4 rel. L2), and a weight layout of E4M3 codes expands at 5 instructions a
// word: four codes in bits 7, 4, 3, 2 of each byte (one AND gives four E4M3 codes of v·2^-6, exact),
// the other four in bits 5 (sign), 6, 1, 0 (two shifts, two LOP3). The layout here is the one that
// kernel would read: for a 16-row block and a 128-column group, row r's 64 bytes, thread t of a
// quad (t = lane % 4) owning bytes 16t .. 16t + 15: word b (32-column block b) holds codes
// 32b + 4t + i in its byte i's bits 7, 4, 3, 2 and 32b + 16 + 4t + i in bits 5, 6, 1, 0, which are
// the m64nNk32 A fragment's columns for that thread (registers a0/a1: 4t .. 4t + 3 of rows g and
// g + 8; a2/a3: 16 + 4t ..). Scales: the 16-row block's 4 E8M0 bytes a row and group, row-major
// (64 bytes), as scale_row's layout.
//
// d8: a block is S warpgroups over 64 weight rows of one tile; warpgroup s takes the groups q = s,
// s + S, ...; each warp's 16 rows, each thread two rows (g, g + 8). The tile's tokens (up to 8)
// sit in shared memory for the whole K as wgmma's B operand, K-major core matrices without
// swizzle (a 32-column block: two 8-token × 16-byte core matrices, 256 bytes). A group: two
// 16-byte loads of weights (a group ahead, in registers), two 4-byte loads of scales, the
// expansion, four k32 wgmma into fresh accumulators, one wait, then each block's sums times its
// weight scale into the group's partial sums and those times the tokens' group scales into the
// accumulators (the FP16 path's order of promotion). The warpgroups' sums are added in the order
// of s through shared memory.
#include <string>

#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

#define D8_MAXK 8192  // the largest K the tokens' shared memory holds (8 tokens)

__device__ __forceinline__ uint64_t d8_desc(const void* smem, unsigned lbo, unsigned sbo) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32);
}

// d = A (registers) × B (descriptor), m64n8k32, e4m3 × e4m3 → f32, overwriting d (scale-d false;
// d is also an input operand so that the compiler keeps its registers apart from A's: a wgmma
// whose accumulators share registers with its A operand is serialised, ptxas C7513).
__device__ __forceinline__ void d8_wgmma(float (&d)[4], const uint32_t (&a)[4], uint64_t bdesc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
#endif
}

// grid = (N / (64 · RB), tiles), block = 128 · S, dynamic shared memory: 8 · Kd bytes of
// tokens, 8 · G token scales, and S · 64 · RB · 8 floats of partial sums. RB: 16-row blocks a
// warp (one m64 wgmma each a k32 step, sharing the tokens' descriptors and scales); PF: groups
// whose weights are in flight in registers ahead of the one computed. The first PF groups'
// weights are requested before the tokens are staged.
template <int S, int RB, int PF>
__global__ void __launch_bounds__(128 * S) d8_gemm(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X,
                                                   const float* __restrict__ Xs, const int* __restrict__ tiles, float* __restrict__ out,
                                                   i64 N, i64 Kd) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) u8 d8_smem[];
  const i64 G = Kd / MOE_GROUP;
  u8* const tok = d8_smem;                                        // (Kd/32) blocks × 256 bytes
  float* const txs = reinterpret_cast<float*>(d8_smem + 8 * Kd);  // [8][G]
  float* const red = txs + 8 * G;                                 // [S][64 · RB rows][8]
  const int wt = tiles[2 * blockIdx.y], row0 = tiles[2 * blockIdx.y + 1];
  const int e = wt & DEC_EXPERT_MASK, rows = wt >> DEC_ROWS_SHIFT;
  const int tid = threadIdx.x, s = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const i64 rb0 = ((i64)blockIdx.x * 4 + warp) * RB;  // this warp's first 16-row block
  const u8* wrow = W + (((i64)e * (N / 16) + rb0) * G * 16 + g) * 64 + 16 * t;  // block rb0, row g, group 0
  const u8* srow = Ws + (((i64)e * (N / 16) + rb0) * G * 16 + g) * 4;
  const i64 wblk = G * 1024, sblk = G * 64;  // the next 16-row block
  uint4 wb[PF][RB][2];
  uint32_t sb[PF][RB][2];
  auto load = [&](auto u, i64 q) {
    constexpr int U = decltype(u)::value;
#pragma unroll
    for (int h = 0; h < RB; h++) {
      wb[U][h][0] = __ldcs(reinterpret_cast<const uint4*>(wrow + h * wblk + q * 1024));
      wb[U][h][1] = __ldcs(reinterpret_cast<const uint4*>(wrow + h * wblk + q * 1024 + 512));
      sb[U][h][0] = __ldcs(reinterpret_cast<const uint32_t*>(srow + h * sblk + q * 64));
      sb[U][h][1] = __ldcs(reinterpret_cast<const uint32_t*>(srow + h * sblk + q * 64 + 32));
    }
  };
  static_for<PF>([&](auto u) {
    if (s + u.value * S < G) load(u, s + u.value * S);
  });
  // The tile's tokens into the core-matrix layout: 16-byte piece c of token j (columns 16c ..)
  // to block c / 2's core matrix c % 2, row j.
  const int pieces = (int)(Kd / 16);
  for (int i = tid; i < rows * pieces; i += 128 * S) {
    const int j = i / pieces, c = i - j * pieces;
    const uint4 v = *reinterpret_cast<const uint4*>(X + (i64)(row0 + j) * Kd + 16 * c);
    *reinterpret_cast<uint4*>(tok + (c >> 1) * 256 + (c & 1) * 128 + j * 16) = v;
  }
  for (int i = tid; i < 8 * G; i += 128 * S) {
    const int j = (int)(i / G);
    txs[i] = j < rows ? Xs[(i64)(row0 + j) * G + (i - j * G)] * 64.f : 0.f;  // 2^6: the E4M3 codes' factor
  }
  __syncthreads();
  float acc[RB][4] = {};
  float d[RB][4][4] = {};  // the wgmmas' accumulators (overwritten by each)
  for (i64 q0 = s; q0 < G; q0 += (i64)S * PF) {
    static_for<PF>([&](auto u) {
      constexpr int U = decltype(u)::value;
      const i64 q = q0 + (i64)U * S;
      if (q < G) {
        uint32_t a[RB][4][4];
        uint32_t cs[RB][2];
#pragma unroll
        for (int h = 0; h < RB; h++) {
          const uint32_t cg[4] = {wb[U][h][0].x, wb[U][h][0].y, wb[U][h][0].z, wb[U][h][0].w};
          const uint32_t ch[4] = {wb[U][h][1].x, wb[U][h][1].y, wb[U][h][1].z, wb[U][h][1].w};
          cs[h][0] = sb[U][h][0], cs[h][1] = sb[U][h][1];
#pragma unroll
          for (int b = 0; b < 4; b++) {
            e4m3_layout_word(cg[b], a[h][b][0], a[h][b][2]);
            e4m3_layout_word(ch[b], a[h][b][1], a[h][b][3]);
            // computed before the fence: an instruction defining a wgmma's input inside its
            // pipeline stage serialises the wgmmas (ptxas C7513)
            asm volatile("" : "+r"(a[h][b][0]), "+r"(a[h][b][1]), "+r"(a[h][b][2]), "+r"(a[h][b][3]));
          }
        }
        if (q + (i64)S * PF < G) load(u, q + (i64)S * PF);
        uint64_t desc[4];
#pragma unroll
        for (int b = 0; b < 4; b++) {
          desc[b] = d8_desc(tok + (q * 4 + b) * 256, 128, 256);
          asm volatile("" : "+l"(desc[b]));  // likewise
        }
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int h = 0; h < RB; h++)
#pragma unroll
          for (int b = 0; b < 4; b++) d8_wgmma(d[h][b], a[h][b], desc[b]);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        // The accumulators are read only after the wait (an empty asm that takes them in and out).
#pragma unroll
        for (int h = 0; h < RB; h++)
#pragma unroll
          for (int b = 0; b < 4; b++)
            asm volatile("" : "+f"(d[h][b][0]), "+f"(d[h][b][1]), "+f"(d[h][b][2]), "+f"(d[h][b][3])::"memory");
        const float x0 = txs[(2 * t) * G + q], x1 = txs[(2 * t + 1) * G + q];
#pragma unroll
        for (int h = 0; h < RB; h++) {
          float p[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int b = 0; b < 4; b++) {
            const float s0 = __uint_as_float(((cs[h][0] >> (8 * b)) & 0xffu) << 23);
            const float s1 = __uint_as_float(((cs[h][1] >> (8 * b)) & 0xffu) << 23);
            p[0] += d[h][b][0] * s0;
            p[1] += d[h][b][1] * s0;
            p[2] += d[h][b][2] * s1;
            p[3] += d[h][b][3] * s1;
          }
          acc[h][0] += p[0] * x0;
          acc[h][1] += p[1] * x1;
          acc[h][2] += p[2] * x0;
          acc[h][3] += p[3] * x1;
        }
      }
    });
  }
  // The warpgroups' sums in the order of s: rows (warp · RB + h) · 16 + g (+8) of the block,
  // tokens 2t, 2t + 1.
  if (S > 1) {
    float* m = red + (s * 64 * RB) * 8;
#pragma unroll
    for (int h = 0; h < RB; h++) {
      const int r0 = (warp * RB + h) * 16 + g;
      m[r0 * 8 + 2 * t] = acc[h][0], m[r0 * 8 + 2 * t + 1] = acc[h][1];
      m[(r0 + 8) * 8 + 2 * t] = acc[h][2], m[(r0 + 8) * 8 + 2 * t + 1] = acc[h][3];
    }
    __syncthreads();
    if (s > 0) return;
#pragma unroll
    for (int h = 0; h < RB; h++) {
      const int r0 = (warp * RB + h) * 16 + g;
      acc[h][0] = acc[h][1] = acc[h][2] = acc[h][3] = 0.f;
      for (int k = 0; k < S; k++) {
        const float* mk = red + (k * 64 * RB) * 8;
        acc[h][0] += mk[r0 * 8 + 2 * t], acc[h][1] += mk[r0 * 8 + 2 * t + 1];
        acc[h][2] += mk[(r0 + 8) * 8 + 2 * t], acc[h][3] += mk[(r0 + 8) * 8 + 2 * t + 1];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < RB; h++) {
    const i64 n = (rb0 + h) * 16 + g;
#pragma unroll
    for (int c = 0; c < 2; c++) {
      if (2 * t + c < rows) {
        out[(i64)(row0 + 2 * t + c) * N + n] = acc[h][c];
        out[(i64)(row0 + 2 * t + c) * N + n + 8] = acc[h][2 + c];
      }
    }
  }
#endif
}

static double e4m3_value(u8 b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? m / 8.0 * std::ldexp(1.0, -6) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -v : v;
}
// Code value of the layout's 4 bits: sign, e1, e0, m0.
static double e2m1_bits(int s, int e1, int e0, int m0) {
  const int e = 2 * e1 + e0;
  const double v = e == 0 ? 0.5 * m0 : std::ldexp(1.0 + 0.5 * m0, e - 1);
  return s ? -v : v;
}

template <int S, int RB, int PF>
static void launch_d8(const TilePool& tp, int set, float* out) {
  const i64 G = tp.Kd / 128;
  const int smem = (int)(8 * tp.Kd + 8 * G * 4 + S * 64 * RB * 8 * 4);
  d8_gemm<S, RB, PF><<<dim3((unsigned)(tp.N / (64 * RB)), tp.T), 128 * S, smem>>>(tp.W, tp.Ws, tp.X, tp.Xs, tp.tiles + set * 2 * tp.T,
                                                                                  out, tp.N, tp.Kd);
}
template <int S, int RB, int PF>
static void allow_d8(int bytes) {
  CK(cudaFuncSetAttribute(d8_gemm<S, RB, PF>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

int main() {
  struct Shape {
    const char* name;
    i64 N, Kd;
    int T, tokens;
  };
  // GEMM2 of the bench shapes: M = 1 (T tiles of one token), M = 8 (about one token a tile over
  // the experts touched), and tiles of 8 tokens.
  const std::vector<Shape> shapes = {{"gptoss-g2 M=1", 2944, 2944, 4, 1},  {"gptoss-g2 M=8", 2944, 2944, 28, 1},
                                     {"gptoss-g2 8tok", 2944, 2944, 28, 8}, {"dsv3-g2 M=1", 7168, 2048, 8, 1},
                                     {"dsv3-g2 M=8", 7168, 2048, 56, 1},    {"qwen3-g2 M=1", 2048, 768, 8, 1},
                                     {"qwen3-g2 M=8", 2048, 768, 52, 1},    {"qwen3-g2 8tok", 2048, 768, 52, 8}};
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  allow_decode();
  const int maxsmem = (int)(8 * D8_MAXK + 8 * (D8_MAXK / 128) * 4 + 4 * 128 * 8 * 4);
  allow_d8<1, 1, 1>(maxsmem), allow_d8<2, 1, 1>(maxsmem), allow_d8<1, 1, 2>(maxsmem), allow_d8<2, 1, 2>(maxsmem);
  allow_d8<1, 2, 2>(maxsmem), allow_d8<2, 2, 2>(maxsmem);
  const double copy_gbs = copy_gbps();
  printf("copy %.0f GB/s, %d SMs\n", copy_gbs, sms);
  // Variants: the decode kernels (split 2 and 4 of the 32-row kernel, the 64-row split-1 one), then
  // d8 <S, RB, PF>.
  constexpr int NV = 9;
  const char* vname[NV] = {"dec S2", "dec S4", "dec1w", "d8 111", "d8 211", "d8 112", "d8 212", "d8 122", "d8 222"};
  printf("%-15s", "GEMM");
  for (int v = 0; v < NV; v++) printf(" %8s", vname[v]);
  printf("  (µs, median; d8 <S, RB, PF> against its float64 model: max |diff| / rms; floor)\n");
  for (const Shape& sh : shapes) {
    TilePool tp = make_pool(sh.N, sh.Kd, sh.T, sh.tokens, "D8_POOL_MB");
    const i64 N = sh.N, Kd = sh.Kd, G = Kd / 128, rows = tp.rows;
    float* out;
    CK(cudaMalloc(&out, rows * N * 4));
    auto run = [&](int v, int set) {
      if (v < 2) {
        launch_dec(tp, set, out, v == 0 ? 2 : 4);
      } else if (v == 2) {
        launch_dec1w(tp, set, out);
      } else if (v == 3) {
        launch_d8<1, 1, 1>(tp, set, out);
      } else if (v == 4) {
        launch_d8<2, 1, 1>(tp, set, out);
      } else if (v == 5) {
        launch_d8<1, 1, 2>(tp, set, out);
      } else if (v == 6) {
        launch_d8<2, 1, 2>(tp, set, out);
      } else if (v == 7) {
        launch_d8<1, 2, 2>(tp, set, out);
      } else {
        launch_d8<2, 2, 2>(tp, set, out);
      }
    };
    // Check: d8 (S = 1, 2, 4) on set 0 against the float64 model of the layout, tile 0's tokens.
    std::vector<u8> hw(tp.wbytes), hs(tp.sbytes), hx(rows * Kd);
    std::vector<float> hxs(rows * G);
    CK(cudaMemcpy(hw.data(), tp.W, tp.wbytes, cudaMemcpyDeviceToHost));  // expert 0 = set 0's tile 0
    CK(cudaMemcpy(hs.data(), tp.Ws, tp.sbytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hx.data(), tp.X, hx.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hxs.data(), tp.Xs, hxs.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<double> ref((size_t)sh.tokens * N);
    for (i64 n = 0; n < N; n++) {
      const i64 rb = n / 16, rr = n % 16;
      for (int j = 0; j < sh.tokens; j++) {
        double sum = 0;
        for (i64 q = 0; q < G; q++) {
          const u8* wrow = hw.data() + ((rb * G + q) * 16 + rr) * 64;
          const u8* srow = hs.data() + ((rb * G + q) * 16 + rr) * 4;
          double gsum = 0;
          for (int b = 0; b < 4; b++) {
            double bsum = 0;
            for (int t = 0; t < 4; t++)
              for (int i = 0; i < 4; i++) {
                const u8 byte = wrow[16 * t + 4 * b + i];
                const double va = e2m1_bits(byte >> 7 & 1, byte >> 4 & 1, byte >> 3 & 1, byte >> 2 & 1);
                const double vb = e2m1_bits(byte >> 5 & 1, byte >> 6 & 1, byte >> 1 & 1, byte & 1);
                const i64 ka = q * 128 + 32 * b + 4 * t + i, kb = ka + 16;
                bsum += va * e4m3_value(hx[(size_t)j * Kd + ka]) + vb * e4m3_value(hx[(size_t)j * Kd + kb]);
              }
            gsum += bsum * std::ldexp(1.0, (int)srow[b] - 127);
          }
          sum += gsum * hxs[(size_t)j * G + q];
        }
        ref[(size_t)j * N + n] = sum;
      }
    }
    double err[NV] = {};
    for (int v = 3; v < NV; v++) {
      CK(cudaMemset(out, 0xff, rows * N * 4));
      run(v, 0);
      CK(cudaDeviceSynchronize());
      std::vector<float> ho((size_t)sh.tokens * N);
      CK(cudaMemcpy(ho.data(), out, ho.size() * 4, cudaMemcpyDeviceToHost));  // tile 0: rows 0 ..
      double mx = 0, ss = 0;
      for (size_t i = 0; i < ref.size(); i++) {
        const double dd = std::fabs((double)ho[i] - ref[i]);
        mx = dd < 1e300 ? std::max(mx, dd) : INFINITY;
        ss += ref[i] * ref[i];
      }
      err[v] = mx / std::sqrt(ss / ref.size());
    }
    const std::vector<double> med = time_variants(NV, tp.sets, run);
    printf("%-15s", sh.name);
    for (int v = 0; v < NV; v++) printf(" %8.2f", med[v]);
    double emax = 0;
    for (int v = 3; v < NV; v++) emax = std::max(emax, err[v]);
    printf("  err <= %.1e; floor %.2f µs\n", emax, (double)(tp.wbytes + tp.sbytes) * sh.T / (copy_gbs * 1e3));
    cudaFree(out);
    tp.release();
  }
  return 0;
}
