"""Figures of a run or a scoring: training history, class distribution, confusion matrices, per-class scores.

Each ``plot_*`` function writes one PNG atomically and returns its path; :func:`save_all_plots`
writes all of a run's. :func:`read_history` reads the training history that :func:`plot_history` draws.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from melgenre.errors import MelgenreError
from melgenre.utils import save_png


def read_history(history_csv: str | Path) -> dict[str, np.ndarray]:
    """Read a training ``history.csv`` into one float array per column (empty cells are NaN).

    Parameters
    ----------
    history_csv : path
        CSV with a header row that includes ``epoch``; the training module writes
        ``epoch, train_loss, train_accuracy, train_macro_precision, val_loss, val_accuracy,
        val_macro_precision, lr``. Every column is read.

    Returns
    -------
    dict
        Column name -> ``(epochs,)`` float array.

    Raises
    ------
    MelgenreError
        If the file has no ``epoch`` column or a cell is not a number.
    """
    history_csv = Path(history_csv)
    with history_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    if "epoch" not in columns:
        raise MelgenreError(f"{history_csv.name}: no 'epoch' column or no rows")
    try:
        return {col: np.array([float(row[col]) if row[col] not in ("", None) else math.nan for row in rows])
                for col in columns}
    except ValueError as err:
        raise MelgenreError(f"{history_csv.name}: {err}") from None


def plot_history(history_csv: str | Path, out: str | Path) -> Path:
    """Loss and macro precision per epoch, train vs val, with the best val epoch marked.

    Parameters
    ----------
    history_csv : path
        The run's ``history.csv`` (see :func:`read_history`); missing columns or empty cells
        simply leave gaps.
    out : path
        PNG to write (atomically).

    Returns
    -------
    Path
        ``out``.
    """
    history = read_history(history_csv)
    epochs = history["epoch"]
    nan = np.full_like(epochs, math.nan)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    panels = (("loss", "loss"), ("macro_precision", 'macro precision ("mAP")'))
    for ax, (metric, label) in zip(axes, panels):
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            ax.plot(epochs, history.get(f"{split}_{metric}", nan), marker="o", ms=3, color=color, label=split)
        ax.set_title(label)
    val_precision = history.get("val_macro_precision", nan)
    if np.isfinite(val_precision).any():
        best = int(np.nanargmax(val_precision))
        for ax in axes:
            ax.axvline(epochs[best], color="tab:green", ls="--", lw=1,
                       label=f"best val epoch {epochs[best]:g} ({val_precision[best]:.3f})")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out)


def plot_class_distribution(counts: Mapping[str, Sequence[int]], classes: Sequence[str], out: str | Path) -> Path:
    """Grouped bars: the number of items of each class in each split.

    Parameters
    ----------
    counts : mapping
        Split name (``"train"``, ``"val"``, ``"test"``) -> count per class, in class order.
    classes : sequence of str
        Class names.
    out : path
        PNG to write (atomically).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    MelgenreError
        If a split's counts do not have one entry per class.
    """
    for split, values in counts.items():
        if len(values) != len(classes):
            raise MelgenreError(f"split {split!r} has {len(values)} counts for {len(classes)} classes")
    x = np.arange(len(classes))
    width = 0.8 / max(len(counts), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(classes) + 2), 4), dpi=100)
    for k, (split, values) in enumerate(counts.items()):
        bars = ax.bar(x + (k - (len(counts) - 1) / 2) * width, values, width, label=f"{split} ({sum(values)})")
        ax.bar_label(bars, fontsize=7)
    _class_axis(ax, classes)
    ax.set_ylim(0, 1.2 * max((max(v, default=0) for v in counts.values()), default=0) + 1)
    ax.set_ylabel("items")
    ax.set_title("class distribution per split")
    ax.legend(ncols=max(len(counts), 1), loc="upper center")
    return _save(fig, out)


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], out: str | Path, title: str = "confusion matrix",
) -> Path:
    """Counts and row-normalised confusion matrices side by side, numbers in the cells.

    Parameters
    ----------
    confusion : ``C×C`` counts
        Rows = true class, columns = predicted class (as in
        :func:`melgenre.metrics.compute_metrics`).
    classes : sequence of str
        Class names.
    out : path
        PNG to write (atomically).
    title : str
        Figure title.

    Returns
    -------
    Path
        ``out``.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    size = max(5.0, 0.55 * len(classes) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), dpi=100)
    for ax, matrix, fmt, vmax, subtitle in ((axes[0], counts, "d", None, "counts"),
                                            (axes[1], normalised, ".2f", 1.0, "row-normalised (recall on the diagonal)")):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        threshold = (vmax or matrix.max()) / 2
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(subtitle)
    fig.suptitle(title)
    return _save(fig, out)


def plot_per_class(metrics: Mapping[str, Any], out: str | Path) -> Path:
    """Per-class precision, recall and F1 as grouped bars (support under each class name).

    Parameters
    ----------
    metrics : mapping
        A :func:`melgenre.metrics.compute_metrics` dict.
    out : path
        PNG to write (atomically).

    Returns
    -------
    Path
        ``out``.
    """
    rows = metrics["per_class"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4), dpi=100)
    for k, (name, label) in enumerate((("precision", "precision"), ("recall", "recall"), ("f1", "F1"))):
        ax.bar(x + (k - 1) * 0.27, [row[name] for row in rows], 0.27, label=label)
    _class_axis(ax, [f"{row['class']}\n(n={row['support']})" for row in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"per class (accuracy {metrics['accuracy']:.3f}, macro precision {metrics['macro_precision']:.3f})")
    ax.legend(loc="lower right")
    return _save(fig, out)


def save_all_plots(
    run_dir: str | Path, results: Mapping[str, Mapping[str, Any]], classes: Sequence[str],
    split_counts: Mapping[str, Sequence[int]] | None = None,
) -> list[Path]:
    """Write every plot of a run into ``run_dir``.

    Parameters
    ----------
    run_dir : path
        The run folder.
    results : mapping
        Split name -> :func:`melgenre.metrics.evaluate_predictions` dict; for each split,
        ``confusion_<split>_track.png`` and ``per_class_<split>_track.png`` are written.
    classes : sequence of str
        Class names.
    split_counts : mapping, optional
        Split name -> count per class; when given, ``class_distribution.png`` is written.

    Returns
    -------
    list of Path
        The files written (``history.png`` too when ``run_dir/history.csv`` exists).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, levels in results.items():
        paths.append(plot_confusion(levels["track"]["confusion"], classes, run_dir / f"confusion_{split}_track.png",
                                    title=f"{split}: track level"))
        paths.append(plot_per_class(levels["track"], run_dir / f"per_class_{split}_track.png"))
    if split_counts is not None:
        paths.append(plot_class_distribution(split_counts, classes, run_dir / "class_distribution.png"))
    if (run_dir / "history.csv").exists():
        paths.append(plot_history(run_dir / "history.csv", run_dir / "history.png"))
    return paths


def _class_axis(ax: plt.Axes, labels: Sequence[str]) -> None:
    """Class names under grouped bars, with a light horizontal grid."""
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center")
    ax.grid(axis="y", alpha=0.3)


def _save(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``out`` atomically and close it."""
    fig.tight_layout()
    return save_png(fig, out)
