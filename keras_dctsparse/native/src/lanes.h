// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// Lane vectors: one vector register of float32 or float64 (16 / 8 lanes with AVX-512,
// 8 / 4 with AVX2, 4 / 2 with SSE or NEON) as GCC/Clang vector extensions. Arithmetic on
// them is element-wise and a scalar operand is broadcast, so the same template code runs
// on one row (T) or on a tile of rows (Lanes<T>::Vec), one row per lane.
#ifndef KERAS_DCTSPARSE_NATIVE_LANES_H_
#define KERAS_DCTSPARSE_NATIVE_LANES_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace dctsparse {

template <typename T>
struct Lanes;

// A lane vector is one of the target's widest vector registers: 64 bytes with AVX-512,
// 32 with AVX/AVX2, 16 otherwise (SSE, NEON). GCC keeps vectors of a size the target has
// no register for in memory, not in registers: 64-byte vectors on AVX2 made every
// accumulator update a load and a store (the dense products ran 3-10x slower there).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

// How many lane vectors the target's registers hold at once (32 zmm with AVX-512, 16 ymm
// with AVX2, 16 xmm with SSE, 32 q with NEON): the budget of the kernels' register
// blocking (accumulators and operands in flight).
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kVecRegisters = 32;
#else
constexpr int kVecRegisters = 16;
#endif

template <>
struct Lanes<float> {
  typedef float Vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kCount = kVectorBytes / 4;
};

template <>
struct Lanes<double> {
  typedef double Vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kCount = kVectorBytes / 8;
};

// Unaligned load / store of one lane vector, through a copy of its type that may alias
// anything and needs only byte alignment (one vmovups). A std::memcpy from a local
// vector made GCC spill it and store it through general registers in halves on AVX2
// (the input gradient's updates).
template <typename V>
inline V LoadVec(const void* p) {
  typedef V Unaligned __attribute__((aligned(1), may_alias));
  return *static_cast<const Unaligned*>(p);
}

template <typename V>
inline void StoreVec(void* p, const V& v) {
  typedef V Unaligned __attribute__((aligned(1), may_alias));
  *static_cast<Unaligned*>(p) = v;
}

// Horizontal sum of a lane vector (or the scalar itself).
template <typename T>
inline T SumLanes(T v) {
  return v;
}
inline float SumLanes(Lanes<float>::Vec v) {
  float s = 0.f;
  for (int i = 0; i < Lanes<float>::kCount; ++i) s += v[i];
  return s;
}
inline double SumLanes(Lanes<double>::Vec v) {
  double s = 0.0;
  for (int i = 0; i < Lanes<double>::kCount; ++i) s += v[i];
  return s;
}

// A zero-initialized buffer aligned to 64 bytes (scratch of the kernels).
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t count) { Resize(count); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(data_); }

  // Makes room for `count` elements (contents undefined after growth).
  void Resize(std::size_t count) {
    if (count <= capacity_) return;
    std::free(data_);
    data_ = nullptr;
    std::size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    if (bytes == 0) bytes = 64;
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
    data_ = static_cast<T*>(p);
    capacity_ = count;
  }
  void Zero(std::size_t count) { std::memset(data_, 0, count * sizeof(T)); }
  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](std::size_t i) { return data_[i]; }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_LANES_H_
