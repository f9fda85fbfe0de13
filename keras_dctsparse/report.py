"""`sparsity_report`: parameters, storage and multiply-adds of a (DCTpS) model.

For every layer that holds weights (DCTpS layers as well as plain Dense, Conv,
BatchNorm, ... layers) and for the whole model, the report gives:

- `dense_params`: entries of the (dense-equivalent) kernel, `prod(kernel.shape)`;
  0 for layers without a kernel (BatchNorm, ...).
- `nnz`: trainable kernel entries: `layer.nnz` for a DCTpS layer, the kernel
  size for a plain layer.
- `density`: `nnz / dense_params` (None without a kernel).
- `trainable_params`: all trainable weights (kernel or sparse values, bias,
  `alpha`, BatchNorm gamma/beta, ...).
- `bytes`: the layer's weights as stored, `sum(size * itemsize)` over all its
  weights, trainable or not (int32 sparse indices, masks and BatchNorm moving
  statistics included).
- `macs`: forward multiply-adds per example, and `dense_macs`: the same for the
  dense network (the layer with a full kernel and no offset).

Multiply-add model (theoretical counts, not the work of this implementation):

- Plain Dense / Conv / DepthwiseConv: `prod(kernel.shape)` per output position
  (output position = every output element but the last axis for Dense, every
  output pixel for convs).
- `DCTSparseDense` (kernel `(n, m)`, `N = max(n, m)`): per row,
  `nnz + min(n * m, DCT_MACS_PER_LOG * N * log2(2 N))`, i.e. the sparse product
  plus a fast DCT-II of length `N` (computed via a real FFT of length `2N`;
  `DCT_MACS_PER_LOG = 2.5` real multiply-adds per point and `log2(2N)` stage,
  the usual split-radix count). Every DCTpS count is capped at the dense
  kernel size per position (`alpha * D + S` can always be applied densely).
- DCTpS convs: per output pixel, `nnz` (the sparse kernel) plus the cheaper of
  the two factored offsets of method.md section 2 (`k` = number of kernel taps,
  `c = c_in / groups`, 1 for depthwise, `N = max(k * c, c_out)`):
  `2 * c * c_out + 2 * k * c_out` (cos/sin 1x1 convs, then two depthwise
  `k`-tap convs) or `2.5 * N * log2(2N) + 2 * k * c_out` (a per-pixel FFT
  instead of the 1x1 convs); a 1x1 conv counts as a DCT over its channels,
  like a dense layer. Capped likewise.
  Note that
  this library's convs actually run one fused dense convolution with
  `alpha * Kd + S` (`offset_method="auto"`), whose cost is the dense one: the
  report gives what a sparse implementation would need.
- `DCTSparseEinsumDense` (and plain `EinsumDense`): as `DCTSparseDense` on the
  kernel's `(n, m)` matrix view (contracted input axes by free kernel axes), per
  output position (output elements per example over `m`).
- Each layer type gives its own counts through the `DCTSparseLayer` hooks
  (`positions_for`, `offset_macs`, `macs`); plain layers of a type a DCTpS layer
  replaces use that type's `positions_for`.
- Other layers (BatchNorm, pooling, activations, ...) count 0 multiply-adds;
  BatchNorm is foldable into the preceding kernel at inference.
"""

import dataclasses
import math

import keras
import tensorflow as tf

import keras_dctsparse.layers  # noqa: F401  (registers every DCTpS layer type)
from keras_dctsparse.layers.base import DCT_MACS_PER_LOG
from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.layers.base import _kernel_variable
from keras_dctsparse.layers.base import spatial_positions

__all__ = ["LayerReport", "SparsityReport", "sparsity_report", "DCT_MACS_PER_LOG"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One row of a `SparsityReport` (a layer, or the model total).

    Attributes:
        name: Layer name (`"total"` for the total row).
        kind: Layer class name (`""` for the total row).
        dense_params: Entries of the dense-equivalent kernel (0 without a kernel).
        nnz: Trainable kernel entries (the kernel size for a plain layer).
        density: `nnz / dense_params`, or None when there is no kernel.
        trainable_params: Number of trainable scalars (bias, alpha, BN included).
        bytes: Bytes of all the layer's weights as stored.
        macs: Forward multiply-adds per example.
        dense_macs: Forward multiply-adds per example of the dense equivalent.
    """

    name: str
    kind: str
    dense_params: int
    nnz: int
    density: object
    trainable_params: int
    bytes: int
    macs: int
    dense_macs: int


_COLUMNS = (
    ("layer", "name"),
    ("type", "kind"),
    ("dense params", "dense_params"),
    ("nnz", "nnz"),
    ("density", "density"),
    ("trainable", "trainable_params"),
    ("bytes", "bytes"),
    ("MACs", "macs"),
    ("dense MACs", "dense_macs"),
)


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """What `sparsity_report` returns.

    Attributes:
        layers: List of `LayerReport`, one per layer with weights, in model order.
        total: A `LayerReport` summing the layers (`density` = total nnz over
            total dense params).
    """

    layers: list
    total: LayerReport

    @property
    def mac_ratio(self):
        """`total.macs / total.dense_macs` (None when the dense count is 0)."""
        if not self.total.dense_macs:
            return None
        return self.total.macs / self.total.dense_macs

    def to_table(self):
        """The report as an aligned Markdown table (one row per layer, then the total)."""
        header = [title for title, _ in _COLUMNS]
        rows = [
            [_format(getattr(row, field)) for _, field in _COLUMNS]
            for row in [*self.layers, self.total]
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells):
            padded = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths))
            ]
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join(
            "-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)
        ) + "|"
        return "\n".join([line(header), rule, *[line(r) for r in rows]])

    def __str__(self):
        return self.to_table()


def _size(variable):
    return math.prod(int(d) for d in variable.shape)


def _itemsize(variable):
    return tf.as_dtype(keras.backend.standardize_dtype(variable.dtype)).size


def ordered_layers(model):
    """The leaf layers of `model` in model order, nested models expanded.

    Sequential/Functional models are walked through `model.layers` (the
    model's execution order); other containers through `_flatten_layers`.
    """
    if isinstance(model, keras.Model) and hasattr(model, "layers"):
        children = model.layers
    else:
        children = list(model._flatten_layers(include_self=False, recursive=False))
    layers = []
    for layer in children:
        if list(layer._flatten_layers(include_self=False, recursive=False)):
            layers.extend(ordered_layers(layer))
        else:
            layers.append(layer)
    return layers


def _leaf_layers(model):
    seen, layers = set(), []
    for layer in ordered_layers(model):
        if layer.weights and id(layer) not in seen:
            seen.add(id(layer))
            layers.append(layer)
    return layers


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"sparsity_report needs the output shape of layer '{layer.name}' to count "
            "multiply-adds: build the model on symbolic inputs (a `keras.Input` in a "
            "Sequential or Functional model), and do not share the layer between "
            f"several calls. Original error: {error}"
        ) from None


def _positions(layer, layer_type, output_shape):
    """Output positions per example (`layer_type.positions_for`, or the channels rule)."""
    config = layer.get_config()
    if layer_type is not None:
        return layer_type.positions_for(config, output_shape)
    # A plain layer no DCTpS type replaces: every axis but batch and channels.
    return spatial_positions(config, output_shape)


def _layer_row(layer):
    trainable = sum(_size(w) for w in layer.trainable_weights)
    stored = sum(_size(w) * _itemsize(w) for w in layer.weights)
    name, kind = layer.name, type(layer).__name__
    if isinstance(layer, DCTSparseLayer):
        dense_params = math.prod(layer.sparse_weight.kernel_shape)
        nnz = int(layer.nnz)
        macs, dense_macs = layer.macs(_output_shape(layer))
    else:
        kernel = _kernel_variable(layer)
        if kernel is not None:
            dense_params = nnz = _size(kernel)
            layer_type = DCTSparseLayer.replacement_for(layer)
            positions = _positions(layer, layer_type, _output_shape(layer))
            macs = dense_macs = dense_params * positions
        else:
            dense_params = nnz = macs = dense_macs = 0
    density = nnz / dense_params if dense_params else None
    return LayerReport(
        name, kind, dense_params, nnz, density, trainable, stored, macs, dense_macs
    )


def sparsity_report(model):
    """Parameters, storage and multiply-adds per layer and in total.

    See the module docstring for what each column counts and the multiply-add
    model (a fast DCT costs `2.5 * N * log2(2N)` multiply-adds per row; the conv
    offset `2 * c_in * c_out + 2 * k * c_out` per output pixel).

    Args:
        model: A built Keras model (Sequential or Functional, built on symbolic
            inputs so that every layer has an output shape), or a single built
            layer called on a `keras.Input`.

    Returns:
        A `SparsityReport`; `str(report)` is an aligned Markdown table.

    Raises:
        ValueError: If the model has no weights (not built) or a layer's output
            shape is unknown.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     DCTSparseDense(4, density=0.25, seed=0),
    ... ])
    >>> report = sparsity_report(model)
    >>> report.total.nnz, report.total.dense_params, report.total.density
    (8, 32, 0.25)
    """
    if isinstance(model, keras.Model) or list(
        model._flatten_layers(include_self=False, recursive=False)
    ):
        layers = _leaf_layers(model)
    else:
        layers = [model] if model.weights else []
    if not layers:
        raise ValueError(
            f"Model '{model.name}' has no weights: build it first (give it a "
            "`keras.Input`, or call it on data)."
        )
    rows = [_layer_row(layer) for layer in layers]
    dense_params = sum(r.dense_params for r in rows)
    nnz = sum(r.nnz for r in rows)
    total = LayerReport(
        name="total",
        kind="",
        dense_params=dense_params,
        nnz=nnz,
        density=nnz / dense_params if dense_params else None,
        trainable_params=sum(r.trainable_params for r in rows),
        bytes=sum(r.bytes for r in rows),
        macs=sum(r.macs for r in rows),
        dense_macs=sum(r.dense_macs for r in rows),
    )
    return SparsityReport(layers=rows, total=total)
