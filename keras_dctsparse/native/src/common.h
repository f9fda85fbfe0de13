// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// What the kernels share: column pointers of the column-major positions, work
// splits balanced by nonzeros, tile transposes between row-major batches and
// lane-major tiles, and running work on TensorFlow's intra-op thread pool.
#ifndef KERAS_DCTSPARSE_NATIVE_COMMON_H_
#define KERAS_DCTSPARSE_NATIVE_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lanes.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dctsparse {

// An InvalidArgument status whose message is the concatenation of `args`.
template <typename... Args>
absl::Status Invalid(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// ptr[j] = first k with cols[k] >= j, ptr[m] = nnz, for `cols` sorted ascending
// (galloping from the previous column: O(m log(nnz / m)) reads of `cols`).
inline void ColumnPointers(const int32_t* cols, int64_t nnz, int64_t m,
                           std::vector<int64_t>* ptr) {
  ptr->resize(m + 1);
  int64_t* p = ptr->data();
  int64_t pos = 0;
  for (int64_t j = 0; j < m; ++j) {
    p[j] = pos;
    int64_t lo = pos, hi = pos, step = 1;
    while (hi < nnz && cols[hi] <= j) {
      lo = hi + 1;
      hi = pos + step;
      step <<= 1;
    }
    if (hi > nnz) hi = nnz;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cols[mid] <= j) lo = mid + 1; else hi = mid;
    }
    pos = lo;
  }
  p[m] = nnz;
}

// Column boundaries of `parts` contiguous column ranges with about equal
// nonzeros-plus-columns each.
inline std::vector<int64_t> SplitColumns(const std::vector<int64_t>& ptr, int64_t parts) {
  const int64_t m = static_cast<int64_t>(ptr.size()) - 1;
  const int64_t total = ptr[m] + m;
  std::vector<int64_t> bounds(parts + 1);
  bounds[0] = 0;
  bounds[parts] = m;
  for (int64_t q = 1; q < parts; ++q) {
    const int64_t target = total * q / parts;
    int64_t lo = 0, hi = m;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[q] = std::max(bounds[q - 1], lo);
  }
  return bounds;
}

// Rows [b0, b0 + rows) of `x` (row length `width`) as a lane-major tile:
// tile[i * L + t] = x[(b0 + t) * width + i] for i < width; lanes t >= rows and
// tile rows [width, padded_width) are zero.
template <typename T>
void TileIn(const T* x, int64_t width, int64_t b0, int64_t rows, int64_t padded_width,
            T* tile) {
  constexpr int L = Lanes<T>::kCount;
  if (rows == L) {
    int64_t i = 0;
    T block[L][L];
    for (; i + L <= width; i += L) {
      for (int t = 0; t < L; ++t) std::memcpy(block[t], x + (b0 + t) * width + i, sizeof(block[t]));
      for (int c = 0; c < L; ++c)
        for (int t = 0; t < L; ++t) tile[(i + c) * L + t] = block[t][c];
    }
    for (; i < width; ++i)
      for (int t = 0; t < L; ++t) tile[i * L + t] = x[(b0 + t) * width + i];
  } else {
    for (int64_t i = 0; i < width; ++i) {
      for (int64_t t = 0; t < rows; ++t) tile[i * L + t] = x[(b0 + t) * width + i];
      for (int64_t t = rows; t < L; ++t) tile[i * L + t] = T(0);
    }
  }
  std::fill(tile + width * L, tile + padded_width * L, T(0));
}

// The inverse of TileIn for columns [c0, c1): y[(b0 + t) * width + i] = tile[i * L + t].
template <typename T>
void TileOut(const T* tile, int64_t width, int64_t b0, int64_t rows, int64_t c0, int64_t c1,
             T* y) {
  constexpr int L = Lanes<T>::kCount;
  if (rows == L) {
    int64_t i = c0;
    T block[L][L];
    for (; i + L <= c1; i += L) {
      for (int c = 0; c < L; ++c)
        for (int t = 0; t < L; ++t) block[t][c] = tile[(i + c) * L + t];
      for (int t = 0; t < L; ++t) std::memcpy(y + (b0 + t) * width + i, block[t], sizeof(block[t]));
    }
    for (; i < c1; ++i)
      for (int t = 0; t < L; ++t) y[(b0 + t) * width + i] = tile[i * L + t];
    return;
  }
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = c0; i < c1; ++i) y[(b0 + t) * width + i] = tile[i * L + t];
}

// A full 16 x 16 block of 16-lane vectors (float32 with AVX-512) transposed in registers:
// four stages, each swapping one bit of the row index with the same bit of the column
// index (64 two-input shuffles).
template <typename T>
inline void TransposeBlock16(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  typedef typename Lanes<T>::Vec Vec;
  Vec r[16];
  for (int i = 0; i < 16; ++i) r[i] = LoadVec<Vec>(src + i * src_stride);
#define DCTSPARSE_SWAP(S, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, \
                       B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15)   \
  for (int i = 0; i < 16; ++i) {                                                             \
    if (i & S) continue;                                                                     \
    const Vec a = r[i], b = r[i + S];                                                        \
    r[i] = __builtin_shufflevector(a, b, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11,   \
                                   A12, A13, A14, A15);                                      \
    r[i + S] = __builtin_shufflevector(a, b, B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10,    \
                                       B11, B12, B13, B14, B15);                             \
  }
  DCTSPARSE_SWAP(1, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30,
                 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)
  DCTSPARSE_SWAP(2, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29,
                 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)
  DCTSPARSE_SWAP(4, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27,
                 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31)
  DCTSPARSE_SWAP(8, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
                 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31)
#undef DCTSPARSE_SWAP
  for (int i = 0; i < 16; ++i) StoreVec(dst + i * dst_stride, r[i]);
}

// The same for 8-lane vectors (float64 with AVX-512, float32 with AVX2; three stages).
template <typename T>
inline void TransposeBlock8(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  typedef typename Lanes<T>::Vec Vec;
  Vec r[8];
  for (int i = 0; i < 8; ++i) r[i] = LoadVec<Vec>(src + i * src_stride);
#define DCTSPARSE_SWAP(S, A0, A1, A2, A3, A4, A5, A6, A7, B0, B1, B2, B3, B4, B5, B6, B7)   \
  for (int i = 0; i < 8; ++i) {                                                            \
    if (i & S) continue;                                                                   \
    const Vec a = r[i], b = r[i + S];                                                      \
    r[i] = __builtin_shufflevector(a, b, A0, A1, A2, A3, A4, A5, A6, A7);                  \
    r[i + S] = __builtin_shufflevector(a, b, B0, B1, B2, B3, B4, B5, B6, B7);              \
  }
  DCTSPARSE_SWAP(1, 0, 8, 2, 10, 4, 12, 6, 14, 1, 9, 3, 11, 5, 13, 7, 15)
  DCTSPARSE_SWAP(2, 0, 1, 8, 9, 4, 5, 12, 13, 2, 3, 10, 11, 6, 7, 14, 15)
  DCTSPARSE_SWAP(4, 0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15)
#undef DCTSPARSE_SWAP
  for (int i = 0; i < 8; ++i) StoreVec(dst + i * dst_stride, r[i]);
}

// The same for 4-lane vectors (float64 with AVX2, float32 with SSE or NEON; two stages).
template <typename T>
inline void TransposeBlock4(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  typedef typename Lanes<T>::Vec Vec;
  Vec r[4];
  for (int i = 0; i < 4; ++i) r[i] = LoadVec<Vec>(src + i * src_stride);
  for (int i = 0; i < 4; i += 2) {
    const Vec a = r[i], b = r[i + 1];
    r[i] = __builtin_shufflevector(a, b, 0, 4, 2, 6);
    r[i + 1] = __builtin_shufflevector(a, b, 1, 5, 3, 7);
  }
  for (int i = 0; i < 2; ++i) {
    const Vec a = r[i], b = r[i + 2];
    r[i] = __builtin_shufflevector(a, b, 0, 1, 4, 5);
    r[i + 2] = __builtin_shufflevector(a, b, 2, 3, 6, 7);
  }
  for (int i = 0; i < 4; ++i) StoreVec(dst + i * dst_stride, r[i]);
}

// A full lanes x lanes block transposed (in registers for 4, 8 or 16 lanes).
template <typename T>
inline void TransposeBlock(const T* src, int64_t ss, T* dst, int64_t ds) {
  constexpr int L = Lanes<T>::kCount;
  if constexpr (L == 16) {
    TransposeBlock16(src, ss, dst, ds);
  } else if constexpr (L == 8) {
    TransposeBlock8(src, ss, dst, ds);
  } else if constexpr (L == 4) {
    TransposeBlock4(src, ss, dst, ds);
  } else {
    for (int r = 0; r < L; ++r)
      for (int c = 0; c < L; ++c) dst[c * ds + r] = src[r * ss + c];
  }
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols: full blocks of
// lanes x lanes in registers, the edges element by element.
template <typename T>
void Transpose(const T* src, int64_t rows, int64_t cols, int64_t src_stride, T* dst,
               int64_t dst_stride) {
  constexpr int64_t B = Lanes<T>::kCount;
  const int64_t full_rows = rows / B * B, full_cols = cols / B * B;
  for (int64_t r0 = 0; r0 < full_rows; r0 += B)
    for (int64_t c0 = 0; c0 < full_cols; c0 += B)
      TransposeBlock(src + r0 * src_stride + c0, src_stride, dst + c0 * dst_stride + r0,
                     dst_stride);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c_start = r < full_rows ? full_cols : 0;
    for (int64_t c = c_start; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
}

// Work below this many (roughly nanosecond) steps runs on the calling thread: waking
// the pool's threads costs more than it saves.
constexpr int64_t kSerialWork = 40000;

// Runs body(unit) for unit in [0, units), one shard per unit on the intra-op pool,
// or serially when `units * work_per_unit` is below kSerialWork.
inline void RunUnits(tensorflow::OpKernelContext* context, int64_t units, int64_t work_per_unit,
                     const std::function<void(int64_t)>& body) {
  if (units <= 0) return;
  if (units == 1 || units * work_per_unit < kSerialWork) {
    for (int64_t unit = 0; unit < units; ++unit) body(unit);
    return;
  }
  auto* pool = context->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(units, /*cost_per_unit=*/int64_t{1} << 40, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) body(unit);
  });
}

// The positions of S as one (2, nnz) int32 tensor: rows = positions[0], cols = positions[1]
// (the layers' storage, passed without a copy).
struct Positions {
  const int32_t* rows = nullptr;
  const int32_t* cols = nullptr;
  int64_t nnz = 0;
};

// Reads `positions`; fails `context` (and returns false) unless it is (2, nnz) int32.
inline bool ReadPositions(tensorflow::OpKernelContext* context, const tensorflow::Tensor& positions,
                          Positions* out) {
  if (positions.dims() != 2 || positions.dim_size(0) != 2) {
    context->CtxFailure(absl::InvalidArgumentError(
        "positions must be (2, nnz): rows, then columns; got shape " +
        positions.shape().DebugString()));
    return false;
  }
  out->nnz = positions.dim_size(1);
  out->rows = positions.flat<int32_t>().data();
  out->cols = out->rows + out->nnz;
  return true;
}

// Fails `context` with `status` unless `ok`; returns `ok`.
inline bool Require(tensorflow::OpKernelContext* context, bool ok, const absl::Status& status) {
  if (!ok) context->CtxFailure(status);
  return ok;
}

// Fails `context` (and returns false) unless `values` is a vector of length nnz.
inline bool CheckValues(tensorflow::OpKernelContext* context, const tensorflow::Tensor& values,
                        const Positions& positions) {
  return Require(context, values.dims() == 1 && values.dim_size(0) == positions.nnz,
                 Invalid("values must be a vector of length nnz = ", positions.nnz,
                         "; got shape ", values.shape().DebugString()));
}

// Fails `context` (and returns false) unless the columns of the (sorted) positions are in
// [0, m): the first and last are checked.
inline bool CheckColumns(tensorflow::OpKernelContext* context, const Positions& positions,
                         int64_t m) {
  const int64_t nnz = positions.nnz;
  if (nnz == 0) return true;
  const int32_t* c = positions.cols;
  return Require(context, c[0] >= 0 && c[nnz - 1] < m,
                 Invalid("positions[1] (columns) must be sorted and in [0, ", m, "); got ", c[0],
                         " first and ", c[nnz - 1], " last"));
}

// Shape function part: output 0 is a vector of nnz, from the (2, nnz) positions input.
inline absl::Status NnzVectorShape(tensorflow::shape_inference::InferenceContext* c,
                                   int positions_input) {
  tensorflow::shape_inference::ShapeHandle positions;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(positions_input), 2, &positions));
  c->set_output(0, c->Vector(c->Dim(positions, 1)));
  return absl::OkStatus();
}

// Threads of the intra-op pool.
inline int NumThreads(tensorflow::OpKernelContext* context) {
  return context->device()->tensorflow_cpu_worker_threads()->num_threads;
}

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_COMMON_H_
