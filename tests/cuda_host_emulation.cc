// Runs mxnag/kernels/src/fused_cuda.cu on the CPU, for the tests on machines without a
// GPU: the CUDA keywords become plain C++, threadIdx/blockIdx/blockDim/gridDim are
// globals, and a launch runs every thread of the grid one after another (the kernels use
// no shared memory, barriers or warp functions, so the order does not matter). The two
// float16 conversions that are PTX instructions on the GPU are the exact software ones
// of half.h (round to nearest even, as cvt.rn.f16.f32).
//
// Exported: mxnag_emulated_kernels() (the kernel names, comma-separated) and
// mxnag_emulate_launch(name, grid, block, params), params as for cuLaunchKernel: one
// pointer to each argument's value. Returns 0, or -1 for an unknown name.
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

#include "fused_cuda.cu"

template <typename... A, std::size_t... I>
static void mxnag_call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
  kernel(*static_cast<A*>(params[I])...);
}

template <typename... A>
static void mxnag_emulate(void (*kernel)(A...), unsigned grid, unsigned block, void** params) {
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned t = 0; t < block; ++t) {
      blockIdx = {b, 0, 0};
      threadIdx = {t, 0, 0};
      mxnag_call(kernel, params, std::index_sequence_for<A...>{});
    }
  }
}

#define MXNAG_KERNELS(X) \
  X(mxnag_adanag_f32) X(mxnag_adanag_f64) X(mxnag_adanag_f16mp) \
  X(mxnag_adan_f32) X(mxnag_adan_f64) X(mxnag_adan_f16mp)

extern "C" const char* mxnag_emulated_kernels() {
#define MXNAG_NAME(kernel) #kernel ","
  return MXNAG_KERNELS(MXNAG_NAME);
#undef MXNAG_NAME
}

extern "C" int mxnag_emulate_launch(const char* name, unsigned grid, unsigned block,
                                    void** params) {
#define MXNAG_LAUNCH(kernel) \
  if (std::strcmp(name, #kernel) == 0) return mxnag_emulate(kernel, grid, block, params), 0;
  MXNAG_KERNELS(MXNAG_LAUNCH)
#undef MXNAG_LAUNCH
  return -1;
}
