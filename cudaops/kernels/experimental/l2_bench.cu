// The one-token decode GEMMs alone, their weights from HBM or from L2: a standalone program (not
// part of moe.fatbin) that times moe_gemm_dec on each bench shape's one-token tiles at the split
// the host picks for them, rotating over a pool of tile sets. With the default pool (400 MB,
// several times L2) every launch reads its weights from HBM; with L2B_POOL_MB=1 the pool is two
// sets, which for the smaller GEMMs (up to about 25 MB a set) stay in the 50 MB L2 between
// launches. The ratio of the two says whether a one-token GEMM's rate is bound on the memory's
// side (faster from L2) or on the SM's (the same). Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/l2b l2_bench.cu
//   /tmp/l2b; L2B_POOL_MB=1 /tmp/l2b
// It prints, per GEMM, the weight bytes of a set, the median µs of a launch and the weights' GB/s.
#include "../gemm_fp8fp4.cu"
#include "bench_setup.cuh"

int main() {
  struct Shape {
    const char* name;
    i64 N, Kd;
    int T, S;  // tiles of one token, split
  };
  // The one-token GEMMs (N rows of Kd columns, T experts) at the split the host picks on an H200.
  const Shape shapes[] = {{"gptoss-gemm1", 5760, 2944, 4, 2}, {"gptoss-gemm2", 2944, 2944, 4, 4},
                          {"dsv3-gemm1", 4096, 7168, 8, 4},   {"dsv3-gemm2", 7168, 2048, 8, 2},
                          {"qwen3-gemm1", 1536, 2048, 8, 4},  {"qwen3-gemm2", 2048, 768, 8, 2}};
  allow_decode();
  const char* env = getenv("L2B_POOL_MB");
  printf("copy %.0f GB/s, pool %s MB\n", copy_gbps(), env ? env : "400");
  printf("%-14s %9s %5s %9s %9s\n", "shape", "set MB", "sets", "dec us", "GB/s");
  for (const Shape& sh : shapes) {
    TilePool tp = make_pool(sh.N, sh.Kd, sh.T, 1, "L2B_POOL_MB");
    float* out;
    CK(cudaMalloc(&out, (size_t)tp.rows * sh.N * 4));
    const double bytes = (double)(tp.wbytes + tp.sbytes) * sh.T;
    const std::vector<double> us = time_variants(1, tp.sets, [&](int, int s) { launch_dec(tp, s, out, sh.S); });
    printf("%-14s %9.1f %5d %9.2f %9.0f\n", sh.name, bytes / 1e6, tp.sets, us[0], bytes / (us[0] * 1e-6) / 1e9);
    cudaFree(out);
    tp.release();
  }
  return 0;
}
