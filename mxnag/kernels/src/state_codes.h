// 8-bit optimizer states: how a float state is stored as one byte per element with one
// float32 scale per block of kCodeBlock elements (the loader/storer beside the rules'
// bodies, src/rules.h). Shared by the CPU operator and the CUDA source (pasted in).
//
// The codes are small floating-point numbers, so converting is a few integer operations
// on the float's bits and no table (bitsandbytes' dynamic map needs a binary search over
// 256 codes to quantise):
//   signed states:      sign, 4 exponent bits, 3 mantissa bits (E4M3); magnitude code
//                       c in 1..127 is 2^((c >> 3) - 15) * (1 + (c & 7) / 8), c = 0 is 0;
//                       the largest, 1.875 (top()), times the block's scale is the block's
//                       largest magnitude. The sign is the value's own bit (a small value
//                       never changes sign; it may round to 0: codes 0 and 128 read 0).
//   non-negative states (second moments): the square root of the value, unsigned, 4
//                       exponent and 4 mantissa bits (E4M4: c in 1..255 is
//                       2^((c >> 4) - 15) * (1 + (c & 15) / 16), largest 1.9375): the
//                       root halves the range of exponents a block must cover, and a
//                       value above zero never becomes zero (the smallest code at least),
//                       so a denominator sqrt(v) + eps of a coordinate with a moment is
//                       never eps alone. Zero stays zero.
// Rounding is the float rounding of the scaled value to the code's mantissa bits (ties to
// even), which is the nearest code except below 2^-15 * 17/16 (1/28000 of the block's
// largest), where the float grid's 2^-15 is the code 0. A block's scale is its largest
// (root) magnitude over the largest code: the maximum of the float bits with the sign
// cleared, a NaN's or an Inf's exceeding every number's, so a block holding one gets a NaN
// scale (the whole block reads NaN: the float state would have held a non-finite value);
// a block whose largest magnitude is below the smallest normal float gets scale 0 (it
// reads 0: the inverse scale would overflow).
#ifndef MXNAG_STATE_CODES_H_
#define MXNAG_STATE_CODES_H_

#ifndef MXNAG_HD
#define MXNAG_HD inline
#endif

#define MXNAG_CODE_BLOCK 256
// float32 exponent field of magnitude code 8 (2^-15) minus one octave of codes: code c's
// bits are (c << mantissa bits) + (kCodeBias << 23).
#define MXNAG_CODE_BIAS 112u

MXNAG_HD unsigned int mxnag_float_bits(float x) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
  return __float_as_uint(x);
#else
  unsigned int u;
  __builtin_memcpy(&u, &x, 4);
  return u;
#endif
}

MXNAG_HD float mxnag_bits_float(unsigned int u) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
  return __uint_as_float(u);
#else
  float x;
  __builtin_memcpy(&x, &u, 4);
  return x;
#endif
}

// Signed E4M3 codes: the sign bit, then the magnitude code of |y| rounded as a float to 3
// mantissa bits (ties to even); a magnitude of 2^-15 or less after rounding is 0.
struct mxnag_signed_code {
  MXNAG_HD static constexpr float top() { return 1.875f; }  // the largest code's value
  MXNAG_HD static float decode(unsigned int code) {
    const unsigned int magnitude = code & 127u;
    const float value = mxnag_bits_float((magnitude << 20) + (MXNAG_CODE_BIAS << 23));
    const float signed_value = (code & 128u) ? -value : value;
    return magnitude == 0u ? 0.0f : signed_value;
  }
  // `y`: the value over the block's scale (|y| <= top() up to rounding).
  MXNAG_HD static unsigned int encode(float y) {
    const unsigned int bits = mxnag_float_bits(y);
    const unsigned int abs_bits = bits & 0x7fffffffu;
    const unsigned int rounded = abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u);
    int magnitude = int(rounded >> 20) - int(MXNAG_CODE_BIAS << 3);
    magnitude = magnitude < 0 ? 0 : (magnitude > 127 ? 127 : magnitude);
    return unsigned(magnitude) | ((bits >> 24) & 128u);
  }
};

// Unsigned E4M4 codes of a square root: the root rounded as a float to 4 mantissa bits
// (ties to even), at least code 1 when above zero.
struct mxnag_root_code {
  MXNAG_HD static constexpr float top() { return 1.9375f; }
  MXNAG_HD static float decode(unsigned int code) {
    const float value = mxnag_bits_float((code << 19) + (MXNAG_CODE_BIAS << 23));
    return code == 0u ? 0.0f : value;
  }
  MXNAG_HD static unsigned int encode(float y) {  // y >= 0
    const unsigned int bits = mxnag_float_bits(y) & 0x7fffffffu;
    const unsigned int rounded = bits + 0x3ffffu + ((bits >> 19) & 1u);
    int code = int(rounded >> 19) - int(MXNAG_CODE_BIAS << 4);
    const int lowest = bits != 0u ? 1 : 0;
    code = code < lowest ? lowest : (code > 255 ? 255 : code);
    return unsigned(code);
  }
};

#endif  // MXNAG_STATE_CODES_H_
