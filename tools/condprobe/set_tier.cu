// A kernel that sets a conditional handle, compiled relocatable and device-linked into a fatbin
// of its own (condprobe checks that the driver API loads it).
#include <cuda_runtime.h>
extern "C" __global__ void set_tier(cudaGraphConditionalHandle h, unsigned v) {
  if (threadIdx.x == 0) cudaGraphSetConditional(h, v);
}
