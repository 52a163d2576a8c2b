// The benchmark's operators (benchmarks/bench_step.py), an MXNet extension library of
// their own, built like the fused update operators and with their threads
// (mxnag/kernels/src/threads.h), so that their timings compare with the updates':
//   mxnag_copy    src -> out
//   mxnag_stream  target, source, more targets -> target: every target += source, the
//                 memory traffic of an update (read all, write the targets) with no
//                 maths: the benchmark's bandwidth floor
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "attrs.h"
#include "lib_api.h"
#include "threads.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;
using mxnet::ext::kFloat16;
using mxnet::ext::kFloat32;
using mxnet::ext::kFloat64;
using mxnag::Attrs;
using mxnag::dtype_name;
using mxnag::for_each_span;
using mxnag::int_attr;

namespace {

typedef std::vector<std::vector<unsigned int>> Shapes;

// mxnag_copy: the same threads and dispatch as the updates, moving bytes only

MXReturnValue copy_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue copy_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue copy_shape(const Attrs&, Shapes* in, Shapes* out) {
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue copy_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                           const OpResource&) {
  const char* src = in->at(0).data<char>();
  char* dst = out->at(0).data<char>();
  const int64_t bytes = in->at(0).size() * (in->at(0).dtype == kFloat64 ? 8 : in->at(0).dtype == kFloat16 ? 2 : 4);
  for_each_span({bytes}, [&](size_t, int64_t begin, int64_t end) {
    std::memcpy(dst + begin, src + begin, end - begin);
  });
  return MX_SUCCESS;
}

// mxnag_stream: an update's memory traffic, as fast as the memory allows. Inputs: the
// first target, the source, the other targets (like weight, grad, states); all float32 of
// one shape; the targets after the first are mutated inputs, the first is the output.

MXReturnValue stream_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int targets = 0;
  if (!int_attr(attrs, "targets", 1, &targets)) return MX_FAIL;
  *num_in = targets + 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue stream_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (size_t k = 0; k < in->size(); ++k) {
    if (in->at(k) != kFloat32) {
      MX_ERROR_MSG << "mxnag: mxnag_stream takes float32 arrays, input " << k << " is "
                   << dtype_name(in->at(k));
      return MX_FAIL;
    }
  }
  out->at(0) = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue stream_shape(const Attrs&, Shapes* in, Shapes* out) {
  for (size_t k = 1; k < in->size(); ++k) {
    if (in->at(k) != in->at(0)) {
      MX_ERROR_MSG << "mxnag: input " << k << " of mxnag_stream does not have input 0's shape";
      return MX_FAIL;
    }
  }
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue stream_mutated(const Attrs& attrs, std::vector<int>* indices) {
  int targets = 0;
  if (!int_attr(attrs, "targets", 1, &targets)) return MX_FAIL;
  for (int k = 2; k <= targets; ++k) indices->push_back(k);
  return MX_SUCCESS;
}

// Up to kMaxStreamTargets targets, unrolled so that each element of each array is read
// and written once per pass, in the same loop, like the updates.
const int kMaxStreamTargets = 5;

template <int kTargets>
void stream_span(const float* __restrict source, float* const* targets, int64_t n) {
  float* __restrict t0 = targets[0];
  float* __restrict t1 = kTargets > 1 ? targets[1] : nullptr;
  float* __restrict t2 = kTargets > 2 ? targets[2] : nullptr;
  float* __restrict t3 = kTargets > 3 ? targets[3] : nullptr;
  float* __restrict t4 = kTargets > 4 ? targets[4] : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float s = source[i];
    t0[i] += s;
    if (kTargets > 1) t1[i] += s;
    if (kTargets > 2) t2[i] += s;
    if (kTargets > 3) t3[i] += s;
    if (kTargets > 4) t4[i] += s;
  }
}

MXReturnValue stream_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out, const OpResource&) {
  int count = 0;
  if (!int_attr(attrs, "targets", 1, &count)) return MX_FAIL;
  if (count > kMaxStreamTargets) {
    MX_ERROR_MSG << "mxnag: mxnag_stream takes at most " << kMaxStreamTargets << " targets";
    return MX_FAIL;
  }
  const float* source = in->at(1).data<float>();
  std::vector<float*> targets{out->at(0).data<float>()};
  for (int k = 2; k <= count; ++k) targets.push_back(in->at(k).data<float>());
  const int64_t n = in->at(0).size();
  if (in->at(0).data_ptr != targets[0]) std::memcpy(targets[0], in->at(0).data_ptr, n * sizeof(float));
  for_each_span({n}, [&](size_t, int64_t begin, int64_t end) {
    float* shifted[kMaxStreamTargets];
    for (int k = 0; k < count; ++k) shifted[k] = targets[k] + begin;
    switch (count) {
      case 1: stream_span<1>(source + begin, shifted, end - begin); break;
      case 2: stream_span<2>(source + begin, shifted, end - begin); break;
      case 3: stream_span<3>(source + begin, shifted, end - begin); break;
      case 4: stream_span<4>(source + begin, shifted, end - begin); break;
      default: stream_span<5>(source + begin, shifted, end - begin); break;
    }
  });
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(mxnag_copy)
    .setParseAttrs(copy_attrs)
    .setInferType(copy_type)
    .setInferShape(copy_shape)
    .setForward(copy_forward, "cpu");

REGISTER_OP(mxnag_stream)
    .setParseAttrs(stream_attrs)
    .setInferType(stream_type)
    .setInferShape(stream_shape)
    .setMutateInputs(stream_mutated)
    .setForward(stream_forward, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "mxnag: the benchmark's operators need MXNet >= 1.9.0, this is " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
