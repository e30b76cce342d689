// The layer's kernels as one module (one fatbin); each stage's source is included here.
#include "prepare.cu"
#include "route.cu"
#include "gemm_fp8fp4.cu"
#include "gemm_wgmma.cu"
#include "activation.cu"
#include "reduce.cu"

// The launch constants the host code mirrors, in the order of layoutConsts (cudaops/layer_cuda.go):
// the host reads this table when it loads the module and refuses kernels built with other values.
// WG4_SMEM, WG4S_SMEM and WG4M_SMEM are -1 in the compute_90 PTX, which has no wgmma kernels.
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG4_SMEM (-1)
#define WG4S_SMEM (-1)
#define WG4M_SMEM (-1)
#endif
extern "C" __device__ const long long moe_layout[] = {
    MOE_BM,     GEMM_ROWS, ROUTE_THREADS, ROUTE_SMALL_THREADS, ROUTE_SMALL_PAIRS, WGF_ROWS, WGF_TOK,
    WGF_STAGES, WGF_PSMEM, DEC_WARPS, DEC_SMEM, DEC1_SMEM, DEC16_SMEM,
    DEC1W_SMEM, DECW_SMEM, ORDER_TRIGGER, DEC32_SMEM, WG4_ROWS, WG4_THREADS, WG4_SMEM,
    PS_THREADS, ROUTE_SHORT_TILE, DEC_HEAVY_ROW, DEC_HALF_SHIFT, DEC_ROWS_SHIFT, DEC16W_SMEM,
    WG4S_ROWS, WG4S_THREADS, WG4S_TOK, WG4S_SMEM, WG4M_ROWS, WG4M_THREADS, WG4M_TOK, WG4M_SMEM,
};
