"""Genre timeline of a clip: smoothed per-window probabilities and the segments they give.

A :class:`~melgenre.inference.Prediction` holds the probabilities of every window; this module turns
them into "where in the song the genre changes":

1. **Smoothing** (:func:`smooth`): a centred moving average over :data:`SMOOTH_WINDOWS` (3)
   consecutive windows (fewer at the ends). Light on purpose: a single odd window is damped, a
   real change moves by at most half a window.
2. **Segments** (:func:`segments`): runs of consecutive windows with the same most probable
   (smoothed) genre. Each window owns the time from the midpoint between its centre and the
   previous window's centre to the midpoint with the next one (the first from 0, the last to the
   clip's end), so segments tile ``[0, duration]``. A run shorter than ``min_segment`` seconds is
   merged into the neighbour whose genre is more probable over the run's windows, shortest run
   first, until every run is long enough or only one is left.

>>> from melgenre import load_model
>>> load_model(windows="all").predict("mix.mp3").segments  # every window: a long file is otherwise sampled  # doctest: +SKIP
[Segment(start=0.0, end=72.0, genre='rock', probability=0.71), Segment(start=72.0, end=160.4, ...)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melgenre.errors import MelgenreError
from melgenre.utils import save_png

#: Windows averaged by :func:`smooth` (centred, odd).
SMOOTH_WINDOWS = 3
#: Width of one character of a segment label, as a fraction of the figure's time axis.
LABEL_CHAR_FRACTION = 0.011

#: Default shortest segment in seconds; shorter runs are merged into a neighbour.
MIN_SEGMENT = 10.0


@dataclass(frozen=True)
class Segment:
    """A stretch of a clip with one genre: ``start``/``end`` in seconds, and the mean probability
    of ``genre`` over the segment's windows (unsmoothed)."""

    start: float
    end: float
    genre: str
    probability: float


def smooth(window_probs: np.ndarray, width: int = SMOOTH_WINDOWS) -> np.ndarray:
    """Centred moving average of ``(W, C)`` window probabilities over ``width`` windows (fewer at the
    ends, so rows still sum to 1); ``width`` 1 returns a copy."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"width must be a positive odd number, got {width}")
    p = np.asarray(window_probs, dtype=np.float64)
    half = width // 2
    csum = np.vstack([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
    lo = np.clip(np.arange(len(p)) - half, 0, len(p))
    hi = np.clip(np.arange(len(p)) + half + 1, 0, len(p))
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


def window_bounds(window_starts: Sequence[float], window_seconds: float, duration: float) -> np.ndarray:
    """``W + 1`` times that split ``[0, duration]`` among the windows: 0, the midpoints between
    consecutive window centres, and ``duration`` (at least the last window's centre)."""
    centres = np.asarray(window_starts, dtype=np.float64) + window_seconds / 2
    inner = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[0.0], inner, [max(duration, centres[-1] if len(centres) else 0.0)]])


def segments(window_probs: np.ndarray, window_starts: Sequence[float], classes: Sequence[str],
             window_seconds: float, duration: float, min_segment: float = MIN_SEGMENT) -> list[Segment]:
    """The genre segments of one clip (see the module docstring).

    Parameters
    ----------
    window_probs : np.ndarray
        ``(W, C)`` probabilities of each window (``Prediction.window_probabilities``).
    window_starts : sequence of float
        Start of each window in seconds.
    classes : sequence of str
        The ``C`` genre names.
    window_seconds : float
        Length of one window in seconds (its centre is ``start + window_seconds / 2``).
    duration : float
        Length of the clip in seconds.
    min_segment : float
        Shortest segment kept, in seconds (0 keeps every run).

    Returns
    -------
    list of Segment
        In time order, tiling ``[0, duration]``; empty when there are no windows.
    """
    probs = np.asarray(window_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(window_starts), len(classes)):
        raise MelgenreError(f"window probabilities of shape {probs.shape} do not match {len(window_starts)} "
                            f"windows and {len(classes)} classes")
    if min_segment < 0:
        raise MelgenreError(f"minimum segment length must be >= 0 s, got {min_segment}")
    if len(probs) == 0:
        return []
    bounds = window_bounds(window_starts, window_seconds, duration)
    smoothed = smooth(probs)
    labels = smoothed.argmax(axis=1)
    # runs as [first window, last window + 1, class]
    runs = [[i, i + 1, int(c)] for i, c in enumerate(labels)]
    runs = _join_equal(runs)
    while len(runs) > 1:
        lengths = [bounds[b] - bounds[a] for a, b, _ in runs]
        k = int(np.argmin(lengths))
        if lengths[k] >= min_segment:
            break
        a, b, _ = runs[k]
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < len(runs)]
        best = max(neighbours, key=lambda j: smoothed[a:b, runs[j][2]].mean())
        runs[k][2] = runs[best][2]
        runs = _join_equal(runs)
    return [Segment(start=float(bounds[a]), end=float(bounds[b]), genre=classes[c],
                    probability=float(probs[a:b, c].mean())) for a, b, c in runs]


def _join_equal(runs: list[list[int]]) -> list[list[int]]:
    """Adjacent runs of the same class joined into one."""
    out: list[list[int]] = []
    for run in runs:
        if out and out[-1][2] == run[2]:
            out[-1][1] = run[1]
        else:
            out.append(list(run))
    return out


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour), seconds rounded down."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def describe(segs: Sequence[Segment]) -> str:
    """One line such as ``0:00-1:12 rock, 1:12-2:40 metal``."""
    return ", ".join(f"{clock(s.start)}-{clock(s.end)} {s.genre}" for s in segs)


def timeline_figure(pred, segs: Sequence[Segment] | None = None, title: str = ""):
    """A matplotlib figure of a :class:`~melgenre.inference.Prediction`'s timeline: the smoothed
    probability of every genre over time as a stacked area (x = window centres), the segments as
    labelled spans and their boundaries as vertical lines. Needs at least one window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segs = pred.segments if segs is None else segs
    classes = list(pred.probabilities)
    probs = smooth(pred.window_probabilities)
    # each window at its centre, the first and last held flat out to the clip's ends
    centres = np.asarray(pred.window_starts, dtype=np.float64) + pred.window_seconds / 2
    end = max(pred.duration, centres[-1])
    times = np.concatenate([[0.0], centres, [end]])
    probs = np.vstack([probs[:1], probs, probs[-1:]])
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(np.arange(len(classes)))
    ax.stackplot(times, probs.T, labels=classes, colors=colours, alpha=0.85)
    right_edge = [-np.inf, -np.inf]  # where the last label of each row ends, in seconds
    for seg in segs:
        ax.axvline(seg.start, color="black", lw=1.2)
        label, centre = f"{seg.genre} {seg.probability:.0%}", (seg.start + seg.end) / 2
        half = len(label) * LABEL_CHAR_FRACTION * end / 2
        row = 0 if centre - half > right_edge[0] else 1  # a label that would overlap the last one goes up a row
        right_edge[row] = centre + half
        ax.text(centre, 1.02 + 0.07 * row, label, ha="center", va="bottom", fontsize=9,
                transform=ax.get_xaxis_transform())
    ax.set_xlim(0, end)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"probability (mean of {SMOOTH_WINDOWS} windows)")
    ax.set_title(title or Path(pred.source).name, pad=18 if right_edge[1] == -np.inf else 32)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save_timeline_figure(pred, out: str | Path, segs: Sequence[Segment] | None = None) -> Path:
    """Write :func:`timeline_figure` as a PNG to ``out`` (atomically); returns ``out``."""
    return save_png(timeline_figure(pred, segs), out)
