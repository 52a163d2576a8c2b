// The elementwise maths of every step rule, written once: the C++ operator
// (src/fused_cpu.cc) and the CUDA entry points (src/fused_cuda.cu, mxnag/kernels/cuda.py)
// both call these bodies, on values in registers; how the states are stored (float32,
// float64, 8-bit codes with block scales: src/state_codes.h) is the drivers' business.
//
// A rule is a struct <name>_rule (the Python StepRule's name) with
//   kStates                    its states, in the order of the Python rule's `states`
//   MXNAG_SCALARS(LIST)        its scalars (the Python rule's `shared` + `per_tensor`,
//                              any order), as members of Coefs<S>
//   non_negative(s)            whether state s is never negative (the 8-bit storer keeps
//                              such a state as the code of its square root, unsigned)
//   step(c, grad, w, s)        one element: the raw gradient `grad`, the weight `w` and
//                              the states `s[0..kStates)` in, `w` and `s` updated in place.
// and is listed in MXNAG_RULES at the end. The host computes every step-dependent scalar;
// `clip_gradient` < 0 means no clipping. Self-contained: NVRTC gets no include paths, so
// cuda.py pastes this file into its source. MXNAG_HD is `__device__ __forceinline__` in
// CUDA, `inline` on the CPU.
#ifndef MXNAG_RULES_H_
#define MXNAG_RULES_H_

#ifndef MXNAG_HD
#define MXNAG_HD inline
#endif

// A rule's scalars from one X-macro list: the struct of their values, and on the CPU
// their names (the operator's attribute names) and the struct filled from doubles in
// the list's order.
#define MXNAG_COEF_MEMBER(name) S name;
#define MXNAG_COEF_NAME(name) #name,
#define MXNAG_COEF_FROM(name) c.name = S(values[k++]);
#ifdef MXNAG_CPU_OPERATOR
#define MXNAG_SCALARS(LIST)                                                        \
  template <typename S> struct Coefs { LIST(MXNAG_COEF_MEMBER) };                 \
  static constexpr const char* kScalarNames[] = {LIST(MXNAG_COEF_NAME)};          \
  static constexpr int kScalars = sizeof(kScalarNames) / sizeof(kScalarNames[0]); \
  template <typename S> static Coefs<S> from(const double* values) {             \
    Coefs<S> c;                                                                   \
    int k = 0;                                                                    \
    LIST(MXNAG_COEF_FROM)                                                         \
    return c;                                                                     \
  }
#else
#define MXNAG_SCALARS(LIST) \
  template <typename S> struct Coefs { LIST(MXNAG_COEF_MEMBER) };
#endif

// MXNet's clip: NaN passes through; a negative bound means no clipping.
template <typename S> MXNAG_HD S mxnag_clip(S x, S bound) {
  if (bound < S(0)) return x;
  return x > bound ? bound : (x < -bound ? -bound : x);
}

// AdaNAG (NAdam; NAdamW runs it with other scalars): mxnag/optim/adanag.py.
#define MXNAG_ADANAG_SCALARS(X)                                                      \
  X(rescale_grad) X(clip_gradient) X(beta1) X(beta2) X(epsilon) X(one_minus_beta1)   \
  X(one_minus_beta2) X(wd_into_grad) X(weight_scale) X(grad_coef) X(mean_coef) X(var_scale)
struct adanag_rule {
  static constexpr int kStates = 2;  // mean, var
  MXNAG_SCALARS(MXNAG_ADANAG_SCALARS)
  MXNAG_HD static constexpr bool non_negative(int s) { return s == 1; }
  template <typename S> MXNAG_HD static void step(const Coefs<S>& c, S grad, S& w, S* s) {
    S g = grad * c.rescale_grad;
    if (c.wd_into_grad != S(0)) g = g + w * c.wd_into_grad;
    g = mxnag_clip(g, c.clip_gradient);
    const S m = c.beta1 * s[0] + c.one_minus_beta1 * g;
    const S v = c.beta2 * s[1] + c.one_minus_beta2 * (g * g);
    const S denom = sqrt(v) * c.var_scale + c.epsilon;
    w = w * c.weight_scale - (c.grad_coef * g + c.mean_coef * m) / denom;
    s[0] = m;
    s[1] = v;
  }
};

// Adan: mxnag/optim/adan.py. first_step (1 or 0): the previous gradient is this one.
#define MXNAG_ADAN_SCALARS(X)                                                           \
  X(rescale_grad) X(clip_gradient) X(beta1) X(beta2) X(beta3) X(epsilon) X(first_step) \
  X(mean_coef) X(diff_coef) X(sq_scale) X(weight_scale) X(weight_divisor)              \
  X(one_minus_beta1) X(one_minus_beta2) X(one_minus_beta3)
struct adan_rule {
  static constexpr int kStates = 4;  // mean, diff_mean, sq_mean, prev_grad
  MXNAG_SCALARS(MXNAG_ADAN_SCALARS)
  MXNAG_HD static constexpr bool non_negative(int s) { return s == 2; }
  template <typename S> MXNAG_HD static void step(const Coefs<S>& c, S grad, S& w, S* s) {
    const S g = mxnag_clip(grad * c.rescale_grad, c.clip_gradient);
    const S diff = g - (c.first_step != S(0) ? g : s[3]);
    const S m = c.beta1 * s[0] + c.one_minus_beta1 * g;
    const S d = c.beta2 * s[1] + c.one_minus_beta2 * diff;
    const S u = g + c.beta2 * diff;
    const S sq = c.beta3 * s[2] + c.one_minus_beta3 * (u * u);
    const S denom = sqrt(sq) * c.sq_scale + c.epsilon;
    w = (w * c.weight_scale - (c.mean_coef * m + c.diff_coef * d) / denom) / c.weight_divisor;
    s[0] = m;
    s[1] = d;
    s[2] = sq;
    s[3] = g;
  }
};

// Every rule above: the CPU library registers mxnag_<name>_update for each.
#define MXNAG_RULES(X) X(adanag) X(adan)

#endif  // MXNAG_RULES_H_
