// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// TensorFlow ops of the dense DCTpS product y = alpha * D x + x @ S and its
// gradients, for float32 and float64 on the CPU:
//
//   DctSparseOffset(x)                  -> D x               (first `units` DCT-II coefficients)
//   DctSparseOffsetTranspose(dy)        -> D^T dy            (first `input_dim` DCT-III values)
//   DctSparseMatmul(x, alpha, S)        -> alpha * D x + x @ S, and D x (for alpha's gradient)
//   DctSparseMatmulInputGrad(dy, alpha, S) -> alpha * D^T dy + dy @ S^T
//   DctSparseMatmulValueGrad(x, dy, S positions) -> (x^T dy) at the positions
//
// D is the (m x n) top-left block of the orthonormal DCT-II matrix C_N,
// N = max(n, m), applied by the fast transform of dct.h; S is given by values at
// (rows[k], cols[k]) of the (n, m) Keras kernel, sorted by column then row.
// Batches are processed in lane-major tiles of one vector register's lanes: 16 (float32)
// or 8 (float64) rows with AVX-512, 8 or 4 with AVX2 (lanes.h).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "dct.h"
#include "sparse_kernels.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dctsparse {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

tensorflow::Status MatrixWithColumnsAttr(InferenceContext* c, const char* attr) {
  int64_t columns;
  TF_RETURN_IF_ERROR(c->GetAttr(attr, &columns));
  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &input));
  c->set_output(0, c->Matrix(c->Dim(input, 0), columns));
  return tensorflow::OkStatus();
}

REGISTER_OP("DctSparseOffset")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .Attr("units: int >= 1")
    .SetShapeFn([](InferenceContext* c) { return MatrixWithColumnsAttr(c, "units"); })
    .Doc("D x: the first `units` orthonormal DCT-II coefficients of each row of x "
         "zero-padded to max(n, units).");

REGISTER_OP("DctSparseOffsetTranspose")
    .Input("dy: T")
    .Output("dx: T")
    .Attr("T: {float, double}")
    .Attr("input_dim: int >= 1")
    .SetShapeFn([](InferenceContext* c) { return MatrixWithColumnsAttr(c, "input_dim"); })
    .Doc("D^T dy: the first `input_dim` values of the orthonormal DCT-III of each "
         "row of dy zero-padded to max(input_dim, m).");

REGISTER_OP("DctSparseMatmul")
    .Input("x: T")
    .Input("alpha: T")
    .Input("values: T")
    .Input("positions: int32")
    .Output("y: T")
    .Output("offset: T")
    .Attr("T: {float, double}")
    .Attr("units: int >= 1")
    .Attr("with_offset: bool")
    .Attr("offset_output: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(MatrixWithColumnsAttr(c, "units"));
      bool with_offset, offset_output;
      TF_RETURN_IF_ERROR(c->GetAttr("with_offset", &with_offset));
      TF_RETURN_IF_ERROR(c->GetAttr("offset_output", &offset_output));
      c->set_output(1, with_offset && offset_output ? c->output(0) : c->Matrix(0, 0));
      return tensorflow::OkStatus();
    })
    .Doc("y = alpha * D x + x @ S; offset = D x (for alpha's gradient), or empty without "
         "the offset or when offset_output is false (inference).");

REGISTER_OP("DctSparseMatmulInputGrad")
    .Input("dy: T")
    .Input("alpha: T")
    .Input("values: T")
    .Input("positions: int32")
    .Output("dx: T")
    .Attr("T: {float, double}")
    .Attr("input_dim: int >= 1")
    .Attr("with_offset: bool")
    .SetShapeFn([](InferenceContext* c) { return MatrixWithColumnsAttr(c, "input_dim"); })
    .Doc("dx = alpha * D^T dy + dy @ S^T.");

REGISTER_OP("DctSparseMatmulValueGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("positions: int32")
    .Output("dvalues: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return NnzVectorShape(c, 2); })
    .Doc("dvalues[k] = sum_b x[b, positions[0, k]] * dy[b, positions[1, k]].");

REGISTER_OP("DctSparseDensify")
    .Input("values: T")
    .Input("positions: int32")
    .Output("transposed: T")
    .Attr("T: {float, double}")
    .Attr("input_dim: int >= 1")
    .Attr("units: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      int64_t n, m;
      TF_RETURN_IF_ERROR(c->GetAttr("input_dim", &n));
      TF_RETURN_IF_ERROR(c->GetAttr("units", &m));
      c->set_output(0, c->Matrix(m, n));
      return tensorflow::OkStatus();
    })
    .Doc("S^T as a dense (units, input_dim) matrix, written row by row in one pass.");

REGISTER_OP("DctSparseGatherTransposed")
    .Input("transposed: T")
    .Input("positions: int32")
    .Output("values: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return NnzVectorShape(c, 1); })
    .Doc("values[k] = transposed[positions[1, k], positions[0, k]].");

REGISTER_OP("DctSparseScatterKernel")
    .Input("base: T")
    .Input("alpha: T")
    .Input("values: T")
    .Input("positions: int32")
    .Output("kernel: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle base;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &base));
      c->set_output(0, base);
      return tensorflow::OkStatus();
    })
    .Doc("alpha * base + S in one pass over the (n, m) kernel: S[positions[0, k], "
         "positions[1, k]] = values[k], positions sorted by column (rows in any order "
         "within a column; repeated positions add up).");

REGISTER_OP("DctSparseScatterKernelGrad")
    .Input("dkernel: T")
    .Input("base: T")
    .Input("positions: int32")
    .Output("dvalues: T")
    .Output("dalpha: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(NnzVectorShape(c, 2));
      c->set_output(1, c->Scalar());
      return tensorflow::OkStatus();
    })
    .Doc("The gradients of DctSparseScatterKernel: dvalues[k] = dkernel at position k, "
         "dalpha = sum(dkernel * base), in one pass over the kernel.");

// Checks of the shapes every product op shares; returns false after failing the context.
bool CheckMatrix(OpKernelContext* context, const Tensor& x, const char* name) {
  if (!Require(context, x.dims() == 2,
              Invalid(name, " must be a matrix; got shape ", x.shape().DebugString()))) return false;
  return true;
}

// The inputs the product ops share: a batch matrix (x or dy), alpha, values and positions,
// checked, with the column pointers of the positions over `columns` columns.
template <typename T>
struct ProductInputs {
  const Tensor* batch_matrix = nullptr;
  T alpha = T(0);
  const T* values = nullptr;
  Positions positions;
  std::vector<int64_t> ptr;

  // Reads inputs 0-3 (`name` is input 0's name in messages); `columns` is the number of
  // columns of S, or -1 for input 0's column count. Returns false after failing `context`.
  bool Read(OpKernelContext* context, const char* name, int64_t columns) {
    batch_matrix = &context->input(0);
    const Tensor& alpha_tensor = context->input(1);
    const Tensor& values_tensor = context->input(2);
    if (!CheckMatrix(context, *batch_matrix, name) ||
        !ReadPositions(context, context->input(3), &positions) ||
        !CheckValues(context, values_tensor, positions))
      return false;
    if (!Require(context, alpha_tensor.NumElements() == 1,
                 Invalid("alpha must be a scalar; got shape ", alpha_tensor.shape().DebugString())))
      return false;
    if (columns < 0) columns = batch_matrix->dim_size(1);
    if (!CheckColumns(context, positions, columns)) return false;
    alpha = alpha_tensor.flat<T>()(0);
    values = values_tensor.flat<T>().data();
    ColumnPointers(positions.cols, positions.nnz, columns, &ptr);
    return true;
  }
};

void FailBadRows(OpKernelContext* context, int64_t n) {
  context->CtxFailure(Invalid("positions[0] (rows) must be in [0, ", n, ")"));
}

// Rough cost in nanoseconds of one DCT of `length` on a tile of rows.
inline int64_t DctWork(int64_t length) {
  int64_t log2 = 1;
  while ((int64_t{1} << log2) < length) ++log2;
  return length * log2;
}

// Applies D (forward) or D^T (inverse) to the rows of `input` (B x in_width) into
// `output` (B x out_width); N = max(in_width, out_width).
template <typename T>
void ApplyDct(OpKernelContext* context, const T* input, int64_t batch, int64_t in_width,
              int64_t out_width, bool inverse, T* output) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  const int64_t length = std::max(in_width, out_width);
  if (length == 1) {
    for (int64_t b = 0; b < batch; ++b) output[b] = input[b];
    return;
  }
  auto plan = PlanFor<T>(length);
  if (batch == 1) {
    Buffer<T> row(length), work(plan->WorkSize());
    std::copy(input, input + in_width, row.data());
    std::fill(row.data() + in_width, row.data() + length, T(0));
    if (inverse) plan->Dct3(row.data(), row.data(), work.data());
    else plan->Dct2(row.data(), row.data(), work.data());
    std::copy(row.data(), row.data() + out_width, output);
    return;
  }
  const int64_t tiles = (batch + L - 1) / L;
  RunUnits(context, tiles, DctWork(length), [&](int64_t tile) {
    Buffer<T> data(length * L), work(plan->WorkSize() * L);
    const int64_t b0 = tile * L, rows = std::min<int64_t>(L, batch - b0);
    TileIn(input, in_width, b0, rows, length, data.data());
    Vec* v = reinterpret_cast<Vec*>(data.data());
    Vec* w = reinterpret_cast<Vec*>(work.data());
    if (inverse) plan->Dct3(v, v, w);
    else plan->Dct2(v, v, w);
    TileOut(data.data(), out_width, b0, rows, 0, out_width, output);
  });
}

// D x (forward) or D^T dy (transpose): one fast DCT per row.
template <typename T, bool kTranspose>
class OffsetOp : public OpKernel {
 public:
  explicit OffsetOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr(kTranspose ? "input_dim" : "units", &width_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    if (!CheckMatrix(context, x, kTranspose ? "dy" : "x")) return;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({x.dim_size(0), width_}), &y));
    if (x.dim_size(0) == 0) return;
    ApplyDct<T>(context, x.flat<T>().data(), x.dim_size(0), x.dim_size(1), width_, kTranspose,
                y->flat<T>().data());
  }

 private:
  int64_t width_;
};

// Bytes of the tiles one group of a product reads or updates at random rows: 1 MiB with
// AVX-512 (measured there), else half of a core's L2 cache (AMD Zen 3, 512 KiB of L2 and
// tiles of 8 rows: 4096 x 4096 at 10%, batch 256, forward 23 ms and input gradient 59 ms
// in groups of 2 tiles, 32 ms and 91 ms in groups of 4, the whole L2).
int64_t GroupBytes() {
  if (kVectorBytes == 64) return int64_t{1024} << 10;
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? static_cast<int64_t>(l2) / 2 : int64_t{256} << 10;
  }();
  return bytes;
}

// Bytes of S (value and row per nonzero) beyond which it streams from memory rather than
// from the caches.
constexpr int64_t kStreamedBytes = int64_t{8} << 20;

// How many lane-major tiles (of `padded` rows' worth of inputs) TileProduct and
// TileTransposedProduct take at once, reading each nonzero once for all of them: at most
// 4, as many as fit GroupBytes(). Where S streams from memory, as many as that allows
// (fewer passes over S, the work then split by columns across threads); where it stays
// in cache, no more than leave one group per thread (a split by columns costs a pass of
// its own). Measured, forward and input gradient at batches 32 and 256: 2048 x 2048 and
// 4096 x 4096 at 30% forward 0.84x / 0.95x of Dense at batch 256 against 1.03x / 1.08x
// one tile at a time, the input gradient of 4096 x 4096 at batch 32 8 ms against 11 ms;
// 1024 x 1024 at 30% (2.5 MB of S), batch 32: a forward call of 525 us against 599 us
// grouped.
template <typename T>
int64_t GroupSize(int64_t tiles, int64_t padded, int64_t nnz, int64_t threads) {
  const int64_t tile_bytes = padded * Lanes<T>::kCount * static_cast<int64_t>(sizeof(T));
  const int64_t fit = std::max<int64_t>(1, GroupBytes() / std::max<int64_t>(tile_bytes, 1));
  const bool streamed = nnz * static_cast<int64_t>(sizeof(T) + sizeof(int32_t)) > kStreamedBytes;
  const int64_t most = streamed ? tiles : std::max<int64_t>(1, tiles / std::max<int64_t>(threads, 1));
  return std::min<int64_t>({most, fit, 4});
}

template <typename T>
class MatmulOp : public OpKernel {
 public:
  explicit MatmulOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("units", &units_));
    OP_REQUIRES_OK(context, context->GetAttr("with_offset", &with_offset_));
    OP_REQUIRES_OK(context, context->GetAttr("offset_output", &offset_output_));
  }

  void Compute(OpKernelContext* context) override {
    typedef typename Lanes<T>::Vec Vec;
    constexpr int L = Lanes<T>::kCount;
    ProductInputs<T> in;
    if (!in.Read(context, "x", units_)) return;
    const Tensor& x = *in.batch_matrix;
    const int64_t batch = x.dim_size(0), n = x.dim_size(1), m = units_;
    const int64_t nnz = in.positions.nnz;
    Tensor* y = nullptr;
    Tensor* offset_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, m}), &y));
    OP_REQUIRES_OK(context, context->allocate_output(
                                1, with_offset_ && offset_output_ ? TensorShape({batch, m})
                                                                  : TensorShape({0, 0}),
                                &offset_out));
    if (batch == 0) return;
    // Without the offset output (inference), D x of a single row goes to scratch memory and
    // that of a tile stays in the tile.
    Buffer<T> offset_scratch(with_offset_ && !offset_output_ && batch == 1 ? m : 0);
    const T* X = x.flat<T>().data();
    const T* V = in.values;
    const int32_t* R = in.positions.rows;
    const T a = in.alpha;
    T* Y = y->flat<T>().data();
    T* O = !with_offset_ ? nullptr
           : offset_output_ ? offset_out->flat<T>().data()
           : batch == 1     ? offset_scratch.data()
                            : nullptr;
    const std::vector<int64_t>& ptr = in.ptr;
    const int64_t length = std::max(n, m);
    const int threads = NumThreads(context);
    std::vector<char> bad(std::max<int64_t>(threads * 4, 64), 0);

    if (batch == 1) {
      if (with_offset_) ApplyDct<T>(context, X, 1, n, m, false, O);
      const auto bounds = SplitColumns(ptr, threads * 4);
      RunUnits(context, threads * 4, nnz / (threads * 4) + m / (threads * 4), [&](int64_t part) {
        bool part_bad = false;
        for (int64_t j = bounds[part]; j < bounds[part + 1]; ++j) {
          T sum = RowProduct(X, V, R, n, ptr[j], ptr[j + 1], &part_bad);
          Y[j] = O != nullptr ? sum + a * O[j] : sum;
        }
        bad[part] = part_bad;
      });
      if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
      return;
    }

    const int64_t tiles = (batch + L - 1) / L;
    std::shared_ptr<const DctPlan<T>> plan;
    if (with_offset_ && length > 1) plan = PlanFor<T>(length);
    const int64_t padded = with_offset_ ? length : n;
    // Tiles are taken in groups that read each nonzero once (TileProduct; sizes: GroupSize).
    const int64_t group_size = GroupSize<T>(tiles, padded, nnz, threads);
    const int64_t groups = (tiles + group_size - 1) / group_size;
    const int64_t chunks = groups >= threads ? 1 : (threads + groups - 1) / groups;
    const auto bounds = SplitColumns(ptr, chunks);
    // With several column chunks per group, the tiles (and their offsets) are made once.
    Buffer<T> shared_x, shared_offset;
    if (chunks > 1) {
      shared_x.Resize(tiles * padded * L);
      if (with_offset_) shared_offset.Resize(tiles * length * L);
    }
    auto prepare = [&](int64_t tile, T* xt, T* offset, T* work) {
      const int64_t b0 = tile * L, count = std::min<int64_t>(L, batch - b0);
      TileIn(X, n, b0, count, padded, xt);
      if (!with_offset_) return;
      if (plan) {
        plan->Dct2(reinterpret_cast<const Vec*>(xt), reinterpret_cast<Vec*>(offset),
                   reinterpret_cast<Vec*>(work));
      } else {
        std::copy(xt, xt + L, offset);  // N = 1: D is the identity
      }
      if (O != nullptr) TileOut(offset, m, b0, count, 0, m, O);
    };
    const int64_t work_size = plan ? plan->WorkSize() * L : 0;
    if (chunks > 1) {
      RunUnits(context, tiles, DctWork(length) + padded, [&](int64_t tile) {
        Buffer<T> work(work_size);
        prepare(tile, shared_x.data() + tile * padded * L,
                with_offset_ ? shared_offset.data() + tile * length * L : nullptr, work.data());
      });
    }
    const int64_t unit_work =
        nnz / chunks + group_size * (m + (chunks > 1 ? 0 : DctWork(length) + padded));
    RunUnits(context, groups * chunks, unit_work, [&](int64_t unit) {
      const int64_t group = unit / chunks, chunk = unit % chunks;
      const int64_t first = group * group_size;
      const int count = static_cast<int>(std::min(group_size, tiles - first));
      Buffer<T> x_local, offset_local, work, y_local(count * m * L);
      const T* xt[4];
      const T* offset[4];
      T* yt[4];
      if (chunks == 1) {
        x_local.Resize(count * padded * L);
        if (with_offset_) offset_local.Resize(count * length * L);
        work.Resize(work_size);
      }
      for (int g = 0; g < count; ++g) {
        if (chunks > 1) {
          xt[g] = shared_x.data() + (first + g) * padded * L;
          offset[g] = with_offset_ ? shared_offset.data() + (first + g) * length * L : nullptr;
        } else {
          T* local_offset = with_offset_ ? offset_local.data() + g * length * L : nullptr;
          prepare(first + g, x_local.data() + g * padded * L, local_offset, work.data());
          xt[g] = x_local.data() + g * padded * L;
          offset[g] = local_offset;
        }
        yt[g] = y_local.data() + g * m * L;
      }
      bool unit_bad = false;
      const int64_t c0 = bounds[chunk], c1 = bounds[chunk + 1];
      const T* const* offsets = with_offset_ ? offset : nullptr;
      WithGroupSize(count, [&](auto group_tiles) {
        TileProduct<T, decltype(group_tiles)::value>(xt, V, R, n, ptr.data(), c0, c1, offsets, a,
                                                     yt, &unit_bad);
      });
      if (unit_bad) bad[unit % bad.size()] = 1;
      for (int g = 0; g < count; ++g) {
        const int64_t b0 = (first + g) * L;
        TileOut(yt[g], m, b0, std::min<int64_t>(L, batch - b0), c0, c1, Y);
      }
    });
    if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
  }

 private:
  int64_t units_;
  bool with_offset_, offset_output_;
};

template <typename T>
class InputGradOp : public OpKernel {
 public:
  explicit InputGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("input_dim", &input_dim_));
    OP_REQUIRES_OK(context, context->GetAttr("with_offset", &with_offset_));
  }

  void Compute(OpKernelContext* context) override {
    typedef typename Lanes<T>::Vec Vec;
    constexpr int L = Lanes<T>::kCount;
    ProductInputs<T> in;
    if (!in.Read(context, "dy", -1)) return;
    const Tensor& dy = *in.batch_matrix;
    const int64_t batch = dy.dim_size(0), m = dy.dim_size(1), n = input_dim_;
    const int64_t nnz = in.positions.nnz;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, n}), &dx));
    if (batch == 0) return;
    const T* DY = dy.flat<T>().data();
    const T* V = in.values;
    const int32_t* R = in.positions.rows;
    const T a = in.alpha;
    T* DX = dx->flat<T>().data();
    const std::vector<int64_t>& ptr = in.ptr;
    const int64_t length = std::max(n, m);
    const int threads = NumThreads(context);
    std::vector<char> bad(std::max<int64_t>(threads * 4, 64), 0);

    if (batch == 1) {
      const int64_t parts = nnz >= (int64_t{1} << 14) ? threads : 1;
      const auto bounds = SplitColumns(ptr, parts);
      Buffer<T> partial(parts * n);
      partial.Zero(parts * n);
      RunUnits(context, parts, nnz / parts, [&](int64_t part) {
        bool part_bad = false;
        T* acc = partial.data() + part * n;
        for (int64_t j = bounds[part]; j < bounds[part + 1]; ++j)
          RowScatter(DY[j], V, R, n, ptr[j], ptr[j + 1], acc, &part_bad);
        bad[part] = part_bad;
      });
      if (with_offset_) {
        ApplyDct<T>(context, DY, 1, m, n, true, DX);
        for (int64_t i = 0; i < n; ++i) DX[i] *= a;
      } else {
        std::fill(DX, DX + n, T(0));
      }
      for (int64_t part = 0; part < parts; ++part)
        for (int64_t i = 0; i < n; ++i) DX[i] += partial[part * n + i];
      if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
      return;
    }

    const int64_t tiles = (batch + L - 1) / L;
    std::shared_ptr<const DctPlan<T>> plan;
    if (with_offset_ && length > 1) plan = PlanFor<T>(length);
    const int64_t padded = with_offset_ ? length : m;
    const int64_t stride = std::max(n, length) * L;
    // Groups of tiles read each nonzero once (TileTransposedProduct; sizes: GroupSize, by
    // the accumulators' rows).
    const int64_t group_size = GroupSize<T>(tiles, std::max(n, length), nnz, threads);
    const int64_t groups = (tiles + group_size - 1) / group_size;
    const int64_t chunks = groups >= threads ? 1 : (threads + groups - 1) / groups;
    const auto bounds = SplitColumns(ptr, chunks);
    const int64_t work_size = plan ? plan->WorkSize() * L : 0;
    // Accumulators of tile t's chunk c at (t * chunks + c) * stride; chunk 0 also holds
    // alpha * D^T dy.
    Buffer<T> partial(tiles * chunks * stride);
    const int64_t unit_work = 2 * nnz / chunks + group_size * (n + DctWork(length));
    RunUnits(context, groups * chunks, unit_work, [&](int64_t unit) {
      const int64_t group = unit / chunks, chunk = unit % chunks;
      const int64_t first = group * group_size;
      const int count = static_cast<int>(std::min(group_size, tiles - first));
      Buffer<T> dy_tiles(count * padded * L), work(chunk == 0 ? work_size : 0);
      const T* dyt[4];
      T* acc[4];
      for (int g = 0; g < count; ++g) {
        const int64_t b0 = (first + g) * L;
        T* tile = dy_tiles.data() + g * padded * L;
        TileIn(DY, m, b0, std::min<int64_t>(L, batch - b0), padded, tile);
        dyt[g] = tile;
        acc[g] = partial.data() + ((first + g) * chunks + chunk) * stride;
        if (chunk == 0 && with_offset_) {
          if (plan) {
            plan->Dct3(reinterpret_cast<const Vec*>(tile), reinterpret_cast<Vec*>(acc[g]),
                       reinterpret_cast<Vec*>(work.data()));
          } else {
            std::copy(tile, tile + L, acc[g]);
          }
          for (int64_t i = 0; i < n * L; ++i) acc[g][i] *= a;
        } else {
          std::fill(acc[g], acc[g] + n * L, T(0));
        }
      }
      bool unit_bad = false;
      const int64_t c0 = bounds[chunk], c1 = bounds[chunk + 1];
      WithGroupSize(count, [&](auto group_tiles) {
        TileTransposedProduct<T, decltype(group_tiles)::value>(dyt, V, R, n, ptr.data(), c0, c1,
                                                               acc, &unit_bad);
      });
      if (unit_bad) bad[unit % bad.size()] = 1;
      if (chunks == 1) {
        for (int g = 0; g < count; ++g) {
          const int64_t b0 = (first + g) * L;
          TileOut(acc[g], n, b0, std::min<int64_t>(L, batch - b0), 0, n, DX);
        }
      }
    });
    if (chunks > 1) {
      RunUnits(context, tiles, n * chunks, [&](int64_t tile) {
        const int64_t b0 = tile * L, count = std::min<int64_t>(L, batch - b0);
        T* total = partial.data() + tile * chunks * stride;
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const T* part = total + chunk * stride;
          for (int64_t i = 0; i < n * L; ++i) total[i] += part[i];
        }
        TileOut(total, n, b0, count, 0, n, DX);
      });
    }
    if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
  }

 private:
  int64_t input_dim_;
  bool with_offset_;
};

template <typename T>
class ValueGradOp : public OpKernel {
 public:
  explicit ValueGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    constexpr int L = Lanes<T>::kCount;
    const Tensor& x = context->input(0);
    const Tensor& dy = context->input(1);
    Positions pos;
    if (!CheckMatrix(context, x, "x") || !CheckMatrix(context, dy, "dy") ||
        !ReadPositions(context, context->input(2), &pos))
      return;
    OP_REQUIRES(context, x.dim_size(0) == dy.dim_size(0),
                Invalid("x and dy must have the same number of rows; got ",
                                x.dim_size(0), " and ", dy.dim_size(0)));
    const int64_t batch = x.dim_size(0), n = x.dim_size(1), m = dy.dim_size(1);
    const int64_t nnz = pos.nnz;
    if (!CheckColumns(context, pos, m)) return;
    Tensor* dv = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({nnz}), &dv));
    T* DV = dv->flat<T>().data();
    if (batch == 0) {
      std::fill(DV, DV + nnz, T(0));
      return;
    }
    const T* X = x.flat<T>().data();
    const T* DY = dy.flat<T>().data();
    const int32_t* R = pos.rows;
    std::vector<int64_t> ptr;
    ColumnPointers(pos.cols, nnz, m, &ptr);
    const int threads = NumThreads(context);
    const int64_t parts = threads * 4;
    const auto bounds = SplitColumns(ptr, parts);
    std::vector<char> bad(parts, 0);
    if (batch == 1) {
      RunUnits(context, parts, nnz / parts, [&](int64_t part) {
        bool part_bad = false;
        for (int64_t j = bounds[part]; j < bounds[part + 1]; ++j)
          RowSampled(X, DY[j], R, n, ptr[j], ptr[j + 1], DV, &part_bad);
        bad[part] = part_bad;
      });
    } else {
      // x^T and dy^T with rows padded to a multiple of the lanes, then one dot per nonzero.
      const int64_t width = (batch + L - 1) / L * L;
      Buffer<T> xt(n * width), dyt(m * width);
      const int64_t tiles = width / L;
      const int64_t movers = std::min<int64_t>(tiles, threads);
      RunUnits(context, movers, (n + m) * tiles / movers, [&](int64_t part) {
        Buffer<T> tile(std::max(n, m) * L);
        for (int64_t t = part; t < tiles; t += movers) {
          const int64_t b0 = t * L, count = std::min<int64_t>(L, batch - b0);
          TileIn(X, n, b0, count, n, tile.data());
          for (int64_t i = 0; i < n; ++i)
            std::copy(tile.data() + i * L, tile.data() + (i + 1) * L, xt.data() + i * width + b0);
          TileIn(DY, m, b0, count, m, tile.data());
          for (int64_t j = 0; j < m; ++j)
            std::copy(tile.data() + j * L, tile.data() + (j + 1) * L, dyt.data() + j * width + b0);
        }
      });
      RunUnits(context, parts, nnz * tiles / parts, [&](int64_t part) {
        bool part_bad = false;
        SampledDot(xt.data(), dyt.data(), width, R, n, ptr.data(), bounds[part], bounds[part + 1],
                   DV, &part_bad);
        bad[part] = part_bad;
      });
    }
    if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
  }
};

// S^T dense: each row (a column of S) zeroed and its values placed, rows split over threads.
template <typename T>
class DensifyOp : public OpKernel {
 public:
  explicit DensifyOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("input_dim", &n_));
    OP_REQUIRES_OK(context, context->GetAttr("units", &m_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& values = context->input(0);
    Positions pos;
    if (!ReadPositions(context, context->input(1), &pos) || !CheckValues(context, values, pos) ||
        !CheckColumns(context, pos, m_))
      return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({m_, n_}), &out));
    const T* V = values.flat<T>().data();
    T* S = out->flat<T>().data();
    std::vector<int64_t> ptr;
    ColumnPointers(pos.cols, pos.nnz, m_, &ptr);
    const int threads = NumThreads(context);
    const int64_t parts = threads * 4;
    const auto bounds = SplitColumns(ptr, parts);
    std::vector<char> bad(parts, 0);
    RunUnits(context, parts, (m_ * n_ / 8 + pos.nnz) / parts, [&](int64_t part) {
      bool part_bad = false;
      for (int64_t j = bounds[part]; j < bounds[part + 1]; ++j) {
        T* row = S + j * n_;
        std::fill(row, row + n_, T(0));
        for (int64_t k = ptr[j]; k < ptr[j + 1]; ++k) row[CheckedRow(pos.rows[k], n_, &part_bad)] = V[k];
      }
      bad[part] = part_bad;
    });
    if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n_);
  }

 private:
  int64_t n_, m_;
};

// values[k] = transposed[cols[k], rows[k]]: the value gradient read from a dense S^T gradient.
template <typename T>
class GatherTransposedOp : public OpKernel {
 public:
  explicit GatherTransposedOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& dense = context->input(0);
    Positions pos;
    if (!CheckMatrix(context, dense, "transposed") ||
        !ReadPositions(context, context->input(1), &pos))
      return;
    const int64_t m = dense.dim_size(0), n = dense.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({pos.nnz}), &out));
    const T* D = dense.flat<T>().data();
    T* V = out->flat<T>().data();
    const int threads = NumThreads(context);
    std::vector<char> bad(threads, 0);
    RunUnits(context, threads, pos.nnz / threads, [&](int64_t part) {
      bool part_bad = false;
      const int64_t k0 = pos.nnz * part / threads, k1 = pos.nnz * (part + 1) / threads;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r = CheckedRow(pos.rows[k], n, &part_bad);
        const int64_t c = CheckedRow(pos.cols[k], m, &part_bad);
        V[k] = D[c * n + r];
      }
      bad[part] = part_bad;
    });
    if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; }))
      context->CtxFailure(Invalid("positions must be inside the (", m, ", ", n, ") matrix"));
  }
};

// Columns of the kernel per strip of the scatter and gather below: one 64-byte line of a
// float32 kernel row (a multiple of the lanes).
constexpr int64_t kStripColumns = 16;

// Strips of kStripColumns columns of a kernel `m` columns wide (the last may be narrower).
inline int64_t StripCount(int64_t m) { return (m + kStripColumns - 1) / kStripColumns; }

// Runs body(j0, j1, strip, &bad) for strips of kStripColumns columns [j0, j1) of an (n, m)
// kernel across threads; `strip` is (j1 - j0) x n scratch, column-major over the strip
// (strip[c * n + r] is row r of column j0 + c), so that a column's nonzeros are placed or
// read contiguously while the kernel is read or written row by row, a line per row.
// Fails `context` with the rows' range if any row was outside [0, n).
template <typename T, typename Body>
void ForStrips(OpKernelContext* context, int64_t n, int64_t m, int64_t nnz, Body body) {
  const int64_t strips = StripCount(m);
  std::vector<char> bad(strips, 0);
  RunUnits(context, strips, kStripColumns * n * 2 + nnz / std::max<int64_t>(strips, 1),
           [&](int64_t s) {
             const int64_t j0 = s * kStripColumns, j1 = std::min(m, j0 + kStripColumns);
             Buffer<T> strip((j1 - j0) * n);
             bool strip_bad = false;
             body(j0, j1, strip.data(), &strip_bad);
             bad[s] = strip_bad;
           });
  if (std::any_of(bad.begin(), bad.end(), [](char b) { return b; })) FailBadRows(context, n);
}

// alpha * base + S, strip of columns by strip of columns: the strip's values are placed
// in a zeroed column-major scratch (contiguous per column), then every kernel row of the
// strip is written once from base and the scratch.
template <typename T>
class ScatterKernelOp : public OpKernel {
 public:
  explicit ScatterKernelOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& base = context->input(0);
    const Tensor& alpha = context->input(1);
    const Tensor& values = context->input(2);
    Positions pos;
    if (!CheckMatrix(context, base, "base") ||
        !Require(context, tensorflow::TensorShapeUtils::IsScalar(alpha.shape()),
                 Invalid("alpha must be a scalar; got shape ", alpha.shape().DebugString())) ||
        !ReadPositions(context, context->input(3), &pos) || !CheckValues(context, values, pos))
      return;
    const int64_t n = base.dim_size(0), m = base.dim_size(1);
    if (!CheckColumns(context, pos, m)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, base.shape(), &out));
    const T a = alpha.scalar<T>()();
    const T* B = base.flat<T>().data();
    const T* V = values.flat<T>().data();
    T* K = out->flat<T>().data();
    std::vector<int64_t> ptr;
    ColumnPointers(pos.cols, pos.nnz, m, &ptr);
    ForStrips<T>(context, n, m, pos.nnz, [&](int64_t j0, int64_t j1, T* strip, bool* bad) {
      const int64_t width = j1 - j0;
      std::fill(strip, strip + width * n, T(0));
      for (int64_t c = 0; c < width; ++c) {
        T* column = strip + c * n;
        for (int64_t k = ptr[j0 + c]; k < ptr[j0 + c + 1]; ++k)
          column[CheckedRow(pos.rows[k], n, bad)] += V[k];
      }
      int64_t r = 0;
      if (width == kStripColumns) {  // lanes x lanes blocks transposed in registers
        typedef typename Lanes<T>::Vec Vec;
        constexpr int L = Lanes<T>::kCount;
        alignas(64) T block[L * L];
        for (; r + L <= n; r += L)
          for (int64_t c = 0; c < kStripColumns; c += L) {
            TransposeBlock(strip + c * n + r, n, block, L);
            for (int q = 0; q < L; ++q) {
              const int64_t at = (r + q) * m + j0 + c;
              StoreVec(K + at, LoadVec<Vec>(B + at) * a + LoadVec<Vec>(block + q * L));
            }
          }
      }
      for (; r < n; ++r) {
        const T* b = B + r * m + j0;
        T* out_row = K + r * m + j0;
        for (int64_t c = 0; c < width; ++c) out_row[c] = a * b[c] + strip[c * n + r];
      }
    });
  }
};

// dvalues (dkernel at the positions) and dalpha = sum(dkernel * base), one pass: strip by
// strip of columns, each kernel row's line of the strip read once into a column-major
// scratch (and dotted with base), the values then read from the scratch column by column.
template <typename T>
class ScatterKernelGradOp : public OpKernel {
 public:
  explicit ScatterKernelGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& dkernel = context->input(0);
    const Tensor& base = context->input(1);
    Positions pos;
    if (!CheckMatrix(context, dkernel, "dkernel") ||
        !Require(context, base.shape() == dkernel.shape(),
                 Invalid("base must have the shape of dkernel, ",
                         dkernel.shape().DebugString(), "; got ", base.shape().DebugString())) ||
        !ReadPositions(context, context->input(2), &pos))
      return;
    const int64_t n = base.dim_size(0), m = base.dim_size(1);
    if (!CheckColumns(context, pos, m)) return;
    Tensor* dvalues = nullptr;
    Tensor* dalpha = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({pos.nnz}), &dvalues));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &dalpha));
    const T* D = dkernel.flat<T>().data();
    const T* B = base.flat<T>().data();
    T* DV = dvalues->flat<T>().data();
    std::vector<int64_t> ptr;
    ColumnPointers(pos.cols, pos.nnz, m, &ptr);
    std::vector<double> partial(StripCount(m), 0.0);
    ForStrips<T>(context, n, m, pos.nnz, [&](int64_t j0, int64_t j1, T* strip, bool* bad) {
      const int64_t width = j1 - j0;
      T sums[kStripColumns] = {};
      int64_t r = 0;
      if (width == kStripColumns) {  // lanes x lanes blocks transposed in registers
        typedef typename Lanes<T>::Vec Vec;
        constexpr int L = Lanes<T>::kCount;
        Vec acc[kStripColumns / L] = {};
        for (; r + L <= n; r += L)
          for (int64_t c = 0; c < kStripColumns; c += L) {
            for (int q = 0; q < L; ++q) {
              const int64_t at = (r + q) * m + j0 + c;
              acc[c / L] += LoadVec<Vec>(D + at) * LoadVec<Vec>(B + at);
            }
            TransposeBlock(D + r * m + j0 + c, m, strip + c * n + r, n);
          }
        for (int64_t c = 0; c < kStripColumns; ++c) sums[c] = acc[c / L][c % L];
      }
      for (; r < n; ++r) {
        const T* d = D + r * m + j0;
        const T* b = B + r * m + j0;
        for (int64_t c = 0; c < width; ++c) {
          sums[c] += d[c] * b[c];
          strip[c * n + r] = d[c];
        }
      }
      double sum = 0.0;
      for (int64_t c = 0; c < width; ++c) {
        sum += static_cast<double>(sums[c]);
        const T* column = strip + c * n;
        for (int64_t k = ptr[j0 + c]; k < ptr[j0 + c + 1]; ++k)
          DV[k] = column[CheckedRow(pos.rows[k], n, bad)];
      }
      partial[j0 / kStripColumns] = sum;
    });
    if (!context->status().ok()) return;
    double total = 0.0;
    for (double p : partial) total += p;
    dalpha->scalar<T>()() = static_cast<T>(total);
  }
};

#define REGISTER_DCTSPARSE_KERNELS(T)                                                   \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseOffset").Device(DEVICE_CPU).TypeConstraint<T>("T"), OffsetOp<T, false>); \
  REGISTER_KERNEL_BUILDER(Name("DctSparseOffsetTranspose").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          OffsetOp<T, true>);                                        \
  REGISTER_KERNEL_BUILDER(Name("DctSparseMatmul").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          MatmulOp<T>);                                                 \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseMatmulInputGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      InputGradOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseMatmulValueGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      ValueGradOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(Name("DctSparseDensify").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          DensifyOp<T>);                                                \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseGatherTransposed").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      GatherTransposedOp<T>);                                                           \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseScatterKernel").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
      ScatterKernelOp<T>);                                                              \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("DctSparseScatterKernelGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
      ScatterKernelGradOp<T>);

REGISTER_DCTSPARSE_KERNELS(float)
REGISTER_DCTSPARSE_KERNELS(double)

}  // namespace
}  // namespace dctsparse

// Bytes of one lane vector of the kernels (64 with AVX-512, 32 with AVX/AVX2, 16
// otherwise): a tile holds that many bytes' worth of batch rows. Read by
// keras_dctsparse.native.library.vector_bytes().
extern "C" int DctSparseVectorBytes() { return dctsparse::kVectorBytes; }
