// Fused, single-pass AdaNAG and Adan updates as MXNet extension-library operators.
//
// Each operator updates a group of parameters in one call (one tensor is a group of one):
// it reads every element of the weight, gradient and states once and writes the weight
// and states once, over all cores (see HelperPool), in loops the compiler vectorises. The maths
// is the readable step of each optimizer (mxnag/optim/<name>.py, its StepRule); every step-dependent coefficient is computed
// in double precision on the host and arrives as an attribute (Python repr of a float).
//
// Operators (inputs per parameter, in order; outputs: the weights, passed as out=):
//   mxnag_adanag_update  weight, grad, mean, var            [, weight32 if multi_precision]
//   mxnag_adan_update    weight, grad, mean, diff_mean, sq_mean, prev_grad [, weight32]
//   mxnag_all_finite     n arrays (float16/32/64) -> float32[1]: 1 if every element of
//                        every array is finite, else 0 (the step flag, in one threaded
//                        pass: MXNet's multi_all_finite takes ~4 ms for 100k floats here)
//   mxnag_probe          any -> int32[3]: omp_get_max_threads() seen inside MXNet's engine,
//                        the threads these operators use, omp_get_num_procs()
// After the inputs of every parameter come, for the whole group: the step flag (float32,
// one element: 0 skips the step), the table of step factors (float64, row t - 1: the
// factors at step t of the scalars named in the attribute 'step_scalars'), and each
// parameter's step count (float64, two slots: 'step_slot' names the one read, the other
// is written with the count plus one if the step applies). A skipped step writes nothing
// else; an applied one multiplies each step scalar (its attribute is a multiplier, the
// learning rate say) by its factor at the new count.
// States, step counts (and the float32 master weight) are declared mutated inputs, so
// MXNet's engine orders these operators with every other reader and writer of them.
#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "half.h"
#include "attrs.h"
#include "lib_api.h"
#include "threads.h"

using mxnet::ext::MXTensor;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;
using mxnet::ext::kFloat16;
using mxnet::ext::kFloat32;
using mxnet::ext::kFloat64;
using mxnet::ext::kInt32;
using mxnag::Attrs;
using mxnag::double_attr;
using mxnag::dtype_name;
using mxnag::find_attr;
using mxnag::for_each_span;
using mxnag::int_attr;
using mxnag::list_attr;
using mxnag::thread_budget;

namespace {

typedef std::vector<std::vector<unsigned int>> Shapes;

// What every update operator shares: the group size and whether float16 weights come
// with float32 master weights (the last input of each parameter).
struct GroupLayout {
  int num_weights = 0;
  bool multi_precision = false;
  int inputs_per_weight = 0;  // with the master weight
  // the group's inputs after the parameters': flag, table, then one step count per weight
  int flag_input() const { return num_weights * inputs_per_weight; }
  int table_input() const { return flag_input() + 1; }
  int step_input(int k) const { return flag_input() + 2 + k; }
  int num_inputs() const { return flag_input() + 2 + num_weights; }
};

bool parse_layout(const Attrs& attrs, int states, GroupLayout* layout) {
  int mp = 0;
  if (!int_attr(attrs, "num_weights", 1, &layout->num_weights)) return false;
  if (!int_attr(attrs, "multi_precision", 0, &mp) || mp > 1) {
    if (mp > 1) MX_ERROR_MSG << "mxnag: attribute 'multi_precision' must be 0 or 1";
    return false;
  }
  layout->multi_precision = mp == 1;
  layout->inputs_per_weight = 2 + states + (layout->multi_precision ? 1 : 0);
  return true;
}

// ---------------------------------------------------------------------------------------
// shared parse/infer callbacks of the update operators (templated on the state count)

template <int kStates>
MXReturnValue parse_update_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  GroupLayout layout;
  if (!parse_layout(attrs, kStates, &layout)) return MX_FAIL;
  *num_in = layout.num_inputs();
  *num_out = layout.num_weights;
  return MX_SUCCESS;
}

// float32 and float64 weights keep states of their own type; float16 weights need
// multi_precision (float32 states and master weight). Refused otherwise: the kernels
// read raw memory, and MXNet does not check dtypes of extension operators itself.
template <int kStates>
MXReturnValue infer_update_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  GroupLayout layout;
  if (!parse_layout(attrs, kStates, &layout)) return MX_FAIL;
  for (int k = 0; k < layout.num_weights; ++k) {
    const int base = k * layout.inputs_per_weight;
    const int weight = in->at(base);
    // one element type per call: the forward pass reads the whole group as the first
    // weight's type
    if (weight != in->at(0)) {
      MX_ERROR_MSG << "mxnag: weight " << k << " is " << dtype_name(weight) << ", weight 0 "
                   << dtype_name(in->at(0)) << "; one fused update call takes weights of one dtype";
      return MX_FAIL;
    }
    if (layout.multi_precision != (weight == kFloat16) ||
        (weight != kFloat16 && weight != kFloat32 && weight != kFloat64)) {
      MX_ERROR_MSG << "mxnag: weight " << k << " is " << dtype_name(weight) << " with multi_precision="
                   << layout.multi_precision << "; the fused update takes float32 or float64 weights, "
                   << "or float16 weights with multi_precision=1";
      return MX_FAIL;
    }
    const int state = layout.multi_precision ? kFloat32 : weight;
    if (in->at(base + 1) != weight) {
      MX_ERROR_MSG << "mxnag: gradient " << k << " is " << dtype_name(in->at(base + 1))
                   << ", its weight " << dtype_name(weight);
      return MX_FAIL;
    }
    for (int s = 2; s < layout.inputs_per_weight; ++s) {
      if (in->at(base + s) != state) {
        MX_ERROR_MSG << "mxnag: input " << s << " (a state) of weight " << k << " is "
                     << dtype_name(in->at(base + s)) << ", expected " << dtype_name(state);
        return MX_FAIL;
      }
    }
    out->at(k) = weight;
  }
  if (in->at(layout.flag_input()) != kFloat32 || in->at(layout.table_input()) != kFloat64) {
    MX_ERROR_MSG << "mxnag: the step flag must be float32 and the step-factor table float64, got "
                 << dtype_name(in->at(layout.flag_input())) << " and "
                 << dtype_name(in->at(layout.table_input()));
    return MX_FAIL;
  }
  for (int k = 0; k < layout.num_weights; ++k) {
    if (in->at(layout.step_input(k)) != kFloat64) {
      MX_ERROR_MSG << "mxnag: the step count of weight " << k << " must be float64, got "
                   << dtype_name(in->at(layout.step_input(k)));
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

template <int kStates>
MXReturnValue infer_update_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  GroupLayout layout;
  if (!parse_layout(attrs, kStates, &layout)) return MX_FAIL;
  for (int k = 0; k < layout.num_weights; ++k) {
    const int base = k * layout.inputs_per_weight;
    for (int s = 1; s < layout.inputs_per_weight; ++s) {
      if (in->at(base + s) != in->at(base)) {
        MX_ERROR_MSG << "mxnag: input " << s << " of weight " << k
                     << " does not have the weight's shape";
        return MX_FAIL;
      }
    }
    out->at(k) = in->at(base);
  }
  const auto& flag = in->at(layout.flag_input());
  const auto& table = in->at(layout.table_input());
  if (flag.size() != 1 || flag[0] != 1 || table.size() != 2 || table[0] < 1) {
    MX_ERROR_MSG << "mxnag: the step flag must have shape (1,) and the step-factor table two "
                 << "dimensions with at least one row";
    return MX_FAIL;
  }
  for (int k = 0; k < layout.num_weights; ++k) {
    const auto& step = in->at(layout.step_input(k));
    if (step.size() != 1 || step[0] != 2) {
      MX_ERROR_MSG << "mxnag: the step count of weight " << k << " must have shape (2,)";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

// The states and the master weight are updated in place: inputs 2.. of every parameter.
template <int kStates>
MXReturnValue mutated_update_inputs(const Attrs& attrs, std::vector<int>* indices) {
  GroupLayout layout;
  if (!parse_layout(attrs, kStates, &layout)) return MX_FAIL;
  for (int k = 0; k < layout.num_weights; ++k)
    for (int s = 2; s < layout.inputs_per_weight; ++s)
      indices->push_back(k * layout.inputs_per_weight + s);
  for (int k = 0; k < layout.num_weights; ++k) indices->push_back(layout.step_input(k));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// element-wise maths

// MXNet's clip: NaN passes through (bound = +inf when clipping is off).
template <typename S> inline S clip(S x, S bound) {
  return x > bound ? bound : (x < -bound ? -bound : x);
}

template <typename S> S clip_bound(double clip_gradient) {
  return clip_gradient >= 0 ? static_cast<S>(clip_gradient) : static_cast<S>(INFINITY);
}

// AdaNAG scalars of one parameter, in the arithmetic type S.
template <typename S> struct AdanagCoefs {
  S rescale, clip, beta1, one_minus_beta1, beta2, one_minus_beta2, epsilon;
  S wd_into_grad, weight_scale, grad_coef, mean_coef, var_scale;
};

// One AdaNAG step over [0, n) of one parameter (its master weight under multi_precision).
// Without clipping (kClip false) the clip's two comparisons leave the loop.
template <typename S, bool kWdIntoGrad, bool kClip>
void adanag_span(const AdanagCoefs<S>& c, int64_t n, const S* __restrict grad,
                 S* __restrict w, S* __restrict mean, S* __restrict var) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    S wi = w[i];
    S g = grad[i] * c.rescale;
    if (kWdIntoGrad) g = g + wi * c.wd_into_grad;
    if (kClip) g = clip(g, c.clip);
    const S m = c.beta1 * mean[i] + c.one_minus_beta1 * g;
    const S v = c.beta2 * var[i] + c.one_minus_beta2 * (g * g);
    mean[i] = m;
    var[i] = v;
    const S denom = std::sqrt(v) * c.var_scale + c.epsilon;
    w[i] = wi * c.weight_scale - (c.grad_coef * g + c.mean_coef * m) / denom;
  }
}

// Adan scalars of one parameter.
template <typename S> struct AdanCoefs {
  S rescale, clip, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3;
  S epsilon, mean_coef, diff_coef, sq_scale, weight_scale, weight_divisor;
};

// One Adan step over [0, n); on the first step the previous gradient is the current one.
template <typename S, bool kFirstStep>
void adan_span(const AdanCoefs<S>& c, int64_t n, const S* __restrict grad, S* __restrict w,
               S* __restrict mean, S* __restrict diff_mean, S* __restrict sq_mean,
               S* __restrict prev_grad) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const S g = clip(grad[i] * c.rescale, c.clip);
    const S diff = g - (kFirstStep ? g : prev_grad[i]);
    const S m = c.beta1 * mean[i] + c.one_minus_beta1 * g;
    const S d = c.beta2 * diff_mean[i] + c.one_minus_beta2 * diff;
    const S u = g + c.beta2 * diff;
    const S sq = c.beta3 * sq_mean[i] + c.one_minus_beta3 * (u * u);
    const S denom = std::sqrt(sq) * c.sq_scale + c.epsilon;
    S wi = w[i] * c.weight_scale;
    wi = wi - (c.mean_coef * m + c.diff_coef * d) / denom;
    wi = wi / c.weight_divisor;
    mean[i] = m;
    diff_mean[i] = d;
    sq_mean[i] = sq;
    prev_grad[i] = g;
    w[i] = wi;
  }
}

// float16 <-> float32 of n elements, 8 at a time with F16C where the CPU has it (GCC
// does not vectorise _Float16 conversions in loops by itself). Round to nearest even.
void halves_to_floats(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  for (; i < n; ++i) out[i] = mxnag::half_to_float(in[i]);
}

void floats_to_halves(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) out[i] = mxnag::float_to_half(in[i]);
}

// Elements per float16 tile: the converted gradient stays in L1 cache, so the update
// remains a single pass over memory.
const int64_t kHalfTile = 512;

// Runs step(n, grad32, offset) over [0, n) in tiles: the float16 gradient converted to a
// float32 tile first, the float16 weight written from the master weight after.
template <typename StepFn>
void with_half_tiles(int64_t n, const uint16_t* grad16, const float* master, uint16_t* weight16,
                     StepFn step) {
  float grad32[kHalfTile];
  for (int64_t t = 0; t < n; t += kHalfTile) {
    const int64_t len = std::min(kHalfTile, n - t);
    halves_to_floats(grad16 + t, grad32, len);
    step(len, grad32, t);
    floats_to_halves(master + t, weight16 + t, len);
  }
}

// ---------------------------------------------------------------------------------------
// forward passes

// Pointers of parameter k: its gradient (S, or float16 bits under multi_precision), the
// weight the maths updates (S: the float32 master weight under multi_precision), its
// states, and the float16 weight written from the master under multi_precision.
template <typename S> struct Param {
  const S* grad;
  const uint16_t* grad16;
  S* weight;
  uint16_t* weight16;
  std::vector<S*> states;
  int64_t size;
};

// Gathers the group's pointers. Without multi_precision the output is the weight: when
// the caller passed an output other than the weight input, the weight is copied there
// first and updated in place.
template <typename S>
std::vector<Param<S>> gather(const GroupLayout& layout, int states, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out) {
  std::vector<Param<S>> params(layout.num_weights);
  for (int k = 0; k < layout.num_weights; ++k) {
    const int base = k * layout.inputs_per_weight;
    Param<S>& p = params[k];
    p.size = in->at(base).size();
    for (int s = 0; s < states; ++s) p.states.push_back(in->at(base + 2 + s).data<S>());
    if (layout.multi_precision) {
      p.grad = nullptr;
      p.grad16 = in->at(base + 1).data<uint16_t>();
      p.weight = in->at(base + 2 + states).data<S>();
      p.weight16 = out->at(k).data<uint16_t>();
    } else {
      p.grad = in->at(base + 1).data<S>();
      p.grad16 = nullptr;
      p.weight = out->at(k).data<S>();
      p.weight16 = nullptr;
      const void* source = in->at(base).data_ptr;
      if (source != p.weight) std::memcpy(p.weight, source, p.size * sizeof(S));
    }
  }
  return params;
}

template <typename S>
std::vector<int64_t> sizes_of(const std::vector<Param<S>>& params) {
  std::vector<int64_t> sizes;
  for (const Param<S>& p : params) sizes.push_back(p.size);
  return sizes;
}

// The step counts of a group (see the file's head): advances each parameter's count by
// the flag, writing the slot it does not read, and, when the step applies, multiplies
// each step scalar (step_scalars[j], one value per weight) by the table's factor at the
// new count. Returns false with an error for a malformed call; *applies says whether the
// step applies.
bool apply_step_counts(const Attrs& attrs, const GroupLayout& layout,
                       const std::vector<std::vector<double>*>& step_scalars,
                       std::vector<MXTensor>* in, bool* applies) {
  const int n = layout.num_weights;
  std::vector<double> slots;
  if (!list_attr(attrs, "step_slot", n, &slots)) return false;
  MXTensor& table = in->at(layout.table_input());
  const int64_t rows = table.shape[0];
  const int64_t columns = table.shape[1];
  if (columns != static_cast<int64_t>(step_scalars.size()) && !step_scalars.empty()) {
    MX_ERROR_MSG << "mxnag: the step-factor table has " << columns << " columns for "
                 << step_scalars.size() << " step scalars";
    return false;
  }
  const double* factors = table.data<double>();
  *applies = in->at(layout.flag_input()).data<float>()[0] != 0.0f;
  for (int k = 0; k < n; ++k) {
    double* count = in->at(layout.step_input(k)).data<double>();
    const int slot = slots[k] != 0.0 ? 1 : 0;
    const double next = count[slot] + (*applies ? 1.0 : 0.0);
    count[1 - slot] = next;
    if (!*applies) continue;
    const int64_t row = static_cast<int64_t>(next) - 1;
    if (row < 0 || row >= rows) {
      MX_ERROR_MSG << "mxnag: step " << next << " of weight " << k << " is outside the "
                   << rows << " rows of the step-factor table";
      return false;
    }
    for (size_t j = 0; j < step_scalars.size(); ++j)
      (*step_scalars[j])[k] *= factors[row * columns + j];
  }
  return true;
}

// The per-tensor scalar vectors of the names in the attribute 'step_scalars', in order.
template <typename A>
bool step_scalar_vectors(const Attrs& attrs, A* a, std::vector<std::vector<double>*>* out) {
  std::string text;
  if (!find_attr(attrs, "step_scalars", &text)) return false;
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string name = text.substr(start, comma - start);
    std::vector<double>* vector = a->scalar(name);
    if (vector == nullptr) {
      MX_ERROR_MSG << "mxnag: '" << name << "' in attribute 'step_scalars' is not a per-tensor "
                   << "scalar of this operator";
      return false;
    }
    out->push_back(vector);
    start = comma + 1;
  }
  return true;
}

struct AdanagAttrs {
  GroupLayout layout;
  double rescale, clip, beta1, beta2, epsilon;
  std::vector<double> wd_into_grad, weight_scale, grad_coef, mean_coef, var_scale;
  std::vector<double>* scalar(const std::string& name) {
    if (name == "wd_into_grad") return &wd_into_grad;
    if (name == "weight_scale") return &weight_scale;
    if (name == "grad_coef") return &grad_coef;
    if (name == "mean_coef") return &mean_coef;
    if (name == "var_scale") return &var_scale;
    return nullptr;
  }
};

bool parse_adanag(const Attrs& attrs, AdanagAttrs* a) {
  const int n = a->layout.num_weights;
  return double_attr(attrs, "rescale_grad", &a->rescale) &&
         double_attr(attrs, "clip_gradient", &a->clip) &&
         double_attr(attrs, "beta1", &a->beta1) && double_attr(attrs, "beta2", &a->beta2) &&
         double_attr(attrs, "epsilon", &a->epsilon) &&
         list_attr(attrs, "wd_into_grad", n, &a->wd_into_grad) &&
         list_attr(attrs, "weight_scale", n, &a->weight_scale) &&
         list_attr(attrs, "grad_coef", n, &a->grad_coef) &&
         list_attr(attrs, "mean_coef", n, &a->mean_coef) &&
         list_attr(attrs, "var_scale", n, &a->var_scale);
}

template <typename S>
void adanag_span_of(const AdanagCoefs<S>& c, bool wd_into_grad, int64_t n, const S* g, S* w, S* m,
                    S* v) {
  const bool clipped = std::isfinite(c.clip);
  if (wd_into_grad) {
    if (clipped) adanag_span<S, true, true>(c, n, g, w, m, v);
    else adanag_span<S, true, false>(c, n, g, w, m, v);
  } else {
    if (clipped) adanag_span<S, false, true>(c, n, g, w, m, v);
    else adanag_span<S, false, false>(c, n, g, w, m, v);
  }
}

template <typename S>
void run_adanag(const AdanagAttrs& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out) {
  const std::vector<Param<S>> params = gather<S>(a.layout, 2, in, out);
  std::vector<AdanagCoefs<S>> coefs(params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    coefs[k] = AdanagCoefs<S>{
        S(a.rescale), clip_bound<S>(a.clip), S(a.beta1), S(1.0 - a.beta1), S(a.beta2),
        S(1.0 - a.beta2), S(a.epsilon), S(a.wd_into_grad[k]), S(a.weight_scale[k]),
        S(a.grad_coef[k]), S(a.mean_coef[k]), S(a.var_scale[k])};
  }
  for_each_span(sizes_of(params), [&](size_t k, int64_t begin, int64_t end) {
    const Param<S>& p = params[k];
    const bool wd_into_grad = a.wd_into_grad[k] != 0.0;
    S* w = p.weight + begin;
    S* m = p.states[0] + begin;
    S* v = p.states[1] + begin;
    if constexpr (std::is_same<S, float>::value) {  // float16 weights: float32 maths
      if (p.weight16 != nullptr) {
        with_half_tiles(end - begin, p.grad16 + begin, w, p.weight16 + begin,
                        [&](int64_t n, const float* g, int64_t t) {
                          adanag_span_of(coefs[k], wd_into_grad, n, g, w + t, m + t, v + t);
                        });
        return;
      }
    }
    adanag_span_of(coefs[k], wd_into_grad, end - begin, p.grad + begin, w, m, v);
  });
}

MXReturnValue adanag_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out, const OpResource&) {
  AdanagAttrs a;
  std::vector<std::vector<double>*> step_scalars;
  bool applies = false;
  if (!parse_layout(attrs, 2, &a.layout) || !parse_adanag(attrs, &a) ||
      !step_scalar_vectors(attrs, &a, &step_scalars) ||
      !apply_step_counts(attrs, a.layout, step_scalars, in, &applies))
    return MX_FAIL;
  if (!applies) return MX_SUCCESS;
  switch (in->at(0).dtype) {
    case kFloat32: case kFloat16: run_adanag<float>(a, in, out); return MX_SUCCESS;
    case kFloat64: run_adanag<double>(a, in, out); return MX_SUCCESS;
    default:
      MX_ERROR_MSG << "mxnag: unsupported weight dtype " << in->at(0).dtype;
      return MX_FAIL;
  }
}

struct AdanAttrs {
  GroupLayout layout;
  double rescale, clip, beta1, beta2, beta3, epsilon;
  std::vector<double> first_step, mean_coef, diff_coef, sq_scale, weight_scale, weight_divisor;
  std::vector<double>* scalar(const std::string& name) {
    if (name == "first_step") return &first_step;
    if (name == "mean_coef") return &mean_coef;
    if (name == "diff_coef") return &diff_coef;
    if (name == "sq_scale") return &sq_scale;
    if (name == "weight_scale") return &weight_scale;
    if (name == "weight_divisor") return &weight_divisor;
    return nullptr;
  }
};

bool parse_adan(const Attrs& attrs, AdanAttrs* a) {
  const int n = a->layout.num_weights;
  return double_attr(attrs, "rescale_grad", &a->rescale) &&
         double_attr(attrs, "clip_gradient", &a->clip) &&
         double_attr(attrs, "beta1", &a->beta1) && double_attr(attrs, "beta2", &a->beta2) &&
         double_attr(attrs, "beta3", &a->beta3) && double_attr(attrs, "epsilon", &a->epsilon) &&
         list_attr(attrs, "first_step", n, &a->first_step) &&
         list_attr(attrs, "mean_coef", n, &a->mean_coef) &&
         list_attr(attrs, "diff_coef", n, &a->diff_coef) &&
         list_attr(attrs, "sq_scale", n, &a->sq_scale) &&
         list_attr(attrs, "weight_scale", n, &a->weight_scale) &&
         list_attr(attrs, "weight_divisor", n, &a->weight_divisor);
}

template <typename S>
void adan_span_of(const AdanCoefs<S>& c, bool first_step, int64_t n, const S* g, S* w, S* m, S* d,
                  S* sq, S* prev) {
  if (first_step) adan_span<S, true>(c, n, g, w, m, d, sq, prev);
  else adan_span<S, false>(c, n, g, w, m, d, sq, prev);
}

template <typename S>
void run_adan(const AdanAttrs& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out) {
  const std::vector<Param<S>> params = gather<S>(a.layout, 4, in, out);
  std::vector<AdanCoefs<S>> coefs(params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    coefs[k] = AdanCoefs<S>{
        S(a.rescale), clip_bound<S>(a.clip), S(a.beta1), S(1.0 - a.beta1), S(a.beta2),
        S(1.0 - a.beta2), S(a.beta3), S(1.0 - a.beta3), S(a.epsilon), S(a.mean_coef[k]),
        S(a.diff_coef[k]), S(a.sq_scale[k]), S(a.weight_scale[k]), S(a.weight_divisor[k])};
  }
  for_each_span(sizes_of(params), [&](size_t k, int64_t begin, int64_t end) {
    const Param<S>& p = params[k];
    const bool first = a.first_step[k] != 0.0;
    S* w = p.weight + begin;
    S* m = p.states[0] + begin;
    S* d = p.states[1] + begin;
    S* sq = p.states[2] + begin;
    S* prev = p.states[3] + begin;
    if constexpr (std::is_same<S, float>::value) {  // float16 weights: float32 maths
      if (p.weight16 != nullptr) {
        with_half_tiles(end - begin, p.grad16 + begin, w, p.weight16 + begin,
                        [&](int64_t n, const float* g, int64_t t) {
                          adan_span_of(coefs[k], first, n, g, w + t, m + t, d + t, sq + t, prev + t);
                        });
        return;
      }
    }
    adan_span_of(coefs[k], first, end - begin, p.grad + begin, w, m, d, sq, prev);
  });
}

MXReturnValue adan_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  AdanAttrs a;
  std::vector<std::vector<double>*> step_scalars;
  bool applies = false;
  if (!parse_layout(attrs, 4, &a.layout) || !parse_adan(attrs, &a) ||
      !step_scalar_vectors(attrs, &a, &step_scalars) ||
      !apply_step_counts(attrs, a.layout, step_scalars, in, &applies))
    return MX_FAIL;
  if (!applies) return MX_SUCCESS;
  switch (in->at(0).dtype) {
    case kFloat32: case kFloat16: run_adan<float>(a, in, out); return MX_SUCCESS;
    case kFloat64: run_adan<double>(a, in, out); return MX_SUCCESS;
    default:
      MX_ERROR_MSG << "mxnag: unsupported weight dtype " << in->at(0).dtype;
      return MX_FAIL;
  }
}

// ---------------------------------------------------------------------------------------
// mxnag_all_finite: whether every element of every input is finite (not NaN, not Inf)

MXReturnValue all_finite_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int arrays = 0;
  if (!int_attr(attrs, "num_arrays", 1, &arrays)) return MX_FAIL;
  *num_in = arrays;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue all_finite_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (size_t k = 0; k < in->size(); ++k) {
    const int dtype = in->at(k);
    if (dtype != kFloat16 && dtype != kFloat32 && dtype != kFloat64) {
      MX_ERROR_MSG << "mxnag: mxnag_all_finite takes float16, float32 or float64 arrays, input "
                   << k << " is " << dtype_name(dtype);
      return MX_FAIL;
    }
  }
  out->at(0) = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue all_finite_shape(const Attrs&, Shapes*, Shapes* out) {
  out->at(0) = std::vector<unsigned int>{1};
  return MX_SUCCESS;
}

// Whether n values of an IEEE type whose exponent bits are `mask` (in an unsigned integer
// type U of the same size) hold a NaN or an Inf: all exponent bits set. Branch-free, so
// the compiler vectorises it.
template <typename U>
bool any_non_finite(const U* bits, int64_t n, U mask) {
  U bad = 0;
#pragma omp simd reduction(|:bad)
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<U>((bits[i] & mask) == mask);
  return bad != 0;
}

MXReturnValue all_finite_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                 const OpResource&) {
  std::vector<int64_t> sizes;
  for (const MXTensor& tensor : *in) sizes.push_back(tensor.size());
  std::atomic<bool> finite{true};
  for_each_span(sizes, [&](size_t k, int64_t begin, int64_t end) {
    if (!finite.load(std::memory_order_relaxed)) return;
    MXTensor& tensor = in->at(k);
    bool bad = false;
    switch (tensor.dtype) {
      case kFloat16:
        bad = any_non_finite<uint16_t>(tensor.data<uint16_t>() + begin, end - begin, 0x7c00u);
        break;
      case kFloat32:
        bad = any_non_finite<uint32_t>(tensor.data<uint32_t>() + begin, end - begin, 0x7f800000u);
        break;
      default:
        bad = any_non_finite<uint64_t>(tensor.data<uint64_t>() + begin, end - begin,
                                       0x7ff0000000000000ull);
    }
    if (bad) finite.store(false, std::memory_order_relaxed);
  });
  out->at(0).data<float>()[0] = finite.load() ? 1.0f : 0.0f;
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// mxnag_probe: what OpenMP looks like from inside MXNet's engine

MXReturnValue probe_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue probe_type(const Attrs&, std::vector<int>*, std::vector<int>* out) {
  out->at(0) = kInt32;
  return MX_SUCCESS;
}

MXReturnValue probe_shape(const Attrs&, Shapes*, Shapes* out) {
  out->at(0) = std::vector<unsigned int>{3};
  return MX_SUCCESS;
}

MXReturnValue probe_forward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>* out,
                            const OpResource&) {
  int32_t* result = out->at(0).data<int32_t>();
  result[0] = omp_get_max_threads();
  result[1] = thread_budget();
  result[2] = omp_get_num_procs();
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(mxnag_adanag_update)
    .setParseAttrs(parse_update_attrs<2>)
    .setInferType(infer_update_type<2>)
    .setInferShape(infer_update_shape<2>)
    .setMutateInputs(mutated_update_inputs<2>)
    .setForward(adanag_forward, "cpu");

REGISTER_OP(mxnag_adan_update)
    .setParseAttrs(parse_update_attrs<4>)
    .setInferType(infer_update_type<4>)
    .setInferShape(infer_update_shape<4>)
    .setMutateInputs(mutated_update_inputs<4>)
    .setForward(adan_forward, "cpu");

REGISTER_OP(mxnag_all_finite)
    .setParseAttrs(all_finite_attrs)
    .setInferType(all_finite_type)
    .setInferShape(all_finite_shape)
    .setForward(all_finite_forward, "cpu");

REGISTER_OP(mxnag_probe)
    .setParseAttrs(probe_attrs)
    .setInferType(probe_type)
    .setInferShape(probe_shape)
    .setForward(probe_forward, "cpu");

// Built against MXNet 1.9.1's lib_api.h: refuse an older MXNet.
MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "mxnag: the fused optimizer library needs MXNet >= 1.9.0, this is " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
