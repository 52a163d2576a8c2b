// Fused, single-pass optimizer updates for the GPU, compiled at run time by NVRTC
// (mx.rtc.CudaModule in mxnet-cu112; CuPy's RawModule in the tests; nvcc --ptx in CI).
//
// The maths is each optimizer's readable step (mxnag/optim/<name>.py) and src/fused_cpu.cc: the host
// computes every step-dependent coefficient; the update of a tensor reads each element of
// the gradient, weight and states once and writes the weight and states once (grid-stride
// loop). The step count lives on the device (mxnag_step_row): a step whose flag is 0
// writes nothing but the count. Self-contained on purpose: NVRTC gets no include paths, so float16 values travel
// as raw binary16 bits (the __half of the mx.rtc signatures) converted by PTX cvt
// instructions.
//
// The maths of each rule is its body in src/rules.h, the one the CPU operator runs; this
// file holds the loops around it (scalar type S: float, or double for float64 weights; G:
// the gradient's type, binary16 bits for float16 weights). The extern "C" __global__ entry
// points, one per rule, dtype, state format and number of tensors per launch (blockIdx.y
// picks the tensor), are appended by mxnag/kernels/cuda.py (source()), from the table its
// mx.rtc signatures come from: each fills the rule's Coefs by the scalars' names.

typedef unsigned short mxnag_half_bits;

__device__ __forceinline__ float mxnag_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ double mxnag_load(const double* p, long long i) { return p[i]; }
// tests/cuda_host_emulation.h runs this file on the CPU (no PTX there): it brings exact
// software conversions in place of these two.
#ifndef MXNAG_CUDA_HOST_EMULATION
__device__ __forceinline__ float mxnag_load(const mxnag_half_bits* p, long long i) {
  float value;
  asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(p[i]));
  return value;
}

__device__ __forceinline__ mxnag_half_bits mxnag_round_half(float value) {
  mxnag_half_bits bits;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
  return bits;
}
#endif

// A tensor's step count (float64, two slots): reads slot `slot` and writes the other with
// the count plus one if the step applies (flag != 0), else the count (one thread writes;
// no thread reads that slot in this launch). Returns the factor table's row of the new
// count (t - 1), or -1 when the step is skipped.
__device__ __forceinline__ long long mxnag_step_row(const float* flag, double* step, int slot,
                                                   long long table_rows) {
  const bool applies = *flag != 0.0f;
  const double count = step[slot] + (applies ? 1.0 : 0.0);
  if (blockIdx.x == 0 && threadIdx.x == 0) step[1 - slot] = count;
  if (!applies) return -1;
  const long long row = (long long)count - 1;
  return row < table_rows ? row : -1;  // the host sizes the table to the attempted steps
}

// The rules' bodies (src/rules.h) and the 8-bit codes (src/state_codes.h), pasted here by
// mxnag/kernels/cuda.py (NVRTC gets no include paths).
#define MXNAG_HD __device__ __forceinline__
#include "rules.h"
#include "state_codes.h"

// One tensor of a rule with states of type S (float32, float64; float32 for float16
// weights, whose float32 master weight is `weight` and whose float16 copy `weight16` is
// written in the same pass): grid-stride over its elements.
template <typename Rule, typename S, typename G, bool kHalfOut>
__device__ __forceinline__ void mxnag_update_full(
    const typename Rule::template Coefs<S>& c, const G* __restrict__ grad, S* __restrict__ weight,
    S* const* states, mxnag_half_bits* __restrict__ weight16, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    S s[Rule::kStates];
#pragma unroll
    for (int j = 0; j < Rule::kStates; ++j) s[j] = states[j][i];
    S w = weight[i];
    Rule::step(c, S(mxnag_load(grad, i)), w, s);
#pragma unroll
    for (int j = 0; j < Rule::kStates; ++j) states[j][i] = s[j];
    weight[i] = w;
    if (kHalfOut) weight16[i] = mxnag_round_half(float(w));
  }
}

// One tensor with 8-bit states (src/state_codes.h): a thread block (of MXNAG_CODE_BLOCK
// threads) per block of codes, grid-stride over them; each thread decodes its element's
// states, runs the body, writes the weight; the block's largest magnitude of each new
// state comes from an atomic maximum on the float bits in shared memory (non-negative
// floats order as their bits; a NaN's or an Inf's bits are the largest, so a block holding
// one gets a NaN scale, as on the CPU), then each thread writes its codes and thread 0 the
// scales. Every thread of a block takes the same path to each __syncthreads.
template <typename Rule, typename G, bool kHalfOut>
__device__ __forceinline__ void mxnag_update_coded(
    const typename Rule::template Coefs<float>& c, const G* __restrict__ grad,
    float* __restrict__ weight, unsigned char* const* codes, float* const* scales,
    mxnag_half_bits* __restrict__ weight16, long long n) {
  constexpr int K = Rule::kStates;
  __shared__ unsigned int largest[K];
  for (long long b = blockIdx.x; b * MXNAG_CODE_BLOCK < n; b += gridDim.x) {
    const long long i = b * MXNAG_CODE_BLOCK + threadIdx.x;
    const bool inside = i < n;
    if (threadIdx.x < K) largest[threadIdx.x] = 0u;
    __syncthreads();
    float stored[K];
    if (inside) {
      float s[K];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float scale = scales[j][b];
        if (Rule::non_negative(j)) {
          const float root = mxnag_root_code::decode(codes[j][i]) * scale;
          s[j] = root * root;
        } else {
          s[j] = mxnag_signed_code::decode(codes[j][i]) * scale;
        }
      }
      float w = weight[i];
      Rule::step(c, float(mxnag_load(grad, i)), w, s);
      weight[i] = w;
      if (kHalfOut) weight16[i] = mxnag_round_half(w);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        stored[j] = Rule::non_negative(j) ? sqrt(s[j]) : s[j];
        atomicMax(&largest[j], mxnag_float_bits(fabsf(stored[j])));
      }
    }
    __syncthreads();
    if (inside) {
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float top = Rule::non_negative(j) ? mxnag_root_code::top() : mxnag_signed_code::top();
        // a NaN or an Inf: the block reads NaN; below the smallest normal float: 0
        const bool nan = largest[j] >= 0x7f800000u;
        const bool zero = largest[j] < 0x00800000u;
        const float most = mxnag_bits_float(largest[j]);
        const float inverse = nan || zero ? 0.0f : top / most;
        codes[j][i] = (unsigned char)(Rule::non_negative(j)
                                          ? mxnag_root_code::encode(stored[j] * inverse)
                                          : mxnag_signed_code::encode(stored[j] * inverse));
        if (threadIdx.x == 0)
          scales[j][b] = nan ? mxnag_bits_float(0x7fc00000u) : (zero ? 0.0f : most / top);
      }
    }
    __syncthreads();  // `largest` is reset by the next block of codes
  }
}
