"""Timing helpers shared by the benchmark scripts."""

import time

import numpy as np


def median_ms(function, repeats, warmup=2):
    """Median wall time of `function()` in milliseconds (outputs fetched to host)."""
    for _ in range(warmup):
        _fetch(function())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _fetch(function())
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _fetch(result):
    if isinstance(result, (list, tuple)):
        for item in result:
            _fetch(item)
    elif result is not None and hasattr(result, "numpy"):
        result.numpy()


def markdown_table(header, rows):
    """A Markdown table from a header list and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
