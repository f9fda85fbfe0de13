"""The results of a `dctsparse sweep`: per-density summary, Markdown/CSV tables, plot."""

import csv
import os

from keras_dctsparse import atomic

__all__ = ["LABELS", "label", "plot", "summarise", "sweep_markdown", "write_sweep_tables"]

_METHOD_NAMES = {"rigl": "RigL", "set": "SET"}

# Column (and plot) order of the variants: dense, then per offset static and dynamic.
LABELS = (
    "dense",
    "DCTpS", "DCTpS + RigL", "DCTpS + SET",
    "plain sparse", "plain sparse + RigL", "plain sparse + SET",
)


def label(density, offset, sparse_training="static"):
    """The name of a sweep variant: "dense", "DCTpS", "plain sparse + RigL", ...

    Args:
        density: The density (1 is the dense baseline).
        offset: "dct" or "none".
        sparse_training: "static", "rigl" or "set".

    Returns:
        The label, one of `LABELS`.
    """
    if density == 1.0:
        return "dense"
    name = "DCTpS" if offset == "dct" else "plain sparse"
    if sparse_training in (None, "static"):
        return name
    return f"{name} + {_METHOD_NAMES[sparse_training]}"


def _order(entry):
    return LABELS.index(entry["label"]) if entry["label"] in LABELS else len(LABELS)


def summarise(rows):
    """One dict per (density, offset, sparse training) of the sweep's rows.

    Args:
        rows: `(density, offset, seed, results)` or `(density, offset, seed,
            results, sparse_training)` tuples (4-tuples are static runs).

    Returns:
        Dicts with the label (dense / DCTpS / DCTpS + RigL / ... / plain sparse,
        see `label`), the number of seeds, the final test accuracy's mean,
        sample std, min and max, the mean wall time and the nnz, sorted by
        decreasing density and then in `LABELS` order.
    """
    import numpy as np

    groups = {}
    for row in rows:
        density, offset, _seed, result = row[:4]
        method = row[4] if len(row) > 4 else "static"
        groups.setdefault((density, offset, method), []).append(result)
    summary = []
    for (density, offset, method), results in groups.items():
        accuracy = np.array([r["test_accuracy"] for r in results], dtype=float)
        wall = np.array([r["wall_time_s"] for r in results], dtype=float)
        summary.append(
            {
                "density": density,
                "offset": offset,
                "sparse_training": method,
                "label": label(density, offset, method),
                "seeds": len(results),
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1)) if len(results) > 1 else 0.0,
                "accuracy_min": float(accuracy.min()),
                "accuracy_max": float(accuracy.max()),
                "wall_time_mean_s": float(wall.mean()),
                "nnz": int(results[0]["total_nnz"]),
            }
        )
    summary.sort(key=lambda s: (-s["density"], _order(s), s["offset"], s["sparse_training"]))
    return summary


def _cell(entry):
    if entry is None:
        return "-"
    return (
        f"{100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f} "
        f"({100 * entry['accuracy_min']:.2f}-{100 * entry['accuracy_max']:.2f})"
    )


def sweep_markdown(summary, title=None, command=None, wall_time_s=None):
    """The Markdown results table of a sweep: one row per density.

    Columns: density, nnz, then for each variant present (dense, DCTpS,
    DCTpS + RigL, DCTpS + SET, plain sparse, plain sparse + RigL, ...: see
    `LABELS`) the final test accuracy in percent as `mean ± sample std
    (min-max)` over the seeds.

    Args:
        summary: The list of dicts from `summarise`.
        title: Optional first line.
        command: Optional command that produced the table (shown below it).
        wall_time_s: Optional total wall time of the runs.

    Returns:
        The Markdown text.
    """
    by_key = {(s["density"], s["label"]): s for s in summary}
    present = {s["label"] for s in summary}
    columns = [c for c in LABELS if c in present] + sorted(present - set(LABELS))
    seeds = sorted({s["seeds"] for s in summary})
    lines = []
    if title:
        lines += [title, ""]
    lines.append(
        "| density | nnz | "
        + " | ".join(f"{c} test acc. (%)" for c in columns)
        + " |"
    )
    lines.append("|---:|---:|" + "---:|" * len(columns))
    for density in sorted({s["density"] for s in summary}, reverse=True):
        entries = [by_key.get((density, c)) for c in columns]
        nnz = next(e["nnz"] for e in entries if e is not None)
        lines.append(
            f"| {density:g} | {nnz} | " + " | ".join(_cell(e) for e in entries) + " |"
        )
    lines.append("")
    lines.append(
        f"Final-epoch test accuracy over {'/'.join(map(str, seeds))} seeds: mean ± sample "
        "standard deviation (min-max)."
    )
    if command:
        lines.append(f"Command: `{command}`.")
    if wall_time_s is not None:
        lines.append(f"Wall time: {wall_time_s / 60:.1f} min (sum over the runs).")
    return "\n".join(lines) + "\n"


def write_sweep_tables(out, summary, args, command, wall_time_s):
    """Writes OUT/results.csv and OUT/results.md (printed too)."""
    fields = [
        "density",
        "offset",
        "sparse_training",
        "label",
        "seeds",
        "accuracy_mean",
        "accuracy_std",
        "accuracy_min",
        "accuracy_max",
        "wall_time_mean_s",
        "nnz",
    ]
    with open(os.path.join(out, "results.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows({"sparse_training": "static", **entry} for entry in summary)
    title = (
        f"{args.model} on {args.dataset}, {args.epochs} epochs, {args.distribution} "
        f"allocation, {args.optimizer} lr {args.lr:g} ({args.schedule}), batch "
        f"{args.batch_size}"
    )
    if any(entry.get("sparse_training", "static") != "static" for entry in summary):
        title += (
            f"; RigL/SET: update every {args.update_every} steps, drop fraction "
            f"{args.drop_fraction:g}, positions fixed after {args.end_fraction:g} of "
            "the steps"
        )
    text = sweep_markdown(summary, title, command, wall_time_s)
    atomic.write_text(os.path.join(out, "results.md"), text)
    print(text)


def plot(out, summary, model_name=""):
    """Writes OUT/accuracy.png (accuracy vs density); returns its path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, skipping accuracy.png (pip install matplotlib)")
        return None
    figure, axes = plt.subplots(figsize=(5, 3.5))
    present = {s["label"] for s in summary} - {"dense"}
    for name in [c for c in LABELS if c in present] + sorted(present - set(LABELS)):
        points = sorted((s for s in summary if s["label"] == name), key=lambda s: s["density"])
        axes.errorbar(
            [s["density"] for s in points],
            [s["accuracy_mean"] for s in points],
            yerr=[s["accuracy_std"] for s in points],
            marker="o",
            capsize=3,
            label=name,
        )
    for dense in (s for s in summary if s["label"] == "dense"):
        axes.axhline(dense["accuracy_mean"], color="gray", linestyle="--", label="dense")
        axes.plot([1.0], [dense["accuracy_mean"]], "ks")
    axes.set_title(model_name)
    axes.set_xscale("log")
    axes.set_xlabel("density")
    axes.set_ylabel("test accuracy")
    axes.legend()
    figure.tight_layout()
    path = os.path.join(out, "accuracy.png")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
