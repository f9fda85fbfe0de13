"""Tests for keras_dctsparse.experiments.tables: the summary, table and plot of a sweep."""

import numpy as np
import pytest

from keras_dctsparse.experiments import tables as sweep_tables


def _result(accuracy, nnz=100, wall=2.0):
    return {"test_accuracy": accuracy, "wall_time_s": wall, "total_nnz": nnz}


def _rows(rng):
    """Sweep rows of every variant at two densities, 3 seeds, random accuracies."""
    rows = []
    for seed in range(3):
        rows.append((1.0, "none", seed, _result(rng.uniform(0.9, 1.0), 1000)))
        for density in (0.1, 0.01):
            for offset in ("none", "dct"):
                for method in ("set", "static", "rigl"):
                    result = _result(rng.uniform(0.1, 0.9), int(1000 * density))
                    if method == "static" and seed % 2:
                        rows.append((density, offset, seed, result))  # old 4-tuple
                    else:
                        rows.append((density, offset, seed, result, method))
    return rows


def test_summary_is_keyed_by_density_offset_and_sparse_training():
    rows = _rows(np.random.default_rng(0))
    summary = sweep_tables.summarise(rows)
    assert len(summary) == 1 + 2 * 2 * 3
    assert [s["label"] for s in summary[:7]] == list(sweep_tables.LABELS)
    assert [s["density"] for s in summary] == [1.0] + [0.1] * 6 + [0.01] * 6
    for entry in summary:
        accuracies = [
            row[3]["test_accuracy"]
            for row in rows
            if (row[0], row[1], row[4] if len(row) > 4 else "static")
            == (entry["density"], entry["offset"], entry["sparse_training"])
        ]
        assert entry["seeds"] == len(accuracies) == 3
        assert entry["accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert entry["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert entry["accuracy_min"] == min(accuracies)


def test_labels():
    assert sweep_tables.label(1.0, "none") == "dense"
    assert sweep_tables.label(0.1, "dct") == "DCTpS"
    assert sweep_tables.label(0.1, "dct", "rigl") == "DCTpS + RigL"
    assert sweep_tables.label(0.1, "none", "set") == "plain sparse + SET"
    assert sweep_tables.label(0.1, "none", "static") == "plain sparse"


def test_markdown_has_one_column_per_variant_in_order():
    summary = sweep_tables.summarise(_rows(np.random.default_rng(1)))
    lines = sweep_tables.sweep_markdown(summary).splitlines()
    assert lines[0] == "| density | nnz | " + " | ".join(
        f"{label} test acc. (%)" for label in sweep_tables.LABELS
    ) + " |"
    assert lines[2].startswith("| 1 | 1000 | ") and lines[2].count(" - ") == 6
    assert lines[3].startswith("| 0.1 | 100 | - | ") and lines[3].count(" - ") == 1
    by_label = {s["label"]: s for s in summary if s["density"] == 0.01}
    cells = lines[4].split(" | ")[3:]
    for label, cell in zip(sweep_tables.LABELS[1:], cells):
        assert cell.strip(" |").startswith(f"{100 * by_label[label]['accuracy_mean']:.2f} ± ")


def test_static_only_markdown_is_unchanged():
    rows = [(1.0, "none", 0, _result(0.98, 1000)), (0.1, "dct", 0, _result(0.9)),
            (0.1, "none", 0, _result(0.8))]
    lines = sweep_tables.sweep_markdown(sweep_tables.summarise(rows)).splitlines()
    assert lines[0] == ("| density | nnz | dense test acc. (%) | DCTpS test acc. (%) | "
                        "plain sparse test acc. (%) |")
    assert lines[3] == ("| 0.1 | 100 | - | 90.00 ± 0.00 (90.00-90.00) | "
                        "80.00 ± 0.00 (80.00-80.00) |")


def test_plot_draws_a_line_per_variant(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    summary = sweep_tables.summarise(_rows(np.random.default_rng(3)))
    drawn = []
    real = plt.Axes.errorbar

    def record(self, x, y, *args, label=None, **kwargs):
        drawn.append((label, list(x)))
        return real(self, x, y, *args, label=label, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "errorbar", record)
        path = sweep_tables.plot(str(tmp_path), summary, "lenet300100")
    assert path == str(tmp_path / "accuracy.png") and (tmp_path / "accuracy.png").is_file()
    assert drawn == [(label, [0.01, 0.1]) for label in sweep_tables.LABELS[1:]]
