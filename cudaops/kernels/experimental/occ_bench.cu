// The one-token decode GEMMs at more warps an SM: moe_gemm_dec (4 blocks an SM, a three-stage
// ring, up to 128 registers) against moe_gemm_dec6 (the same loop at 6 blocks an SM: a two-stage
// ring and at most 80 registers), each at splits 2 and 4, and the 64-row split kernel
// (moe_gemm_decw) at split 2, on every bench shape's GEMM1 and GEMM2 of one token, alone,
// launched back to back over a weight pool several times L2. At one token the split kernels'
// warps are bound by their own dependency chains (about 0.47 instructions a scheduler cycle at
// 2.3 warps a scheduler, docs/perf.md v41), so more warps an SM may stream faster where a split
// puts more blocks on each SM than four; the two-stage ring and the register cap cost each warp
// instructions (the one-token loop 304 -> 323 a group with CUDA 12.4's ptxas). Checks each
// moe_gemm_dec6 result bitwise against moe_gemm_dec's at the same split (the same sums in the
// same order; only the ring's depth differs).
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/occ occ_bench.cu && /tmp/occ
// OCC_POOL_MB sets the weight pool (default 400 MB).
#include <cstring>
#include <string>

#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

int main() {
  struct Shape {
    const char* name;
    i64 N, Kd;
    int T;
  };
  const Shape shapes[] = {{"gptoss-gemm1", 5760, 2944, 4}, {"gptoss-gemm2", 2880, 2944, 4}, {"dsv3-gemm1", 4096, 7168, 8},
                          {"dsv3-gemm2", 7168, 2048, 8},   {"qwen3-gemm1", 1536, 2048, 8},  {"qwen3-gemm2", 2048, 768, 8}};
  allow_decode();
  CK(cudaFuncSetAttribute(moe_gemm_dec6, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC6_SMEM));
  CK(cudaFuncSetAttribute(moe_gemm_decw, cudaFuncAttributeMaxDynamicSharedMemorySize, DECW_SMEM));
  int sms = 0, occ4 = 0, occ6 = 0, occw = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ4, moe_gemm_dec, 128, DEC_SMEM));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ6, moe_gemm_dec6, 128, DEC6_SMEM));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occw, moe_gemm_decw, 128, DECW_SMEM));
  printf("copy %.0f GB/s; %d SMs; blocks an SM: dec %d (%d B), dec6 %d (%d B), decw %d\n", copy_gbps(), sms, occ4, DEC_SMEM, occ6,
         DEC6_SMEM, occw);
  printf("%-13s %8s %8s %8s %8s %8s   %-28s %s\n", "shape", "dec S2", "dec S4", "dec6 S2", "dec6 S4", "decw S2", "waves (4/SM S2 S4, 6/SM S2 S4)",
         "dec6 = dec");
  for (const Shape& sh : shapes) {
    TilePool tp = make_pool(sh.N, sh.Kd, sh.T, 1, "OCC_POOL_MB");
    float *o0, *o1;
    CK(cudaMalloc(&o0, tp.rows * sh.N * 4));
    CK(cudaMalloc(&o1, tp.rows * sh.N * 4));
    auto dec6 = [&](int set, float* out, int S) {
      moe_gemm_dec6<<<dim3((unsigned)(tp.N * S / 128), tp.T), 128, DEC6_SMEM>>>(
          tp.W, tp.Ws, tp.X, tp.Xs, tp.tiles + set * 2 * tp.T, tp.nt, tp.counts + set * tp.pool, tp.offs + set * tp.pool, nullptr, out,
          tp.N, tp.Kd, S, 0, 0, nullptr, nullptr, 0);
    };
    auto decw = [&](int set, float* out) {
      moe_gemm_decw<<<dim3((unsigned)(tp.N * 2 / 256), tp.T), 128, DECW_SMEM>>>(
          tp.W, tp.Ws, tp.X, tp.Xs, tp.tiles + set * 2 * tp.T, tp.nt, tp.counts + set * tp.pool, tp.offs + set * tp.pool, nullptr, out,
          tp.N, tp.Kd, 2, 0, 0, nullptr, nullptr, 0);
    };
    const bool wide = tp.N * 2 % 256 == 0;
    // Bitwise check on set 0 at both splits (every tile's token row).
    bool same = true;
    for (int S : {2, 4}) {
      CK(cudaMemset(o0, 0, tp.rows * sh.N * 4));
      CK(cudaMemset(o1, 0xff, tp.rows * sh.N * 4));
      launch_dec(tp, 0, o0, S);
      dec6(0, o1, S);
      CK(cudaDeviceSynchronize());
      std::vector<float> a(tp.rows * sh.N), b(tp.rows * sh.N);
      CK(cudaMemcpy(a.data(), o0, a.size() * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(b.data(), o1, b.size() * 4, cudaMemcpyDeviceToHost));
      for (int y = 0; y < sh.T; y++)
        if (memcmp(&a[(i64)32 * y * sh.N], &b[(i64)32 * y * sh.N], sh.N * 4)) same = false;
    }
    auto run = [&](int v, int set) {
      switch (v) {
        case 0: launch_dec(tp, set, o0, 2); break;
        case 1: launch_dec(tp, set, o0, 4); break;
        case 2: dec6(set, o1, 2); break;
        case 3: dec6(set, o1, 4); break;
        default:
          if (wide) decw(set, o0);
      }
    };
    const std::vector<double> m = time_variants(5, tp.sets, run);
    auto waves = [&](int S, int per) { return (double)(sh.N * S / 128 * sh.T) / (per * sms); };
    char wv[64];
    snprintf(wv, sizeof wv, "%.2f %.2f, %.2f %.2f", waves(2, occ4), waves(4, occ4), waves(2, occ6), waves(4, occ6));
    printf("%-13s %8.2f %8.2f %8.2f %8.2f %8s   %-28s %s\n", sh.name, m[0], m[1], m[2], m[3],
           wide ? std::to_string(m[4]).substr(0, 5).c_str() : "-", wv, same ? "yes" : "NO");
    cudaFree(o0), cudaFree(o1);
    tp.release();
  }
  return 0;
}
