// Fused, single-pass AdaNAG and Adan updates for the GPU, compiled at run time by NVRTC
// (mx.rtc.CudaModule in mxnet-cu112; CuPy's RawModule in the tests; nvcc --ptx in CI).
//
// The maths is the one of mxnag/kernels/composed.py and src/fused_cpu.cc: the host
// computes every step-dependent coefficient; a kernel reads each element of the gradient,
// weight and states once and writes the weight and states once (grid-stride loop).
// Self-contained on purpose: NVRTC gets no include paths, so float16 values travel as raw
// binary16 bits (the __half of the mx.rtc signatures) converted by PTX cvt instructions,
// and the kernels are extern "C" (no name mangling, no name expressions needed).
//
// Kernels (scalar type S is float, or double for the _f64 kernels):
//   mxnag_adanag_{f32,f64}(grad, weight, mean, var, <adanag scalars>, n)
//   mxnag_adanag_f16mp(grad16, weight32, mean, var, weight16, <adanag scalars>, n)
//   mxnag_adan_{f32,f64}(grad, weight, mean, diff_mean, sq_mean, prev_grad, <adan scalars>, n)
//   mxnag_adan_f16mp(grad16, weight32, mean, diff_mean, sq_mean, prev_grad, weight16, <adan scalars>, n)
// adanag scalars: rescale_grad, clip_gradient (< 0: off), beta1, beta2, epsilon,
//                 wd_into_grad, weight_scale, grad_coef, mean_coef, var_scale
// adan scalars:   rescale_grad, clip_gradient (< 0: off), beta1, beta2, beta3, epsilon,
//                 first_step (int), mean_coef, diff_coef, sq_scale, weight_scale, weight_divisor

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

#define MXNAG_ADANAG_SCALARS(S)                                                        \
  S rescale_grad, S clip_gradient, S beta1, S beta2, S epsilon, S wd_into_grad,       \
      S weight_scale, S grad_coef, S mean_coef, S var_scale, long long n
#define MXNAG_ADANAG_ARGS                                                              \
  rescale_grad, clip_gradient, beta1, beta2, epsilon, wd_into_grad, weight_scale,      \
      grad_coef, mean_coef, var_scale, n

extern "C" __global__ void mxnag_adanag_f32(const float* grad, float* weight, float* mean,
                                            float* var, MXNAG_ADANAG_SCALARS(float)) {
  mxnag_adanag_body<float, float, false>(grad, weight, mean, var, 0, MXNAG_ADANAG_ARGS);
}

extern "C" __global__ void mxnag_adanag_f64(const double* grad, double* weight, double* mean,
                                            double* var, MXNAG_ADANAG_SCALARS(double)) {
  mxnag_adanag_body<double, double, false>(grad, weight, mean, var, 0, MXNAG_ADANAG_ARGS);
}

extern "C" __global__ void mxnag_adanag_f16mp(const mxnag_half_bits* grad, float* weight,
                                              float* mean, float* var, mxnag_half_bits* weight16,
                                              MXNAG_ADANAG_SCALARS(float)) {
  mxnag_adanag_body<float, mxnag_half_bits, true>(grad, weight, mean, var, weight16,
                                                  MXNAG_ADANAG_ARGS);
}

#define MXNAG_ADAN_SCALARS(S)                                                          \
  S rescale_grad, S clip_gradient, S beta1, S beta2, S beta3, S epsilon, int first_step, \
      S mean_coef, S diff_coef, S sq_scale, S weight_scale, S weight_divisor, long long n
#define MXNAG_ADAN_ARGS                                                                \
  rescale_grad, clip_gradient, beta1, beta2, beta3, epsilon, first_step, mean_coef,    \
      diff_coef, sq_scale, weight_scale, weight_divisor, n

extern "C" __global__ void mxnag_adan_f32(const float* grad, float* weight, float* mean,
                                          float* diff_mean, float* sq_mean, float* prev_grad,
                                          MXNAG_ADAN_SCALARS(float)) {
  mxnag_adan_body<float, float, false>(grad, weight, mean, diff_mean, sq_mean, prev_grad, 0,
                                       MXNAG_ADAN_ARGS);
}

extern "C" __global__ void mxnag_adan_f64(const double* grad, double* weight, double* mean,
                                          double* diff_mean, double* sq_mean, double* prev_grad,
                                          MXNAG_ADAN_SCALARS(double)) {
  mxnag_adan_body<double, double, false>(grad, weight, mean, diff_mean, sq_mean, prev_grad, 0,
                                         MXNAG_ADAN_ARGS);
}

extern "C" __global__ void mxnag_adan_f16mp(const mxnag_half_bits* grad, float* weight,
                                            float* mean, float* diff_mean, float* sq_mean,
                                            float* prev_grad, mxnag_half_bits* weight16,
                                            MXNAG_ADAN_SCALARS(float)) {
  mxnag_adan_body<float, mxnag_half_bits, true>(grad, weight, mean, diff_mean, sq_mean,
                                                prev_grad, weight16, MXNAG_ADAN_ARGS);
}
