// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// TensorFlow ops of the DCTpS convolution y = alpha * conv(x, Kd) + conv(x, S) and its
// gradients (2-D, channels_last, one group, any stride, dilation and explicit padding),
// float32 and float64 on the CPU:
//
//   DctSparseConv2D(x, uv, alpha, S, bias)     -> y (bias added when not empty), offset
//   DctSparseConv2DInputGrad(dy, alpha, S)     -> dx (of the S part), duv (of the offset)
//   DctSparseConv2DValueGrad(x, dy, S positions) -> dvalues
//
// S is given by values at (rows[k], cols[k]) of the (kh*kw*c_in, filters) matrix view of
// the Keras kernel, rows = (i * kw + j) * c_in + ch, sorted by column then row. The
// offset conv(x, Kd) is factored (method.md, section 2): uv = x @ [cos | sin] (a 1x1
// conv computed by TensorFlow, c_in -> 2 filters; or, for a forward alone, by the op
// itself from the (c_in, 2 filters) table, image rows by image rows, so that uv stays in
// cache instead of a round trip through memory: `uv_is_table`), then per output channel c
//   offset[c](p) = sum over taps t of  u_taps[t][c] * U[c](p + t) + v_taps[t][c] * V[c](p + t)
// with u_taps = s_c cos(pi c t c_in / N), v_taps = -s_c sin(pi c t c_in / N) and
// N = max(kh * kw * c_in, filters); those depthwise taps run here, vectorized over channels.
//
// The sparse part works on "panels": the input rows an image needs, transposed to
// (row, channel, stride phase, column) with the padding materialized as zeros, so that
// the output pixels of a tile (16 float32 with AVX-512, 8 with AVX2: one per lane) read
// that many consecutive floats for every nonzero.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "common.h"
#include "conv_geometry.h"
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

REGISTER_OP("DctSparseConv2D")
    .Input("x: T")
    .Input("uv: T")
    .Input("alpha: T")
    .Input("values: T")
    .Input("positions: int32")
    .Input("bias: T")
    .Output("y: T")
    .Output("offset: T")
    .DCTSPARSE_CONV_ATTRS
    .Attr("with_offset: bool")
    .Attr("offset_output: bool = true")
    .Attr("uv_is_table: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ConvShape(c, 0, true));
      bool with_offset, offset_output;
      TF_RETURN_IF_ERROR(c->GetAttr("with_offset", &with_offset));
      TF_RETURN_IF_ERROR(c->GetAttr("offset_output", &offset_output));
      c->set_output(1, with_offset && offset_output ? c->output(0) : c->MakeShape({0, 0, 0, 0}));
      return tensorflow::OkStatus();
    })
    .Doc("y = alpha * offset + conv(x, S) + bias; offset from uv = x @ [cos | sin] by the DCT "
         "taps; bias (filters,), or empty for none. With uv_is_table, `uv` is the (c_in, "
         "2 filters) table [cos | sin] and the op computes x @ table itself (forward only: "
         "with_offset and no offset_output).");

REGISTER_OP("DctSparseConv2DInputGrad")
    .Input("dy: T")
    .Input("alpha: T")
    .Input("values: T")
    .Input("positions: int32")
    .Input("input_shape: int64")
    .Output("dx: T")
    .Output("duv: T")
    .DCTSPARSE_CONV_ATTRS
    .Attr("in_channels: int >= 1")
    .Attr("with_offset: bool")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle shape;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(4, &shape));
      TF_RETURN_IF_ERROR(c->WithRank(shape, 4, &shape));
      c->set_output(0, shape);
      bool with_offset;
      int64_t filters;
      TF_RETURN_IF_ERROR(c->GetAttr("with_offset", &with_offset));
      TF_RETURN_IF_ERROR(c->GetAttr("filters", &filters));
      ShapeHandle duv;
      TF_RETURN_IF_ERROR(c->ReplaceDim(shape, 3, c->MakeDim(2 * filters), &duv));
      c->set_output(1, with_offset ? duv : c->MakeShape({0, 0, 0, 0}));
      return tensorflow::OkStatus();
    })
    .Doc("dx = conv(x, S)^T dy; duv = alpha * (the DCT taps)^T dy (gradient w.r.t. uv).");

REGISTER_OP("DctSparseConv2DValueGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("positions: int32")
    .Output("dvalues: T")
    .DCTSPARSE_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) { return NnzVectorShape(c, 2); })
    .Doc("dvalues[k] = sum over images and output pixels of dy[.., cols[k]] times the "
         "input under tap and channel rows[k].");

// Everything one call shares: sizes, panel layout, per-nonzero offsets, column pointers.
template <typename T>
struct ConvPlan {
  static constexpr int L = Lanes<T>::kCount;
  ConvAttrs a;
  int64_t batch, h, w, c_in, out_h, out_w, nnz;
  int64_t padded_h, padded_w, phase_w;  // panel: rows, padded columns, columns per phase
  std::vector<int64_t> ptr;             // column pointers of the positions
  std::vector<int64_t> delta;           // per nonzero: panel offset from its output row base
  bool bad = false;                     // a row index out of [0, kh * kw * c_in)

  void Init(const ConvAttrs& attrs, int64_t b, int64_t hh, int64_t ww, int64_t c,
            const int32_t* rows, const int32_t* cols, int64_t count) {
    a = attrs; batch = b; h = hh; w = ww; c_in = c; nnz = count;
    out_h = a.OutHeight(h); out_w = a.OutWidth(w);
    padded_h = h + a.pad_top + a.pad_bottom;
    padded_w = w + a.pad_left + a.pad_right;
    phase_w = (padded_w + a.sw - 1) / a.sw + L;
    ColumnPointers(cols, nnz, a.filters, &ptr);
    delta.resize(nnz);
    const int64_t patch = a.kh * a.kw * c_in;
    for (int64_t k = 0; k < nnz; ++k) {
      int64_t r = rows[k];
      if (r < 0 || r >= patch) { bad = true; r = 0; }
      const int64_t tap = r / c_in, ch = r - tap * c_in;
      const int64_t i = tap / a.kw, j = tap - i * a.kw;
      const int64_t column = j * a.dw;
      delta[k] = ((i * a.dh * c_in + ch) * a.sw + column % a.sw) * phase_w + column / a.sw;
    }
  }

  int64_t PanelRowSize() const { return c_in * a.sw * phase_w; }
  // Padded rows [first, last) that output rows [oh0, oh1) read.
  int64_t FirstRow(int64_t oh0) const { return oh0 * a.sh; }
  int64_t LastRow(int64_t oh1) const { return (oh1 - 1) * a.sh + (a.kh - 1) * a.dh + 1; }
  // Panel offset of output row oh, tile start ow0, in a panel starting at padded row `first`.
  int64_t Base(int64_t oh, int64_t ow0, int64_t first) const {
    return (oh * a.sh - first) * PanelRowSize() + ow0;
  }
};

// The positions of S reordered by rows (tap and input channel) with their values, and the
// panel offset of each row: a counting sort, O(nnz + patch) per call.
template <typename T>
struct RowMajor {
  std::vector<int64_t> ptr, delta, order;  // order[slot]: the column-major index of a slot
  std::vector<int32_t> cols, nonempty;     // nonempty: the rows holding nonzeros
  std::vector<T> values;

  RowMajor(const ConvPlan<T>& p, const int32_t* rows, const int32_t* columns, const T* v) {
    const int64_t patch = p.a.kh * p.a.kw * p.c_in;
    ptr.assign(patch + 1, 0);
    for (int64_t k = 0; k < p.nnz; ++k) ++ptr[rows[k] + 1];  // rows checked by ConvPlan::Init
    for (int64_t r = 0; r < patch; ++r) ptr[r + 1] += ptr[r];
    std::vector<int64_t> next(ptr.begin(), ptr.end() - 1);
    cols.resize(p.nnz);
    values.resize(p.nnz);
    order.resize(p.nnz);
    delta.assign(patch, 0);
    for (int64_t k = 0; k < p.nnz; ++k) {
      const int64_t slot = next[rows[k]]++;
      cols[slot] = columns[k];
      if (v != nullptr) values[slot] = v[k];
      order[slot] = k;
      delta[rows[k]] = p.delta[k];
    }
    for (int64_t r = 0; r < patch; ++r)
      if (ptr[r + 1] > ptr[r]) nonempty.push_back(static_cast<int32_t>(r));
  }
};

// Fills `panel` with padded rows [first, last) of image b of x (NHWC): zeros in the padding.
template <typename T>
void BuildPanel(const ConvPlan<T>& p, const T* x, int64_t b, int64_t first, int64_t last,
                T* panel) {
  const int64_t row_size = p.PanelRowSize();
  std::fill(panel, panel + (last - first) * row_size, T(0));
  const int64_t sw = p.a.sw;
  for (int64_t r = first; r < last; ++r) {
    const int64_t ih = r - p.a.pad_top;
    if (ih < 0 || ih >= p.h) continue;
    const T* src = x + (b * p.h + ih) * p.w * p.c_in;
    T* dst = panel + (r - first) * row_size;
    if (sw == 1) {  // (w, c_in) -> (c_in, phase_w) at column pad_left
      Transpose(src, p.w, p.c_in, p.c_in, dst + p.a.pad_left, p.phase_w);
      continue;
    }
    for (int64_t iw = 0; iw < p.w; ++iw) {
      const int64_t column = iw + p.a.pad_left;
      T* out = dst + (column % sw) * p.phase_w + column / sw;
      const T* in = src + iw * p.c_in;
      for (int64_t ch = 0; ch < p.c_in; ++ch) out[ch * sw * p.phase_w] = in[ch];
    }
  }
}

// Writes the panel rows [first, last) into image b of dx (NHWC), skipping the padding
// (every input element has exactly one place in the panel).
template <typename T>
void PanelToInput(const ConvPlan<T>& p, const T* panel, int64_t b, int64_t first, int64_t last,
                  T* dx) {
  const int64_t row_size = p.PanelRowSize();
  const int64_t sw = p.a.sw;
  for (int64_t r = first; r < last; ++r) {
    const int64_t ih = r - p.a.pad_top;
    if (ih < 0 || ih >= p.h) continue;
    const T* src = panel + (r - first) * row_size;
    T* dst = dx + (b * p.h + ih) * p.w * p.c_in;
    if (sw == 1) {  // (c_in, phase_w) at column pad_left -> (w, c_in)
      Transpose(src + p.a.pad_left, p.c_in, p.w, p.phase_w, dst, p.c_in);
      continue;
    }
    for (int64_t iw = 0; iw < p.w; ++iw) {
      const int64_t column = iw + p.a.pad_left;
      const T* in = src + (column % sw) * p.phase_w + column / sw;
      T* out = dst + iw * p.c_in;
      for (int64_t ch = 0; ch < p.c_in; ++ch) out[ch] = in[ch * sw * p.phase_w];
    }
  }
}

// The depthwise DCT taps of one call: u[t * F + c], v[t * F + c] (scales included).
template <typename T>
void DctTaps(const ConvAttrs& a, int64_t c_in, std::vector<T>* u, std::vector<T>* v) {
  const int64_t taps = a.kh * a.kw, f = a.filters;
  const int64_t n = std::max(taps * c_in, f);
  u->resize(taps * f);
  v->resize(taps * f);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < f; ++c) {
      // angle = pi * c * t * c_in / N = 2 pi * m / (2N), m reduced mod 2N in integers.
      const int64_t m = ((c % (2 * n)) * ((t * c_in) % (2 * n))) % (2 * n);
      const double angle = M_PI * static_cast<double>(m) / static_cast<double>(n);
      const double s = std::sqrt((c == 0 ? 1.0 : 2.0) / static_cast<double>(n));
      (*u)[t * f + c] = static_cast<T>(s * std::cos(angle));
      (*v)[t * f + c] = static_cast<T>(-s * std::sin(angle));
    }
}

// Tap weights cached per input channel count (the op's other attributes are fixed).
template <typename T>
class TapCache {
 public:
  void Get(const ConvAttrs& a, int64_t c_in, const std::vector<T>** u, const std::vector<T>** v) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (c_in != c_in_) {
      DctTaps(a, c_in, &u_, &v_);
      c_in_ = c_in;
    }
    *u = &u_;
    *v = &v_;
  }

 private:
  std::mutex mutex_;
  int64_t c_in_ = -1;
  std::vector<T> u_, v_;
};

// The bytes of uv a forward with uv_is_table computes at a time (the input rows of one
// band of output rows), so that the taps read uv from cache and a unit's scratch does not
// grow with the image (it held the whole image's uv: 25.7 MB for 224 x 224 x 64 filters).
// 512 KiB: one core's L2 on the AVX2 host (README, "Speed on AVX2 CPUs"); a build with
// 256 KiB, timed beside it, was no faster on 8-32 maps and slower on 112 x 112.
constexpr int64_t kUvBandBytes = 512 * 1024;

// Output rows [oh0, oh1) of every image, as work units of (image, row block).
struct RowBlocks {
  int64_t per_image, rows_per_block;
  RowBlocks(int64_t batch, int64_t out_h, int threads) {
    per_image = batch >= 2 * threads ? 1 : std::min<int64_t>(out_h, (2 * threads + batch - 1) / batch);
    rows_per_block = (out_h + per_image - 1) / per_image;
    per_image = (out_h + rows_per_block - 1) / rows_per_block;
  }
  int64_t Units(int64_t batch) const { return batch * per_image; }
};

// Pixels of a tap group and the lane vectors of channels per accumulator block in
// OffsetTaps: 4 pixels x 4 vectors (64 float32 channels with AVX-512) = 16 accumulators
// in registers, half of them; 4 x 2 = 8 where the target has 16 vector registers.
constexpr int kTapPixels = 4;
constexpr int kTapVectors = kVecRegisters >= 32 ? 4 : 2;

// Channels [c, c + K * L) of the offset of the kTapPixels output pixels whose uv rows the
// tap group `sources` points to (one pointer per pixel and tap; a pixel or tap outside the
// image points to `zeros`). Every uv load reads contiguous channels of one pixel and every
// weight vector serves all pixels of the group.
template <typename T, int K>
inline void TapBlock(const T* const* sources, int64_t taps, int64_t f, int64_t c, const T* wu,
                     const T* wv, int count, T alpha, T* o_row, T* y_row) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  constexpr int P = kTapPixels;
  Vec acc[P][K];
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q)
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[q][k] = Vec{};
  for (int64_t t = 0; t < taps; ++t) {
    const T* const* row = sources + t * P;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const int64_t channel = c + k * L;
      const Vec weight_u = LoadVec<Vec>(wu + t * f + channel);
      const Vec weight_v = LoadVec<Vec>(wv + t * f + channel);
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q)
        acc[q][k] += weight_u * LoadVec<Vec>(row[q] + channel) +
                     weight_v * LoadVec<Vec>(row[q] + f + channel);
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q) {
    if (q >= count) break;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const int64_t at = q * f + c + k * L;
      StoreVec(o_row + at, acc[q][k]);
      StoreVec(y_row + at, LoadVec<Vec>(y_row + at) + acc[q][k] * alpha);
    }
  }
}

// The offset of output pixels (oh, ow0 .. ow0 + count) of image b: the DCT taps on uv,
// pixel-major: groups of kTapPixels pixels, channels in blocks of kTapVectors lane vectors
// (then single vectors, then a scalar tail), so that the loads of a block read whole
// cache lines of each pixel's uv. A tap outside the image reads `zeros` (2 * filters
// zeros). `uv_rows` holds the uv of the image's rows from `row0` on, (rows, w, 2 * filters).
// Writes the offset to `o_row` and adds alpha times it to `y_row` (both (count, filters),
// pixel-major). `sources` is scratch (kh * kw * kTapPixels pointers).
template <typename T>
void OffsetTaps(const ConvPlan<T>& p, const T* uv_rows, int64_t row0, const T* wu, const T* wv,
                const T* zeros, int64_t oh, int64_t ow0, int64_t count, T alpha, T* o_row,
                T* y_row, std::vector<const T*>* scratch) {
  constexpr int L = Lanes<T>::kCount;
  constexpr int P = kTapPixels;
  const ConvAttrs& a = p.a;
  const int64_t f = a.filters, taps = a.kh * a.kw;
  const int64_t blocked = f / (kTapVectors * L) * (kTapVectors * L), vectors = f / L * L;
  std::vector<const T*>& sources = *scratch;
  sources.resize(taps * P);
  for (int64_t q0 = 0; q0 < count; q0 += P) {
    const int group = static_cast<int>(std::min<int64_t>(P, count - q0));
    for (int64_t i = 0; i < a.kh; ++i) {
      const int64_t ih = oh * a.sh + i * a.dh - a.pad_top;
      for (int64_t j = 0; j < a.kw; ++j)
        for (int q = 0; q < P; ++q) {
          const int64_t iw = (ow0 + q0 + q) * a.sw + j * a.dw - a.pad_left;
          const bool inside = q < group && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w;
          sources[(i * a.kw + j) * P + q] =
              inside ? uv_rows + ((ih - row0) * p.w + iw) * 2 * f : zeros;
        }
    }
    T* o = o_row + q0 * f;
    T* y = y_row + q0 * f;
    int64_t c = 0;
    for (; c < blocked; c += kTapVectors * L)
      TapBlock<T, kTapVectors>(sources.data(), taps, f, c, wu, wv, group, alpha, o, y);
    for (; c < vectors; c += L)
      TapBlock<T, 1>(sources.data(), taps, f, c, wu, wv, group, alpha, o, y);
    for (; c < f; ++c)  // the last f % L channels, element by element
      for (int q = 0; q < group; ++q) {
        T total = T(0);
        for (int64_t t = 0; t < taps; ++t) {
          const T* u = sources[t * P + q];
          total += wu[t * f + c] * u[c] + wv[t * f + c] * u[f + c];
        }
        o[q * f + c] = total;
        y[q * f + c] += alpha * total;
      }
  }
}

// Channels [c, c + K * L) of duv for the kTapPixels input pixels whose dy rows the tap
// group `sources` points to: du = alpha * sum of u_taps * dy, dv likewise with v_taps.
template <typename T, int K>
inline void TapGradBlock(const T* const* sources, int64_t taps, int64_t f, int64_t c,
                         const T* wu, const T* wv, int count, T alpha, T* duv) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  constexpr int P = kTapPixels;
  Vec du[P][K], dv[P][K];
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q)
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) du[q][k] = dv[q][k] = Vec{};
  for (int64_t t = 0; t < taps; ++t) {
    const T* const* row = sources + t * P;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const int64_t channel = c + k * L;
      const Vec weight_u = LoadVec<Vec>(wu + t * f + channel);
      const Vec weight_v = LoadVec<Vec>(wv + t * f + channel);
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) {
        const Vec g = LoadVec<Vec>(row[q] + channel);
        du[q][k] += weight_u * g;
        dv[q][k] += weight_v * g;
      }
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q) {
    if (q >= count) break;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      StoreVec(duv + q * 2 * f + c + k * L, du[q][k] * alpha);
      StoreVec(duv + q * 2 * f + f + c + k * L, dv[q][k] * alpha);
    }
  }
}

// duv (`count` pixels of (2 * filters), pixel-major) of a group of input pixels from the
// dy rows of the output pixels that tap them (`sources`, as for OffsetTaps; `zeros` where
// none does): channel blocks of 2 lane vectors (1 where the target has 16 vector
// registers), then single vectors, then a scalar tail.
template <typename T>
void OffsetTapsTransposed(const T* const* sources, int64_t taps, int64_t f, const T* wu,
                          const T* wv, int count, T alpha, T* duv) {
  constexpr int L = Lanes<T>::kCount;
  constexpr int K = kVecRegisters >= 32 ? 2 : 1;  // 2 * 4 * K accumulators
  const int64_t blocked = f / (K * L) * (K * L), vectors = f / L * L;
  int64_t c = 0;
  for (; c < blocked; c += K * L)
    TapGradBlock<T, K>(sources, taps, f, c, wu, wv, count, alpha, duv);
  for (; c < vectors; c += L) TapGradBlock<T, 1>(sources, taps, f, c, wu, wv, count, alpha, duv);
  for (; c < f; ++c)
    for (int q = 0; q < count; ++q) {
      T du = T(0), dv = T(0);
      for (int64_t t = 0; t < taps; ++t) {
        const T g = sources[t * kTapPixels + q][c];
        du += wu[t * f + c] * g;
        dv += wv[t * f + c] * g;
      }
      duv[q * 2 * f + c] = alpha * du;
      duv[q * 2 * f + f + c] = alpha * dv;
    }
}

// rows[q * f + c] += bias[c] for the `count` pixel rows of a tile.
template <typename T>
void AddBias(const T* bias, int64_t f, int64_t count, T* rows) {
  typedef typename Lanes<T>::Vec Vec;
  constexpr int L = Lanes<T>::kCount;
  for (int64_t q = 0; q < count; ++q) {
    T* row = rows + q * f;
    int64_t c = 0;
    for (; c + L <= f; c += L) StoreVec(row + c, LoadVec<Vec>(row + c) + LoadVec<Vec>(bias + c));
    for (; c < f; ++c) row[c] += bias[c];
  }
}

template <typename T>
class ConvOp : public OpKernel {
 public:
  explicit ConvOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
    OP_REQUIRES_OK(context, context->GetAttr("with_offset", &with_offset_));
    OP_REQUIRES_OK(context, context->GetAttr("offset_output", &offset_output_));
    OP_REQUIRES_OK(context, context->GetAttr("uv_is_table", &uv_is_table_));
    OP_REQUIRES(context, !uv_is_table_ || (with_offset_ && !offset_output_),
                Invalid("uv_is_table needs with_offset and no offset_output (a forward alone)"));
  }

  void Compute(OpKernelContext* context) override {
    typedef typename Lanes<T>::Vec Vec;
    constexpr int L = Lanes<T>::kCount;
    typedef Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Matrix;
    const Tensor& x = context->input(0);
    const Tensor& uv = context->input(1);
    const Tensor& alpha = context->input(2);
    const Tensor& values = context->input(3);
    const Tensor& bias = context->input(5);
    OP_REQUIRES(context, x.dims() == 4,
                Invalid("x must be (batch, height, width, channels); got ", x.shape().DebugString()));
    Positions pos;
    if (!ReadPositions(context, context->input(4), &pos) ||
        !CheckColumns(context, pos, attrs_.filters) || !CheckValues(context, values, pos))
      return;
    OP_REQUIRES(context, alpha.NumElements() == 1, Invalid("alpha must be a scalar"));
    const int64_t batch = x.dim_size(0), f = attrs_.filters;
    OP_REQUIRES(context, bias.dims() == 1 && (bias.dim_size(0) == 0 || bias.dim_size(0) == f),
                Invalid("bias must be (filters,) = (", f, ",) or empty; got ",
                        bias.shape().DebugString()));
    const T* BIAS = bias.dim_size(0) == 0 ? nullptr : bias.flat<T>().data();
    ConvPlan<T> p;
    const int64_t out_h = attrs_.OutHeight(x.dim_size(1)), out_w = attrs_.OutWidth(x.dim_size(2));
    OP_REQUIRES(context, out_h >= 1 && out_w >= 1, Invalid("the output would be empty"));
    if (uv_is_table_) {
      OP_REQUIRES(context, uv.dims() == 2 && uv.dim_size(0) == x.dim_size(3) &&
                               uv.dim_size(1) == 2 * f,
                  Invalid("uv must be the (c_in, 2 * filters) = (", x.dim_size(3), ", ", 2 * f,
                          ") table with uv_is_table; got ", uv.shape().DebugString()));
    } else if (with_offset_) {
      OP_REQUIRES(context, uv.dims() == 4 && uv.dim_size(0) == batch &&
                               uv.dim_size(1) == x.dim_size(1) && uv.dim_size(2) == x.dim_size(2) &&
                               uv.dim_size(3) == 2 * f,
                  Invalid("uv must be (batch, height, width, 2 * filters) = ",
                          "like x with 2 * ", f, " channels; got ", uv.shape().DebugString()));
    }
    p.Init(attrs_, batch, x.dim_size(1), x.dim_size(2), x.dim_size(3),
           pos.rows, pos.cols, pos.nnz);
    OP_REQUIRES(context, !p.bad,
                Invalid("positions[0] (rows) must be in [0, kh * kw * c_in) = [0, ", attrs_.kh * attrs_.kw * p.c_in, ")"));
    Tensor* y = nullptr;
    Tensor* offset_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, out_h, out_w, f}), &y));
    OP_REQUIRES_OK(context, context->allocate_output(
                                1, with_offset_ && offset_output_
                                       ? TensorShape({batch, out_h, out_w, f})
                                       : TensorShape({0, 0, 0, 0}), &offset_out));
    if (batch == 0) return;
    const T* X = x.flat<T>().data();
    const T* UV = with_offset_ ? uv.flat<T>().data() : nullptr;
    const T* V = values.flat<T>().data();
    const T a = alpha.flat<T>()(0);
    T* Y = y->flat<T>().data();
    T* O = with_offset_ && offset_output_ ? offset_out->flat<T>().data() : nullptr;
    const std::vector<T>* u_taps = nullptr;
    const std::vector<T>* v_taps = nullptr;
    if (with_offset_) taps_.Get(attrs_, p.c_in, &u_taps, &v_taps);
    Buffer<T> zeros(2 * f);  // what the taps read outside the image
    zeros.Zero(2 * f);
    const RowBlocks blocks(batch, out_h, NumThreads(context));
    const int64_t tiles_per_row = (out_w + L - 1) / L;
    // With uv_is_table each unit multiplies its input rows by the table (kh - 1 rows of halo).
    const int64_t unit_work =
        blocks.rows_per_block * tiles_per_row * (p.nnz + f * 4) +
        (uv_is_table_ ? (blocks.rows_per_block * attrs_.sh + attrs_.kh) * p.w * p.c_in * 2 * f
                      : 0);
    RunUnits(context, blocks.Units(batch), unit_work, [&](int64_t unit) {
      const int64_t b = unit / blocks.per_image;
      const int64_t oh0 = (unit % blocks.per_image) * blocks.rows_per_block;
      const int64_t oh1 = std::min(out_h, oh0 + blocks.rows_per_block);
      if (oh0 >= oh1) return;
      const int64_t first = p.FirstRow(oh0), last = p.LastRow(oh1);
      Buffer<T> panel((last - first) * p.PanelRowSize());
      BuildPanel(p, X, b, first, last, panel.data());
      Buffer<T> tile(f * L), offset_tile(O == nullptr ? L * f : 0);
      std::vector<const T*> tap_sources;
      // The uv rows the taps of these output rows read: image b's, or (uv_is_table)
      // computed here, band by band of output rows, into a buffer that holds the input rows
      // of one band (about kUvBandBytes, so that the taps read them from cache); the rows a
      // band shares with the next move to the front of the buffer instead of being
      // recomputed.
      const T* uv_rows = with_offset_ && !uv_is_table_ ? UV + b * p.h * p.w * 2 * f : nullptr;
      int64_t band = oh1 - oh0;
      Buffer<T> local_uv;
      int64_t row0 = 0, row1 = 0;  // the image rows [row0, row1) of uv_rows (uv_is_table)
      const int64_t row_size = p.w * 2 * f;
      if (uv_is_table_) {
        const int64_t rows_fit = std::max<int64_t>(1, kUvBandBytes / (row_size * sizeof(T)));
        const int64_t span = p.LastRow(1) - p.FirstRow(0);  // input rows of one output row
        band = std::max<int64_t>(1, std::min<int64_t>(band, (rows_fit - span) / attrs_.sh + 1));
        local_uv.Resize((p.LastRow(band) - p.FirstRow(0)) * row_size);
        uv_rows = local_uv.data();
      }
      for (int64_t bh0 = oh0; bh0 < oh1; bh0 += band) {
        const int64_t bh1 = std::min(oh1, bh0 + band);
        if (uv_is_table_) {
          const int64_t need0 = std::max<int64_t>(0, p.FirstRow(bh0) - attrs_.pad_top);
          const int64_t need1 = std::min<int64_t>(p.h, p.LastRow(bh1) - attrs_.pad_top);
          int64_t kept = 0;
          if (need0 >= row0 && need0 < row1) {
            kept = std::min(row1, need1) - need0;
            std::memmove(local_uv.data(), local_uv.data() + (need0 - row0) * row_size,
                         kept * row_size * sizeof(T));
          }
          if (need1 > need0 + kept) {
            const int64_t pixels = (need1 - need0 - kept) * p.w;
            Eigen::Map<const Matrix> x_rows(X + (b * p.h + need0 + kept) * p.w * p.c_in, pixels,
                                            p.c_in);
            Eigen::Map<const Matrix> table(UV, p.c_in, 2 * f);
            Eigen::Map<Matrix> out(local_uv.data() + kept * row_size, pixels, 2 * f);
            out.noalias() = x_rows * table;
          }
          row0 = need0;
          row1 = std::max(need1, need0);
        }
        for (int64_t oh = bh0; oh < bh1; ++oh) {
          for (int64_t ow0 = 0; ow0 < out_w; ow0 += L) {
            const int64_t count = std::min<int64_t>(L, out_w - ow0);
            const T* base = panel.data() + p.Base(oh, ow0, first);
            // Sparse part, one lane per output pixel, by output channels (columns of S).
            for (int64_t c = 0; c < f; ++c) {
              Vec a0{}, a1{}, a2{}, a3{};
              int64_t k = p.ptr[c];
              const int64_t end = p.ptr[c + 1];
              for (; k + 4 <= end; k += 4) {
                a0 += LoadVec<Vec>(base + p.delta[k]) * V[k];
                a1 += LoadVec<Vec>(base + p.delta[k + 1]) * V[k + 1];
                a2 += LoadVec<Vec>(base + p.delta[k + 2]) * V[k + 2];
                a3 += LoadVec<Vec>(base + p.delta[k + 3]) * V[k + 3];
              }
              for (; k < end; ++k) a0 += LoadVec<Vec>(base + p.delta[k]) * V[k];
              StoreVec(tile.data() + c * L, (a0 + a1) + (a2 + a3));
            }
            T* y_row = Y + ((b * out_h + oh) * out_w + ow0) * f;
            Transpose(tile.data(), f, count, L, y_row, f);
            if (BIAS != nullptr) AddBias(BIAS, f, count, y_row);
            if (!with_offset_) continue;
            // Offset part, vectorized over output channels: the DCT taps on uv.
            // Without the offset output (inference) the offset goes to a tile of scratch.
            T* o_row = O != nullptr ? O + ((b * out_h + oh) * out_w + ow0) * f : offset_tile.data();
            OffsetTaps(p, uv_rows, row0, u_taps->data(), v_taps->data(), zeros.data(), oh, ow0,
                       count, a, o_row, y_row, &tap_sources);
          }
        }
      }
    });
  }

 private:
  ConvAttrs attrs_;
  bool with_offset_, offset_output_, uv_is_table_;
  TapCache<T> taps_;
};

template <typename T>
class ConvInputGradOp : public OpKernel {
 public:
  explicit ConvInputGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
    OP_REQUIRES_OK(context, context->GetAttr("with_offset", &with_offset_));
    OP_REQUIRES_OK(context, context->GetAttr("in_channels", &in_channels_));
  }

  void Compute(OpKernelContext* context) override {
    typedef typename Lanes<T>::Vec Vec;
    constexpr int L = Lanes<T>::kCount;
    const Tensor& dy = context->input(0);
    const Tensor& alpha = context->input(1);
    const Tensor& values = context->input(2);
    const Tensor& shape = context->input(4);
    OP_REQUIRES(context, shape.NumElements() == 4, Invalid("input_shape must have 4 entries"));
    const auto s = shape.flat<int64_t>();
    const int64_t batch = s(0), h = s(1), w = s(2), f = attrs_.filters;
    OP_REQUIRES(context, s(3) == in_channels_, Invalid("input_shape[3] must be in_channels"));
    OP_REQUIRES(context, dy.dims() == 4 && dy.dim_size(0) == batch &&
                             dy.dim_size(1) == attrs_.OutHeight(h) &&
                             dy.dim_size(2) == attrs_.OutWidth(w) && dy.dim_size(3) == f,
                Invalid("dy must have the output shape of input_shape; got ", dy.shape().DebugString()));
    Positions pos;
    if (!ReadPositions(context, context->input(3), &pos) || !CheckColumns(context, pos, f) ||
        !CheckValues(context, values, pos))
      return;
    ConvPlan<T> p;
    p.Init(attrs_, batch, h, w, in_channels_, pos.rows, pos.cols, pos.nnz);
    OP_REQUIRES(context, !p.bad,
                Invalid("positions[0] (rows) must be in [0, kh * kw * c_in) = [0, ", attrs_.kh * attrs_.kw * p.c_in, ")"));
    Tensor* dx = nullptr;
    Tensor* duv = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, h, w, in_channels_}), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(
                                1, with_offset_ ? TensorShape({batch, h, w, 2 * f})
                                                : TensorShape({0, 0, 0, 0}), &duv));
    if (batch == 0) return;
    const T* DY = dy.flat<T>().data();
    const T* V = values.flat<T>().data();
    const T a = alpha.flat<T>()(0);
    T* DX = dx->flat<T>().data();
    T* DUV = with_offset_ ? duv->flat<T>().data() : nullptr;
    const std::vector<T>* u_taps = nullptr;
    const std::vector<T>* v_taps = nullptr;
    if (with_offset_) taps_.Get(attrs_, p.c_in, &u_taps, &v_taps);
    Buffer<T> zeros(f);  // what the transposed taps read where no output pixel taps
    zeros.Zero(f);
    const int64_t out_h = p.out_h, out_w = p.out_w;
    const int64_t patch = attrs_.kh * attrs_.kw * p.c_in;
    const RowMajor<T> by_row(p, pos.rows, pos.cols, V);
    // One unit per image: the rows an image's outputs touch overlap between row blocks.
    const int64_t unit_work = out_h * ((out_w + L - 1) / L) * (p.nnz + 4 * f);
    RunUnits(context, batch, unit_work, [&](int64_t b) {
      Buffer<T> panel(p.padded_h * p.PanelRowSize()), tile(f * L);
      panel.Zero(p.padded_h * p.PanelRowSize());
      for (int64_t oh = 0; oh < out_h; ++oh) {
        for (int64_t ow0 = 0; ow0 < out_w; ow0 += L) {
          const int64_t count = std::min<int64_t>(L, out_w - ow0);
          const T* dy_row = DY + ((b * out_h + oh) * out_w + ow0) * f;
          if (count < L) tile.Zero(f * L);
          Transpose(dy_row, count, f, f, tile.data(), L);
          // By rows of S (tap and input channel): one panel update per row, so that no two
          // updates of a tile hit the same address (which would chain them through memory).
          T* base = panel.data() + p.Base(oh, ow0, 0);
          for (const int32_t r : by_row.nonempty) {
            const int64_t k0 = by_row.ptr[r], k1 = by_row.ptr[r + 1];
            Vec a0{}, a1{};
            int64_t k = k0;
            for (; k + 2 <= k1; k += 2) {
              a0 += LoadVec<Vec>(tile.data() + by_row.cols[k] * L) * by_row.values[k];
              a1 += LoadVec<Vec>(tile.data() + by_row.cols[k + 1] * L) * by_row.values[k + 1];
            }
            if (k < k1) a0 += LoadVec<Vec>(tile.data() + by_row.cols[k] * L) * by_row.values[k];
            T* target = base + by_row.delta[r];
            StoreVec(target, LoadVec<Vec>(target) + (a0 + a1));
          }
        }
      }
      PanelToInput(p, panel.data(), b, 0, p.padded_h, DX);
      if (!with_offset_) return;
      // duv: the transposed taps, gathered for groups of input pixels from the output
      // pixels that tap them.
      T* duv_image = DUV + b * h * w * 2 * f;
      std::vector<const T*> sources(attrs_.kh * attrs_.kw * kTapPixels);
      for (int64_t ih = 0; ih < h; ++ih)
        for (int64_t iw0 = 0; iw0 < w; iw0 += kTapPixels) {
          const int group = static_cast<int>(std::min<int64_t>(kTapPixels, w - iw0));
          for (int64_t i = 0; i < attrs_.kh; ++i) {
            const int64_t rows = ih + attrs_.pad_top - i * attrs_.dh;  // oh * sh
            const bool row_ok = rows >= 0 && rows % attrs_.sh == 0 && rows / attrs_.sh < out_h;
            for (int64_t j = 0; j < attrs_.kw; ++j)
              for (int q = 0; q < kTapPixels; ++q) {
                const int64_t columns = iw0 + q + attrs_.pad_left - j * attrs_.dw;  // ow * sw
                const bool ok = row_ok && q < group && columns >= 0 &&
                                columns % attrs_.sw == 0 && columns / attrs_.sw < out_w;
                sources[(i * attrs_.kw + j) * kTapPixels + q] =
                    ok ? DY + ((b * out_h + rows / attrs_.sh) * out_w + columns / attrs_.sw) * f
                       : zeros.data();
              }
          }
          OffsetTapsTransposed(sources.data(), attrs_.kh * attrs_.kw, f, u_taps->data(),
                               v_taps->data(), group, a, duv_image + (ih * w + iw0) * 2 * f);
        }
    });
  }

 private:
  ConvAttrs attrs_;
  bool with_offset_;
  int64_t in_channels_;
  TapCache<T> taps_;
};

template <typename T>
class ConvValueGradOp : public OpKernel {
 public:
  explicit ConvValueGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
  }

  void Compute(OpKernelContext* context) override {
    typedef typename Lanes<T>::Vec Vec;
    constexpr int L = Lanes<T>::kCount;
    const Tensor& x = context->input(0);
    const Tensor& dy = context->input(1);
    const int64_t f = attrs_.filters;
    OP_REQUIRES(context, x.dims() == 4,
                Invalid("x must be (batch, height, width, channels); got ", x.shape().DebugString()));
    const int64_t batch = x.dim_size(0);
    OP_REQUIRES(context, dy.dims() == 4 && dy.dim_size(0) == batch &&
                             dy.dim_size(1) == attrs_.OutHeight(x.dim_size(1)) &&
                             dy.dim_size(2) == attrs_.OutWidth(x.dim_size(2)) && dy.dim_size(3) == f,
                Invalid("dy must have the output shape of x; got ", dy.shape().DebugString()));
    Positions pos;
    if (!ReadPositions(context, context->input(2), &pos) || !CheckColumns(context, pos, f)) return;
    ConvPlan<T> p;
    p.Init(attrs_, batch, x.dim_size(1), x.dim_size(2), x.dim_size(3),
           pos.rows, pos.cols, pos.nnz);
    OP_REQUIRES(context, !p.bad,
                Invalid("positions[0] (rows) must be in [0, kh * kw * c_in) = [0, ", attrs_.kh * attrs_.kw * p.c_in, ")"));
    Tensor* dvalues = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({p.nnz}), &dvalues));
    T* DV = dvalues->flat<T>().data();
    std::fill(DV, DV + p.nnz, T(0));
    if (batch == 0 || p.nnz == 0) return;
    const T* X = x.flat<T>().data();
    const T* DY = dy.flat<T>().data();
    const int64_t out_h = p.out_h, out_w = p.out_w;
    const RowMajor<T> by_row(p, pos.rows, pos.cols, nullptr);
    const RowBlocks blocks(batch, out_h, NumThreads(context));
    const int64_t units = blocks.Units(batch);
    Buffer<T> partial(units * p.nnz);
    const int64_t unit_work = blocks.rows_per_block * ((out_w + L - 1) / L) * p.nnz;
    RunUnits(context, units, unit_work, [&](int64_t unit) {
      T* acc = partial.data() + unit * p.nnz;
      std::fill(acc, acc + p.nnz, T(0));
      const int64_t b = unit / blocks.per_image;
      const int64_t oh0 = (unit % blocks.per_image) * blocks.rows_per_block;
      const int64_t oh1 = std::min(out_h, oh0 + blocks.rows_per_block);
      if (oh0 >= oh1) return;
      const int64_t first = p.FirstRow(oh0), last = p.LastRow(oh1);
      Buffer<T> panel((last - first) * p.PanelRowSize()), tile(f * L);
      BuildPanel(p, X, b, first, last, panel.data());
      for (int64_t oh = oh0; oh < oh1; ++oh)
        for (int64_t ow0 = 0; ow0 < out_w; ow0 += L) {
          const int64_t count = std::min<int64_t>(L, out_w - ow0);
          const T* dy_row = DY + ((b * out_h + oh) * out_w + ow0) * f;
          if (count < L) tile.Zero(f * L);
          Transpose(dy_row, count, f, f, tile.data(), L);
          // By rows of S: the input vector of a row is read once; its nonzeros' products
          // with their output channels' dy are summed over the lanes, a lane count at a time.
          const T* base = panel.data() + p.Base(oh, ow0, first);
          for (const int32_t r : by_row.nonempty) {
            const Vec xv = LoadVec<Vec>(base + by_row.delta[r]);
            int64_t k = by_row.ptr[r];
            const int64_t end = by_row.ptr[r + 1];
            if constexpr (kSumsEachLane<T>) {
              for (; k + L / 4 < end; k += L) {  // groups of up to L, padded with zeros
                Vec products[L];
                const int64_t n = std::min<int64_t>(L, end - k);
                for (int q = 0; q < L; ++q)
                  products[q] = q < n ? xv * LoadVec<Vec>(tile.data() + by_row.cols[k + q] * L)
                                      : Vec{};
                T sums[L];
                StoreVec(sums, SumEachLane<T>(products));
                for (int q = 0; q < n; ++q) acc[k + q] += sums[q];
              }
            }
            for (; k < end; ++k)
              acc[k] += SumLanes(xv * LoadVec<Vec>(tile.data() + by_row.cols[k] * L));
          }
        }
    });
    RunUnits(context, NumThreads(context), p.nnz * units / NumThreads(context), [&](int64_t part) {
      const int64_t parts = NumThreads(context);
      const int64_t k0 = p.nnz * part / parts, k1 = p.nnz * (part + 1) / parts;
      for (int64_t unit = 0; unit < units; ++unit) {
        const T* acc = partial.data() + unit * p.nnz;
        for (int64_t k = k0; k < k1; ++k) DV[by_row.order[k]] += acc[k];
      }
    });
  }

 private:
  ConvAttrs attrs_;
};

#define REGISTER_DCTSPARSE_CONV_KERNELS(T)                                                   \
  REGISTER_KERNEL_BUILDER(Name("DctSparseConv2D").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          ConvOp<T>);                                                        \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("DctSparseConv2DInputGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
      ConvInputGradOp<T>);                                                                   \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("DctSparseConv2DValueGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
      ConvValueGradOp<T>);

REGISTER_DCTSPARSE_CONV_KERNELS(float)
REGISTER_DCTSPARSE_CONV_KERNELS(double)

}  // namespace
}  // namespace dctsparse
