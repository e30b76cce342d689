// The layer's kernels as one module (one fatbin); each stage's source is included here.
#include "prepare.cu"
#include "route.cu"
#include "gemm_fp8fp4.cu"
#include "gemm_wgmma.cu"
#include "activation.cu"
#include "reduce.cu"
