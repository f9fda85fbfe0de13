// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// A complex FFT of any length on lane vectors: mixed-radix Stockham autosort
// (radices 4, 2, 3, 5 and any prime up to kMaxDirectRadix by its O(p^2) DFT),
// Bluestein's chirp-z (through a power-of-two plan) when a larger prime divides
// the length. Data are split arrays `re[L]`, `im[L]` of a lane type V (a scalar T
// for one row, or Lanes<T>::Vec for a tile of rows, one row per lane); twiddles
// are scalars. Forward transform: X[k] = sum_n x[n] exp(-2 pi i n k / L).
#ifndef KERAS_DCTSPARSE_NATIVE_FFT_H_
#define KERAS_DCTSPARSE_NATIVE_FFT_H_

#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace dctsparse {

// Primes above this are handled by Bluestein's algorithm instead of a direct DFT.
constexpr int64_t kMaxDirectRadix = 67;

// exp(-2 pi i num / den) in double precision, num reduced modulo den first.
inline std::pair<double, double> UnitRoot(int64_t num, int64_t den) {
  int64_t r = num % den;
  if (r < 0) r += den;
  const double angle = -2.0 * M_PI * static_cast<double>(r) / static_cast<double>(den);
  return {std::cos(angle), std::sin(angle)};
}

template <typename T>
class FftPlan {
 public:
  explicit FftPlan(int64_t length) : length_(length) {
    std::vector<int> radices;
    int64_t rest = length;
    while (rest % 4 == 0) { radices.push_back(4); rest /= 4; }
    while (rest % 2 == 0) { radices.push_back(2); rest /= 2; }
    for (int64_t p = 3; rest > 1 && p <= kMaxDirectRadix; p += 2) {
      while (rest % p == 0) { radices.push_back(static_cast<int>(p)); rest /= p; }
    }
    if (rest > 1) {
      // A prime factor above kMaxDirectRadix: Bluestein over the whole length.
      InitBluestein();
      return;
    }
    int64_t ns = 1;
    for (int radix : radices) {
      Stage stage;
      stage.radix = radix;
      stage.ns = ns;
      stage.wr.resize(static_cast<std::size_t>(ns) * (radix - 1));
      stage.wi.resize(stage.wr.size());
      for (int64_t k = 0; k < ns; ++k)
        for (int r = 1; r < radix; ++r) {
          auto w = UnitRoot(r * k, ns * radix);
          stage.wr[k * (radix - 1) + r - 1] = static_cast<T>(w.first);
          stage.wi[k * (radix - 1) + r - 1] = static_cast<T>(w.second);
        }
      if (radix != 2 && radix != 3 && radix != 4) {
        stage.dr.resize(radix);
        stage.di.resize(radix);
        for (int t = 0; t < radix; ++t) {
          auto w = UnitRoot(t, radix);
          stage.dr[t] = static_cast<T>(w.first);
          stage.di[t] = static_cast<T>(w.second);
        }
      }
      stages_.push_back(std::move(stage));
      ns *= radix;
    }
  }

  int64_t length() const { return length_; }

  // Number of V elements `Forward` needs in `work`.
  int64_t WorkSize() const {
    if (sub_) return 4 * sub_length_ + sub_->WorkSize();
    return 2 * length_;
  }

  // In-place forward transform of (re, im), each `length()` lane vectors.
  template <typename V>
  void Forward(V* re, V* im, V* work) const {
    if (sub_) {
      ForwardBluestein(re, im, work);
      return;
    }
    V* src_re = re;
    V* src_im = im;
    V* dst_re = work;
    V* dst_im = work + length_;
    for (const Stage& stage : stages_) {
      RunStage(stage, src_re, src_im, dst_re, dst_im);
      std::swap(src_re, dst_re);
      std::swap(src_im, dst_im);
    }
    if (src_re != re) {
      for (int64_t i = 0; i < length_; ++i) {
        re[i] = src_re[i];
        im[i] = src_im[i];
      }
    }
  }

  // In-place inverse transform without the 1/L factor: conj(FFT(conj(z))).
  template <typename V>
  void BackwardUnscaled(V* re, V* im, V* work) const {
    for (int64_t i = 0; i < length_; ++i) im[i] = -im[i];
    Forward(re, im, work);
    for (int64_t i = 0; i < length_; ++i) im[i] = -im[i];
  }

 private:
  struct Stage {
    int radix;
    int64_t ns;                 // product of the radices of the stages before
    std::vector<T> wr, wi;      // twiddles exp(-2 pi i r k / (ns radix)), [k][r - 1]
    std::vector<T> dr, di;      // exp(-2 pi i t / radix) for the direct DFT
  };

  template <typename V>
  void RunStage(const Stage& stage, const V* in_re, const V* in_im, V* out_re,
                V* out_im) const {
    const int radix = stage.radix;
    const int64_t ns = stage.ns;
    const int64_t stride = length_ / radix;
    const int64_t blocks = length_ / (radix * ns);
    V vr[kMaxDirectRadix + 1], vi[kMaxDirectRadix + 1];
    for (int64_t jb = 0; jb < blocks; ++jb) {
      for (int64_t k = 0; k < ns; ++k) {
        const int64_t j = jb * ns + k;
        for (int r = 0; r < radix; ++r) {
          vr[r] = in_re[j + r * stride];
          vi[r] = in_im[j + r * stride];
        }
        if (ns > 1) {
          const T* wr = &stage.wr[k * (radix - 1)];
          const T* wi = &stage.wi[k * (radix - 1)];
          for (int r = 1; r < radix; ++r) {
            const V a = vr[r], b = vi[r];
            vr[r] = a * wr[r - 1] - b * wi[r - 1];
            vi[r] = a * wi[r - 1] + b * wr[r - 1];
          }
        }
        Butterfly(stage, vr, vi);
        const int64_t base = jb * ns * radix + k;
        for (int r = 0; r < radix; ++r) {
          out_re[base + r * ns] = vr[r];
          out_im[base + r * ns] = vi[r];
        }
      }
    }
  }

  template <typename V>
  static void Butterfly(const Stage& stage, V* vr, V* vi) {
    switch (stage.radix) {
      case 2: {
        const V ar = vr[0], ai = vi[0];
        vr[0] = ar + vr[1];
        vi[0] = ai + vi[1];
        vr[1] = ar - vr[1];
        vi[1] = ai - vi[1];
        return;
      }
      case 4: {
        const V t0r = vr[0] + vr[2], t0i = vi[0] + vi[2];
        const V t1r = vr[0] - vr[2], t1i = vi[0] - vi[2];
        const V t2r = vr[1] + vr[3], t2i = vi[1] + vi[3];
        const V t3r = vr[1] - vr[3], t3i = vi[1] - vi[3];
        vr[0] = t0r + t2r;
        vi[0] = t0i + t2i;
        vr[2] = t0r - t2r;
        vi[2] = t0i - t2i;
        // y1 = t1 - i t3, y3 = t1 + i t3
        vr[1] = t1r + t3i;
        vi[1] = t1i - t3r;
        vr[3] = t1r - t3i;
        vi[3] = t1i + t3r;
        return;
      }
      case 3: {
        const T c = static_cast<T>(-0.5);
        const T s = static_cast<T>(0.86602540378443864676);
        const V sr = vr[1] + vr[2], si = vi[1] + vi[2];
        const V dr = vr[1] - vr[2], di = vi[1] - vi[2];
        const V mr = vr[0] + sr * c, mi = vi[0] + si * c;
        vr[0] = vr[0] + sr;
        vi[0] = vi[0] + si;
        // y1 = m - i s d, y2 = m + i s d
        vr[1] = mr + di * s;
        vi[1] = mi - dr * s;
        vr[2] = mr - di * s;
        vi[2] = mi + dr * s;
        return;
      }
      default: {
        const int radix = stage.radix;
        V yr[kMaxDirectRadix + 1], yi[kMaxDirectRadix + 1];
        for (int q = 0; q < radix; ++q) {
          V ar = vr[0], ai = vi[0];
          int t = 0;
          for (int r = 1; r < radix; ++r) {
            t += q;
            if (t >= radix) t -= radix;
            ar += vr[r] * stage.dr[t] - vi[r] * stage.di[t];
            ai += vr[r] * stage.di[t] + vi[r] * stage.dr[t];
          }
          yr[q] = ar;
          yi[q] = ai;
        }
        for (int q = 0; q < radix; ++q) {
          vr[q] = yr[q];
          vi[q] = yi[q];
        }
        return;
      }
    }
  }

  void InitBluestein() {
    int64_t m = 1;
    while (m < 2 * length_ - 1) m *= 2;
    sub_length_ = m;
    sub_.reset(new FftPlan<T>(m));
    chirp_re_.resize(length_);
    chirp_im_.resize(length_);
    // c_n = exp(-pi i n^2 / L) = exp(-2 pi i (n^2 mod 2L) / (2L)).
    for (int64_t n = 0; n < length_; ++n) {
      auto w = UnitRoot((n * n) % (2 * length_), 2 * length_);
      chirp_re_[n] = static_cast<T>(w.first);
      chirp_im_[n] = static_cast<T>(w.second);
    }
    // Filter h[j] = conj(c_j) at j and m - j, its FFT scaled by 1 / m (for the inverse).
    std::vector<T> hr(m, T(0)), hi(m, T(0)), work(sub_->WorkSize());
    for (int64_t n = 0; n < length_; ++n) {
      auto w = UnitRoot((n * n) % (2 * length_), 2 * length_);
      hr[n] = static_cast<T>(w.first);
      hi[n] = static_cast<T>(-w.second);
      if (n > 0) {
        hr[m - n] = hr[n];
        hi[m - n] = hi[n];
      }
    }
    sub_->Forward(hr.data(), hi.data(), work.data());
    filter_re_.resize(m);
    filter_im_.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      filter_re_[j] = hr[j] / static_cast<T>(m);
      filter_im_[j] = hi[j] / static_cast<T>(m);
    }
  }

  template <typename V>
  void ForwardBluestein(V* re, V* im, V* work) const {
    const int64_t m = sub_length_;
    V* ar = work;
    V* ai = work + m;
    V* sub_work = work + 2 * m;
    for (int64_t n = 0; n < length_; ++n) {
      ar[n] = re[n] * chirp_re_[n] - im[n] * chirp_im_[n];
      ai[n] = re[n] * chirp_im_[n] + im[n] * chirp_re_[n];
    }
    for (int64_t n = length_; n < m; ++n) {
      ar[n] = V{};
      ai[n] = V{};
    }
    sub_->Forward(ar, ai, sub_work);
    for (int64_t j = 0; j < m; ++j) {
      const V a = ar[j], b = ai[j];
      ar[j] = a * filter_re_[j] - b * filter_im_[j];
      ai[j] = a * filter_im_[j] + b * filter_re_[j];
    }
    sub_->BackwardUnscaled(ar, ai, sub_work);
    for (int64_t k = 0; k < length_; ++k) {
      re[k] = ar[k] * chirp_re_[k] - ai[k] * chirp_im_[k];
      im[k] = ar[k] * chirp_im_[k] + ai[k] * chirp_re_[k];
    }
  }

  int64_t length_;
  std::vector<Stage> stages_;
  // Bluestein (sub_ set): power-of-two plan, chirp and filter spectrum.
  std::unique_ptr<FftPlan<T>> sub_;
  int64_t sub_length_ = 0;
  std::vector<T> chirp_re_, chirp_im_, filter_re_, filter_im_;
};

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_FFT_H_
