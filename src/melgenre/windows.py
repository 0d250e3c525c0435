"""The windows a prediction scores: every window of a clip, or a sample spread over a long song.

A model scores fixed-length windows (a 3-s patch of the default model, a 30-s image of ``v1``) and
averages them. A 30-s clip has a handful (the default model: 5); a 3-minute song has 30 windows of the default
model and a 10-minute live track 100. Genre is a property of the whole song, so a prediction scores at most
``most`` windows (:func:`default_windows`, or the card's ``predict_windows``) spread evenly over it,
and reads only those stretches of the file where the format can seek (WAV, FLAC, OGG, Opus, MP3,
AU, AIFF: :class:`melgenre.audio.Stretches`), falling back to decoding it whole (M4A). A recording
with no more windows than that is scored whole, as before. ``most=None`` scores every window. A
sample too close to call (its two most probable genres within :data:`RECHECK_MARGIN`,
:func:`close_call`) gets as many windows again, spread over those left, once (:data:`RECHECK`,
:func:`more_windows`); what they say is the answer, with its ``unsure`` flag. Scoring every window
of an unsure song does not make its answer right: against the genre labels of songs the model had
not heard, every window was right about as often as this rule, within a song in a hundred
(docs/benchmarks/songs.md).

The sampled windows are a subset of the full grid of :func:`window_images`: the same starts and,
up to float rounding, the same images (tested), so a sample can only differ from the full
prediction by which windows it leaves out. docs/benchmarks/songs.md gives the accuracy against the
genre labels on full-length songs of clips the model did and did not hear, against every window, and the speed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melgenre import audio, features
from melgenre.errors import MelgenreError
from melgenre.features import Preset

#: The fewest windows a long recording gets by default (:func:`default_windows`).
MIN_WINDOWS = 3

#: Length of the clips models are trained and evaluated on (GTZAN's): never sampled by default.
CLIP_SECONDS = 30.0

#: A sample whose two most probable genres (its track-level probabilities) are closer than this is too
#: close to call (:func:`close_call`): it gets more windows under :data:`RECHECK` (:func:`more_windows`).
RECHECK_MARGIN = 0.2


@dataclass
class Windows:
    """The mel images of the windows a prediction scores, and what they say of the recording."""

    images: np.ndarray  # (W, H, W_img) float32 in [0, 1], rounded to float16 precision
    starts: list[float]  # start of each window in seconds
    padded: bool  # some window was zero-padded
    silent: bool  # every sample read is below melgenre.audio.SILENCE_PEAK
    duration: float  # length of the whole recording in seconds
    total: int  # windows of the whole recording (> len(starts) when sampled)
    indices: list[int] = field(default_factory=list)  # positions of these windows among the recording's ``total``
    rounds: int = 0  # rechecks merged in (melgenre.windows.merge): 0 for a first sample

    @property
    def sampled(self) -> bool:
        """Whether some windows of the recording are left out."""
        return len(self.starts) < self.total


@dataclass(frozen=True)
class WindowCount:
    """The most windows one prediction scores: a positive number, or every window (``most`` None).

    The one type of the ``windows`` setting, parsed once where a value comes in (the CLI's
    ``--windows N|all``, a card's ``predict_windows``, the beets plugin's ``windows``, an index's
    record) with :meth:`parse`; ``str()`` gives it back as ``"all"`` or ``"5"``.
    """

    most: int | None = None

    @classmethod
    def parse(cls, value: WindowCount | int | str | None) -> WindowCount:
        """``"all"`` or None -> every window; a positive whole number (or its text) -> at most that many.

        Raises
        ------
        MelgenreError
            Anything else.
        """
        if isinstance(value, WindowCount):
            return value
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return cls(None)
        try:
            most = int(value)
        except (TypeError, ValueError):
            most = 0
        if isinstance(value, bool) or most < 1 or str(value).strip() not in (str(most), f"{most}.0"):
            raise MelgenreError(f"windows must be a positive whole number or 'all', got {value!r}")
        return cls(most)

    def to_json(self) -> int | str:
        """As a card stores it: the number, or ``"all"``."""
        return "all" if self.most is None else self.most

    def __str__(self) -> str:
        return "all" if self.most is None else str(self.most)


def parse_windows(value: WindowCount | int | str | None) -> int | None:
    """``WindowCount.parse(value).most``: ``"all"`` -> None (every window), a positive whole number (or its
    text) -> itself.

    Raises
    ------
    MelgenreError
        Anything else.
    """
    return WindowCount.parse(value).most


def default_windows(preset: Preset) -> int:
    """The default most windows of a model predicting with ``preset`` (its prediction hop): as many as a
    :data:`CLIP_SECONDS` clip has (the default model at its 6-s hop: 5; ``fast`` at 1.5 s: 18), at
    least :data:`MIN_WINDOWS` (``v1``/``v2``: 30-s windows). So a clip as long as the training clips
    is always scored whole, the model's evaluation figures hold for it, and a song of any length
    costs what such a clip costs."""
    return max(MIN_WINDOWS, len(window_offsets(round(CLIP_SECONDS * preset.sr), preset)))


def spread(total: int, most: int | None) -> list[int]:
    """Indices of at most ``most`` of ``total`` windows: the middle one of each of ``most`` equal parts."""
    if most is None or total <= most:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * most) for i in range(most)]


def window_offsets(n_samples: int, preset: Preset) -> list[int]:
    """Start samples (at ``preset.sr``) of every window :func:`window_images` takes of ``n_samples``."""
    if preset.chunk_seconds is not None:
        whole = dataclasses.replace(preset, duration=None)
        n = max(n_samples, int(round(whole.chunk_seconds * whole.sr)))  # a short clip is padded to one chunk
        return [s * whole.hop_length for s in features.chunk_starts(whole.n_frames(n), whole)]
    if preset.duration is None:  # one image of the whole clip
        return [0]
    win = round(preset.duration * preset.sr)
    return [s for s in range(0, max(n_samples, 1), win) if s == 0 or n_samples - s >= win / 2]


def window_images(y: np.ndarray, preset: Preset) -> tuple[np.ndarray, list[float], bool]:
    """Mel images of every window of a clip of any length.

    Parameters
    ----------
    y : np.ndarray
        Mono audio at ``preset.sr``.
    preset : Preset
        Chunked presets take every full chunk of the whole clip (``duration`` is ignored);
        unchunked ones cut the clip into windows of ``duration`` seconds, hop ``duration``,
        keeping a last partial window only if it is the only one or covers at least half a
        window. Each window is padded/trimmed with :func:`melgenre.features.fit_to_preset`.

    Returns
    -------
    images : np.ndarray
        ``(W, H, W_img)`` float32 images in [0, 1], rounded to float16 precision as stored
        for training (so a prediction equals evaluation on a prepared feature file).
    starts : list of float
        Start of each window in seconds.
    padded : bool
        True when some window was zero-padded.
    """
    sr = preset.sr
    if preset.chunk_seconds is not None:
        images, starts, padded = features.whole_clip_chunks(y, preset)
    elif preset.duration is None:
        images, starts, padded = features.mel_images(y, preset), [0.0], False
    else:
        win = round(preset.duration * sr)
        offsets = window_offsets(len(y), preset)
        padded = any(len(y) - s < win for s in offsets)
        images = np.concatenate([features.mel_images(features.fit_to_preset(y[s:s + win], preset), preset)
                                 for s in offsets])
        starts = [s / sr for s in offsets]
    return _stored_precision(images), starts, padded


def _stored_precision(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float16).astype(np.float32)


def _window_image(read: Callable[[int, int], np.ndarray], offset: int, preset: Preset) -> tuple[np.ndarray, float]:
    """The image ``(1, H, W)`` of the window starting at sample ``offset`` and the peak of what was read,
    from ``read(start, stop)`` (mono samples at ``preset.sr``, zeros past the end)."""
    if preset.chunk_seconds is None:
        y = read(offset, offset + round(preset.duration * preset.sr))
        return features.mel_images(features.fit_to_preset(y, preset), preset), float(np.max(np.abs(y), initial=0))
    # librosa's centred frames: frame f covers samples f*hop - n_fft/2 .. f*hop + n_fft/2, zero before 0
    whole = dataclasses.replace(preset, duration=None)
    hop, size = whole.hop_length, whole.chunk_frames
    frame = offset // hop
    context = min(frame, math.ceil((whole.n_fft // 2) / hop))  # frames read before the window
    start = (frame - context) * hop
    y = read(start, (frame + size - 1) * hop + whole.n_fft // 2 + 1)
    power = features.melspectrogram(y, whole)[:, context:context + size]
    return features.power_to_images(power[None], whole), float(np.max(np.abs(y), initial=0))


def _windows_at(read: Callable[[int, int], np.ndarray], n_samples: int, preset: Preset, offsets: list[int],
                indices: list[int]) -> Windows:
    """The windows ``indices`` of the grid ``offsets`` of a recording of ``n_samples``, from ``read``."""
    chosen = [offsets[i] for i in indices]
    images, peaks = zip(*(_window_image(read, s, preset) for s in chosen))
    win = round((preset.chunk_seconds or preset.duration) * preset.sr)
    # as window_images: chunked presets pad only a clip shorter than one chunk, others a short last window
    padded = n_samples < win if preset.chunk_seconds is not None else any(n_samples - s < win for s in chosen)
    return Windows(images=_stored_precision(np.concatenate(images)), starts=[s / preset.sr for s in chosen],
                   padded=padded, silent=max(peaks) < audio.SILENCE_PEAK,
                   duration=n_samples / preset.sr, total=len(offsets), indices=list(indices))


def _pick(total: int, most: int | None, exclude: Sequence[int]) -> list[int] | None:
    """Grid indices to read: at most ``most`` of the windows not in ``exclude``, spread over them
    (None: every window, the plain whole-clip path)."""
    if exclude:
        left = set(exclude)
        rest = [i for i in range(total) if i not in left]
        return rest if most is None or len(rest) <= most else [rest[j] for j in spread(len(rest), most)]
    return None if most is None or total <= most else spread(total, most)


def array_windows(y: np.ndarray, preset: Preset, most: int | None, exclude: Sequence[int] = ()) -> Windows:
    """The windows of mono audio ``y`` at ``preset.sr``: all of them (:func:`window_images`) when there
    are at most ``most`` (or ``most`` is None), else ``most`` of them spread over the clip; with
    ``exclude`` (the ``indices`` of an earlier sample) as many of the other windows."""
    offsets = window_offsets(len(y), preset)
    indices = _pick(len(offsets), most, exclude)
    if indices is None:
        images, starts, padded = window_images(y, preset)
        return Windows(images, starts, padded, audio.is_silent(y), len(y) / preset.sr, len(starts),
                       list(range(len(starts))))
    return _windows_at(lambda a, b: audio.fix_length(y[a:b], b - a), len(y), preset, offsets, indices)


def file_windows(source: str | Path | bytes, preset: Preset, most: int | None, name: str | None = None,
                 exclude: Sequence[int] = ()) -> Windows:
    """The windows of an audio file (path or bytes), as :func:`array_windows` of the decoded file.

    A file with more than ``most`` windows (or read with ``exclude``) is not decoded whole: only the
    stretches of the chosen windows are read (:func:`melgenre.audio.open_stretches`), where the
    format can seek.

    Raises
    ------
    AudioDecodeError
        The file cannot be decoded (the message names it).
    """
    if most is not None or exclude:
        stretches = audio.open_stretches(source, preset.sr, name=name)
        if stretches is not None:
            with stretches:
                offsets = window_offsets(stretches.n_samples, preset)
                indices = _pick(len(offsets), most, exclude)
                if indices is not None:
                    return _windows_at(stretches.read, stretches.n_samples, preset, offsets, indices)
    return array_windows(audio.load(source, sr=preset.sr, name=name).samples, preset, most, exclude)


def close_call(probabilities: np.ndarray, windows: Windows, margin: float | None = None) -> bool:
    """Whether a sample of windows is too close to call: some of the recording's windows are left out
    and the two most probable genres of ``probabilities`` (the sample's track-level probabilities,
    as shown) are within ``margin`` (default :data:`RECHECK_MARGIN`).

    Measured on 40 full-length songs of dev clips (docs/benchmarks/songs.md, issue 25): the two songs
    whose five-window label differed from every window's had margins of 0.01 and 0.12; smaller margins
    (0.1, 0.05) lost accuracy against the labels on songs of unseen clips (issue 33)."""
    if not windows.sampled or len(probabilities) < 2:
        return False
    top = np.sort(probabilities)
    return float(top[-1] - top[-2]) < (RECHECK_MARGIN if margin is None else margin)


@dataclass(frozen=True)
class Recheck:
    """When a sample of windows is scored on more, and on how many (:func:`more_windows`).

    A sample too close to call (:func:`close_call` within ``margin``; None: :data:`RECHECK_MARGIN`)
    gets ``growth`` times as many more windows as it has, spread over those left, at most ``rounds``
    times (None: until it is clear or every window is scored). What the windows then say is the
    answer, flagged ``unsure`` when it is (the card's ``trust`` threshold, as for any prediction).
    """

    margin: float | None = None
    growth: float = 1.0
    rounds: int | None = 1


#: The rule :class:`melgenre.pipeline.Predictor` follows (:func:`more_windows`): a close call
#: gets as many windows again, once (the default model: 5, and 10 for a close call). Chosen against the
#: genre labels of songs of clips the model did not hear (docs/benchmarks/songs.md, issue 33): every
#: window is right about as often, and on the close calls doubling until clear (the rule before,
#: ``Recheck(growth=2.0, rounds=None)``) scored 21 windows a song for the same accuracy.
RECHECK = Recheck()


def more_windows(probabilities: np.ndarray, windows: Windows, rule: Recheck | None = None) -> int:
    """How many more windows a sample gets under ``rule`` (default :data:`RECHECK`): 0 when it is not a
    :func:`close_call` (within ``rule.margin``), when every window is scored, or after ``rule.rounds``
    rechecks (``windows.rounds``, counted by :func:`merge`); else ``rule.growth`` times those scored, at
    least 1 and no more than are left.

    ``probabilities`` are the sample's track-level probabilities (calibrated, as shown)."""
    rule = RECHECK if rule is None else rule
    if rule.rounds is not None and windows.rounds >= rule.rounds:
        return 0
    if not close_call(probabilities, windows, rule.margin):
        return 0
    scored = len(windows.starts)
    return max(1, min(windows.total - scored, math.ceil(rule.growth * scored)))


def merge(first: Windows, second: Windows, *rows: tuple[np.ndarray | None, np.ndarray | None]
          ) -> tuple[Windows, list[np.ndarray | None]]:
    """Two sets of windows of one recording as one, in time order, with their per-window ``rows``: pairs
    (of ``first``, of ``second``) such as their probabilities, concatenated in the same order (None stays None).
    The images are left out (already scored); ``rounds`` is one more than ``first``'s (a recheck)."""
    order = np.argsort(first.indices + second.indices, kind="stable")
    starts = first.starts + second.starts
    both = Windows(images=np.zeros((0, *first.images.shape[1:]), np.float32), starts=[starts[i] for i in order],
                   padded=first.padded or second.padded, silent=first.silent and second.silent,
                   duration=first.duration, total=first.total,
                   indices=[(first.indices + second.indices)[i] for i in order], rounds=first.rounds + 1)
    return both, [None if a is None or b is None else np.concatenate([a, b])[order] for a, b in rows]


__all__ = ["CLIP_SECONDS", "MIN_WINDOWS", "RECHECK", "RECHECK_MARGIN", "Recheck", "WindowCount", "Windows",
           "array_windows", "close_call", "default_windows", "file_windows", "merge", "more_windows", "parse_windows",
           "spread", "window_images", "window_offsets"]
