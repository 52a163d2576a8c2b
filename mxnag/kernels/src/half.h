// IEEE binary16 <-> binary32 conversion for the float16 (multi_precision) path.
//
// Uses the compiler's _Float16 where it has one (GCC >= 12, Clang >= 15 on x86-64 and
// AArch64: F16C/FP16 instructions, vectorisable); otherwise, or with -DMXNAG_SOFT_HALF,
// an exact software conversion (round to nearest even, subnormals, Inf and NaN kept).
#ifndef MXNAG_HALF_H_
#define MXNAG_HALF_H_

#include <cstdint>
#include <cstring>

namespace mxnag {

#if defined(__FLT16_MANT_DIG__) && !defined(MXNAG_SOFT_HALF)

inline float half_to_float(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof(bits));
  return static_cast<float>(h);
}

inline uint16_t float_to_half(float x) {
  _Float16 h = static_cast<_Float16>(x);
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof(bits));
  return bits;
}

#else

inline float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1fu) {                 // Inf or NaN: keep the payload
    out = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {              // normal
    out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {              // signed zero
    out = sign;
  } else {                                 // subnormal half: normal float
    exponent = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    out = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float result;
  std::memcpy(&result, &out, sizeof(out));
  return result;
}

inline uint16_t float_to_half(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {          // Inf or NaN (NaN stays quiet NaN)
    return sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u | ((magnitude >> 13) & 0x3ffu) : 0u);
  }
  if (magnitude >= 0x477ff000u) {          // rounds to >= 65520: overflow to Inf
    return sign | 0x7c00u;
  }
  if (magnitude < 0x38800000u) {           // below the smallest normal half: subnormal or 0
    if (magnitude < 0x33000000u) return sign;  // < half of the smallest subnormal
    const uint32_t shift = 126u - (magnitude >> 23);          // 14..24
    const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
  uint32_t half = ((magnitude >> 13) - (112u << 10));
  const uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

#endif

}  // namespace mxnag

#endif  // MXNAG_HALF_H_
