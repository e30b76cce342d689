// The one-token decode GEMM with its work handed out at run time, against moe_gemm_dec: a
// standalone program (not part of moe.fatbin) that times both on the same weights, each launched
// alone, and checks that they give the same sums. Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/dyn dyn_bench.cu && /tmp/dyn
// DYN_POOL_MB sets the weight pool the tiles rotate over (default 400 MB, several times L2).
//
// Why: at one token a tile the split kernels' grid is one wave, every block the same work, and the
// forward's stage timeline has their blocks end 5–13 µs apart (GPT-OSS-120B's GEMM1 at M = 1:
// 9.8–14.6 µs on an H200; DeepSeek-V3's 25.7–37.0; an SM's blocks end in the order they were
// placed), and a grid of one wave cannot hand the early finishers more work. Here a unit is 32
// weight rows of one tile over a chunk of about Q column groups, and a warp takes its units in
// one of five ways (`dynamic`): its stride (0), one counter (1), eight counters (2), a pool an SM
// with stealing (3), or a static range weighted by its block's launch round (4); its ring runs on
// from unit to unit (the next unit's first copies go out while the current one's last groups
// compute). Each unit writes its partial sums to its chunk's plane, in a fixed order of groups,
// so the planes, added in the order of their chunks by whatever reads them, do not depend on
// timing. The counters start at zero and the last warp to leave sets them back. main() runs
// 0, 3 and 4 (1 and 2 were measured by earlier versions of main; docs/perf.md has all five).
#include <string>

#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

#define DYN_WARPS 4
#define DYN_STAGES 3
#define DYN_SMEM (DYN_WARPS * (DYN_STAGES * (int)sizeof(DecStage) + 32 * 16))

// A unit's place: tile y's expert e and first row row0, its nvalid tokens, its first weight row nb
// (within the expert), its groups [q0, q1) and its chunk c.
struct DynUnit {
  int e, row0, nvalid, c, q0, q1;
  i64 nb;
};

// q = n / d for 0 <= n < 2^22 and 0 < d, from a float product and one correction each way.
__device__ __forceinline__ int dyn_div(int n, int d, float rd) {
  int q = (int)((float)n * rd);
  q -= q * d > n;
  q += (q + 1) * d <= n;
  return q;
}

// Unit u of T tiles of RBN 32-row blocks of C chunks each (u = (y · RBN + rb) · C + c); chunk c
// takes groups [c·G/C, (c+1)·G/C). rC, rRBN: 1/C and 1/RBN as floats.
__device__ __forceinline__ DynUnit dyn_unit(int u, const int* __restrict__ tiles, const int* __restrict__ counts, int RBN, int C,
                                            int G, float rC, float rRBN) {
  DynUnit d;
  const int b = dyn_div(u, C, rC), y = dyn_div(b, RBN, rRBN);
  d.c = u - b * C;
  d.e = tiles[2 * y] & DEC_EXPERT_MASK;
  d.row0 = tiles[2 * y + 1];
  d.nvalid = min(8, counts[d.e]);
  d.nb = 32 * (i64)(b - y * RBN);
  d.q0 = dyn_div(d.c * G, C, rC);
  d.q1 = dyn_div((d.c + 1) * G, C, rC);
  return d;
}

// grid: any number of blocks of DYN_WARPS warps (one wave: 4 an SM), DYN_SMEM bytes of dynamic
// shared memory. planes: C planes of rows × N floats, unit (y, rb, c)'s sums at plane c, rows
// row0 .. row0 + nvalid - 1, columns nb .. nb + 31. ctr: 256 ints, zero at launch (left zero).
// dynamic 0: warp w takes units w, w + nW, w + 2nW, ... (nW warps in the grid).
extern "C" __global__ void __launch_bounds__(DYN_WARPS * 32, 4)
moe_gemm_dyn(const u8* __restrict__ W, const u8* __restrict__ Ws, const u8* __restrict__ X, const float* __restrict__ Xs,
             const int* __restrict__ tiles, const int* __restrict__ counts, float* __restrict__ planes, int* __restrict__ ctr,
             i64 N, i64 Kd, i64 T, i64 C, i64 rows, i64 dynamic, unsigned long long* __restrict__ times, int nP,
             unsigned long long* __restrict__ ulog) {
  extern __shared__ __align__(128) u8 dyn_smem[];
  unsigned long long t_start = 0;
  if (times) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_start));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int G = (int)(Kd / MOE_GROUP), RBN = (int)(N / 32), U = (int)T * RBN * (int)C, nW = gridDim.x * DYN_WARPS;
  const int w0 = blockIdx.x * DYN_WARPS + warp;
  const float rC = 1.f / (float)C, rRBN = 1.f / (float)RBN;
  constexpr int D = DYN_STAGES, SZ = (int)sizeof(DecStage);
  DecStage* const st = reinterpret_cast<DecStage*>(dyn_smem) + warp * D;
  float4* const wsc = reinterpret_cast<float4*>(dyn_smem + DYN_WARPS * D * sizeof(DecStage)) + 32 * warp;
  u8* const dw = &st[0].w[lane >> 2][16 * ((lane & 3) ^ ((lane >> 3) & 3))];
  u8* const dx = &st[0].x[lane >> 3][16 * ((lane & 7) ^ (2 * ((lane >> 3) & 3)))];
  u8* const ds = lane < 8 ? &st[0].s[4 * lane][0] : reinterpret_cast<u8*>(&st[0].xs[max(lane - 16, 0)]);
  const int wo = 16 * ((g >> 1) & 3) + 4 * t, xo = 32 * (g & 3) + 8 * t;
  const i64 wblk = (i64)G * 1024;
  const uint64_t wpol = l2_evict_first();

  // The next unit: lane 0 asks the counter when the producer enters a unit (request) and the
  // warp reads the answer when it leaves it (take), at least two groups later.
  // dynamic 2: eight counters, 128 bytes apart, each handing out one stream of units (those of
  // u mod 8 = the warp's w0 mod 8; nW is a multiple of 8), so that no one address takes every
  // unit's atomic.
  // The answers are asked for two units ahead (pend, then pend2), so that a slow atomic has two
  // units' groups to come back in.
  // dynamic 3: a pool of units an SM (u mod nP = the pool; nP = the SMs), each with its counter,
  // the warp asking its own SM's pool; when that is empty, the warp reads the other pools'
  // counters, 32 at a time (a lane each), and takes from the first that has units left. Every
  // unit is handed out once whatever the placement; no unit is handed out before a claim, so
  // the first unit also comes from the pool.
  int pend = 0, pend2 = 0, k = 1;
  const int sid = dynamic == 2 ? w0 % 8 : 0;
  int pool = 0;
  if (dynamic == 3) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    pool = (int)(smid % (unsigned)nP);
  }
  auto psize = [&](int q) { return q < U ? (U - 1 - q) / nP + 1 : 0; };
  auto ask = [&]() -> int {
    if (dynamic == 1) return nW + atomicAdd(ctr, 1);
    if (dynamic == 2) return sid + 8 * (nW / 8 + atomicAdd(ctr + 32 * sid, 1));
    return pool + nP * atomicAdd(ctr + 32 * pool, 1);
  };
  auto request = [&] {
    if (dynamic && dynamic != 4 && lane == 0) {
      pend = pend2;
      pend2 = ask();
    }
  };
  // Warp-wide: a unit from another pool, or U when every pool is empty.
  auto steal = [&]() -> int {
    for (int base = 1; base <= nP; base += 32) {
      const int q = (pool + base + lane) % nP;
      const bool avail = base + lane <= nP && *reinterpret_cast<volatile int*>(ctr + 32 * q) < psize(q);
      unsigned m = __ballot_sync(0xffffffffu, avail);
      while (m) {
        const int q2 = __shfl_sync(0xffffffffu, q, __ffs(m) - 1);
        int v = 0;
        if (lane == 0) v = q2 + nP * atomicAdd(ctr + 32 * q2, 1);
        v = __shfl_sync(0xffffffffu, v, 0);
        if (v < U) {
          pool = q2;
          if (lane == 0) pend2 = ask();  // the next from the new pool
          return v;
        }
        m &= m - 1;
      }
    }
    return U;
  };
  // dynamic 4: a static range of consecutive units a warp, its length weighted by the place of
  // the warp's block in the launch order (round r = blockIdx.x / nP of the blocks the scheduler
  // puts on the SMs in turn; weights 1, 0.85, 0.73, 0.63 for rounds 0..3), so that the blocks an
  // SM holds, which end in the order they were placed when their work is equal, end together.
  int wend = 0;
  if (dynamic == 4) {
    // Integer weights, so that one warp's range ends exactly where the next one's begins.
    const long long wt[4] = {100, 85, 73, 63};
    const int per = nP * DYN_WARPS;  // warps a round
    long long total = 0, before = 0;
    for (int r = 0; r * per < nW; r++) {
      const int n = min(per, nW - r * per);
      const long long w = wt[min(r, 3)];
      if (w0 >= r * per && w0 < r * per + n) before = total + (long long)(w0 - r * per) * w;
      total += (long long)n * w;
    }
    const long long mine = wt[min(w0 / per, 3)];
    k = (int)((long long)U * before / total);
    wend = (int)((long long)U * (before + mine) / total);
  }
  auto take = [&]() -> int {
    if (dynamic == 4) return k < wend ? k++ : U;
    if (dynamic == 3) {
      const int v = __shfl_sync(0xffffffffu, pend, 0);
      return v < U ? v : steal();
    }
    if (dynamic) return __shfl_sync(0xffffffffu, pend, 0);
    return w0 + (k++) * nW;
  };

  // Producer: unit pu (P), next group pq; its lane's copy sources at group pq.
  int pu = w0;
  if (dynamic == 4) pu = take();
  if (dynamic == 3) {
    if (lane == 0) pend = ask();
    pu = take();
  }
  DynUnit P{};
  int pq = 0;
  const u8 *wq = nullptr, *sq = nullptr, *xq = nullptr;
  const float* xsq = nullptr;
  bool x0 = false, x1 = false, xs = false;
  auto enter = [&] {
    P = dyn_unit(pu, tiles, counts, RBN, (int)C, G, rC, rRBN);
    pq = P.q0;
    wq = weight_row(W, (i64)P.e * N + P.nb + (lane >> 2), G) + 16 * (lane & 3) + 1024 * (i64)pq;
    sq = scale_row(Ws, (i64)P.e * N + P.nb + 16 * ((lane >> 2) & 1), G) + 64 * (i64)pq + 16 * (lane & 3);
    xq = X + (P.row0 + (lane >> 3)) * Kd + 16 * (lane & 7) + MOE_GROUP * (i64)pq;
    xsq = Xs + (i64)(P.row0 + max(lane - 16, 0)) * G + pq;
    x0 = (lane >> 3) < P.nvalid, x1 = (lane >> 3) + 4 < P.nvalid, xs = lane >= 16 && lane - 16 < P.nvalid;
  };
  // One group's copies into slot o, entering the next unit first where the current one is done.
  auto produce = [&](int o) {
    if (pu < U && pq == P.q1) {
      pu = take();
      if (pu < U) {
        request();
        enter();
      }
    }
    if (pu < U) {
      cp_async16_pol(dw + o, wq, wpol);
      cp_async16_pol(dw + o + 8 * 64, wq + 512, wpol);
      cp_async16_pol(dw + o + 16 * 64, wq + wblk, wpol);
      cp_async16_pol(dw + o + 24 * 64, wq + wblk + 512, wpol);
      if (lane < 8) cp_async16_pol(ds + o, sq, wpol);
      if (x0) cp_async16(dx + o, xq);
      if (x1) cp_async16(dx + o + 4 * 128, xq + 4 * Kd);
      if (xs) cp_async4(ds + o, xsq);
      pq++;
      wq += 1024, sq += 64, xq += MOE_GROUP, xsq += 1;
    }
    cp_async_commit();
  };

  if (pu < U) {
    if (dynamic && dynamic != 4 && lane == 0) pend2 = ask();
    request();
    enter();
  }
  DynUnit Cu = P;  // the consumer's unit
  int cu = pu, cq = P.q0;
  int cur = 0, nxt = (D - 1) * SZ;
#pragma unroll
  for (int s = 0; s < D - 1; s++) produce(s * SZ);
  float acc[8] = {};
  unsigned long long ngroups = 0;
  int nunits = 0;
  while (cu < U) {
    ngroups++;
    produce(nxt);
    cp_async_wait<D - 1>();
    __syncwarp();
    const DecStage& d = *reinterpret_cast<const DecStage*>(reinterpret_cast<const u8*>(st) + cur);
    {
      const uint32_t w4 = *reinterpret_cast<const uint32_t*>(&d.s[lane][0]);
      wsc[lane] = make_float4(dec_scale<false>(w4, 0), dec_scale<false>(w4, 1), dec_scale<false>(w4, 2), dec_scale<false>(w4, 3));
    }
    __syncwarp();
    float4 sw[4];
#pragma unroll
    for (int q = 0; q < 4; q++) sw[q] = wsc[g + 8 * q];
    float part[8] = {};
#pragma unroll
    for (int b = 0; b < 4; b++) {
      uint32_t bf[2][2];
      e4m3_frags(*reinterpret_cast<const uint2*>(&d.x[g][xo ^ (32 * b)]), bf[0], bf[1]);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const uint32_t wa = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g][wo ^ (16 * b)]);
        const uint32_t wb = *reinterpret_cast<const uint32_t*>(&d.w[16 * h + g + 8][wo ^ (16 * b)]);
        block_mma(wa, wb, bf[0], bf[1], sw[2 * h], sw[2 * h + 1], b, &part[4 * h]);
      }
    }
    const float xs0 = d.xs[2 * t] * 16384.f, xs1 = d.xs[2 * t + 1] * 16384.f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      acc[4 * h + 0] += part[4 * h + 0] * xs0;
      acc[4 * h + 1] += part[4 * h + 1] * xs1;
      acc[4 * h + 2] += part[4 * h + 2] * xs0;
      acc[4 * h + 3] += part[4 * h + 3] * xs1;
    }
    __syncwarp();  // every lane is done with this slot before it is refilled
    cur = cur == (D - 1) * SZ ? 0 : cur + SZ;
    nxt = nxt == (D - 1) * SZ ? 0 : nxt + SZ;
    if (++cq == Cu.q1) {
      if (ulog && lane == 0 && nunits < 32) {
        unsigned long long t_u;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_u));
        // ns since the warp's start (the globaltimer itself needs more than 56 bits)
        ulog[32 * w0 + nunits] = (t_u - t_start) << 8 | (unsigned long long)(Cu.q1 - Cu.q0);
      }
      nunits++;
      // The unit's sums into its chunk's plane; the producer, two groups on, is in the next unit
      // (every unit has at least two groups), or past the last.
      float* const pl = planes + (Cu.c * rows + Cu.row0) * N + Cu.nb;
#pragma unroll
      for (int h = 0; h < 2; h++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = 2 * t + c;
          if (col < Cu.nvalid) {
            pl[col * N + 16 * h + g] = acc[4 * h + c];
            pl[col * N + 16 * h + g + 8] = acc[4 * h + 2 + c];
          }
        }
#pragma unroll
      for (int i = 0; i < 8; i++) acc[i] = 0.f;
      cu = pu;
      Cu = P;
      cq = P.q0;
    }
  }
  cp_async_wait<0>();
  if (times && lane == 0) {
    unsigned long long t_end;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_end));
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    times[4 * w0] = t_start, times[4 * w0 + 1] = t_end, times[4 * w0 + 2] = smid, times[4 * w0 + 3] = ngroups;
  }
  if (dynamic && dynamic != 4 && lane == 0) {
    __threadfence();
    if (atomicAdd(ctr + 1, 1) == nW - 1) {
      for (int i = 0; i < max(8, nP); i++) ctr[32 * i] = 0;
      ctr[1] = 0;
    }
  }
}

int main() {
  // The one-token GEMMs of the bench shapes at M = 1 (T tiles of one token), and the split the
  // host takes for each on the 32-row kernel.
  struct Shape {
    const char* name;
    i64 N, Kd;
    int T, S;
  };
  const std::vector<Shape> shapes = {{"gptoss-gemm1", 5888, 2944, 4, 2}, {"gptoss-gemm2", 2944, 2944, 4, 4},
                                     {"dsv3-gemm1", 4096, 7168, 8, 4},   {"dsv3-gemm2", 7168, 2048, 8, 2},
                                     {"qwen3-gemm1", 1536, 2048, 8, 4},  {"qwen3-gemm2", 2048, 768, 8, 4}};
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  allow_decode();
  CK(cudaFuncSetAttribute(moe_gemm_dyn, cudaFuncAttributeMaxDynamicSharedMemorySize, DYN_SMEM));
  int occ = 0;
  double copy_gbs = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, moe_gemm_dyn, DYN_WARPS * 32, DYN_SMEM));
  copy_gbs = copy_gbps();
  printf("copy %.0f GB/s; moe_gemm_dyn: %d blocks an SM, %d SMs\n", copy_gbs, occ, sms);
  // Variants: 0 moe_gemm_dec at split 2, 1 at split 4, then moe_gemm_dyn static / from the SMs'
  // pools at chunks of about 2 groups (2, 3), about 4 (4, 5), and static ranges weighted by the
  // launch order (6, 7). (Eight counters, dynamic 2, were measured in an earlier version.)
  // (One counter for all units, dynamic 1, was the slowest form; docs/perf.md.)
  const char* vname[8] = {"dec S2", "dec S4", "static q2", "pool q2", "static q4", "pool q4", "wtd q2", "wtd q4"};
  printf("%-13s %8s %8s %9s %8s %9s %8s %8s %8s  %s\n", "shape", vname[0], vname[1], vname[2], vname[3], vname[4], vname[5], vname[6], vname[7],
         "(µs, median; dyn's planes against dec S2: max |diff| / rms)");
  for (const Shape& sh : shapes) {
    const i64 N = sh.N, Kd = sh.Kd, G = Kd / 128;
    TilePool tp = make_pool(N, Kd, sh.T, 1, "DYN_POOL_MB");
    const i64 wbytes = tp.wbytes, sbytes = tp.sbytes, rows = tp.rows;
    const int pool = tp.pool, sets = tp.sets;
    u8 *const W = tp.W, *const Ws = tp.Ws, *const X = tp.X;
    float* const Xs = tp.Xs;
    int *const tiles = tp.tiles, *const counts = tp.counts, *const offs = tp.offs, *const nt = tp.nt;
    const int Cs[2] = {(int)std::max<i64>(1, G / 2), (int)std::max<i64>(1, G / 4)};
    float *out, *planes;
    int* ctr;
    CK(cudaMalloc(&out, rows * N * 4));
    CK(cudaMalloc(&planes, (size_t)Cs[0] * rows * N * 4));
    CK(cudaMalloc(&ctr, 32 * 4 * std::max(8, sms)));
    CK(cudaMemset(ctr, 0, 32 * 4 * std::max(8, sms)));
    unsigned long long *times, *ulog;
    bool timed = false, logged = false;
    CK(cudaMalloc(&ulog, (size_t)occ * sms * DYN_WARPS * 32 * 8));
    CK(cudaMalloc(&times, (size_t)occ * sms * DYN_WARPS * 32));
    auto run = [&](int v, int s) {
      if (v < 2) {
        launch_dec(tp, s, out, v == 0 ? 2 : 4);
      } else {
        const int C = Cs[v < 6 ? (v - 2) / 2 : v - 6], dyn = v < 6 ? 3 * ((v - 2) % 2) : 4;
        moe_gemm_dyn<<<occ * sms, DYN_WARPS * 32, DYN_SMEM>>>(W, Ws, X, Xs, tiles + s * 2 * sh.T, counts + s * pool, planes, ctr, N, Kd,
                                                              sh.T, C, rows, dyn, timed ? times : nullptr, sms, logged ? ulog : nullptr);
      }
    };
    // Check: each dyn variant's planes, added in chunk order, against dec S2's sums (set 0).
    double err[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    run(0, 0);
    CK(cudaDeviceSynchronize());
    std::vector<float> ho(rows * N);
    CK(cudaMemcpy(ho.data(), out, ho.size() * 4, cudaMemcpyDeviceToHost));
    for (int v = 2; v < 8; v++) {
      const int C = Cs[v < 6 ? (v - 2) / 2 : v - 6];
      CK(cudaMemset(planes, 0xff, (size_t)C * rows * N * 4));  // NaN: a sum a unit missed shows
      run(v, 0);
      CK(cudaDeviceSynchronize());
      std::vector<float> hp((size_t)C * rows * N);
      CK(cudaMemcpy(hp.data(), planes, hp.size() * 4, cudaMemcpyDeviceToHost));
      double mx = 0, ss = 0;
      for (int y = 0; y < sh.T; y++)
        for (i64 n = 0; n < N; n++) {
          float a = 0;
          for (int c = 0; c < C; c++) a += hp[((size_t)c * rows + 32 * y) * N + n];
          const double b = ho[(32 * y) * N + n];
          mx = std::max(mx, std::fabs((double)a - b));
          if (!(std::fabs((double)a - b) < 1e30)) mx = INFINITY;
          ss += b * b;
        }
      err[v] = mx / std::sqrt(ss / (sh.T * N));
    }
    const std::vector<double> med = time_variants(8, sets, run);
    // Every warp's span in one launch of each moe_gemm_dyn variant (after the timed rounds):
    // the warps' ends from the first start, percentiles 10 / 50 / 90 / 100, µs.
    std::string spans;
    timed = true;
    for (int v = 2; v < 8; v++) {
      run(v, 1 % sets);
      CK(cudaDeviceSynchronize());
      const int nw = occ * sms * DYN_WARPS;
      std::vector<unsigned long long> ht(4 * nw);
      CK(cudaMemcpy(ht.data(), times, ht.size() * 8, cudaMemcpyDeviceToHost));
      unsigned long long t0 = ~0ull;
      for (int i = 0; i < nw; i++) t0 = std::min(t0, ht[4 * i]);
      std::vector<double> ends(nw);
      for (int i = 0; i < nw; i++) ends[i] = (ht[4 * i + 1] - t0) * 1e-3;
      std::sort(ends.begin(), ends.end());
      char buf[160];
      snprintf(buf, sizeof buf, "  %s: %.1f/%.1f/%.1f/%.1f", vname[v], ends[nw / 10], ends[nw / 2], ends[9 * nw / 10], ends[nw - 1]);
      spans += buf;
    }
    // The SMs' rates (groups their warps computed over the warps' summed time) in six launches
    // of static q4, whose full grid gives every SM four blocks: their spread across SMs, and
    // whether the same SMs are fast in every launch (the correlation of each launch's rates with
    // the first's).
    {
      const int nw = occ * sms * DYN_WARPS;
      std::vector<std::vector<double>> rate;
      for (int l = 0; l < 6; l++) {
        run(4, 1 % sets);
        CK(cudaDeviceSynchronize());
        std::vector<unsigned long long> ht(4 * nw);
        CK(cudaMemcpy(ht.data(), times, ht.size() * 8, cudaMemcpyDeviceToHost));
        std::vector<double> g(sms, 0), tt(sms, 0);
        for (int i = 0; i < nw; i++) {
          const int sm = (int)ht[4 * i + 2];
          if (sm < sms && ht[4 * i + 3]) g[sm] += ht[4 * i + 3], tt[sm] += (ht[4 * i + 1] - ht[4 * i]) * 1e-3;
        }
        std::vector<double> r(sms);
        for (int m = 0; m < sms; m++) r[m] = tt[m] > 0 ? g[m] / tt[m] : 0;
        rate.push_back(r);
      }
      auto corr = [&](const std::vector<double>& a, const std::vector<double>& b) {
        double ma = 0, mb = 0;
        for (int m = 0; m < sms; m++) ma += a[m], mb += b[m];
        ma /= sms, mb /= sms;
        double sab = 0, saa = 0, sbb = 0;
        for (int m = 0; m < sms; m++) sab += (a[m] - ma) * (b[m] - mb), saa += (a[m] - ma) * (a[m] - ma), sbb += (b[m] - mb) * (b[m] - mb);
        return sab / std::sqrt(saa * sbb);
      };
      std::vector<double> r0 = rate[0];
      std::sort(r0.begin(), r0.end());
      printf("    static q4, SM rates (groups a warp-µs): min %.3f p10 %.3f p50 %.3f p90 %.3f max %.3f; correlation with launch 1:", r0[0],
             r0[sms / 10], r0[sms / 2], r0[9 * sms / 10], r0[sms - 1]);
      for (int l = 1; l < 6; l++) printf(" %.2f", corr(rate[0], rate[l]));
      printf("\n");
    }
    // An SM's rate against its active warps: one launch each of static q2 and q4 with every
    // unit's end logged; each unit's groups spread evenly over the time since the warp's previous
    // unit ended; per SM, the time with k warps active and the groups done in it; summed over
    // the SMs by k in 13-16, 9-12, 5-8, 1-4: groups an SM-µs.
    std::string krates;
    for (int v : {2, 4}) {
      const int nw = occ * sms * DYN_WARPS;
      CK(cudaMemset(ulog, 0, (size_t)nw * 32 * 8));
      logged = true;
      run(v, 1 % sets);
      CK(cudaDeviceSynchronize());
      logged = false;
      std::vector<unsigned long long> ht(4 * nw), hl((size_t)nw * 32);
      CK(cudaMemcpy(ht.data(), times, ht.size() * 8, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(hl.data(), ulog, hl.size() * 8, cudaMemcpyDeviceToHost));
      unsigned long long base = ~0ull;  // times from the first start, exact in a double
      for (int i = 0; i < nw; i++)
        if (ht[4 * i + 3]) base = std::min(base, ht[4 * i]);
      auto at = [&](unsigned long long t) { return (double)(t - base); };
      double gk[4] = {0, 0, 0, 0}, tk[4] = {0, 0, 0, 0};
      for (int m = 0; m < sms; m++) {
        std::vector<int> ws;
        for (int i = 0; i < nw; i++)
          if ((int)ht[4 * i + 2] == m && ht[4 * i + 3]) ws.push_back(i);
        std::vector<double> cuts;
        for (int i : ws) cuts.push_back(at(ht[4 * i])), cuts.push_back(at(ht[4 * i + 1]));
        std::sort(cuts.begin(), cuts.end());
        for (size_t c = 0; c + 1 < cuts.size(); c++) {
          const double a = cuts[c], b = cuts[c + 1];
          if (b <= a) continue;
          int k = 0;
          double g = 0;
          for (int i : ws) {
            if (at(ht[4 * i]) <= a && at(ht[4 * i + 1]) >= b) k++;
            double prev = at(ht[4 * i]);
            for (int j = 0; j < 32 && hl[32 * (size_t)i + j]; j++) {
              const double tj = at(ht[4 * i]) + (double)(hl[32 * (size_t)i + j] >> 8), gj = (double)(hl[32 * (size_t)i + j] & 0xff);
              const double lo = std::max(prev, a), hi = std::min(tj, b);
              if (hi > lo && tj > prev) g += gj * (hi - lo) / (tj - prev);
              prev = tj;
            }
          }
          if (k == 0) continue;
          const int bk = k > 12 ? 0 : k > 8 ? 1 : k > 4 ? 2 : 3;
          gk[bk] += g, tk[bk] += (b - a) * 1e-3;
        }
      }
      char buf[200];
      snprintf(buf, sizeof buf, "  %s: %.2f / %.2f / %.2f / %.2f (%.0f / %.0f / %.0f / %.0f SM-µs)", vname[v], tk[0] > 0 ? gk[0] / tk[0] : 0,
               tk[1] > 0 ? gk[1] / tk[1] : 0, tk[2] > 0 ? gk[2] / tk[2] : 0, tk[3] > 0 ? gk[3] / tk[3] : 0, tk[0], tk[1], tk[2], tk[3]);
      krates += buf;
    }
    timed = false;
    printf("%-13s %8.2f %8.2f %9.2f %8.2f %9.2f %8.2f %8.2f %8.2f  C=%d/%d, diffs %.1e %.1e %.1e %.1e %.1e %.1e; floor %.2f µs\n", sh.name,
           med[0], med[1], med[2], med[3], med[4], med[5], med[6], med[7], Cs[0], Cs[1], err[2], err[3], err[4], err[5], err[6], err[7],
           (double)(wbytes + sbytes) * sh.T / (copy_gbs * 1e3));
    printf("    warp ends (p10/p50/p90/max µs from the first start):%s\n", spans.c_str());
    printf("    an SM's groups a µs with 13-16 / 9-12 / 5-8 / 1-4 warps active (and the SM-µs spent so):%s\n", krates.c_str());
    cudaFree(out), cudaFree(planes), cudaFree(ctr), cudaFree(times), cudaFree(ulog);
    tp.release();
  }
  return 0;
}
