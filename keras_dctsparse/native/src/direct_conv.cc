// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// A direct dense 2-D convolution for few channels (channels_last, one group, any stride,
// dilation and explicit padding), float32 and float64 on the CPU:
//
//   DctSparseDirectConv2D(x, kernel)           -> y
//   DctSparseDirectConv2DFilterGrad(x, dy)     -> dkernel
//
// The fused path of DCTSparseConv2D convolves x with its effective kernel alpha * Kd + S.
// Where a patch has few channels (LeNet-5's 5x5 convs on 1 and 6 channels) TensorFlow's
// Conv2D reaches about 4 GFLOP/s on the AVX2 host (README, "Convolutions with few
// channels"): these ops compute the same sums vectorized over output channels (lanes),
// several output pixels at a time, each weight vector loaded once for those pixels and each
// input value broadcast once for the channels. The input gradient is TensorFlow's
// (`ops.native_conv.direct_conv2d`).
#include <algorithm>
#include <cstdint>

#include "common.h"
#include "conv_geometry.h"
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
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("DctSparseDirectConv2D")
    .Input("x: T")
    .Input("kernel: T")
    .Output("y: T")
    .DCTSPARSE_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) { return ConvShape(c, 0, true); })
    .Doc("y = conv(x, kernel): NHWC x, (kh, kw, c_in, filters) kernel, explicit pads.");

REGISTER_OP("DctSparseDirectConv2DFilterGrad")
    .Input("x: T")
    .Input("dy: T")
    .Output("dkernel: T")
    .DCTSPARSE_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      ConvAttrs a;
      TF_RETURN_IF_ERROR(a.Read(c));
      c->set_output(0, c->MakeShape({c->MakeDim(a.kh), c->MakeDim(a.kw), c->Dim(x, 3),
                                     c->MakeDim(a.filters)}));
      return tensorflow::OkStatus();
    })
    .Doc("dkernel = the gradient of sum(dy * conv(x, kernel)) with respect to kernel.");

// Lane vectors of channels per accumulator block: 4 pixels x 2 vectors (AVX2, 16 vector
// registers), x 4 vectors (AVX-512, 32); blocks of fewer vectors take more pixels
// (kAccumulators in all), so that as many independent sums are in flight.
constexpr int kBlockVectors = kVecRegisters >= 32 ? 4 : 2;
constexpr int kAccumulators = 4 * kBlockVectors;

// The sizes of one call, and the layout both ops share: the kernel as (patch, padded
// channels) with rows p = (i * kw + j) * c_in + ch and the channels padded with zeros to
// a whole number of lane vectors.
template <typename T>
struct DirectGeometry {
  static constexpr int L = Lanes<T>::kCount;
  int64_t batch, h, w, c_in, h_out, w_out, filters, padded_filters, padded_w;

  DirectGeometry(const ConvAttrs& a, const Tensor& x) {
    batch = x.dim_size(0); h = x.dim_size(1); w = x.dim_size(2); c_in = x.dim_size(3);
    h_out = std::max<int64_t>(a.OutHeight(h), 0);
    w_out = std::max<int64_t>(a.OutWidth(w), 0);
    filters = a.filters;
    padded_filters = (filters + L - 1) / L * L;
    // Input columns a padded row holds: every column any output pixel's taps read.
    padded_w = std::max<int64_t>(w + a.pad_left + a.pad_right,
                                 (w_out - 1) * a.sw + (a.kw - 1) * a.dw + 1);
  }

  int64_t Patch(const ConvAttrs& a) const { return a.kh * a.kw * c_in; }
};

// Input row ih of image b with the left padding materialized and zeros beyond the row:
// padded[(col + pad_left) * c_in + ch] = x[b, ih, col, ch].
template <typename T>
void PaddedRow(const ConvAttrs& a, const DirectGeometry<T>& g, const T* x, int64_t b, int64_t ih,
               T* padded) {
  std::fill(padded, padded + g.padded_w * g.c_in, T(0));
  const T* row = x + (b * g.h + ih) * g.w * g.c_in;
  std::copy(row, row + g.w * g.c_in, padded + a.pad_left * g.c_in);
}

// Channels [c0, c0 + NV * L) of output pixels ow0 .. ow0 + count (count <= PX) of one
// output row: acc[q][v] = sum over the valid taps i (rows[i] non-null) and j and the input
// channels of rows[i][((ow0 + q) * sw + j * dw) * c_in + ch] * kernel[p][c]. The pixels'
// offsets stay in registers; the input of pixels past `count` repeats the last one's (their
// sums are not stored).
template <typename T, int NV, int PX = kAccumulators / NV>
void PixelBlock(const ConvAttrs& a, const DirectGeometry<T>& g, const T* const* rows,
                const T* kernel, int64_t c0, int64_t ow0, int count, T* out_row) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int L = Lanes<T>::kCount;
  Vec acc[PX][NV];
  for (int q = 0; q < PX; ++q)
    for (int v = 0; v < NV; ++v) acc[q][v] = Vec{};
  const int64_t c_in = g.c_in, cp = g.padded_filters;
  const int64_t pixel_step = a.sw * c_in, tap_step = a.dw * c_in;
  int64_t offsets[PX];
  for (int q = 0; q < PX; ++q) offsets[q] = std::min(q, count - 1) * pixel_step;
  for (int64_t i = 0; i < a.kh; ++i) {
    if (rows[i] == nullptr) continue;
    const T* base = rows[i] + ow0 * pixel_step;
    const T* weights = kernel + i * a.kw * c_in * cp + c0;
    for (int64_t j = 0; j < a.kw; ++j, base += tap_step, weights += c_in * cp) {
      for (int64_t ch = 0; ch < c_in; ++ch) {
        Vec wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = LoadVec<Vec>(weights + ch * cp + v * L);
        for (int q = 0; q < PX; ++q) {
          const T xv = base[offsets[q] + ch];
          for (int v = 0; v < NV; ++v) acc[q][v] += xv * wv[v];
        }
      }
    }
  }
  // Stores. A block that holds every channel but ends in padding lanes stores whole
  // vectors too where they end within the row: the padding lanes land on the next pixels'
  // channels, which their own stores (later, in this thread) rewrite.
  const int64_t width = std::min<int64_t>(NV * L, g.filters - c0);
  const bool whole_row_block = c0 == 0 && NV * L >= g.padded_filters;
  for (int q = 0; q < count; ++q) {
    T* out = out_row + (ow0 + q) * g.filters + c0;
    if (width == NV * L ||
        (whole_row_block && (ow0 + q) * g.filters + NV * L <= g.w_out * g.filters)) {
      for (int v = 0; v < NV; ++v) StoreVec(out + v * L, acc[q][v]);
    } else {
      T lanes[NV * L];
      for (int v = 0; v < NV; ++v) StoreVec(lanes + v * L, acc[q][v]);
      std::copy(lanes, lanes + width, out);
    }
  }
}

// The kernel (kh, kw, c_in, filters) as (patch, padded_filters), zeros in the padding.
template <typename T>
void PadChannels(const T* kernel, int64_t patch, int64_t filters, int64_t padded, T* out) {
  for (int64_t p = 0; p < patch; ++p) {
    std::copy(kernel + p * filters, kernel + (p + 1) * filters, out + p * padded);
    std::fill(out + p * padded + filters, out + (p + 1) * padded, T(0));
  }
}

// Channels [c0, c0 + NV * L) of a whole output row, PixelBlock by PixelBlock.
template <int NV, typename T>
void Row(const ConvAttrs& a, const DirectGeometry<T>& g, const T* const* rows, const T* kernel,
         int64_t c0, T* out_row) {
  constexpr int PX = kAccumulators / NV;
  for (int64_t ow0 = 0; ow0 < g.w_out; ow0 += PX) {
    const int count = static_cast<int>(std::min<int64_t>(PX, g.w_out - ow0));
    PixelBlock<T, NV>(a, g, rows, kernel, c0, ow0, count, out_row);
  }
}

// Output row `unit` (image unit / h_out, row unit % h_out) of y; `scratch` holds kh padded
// input rows.
template <typename T>
void ForwardRow(const ConvAttrs& a, const DirectGeometry<T>& g, const T* x, const T* kernel,
                int64_t unit, T* scratch, T* y) {
  constexpr int L = Lanes<T>::kCount;
  const int64_t b = unit / g.h_out, oh = unit % g.h_out;
  const T* rows[64];  // kh <= 64 (checked by the op)
  for (int64_t i = 0; i < a.kh; ++i) {
    const int64_t ih = oh * a.sh + i * a.dh - a.pad_top;
    rows[i] = nullptr;
    if (ih < 0 || ih >= g.h) continue;
    T* padded = scratch + i * g.padded_w * g.c_in;
    PaddedRow(a, g, x, b, ih, padded);
    rows[i] = padded;
  }
  T* out_row = y + unit * g.w_out * g.filters;
  for (int64_t c0 = 0; c0 < g.padded_filters; c0 += kBlockVectors * L) {
    const int vectors =
        static_cast<int>(std::min<int64_t>(kBlockVectors, (g.padded_filters - c0) / L));
    // kBlockVectors is 2 or 4: a remainder of 3 vectors runs as 2, then 1.
    if (vectors == kBlockVectors) {
      Row<kBlockVectors>(a, g, rows, kernel, c0, out_row);
    } else {
      if (vectors >= 2) Row<2>(a, g, rows, kernel, c0, out_row);
      if (vectors % 2 == 1) Row<1>(a, g, rows, kernel, c0 + (vectors - 1) * L, out_row);
    }
  }
}

template <typename T>
class DirectConvOp : public OpKernel {
 public:
  explicit DirectConvOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
    OP_REQUIRES(context, attrs_.kh <= 64,
                Invalid("kernel_size[0] must be at most 64; got ", attrs_.kh));
  }

  void Compute(OpKernelContext* context) override {
    constexpr int L = Lanes<T>::kCount;
    const Tensor& x = context->input(0);
    const Tensor& kernel = context->input(1);
    const ConvAttrs& a = attrs_;
    OP_REQUIRES(context, x.dims() == 4,
                Invalid("x must be (batch, h, w, c_in); got shape ", x.shape().DebugString()));
    const DirectGeometry<T> g(a, x);
    OP_REQUIRES(context,
                kernel.dims() == 4 && kernel.dim_size(0) == a.kh && kernel.dim_size(1) == a.kw &&
                    kernel.dim_size(2) == g.c_in && kernel.dim_size(3) == a.filters,
                Invalid("kernel must be (", a.kh, ", ", a.kw, ", ", g.c_in, ", ", a.filters,
                        "); got shape ", kernel.shape().DebugString()));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({g.batch, g.h_out, g.w_out, g.filters}), &y));
    const int64_t patch = g.Patch(a);
    Buffer<T> padded_kernel(patch * g.padded_filters);
    PadChannels(kernel.flat<T>().data(), patch, g.filters, g.padded_filters,
                padded_kernel.data());
    const T* X = x.flat<T>().data();
    T* Y = y->flat<T>().data();
    // Output rows (image, row), split into a few contiguous runs per thread: one pool
    // task per row cost more than the rows of LeNet-5's first conv themselves.
    const int64_t units = g.batch * g.h_out;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(units, 4 * NumThreads(context)));
    RunUnits(context, parts, units / parts * g.w_out * patch * g.padded_filters / L,
             [&](int64_t part) {
      Buffer<T> scratch(a.kh * g.padded_w * g.c_in);
      for (int64_t unit = units * part / parts; unit < units * (part + 1) / parts; ++unit)
        ForwardRow(a, g, X, padded_kernel.data(), unit, scratch.data(), Y);
    });
  }

 private:
  ConvAttrs attrs_;
};

// Taps per filter-gradient accumulator block (independent sums in flight).
constexpr int kGradTaps = 4;

// Adds to grad rows p = (i * kw + j) * c_in + ch, j in [j0, j0 + JN), channels
// [c0, c0 + NV * L): the sum over the output pixels of one output row of
// padded[(ow * sw + j * dw) * c_in + ch] * dy[ow][c] (dy with padded channels).
template <typename T, int JN, int NV>
void GradTaps(const ConvAttrs& a, const DirectGeometry<T>& g, const T* padded, const T* dy,
              int64_t i, int64_t j0, int64_t ch, int64_t c0, T* grad) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int L = Lanes<T>::kCount;
  Vec acc[JN][NV];
  for (int jj = 0; jj < JN; ++jj)
    for (int v = 0; v < NV; ++v) acc[jj][v] = Vec{};
  const int64_t step = a.sw * g.c_in;
  const T* src = padded + j0 * a.dw * g.c_in + ch;
  const int64_t tap_stride = a.dw * g.c_in;
  for (int64_t ow = 0; ow < g.w_out; ++ow, src += step) {
    Vec d[NV];
    for (int v = 0; v < NV; ++v) d[v] = LoadVec<Vec>(dy + ow * g.padded_filters + c0 + v * L);
    for (int jj = 0; jj < JN; ++jj) {
      const T xv = src[jj * tap_stride];
      for (int v = 0; v < NV; ++v) acc[jj][v] += xv * d[v];
    }
  }
  for (int jj = 0; jj < JN; ++jj) {
    T* row = grad + ((i * a.kw + j0 + jj) * g.c_in + ch) * g.padded_filters + c0;
    for (int v = 0; v < NV; ++v) StoreVec(row + v * L, LoadVec<Vec>(row + v * L) + acc[jj][v]);
  }
}

template <typename T, int NV>
void GradRow(const ConvAttrs& a, const DirectGeometry<T>& g, const T* padded, const T* dy,
             int64_t i, int64_t c0, T* grad) {
  for (int64_t ch = 0; ch < g.c_in; ++ch) {
    int64_t j = 0;
    for (; j + kGradTaps <= a.kw; j += kGradTaps)
      GradTaps<T, kGradTaps, NV>(a, g, padded, dy, i, j, ch, c0, grad);
    for (; j < a.kw; ++j) GradTaps<T, 1, NV>(a, g, padded, dy, i, j, ch, c0, grad);
  }
}

template <typename T>
class DirectConvFilterGradOp : public OpKernel {
 public:
  explicit DirectConvFilterGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
  }

  void Compute(OpKernelContext* context) override {
    constexpr int L = Lanes<T>::kCount;
    const Tensor& x = context->input(0);
    const Tensor& dy = context->input(1);
    const ConvAttrs& a = attrs_;
    OP_REQUIRES(context, x.dims() == 4,
                Invalid("x must be (batch, h, w, c_in); got shape ", x.shape().DebugString()));
    const DirectGeometry<T> g(a, x);
    OP_REQUIRES(context,
                dy.dims() == 4 && dy.dim_size(0) == g.batch && dy.dim_size(1) == g.h_out &&
                    dy.dim_size(2) == g.w_out && dy.dim_size(3) == g.filters,
                Invalid("dy must be (", g.batch, ", ", g.h_out, ", ", g.w_out, ", ", g.filters,
                        "); got shape ", dy.shape().DebugString()));
    const int64_t patch = g.Patch(a);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({a.kh, a.kw, g.c_in, g.filters}), &out));
    const int64_t units = g.batch * g.h_out;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(units, NumThreads(context)));
    const int64_t grad_size = patch * g.padded_filters;
    Buffer<T> partial(parts * grad_size);
    partial.Zero(parts * grad_size);
    const T* X = x.flat<T>().data();
    const T* DY = dy.flat<T>().data();
    RunUnits(context, parts, units / parts * g.w_out * patch * g.padded_filters / L,
             [&](int64_t part) {
      T* grad = partial.data() + part * grad_size;
      Buffer<T> padded(g.padded_w * g.c_in);
      Buffer<T> dy_row(g.w_out * g.padded_filters);
      dy_row.Zero(g.w_out * g.padded_filters);
      for (int64_t unit = units * part / parts; unit < units * (part + 1) / parts; ++unit) {
        const int64_t b = unit / g.h_out, oh = unit % g.h_out;
        const T* dy_src = DY + unit * g.w_out * g.filters;
        for (int64_t ow = 0; ow < g.w_out; ++ow)
          std::copy(dy_src + ow * g.filters, dy_src + (ow + 1) * g.filters,
                    dy_row.data() + ow * g.padded_filters);
        for (int64_t i = 0; i < a.kh; ++i) {
          const int64_t ih = oh * a.sh + i * a.dh - a.pad_top;
          if (ih < 0 || ih >= g.h) continue;
          PaddedRow(a, g, X, b, ih, padded.data());
          for (int64_t c0 = 0; c0 < g.padded_filters; c0 += 2 * L) {
            if (g.padded_filters - c0 >= 2 * L)
              GradRow<T, 2>(a, g, padded.data(), dy_row.data(), i, c0, grad);
            else
              GradRow<T, 1>(a, g, padded.data(), dy_row.data(), i, c0, grad);
          }
        }
      }
    });
    T* DK = out->flat<T>().data();
    for (int64_t p = 0; p < patch; ++p)
      for (int64_t c = 0; c < g.filters; ++c) {
        T sum = T(0);
        for (int64_t part = 0; part < parts; ++part)
          sum += partial[part * grad_size + p * g.padded_filters + c];
        DK[p * g.filters + c] = sum;
      }
  }

 private:
  ConvAttrs attrs_;
};

#define REGISTER_DCTSPARSE_DIRECT_CONV_KERNELS(T)                                               \
  REGISTER_KERNEL_BUILDER(                                                                      \
      Name("DctSparseDirectConv2D").Device(DEVICE_CPU).TypeConstraint<T>("T"),                 \
      DirectConvOp<T>);                                                                         \
  REGISTER_KERNEL_BUILDER(                                                                      \
      Name("DctSparseDirectConv2DFilterGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      DirectConvFilterGradOp<T>);

REGISTER_DCTSPARSE_DIRECT_CONV_KERNELS(float)
REGISTER_DCTSPARSE_DIRECT_CONV_KERNELS(double)

}  // namespace
}  // namespace dctsparse
