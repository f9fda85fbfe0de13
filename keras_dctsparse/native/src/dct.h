// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// Orthonormal DCT-II and DCT-III of any length N on lane vectors, by Makhoul's
// algorithm: reorder v = [x0, x2, x4, ..., x5, x3, x1], one real FFT of length N
// (a complex FFT of length N / 2 for even N), then one twiddle per coefficient.
// DCT-III (the transpose and inverse) runs the same steps backwards. Plans are
// built once per (length, type) and shared by every op (PlanFor).
#ifndef KERAS_DCTSPARSE_NATIVE_DCT_H_
#define KERAS_DCTSPARSE_NATIVE_DCT_H_

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "fft.h"

namespace dctsparse {

template <typename T>
class DctPlan {
 public:
  explicit DctPlan(int64_t length)
      : length_(length), even_(length % 2 == 0), half_(length / 2),
        fft_(even_ ? length / 2 : length) {
    const int64_t n = length_;
    scale_.resize(n);
    inverse_scale_.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const double s = std::sqrt((k == 0 ? 1.0 : 2.0) / static_cast<double>(n));
      scale_[k] = static_cast<T>(s);
      inverse_scale_[k] = static_cast<T>(1.0 / s);
    }
    // w_k = exp(-i pi k / (2N)) and, for even N, e_k = exp(-2 pi i k / N), k <= N / 2.
    twiddle_re_.resize(half_ + 1);
    twiddle_im_.resize(half_ + 1);
    unpack_re_.resize(half_ + 1);
    unpack_im_.resize(half_ + 1);
    for (int64_t k = 0; k <= half_; ++k) {
      auto w = UnitRoot(k, 4 * n);
      twiddle_re_[k] = static_cast<T>(w.first);
      twiddle_im_[k] = static_cast<T>(w.second);
      auto e = UnitRoot(k, n);
      unpack_re_[k] = static_cast<T>(e.first);
      unpack_im_[k] = static_cast<T>(e.second);
    }
  }

  int64_t length() const { return length_; }

  // Number of V elements Dct2 / Dct3 need in `work`.
  int64_t WorkSize() const { return 2 * fft_.length() + fft_.WorkSize(); }

  // out[0..N) = C_N x for x[0..N) (out may alias x).
  template <typename V>
  void Dct2(const V* x, V* out, V* work) const {
    const int64_t n = length_;
    const int64_t len = fft_.length();
    V* zr = work;
    V* zi = work + len;
    V* fft_work = work + 2 * len;
    // v[p] = x[2p] for p < ceil(N/2), v[N - 1 - p] = x[2p + 1].
    auto reordered = [&](int64_t p) -> V {
      return 2 * p < n ? x[2 * p] : x[2 * (n - 1 - p) + 1];
    };
    if (even_) {
      for (int64_t k = 0; k < len; ++k) {
        zr[k] = reordered(2 * k);
        zi[k] = reordered(2 * k + 1);
      }
    } else {
      for (int64_t k = 0; k < len; ++k) {
        zr[k] = reordered(k);
        zi[k] = V{};
      }
    }
    fft_.Forward(zr, zi, fft_work);
    const int64_t half_up = (n + 1) / 2;
    for (int64_t k = 0; k <= half_; ++k) {
      V vr, vi;
      if (even_) {
        // V[k] = Ze[k] + e_k Zo[k] from Z = FFT_{N/2}(v_even + i v_odd).
        const int64_t a = k % len, b = (len - k) % len;
        const V er = (zr[a] + zr[b]) * T(0.5), ei = (zi[a] - zi[b]) * T(0.5);
        const V orr = (zi[a] + zi[b]) * T(0.5), oi = (zr[b] - zr[a]) * T(0.5);
        vr = er + orr * unpack_re_[k] - oi * unpack_im_[k];
        vi = ei + orr * unpack_im_[k] + oi * unpack_re_[k];
      } else {
        vr = zr[k];
        vi = zi[k];
      }
      const V re = vr * twiddle_re_[k] - vi * twiddle_im_[k];
      const V im = vr * twiddle_im_[k] + vi * twiddle_re_[k];
      if (k < n) out[k] = re * scale_[k];
      if (k >= 1 && k < half_up) out[n - k] = -im * scale_[n - k];
    }
  }

  // out[0..N) = C_N^T coefficients (out may alias coefficients).
  template <typename V>
  void Dct3(const V* coefficients, V* out, V* work) const {
    const int64_t n = length_;
    const int64_t len = fft_.length();
    V* zr = work;
    V* zi = work + len;
    V* fft_work = work + 2 * len;
    // V[k] = conj(w_k) (X[k] / s_k - i X[N - k] / s_{N - k}), X[N] = 0, k <= N / 2.
    auto spectrum = [&](int64_t k, V* vr, V* vi) {
      const V u = coefficients[k] * inverse_scale_[k];
      const V w = k == 0 ? V{} : coefficients[n - k] * inverse_scale_[n - k];
      // (u - i w) * (c - i s)... with conj(w_k) = (twiddle_re, -twiddle_im).
      const T c = twiddle_re_[k], s = -twiddle_im_[k];
      *vr = u * c + w * s;
      *vi = u * s - w * c;
    };
    if (even_) {
      // Z[k] = Ve[k] + i Vo[k], Ve = (V[k] + conj V[H-k]) / 2,
      // Vo = (V[k] - conj V[H-k]) conj(e_k) / 2; z = IFFT_H(Z) / H.
      for (int64_t k = 0; k < len; ++k) {
        V ar, ai, br, bi;
        spectrum(k, &ar, &ai);
        spectrum(len - k, &br, &bi);
        const V er = (ar + br) * T(0.5), ei = (ai - bi) * T(0.5);
        const V dr = (ar - br) * T(0.5), di = (ai + bi) * T(0.5);
        const T cr = unpack_re_[k], ci = -unpack_im_[k];
        const V orr = dr * cr - di * ci, oi = dr * ci + di * cr;
        zr[k] = er - oi;
        zi[k] = ei + orr;
      }
      fft_.BackwardUnscaled(zr, zi, fft_work);
      const T norm = T(1) / static_cast<T>(len);
      // v[2k] = Re z[k], v[2k + 1] = Im z[k]; x[2p] = v[p], x[2p + 1] = v[N - 1 - p].
      for (int64_t p = 0; p < len; ++p) {
        out[2 * p] = (p % 2 == 0 ? zr[p / 2] : zi[p / 2]) * norm;
      }
      for (int64_t p = 0; p < len; ++p) {
        const int64_t q = n - 1 - p;
        out[2 * p + 1] = (q % 2 == 0 ? zr[q / 2] : zi[q / 2]) * norm;
      }
      return;
    }
    // Odd N: the Hermitian spectrum of length N, one complex inverse FFT.
    for (int64_t k = 0; k <= half_; ++k) {
      spectrum(k, &zr[k], &zi[k]);
      if (k > 0) {
        zr[n - k] = zr[k];
        zi[n - k] = -zi[k];
      }
    }
    fft_.BackwardUnscaled(zr, zi, fft_work);
    const T norm = T(1) / static_cast<T>(n);
    const int64_t half_up = (n + 1) / 2;
    for (int64_t p = 0; p < half_up; ++p) out[2 * p] = zr[p] * norm;
    for (int64_t p = 0; 2 * p + 1 < n; ++p) out[2 * p + 1] = zr[n - 1 - p] * norm;
  }

 private:
  int64_t length_;
  bool even_;
  int64_t half_;
  FftPlan<T> fft_;
  std::vector<T> scale_, inverse_scale_;
  std::vector<T> twiddle_re_, twiddle_im_, unpack_re_, unpack_im_;
};

// The shared plan of `length` (built on first use; thread-safe).
template <typename T>
std::shared_ptr<const DctPlan<T>> PlanFor(int64_t length) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const DctPlan<T>>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(length);
  if (found != plans.end()) return found->second;
  auto plan = std::make_shared<const DctPlan<T>>(length);
  plans[length] = plan;
  return plan;
}

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_DCT_H_
