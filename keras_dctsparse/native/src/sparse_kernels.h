// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// The inner loops of the sparse products, for one lane-major tile of batch rows
// (Lanes<T>::kCount rows, one per lane) or for a single row. S is given by its
// values at (rows[k], cols[k]) of an (n, m) matrix, column-major, with column
// pointers `ptr`. Row indices are checked: an index outside [0, n) sets `*bad`
// and contributes nothing (no out-of-bounds access).
#ifndef KERAS_DCTSPARSE_NATIVE_SPARSE_KERNELS_H_
#define KERAS_DCTSPARSE_NATIVE_SPARSE_KERNELS_H_

#include <cstdint>
#include <type_traits>

#include "lanes.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace dctsparse {

// r if it is a valid row, else 0 with *bad set.
inline int64_t CheckedRow(int32_t r, int64_t n, bool* bad) {
  if (static_cast<uint32_t>(r) >= static_cast<uint64_t>(n)) {
    *bad = true;
    return 0;
  }
  return r;
}

// yt[g][j] = scale * offset[g][j] + sum_{k in column j} values[k] * xt[g][rows[k]] for
// the G lane-major tiles g < G and columns [c0, c1) (offset may be null). Each nonzero is
// read once for all G tiles: S streams from memory once per group of G tiles instead of
// once per tile, which is what bounds the product once S outgrows the cache.
template <typename T, int G>
void TileProduct(const T* const* xt, const T* values, const int32_t* rows, int64_t n,
                 const int64_t* ptr, int64_t c0, int64_t c1, const T* const* offset, T scale,
                 T* const* yt, bool* bad) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  constexpr int U = G == 1 ? 4 : 8 / G;  // nonzeros in flight: U * G accumulators
  for (int64_t j = c0; j < c1; ++j) {
    Vec acc[U][G];
    for (int u = 0; u < U; ++u)
      for (int g = 0; g < G; ++g) acc[u][g] = Vec{};
    int64_t k = ptr[j];
    const int64_t end = ptr[j + 1];
    for (; k + U <= end; k += U) {
      for (int u = 0; u < U; ++u) {
        const int64_t r = CheckedRow(rows[k + u], n, bad) * L;
        const T v = values[k + u];
        for (int g = 0; g < G; ++g) acc[u][g] += LoadVec<Vec>(xt[g] + r) * v;
      }
    }
    for (; k < end; ++k) {
      const int64_t r = CheckedRow(rows[k], n, bad) * L;
      for (int g = 0; g < G; ++g) acc[0][g] += LoadVec<Vec>(xt[g] + r) * values[k];
    }
    for (int g = 0; g < G; ++g) {
      for (int step = 1; step < U; step *= 2)
        for (int u = 0; u + step < U; u += 2 * step) acc[u][g] += acc[u + step][g];
      Vec sum = acc[0][g];
      if (offset != nullptr) sum += LoadVec<Vec>(offset[g] + j * L) * scale;
      StoreVec(yt[g] + j * L, sum);
    }
  }
}

// Calls f(std::integral_constant<int, G>()) for G = count, the number of tiles of a group
// (1 to 4): the group sizes TileProduct and TileTransposedProduct are instantiated for.
template <typename F>
void WithGroupSize(int count, F f) {
  switch (count) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    default: f(std::integral_constant<int, 4>());
  }
}

// acc[g][rows[k]] += values[k] * dyt[g][j] for the G lane-major tiles g < G and columns
// [c0, c1): the product with S^T, each nonzero read once for all G tiles. The rows of one
// column are distinct, so several updates can be in flight at once.
template <typename T, int G>
void TileTransposedProduct(const T* const* dyt, const T* values, const int32_t* rows, int64_t n,
                           const int64_t* ptr, int64_t c0, int64_t c1, T* const* acc,
                           bool* bad) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  constexpr int U = G >= 4 ? 1 : 4 / G;  // nonzeros in flight: U * G updates
  for (int64_t j = c0; j < c1; ++j) {
    Vec d[G];
    for (int g = 0; g < G; ++g) d[g] = LoadVec<Vec>(dyt[g] + j * L);
    int64_t k = ptr[j];
    const int64_t end = ptr[j + 1];
    for (; k + U <= end; k += U) {
      int64_t r[U];
      Vec t[U][G];
      for (int u = 0; u < U; ++u) r[u] = CheckedRow(rows[k + u], n, bad) * L;
      for (int u = 0; u < U; ++u)
        for (int g = 0; g < G; ++g)
          t[u][g] = LoadVec<Vec>(acc[g] + r[u]) + d[g] * values[k + u];
      for (int u = 0; u < U; ++u)
        for (int g = 0; g < G; ++g) StoreVec(acc[g] + r[u], t[u][g]);
    }
    for (; k < end; ++k) {
      const int64_t r = CheckedRow(rows[k], n, bad) * L;
      for (int g = 0; g < G; ++g)
        StoreVec(acc[g] + r, LoadVec<Vec>(acc[g] + r) + d[g] * values[k]);
    }
  }
}

// sum_k values[k] * x[rows[k]] for k in [k0, k1): one output of a single row.
template <typename T>
T RowProduct(const T* x, const T* values, const int32_t* rows, int64_t n, int64_t k0,
             int64_t k1, bool* bad) {
  int64_t k = k0;
  T acc = T(0);
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const __m512i limit = _mm512_set1_epi32(static_cast<int32_t>(n));
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __mmask16 invalid = 0;
    for (; k + 32 <= k1; k += 32) {
      const __m512i i0 = _mm512_loadu_si512(rows + k), i1 = _mm512_loadu_si512(rows + k + 16);
      const __mmask16 m0 = _mm512_cmplt_epu32_mask(i0, limit);
      const __mmask16 m1 = _mm512_cmplt_epu32_mask(i1, limit);
      invalid |= static_cast<__mmask16>(~(m0 & m1));
      const __m512 g0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, i0, x, 4);
      const __m512 g1 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, i1, x, 4);
      s0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k), g0, s0);
      s1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k + 16), g1, s1);
    }
    if (invalid) *bad = true;
    acc = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }
#endif
  T a1 = T(0);
  for (; k + 2 <= k1; k += 2) {
    acc += values[k] * x[CheckedRow(rows[k], n, bad)];
    a1 += values[k + 1] * x[CheckedRow(rows[k + 1], n, bad)];
  }
  for (; k < k1; ++k) acc += values[k] * x[CheckedRow(rows[k], n, bad)];
  return acc + a1;
}

// acc[rows[k]] += values[k] * d for k in [k0, k1) (rows of one column are distinct).
// Scalar: measured faster than AVX-512 gather + scatter (1024 x 1024 at 30%, one
// core: 130 against 257 us).
template <typename T>
void RowScatter(T d, const T* values, const int32_t* rows, int64_t n, int64_t k0, int64_t k1,
                T* acc, bool* bad) {
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const int64_t r0 = CheckedRow(rows[k], n, bad), r1 = CheckedRow(rows[k + 1], n, bad);
    const int64_t r2 = CheckedRow(rows[k + 2], n, bad), r3 = CheckedRow(rows[k + 3], n, bad);
    const T t0 = acc[r0] + values[k] * d, t1 = acc[r1] + values[k + 1] * d;
    const T t2 = acc[r2] + values[k + 2] * d, t3 = acc[r3] + values[k + 3] * d;
    acc[r0] = t0;
    acc[r1] = t1;
    acc[r2] = t2;
    acc[r3] = t3;
  }
  for (; k < k1; ++k) acc[CheckedRow(rows[k], n, bad)] += values[k] * d;
}

// out[k] = x[rows[k]] * d for k in [k0, k1): the sampled product of one row.
template <typename T>
void RowSampled(const T* x, T d, const int32_t* rows, int64_t n, int64_t k0, int64_t k1, T* out,
                bool* bad) {
  int64_t k = k0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const __m512i limit = _mm512_set1_epi32(static_cast<int32_t>(n));
    const __m512 dd = _mm512_set1_ps(d);
    for (; k + 16 <= k1; k += 16) {
      const __m512i idx = _mm512_loadu_si512(rows + k);
      const __mmask16 ok = _mm512_cmplt_epu32_mask(idx, limit);
      if (ok != 0xFFFF) *bad = true;
      const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok, idx, x, 4);
      _mm512_storeu_ps(out + k, _mm512_mul_ps(g, dd));
    }
  }
#endif
  for (; k < k1; ++k) out[k] = x[CheckedRow(rows[k], n, bad)] * d;
}

// The lane sums of 16 vectors of 16 lanes as one vector: out[q] = sum of a[q]'s lanes
// (four levels of pairwise shuffles and adds).
template <typename Vec>
inline Vec SumEachOfSixteen(const Vec* a) {
  Vec t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                   19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                                   26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18,
                                   19, 24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                   22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    w[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20,
                                   21, 24, 25, 28, 29) +
           __builtin_shufflevector(u[2 * i], u[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19,
                                   22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                 28, 30) +
         __builtin_shufflevector(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                 29, 31);
}

// The same for 8 vectors of 8 lanes (three levels).
template <typename Vec>
inline Vec SumEachOfEight(const Vec* a) {
  Vec t[4], u[2];
  for (int i = 0; i < 4; ++i)
    t[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int i = 0; i < 2; ++i)
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

// Whether SumEachLane has a shuffle form for T's lane vectors: float32 with 16 lanes
// (AVX-512) or 8 (AVX2).
template <typename T>
constexpr bool kSumsEachLane = sizeof(T) == 4 && (Lanes<T>::kCount == 16 || Lanes<T>::kCount == 8);

// The lane sums of Lanes<T>::kCount lane vectors as one vector (where kSumsEachLane<T>).
template <typename T>
inline typename Lanes<T>::Vec SumEachLane(const typename Lanes<T>::Vec* a) {
  if constexpr (Lanes<T>::kCount == 16) {
    return SumEachOfSixteen(a);
  } else {
    return SumEachOfEight(a);
  }
}

// out[k] = sum_b xt[rows[k]][b] * dyt[j][b] for columns [c0, c1), rows of
// `width` (a multiple of the lane count) elements: the sampled product x^T dy.
// float32 runs one nonzero per lane at a time (independent sums, reduced together).
template <typename T>
void SampledDot(const T* xt, const T* dyt, int64_t width, const int32_t* rows, int64_t n,
                const int64_t* ptr, int64_t c0, int64_t c1, T* out, bool* bad) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  for (int64_t j = c0; j < c1; ++j) {
    const T* d = dyt + j * width;
    int64_t k = ptr[j];
    const int64_t end = ptr[j + 1];
    if constexpr (kSumsEachLane<T>) {
      for (; k + L <= end; k += L) {
        const T* xr[L];
        for (int q = 0; q < L; ++q) xr[q] = xt + CheckedRow(rows[k + q], n, bad) * width;
        Vec acc[L];
        const Vec d0 = LoadVec<Vec>(d);
        for (int q = 0; q < L; ++q) acc[q] = LoadVec<Vec>(xr[q]) * d0;
        for (int64_t b = L; b < width; b += L) {
          const Vec db = LoadVec<Vec>(d + b);
          for (int q = 0; q < L; ++q) acc[q] += LoadVec<Vec>(xr[q] + b) * db;
        }
        StoreVec(out + k, SumEachLane<T>(acc));
      }
    }
    for (; k < end; ++k) {
      const T* xr = xt + CheckedRow(rows[k], n, bad) * width;
      Vec a0{}, a1{};
      int64_t b = 0;
      for (; b + 2 * L <= width; b += 2 * L) {
        a0 += LoadVec<Vec>(xr + b) * LoadVec<Vec>(d + b);
        a1 += LoadVec<Vec>(xr + b + L) * LoadVec<Vec>(d + b + L);
      }
      for (; b < width; b += L) a0 += LoadVec<Vec>(xr + b) * LoadVec<Vec>(d + b);
      out[k] = SumLanes(a0 + a1);
    }
  }
}

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_SPARSE_KERNELS_H_
