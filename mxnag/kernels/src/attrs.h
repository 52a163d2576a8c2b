// The attributes of mxnag's extension operators (MXNet passes Python's str() of each
// value; floats as repr, so nothing is lost) and the names of their dtypes: shared by
// src/fused_cpu.cc and the benchmark's operators (benchmarks/src/bench_ops.cc).
#ifndef MXNAG_ATTRS_H_
#define MXNAG_ATTRS_H_

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib_api.h"

namespace mxnag {

typedef std::unordered_map<std::string, std::string> Attrs;

inline bool find_attr(const Attrs& attrs, const char* key, std::string* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << "mxnag: missing attribute '" << key << "'";
    return false;
  }
  *value = it->second;
  return true;
}

inline bool parse_double(const char* key, const std::string& text, double* value) {
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(text.c_str(), &end);
  // underflow (a subnormal or zero result) is the correctly rounded value; overflow is not
  if (text.empty() || *end != '\0' || (errno == ERANGE && std::isinf(*value))) {
    MX_ERROR_MSG << "mxnag: attribute '" << key << "' must be a number, got '" << text << "'";
    return false;
  }
  return true;
}

inline bool double_attr(const Attrs& attrs, const char* key, double* value) {
  std::string text;
  return find_attr(attrs, key, &text) && parse_double(key, text, value);
}

inline bool int_attr(const Attrs& attrs, const char* key, int low, int* value) {
  std::string text;
  if (!find_attr(attrs, key, &text)) return false;
  char* end = nullptr;
  const long parsed = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || parsed < low || parsed > (1 << 20)) {
    MX_ERROR_MSG << "mxnag: attribute '" << key << "' must be an integer >= " << low
                 << ", got '" << text << "'";
    return false;
  }
  *value = static_cast<int>(parsed);
  return true;
}

// A comma-separated list of exactly `count` numbers, one per tensor of the group.
inline bool list_attr(const Attrs& attrs, const char* key, int count, std::vector<double>* values) {
  std::string text;
  if (!find_attr(attrs, key, &text)) return false;
  values->clear();
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    double value;
    if (!parse_double(key, text.substr(start, comma - start), &value)) return false;
    values->push_back(value);
    start = comma + 1;
  }
  if (static_cast<int>(values->size()) != count) {
    MX_ERROR_MSG << "mxnag: attribute '" << key << "' must list " << count
                 << " numbers (one per weight), got " << values->size();
    return false;
  }
  return true;
}

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    default: return "a non-float type";
  }
}

}  // namespace mxnag

#endif  // MXNAG_ATTRS_H_
