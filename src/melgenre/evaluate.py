"""Metrics, plots and a markdown report for a trained classifier's predictions.

A model gives class probabilities per row; a row is a whole track (presets v1, v2) or one
chunk of a track (preset fast). Metrics are computed at chunk level (rows as they are) and at
track level (chunk probabilities averaged per track), with the torchmetrics functional API.

Macro averages follow scikit-learn's ``average="macro", zero_division=0``: they are taken
over the classes that occur in the true labels or in the predictions. A class that occurs in
neither has no precision, recall or F1 at all and is left out of the average (it is still
listed per class, with zeros and support 0); a class that occurs in only one of them counts
with its (possibly zero) score. The report's "mAP" (Cheng & Kuo) is ``macro_precision``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml
from matplotlib.ticker import MaxNLocator
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from melgenre.errors import MelgenreError
from melgenre.utils import atomic_path, save_png

SUMMARY_METRICS = (
    ("accuracy", "accuracy"), ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
)
LEVELS = ("chunk", "track")
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
BOOTSTRAP_SAMPLES = 2000
INTERVAL_LEVEL = 0.95


def track_level(
    probs: np.ndarray, y: np.ndarray, track_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average chunk probabilities per track.

    Parameters
    ----------
    probs : np.ndarray
        ``(N, C)`` class probabilities, one row per chunk.
    y : np.ndarray
        ``(N,)`` integer true class of each chunk.
    track_ids : np.ndarray
        ``(N,)`` track identifier (str) of each chunk.

    Returns
    -------
    track_probs : np.ndarray
        ``(T, C)`` mean probabilities of each track's chunks.
    track_y : np.ndarray
        ``(T,)`` true class of each track.
    tracks : np.ndarray
        ``(T,)`` track identifiers, in order of first appearance.

    Raises
    ------
    MelgenreError
        If the arrays disagree in length or one track's chunks carry different labels.
    """
    probs, y, track_ids = np.asarray(probs), np.asarray(y), np.asarray(track_ids)
    _check_rows(probs, y, track_ids)
    _, first, inverse = np.unique(track_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique's order is sorted by id; this is first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    row_track = rank[inverse.ravel()]
    n_tracks = len(order)
    sums = np.zeros((n_tracks, probs.shape[1]), dtype=np.float64)
    np.add.at(sums, row_track, probs)
    counts = np.bincount(row_track, minlength=n_tracks)
    track_y = y[first[order]]
    mixed = np.flatnonzero(y != track_y[row_track])
    if mixed.size:
        bad = str(track_ids[mixed[0]])
        labels = sorted(set(y[track_ids == bad].tolist()))
        raise MelgenreError(f"track {bad!r} has chunks with different labels {labels}")
    return sums / counts[:, None], track_y, track_ids[first[order]]


def compute_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class scores and the confusion matrix of argmax predictions.

    Parameters
    ----------
    probs : np.ndarray
        ``(N, C)`` class probabilities (any scores whose argmax is the prediction).
    y : np.ndarray
        ``(N,)`` integer true classes in ``[0, C)``.
    classes : sequence of str
        The ``C`` class names, in index order.

    Returns
    -------
    dict
        JSON-serialisable (plain ``int``/``float``/``str``/``list``):

        - ``n``: number of rows;
        - ``accuracy``: fraction of rows predicted right;
        - ``macro_precision``, ``macro_recall``, ``macro_f1``: unweighted means of the
          per-class scores over the classes present in ``y`` or in the predictions (as
          scikit-learn's ``average="macro", zero_division=0``); an undefined score counts 0;
        - ``balanced_accuracy``: mean recall over the classes present in ``y``, as
          ``sklearn.metrics.balanced_accuracy_score``. It is the macro recall whenever
          every predicted class occurs in ``y``; when the model predicts a class absent from
          ``y``, ``macro_recall`` counts that class with recall 0 and this does not;
        - ``per_class``: one ``{class, precision, recall, f1, support}`` per class, support
          being the number of true rows of the class;
        - ``confusion``: ``C×C`` counts, rows = true class, columns = predicted class.

    Raises
    ------
    MelgenreError
        If shapes disagree with each other or with ``classes``, there are no rows, or a
        label is outside ``[0, C)``.
    """
    probs, y = np.asarray(probs), np.asarray(y)
    _check_rows(probs, y)
    n_classes = len(classes)
    if probs.shape[1] != n_classes:
        raise MelgenreError(f"probabilities have {probs.shape[1]} columns but there are {n_classes} classes")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise MelgenreError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    pred = torch.from_numpy(np.argmax(probs, axis=1)).long()
    target = torch.from_numpy(y.astype(np.int64))
    per_class = {
        name: fn(pred, target, num_classes=n_classes, average="none").double().numpy()
        for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall),
                         ("f1", multiclass_f1_score))
    }
    confusion = multiclass_confusion_matrix(pred, target, num_classes=n_classes).numpy()
    support = confusion.sum(axis=1)
    present = (support > 0) | (confusion.sum(axis=0) > 0)
    return {
        "n": len(y),
        "accuracy": float(multiclass_accuracy(pred, target, num_classes=n_classes, average="micro")),
        **{f"macro_{name}": float(scores[present].mean()) for name, scores in per_class.items()},
        "balanced_accuracy": float(per_class["recall"][support > 0].mean()),
        "per_class": [
            {"class": str(cls), **{name: float(scores[i]) for name, scores in per_class.items()},
             "support": int(support[i])}
            for i, cls in enumerate(classes)
        ],
        "confusion": confusion.astype(int).tolist(),
    }


def evaluate_predictions(
    probs: np.ndarray, y: np.ndarray, track_ids: np.ndarray, classes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Metrics at chunk level (rows as given) and at track level (chunks averaged per track).

    Parameters
    ----------
    probs, y, track_ids
        As for :func:`track_level`.
    classes : sequence of str
        Class names in index order.

    Returns
    -------
    dict
        ``{"chunk": metrics, "track": metrics}``, each a :func:`compute_metrics` dict; the track
        level also has ``intervals`` (:func:`bootstrap_intervals`) and a Wilson ``recall_interval``
        per class (:func:`add_intervals`; chunks of one track are not independent, so the chunk
        level has neither). For unchunked data (one row per track) both levels are equal.
    """
    track_probs, track_y, _ = track_level(probs, y, track_ids)
    track = add_intervals(compute_metrics(track_probs, track_y, classes))
    return {"chunk": compute_metrics(probs, y, classes), "track": track}


def pooled_metrics(confusions: Iterable[Sequence[Sequence[int]]], classes: Sequence[str],
                   learnable: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of the summed confusion matrices of disjoint evaluations (e.g. the folds of a CV).

    Returns :func:`compute_metrics` of the pooled predictions plus ``balanced``: accuracy,
    macro precision and macro F1 after reweighting every row (true class) to the same count,
    i.e. what the same per-class recalls and confusions would score on a class-balanced test
    set such as the full GTZAN. Classes with no rows are left out of ``balanced``. Also
    ``intervals`` (:func:`bootstrap_intervals`), a Wilson ``recall_interval`` for each class with
    rows (:func:`wilson_interval`) and, when ``learnable`` names classes (those every
    scoring fold trained on, :func:`learnable_classes`), ``learnable``: their balanced accuracy
    and its interval.
    """
    total = np.sum([np.asarray(c, dtype=np.int64) for c in confusions], axis=0)
    true, pred = np.nonzero(total)
    counts = total[true, pred]
    y, p = np.repeat(true, counts), np.repeat(pred, counts)
    metrics = compute_metrics(np.eye(len(classes))[p], y, classes)
    present = total.sum(axis=1) > 0
    rates = total[present] / total[present].sum(axis=1, keepdims=True)  # (present classes, C)
    recall = rates[np.arange(len(rates)), np.flatnonzero(present)]
    column = rates[:, present].sum(axis=0)
    precision = np.divide(recall, column, out=np.zeros_like(recall), where=column > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall),
                   where=precision + recall > 0)
    metrics["balanced"] = {"accuracy": float(recall.mean()), "macro_precision": float(precision.mean()),
                           "macro_f1": float(f1.mean())}
    add_intervals(metrics)
    if learnable is not None:
        rows = [classes.index(c) for c in learnable]
        metrics["learnable"] = {
            "classes": list(learnable),
            "balanced_accuracy": float(confusion_scores(total, rows)["balanced_accuracy"]),
            "interval": bootstrap_intervals(total, rows=rows)["balanced_accuracy"],
        }
    return metrics


def add_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """Give a :func:`compute_metrics` dict its ``intervals`` (:func:`bootstrap_intervals`) and each
    class with rows its Wilson ``recall_interval`` (:func:`wilson_interval`); returns the dict."""
    confusion = metrics["confusion"]
    metrics["intervals"] = bootstrap_intervals(confusion)
    for i, c in enumerate(metrics["per_class"]):
        if c["support"]:
            c["recall_interval"] = wilson_interval(int(confusion[i][i]), c["support"])
    return metrics


def learnable_classes(classes: Sequence[str], scored: Sequence[int],
                      untrained: Iterable[Iterable[str]]) -> list[str] | None:
    """The scored classes (``scored[i]`` tracks of ``classes[i]``) that no fold scored without
    training on them, given each fold's ``untrained`` classes; None when no fold lacked any."""
    missing = {c for fold in untrained for c in fold}
    return [c for c, n in zip(classes, scored) if n > 0 and c not in missing] if missing else None


def confusion_scores(confusions: np.ndarray, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro scores of confusion matrices, vectorised.

    ``confusions`` is ``(..., C, C)`` (rows = true class); each score has the leading shape.
    Macro averages follow :func:`compute_metrics` (classes present in the true labels or the
    predictions). ``rows`` restricts ``balanced_accuracy`` to those true classes (the others
    are left as they are).
    """
    conf = np.asarray(confusions, dtype=np.float64)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    support, predicted = conf.sum(-1), conf.sum(-2)
    present = (support > 0) | (predicted > 0)
    recall = np.divide(diag, support, out=np.zeros_like(diag), where=support > 0)
    precision = np.divide(diag, predicted, out=np.zeros_like(diag), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(diag),
                   where=precision + recall > 0)
    scored = support > 0
    if rows is not None:
        only = np.zeros(conf.shape[-1], dtype=bool)
        only[list(rows)] = True
        scored = scored & only

    def mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return (values * where).sum(-1) / np.maximum(where.sum(-1), 1)

    return {"accuracy": diag.sum(-1) / np.maximum(support.sum(-1), 1),
            "balanced_accuracy": mean(recall, scored), "macro_precision": mean(precision, present),
            "macro_recall": mean(recall, present), "macro_f1": mean(f1, present)}


def bootstrap_intervals(confusion: Sequence[Sequence[int]], rows: Sequence[int] | None = None,
                        samples: int = BOOTSTRAP_SAMPLES, level: float = INTERVAL_LEVEL,
                        seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap intervals of :data:`INTERVAL_METRICS` from a confusion matrix.

    The scored tracks are resampled with replacement within each true class (each row of the
    confusion matrix drawn from a multinomial with its own count and proportions), so the class
    counts stay as the evaluation fixed them. The intervals say how much the figures could move
    with other tracks of the same classes; they do not widen for tracks that share an artist
    (GTZAN's parts hold several songs per artist, whose errors go together), so read them as
    lower bounds on the uncertainty. Deterministic for a given ``seed``.

    Returns
    -------
    dict
        ``{"level", "samples", "method", <metric>: [low, high], ...}``.
    """
    conf = np.asarray(confusion, dtype=np.int64)
    rng = np.random.default_rng(seed)
    draws = np.zeros((samples, *conf.shape), dtype=np.int64)
    for c, n in enumerate(conf.sum(axis=1)):
        if n > 0:
            draws[:, c, :] = rng.multinomial(n, conf[c] / n, size=samples)
    scores = confusion_scores(draws, rows)
    tail = (1 - level) / 2
    return {"level": level, "samples": samples, "method": "percentile bootstrap, tracks resampled within each class",
            **{k: [float(v) for v in np.quantile(scores[k], [tail, 1 - tail])] for k in INTERVAL_METRICS}}


def group_bootstrap_intervals(y: np.ndarray, pred: np.ndarray, groups: Sequence[str], n_classes: int,
                              rows: Sequence[int] | None = None, samples: int = BOOTSTRAP_SAMPLES,
                              level: float = INTERVAL_LEVEL, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap intervals of :data:`INTERVAL_METRICS` that resample whole groups.

    A cluster bootstrap: each resample draws the groups (e.g. artists) with replacement, within
    each class's groups (a group counts for the class most of its tracks have), and takes every
    track of each drawn group, so songs of one artist that err together move together. With
    several tracks per group these intervals are wider than :func:`bootstrap_intervals`' and the
    honest ones; a class with a single group keeps it in every resample (no spread from it).

    Parameters
    ----------
    y, pred : np.ndarray
        ``(N,)`` true and predicted classes of the scored tracks.
    groups : sequence of str
        ``(N,)`` each track's group.
    n_classes : int
        Number of classes ``C``.
    rows : sequence of int, optional
        Restrict ``balanced_accuracy`` to these true classes (as :func:`confusion_scores`).

    Returns
    -------
    dict
        ``{"level", "samples", "method", "groups" (how many), <metric>: [low, high], ...}``.
    """
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    names, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    if not len(y) == len(pred) == len(group_index) or not len(y):
        raise MelgenreError(f"group bootstrap: need equal, non-empty rows, got {len(y)}, {len(pred)}, {len(group_index)}")
    cells = np.zeros((len(names), n_classes * n_classes))  # each group's confusion, flattened
    np.add.at(cells, (group_index, y * n_classes + pred), 1)
    major = cells.reshape(len(names), n_classes, n_classes).sum(-1).argmax(-1)
    rng = np.random.default_rng(seed)
    counts = np.zeros((samples, len(names)))
    for c in range(n_classes):
        members = np.flatnonzero(major == c)
        if len(members):
            drawn = np.zeros((samples, len(members)))
            np.add.at(drawn, (np.arange(samples)[:, None], rng.integers(0, len(members), size=(samples, len(members)))), 1)
            counts[:, members] = drawn
    scores = confusion_scores((counts @ cells).reshape(samples, n_classes, n_classes), rows)
    tail = (1 - level) / 2
    return {"level": level, "samples": samples, "groups": len(names),
            "method": "percentile bootstrap, whole groups resampled within each class",
            **{k: [float(v) for v in np.quantile(scores[k], [tail, 1 - tail])] for k in INTERVAL_METRICS}}


def write_track_predictions(path: str | Path, tracks: Sequence[str], probs: np.ndarray, labels: np.ndarray,
                            classes: Sequence[str]) -> Path:
    """Write one row per track (``track``, ``label``, ``predicted``, then each class's probability) as CSV, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track", "label", "predicted", *classes])
        for t, p, y in zip(tracks, np.asarray(probs), np.asarray(labels)):
            w.writerow([t, classes[int(y)], classes[int(np.argmax(p))], *(f"{v:.6g}" for v in p)])
    return path


def read_track_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """:func:`write_track_predictions`' file as ``(track ids, probs (T, C), labels (T,), classes)``."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    classes = rows[0][3:]
    body = rows[1:]
    return (np.array([r[0] for r in body], dtype=object), np.array([[float(v) for v in r[3:]] for r in body]).reshape(len(body), len(classes)),
            np.array([classes.index(r[1]) for r in body], dtype=np.int64), classes)


def paired_bootstrap(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                     learnable: Sequence[str] | None = None, classes: Sequence[str] | None = None,
                     samples: int = BOOTSTRAP_SAMPLES, level: float = INTERVAL_LEVEL, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of the difference between two classifiers' predictions of the same tracks.

    Tracks are resampled with replacement within each true class, as in
    :func:`bootstrap_intervals`, and each resample scores both classifiers on the same tracks, so
    what the two share (easy and hard tracks) cancels out of the difference.

    Parameters
    ----------
    y, pred_a, pred_b : np.ndarray
        ``(N,)`` true classes and the two classifiers' predicted classes.
    n_classes : int
        Number of classes ``C``.
    learnable, classes : sequences of str, optional
        With both, also ``balanced_accuracy_learnable``: the balanced accuracy over the
        ``learnable`` classes only (:func:`learnable_classes`).

    Returns
    -------
    dict
        ``n``, ``level``, ``samples``, ``method``; ``metrics``: per metric ``{"a", "b",
        "difference" (a - b), "interval" (of the difference), "a_better" (share of resamples in
        which a scores higher)}``; ``discordant``: tracks only a gets right (``a_only``) and only b
        (``b_only``).
    """
    y, pred_a, pred_b = (np.asarray(v, dtype=np.int64) for v in (y, pred_a, pred_b))
    if not len(y) == len(pred_a) == len(pred_b) or not len(y):
        raise MelgenreError(f"paired bootstrap: need equal, non-empty rows, got {len(y)}, {len(pred_a)}, {len(pred_b)}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((samples, len(y)))
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        counts[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=samples)
    rows = [list(classes).index(c) for c in learnable] if learnable is not None and classes is not None else None

    def confusions(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the observed one, and one per resample
        cells = np.zeros((len(y), n_classes * n_classes))
        cells[np.arange(len(y)), y * n_classes + pred] = 1
        return cells.sum(0).reshape(n_classes, n_classes), (counts @ cells).reshape(samples, n_classes, n_classes)

    def scores(conf: np.ndarray) -> dict[str, np.ndarray]:
        out = confusion_scores(conf)
        if rows is not None:
            out["balanced_accuracy_learnable"] = confusion_scores(conf, rows)["balanced_accuracy"]
        return out

    (point_a, draws_a), (point_b, draws_b) = ((scores(p), scores(d)) for p, d in map(confusions, (pred_a, pred_b)))
    point_a, point_b = ({k: float(v) for k, v in p.items()} for p in (point_a, point_b))
    tail = (1 - level) / 2
    metrics = {}
    for key in point_a:
        diff = draws_a[key] - draws_b[key]
        metrics[key] = {"a": point_a[key], "b": point_b[key], "difference": point_a[key] - point_b[key],
                        "interval": [float(v) for v in np.quantile(diff, [tail, 1 - tail])],
                        "a_better": float(np.mean(diff > 0))}
    right_a, right_b = pred_a == y, pred_b == y
    return {"n": len(y), "level": level, "samples": samples,
            "method": "paired percentile bootstrap, tracks resampled within each class",
            "metrics": metrics, "learnable": list(learnable) if rows is not None else None,
            "discordant": {"a_only": int(np.sum(right_a & ~right_b)), "b_only": int(np.sum(right_b & ~right_a))}}


def wilson_interval(successes: int, n: int, level: float = INTERVAL_LEVEL) -> list[float]:
    """Wilson score interval of a proportion (e.g. one genre's recall: ``successes`` right of ``n``);
    sound for the small counts of a single genre, where the bootstrap collapses to a point at 0 or 1."""
    from scipy.stats import norm

    if n <= 0:
        raise MelgenreError(f"an interval of a proportion needs at least one trial, got {n}")
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]


def with_interval(value: float, interval: Sequence[float] | None) -> str:
    """``0.718 [0.652, 0.781]``: a figure with its interval, when there is one."""
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


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
        Rows = true class, columns = predicted class (as in :func:`compute_metrics`).
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
        A :func:`compute_metrics` dict.
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


def per_class_table(metrics: Mapping[str, Any]) -> str:
    """A markdown table ``class | precision | recall | recall, 95 % | F1 | support`` with 3 decimals
    (the recall's Wilson interval, :func:`wilson_interval`; blank for a class without rows).

    Parameters
    ----------
    metrics : mapping
        A :func:`compute_metrics` dict.

    Returns
    -------
    str
        The table, one line per class, without a trailing newline.
    """
    def interval(row: Mapping[str, Any]) -> str:
        if not row["support"]:
            return ""
        low, high = wilson_interval(round(row["recall"] * row["support"]), row["support"])
        return f"{low:.3f}-{high:.3f}"

    return _markdown_table(
        ("class", "precision", "recall", "recall, 95 %", "F1", "support"),
        ([row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", interval(row), f"{row['f1']:.3f}",
          str(row["support"])] for row in metrics["per_class"]),
    )


def write_report(
    run_dir: str | Path, title: str, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
    extra_lines: Iterable[str] = (),
) -> Path:
    """Write ``run_dir/report.md``: summary table, per-class table, plot links and config.

    Parameters
    ----------
    run_dir : path
        The run folder; PNGs already there (``history.png``, ``class_distribution.png``,
        ``confusion_*.png``, ``per_class_*.png``) are linked.
    title : str
        The report's heading.
    config : mapping
        The resolved configuration, written as a YAML block (paths become strings).
    results : mapping
        Split name (``"val"``, ``"test"``) -> :func:`evaluate_predictions` dict.
    extra_lines : iterable of str
        Markdown lines added after the summary table (notes, timings).

    Returns
    -------
    Path
        The report's path.
    """
    run_dir = Path(run_dir)
    lines = [f"# {title}", "", "## Summary", ""]
    lines.append(_markdown_table(
        ("split", "level", "n", *(label for _, label in SUMMARY_METRICS)),
        ([split, level, str(levels[level]["n"]), *(f"{levels[level][key]:.3f}" for key, _ in SUMMARY_METRICS)]
         for split, levels in results.items() for level in LEVELS if level in levels),
    ))
    lines += ["", ("Macro averages are over the classes present in the true labels or the predictions "
                   '(scikit-learn\'s `average="macro", zero_division=0`); macro precision is the report\'s "mAP".')]
    for split, levels in results.items():
        ci = levels["track"].get("intervals")
        if ci:
            lines += ["", f"{ci['level']:.0%} bootstrap intervals, {split}, track level ({ci['method']}; "
                      f"{levels['track']['n']} tracks): "
                      + ", ".join(f"{label} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" for key, label in SUMMARY_METRICS)
                      + "."]
    extra = list(extra_lines)
    if extra:
        lines += ["", *extra]
    if results:
        split = "test" if "test" in results else next(iter(results))
        lines += ["", f"## Per class ({split}, track level)", "", per_class_table(results[split]["track"])]
    plots = [p for p in (run_dir / "history.png", run_dir / "class_distribution.png") if p.exists()]
    plots += sorted(run_dir.glob("confusion_*.png")) + sorted(run_dir.glob("per_class_*.png"))
    if plots:
        lines += ["", "## Plots"] + [line for p in plots for line in ("", f"![{p.stem}]({p.name})")]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    out = run_dir / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return out


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
        Split name -> :func:`evaluate_predictions` dict; for each split,
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


def training_tracks(card: Mapping[str, Any]) -> set[str]:
    """The file stems (``blues.00012``) of the tracks a model package trained on, from its card's
    ``training.data.tracks`` (empty for cards written before they listed them)."""
    tracks = ((card.get("training") or {}).get("data") or {}).get("tracks") or []
    return {Path(t).name for t in tracks}


def score_corpus(root: str | Path, out_dir: str | Path, model: str | Path | None = None, backend: str = "auto",
                 include_training: bool = False, workers: int | None = None, progress: bool = True,
                 groups: str | Path | None = None) -> dict[str, Any]:
    """Score a model on a labelled corpus of audio files: the class folders are the truth.

    Every file is predicted by :func:`melgenre.library.predict_library` into
    ``out_dir/predictions.sqlite`` (a rerun resumes it and redoes only new or changed files),
    then scored at track level with :func:`compute_metrics` and :func:`bootstrap_intervals`;
    ``out_dir`` also gets ``report.md``, ``scores.json`` and the confusion and per-class plots.

    Parameters
    ----------
    root : path
        ``<class>/<file>`` folders (or GTZAN's ``genres/``), every class one of the model's.
    out_dir : path
        Folder for the outputs (created).
    model : path, optional
        For :func:`melgenre.predict.load_model` (default: the installed default model).
    backend, workers, progress
        As for :func:`melgenre.library.predict_library`.
    include_training : bool
        Score files whose name (``blues.00012``) is one the model trained on (its card's
        ``training.data.tracks``) too, which flatters the figures. Default: leave them out.
    groups : path, optional
        A grouping file of ``track,group`` (or ``artist``) rows (:func:`melgenre.data.read_grouping`):
        ``track`` also gets ``group_intervals`` (:func:`group_bootstrap_intervals`), which resample
        whole groups; files the file does not name count as groups of their own.

    Returns
    -------
    dict
        - ``model_id``, ``root``, ``n`` (files scored);
        - ``training_files`` (files named like training tracks) and ``excluded`` (those left out);
        - ``failed``: ``[path, reason]`` of the files that could not be predicted;
        - ``track``: :func:`compute_metrics` with ``intervals`` and a Wilson ``recall_interval``
          per scored class;
        - ``flags``: per flag, how many scored files carry it and how many of those are right;
        - ``files``: each scored file's ``path``, true ``genre``, predicted ``label`` and
          ``flags`` (what :func:`compare_scores` pairs).

    Raises
    ------
    MelgenreError
        A class folder that is not one of the model's genres, or nothing left to score.
    """
    from melgenre.datasets import discover
    from melgenre.library import predict_library, result_rows
    from melgenre.predict import load_model

    genre_model = load_model(model)
    corpus = discover(root)
    unknown = [c for c in corpus.classes if c not in genre_model.classes]
    if unknown:
        raise MelgenreError(f"{root}: class folder(s) {', '.join(unknown)} are not genres of model "
                            f"{genre_model.model_id} ({', '.join(genre_model.classes)})")
    known = training_tracks(genre_model.card or {})
    seen = sum(Path(t.track_id).name in known for t in corpus.tracks)  # files named like training tracks
    truth = {str(t.path.resolve()): genre_model.classes.index(corpus.classes[t.label]) for t in corpus.tracks
             if include_training or Path(t.track_id).name not in known}
    if not truth:
        raise MelgenreError(f"{root}: every file is one the model trained on; nothing to score "
                            "(--include-training scores them anyway, optimistically)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predict_library(sorted(truth), out_dir / "predictions.sqlite", model=model, backend=backend, workers=workers,
                    progress=progress)
    rows = [r for r in result_rows(out_dir / "predictions.sqlite") if r["path"] in truth]
    failed = [[r["path"], r["error"]] for r in rows if r["error"] is not None]
    done = [r for r in rows if r["error"] is None]
    if not done:
        raise MelgenreError(f"{root}: no file could be predicted ({len(failed)} failed)")
    classes = list(genre_model.classes)
    probs = np.array([[r["probabilities"][c] for c in classes] for r in done])
    y = np.array([truth[r["path"]] for r in done])
    pred = probs.argmax(1)
    track = add_intervals(compute_metrics(probs, y, classes))
    if groups is not None:
        from melgenre.data import group_of, read_grouping

        ids = [f"{Path(r['path']).parent.name}/{Path(r['path']).stem}" for r in done]
        of = group_of(ids, read_grouping(groups))
        track["group_intervals"] = group_bootstrap_intervals(
            y, pred, [str(g) if g is not None else f"file:{i}" for i, g in enumerate(of)], len(classes))
    right = pred == y
    flags = {}
    for flag in sorted({f for r in done for f in r["flags"]}):
        has = np.array([flag in r["flags"] for r in done])
        flags[flag] = {"files": int(has.sum()), "right": int(right[has].sum())}
    result = {"model_id": genre_model.model_id, "root": str(root), "n": len(done), "training_files": seen,
              "excluded": 0 if include_training else seen, "failed": failed, "track": track, "flags": flags,
              "files": [{"path": r["path"], "genre": classes[truth[r["path"]]], "label": r["label"], "flags": r["flags"]}
                        for r in done]}
    with atomic_path(out_dir / "scores.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    save_all_plots(out_dir, {"corpus": {"track": track}}, classes)
    notes = [f"Model {genre_model.model_id} on {len(done)} files of {root} (class folders as the truth): balanced "
             f"accuracy (mean recall over the genres present) "
             f"{with_interval(track['balanced_accuracy'], track['intervals']['balanced_accuracy'])}."]
    if "group_intervals" in track:
        gi = track["group_intervals"]
        notes.append(f"Resampling whole groups of {Path(groups).name} ({gi['groups']} groups; a group's songs move "
                     f"together): accuracy {with_interval(track['accuracy'], gi['accuracy'])}, balanced accuracy "
                     f"{with_interval(track['balanced_accuracy'], gi['balanced_accuracy'])}.")
    if seen:
        notes.append(f"{seen} file(s) are named like tracks the model trained on: "
                     + ("scored too (--include-training), so the figures are optimistic." if include_training
                        else "left out."))
    if failed:
        notes.append(f"Not scored: {len(failed)} file(s) that could not be predicted (see scores.json).")
    notes += [f"Flag `{flag}`: {f['files']} file(s), right on {f['right']}." for flag, f in flags.items()]
    write_report(out_dir, f"{genre_model.model_id} on {Path(root).name}", {"model": str(model or "default"),
                 "root": str(root)}, {"corpus": {"track": track}}, extra_lines=notes)
    return result


def compare_scores(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any]:
    """Paired comparison of two :func:`score_corpus` results on the files both scored.

    ``dir_a`` and ``dir_b`` are ``score`` output folders (their ``scores.json``), e.g. two models on
    one labelled folder. Returns :func:`paired_bootstrap`'s result (differences are A - B) with
    the two ``model_ids`` and the number of ``common`` files.

    Raises
    ------
    MelgenreError
        A folder without ``scores.json``, models of other genres, or no file scored by both.
    """
    results = []
    for d in (Path(dir_a), Path(dir_b)):
        path = d / "scores.json"
        if not path.is_file():
            raise MelgenreError(f"{d}: no scores.json (run melgenre score --out {d} first)")
        result = json.loads(path.read_text())
        if "files" not in result:
            raise MelgenreError(f"{path}: lists no files (written by an older melgenre; run melgenre score again)")
        results.append(result)
    classes = [c["class"] for c in results[0]["track"]["per_class"]]
    if sorted(classes) != sorted(c["class"] for c in results[1]["track"]["per_class"]):
        raise MelgenreError(f"{dir_a} and {dir_b}: the two models predict different genres")
    a, b = ({f["path"]: f for f in r["files"]} for r in results)
    common = sorted(set(a) & set(b))
    if not common:
        raise MelgenreError(f"{dir_a} and {dir_b}: no file was scored by both")
    mismatch = [p for p in common if a[p]["genre"] != b[p]["genre"]]
    if mismatch:
        raise MelgenreError(f"{mismatch[0]}: true genre {a[mismatch[0]]['genre']!r} in {dir_a}, "
                            f"{b[mismatch[0]]['genre']!r} in {dir_b}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[a[p]["genre"]] for p in common])
    pred_a, pred_b = (np.array([index[side[p]["label"]] for p in common]) for side in (a, b))
    return {"model_ids": [r["model_id"] for r in results], "common": len(common),
            **paired_bootstrap(y, pred_a, pred_b, len(classes))}


def _check_rows(probs: np.ndarray, *columns: np.ndarray) -> None:
    """Raise unless ``probs`` is a non-empty ``(N, C)`` array and every column has length N."""
    if probs.ndim != 2 or len(probs) == 0:
        raise MelgenreError(f"probabilities must be a non-empty (N, C) array, got shape {probs.shape}")
    for column in columns:
        if column.shape != (len(probs),):
            raise MelgenreError(f"expected {len(probs)} rows, got an array of shape {column.shape}")


def _class_axis(ax: plt.Axes, labels: Sequence[str]) -> None:
    """Class names under grouped bars, with a light horizontal grid."""
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center")
    ax.grid(axis="y", alpha=0.3)


def _save(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``out`` atomically and close it."""
    fig.tight_layout()
    return save_png(fig, out)


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table from a header and string cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, for ``yaml.safe_dump``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# -- runs table: every run beside the report's published numbers (`melgenre table`) ------------

RUNS_TABLE_COLUMNS: dict[str, str] = {  # row-dict key (and CSV column) -> markdown header
    "row": "row",
    "run": "run",
    "status": "status",
    "model": "model",
    "dataset": "dataset",
    "split": "split",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "train_seconds": "train s",
    "val_accuracy": "val acc",
    "val_macro_precision": "val macro P",
    "test_accuracy": "test acc",
    "test_accuracy_interval": "test acc, 95 %",
    "test_macro_precision": "test macro P",
    "ref_val_macro_precision": "report val macro P",
    "ref_test_macro_precision": "report test macro P",
    "ref_test_accuracy": "report test acc",
}

#: Printed under the table when it lists YOLOv8 runs: how their start differs from the report's.
PRETRAINING_NOTE = (
    "Note: the report's YOLOv8 rows start from keras_cv's COCO-pretrained weights (used as initialisation; "
    "section 4 of the report). melgenre cannot download them, so its YOLOv8 runs train from scratch and "
    "are not expected to reach the published figures at the same budget. The closest analogue here is "
    "music pretraining: the shipped musicnn models (docs/results.md). Runs on the dev clips are not the "
    "report's 1000-track data; `artist-disjoint` splits keep each artist on one side.")

#: Table 2 row whose per-class precision (Table 6) and confusion matrix (Figure 4) are published.
REPORT_DETAIL_ROW = 18


def report_numbers() -> dict[str, Any]:
    """The reproduced report's published numbers, from ``resources/report_table2.yaml``.

    Returns
    -------
    dict
        ``classes`` (the 10 genres in Figure 4's order), ``rows`` (Table 2: ``{row: {text,
        val_macro_precision, test_macro_precision, test_accuracy}}``, row an int 1-20) and
        ``row18`` (``per_class_precision`` {class: value}, Table 6; ``confusion``, Figure 4,
        rows = true, columns = predicted). See the file's header for how they were transcribed.
    """
    from importlib import resources

    text = resources.files("melgenre.resources").joinpath("report_table2.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def runs_table(runs_dir: str | Path, level: str = "track") -> tuple[str, list[dict[str, Any]]]:
    """All runs under ``runs_dir`` side by side with the report's numbers, as markdown and as rows.

    A run is a folder ``runs_dir/<name>/`` holding ``config.yaml`` or ``metrics.json`` (as
    written by :func:`melgenre.train.fit`); a folder holding neither is searched one level
    deeper, which finds ``melgenre cv``'s ``<name>/fold<k>/`` and ``<name>/final/`` runs. A run
    without ``metrics.json`` is listed as ``unfinished`` with empty metrics.

    Parameters
    ----------
    runs_dir : path
        Folder of run directories.
    level : {"track", "chunk"}
        Which metrics of ``metrics.json``'s ``results.{val,test}`` to show.

    Returns
    -------
    markdown : str
        A markdown table (scores with 3 decimals, empty cells for missing values).
    rows : list of dict
        One dict per run, keys as :data:`RUNS_TABLE_COLUMNS`: ``row`` (``reference.row`` of the
        config), ``run`` (path under ``runs_dir``), ``status`` (finished / unfinished /
        unreadable), ``model`` (name plus scale and head if set), ``dataset``
        (``reference.dataset``, else ``"?"``), ``split`` (kind and train/val/test track counts
        from ``splits.json``, else the fractions), ``epochs``, ``best_epoch`` (0-based, as in
        ``metrics.json``), ``train_seconds`` (whole seconds), ``{val,test}_{accuracy,
        macro_precision}`` (rounded to 3 decimals; for ``melgenre cv``'s ``<name>/final`` run,
        which has no validation part, the val scores are the fold means from ``<name>/cv.json``),
        ``test_accuracy_interval`` (track level: the Wilson interval of the test accuracy over the
        test tracks, ``"low-high"``; the report's figures rest on 100-200 test tracks, the dev clips'
        on a few dozen)
        and the report's three figures for the row, ``ref_val_macro_precision``,
        ``ref_test_macro_precision``, ``ref_test_accuracy``, from :func:`report_numbers` (by
        ``reference.row``); missing values are ``None``. Sorted by reference row (runs without
        one last), then run.

        When a run of row 18 has finished, the markdown continues with, per such run, its
        per-class test precision beside the report's Table 6 and its test confusion matrix
        beside the report's Figure 4.

    Raises
    ------
    MelgenreError
        If ``runs_dir`` is not a folder or ``level`` is unknown.
    """
    runs_dir = Path(runs_dir)
    if level not in ("track", "chunk"):
        raise MelgenreError(f"level must be 'track' or 'chunk', got {level!r}")
    if not runs_dir.is_dir():
        raise MelgenreError(f"{runs_dir}: no such folder of runs")
    rows = [_run_row(run, runs_dir, level) for run in _run_dirs(runs_dir)]
    rows.sort(key=lambda r: (not isinstance(r["row"], int), r["row"] if isinstance(r["row"], int) else 0, r["run"]))
    header = [label + (f" ({level})" if key.startswith(("val_", "test_")) else "")
              for key, label in RUNS_TABLE_COLUMNS.items()]
    cells = ([_table_cell(row[key]).replace("|", "\\|") for key in RUNS_TABLE_COLUMNS] for row in rows)
    markdown = _markdown_table(header, cells)
    notes = [PRETRAINING_NOTE] if any(str(r["model"]).startswith("yolov8") for r in rows) else []
    details = [_detail_section(runs_dir / row["run"], row["run"], level) for row in rows
               if row["row"] == REPORT_DETAIL_ROW and row["status"] == "finished"]
    return "\n\n".join([markdown, *notes, *details]), rows


def _detail_section(run_dir: Path, run: str, level: str) -> str:
    """Row 18: our per-class test precision beside Table 6, our confusion matrix beside Figure 4."""

    published = report_numbers()
    classes, ref = published["classes"], published["row18"]
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        test = metrics["results"]["test"][level]
    except (OSError, ValueError, KeyError, TypeError):
        metrics, test = {}, {}
    ours = {str(c.get("class")).lower(): c.get("precision") for c in test.get("per_class") or []
            if isinstance(c, Mapping)}
    rows = [[name, _table_cell(_round3(ours.get(name))), f"{ref['per_class_precision'][name]:.3f}"]
            for name in classes]
    lines = [f"### {run}: per-class test precision ({level}) beside the report's Table 6", "",
             _markdown_table(["class", "ours", "report (Table 6)"], rows), ""]
    confusion = test.get("confusion")
    our_classes = [str(c).lower() for c in metrics.get("classes") or []]
    lines += [f"### {run}: test confusion matrix ({level}), rows = true, columns = predicted; "
              "ours / report (Figure 4)", ""]
    if confusion and sorted(our_classes) == sorted(classes):
        index = [our_classes.index(name) for name in classes]  # ours in the report's class order
        cell = lambda t, p: f"{confusion[index[t]][index[p]]} / {ref['confusion'][t][p]}"  # noqa: E731
    else:  # no matrix of ours (or other classes): the report's alone
        cell = lambda t, p: f" / {ref['confusion'][t][p]}"  # noqa: E731
    lines.append(_markdown_table(["true \\ predicted", *classes],
                                 ([name, *(cell(t, p) for p in range(len(classes)))]
                                  for t, name in enumerate(classes))))
    return "\n".join(lines)


def write_runs_table(runs_dir: str | Path, out_md: str | Path, out_csv: str | Path,
                     level: str = "track") -> list[dict[str, Any]]:
    """Write :func:`runs_table` as markdown (``out_md``) and CSV (``out_csv``, columns
    :data:`RUNS_TABLE_COLUMNS`, cells as in the markdown), each atomically; return the rows."""
    markdown, rows = runs_table(runs_dir, level)
    out_md, out_csv = Path(out_md), Path(out_csv)
    for out in (out_md, out_csv):
        out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_md) as tmp:
        tmp.write_text(f"# Runs in {runs_dir} ({level} level)\n\n{markdown}\n")
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUNS_TABLE_COLUMNS)
        writer.writerows([_table_cell(row[key]) for key in RUNS_TABLE_COLUMNS] for row in rows)
    return rows


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "metrics.json").is_file()


def _run_dirs(runs_dir: Path) -> list[Path]:
    """``runs_dir/*`` runs, and ``runs_dir/*/*`` runs under folders that are not runs themselves."""
    found = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_run(folder):
            found.append(folder)
        else:
            found += [p for p in sorted(folder.iterdir()) if p.is_dir() and _is_run(p)]
    return found


def _run_row(run_dir: Path, runs_dir: Path, level: str) -> dict[str, Any]:
    """One row of :func:`runs_table`."""

    def read(name: str, parse) -> tuple[Any, bool]:  # (content or None, readable)
        path = run_dir / name
        if not path.is_file():
            return None, True
        try:
            return parse(path.read_text()), True
        except (OSError, ValueError, yaml.YAMLError):
            return None, False

    config, config_ok = read("config.yaml", yaml.safe_load)
    metrics, metrics_ok = read("metrics.json", json.loads)
    splits, _ = read("splits.json", json.loads)
    config = config if isinstance(config, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    ref = config.get("reference") or {}
    results = metrics.get("results") or {}
    status = "unreadable" if not (config_ok and metrics_ok) else "finished" if metrics else "unfinished"
    train_seconds = metrics.get("train_seconds")
    row = {
        "row": ref.get("row"),
        "run": run_dir.relative_to(runs_dir).as_posix(),
        "status": status,
        "model": _model_label(config.get("model") or {}),
        "dataset": ref.get("dataset") or "?",
        "split": _split_label(config.get("data") or {}, splits),
        "epochs": metrics.get("epochs"),
        "best_epoch": metrics.get("best_epoch"),
        "train_seconds": None if train_seconds is None else int(round(train_seconds)),
    }
    cv_val = _cv_fold_means(run_dir, runs_dir, level) if "val" not in results else {}
    for split in ("val", "test"):
        scores = (results.get(split) or {}).get(level) or {}
        for key in ("accuracy", "macro_precision"):
            value = scores.get(key) if split == "test" or "val" in results else cv_val.get(key)
            row[f"{split}_{key}"] = _round3(value)
    test = (results.get("test") or {}).get(level) or {}
    row["test_accuracy_interval"] = None  # tracks are independent draws, a track-level run's chunks are not
    if level == "track" and test.get("n") and test.get("accuracy") is not None:
        low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
        row["test_accuracy_interval"] = f"{low:.3f}-{high:.3f}"
    published = report_numbers()["rows"].get(row["row"]) or {} if isinstance(row["row"], int) else {}
    for key in ("val_macro_precision", "test_macro_precision", "test_accuracy"):
        row[f"ref_{key}"] = _round3(published.get(key))
    return row


def _cv_fold_means(run_dir: Path, runs_dir: Path, level: str) -> dict[str, Any]:
    """``{accuracy, macro_precision}``: fold means of ``melgenre cv``'s ``cv.json`` beside a
    ``<name>/final`` run (which has no validation part); empty for any other run."""

    cv_json = run_dir.parent / "cv.json"
    if run_dir.parent == runs_dir or not cv_json.is_file():
        return {}
    try:
        val = json.loads(cv_json.read_text())["val"][level]
        return {key: val[key]["mean"] for key in ("accuracy", "macro_precision")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _model_label(model: Mapping[str, Any]) -> str:
    """``yolov8_cls (n, gap)``: the registry name plus scale and head when the config sets them."""
    extras = [str(model[k]) for k in ("scale", "head") if model.get(k) is not None]
    name = str(model.get("name", "?"))
    return f"{name} ({', '.join(extras)})" if extras else name


def _split_label(data: Mapping[str, Any], splits: Mapping[str, Any] | None) -> str:
    """``stratified 700/100/200`` from the run's track counts, else from its fractions; a fold of
    ``cv --groups`` reads ``artist-disjoint (fault_filtered groups) 131/71/0``."""
    groups = data.get("groups")
    if not groups:
        kind = str(data.get("split", "?"))
    elif groups == "fault_filtered":
        kind = "artist-disjoint (fault_filtered groups)"
    else:  # a grouping file of melgenre.data.read_grouping
        kind = f"group-disjoint ({Path(groups).name} groups)"
    if isinstance(splits, Mapping):
        return f"{kind} " + "/".join(str(len(splits.get(s) or [])) for s in ("train", "val", "test"))
    fractions = data.get("fractions")
    return f"{kind} " + "/".join(f"{f:g}" for f in fractions) if fractions else kind


def _round3(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _table_cell(value: Any) -> str:
    """3 decimals for scores, nothing for missing values."""
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
