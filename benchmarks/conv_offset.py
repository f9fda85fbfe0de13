"""Time the regenerated DCT conv offset against a plain dense conv (CPU, tf.function).

Shapes are VGG-like 3x3 convs (64->64 ... 512->512 on 32x32 and 8x8 maps). Each variant is
timed forward only and forward+backward. The offset has no trainable weight except the
scalar alpha, so its backward is d/dx plus d/dalpha; the dense baseline's backward is d/dx
plus d/dkernel (what a trainable dense Conv2D costs in a train step).

Usage:
    python benchmarks/conv_offset.py            # batch 4, < 3 minutes on 2 cores
    python benchmarks/conv_offset.py --quick    # batch 2, fewer repeats
    python benchmarks/conv_offset.py --batch 128 --repeats 5   # the full VGG setting (slow)

Prints two Markdown tables (median ms, and ratio to the dense conv in parentheses).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import tensorflow as tf  # noqa: E402

from keras_dctsparse.ops import conv_offset as co  # noqa: E402

CHANNELS = (64, 128, 256, 512)
MAPS = (32, 8)
KERNEL = 3
OFFSETS = {
    "direct": co.conv_offset_direct,
    "matmul": co.conv_offset_matmul,
    "fft": co.conv_offset_fft,
}


def parse_args(argv=None):
    """Parses the command line.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).

    Returns:
        An ``argparse.Namespace`` with ``batch`` and ``repeats``.

    Example:
        >>> parse_args(["--quick"]).batch
        2
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 5)")
    parser.add_argument("--quick", action="store_true", help="batch 2 and 3 repeats")
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 4)
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def median_ms(fn, repeats):
    """Median wall time of ``fn()`` in milliseconds, after one warm-up (tracing) call.

    Args:
        fn: Zero-argument callable returning tensors.
        repeats: Number of timed calls.

    Returns:
        The median time in ms.

    Example:
        >>> median_ms(lambda: tf.zeros(()), 3) >= 0
        True
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        tf.nest.map_structure(lambda t: t.numpy(), result)  # wait for the values
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def train_fns(apply, variable):
    """Forward and forward+backward ``tf.function``s of ``apply(x)``.

    ``x`` and the upstream gradient ``dy`` are function arguments, not captured constants,
    so Grappler cannot constant-fold the (linear, x-independent) backward of the offset.

    Args:
        apply: ``x -> y``, built on ``variable``.
        variable: The trainable variable of ``apply`` (dense kernel or alpha).

    Returns:
        ``(forward, forward_backward)``: ``forward(x)`` and ``forward_backward(x, dy)``,
        the latter returning ``[dL/dx, dL/dvariable]``.

    Example:
        >>> alpha = tf.Variable(1.0)
        >>> fwd, bwd = train_fns(lambda x: alpha * x, alpha)
    """

    @tf.function
    def forward(x):
        return apply(x)

    @tf.function
    def forward_backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = apply(x)
        return tape.gradient(y, [x, variable], output_gradients=dy)

    return forward, forward_backward


def variant_fns(channels, in_channels):
    """The dense conv and every offset variant, as ``train_fns`` pairs.

    Args:
        channels: Output channels.
        in_channels: Input channels.

    Returns:
        ``{name: (forward, forward_backward)}``, ``"dense"`` first.

    Example:
        >>> sorted(variant_fns(4, 4))
        ['dense', 'direct', 'fft', 'matmul']
    """
    kernel = tf.Variable(tf.random.normal((KERNEL, KERNEL, in_channels, channels), stddev=0.05))
    fns = {"dense": train_fns(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"), kernel)}
    for name, offset in OFFSETS.items():
        alpha = tf.Variable(1.0)
        apply = lambda x, offset=offset, alpha=alpha: alpha * offset(x, KERNEL, channels, 1, "same")
        fns[name] = train_fns(apply, alpha)
    return fns


def time_shape(batch, size, channels, repeats):
    """Times every variant on one shape.

    Args:
        batch: Batch size.
        size: Feature-map height and width.
        channels: Input and output channels.
        repeats: Timed runs per measurement.

    Returns:
        ``{"forward": {name: ms}, "forward+backward": {name: ms}}``, dense first.

    Example:
        >>> time_shape(1, 8, 8, 1)["forward"]["dense"] > 0
        True
    """
    x = tf.random.normal((batch, size, size, channels))
    dy = tf.random.normal((batch, size, size, channels))
    fns = variant_fns(channels, channels)
    return {
        "forward": {name: median_ms(lambda f=f: f(x), repeats) for name, (f, _) in fns.items()},
        "forward+backward": {
            name: median_ms(lambda g=g: g(x, dy), repeats) for name, (_, g) in fns.items()
        },
    }


def markdown_table(title, rows):
    """Formats ``[(label, {name: ms})]`` as a Markdown table with ratios to ``dense``.

    Args:
        title: Table heading.
        rows: List of ``(shape label, timings)``; every timings dict has a ``"dense"`` key.

    Returns:
        The table as a string.

    Example:
        >>> print(markdown_table("t", [("s", {"dense": 2.0, "fft": 1.0})]))  # doctest: +SKIP
    """
    names = list(rows[0][1])
    lines = [
        f"**{title}** (median ms; ratio to dense in parentheses)",
        "",
        "| shape | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for label, timings in rows:
        cells = [f"{timings[n]:.1f} ({timings[n] / timings['dense']:.2f})" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark and prints the tables.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).

    Returns:
        None.

    Example:
        >>> main(["--quick"])  # doctest: +SKIP
    """
    args = parse_args(argv)
    results = []
    for size in MAPS:
        for channels in CHANNELS:
            label = f"{KERNEL}x{KERNEL} {channels}->{channels}, {size}x{size}"
            results.append((label, time_shape(args.batch, size, channels, args.repeats)))
            print(f"done {label}", file=sys.stderr, flush=True)
    print(f"TF {tf.__version__}, CPU, batch {args.batch}, median of {args.repeats} runs\n")
    for mode in ("forward", "forward+backward"):
        print(markdown_table(mode, [(label, timings[mode]) for label, timings in results]))
        print()
    print("dense backward = d/dx + d/dkernel; offset backward = d/dx + d/dalpha.")


if __name__ == "__main__":
    main()
