// Runs the CUDA source of mxnag.kernels.cuda.source() on the CPU, for the tests on
// machines without a GPU: the CUDA keywords become plain C++, threadIdx/blockIdx are
// per thread, blockDim/gridDim globals. A launch of a kernel without shared memory or
// barriers runs every thread of the grid one after another (the order does not matter);
// one of the 8-bit kernels (names with q8), which share memory within a block and wait at
// __syncthreads, runs a block's threads as real threads meeting at a barrier, through the
// blocks one after another (so a function's `static` stands for its `__shared__`). The two float16
// conversions that are PTX instructions on the GPU are the exact software ones of half.h
// (round to nearest even, as cvt.rn.f16.f32).
//
// Compiled with -I to a folder holding fused_cuda_all.cu (the source) and kernels.inc
// (one MXNAG_KERNEL(name) per entry point), written by the test.
// Exported: mxnag_emulated_kernels() (the kernel names, comma-separated) and
// mxnag_emulate_launch(name, grid_x, grid_y, block_x, params), params as for
// cuLaunchKernel: one pointer to each argument's value. Returns 0, or -1 for an unknown
// name.
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#define MXNAG_SOFT_HALF
#include "half.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

#define __shared__ static

struct MxnagDim3 {
  unsigned int x, y, z;
};
static thread_local MxnagDim3 threadIdx, blockIdx;
static MxnagDim3 blockDim, gridDim;
static std::barrier<>* mxnag_block_barrier = nullptr;

inline void __syncthreads() { mxnag_block_barrier->arrive_and_wait(); }

inline unsigned int atomicMax(unsigned int* address, unsigned int value) {
  unsigned int old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
  while (old < value &&
         !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

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
                          unsigned block, void** params, bool threads) {
  gridDim = {grid_x, grid_y, 1};
  blockDim = {block, 1, 1};
  if (threads) {  // one team of a block's threads, through the blocks one at a time
    std::barrier<> barrier(block);
    mxnag_block_barrier = &barrier;
    std::vector<std::thread> team;
    for (unsigned t = 0; t < block; ++t) {
      team.emplace_back([=, &barrier] {
        threadIdx = {t, 0, 0};
        for (unsigned y = 0; y < grid_y; ++y) {
          for (unsigned b = 0; b < grid_x; ++b) {
            blockIdx = {b, y, 0};
            mxnag_call(kernel, params, std::index_sequence_for<A...>{});
            barrier.arrive_and_wait();  // the block ends: its shared memory is the next one's
          }
        }
      });
    }
    for (std::thread& thread : team) thread.join();
    return;
  }
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
  if (std::strcmp(name, #kernel) == 0)                                                  \
    return mxnag_emulate(kernel, grid_x, grid_y, block, params, std::strstr(name, "q8") != nullptr), 0;
#include "kernels.inc"
#undef MXNAG_KERNEL
  return -1;
}
