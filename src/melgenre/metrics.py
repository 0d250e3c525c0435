"""Metrics of a classifier's predictions: pure functions on arrays, no plots, no files, no models.

A model gives class probabilities per row; a row is a whole track (presets v1, v2) or one
chunk of a track (preset fast). Metrics are computed at chunk level (rows as they are) and at
track level (chunk probabilities averaged per track), in NumPy (the same numbers as torchmetrics'
functional API and scikit-learn, tested; prediction and `melgenre score` never import torch);
their uncertainty as bootstrap intervals (per track, per group of tracks, or paired between two
classifiers) and Wilson intervals of single proportions.

Macro averages follow scikit-learn's ``average="macro", zero_division=0``: they are taken
over the classes that occur in the true labels or in the predictions. A class that occurs in
neither has no precision, recall or F1 at all and is left out of the average (it is still
listed per class, with zeros and support 0); a class that occurs in only one of them counts
with its (possibly zero) score. The report's "mAP" (Cheng & Kuo) is ``macro_precision``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from melgenre.errors import MelgenreError

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
    pred = np.argmax(probs, axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y.astype(np.int64), pred), 1)
    hits, support, predicted = np.diag(confusion).astype(np.float64), confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # an undefined score counts 0 (zero_division=0)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = {"precision": precision, "recall": recall, "f1": f1}
    present = (support > 0) | (predicted > 0)
    return {
        "n": len(y),
        "accuracy": float(hits.sum() / len(y)),
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
    if n <= 0:
        raise MelgenreError(f"an interval of a proportion needs at least one trial, got {n}")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]


def _check_rows(probs: np.ndarray, *columns: np.ndarray) -> None:
    """Raise unless ``probs`` is a non-empty ``(N, C)`` array and every column has length N."""
    if probs.ndim != 2 or len(probs) == 0:
        raise MelgenreError(f"probabilities must be a non-empty (N, C) array, got shape {probs.shape}")
    for column in columns:
        if column.shape != (len(probs),):
            raise MelgenreError(f"expected {len(probs)} rows, got an array of shape {column.shape}")
