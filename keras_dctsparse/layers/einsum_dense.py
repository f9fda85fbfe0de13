"""`DCTSparseEinsumDense`: `keras.layers.EinsumDense` whose weight is `alpha * D + S`.

An einsum `input, kernel -> output` whose kernel axes are each either contracted
with input axes or free (appear in the output only) is one matrix product: the
input transposed to `(free input axes..., contracted axes...)` and flattened to
`(rows, n)`, times the kernel's `(n, m)` matrix view (contracted axes as rows,
the kernel's free axes as columns, each in the kernel's order), then reshaped
to `(free input axes..., free kernel axes...)` and transposed to the output
order. That `(n, m)` matrix is exactly a `DCTSparseDense` weight, so `D` and `S`
are the dense layer's (`SparseWeight.matmul`) with `n` = product of the
contracted dimensions and `m` = product of the kernel's free dimensions.
"""

import collections
import math
import re

import keras
from keras import ops

from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.ops import keras_ops

__all__ = ["DCTSparseEinsumDense", "EinsumPlan", "einsum_plan"]

_EQUATION = re.compile(r"^(\.\.\.)?([a-zA-Z]+),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)$")

#: How an einsum reduces to a matrix product (see `einsum_plan`).
EinsumPlan = collections.namedtuple(
    "EinsumPlan",
    [
        "input_perm",  # input axes -> (ellipsis, free input, contracted) order
        "leading_rank",  # ellipsis + free input axes: the leading axes of the product
        "n",  # product of the contracted dimensions (rows of the matrix view)
        "m",  # product of the kernel's free dimensions (columns)
        "free_kernel_dims",  # sizes of the kernel's free axes, kernel order
        "output_perm",  # (ellipsis, free input, free kernel) -> output order
        "output_shape",  # full output shape, batch first (None where dynamic)
        "kernel_shape",  # the Keras kernel shape
        "kernel_perm",  # (contracted, free kernel) -> Keras kernel axis order
        "bias_shape",  # the Keras bias shape, or None
    ],
)


def _parse(equation):
    match = _EQUATION.match(equation) if isinstance(equation, str) else None
    if match is None or bool(match.group(1)) != bool(match.group(4)):
        raise ValueError(
            "Argument `equation` must be of the form 'ab,bc->ac' or '...b,bc->...c' "
            "(an ellipsis, if any, leading both the input and the output); received "
            f"equation={equation!r}."
        )
    return bool(match.group(1)), match.group(2), match.group(3), match.group(5)


def _refuse(equation, why):
    raise ValueError(
        f"DCTSparseEinsumDense cannot reduce equation={equation!r} to a matrix product: "
        f"{why}. Each kernel axis must be either contracted with an input axis (and absent "
        "from the output) or free (absent from the input, present in the output), and "
        "each input axis either contracted or kept in the output."
    )


def _letters(equation):
    """`(elided, input, kernel, output)` letters of a reducible equation, else ValueError."""
    elided, inputs, kernel, outputs = _parse(equation)
    for role, spec in (("input", inputs), ("kernel", kernel), ("output", outputs)):
        if len(set(spec)) != len(spec):
            _refuse(equation, f"the {role} has a repeated axis ({spec!r})")
    shared = [c for c in kernel if c in inputs and c in outputs]
    if shared:
        _refuse(equation, f"axes {''.join(shared)!r} are batch axes shared by kernel and input")
    summed = [c for c in kernel if c not in inputs and c not in outputs]
    if summed:
        _refuse(equation, f"kernel axes {''.join(summed)!r} are summed over on their own")
    dropped = [c for c in inputs if c not in kernel and c not in outputs]
    if dropped:
        _refuse(equation, f"input axes {''.join(dropped)!r} are summed over on their own")
    unknown = [c for c in outputs if c not in inputs and c not in kernel]
    if unknown:
        raise ValueError(
            f"Output axes {''.join(unknown)!r} of equation={equation!r} appear in neither "
            "the input nor the kernel."
        )
    if not elided and inputs[0] in kernel:
        _refuse(equation, f"the first input axis {inputs[0]!r} is the batch axis")
    return elided, inputs, kernel, outputs


def _output_dims(output_shape):
    if isinstance(output_shape, int) or output_shape is None:
        return [output_shape]
    return list(output_shape)


def einsum_plan(equation, input_shape, output_shape, bias_axes=None):
    """How `DCTSparseEinsumDense` computes `equation` as one matrix product.

    Shapes follow `keras.layers.EinsumDense`: `output_shape` is the output
    without the batch axis (and without the axes an ellipsis stands for); its
    entries may be None for axes taken from the input.

    Args:
        equation: An einsum `"input,kernel->output"`, with an optional leading
            `"..."` on both the input and the output.
        input_shape: The input shape, batch first.
        output_shape: As for `keras.layers.EinsumDense`.
        bias_axes: None, or output letters that have a bias.

    Returns:
        An `EinsumPlan`.

    Raises:
        ValueError: If the equation is malformed or not a matrix product over
            the kernel (e.g. a batch axis shared by kernel and input), or the
            shapes do not match it.

    Example:

    >>> plan = einsum_plan("abc,cde->abde", (None, 5, 8), (5, 2, 3))
    >>> plan.n, plan.m, plan.kernel_shape, plan.output_shape
    (8, 6, (8, 2, 3), (None, 5, 2, 3))
    """
    elided, inputs, kernel, outputs = _letters(equation)
    input_shape = tuple(input_shape)
    dims = _output_dims(output_shape)
    ellipsis = len(input_shape) - len(inputs)
    if (elided and ellipsis < 1) or (not elided and ellipsis != 0):
        rank = f"more than {len(inputs)} (the ellipsis holds the batch axis)"
        raise ValueError(
            f"equation={equation!r} expects inputs of rank "
            f"{rank if elided else len(inputs)}; received input_shape={input_shape}."
        )
    expected = len(outputs) if elided else len(outputs) - 1
    if len(dims) != expected:
        raise ValueError(
            f"Argument `output_shape` must have {expected} entries for "
            f"equation={equation!r} (the output without its batch "
            f"{'and ellipsis axes' if elided else 'axis'}); received "
            f"output_shape={output_shape!r}."
        )
    leading = input_shape[:ellipsis]
    out_full = list(leading) + ([] if elided else [input_shape[0]]) + dims
    size = {}
    for index, letter in enumerate(inputs):
        size[letter] = input_shape[ellipsis + index]
    for index, letter in enumerate(outputs):
        given = out_full[ellipsis + index]
        if letter in size:
            if given is not None and size[letter] is not None and given != size[letter]:
                raise ValueError(
                    f"Output axis {letter!r} of equation={equation!r} has size {given} in "
                    f"output_shape={output_shape!r} but {size[letter]} in the input "
                    f"(input_shape={input_shape})."
                )
        else:
            size[letter] = given
    contracted = [c for c in kernel if c in inputs]
    free_kernel = [c for c in kernel if c not in inputs]
    free_input = [c for c in inputs if c not in kernel]
    for letter in kernel:
        if size[letter] is None:
            raise ValueError(
                f"Kernel axis {letter!r} of equation={equation!r} needs a defined size; "
                f"received input_shape={input_shape} and output_shape={output_shape!r}."
            )
    rest = free_input + free_kernel
    output_letters_full = list(outputs)
    if bias_axes is not None:
        missing = [c for c in bias_axes if c not in outputs]
        if missing or not bias_axes:
            raise ValueError(
                f"Argument `bias_axes` must be output axes of equation={equation!r}; "
                f"received bias_axes={bias_axes!r}."
            )
        for c in bias_axes:
            if size[c] is None:
                raise ValueError(
                    f"Bias axis {c!r} of equation={equation!r} needs a defined size."
                )
        first = min(outputs.index(c) for c in bias_axes)
        bias_shape = tuple(
            int(size[c]) if c in bias_axes else 1 for c in outputs[first:]
        )
    else:
        bias_shape = None
    return EinsumPlan(
        input_perm=tuple(range(ellipsis))
        + tuple(ellipsis + inputs.index(c) for c in free_input + contracted),
        leading_rank=ellipsis + len(free_input),
        n=math.prod(int(size[c]) for c in contracted),
        m=math.prod(int(size[c]) for c in free_kernel),
        free_kernel_dims=tuple(int(size[c]) for c in free_kernel),
        output_perm=tuple(range(ellipsis))
        + tuple(ellipsis + rest.index(c) for c in output_letters_full),
        output_shape=tuple(leading) + tuple(size[c] for c in outputs),
        kernel_shape=tuple(int(size[c]) for c in kernel),
        kernel_perm=tuple((contracted + free_kernel).index(c) for c in kernel),
        bias_shape=bias_shape,
    )


@keras.saving.register_keras_serializable(package="keras_dctsparse")
class DCTSparseEinsumDense(DCTSparseLayer):
    """`keras.layers.EinsumDense` at the price of a sparse layer (DCT plus sparse).

    Computes `activation(einsum(equation, x, kernel) + bias)` with the
    effective kernel `alpha * D + S` seen as its `(n, m)` matrix view: `n` is the
    product of the contracted dimensions (kernel axes that are also input
    axes), `m` the product of the kernel's free dimensions (kernel axes that
    appear only in the output), both in the kernel's axis order. `D`, `S` and
    `alpha` are exactly those of a `DCTSparseDense(m)` on `n` inputs, and the
    layer runs one `SparseWeight.matmul` between a transpose/reshape of the input
    and a reshape/transpose of the result (see `einsum_plan`). The kernel is
    never stored: the weights are `S`'s `nnz` values and positions, `alpha` and
    the bias, as for the dense layer, and `sparse_kernel` is the `(n, m)` matrix.

    Equations that are not such a matrix product (a batch axis shared by kernel
    and input, an axis summed over within one operand, repeated axes) are
    refused with a ValueError naming the equation. Typical uses are attention
    projections (`"abc,cde->abde"`: hidden size to heads x head size;
    `"abcd,cde->abe"`: back).

    Args:
        equation: An einsum `"input,kernel->output"` as for
            `keras.layers.EinsumDense` (`"..."` allowed leading both the input
            and the output).
        output_shape: The output shape without the batch axis (and the axes an
            ellipsis stands for), as for `keras.layers.EinsumDense`; entries of
            axes taken from the input may be None.
        bias_axes: None (no bias) or a string of output letters with a bias, as
            for `keras.layers.EinsumDense` (e.g. `"de"`).
        density: Fraction of the `n * m` entries of `S` kept and trained, in (0, 1].
            Default 0.01 unless `nnz` (the number of kept entries) is given.
        offset: `"dct"` (default) or `None` for the plain random-sparse layer.
        **kwargs: The other `DCTSparseLayer` arguments (`activation`, `alpha`,
            `sparse_initializer`, `sparse_kernel`, `seed`, `sparse_format`, ...;
            not `use_bias`: the bias is given by `bias_axes`) and base layer
            arguments (`name`, `dtype`, ...).

    Input shape:
        The shape the equation's input names (with its batch axis).

    Output shape:
        `(batch, *output_shape)` (with the ellipsis axes for `"..."`).

    Example:

    >>> layer = DCTSparseEinsumDense(
    ...     "abc,cde->abde", output_shape=(None, 4, 16), bias_axes="de", density=0.1
    ... )
    >>> layer(np.zeros((2, 7, 64), "float32")).shape
    TensorShape([2, 7, 4, 16])
    >>> layer.sparse_weight.kernel_shape, layer.nnz
    ((64, 64), 410)
    """

    replaces = keras.layers.EinsumDense
    linear_map_is_matmul = True
    carried_keys = ("equation", "output_shape", "bias_axes")
    export_kind = "matrix"

    def __init__(
        self, equation, output_shape, bias_axes=None, density=None, offset="dct", **kwargs
    ):
        if "use_bias" in kwargs:
            raise ValueError(
                "DCTSparseEinsumDense takes no `use_bias`: give the bias with `bias_axes` "
                f"(None for no bias); received use_bias={kwargs['use_bias']!r}."
            )
        _letters(equation)
        if bias_axes is not None and not isinstance(bias_axes, str):
            raise ValueError(
                f"Argument `bias_axes` must be None or a string of output letters; "
                f"received bias_axes={bias_axes!r}."
            )
        super().__init__(
            density=density, offset=offset, use_bias=bias_axes is not None, **kwargs
        )
        self.equation = equation
        self.partial_output_shape = (
            output_shape if isinstance(output_shape, int) else tuple(output_shape)
        )
        self.bias_axes = bias_axes
        self.plan = None

    def build(self, input_shape):
        self.plan = einsum_plan(
            self.equation, input_shape, self.partial_output_shape, self.bias_axes
        )
        n, m = self.plan.n, self.plan.m
        self.build_sparse_part((n, m), bias_size=self.plan.bias_shape or (m,))

    def matrix_input(self, x):
        """`x` as the `(rows, n)` input of the matrix product (transposed and flattened)."""
        x = ops.transpose(x, self.plan.input_perm)
        return ops.reshape(x, (-1, self.plan.n))

    def matrix_output(self, y, x):
        """The `(rows, m)` products reshaped and transposed to the output layout."""
        shape = ops.shape(x)
        leading = [shape[axis] for axis in self.plan.input_perm[: self.plan.leading_rank]]
        y = ops.reshape(y, (*leading, *self.plan.free_kernel_dims))
        return ops.transpose(y, self.plan.output_perm)

    def call(self, inputs):
        x = ops.cast(inputs, self.transform_dtype())
        rows = self.matrix_input(x)
        alpha = self.alpha_as(rows.dtype) if self.offset == "dct" else None
        linear = self.matrix_product(rows, alpha)
        linear = self.observe_linear_output(rows, linear)
        return self.finish(self.matrix_output(linear, x))

    @property
    def kernel(self):
        """The effective kernel `alpha * D^T + S` in the Keras kernel layout (for inspection).

        This materializes `n * m` numbers: do not use it on huge layers.
        """
        self._check_built("kernel")
        n, m = self.plan.n, self.plan.m
        dtype = self.transform_dtype()
        matrix = ops.cast(self.sparse_weight.dense_kernel(), dtype)
        if self.offset == "dct":
            offset = ops.transpose(keras_ops.dct_block(m, n, dtype))
            matrix = matrix + self.alpha_as(dtype) * offset
        plan = self.plan
        by_role = [
            plan.kernel_shape[plan.kernel_perm.index(i)] for i in range(len(plan.kernel_perm))
        ]
        return ops.transpose(ops.reshape(matrix, by_role), plan.kernel_perm)

    def compute_output_shape(self, input_shape):
        return einsum_plan(
            self.equation, input_shape, self.partial_output_shape, self.bias_axes
        ).output_shape

    # -- hooks of `DCTSparseLayer` (sparsify, report, export) ----------------------------------

    @classmethod
    def config_from(cls, layer):
        config = super().config_from(layer)
        config.pop("use_bias", None)
        return config

    @classmethod
    def kernel_shape_of(cls, layer):
        """The `(n, m)` matrix view of the replaced `EinsumDense`'s kernel."""
        config = layer.get_config()
        _, inputs, kernel, _ = _letters(config["equation"])
        variable = getattr(layer, "_kernel", None)
        if isinstance(variable, keras.Variable):
            size = dict(zip(kernel, (int(d) for d in variable.shape)))
            n = math.prod(size[c] for c in kernel if c in inputs)
            return (n, math.prod(size[c] for c in kernel if c not in inputs))
        return super().kernel_shape_of(layer)

    @classmethod
    def kernel_shape_for(cls, config, input_shape):
        plan = einsum_plan(config["equation"], input_shape, config["output_shape"])
        return (plan.n, plan.m)

    @classmethod
    def positions_for(cls, config, output_shape):
        # Output elements per example over the kernel's free axes.
        elided, inputs, kernel, outputs = _letters(config["equation"])
        ellipsis = len(output_shape) - len(outputs)
        free_kernel = {c for c in kernel if c not in inputs}
        dims = list(output_shape[1:ellipsis]) + [
            d
            for index, (c, d) in enumerate(zip(outputs, output_shape[ellipsis:]))
            if c not in free_kernel and (elided or index > 0)
        ]
        if any(d is None for d in dims):
            raise ValueError(
                f"Layer '{config.get('name')}' needs a static output shape to count its "
                f"multiply-adds; its output shape is {tuple(output_shape)}."
            )
        return math.prod(int(d) for d in dims)

    def get_config(self):
        config = super().get_config()
        config.pop("use_bias")
        config.update(
            {
                "equation": self.equation,
                "output_shape": self.partial_output_shape,
                "bias_axes": self.bias_axes,
            }
        )
        return config
