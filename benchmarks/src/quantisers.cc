// Times the two ways of quantising a block of 256 floats to 8 bits that issue 21 weighs,
// on this CPU, with the flags of the fused operators: mxnag's float codes (src/
// state_codes.h: a few integer operations on the float's bits) and a sorted map of 256
// codes searched by bisection (bitsandbytes' dynamic map is quantised this way: 8 steps,
// each a compare and a select; written branch-free, so the compiler can vectorise it).
// Both read the block once for its largest magnitude, then write the codes.
// Build: c++ -std=c++17 -O3 -march=native -ffast-math -fno-finite-math-only -fopenmp -I<src> quantisers.cc
// Run: ./a.out MAP_FILE (256 float32 values, increasing): prints ns per element of each.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "state_codes.h"

namespace {

uint32_t bits_of(float x) { return mxnag_float_bits(x) & 0x7fffffffu; }

float block_largest(const float* x, int n) {
  uint32_t most = 0;
  for (int i = 0; i < n; ++i) most = std::max(most, bits_of(x[i]));
  return mxnag_bits_float(most);
}

void float_codes(const float* x, int n, uint8_t* codes, float* scale) {
  const float largest = block_largest(x, n);
  const float inverse = largest > 0.0f ? mxnag_signed_code::top() / largest : 0.0f;
  for (int i = 0; i < n; ++i) codes[i] = uint8_t(mxnag_signed_code::encode(x[i] * inverse));
  *scale = largest / mxnag_signed_code::top();
}

// The nearest of 256 increasing values by bisection over their 255 midpoints.
void map_codes(const float* x, int n, const float* midpoints, uint8_t* codes, float* scale) {
  const float largest = block_largest(x, n);
  const float inverse = largest > 0.0f ? 1.0f / largest : 0.0f;
#pragma omp simd
  for (int i = 0; i < n; ++i) {  // vectorised: 8 gathers of 16 lanes
    const float y = x[i] * inverse;
    int code = y > midpoints[127] ? 128 : 0;
    code += y > midpoints[code + 63] ? 64 : 0;
    code += y > midpoints[code + 31] ? 32 : 0;
    code += y > midpoints[code + 15] ? 16 : 0;
    code += y > midpoints[code + 7] ? 8 : 0;
    code += y > midpoints[code + 3] ? 4 : 0;
    code += y > midpoints[code + 1] ? 2 : 0;
    code += y > midpoints[code] ? 1 : 0;
    codes[i] = uint8_t(code);
  }
  *scale = largest;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<float> map(256);
  FILE* f = argc > 1 ? std::fopen(argv[1], "rb") : nullptr;
  if (f == nullptr || std::fread(map.data(), 4, 256, f) != 256) {
    std::fprintf(stderr, "usage: %s MAP_FILE (256 float32 values, increasing)\n", argv[0]);
    return 2;
  }
  std::fclose(f);
  std::vector<float> midpoints(256, INFINITY);
  for (int k = 0; k < 255; ++k) midpoints[k] = 0.5f * (map[k] + map[k + 1]);
  const int64_t n = 1 << 22;
  std::vector<float> x(n);
  uint64_t state = 1;
  for (int64_t i = 0; i < n; ++i) {  // normal-ish values, a spread of magnitudes
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = std::ldexp(float(int32_t(state >> 32)) / 2147483648.0f, -int((state >> 20) % 12));
  }
  std::vector<uint8_t> codes(n);
  std::vector<float> scales(n / 256);
  double best[2] = {1e30, 1e30};
  for (int repeat = 0; repeat < 7; ++repeat) {
    for (int which = 0; which < 2; ++which) {
      const auto start = std::chrono::steady_clock::now();
      for (int64_t b = 0; b < n; b += 256) {
        if (which == 0) float_codes(x.data() + b, 256, codes.data() + b, &scales[b / 256]);
        else map_codes(x.data() + b, 256, midpoints.data(), codes.data() + b, &scales[b / 256]);
      }
      const double ns = std::chrono::duration<double, std::nano>(
          std::chrono::steady_clock::now() - start).count() / n;
      best[which] = std::min(best[which], ns);
    }
  }
  std::printf("{\"float_codes_ns\": %.4f, \"map_bisection_ns\": %.4f, \"checksum\": %u}\n", best[0],
              best[1], unsigned(codes[12345]));
  return 0;
}
