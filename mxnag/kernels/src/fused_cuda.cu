// Fused, single-pass AdaNAG and Adan updates for the GPU, compiled at run time by NVRTC
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
// This file holds one device function per algorithm (scalar type S: float, or double for
// float64 weights; G: the gradient's type, binary16 bits for float16 weights, whose
// float32 master weight is `weight` and whose float16 copy `weight16` is written in the
// same pass). The extern "C" __global__ entry points that call them, one per algorithm,
// dtype and number of tensors per launch (blockIdx.y picks the tensor), are appended by
// mxnag/kernels/cuda.py (source()), from the table its mx.rtc signatures come from.
//   adanag scalars: rescale_grad, clip_gradient (< 0: off), beta1, beta2, epsilon,
//                   wd_into_grad, weight_scale, grad_coef, mean_coef, var_scale
//   adan scalars:   rescale_grad, clip_gradient (< 0: off), beta1, beta2, beta3, epsilon,
//                   first_step (int), mean_coef, diff_coef, sq_scale, weight_scale,
//                   weight_divisor

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

// MXNet's clip: NaN passes through.
template <typename S>
__device__ __forceinline__ S mxnag_clip(S x, S bound) {
  return x > bound ? bound : (x < -bound ? -bound : x);
}

template <typename S, typename G, bool kHalfOut>
__device__ __forceinline__ void mxnag_adanag_body(
    const G* __restrict__ grad, S* __restrict__ weight, S* __restrict__ mean,
    S* __restrict__ var, mxnag_half_bits* __restrict__ weight16, S rescale_grad,
    S clip_gradient, S beta1, S beta2, S epsilon, S wd_into_grad, S weight_scale,
    S grad_coef, S mean_coef, S var_scale, long long n) {
  const S one_minus_beta1 = S(1) - beta1;  // in S: within one rounding of the CPU's double
  const S one_minus_beta2 = S(1) - beta2;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    S w = weight[i];
    S g = mxnag_load(grad, i) * rescale_grad;
    if (wd_into_grad != S(0)) g = g + w * wd_into_grad;
    if (clip_gradient >= S(0)) g = mxnag_clip(g, clip_gradient);
    w = w * weight_scale;
    const S m = beta1 * mean[i] + one_minus_beta1 * g;
    const S v = beta2 * var[i] + one_minus_beta2 * (g * g);
    const S denom = sqrt(v) * var_scale + epsilon;
    w = w - (grad_coef * g + mean_coef * m) / denom;
    mean[i] = m;
    var[i] = v;
    weight[i] = w;
    if (kHalfOut) weight16[i] = mxnag_round_half(float(w));
  }
}

template <typename S, typename G, bool kHalfOut>
__device__ __forceinline__ void mxnag_adan_body(
    const G* __restrict__ grad, S* __restrict__ weight, S* __restrict__ mean,
    S* __restrict__ diff_mean, S* __restrict__ sq_mean, S* __restrict__ prev_grad,
    mxnag_half_bits* __restrict__ weight16, S rescale_grad, S clip_gradient, S beta1,
    S beta2, S beta3, S epsilon, int first_step, S mean_coef, S diff_coef, S sq_scale,
    S weight_scale, S weight_divisor, long long n) {
  const S one_minus_beta1 = S(1) - beta1;
  const S one_minus_beta2 = S(1) - beta2;
  const S one_minus_beta3 = S(1) - beta3;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    S g = mxnag_load(grad, i) * rescale_grad;
    if (clip_gradient >= S(0)) g = mxnag_clip(g, clip_gradient);
    const S diff = g - (first_step ? g : prev_grad[i]);
    const S m = beta1 * mean[i] + one_minus_beta1 * g;
    const S d = beta2 * diff_mean[i] + one_minus_beta2 * diff;
    const S u = g + beta2 * diff;
    const S sq = beta3 * sq_mean[i] + one_minus_beta3 * (u * u);
    const S denom = sqrt(sq) * sq_scale + epsilon;
    S w = weight[i] * weight_scale;
    w = w - (mean_coef * m + diff_coef * d) / denom;
    w = w / weight_divisor;
    mean[i] = m;
    diff_mean[i] = d;
    sq_mean[i] = sq;
    prev_grad[i] = g;
    weight[i] = w;
    if (kHalfOut) weight16[i] = mxnag_round_half(float(w));
  }
}
