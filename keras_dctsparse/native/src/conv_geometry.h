// Copyright 2026 The keras_dctsparse Authors. Apache License 2.0.
//
// The geometry attributes the convolution ops share (kernel size, strides, dilations,
// explicit padding, filters): reading them and the output shape they give.
#ifndef KERAS_DCTSPARSE_NATIVE_CONV_GEOMETRY_H_
#define KERAS_DCTSPARSE_NATIVE_CONV_GEOMETRY_H_

#include <cstdint>
#include <vector>

#include "common.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dctsparse {

// The static geometry of one convolution (attributes of every convolution op).
struct ConvAttrs {
  int64_t kh, kw, sh, sw, dh, dw, pad_top, pad_bottom, pad_left, pad_right, filters;

  // From an op's construction or its shape function (both have GetAttr).
  template <typename Context>
  tensorflow::Status Read(Context* context) {
    std::vector<int32_t> kernel, strides, dilations, pads;
    TF_RETURN_IF_ERROR(context->GetAttr("kernel_size", &kernel));
    TF_RETURN_IF_ERROR(context->GetAttr("strides", &strides));
    TF_RETURN_IF_ERROR(context->GetAttr("dilations", &dilations));
    TF_RETURN_IF_ERROR(context->GetAttr("pads", &pads));
    TF_RETURN_IF_ERROR(context->GetAttr("filters", &filters));
    if (kernel.size() != 2 || strides.size() != 2 || dilations.size() != 2 || pads.size() != 4)
      return Invalid("kernel_size, strides and dilations need 2 entries and pads 4");
    kh = kernel[0]; kw = kernel[1]; sh = strides[0]; sw = strides[1];
    dh = dilations[0]; dw = dilations[1];
    pad_top = pads[0]; pad_bottom = pads[1]; pad_left = pads[2]; pad_right = pads[3];
    for (int64_t v : {kh, kw, sh, sw, dh, dw, filters})
      if (v < 1) return Invalid("kernel_size, strides, dilations and filters must be >= 1");
    for (int64_t v : {pad_top, pad_bottom, pad_left, pad_right})
      if (v < 0) return Invalid("pads must be >= 0");
    return tensorflow::OkStatus();
  }

  int64_t OutHeight(int64_t h) const { return (h + pad_top + pad_bottom - (kh - 1) * dh - 1) / sh + 1; }
  int64_t OutWidth(int64_t w) const { return (w + pad_left + pad_right - (kw - 1) * dw - 1) / sw + 1; }
};

inline tensorflow::Status ConvShape(tensorflow::shape_inference::InferenceContext* c, int input, bool channels_out) {
  tensorflow::shape_inference::ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 4, &x));
  ConvAttrs a;
  TF_RETURN_IF_ERROR(a.Read(c));
  tensorflow::shape_inference::DimensionHandle height = c->Dim(x, 1), width = c->Dim(x, 2);
  c->set_output(0, c->MakeShape({
      c->Dim(x, 0),
      c->ValueKnown(height) ? c->MakeDim(a.OutHeight(c->Value(height))) : c->UnknownDim(),
      c->ValueKnown(width) ? c->MakeDim(a.OutWidth(c->Value(width))) : c->UnknownDim(),
      channels_out ? c->MakeDim(a.filters) : c->Dim(x, 3)}));
  return tensorflow::OkStatus();
}

#define DCTSPARSE_CONV_ATTRS                \
  Attr("T: {float, double}")                \
      .Attr("kernel_size: list(int)")       \
      .Attr("strides: list(int)")           \
      .Attr("dilations: list(int)")         \
      .Attr("pads: list(int)")              \
      .Attr("filters: int >= 1")

}  // namespace dctsparse

#endif  // KERAS_DCTSPARSE_NATIVE_CONV_GEOMETRY_H_
