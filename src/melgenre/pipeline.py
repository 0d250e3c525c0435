"""One prediction pipeline for every caller: decode the stretches a prediction scores -> windows ->
batches through the backend -> :class:`~melgenre.inference.Prediction`.

:class:`Predictor` is the only place where a recording becomes a prediction. ``GenreModel.predict``,
the library job (:func:`melgenre.library.predict_library`), the Ray actors
(:func:`melgenre.scale.predict_ray`), the web service (:mod:`melgenre.serve`) and the similar-tracks
index (:mod:`melgenre.similar`) all run through it, so a result never depends on who asked or how
its windows were batched. The steps:

1. **decode** (:meth:`Predictor.decode`): a file, its bytes or samples into the :class:`~melgenre.windows.Windows`
   a prediction scores first (at most the model's ``windows``, spread over a long recording; a file
   is read only there, so memory is bounded by what is scored, never by what the file decompresses to).
   It never raises: a file that fails is an :class:`Item` with an ``error`` (:func:`failure_reason`);
2. **run** (:meth:`Predictor.run`): the windows of many items through the backend in full batches;
3. **recheck**: a sample too close to call gets more windows of the same recording, decoded and
   scored at once (:func:`melgenre.windows.more_windows`: as many again, once);
4. **finish** (``GenreModel.prediction``): mean over windows, calibration, flags, timeline.

Where decoding runs is the executor's choice (:meth:`Predictor.predict_paths`): ``"local"`` (this
process), ``"process"`` (a pool of worker processes decodes while this one runs the network) or
``"ray"`` (Ray actors, each with its own Predictor, :mod:`melgenre.scale`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from melgenre import audio
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.utils import blas_controller, file_sha256
from melgenre.windows import Windows, array_windows, file_windows, merge, more_windows

if TYPE_CHECKING:
    from melgenre.inference import GenreModel, Prediction

#: Where :meth:`Predictor.predict_paths` decodes.
EXECUTORS = ("local", "process", "ray")


def failure_reason(exc: BaseException) -> str:
    """The one-line reason a recording could not be predicted, as every result reports it."""
    if isinstance(exc, AudioDecodeError):
        return exc.reason
    if isinstance(exc, MelgenreError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read file ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Item:
    """One recording in the pipeline: where it comes from, its windows so far, and what they gave."""

    key: str  # the name reported: the path, or the name given for bytes and arrays
    source: str | Path | bytes | np.ndarray | None = None  # read again when a close call needs more windows
    sr: int | None = None  # of an array source
    windows: Windows | None = None
    error: str | None = None  # why it failed (then there are no windows)
    info: dict[str, Any] = field(default_factory=dict)  # file facts for the library job: size, mtime, sha256
    probs: list[np.ndarray] = field(default_factory=list)  # (w, C) uncalibrated softmax per batch slice
    embs: list[np.ndarray] = field(default_factory=list)  # (w, D) embeddings per batch slice (when asked)

    @property
    def scored(self) -> int:
        """Windows of :attr:`windows` already through the network."""
        return sum(len(p) for p in self.probs)


def samples(source: str | Path | bytes | np.ndarray, sr: int | None, name: str | None, target_sr: int
            ) -> tuple[np.ndarray, str]:
    """Mono float32 samples at ``target_sr`` of a whole file, its bytes or an array (at ``sr``), and the
    name to report (for callers that need every sample, such as musicnn's own tagger)."""
    label = _label(source, name)
    if isinstance(source, np.ndarray):
        return _samples(source, sr, label, target_sr), label
    return audio.load(source, sr=target_sr, name=label).samples, label


def _label(source: str | Path | bytes | np.ndarray, name: str | None) -> str:
    """The name a recording is reported by: ``name``, else its path, ``<bytes>`` or ``<array>``."""
    return name or ("<array>" if isinstance(source, np.ndarray) else "<bytes>" if isinstance(source, bytes)
                    else str(source))


def _samples(source: np.ndarray, sr: int | None, label: str, target_sr: int) -> np.ndarray:
    """Mono float32 samples at ``target_sr`` of an array ``(T,)`` or ``(T, channels)`` at ``sr``."""
    if sr is None:
        raise MelgenreError(f"{label}: pass sr= (the sample rate) with a numpy array")
    if source.ndim not in (1, 2) or (source.ndim == 2 and source.shape[1] > source.shape[0]):
        raise MelgenreError(f"{label}: expected audio of shape (samples,) or (samples, channels), got {source.shape}")
    y = np.asarray(source)
    if np.issubdtype(y.dtype, np.signedinteger):  # PCM integers -> [-1, 1)
        y = y / np.float32(np.iinfo(y.dtype).max)
    y = audio.to_mono(y.astype(np.float32, copy=False))
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise MelgenreError(f"{label}: the array is empty or holds NaN/infinite samples")
    return np.ascontiguousarray(audio.resample(y, int(sr), target_sr))


def windows_of(model: GenreModel, source: str | Path | bytes | np.ndarray, sr: int | None = None,
               name: str | None = None, exclude: list[int] | tuple[int, ...] = (), more: int | None = None
               ) -> tuple[Windows, str]:
    """The windows a prediction of ``model`` scores first of a file, its bytes or samples (at most
    ``model.windows``, spread over a longer recording; a file is then read only there), and the name to
    report; with ``exclude`` (an earlier sample's ``indices``) up to ``more`` other windows (None: all).

    Raises
    ------
    AudioDecodeError
        The file or bytes cannot be decoded.
    MelgenreError
        An array without ``sr``, of the wrong shape, empty or non-finite.
    """
    most, label = (more if exclude else model.windows), _label(source, name)
    with blas_controller().limit(limits=1, user_api="blas"):
        if isinstance(source, np.ndarray):
            return array_windows(_samples(source, sr, label, model.preset.sr), model.window_preset, most, exclude), label
        return file_windows(source, model.window_preset, most, name=label, exclude=exclude), label


def decode_path(path: str, preset_json: str, most: int | None, facts: bool = False) -> Item:
    """:meth:`Predictor.decode` of a file in a worker process, from the model's ``window_preset`` as JSON
    and its ``windows``; with ``facts`` also its size, mtime and SHA-256 (the library job's ``info``)."""
    preset = _preset(preset_json)
    item = Item(key=path, source=path)
    try:
        if facts:
            st = os.stat(path)
            item.info.update(size=st.st_size, mtime=st.st_mtime, sha256=None)
            item.info["sha256"] = file_sha256(path)
        # Decoded from the path, not from bytes: libsndfile then reads the file itself, where from bytes every
        # read and seek is a Python callback (a third of the time of 5 windows of a 3-minute MP3, measured).
        with blas_controller().limit(limits=1, user_api="blas"):
            item.windows = file_windows(path, preset, most, name=path)
    except Exception as exc:  # noqa: BLE001  (one file's failure is its result's error; the run goes on)
        item.error = failure_reason(exc)
    return item


@functools.lru_cache(maxsize=4)
def _preset(preset_json: str):
    from melgenre.features import get_preset

    return get_preset(json.loads(preset_json))


class Predictor:
    """A model's prediction pipeline (see the module docstring).

    Parameters
    ----------
    model : GenreModel
        A loaded model (:func:`melgenre.inference.load_model`).
    batch : int, optional
        Windows per forward pass, across recordings (default: the model's ``batch_size``).
    recheck : bool
        Score more windows of a sample too close to call (default); off, each recording is scored on
        its first sample only (the similar-tracks index embeds exactly the windows it records).
    embeddings : bool
        Keep each window's embedding (``Prediction.window_embeddings``), from the same forward pass
        (also kept whenever the model's "not music" score needs them).
    """

    def __init__(self, model: GenreModel, batch: int | None = None, recheck: bool = True, embeddings: bool = False):
        if not model.loaded:
            raise MelgenreError(f"model {model.model_id}: made from a card alone, it cannot predict")
        self.model = model
        self.batch = batch or model.batch_size
        self.recheck = recheck
        self.embeddings = embeddings
        self.rechecked = 0  # recordings whose sample was too close to call (more windows were scored)
        self.windows_scored = 0  # windows scored, rechecks included

    # -- 1. decode ---------------------------------------------------------------------------------

    def decode(self, source: str | Path | bytes | np.ndarray, sr: int | None = None,
               name: str | None = None) -> Item:
        """The first windows of a file, its bytes or samples as an :class:`Item` (never raises: a failure
        is the item's ``error``)."""
        item = Item(key=_label(source, name), source=source, sr=sr)
        try:
            item.windows, item.key = windows_of(self.model, source, sr, name)
        except Exception as exc:  # noqa: BLE001
            item.error = failure_reason(exc)
        return item

    # -- 2.-4. run, recheck, finish ----------------------------------------------------------------

    def _outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The pipeline's one call of the network: :meth:`GenreModel.window_outputs` in its batches."""
        return self.model.window_outputs(images, embeddings=self.embeddings, batch=self.batch)

    def run(self, items: Iterable[Item], top_k: int = 3) -> Iterator[tuple[Item, Prediction | None]]:
        """Predictions of decoded items, in their order: ``(item, prediction)``, or ``(item, None)`` with
        ``item.error`` set. Windows of consecutive items share full batches; an item is yielded as soon
        as all its windows have run (a failed one at once, when every item before it is done)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        waiting: list[Item] = []  # in order; each with windows not all scored yet, or failed
        queued: list[np.ndarray] = []  # their images not run yet, in order
        n_queued = 0
        for item in items:
            waiting.append(item)
            if item.error is None:
                queued.append(item.windows.images)
                n_queued += len(item.windows.images)
            if n_queued >= self.batch:
                n_queued = self._flush(waiting, queued, n_queued - n_queued % self.batch)
            yield from self._finished(waiting, top_k)
        if n_queued:
            self._flush(waiting, queued, n_queued)
        yield from self._finished(waiting, top_k)

    def _flush(self, waiting: list[Item], queued: list[np.ndarray], n: int) -> int:
        """Run the first ``n`` queued images and hand each item its rows; the rest stays queued (as
        ``queued[0]``); returns how many are left."""
        images = np.concatenate(queued)
        probs, emb = self._outputs(images[:n])
        rest = images[n:]
        queued[:] = [rest] if len(rest) else []
        i = 0
        for item in waiting:
            if item.error is not None:
                continue
            need = len(item.windows.images) - item.scored
            if need and i < n:
                take = min(need, n - i)
                item.probs.append(probs[i:i + take])
                if emb is not None:
                    item.embs.append(emb[i:i + take])
                i += take
        return len(rest)

    def _finished(self, waiting: list[Item], top_k: int) -> Iterator[tuple[Item, Prediction | None]]:
        while waiting and (waiting[0].error is not None or waiting[0].scored == len(waiting[0].windows.images)):
            item = waiting.pop(0)
            yield item, None if item.error is not None else self._finish(item, top_k)

    def _finish(self, item: Item, top_k: int) -> Prediction | None:
        from melgenre.inference import tempered

        w = item.windows
        probs = np.concatenate(item.probs)
        emb = np.concatenate(item.embs) if item.embs else None
        try:
            # the rule of melgenre.windows.more_windows (RECHECK: a close call gets as many windows again,
            # once); silence is no clearer for more of it: a silent sample is flagged, not rechecked
            while self.recheck and not w.silent and (extra := more_windows(
                    tempered(probs.mean(axis=0, keepdims=True), self.model.temperature)[0], w)):
                rest, _ = windows_of(self.model, item.source, item.sr, item.key, exclude=w.indices, more=extra)
                more, more_emb = self._outputs(rest.images)
                w, (probs, emb) = merge(w, rest, (probs, more), (emb, more_emb))
        except Exception as exc:  # noqa: BLE001  (the file changed or broke between two reads)
            item.error = failure_reason(exc)
            return None
        self.rechecked += w.rounds > 0
        self.windows_scored += len(w.indices)
        item.windows = w
        pred = self.model.prediction(item.key, probs, w.starts, duration=w.duration, padded=w.padded, silent=w.silent,
                                     top_k=top_k, window_embeddings=emb, windows_total=w.total)
        if self.embeddings:
            pred.window_embeddings = emb
        return pred

    # -- whole jobs --------------------------------------------------------------------------------

    def predict(self, source: str | Path | bytes | np.ndarray, sr: int | None = None, top_k: int = 3,
                name: str | None = None) -> Prediction:
        """The :class:`~melgenre.inference.Prediction` of one recording (see ``GenreModel.predict``).

        Raises
        ------
        AudioDecodeError, MelgenreError
            As ``GenreModel.predict``: the source cannot be decoded, or an array is unusable.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        w, label = windows_of(self.model, source, sr, name)  # raises, unlike decode
        [(item, pred)] = list(self.run([Item(key=label, source=source, sr=sr, windows=w)], top_k))
        if pred is None:
            raise MelgenreError(f"{label}: {item.error}")
        return pred

    def predict_paths(self, paths: Iterable[str | Path], top_k: int = 3, executor: str = "local",
                      workers: int | None = None, in_flight: int | None = None, facts: bool = False
                      ) -> Iterator[tuple[Item, Prediction | None]]:
        """Predictions of files: ``(item, prediction)`` or ``(item, None)`` with ``item.error``; one file's
        failure never stops the run. In the files' order with the local executor, in the order their
        decoding finishes with the process executor.

        Parameters
        ----------
        paths : iterable of path
            Files (not folders: :func:`melgenre.audio.expand_paths` them first).
        top_k : int
            Classes per ``Prediction.top``.
        executor : {"local", "process"}
            Decode here, or in ``workers`` processes (at most ``in_flight`` files at once, default
            ``2 × workers + 2``: bounds memory) while this process runs the network. The ``"ray"``
            executor is :func:`melgenre.scale.predict_ray` (actors, each with its own Predictor).
        facts : bool
            Also stat and hash each file into ``item.info`` (size, mtime, sha256: the library job's rows).
        """
        files = [str(p) for p in paths]
        preset_json = json.dumps(self.model.window_preset.to_dict())
        if executor == "local" or (executor == "process" and not workers):
            # One BLAS thread: OpenBLAS's idle threads spin between the mel products and slow the
            # network's threads down (measured: melcnn-int8 14 -> 27 files/s on 2 cores)
            decoded = (decode_path(f, preset_json, self.model.windows, facts) for f in files)
            with blas_controller().limit(limits=1, user_api="blas"):
                yield from self.run(decoded, top_k)
            return
        if executor != "process":
            raise MelgenreError(f"unknown executor {executor!r}; use local or process here (ray: melgenre.scale)")
        from concurrent.futures.process import BrokenProcessPool

        from melgenre.utils import imap_bounded, worker_pool

        with worker_pool(workers, ["melgenre.pipeline"]) as pool:
            job = functools.partial(decode_path, preset_json=preset_json, most=self.model.windows, facts=facts)
            try:
                yield from self.run(imap_bounded(pool, job, files, in_flight or 2 * workers + 2), top_k)
            except BrokenProcessPool:
                raise MelgenreError("a decoding worker process died (out of memory, or killed); the results so "
                                    "far are kept: rerun the same command to go on") from None


def track_embedding(pred: Prediction, name: str) -> np.ndarray:
    """The L2-normalised mean of a prediction's window embeddings (a Predictor with ``embeddings=True``):
    one vector per track, whose dot products are cosine similarities (:mod:`melgenre.similar`)."""
    emb = pred.window_embeddings
    mean = np.asarray(emb, dtype=np.float32).mean(axis=0) if emb is not None and len(emb) else None
    norm = float(np.linalg.norm(mean)) if mean is not None else 0.0
    if mean is None or not np.isfinite(norm) or norm == 0:
        raise MelgenreError(f"{name}: no usable embedding (all zero or not finite)")
    return (mean / norm).astype(np.float32)


__all__ = ["EXECUTORS", "Item", "Predictor", "decode_path", "failure_reason", "samples", "track_embedding",
           "windows_of"]
