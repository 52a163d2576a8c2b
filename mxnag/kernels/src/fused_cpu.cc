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
#include <utility>
#include <unordered_map>
#include <vector>

#include "half.h"
#include "attrs.h"
#include "lib_api.h"
#include "threads.h"
// the rules' bodies call sqrt on float and double
using std::sqrt;
#define MXNAG_CPU_OPERATOR
#include "rules.h"
#include "state_codes.h"

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
const int kCodeBlock = MXNAG_CODE_BLOCK;

// What every update operator shares: the group size, whether float16 weights come with
// float32 master weights (the last input of each parameter) and how the states are
// stored: 32 (arrays of the weight's type; float32 under multi_precision) or 8 (each
// state two inputs: uint8 codes of the weight's shape and float32 scales, one per block
// of kCodeBlock elements; float32 or float16 weights).
struct GroupLayout {
  int num_weights = 0;
  int num_states = 0;
  int state_bits = 32;
  bool multi_precision = false;
  int inputs_per_weight = 0;  // with the master weight
  int state_inputs() const { return num_states * (state_bits == 8 ? 2 : 1); }
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
  if (!int_attr(attrs, "state_bits", 8, &layout->state_bits)) return false;
  if (layout->state_bits != 8 && layout->state_bits != 32) {
    MX_ERROR_MSG << "mxnag: attribute 'state_bits' must be 8 or 32, got " << layout->state_bits;
    return false;
  }
  layout->num_states = states;
  layout->multi_precision = mp == 1;
  layout->inputs_per_weight = 2 + layout->state_inputs() + (layout->multi_precision ? 1 : 0);
  return true;
}

int64_t code_blocks(int64_t n) { return (n + kCodeBlock - 1) / kCodeBlock; }

// ---------------------------------------------------------------------------------------
// parse/infer callbacks of the update operators, generic over the rule

template <typename Rule>
MXReturnValue parse_update_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  GroupLayout layout;
  if (!parse_layout(attrs, Rule::kStates, &layout)) return MX_FAIL;
  *num_in = layout.num_inputs();
  *num_out = layout.num_weights;
  return MX_SUCCESS;
}

// The dtype state input s (0-based among the state inputs) of a weight must have.
int state_dtype(const GroupLayout& layout, int weight, int s) {
  if (layout.state_bits == 8) return s % 2 == 0 ? mxnet::ext::kUint8 : kFloat32;
  return layout.multi_precision ? kFloat32 : weight;
}

// float32 and float64 weights keep states of their own type; float16 weights need
// multi_precision (float32 states and master weight); 8-bit states go with float32 or
// float16 weights. Refused otherwise: the kernels read raw memory, and MXNet does not
// check dtypes of extension operators itself.
template <typename Rule>
MXReturnValue infer_update_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  GroupLayout layout;
  if (!parse_layout(attrs, Rule::kStates, &layout)) return MX_FAIL;
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
        (weight != kFloat16 && weight != kFloat32 && weight != kFloat64) ||
        (layout.state_bits == 8 && weight == kFloat64)) {
      MX_ERROR_MSG << "mxnag: weight " << k << " is " << dtype_name(weight) << " with multi_precision="
                   << layout.multi_precision << " and state_bits=" << layout.state_bits
                   << "; the fused update takes float32 or float64 weights, or float16 weights "
                   << "with multi_precision=1, and 8-bit states with float32 or float16 weights";
      return MX_FAIL;
    }
    if (in->at(base + 1) != weight) {
      MX_ERROR_MSG << "mxnag: gradient " << k << " is " << dtype_name(in->at(base + 1))
                   << ", its weight " << dtype_name(weight);
      return MX_FAIL;
    }
    for (int s = 0; s + 2 < layout.inputs_per_weight; ++s) {
      const bool master = s >= layout.state_inputs();
      const int expected = master ? kFloat32 : state_dtype(layout, weight, s);
      if (in->at(base + 2 + s) != expected) {
        MX_ERROR_MSG << "mxnag: input " << s + 2 << " (" << (master ? "the master weight" : "a state")
                     << ") of weight " << k << " is " << dtype_name(in->at(base + 2 + s))
                     << ", expected " << dtype_name(expected);
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

int64_t elements(const std::vector<unsigned int>& shape) {
  int64_t n = 1;
  for (unsigned int d : shape) n *= d;
  return n;
}

template <typename Rule>
MXReturnValue infer_update_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  GroupLayout layout;
  if (!parse_layout(attrs, Rule::kStates, &layout)) return MX_FAIL;
  for (int k = 0; k < layout.num_weights; ++k) {
    const int base = k * layout.inputs_per_weight;
    for (int s = 1; s < layout.inputs_per_weight; ++s) {
      const bool scales = layout.state_bits == 8 && s >= 2 && s - 2 < layout.state_inputs() &&
                          (s - 2) % 2 == 1;
      if (scales) {
        const auto& shape = in->at(base + s);
        if (shape.size() != 1 || shape[0] != code_blocks(elements(in->at(base)))) {
          MX_ERROR_MSG << "mxnag: input " << s << " of weight " << k << " (8-bit scales) must have "
                       << "shape (" << code_blocks(elements(in->at(base))) << ",)";
          return MX_FAIL;
        }
      } else if (in->at(base + s) != in->at(base)) {
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
template <typename Rule>
MXReturnValue mutated_update_inputs(const Attrs& attrs, std::vector<int>* indices) {
  GroupLayout layout;
  if (!parse_layout(attrs, Rule::kStates, &layout)) return MX_FAIL;
  for (int k = 0; k < layout.num_weights; ++k)
    for (int s = 2; s < layout.inputs_per_weight; ++s)
      indices->push_back(k * layout.inputs_per_weight + s);
  for (int k = 0; k < layout.num_weights; ++k) indices->push_back(layout.step_input(k));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// the element-wise loops around a rule's body (src/rules.h), one per way of storing states

// [0, n) of one parameter with states of type S: one pass, vectorised. The states'
// pointers arrive as a pack (the vectoriser keeps separate pointers in registers; an
// array of them it reloads every element, and gives up).
template <typename Rule, typename S, size_t... J, typename... Ptr>
void full_loop(const typename Rule::template Coefs<S>& c, int64_t n, const S* __restrict grad,
               S* __restrict w, std::index_sequence<J...>, Ptr... st) {
  // ivdep, not omp simd: GCC 12 vectorises no omp simd loop holding a local array (s)
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    S s[] = {st[i]...};
    S wi = w[i];
    Rule::step(c, grad[i], wi, s);
    w[i] = wi;
    ((st[i] = s[J]), ...);
  }
}

template <typename Rule, typename S, size_t... J>
void full_span(const typename Rule::template Coefs<S>& c, int64_t n, const S* grad, S* w,
               S* const* states, std::index_sequence<J...> order) {
  full_loop<Rule, S>(c, n, grad, w, order, states[J]...);
}

// The 8-bit states of one parameter: codes and a scale per block (src/state_codes.h).
struct CodedStates {
  uint8_t* codes[8];
  float* scales[8];
};

template <typename Rule, int J>
using CodeOf = typename std::conditional<Rule::non_negative(J), mxnag_root_code,
                                         mxnag_signed_code>::type;

// Requantises state J's new values `values[0, len)` into its codes and scale, given their
// largest magnitude's bits `most` (coded_loop's maximum of the bits with the sign cleared:
// integer, a NaN's or an Inf's bits exceeding every number's).
template <typename Rule, int J>
void store_block(const float* values, int64_t len, uint8_t* codes, float* scale, uint32_t most) {
  typedef CodeOf<Rule, J> Code;
  // a NaN or an Inf: the block reads NaN; a largest magnitude below the smallest normal
  // float (top / largest would overflow): the block reads 0
  const bool nan = most >= 0x7f800000u;
  const bool zero = most < 0x00800000u;
  const float largest = mxnag_bits_float(most);
  const float inverse = nan || zero ? 0.0f : Code::top() / largest;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) codes[i] = uint8_t(Code::encode(values[i] * inverse));
  *scale = nan ? NAN : (zero ? 0.0f : largest / Code::top());
}

template <typename Rule, int J>
struct StoreStates {
  static void run(float (*values)[kCodeBlock], int64_t len, const CodedStates& q, int64_t offset,
                  const uint32_t* most) {
    StoreStates<Rule, J - 1>::run(values, len, q, offset, most);
    store_block<Rule, J - 1>(values[J - 1], len, q.codes[J - 1] + offset,
                             q.scales[J - 1] + offset / kCodeBlock, most[J - 1]);
  }
};
template <typename Rule>
struct StoreStates<Rule, 0> {
  static void run(float (*)[kCodeBlock], int64_t, const CodedStates&, int64_t, const uint32_t*) {}
};

template <typename Rule, int J>
inline float load_state(uint8_t code, float scale) {
  const float x = CodeOf<Rule, J>::decode(code) * scale;
  return Rule::non_negative(J) ? x * x : x;
}

// One block's update: decode, the rule's body, the weight written and the new states kept
// in `values` (square roots of the non-negative ones), which stay in cache for the
// requantiser (codes as a pack, as full_loop's states).
template <typename Rule, size_t... J, typename... Codes>
void coded_loop(const typename Rule::template Coefs<float>& c, int64_t len,
                const float* __restrict g, float* __restrict w, float (*__restrict values)[kCodeBlock],
                const float* scale_of, uint32_t* most_out, std::index_sequence<J...>, Codes... codes) {
  const float scale[] = {scale_of[J]...};
  uint32_t most[sizeof...(J)] = {};  // each state's largest magnitude (its bits), in the same pass
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    float s[] = {load_state<Rule, J>(codes[i], scale[J])...};
    float wi = w[i];
    Rule::step(c, g[i], wi, s);
    w[i] = wi;
    ((values[J][i] = Rule::non_negative(J) ? sqrt(s[J]) : s[J]), ...);
    ((most[J] = std::max(most[J], mxnag_float_bits(values[J][i]) & 0x7fffffffu)), ...);
  }
  ((most_out[J] = most[J]), ...);
}

// Elements ahead whose lines coded_span asks for while it works on a block: its loads are
// short runs (a block's 1 KB of floats, 256 B of each state's codes) between bursts of
// arithmetic, which the hardware prefetchers follow poorly (measured on the AMD EPYC of
// the README: a 10M step 7-8 ms without, 4.3-5.4 ms with, in turns). Prefetches do not
// fault past an array's end.
const int64_t kPrefetchAhead = 8 * kCodeBlock;

template <typename... Codes>
inline void prefetch_block(const float* grad, const float* w, Codes... codes) {
  for (int64_t i = 0; i < kCodeBlock; i += 16) {  // 64-byte lines
    __builtin_prefetch(grad + i);
    __builtin_prefetch(w + i, 1);
  }
  for (int64_t i = 0; i < kCodeBlock; i += 64) ((__builtin_prefetch(codes + i, 1)), ...);
}

// [begin, end) of one parameter with 8-bit states (begin a multiple of kCodeBlock):
// per block, decode, update and take each state's largest magnitude (coded_loop), then
// its codes from the buffer: one pass over memory (folding the maximum into the update's
// loop made the 8-bit step's arithmetic 25% faster than a pass of its own over the buffer).
template <typename Rule, size_t... J>
void coded_span(const typename Rule::template Coefs<float>& c, int64_t begin, int64_t end,
                const float* grad, float* w, const CodedStates& q, std::index_sequence<J...> order) {
  // grad: element `begin`'s gradient (a float16 tile's converted values start there)
  constexpr int K = Rule::kStates;
  float values[K][kCodeBlock];
  for (int64_t b = begin; b < end; b += kCodeBlock) {
    const int64_t len = std::min<int64_t>(kCodeBlock, end - b);
    const float* g = grad + (b - begin);
    const float scale[] = {q.scales[J][b / kCodeBlock]...};
    prefetch_block(g + kPrefetchAhead, w + b + kPrefetchAhead, (q.codes[J] + b + kPrefetchAhead)...);
    uint32_t most[K];
    coded_loop<Rule>(c, len, g, w + b, values, scale, most, order, (q.codes[J] + b)...);
    StoreStates<Rule, K>::run(values, len, q, b, most);
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
// remains a single pass over memory (a multiple of kCodeBlock: 8-bit blocks stay whole).
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
// forward pass

// Pointers of parameter k: its gradient (S, or float16 bits under multi_precision), the
// weight the maths updates (S: the float32 master weight under multi_precision), its
// states (S arrays, or 8-bit codes and scales), and the float16 weight written from the
// master under multi_precision.
template <typename S> struct Param {
  const S* grad;
  const uint16_t* grad16;
  S* weight;
  uint16_t* weight16;
  S* states[8];
  CodedStates coded;
  int64_t size;
};

// Gathers the group's pointers. Without multi_precision the output is the weight: when
// the caller passed an output other than the weight input, the weight is copied there
// first and updated in place.
template <typename S>
std::vector<Param<S>> gather(const GroupLayout& layout, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out) {
  std::vector<Param<S>> params(layout.num_weights);
  for (int k = 0; k < layout.num_weights; ++k) {
    const int base = k * layout.inputs_per_weight;
    Param<S>& p = params[k];
    p.size = in->at(base).size();
    for (int s = 0; s < layout.num_states; ++s) {
      if (layout.state_bits == 8) {
        p.coded.codes[s] = in->at(base + 2 + 2 * s).data<uint8_t>();
        p.coded.scales[s] = in->at(base + 3 + 2 * s).data<float>();
      } else {
        p.states[s] = in->at(base + 2 + s).data<S>();
      }
    }
    if (layout.multi_precision) {
      p.grad = nullptr;
      p.grad16 = in->at(base + 1).data<uint16_t>();
      p.weight = in->at(base + 2 + layout.state_inputs()).data<S>();
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

// The step counts of a group (see the file's head): advances each parameter's count by
// the flag, writing the slot it does not read, and, when the step applies, multiplies
// each step scalar (column j of `scalars`, one value per weight) by the table's factor
// at the new count. Returns false with an error for a malformed call; *applies says
// whether the step applies.
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

// A rule's scalars of one call: each is an attribute named as in the rule (src/rules.h),
// one number (shared by the group) or one per weight.
template <typename Rule>
struct RuleScalars {
  GroupLayout layout;
  std::vector<std::vector<double>> values;  // [scalar][weight]

  bool parse(const Attrs& attrs) {
    const int n = layout.num_weights;
    values.assign(Rule::kScalars, {});
    for (int j = 0; j < Rule::kScalars; ++j) {
      std::string text;
      if (!find_attr(attrs, Rule::kScalarNames[j], &text)) return false;
      const bool shared = text.find(',') == std::string::npos;
      if (!list_attr(attrs, Rule::kScalarNames[j], shared ? 1 : n, &values[j])) return false;
      if (shared) values[j].assign(n, values[j][0]);
    }
    return true;
  }

  // The columns named in the attribute 'step_scalars', in order.
  bool step_columns(const Attrs& attrs, std::vector<std::vector<double>*>* out) {
    std::string text;
    if (!find_attr(attrs, "step_scalars", &text)) return false;
    size_t start = 0;
    while (start < text.size()) {
      size_t comma = text.find(',', start);
      if (comma == std::string::npos) comma = text.size();
      const std::string name = text.substr(start, comma - start);
      int found = -1;
      for (int j = 0; j < Rule::kScalars; ++j)
        if (name == Rule::kScalarNames[j]) found = j;
      if (found < 0) {
        MX_ERROR_MSG << "mxnag: '" << name << "' in attribute 'step_scalars' is not a scalar of "
                     << "this operator";
        return false;
      }
      out->push_back(&values[found]);
      start = comma + 1;
    }
    return true;
  }

  template <typename S> typename Rule::template Coefs<S> coefs(int k) const {
    double row[Rule::kScalars];
    for (int j = 0; j < Rule::kScalars; ++j) row[j] = values[j][k];
    return Rule::template from<S>(row);
  }
};

template <typename Rule, typename S>
void run_rule(const RuleScalars<Rule>& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out) {
  const GroupLayout& layout = a.layout;
  const std::vector<Param<S>> params = gather<S>(layout, in, out);
  std::vector<typename Rule::template Coefs<S>> coefs;
  std::vector<int64_t> sizes;  // 8-bit: whole blocks, so that every span starts a block
  for (size_t k = 0; k < params.size(); ++k) {
    coefs.push_back(a.template coefs<S>(k));
    const int64_t n = params[k].size;
    sizes.push_back(layout.state_bits == 8 ? code_blocks(n) * kCodeBlock : n);
  }
  const auto order = std::make_index_sequence<Rule::kStates>();
  for_each_span(sizes, [&](size_t k, int64_t begin, int64_t end) {
    const Param<S>& p = params[k];
    end = std::min(end, p.size);
    if (begin >= end) return;
    if constexpr (std::is_same<S, float>::value) {
      if (layout.state_bits == 8) {
        if (p.weight16 != nullptr) {  // float16 weights: float32 maths on the master weight
          with_half_tiles(end - begin, p.grad16 + begin, p.weight + begin, p.weight16 + begin,
                          [&](int64_t n, const float* g, int64_t t) {
                            coded_span<Rule>(coefs[k], begin + t, begin + t + n, g, p.weight,
                                             p.coded, order);
                          });
        } else {
          coded_span<Rule>(coefs[k], begin, end, p.grad + begin, p.weight, p.coded, order);
        }
        return;
      }
      if (p.weight16 != nullptr) {
        S* states[8];
        with_half_tiles(end - begin, p.grad16 + begin, p.weight + begin, p.weight16 + begin,
                        [&](int64_t n, const float* g, int64_t t) {
                          for (int j = 0; j < Rule::kStates; ++j) states[j] = p.states[j] + begin + t;
                          full_span<Rule, S>(coefs[k], n, g, p.weight + begin + t, states, order);
                        });
        return;
      }
    }
    S* states[8];
    for (int j = 0; j < Rule::kStates; ++j) states[j] = p.states[j] + begin;
    full_span<Rule, S>(coefs[k], end - begin, p.grad + begin, p.weight + begin, states, order);
  });
}

template <typename Rule>
MXReturnValue update_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out, const OpResource&) {
  RuleScalars<Rule> a;
  std::vector<std::vector<double>*> step_scalars;
  bool applies = false;
  if (!parse_layout(attrs, Rule::kStates, &a.layout) || !a.parse(attrs) ||
      !a.step_columns(attrs, &step_scalars) ||
      !apply_step_counts(attrs, a.layout, step_scalars, in, &applies))
    return MX_FAIL;
  if (!applies) return MX_SUCCESS;  // a skipped step: weights, states (codes, scales) as they are
  switch (in->at(0).dtype) {
    case kFloat32: case kFloat16: run_rule<Rule, float>(a, in, out); return MX_SUCCESS;
    case kFloat64: run_rule<Rule, double>(a, in, out); return MX_SUCCESS;
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

// One operator per rule of src/rules.h: mxnag_<name>_update.
#define MXNAG_REGISTER_RULE(name)                            \
  REGISTER_OP(mxnag_##name##_update)                         \
      .setParseAttrs(parse_update_attrs<name##_rule>)        \
      .setInferType(infer_update_type<name##_rule>)          \
      .setInferShape(infer_update_shape<name##_rule>)        \
      .setMutateInputs(mutated_update_inputs<name##_rule>)   \
      .setForward(update_forward<name##_rule>, "cpu");
MXNAG_RULES(MXNAG_REGISTER_RULE)

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
