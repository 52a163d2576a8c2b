// Runs the CUDA source of mxnag.kernels.cuda.source() on the CPU, for the tests on
// machines without a GPU: the CUDA keywords become plain C++, threadIdx/blockIdx/
// blockDim/gridDim are globals, and a launch runs every thread of the grid one after
// another (the kernels use no shared memory, barriers or warp functions, so the order
// does not matter). The two float16 conversions that are PTX instructions on the GPU are
// the exact software ones of half.h (round to nearest even, as cvt.rn.f16.f32).
//
// Compiled with -I to a folder holding fused_cuda_all.cu (the source) and kernels.inc
// (one MXNAG_KERNEL(name) per entry point), written by the test.
// Exported: mxnag_emulated_kernels() (the kernel names, comma-separated) and
// mxnag_emulate_launch(name, grid_x, grid_y, block_x, params), params as for
// cuLaunchKernel: one pointer to each argument's value. Returns 0, or -1 for an unknown
// name.
#include <cmath>
#include <cstring>
#include <utility>

#define MXNAG_SOFT_HALF
#include "half.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

struct MxnagDim3 {
  unsigned int x, y, z;
};
static MxnagDim3 threadIdx, blockIdx, blockDim, gridDim;

using std::sqrt;

#define MXNAG_CUDA_HOST_EMULATION
inline float mxnag_load(const unsigned short* p, long long i) { return mxnag::half_to_float(p[i]); }
inline unsigned short mxnag_round_half(float value) { return mxnag::float_to_half(value); }

#include "fused_cuda_all.cu"

template <typename... A, std::size_t... I>
static void mxnag_call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
  kernel(*static_cast<A*>(params[I])...);
}

template <typename... A>
static void mxnag_emulate(void (*kernel)(A...), unsigned grid_x, unsigned grid_y,
                          unsigned block, void** params) {
  gridDim = {grid_x, grid_y, 1};
  blockDim = {block, 1, 1};
  for (unsigned y = 0; y < grid_y; ++y) {
    for (unsigned b = 0; b < grid_x; ++b) {
      for (unsigned t = 0; t < block; ++t) {
        blockIdx = {b, y, 0};
        threadIdx = {t, 0, 0};
        mxnag_call(kernel, params, std::index_sequence_for<A...>{});
      }
    }
  }
}

extern "C" const char* mxnag_emulated_kernels() {
#define MXNAG_KERNEL(kernel) #kernel ","
  return
#include "kernels.inc"
      "";
#undef MXNAG_KERNEL
}

extern "C" int mxnag_emulate_launch(const char* name, unsigned grid_x, unsigned grid_y,
                                    unsigned block, void** params) {
#define MXNAG_KERNEL(kernel) \
  if (std::strcmp(name, #kernel) == 0) return mxnag_emulate(kernel, grid_x, grid_y, block, params), 0;
#include "kernels.inc"
#undef MXNAG_KERNEL
  return -1;
}
