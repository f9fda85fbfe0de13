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

#include "lanes.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace dctsparse {

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

// Threads of the intra-op pool.
inline int NumThreads(tensorflow::OpKernelContext* context) {
  return context->device()->tensorflow_cpu_worker_threads()->num_threads;
}

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_COMMON_H_
