"""Genre prediction for audio of any length: :class:`GenreModel`, its backends, :func:`load_model`.

A model (a package, run directory, checkpoint or ONNX file: :mod:`melgenre.package`) runs with
PyTorch or ONNX Runtime. How a clip of any length becomes one :class:`Prediction`
(:mod:`melgenre.windows`): chunked presets (``fast``: 3-s chunks, hop 1.5 s) take the chunks of the
whole clip, with no 30-s limit; unchunked presets (``v1``, ``v2``: one image per 30 s) cut the clip
into back-to-back windows of ``duration`` seconds. A long recording is scored on at most
``windows`` of them, spread over it (default :func:`melgenre.windows.default_windows` or the card's
``predict_windows``), and only those stretches are decoded. The track's probabilities are the mean
of the windows' softmax outputs, the same rule as track-level evaluation after training.

>>> from melgenre import load_model
>>> model = load_model("runs/melcnn-fast")  # doctest: +SKIP
>>> model.predict("song.mp3").top  # doctest: +SKIP
[('rock', 0.81), ('metal', 0.11), ('blues', 0.03)]
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from melgenre import audio, timeline
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.export import write_onnx
from melgenre.features import Preset
from melgenre.models import channels_last
from melgenre.models.embedding import captured_embeddings, last_linear
from melgenre.package import (
    check_card,
    default_model_path,
    load_torch,
    resolve_shipped,
    stored_trust_centres,
)
from melgenre.timeline import Segment
from melgenre.utils import blas_controller
from melgenre.windows import (
    Windows,
    array_windows,
    default_windows,
    file_windows,
    merge,
    more_windows,
    parse_windows,
    window_images,
)

#: Backends :func:`load_model` accepts (``"auto"``: :func:`auto_backend`).
BACKENDS = ("torch", "onnx", "auto")

#: Images per forward pass, unless the card's ``predict_batch`` or :data:`PREDICT_BATCH` says otherwise.
BATCH_SIZE = 32

#: Images per forward pass of models whose activations are large: musicnn needs about 40 MB a window
#: with ONNX Runtime (1.6 GB at 32, 0.66 GB at 8, measured), for the same time per window.
PREDICT_BATCH = {"musicnn": 8}

_ONNX_PROVIDERS = ["CPUExecutionProvider"]

# -- predictions -------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: arrays and tuples become lists, floats are rounded to 6 decimals
    (bools, ints and strings are kept)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value


def ranked_classes(classes: list[str], window_scores: np.ndarray, top_k: int, temperature: float = 1.0) -> dict[str, Any]:
    """Clip-level ``label``, ``probabilities`` and ``top`` (top-k, best first, stable on ties)
    from per-window scores ``(W, C)``: their mean over the windows, :func:`tempered` by ``temperature``
    (which never changes the order)."""
    probs = tempered(window_scores.mean(axis=0, dtype=np.float64)[None], temperature)[0]
    order = np.argsort(-probs, kind="stable")
    return {"label": classes[order[0]], "probabilities": {c: float(p) for c, p in zip(classes, probs)},
            "top": [(classes[i], float(probs[i])) for i in order[:top_k]]}


class JsonResult:
    """Base of the prediction dataclasses (:class:`Prediction`, :class:`melgenre.tags.TagPrediction`): JSON export, and ``flags`` kept in step with ``silent``/``padded``."""

    def __post_init__(self) -> None:
        derived = [flag for flag in ("silent", "padded") if getattr(self, flag)]
        self.flags[:] = derived + [flag for flag in self.flags if flag not in derived]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: plain lists and floats rounded to 6 decimals."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(eq=False)  # an array field makes field-wise == ambiguous: compare by identity
class Prediction(JsonResult):
    """The genre of one clip: track-level probabilities plus the per-window detail behind them."""

    source: str  # file path, or the name given for bytes / arrays
    label: str  # most probable class
    probabilities: dict[str, float]  # every class, track level (mean over windows)
    top: list[tuple[str, float]]  # the top-k classes, most probable first
    window_probabilities: np.ndarray  # (W, C) softmax output of each window
    window_starts: list[float]  # start of each window in seconds
    duration: float  # length of the clip in seconds
    padded: bool  # some window was zero-padded (e.g. the clip is shorter than one window)
    silent: bool  # the clip's peak is below melgenre.audio.SILENCE_PEAK
    model_id: str
    flags: list[str] = field(default_factory=list)  # warnings, see FLAGS ("silent"/"padded" added from those fields)
    novelty: float | None = None  # "not music" score (melgenre.trust.novelty); None without a stored reference
    window_seconds: float = 0.0  # length of one window in seconds
    segments: list[Segment] = field(default_factory=list)  # genre timeline, see melgenre.timeline
    windows_total: int = 0  # windows of the whole recording; more than len(window_starts) when sampled


#: Warnings a :class:`Prediction` may carry in ``flags``, with their meaning in plain words.
FLAGS = {
    "silent": "the clip is silent, so the genre means little",
    "padded": "the clip is shorter than the model's input and was padded with silence",
    "unsure": "the model is unsure: its top genre is more likely wrong than right",
    "not_music": "this does not sound like the music the model was trained on (speech, noise, tones or silence?), "
                 "so the genre means little",
}


def forward_outputs(module: nn.Module, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(N, C)`` of a torch model on images ``(N, H, W)``, in batches of ``batch``, and
    with ``embeddings`` the input of its last linear layer ``(N, D)`` from the same forward pass (else None)."""
    last = last_linear(module)
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32)[:, None])
    logits = []
    with captured_embeddings(module) if embeddings else contextlib.nullcontext([]) as captured:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                logits.append(module(torch.from_numpy(x[i:i + batch])).float().numpy())
    num_classes = last.out_features
    out = np.concatenate(logits) if logits else np.zeros((0, num_classes), dtype=np.float32)
    if not embeddings:
        return out, None
    emb = torch.cat(captured).float().numpy() if captured else np.zeros((0, last.in_features), dtype=np.float32)
    return out, emb


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax of logits ``(N, C)`` row by row (computed in float64), as float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of probabilities ``(N, C)``: ``softmax(log(probs) / temperature)`` row by row.

    Of a window's softmax this is exactly the softmax of its logits divided by ``temperature``; of a
    track's mean over windows it rescales the track's probabilities without changing their order,
    so calibration never changes a label (:mod:`melgenre.calibrate`). Returns the input's dtype.
    """
    probs = np.asarray(probs)
    if temperature == 1.0:
        return probs
    logp = np.log(np.clip(probs.astype(np.float64), 1e-300, None)) / temperature
    return softmax(logp).astype(probs.dtype, copy=False)

def windows_setting(card: dict[str, Any], preset: Preset, windows: int | str | None = None) -> int | None:
    """The most windows a prediction with ``preset`` scores (None: all): ``windows`` (``"all"``: None) when
    given, else the card's ``predict_windows`` (``"all"`` or a number), else
    :func:`melgenre.windows.default_windows` (as many as a 30-s clip has, at least 3)."""
    if windows is None:
        windows = card.get("predict_windows", default_windows(preset))
    return parse_windows(windows)

class GenreModel:
    """A trained classifier with its classes and feature preset, ready to predict.

    Made by :func:`load_model`. Attributes: ``classes`` (list of str), ``preset``
    (:class:`~melgenre.features.Preset`, as trained), ``window_preset`` (the same with the
    prediction ``hop``), ``hop``, ``card`` (the model card dict), ``model_id``, ``backend``
    (``"torch"`` or ``"onnx"``) and ``windows`` (the most windows one prediction scores; None: all).
    """

    def __init__(self, card: dict[str, Any], module: nn.Module | None = None, session: Any = None,
                 hop: float | None = None, windows: int | str | None = None):
        self.card = card
        self.classes: list[str] = list(card["classes"])
        self.preset = Preset.from_dict(card["preset"])
        hop = card.get("predict_hop") if hop is None else hop  # a package may carry its default hop
        self.hop = hop
        self.window_preset = self.preset
        if hop is not None:  # the step between prediction windows; training chunks are unchanged
            if self.preset.chunk_seconds is None:
                raise MelgenreError(f"--hop needs a model on a chunked preset; {self.preset.name!r} "
                                    "predicts back-to-back windows of its duration")
            if not hop > 0:
                raise MelgenreError(f"--hop must be positive, got {hop}")
            self.window_preset = dataclasses.replace(self.preset, chunk_hop_seconds=float(hop), frames_per_hop=None)
        #: The most windows one prediction scores, spread over a longer recording (None: every window):
        #: ``windows`` ("all" for None), else the card's ``predict_windows``, else windows.default_windows.
        self.windows: int | None = windows_setting(card, self.window_preset, windows)
        #: Images per forward pass (memory grows with it): the card's ``predict_batch``, else
        #: :data:`PREDICT_BATCH` of the architecture, else :data:`BATCH_SIZE`.
        architecture = (card.get("model") or {}).get("name")
        self.batch_size = int(card.get("predict_batch") or PREDICT_BATCH.get(architecture, BATCH_SIZE))
        self.model_id: str = card["model_id"]
        #: Temperature of the card's calibration (1 without one): scales the track probabilities and each
        #: window's (:func:`tempered`), never their order.
        self.temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
        #: Class centres of the training tracks' embeddings for the "not music" score (melgenre.trust); None: unknown.
        self.trust_centres: np.ndarray | None = None
        self.backend = "torch" if module is not None else "onnx"
        self._module = channels_last(module.eval()) if module is not None else None
        self._session = session

    @property
    def loaded(self) -> bool:
        """Whether the model can predict: False for one made from a card alone (its ids and windows only)."""
        return self._module is not None or self._session is not None

    @property
    def calibration_id(self) -> str:
        """12 hex digits of the card's ``calibration`` and ``trust`` entries: the same weights (model
        id) recalibrated give other probabilities and flags ("" for an uncalibrated model)."""
        parts = {k: self.card[k] for k in ("calibration", "trust") if k in self.card}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12] if parts else ""

    def __repr__(self) -> str:
        return (f"GenreModel({self.model_id!r}, backend={self.backend!r}, preset={self.preset.name!r}, "
                f"classes={len(self.classes)}, windows={self.windows or 'all'})")

    @functools.cached_property
    def _has_embedding(self) -> bool:
        """The ONNX graph has an ``embedding`` output (files exported before it existed do not)."""
        return any(o.name == "embedding" for o in self._session.get_outputs())

    def clip_images(self, y: np.ndarray) -> tuple[np.ndarray, list[float], bool]:
        """:func:`window_images` of mono samples at ``preset.sr``, with this model's prediction hop
        (every window, however long the clip)."""
        with blas_controller().limit(limits=1, user_api="blas"):
            return window_images(y, self.window_preset)

    def windows_of(self, source: str | Path | bytes | np.ndarray, sr: int | None = None,
                   name: str | None = None, exclude: Sequence[int] = (), more: int | None = None
                   ) -> tuple[Windows, str]:
        """The windows :meth:`predict` scores first of a file, its bytes or samples (at most :attr:`windows`,
        spread over a longer recording; a file is then read only there), and the name to report; with
        ``exclude`` (an earlier sample's ``indices``) up to ``more`` other windows instead (None: all)."""
        most = more if exclude else self.windows
        with blas_controller().limit(limits=1, user_api="blas"):
            if isinstance(source, np.ndarray):
                y, label = self._samples(source, sr, name)
                return array_windows(y, self.window_preset, most, exclude), label
            label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
            return file_windows(source, self.window_preset, most, name=label, exclude=exclude), label

    def recheck(self, source: str | Path | bytes | np.ndarray, w: Windows, probs: np.ndarray,
                emb: np.ndarray | None, sr: int | None = None, name: str | None = None
                ) -> tuple[Windows, np.ndarray, np.ndarray | None]:
        """A sample's windows and their :meth:`window_outputs`; while the rule of
        :func:`melgenre.windows.more_windows` asks for more (of the sample's calibrated track
        probabilities), that many more windows, spread over those left, are scored and merged in time order."""
        while extra := more_windows(tempered(probs.mean(axis=0, keepdims=True), self.temperature)[0], w):
            rest, _ = self.windows_of(source, sr, name, exclude=w.indices, more=extra)
            more, more_emb = self.window_outputs(rest.images)
            w, (probs, emb) = merge(w, rest, (probs, more), (emb, more_emb))
        return w, probs, emb

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of mel images.

        Parameters
        ----------
        images : np.ndarray
            ``(N, H, W)`` float32 images made with this model's preset.

        Returns
        -------
        np.ndarray
            ``(N, C)`` calibrated softmax probabilities (of the logits divided by :attr:`temperature`),
            computed in batches of :attr:`batch_size`.
        """
        return tempered(self.window_outputs(images)[0], self.temperature)

    def window_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The images' softmax probabilities before calibration (what :meth:`prediction` takes) and, from
        the same forward pass, their embeddings (:meth:`embed_images`) when the "not music" score can
        use them (a stored :attr:`trust_centres`, and with ONNX a graph with an ``embedding`` output),
        else None."""
        if self._module is not None:
            logits, emb = forward_outputs(self._module, images, embeddings=self.trust_centres is not None,
                                          batch=self.batch_size)
        else:
            names = ["logits"] + (["embedding"] if self.trust_centres is not None and self._has_embedding else [])
            x = np.ascontiguousarray(np.asarray(images, dtype=np.float32)[:, None])
            b = self.batch_size
            out = [self._session.run(names, {"mel": x[i:i + b]}) for i in range(0, len(x), b)]
            logits = np.concatenate([o[0] for o in out]) if out else np.zeros((0, len(self.classes)), dtype=np.float32)
            emb = np.concatenate([o[1] for o in out]) if out and len(names) == 2 else None
        return softmax(logits), emb

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of mel images: the input of the model's last linear layer (its penultimate features).

        Parameters
        ----------
        images : np.ndarray
            ``(N, H, W)`` float32 images made with this model's preset.

        Returns
        -------
        np.ndarray
            ``(N, D)`` float32, computed in batches of :attr:`batch_size` (for the shipped
            musicnn model: its pooled embedding after the head's standardisation).

        Raises
        ------
        MelgenreError
            The model was loaded with the ONNX backend (embeddings need the torch module).
        """
        if self._module is None:
            raise MelgenreError(f"model {self.model_id}: embeddings need the torch backend, not {self.backend}")
        return forward_outputs(self._module, images, embeddings=True, batch=self.batch_size)[1]

    def _samples(self, source: str | Path | bytes | np.ndarray, sr: int | None, name: str | None) -> tuple[np.ndarray, str]:
        """Mono float32 audio at the preset's rate, and the name to report."""
        if not isinstance(source, np.ndarray):
            label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
            return audio.load(source, sr=self.preset.sr, name=label).samples, label
        label = name or "<array>"
        if sr is None:
            raise MelgenreError(f"{label}: pass sr= (the sample rate) with a numpy array")
        if source.ndim not in (1, 2) or (source.ndim == 2 and source.shape[1] > source.shape[0]):
            raise MelgenreError(f"{label}: expected audio of shape (samples,) or (samples, channels), "
                                f"got {source.shape}")
        y = np.asarray(source)
        if np.issubdtype(y.dtype, np.signedinteger):  # PCM integers -> [-1, 1)
            y = y / np.float32(np.iinfo(y.dtype).max)
        y = audio.to_mono(y.astype(np.float32, copy=False))
        if y.size == 0 or not np.all(np.isfinite(y)):
            raise MelgenreError(f"{label}: the array is empty or holds NaN/infinite samples")
        return np.ascontiguousarray(audio.resample(y, int(sr), self.preset.sr)), label

    def predict(self, source: str | Path | bytes | np.ndarray, sr: int | None = None, top_k: int = 3,
                name: str | None = None) -> Prediction:
        """Predict the genre of one clip of any length.

        Parameters
        ----------
        source : path, bytes or np.ndarray
            An audio file (any format :func:`melgenre.audio.load` reads), its raw bytes, or
            samples of shape ``(T,)`` or ``(T, channels)`` (downmixed and resampled).
        sr : int, optional
            Sample rate of an array ``source`` (required for arrays, ignored otherwise).
        top_k : int
            How many classes ``Prediction.top`` lists (at most all classes).
        name : str, optional
            Name used in the result and in error messages (default: the path, ``<bytes>`` or
            ``<array>``).

        Returns
        -------
        Prediction
            Track-level probabilities (mean over the scored windows: at most :attr:`windows`, spread
            over the recording, or every window when those are too close to call) and per-window detail.

        Raises
        ------
        AudioDecodeError
            The file or bytes cannot be decoded.
        MelgenreError
            An array without ``sr``, of the wrong shape, empty or non-finite.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        w, label = self.windows_of(source, sr, name)
        probs, emb = self.window_outputs(w.images)
        w, probs, emb = self.recheck(source, w, probs, emb, sr, name)
        return self.prediction(label, probs, w.starts, duration=w.duration, padded=w.padded, silent=w.silent,
                               top_k=top_k, window_embeddings=emb, windows_total=w.total)

    def prediction(self, source: str, window_probs: np.ndarray, window_starts: list[float], duration: float,
                   padded: bool, silent: bool, top_k: int = 3,
                   window_embeddings: np.ndarray | None = None, windows_total: int | None = None) -> Prediction:
        """The :class:`Prediction` of one clip from its windows' uncalibrated probabilities (from
        :meth:`window_outputs`); the track's probabilities are their mean, then the card's temperature
        (:func:`tempered`), and ``window_probabilities`` are each window's calibrated ones.

        :meth:`predict` and batch paths that run the windows of many files through the model
        together both end here, so a result never depends on how it was batched. The "unsure" and
        "not_music" flags follow the card's ``trust`` thresholds (:func:`melgenre.trust.trust_flags`);
        "not_music" needs ``window_embeddings`` (from :meth:`window_outputs`) except for silent clips.
        ``windows_total`` is the number of windows of the whole recording (default: those given).
        """
        from melgenre.trust import LEGACY_METHOD, novelty, trust_flags

        ranked = ranked_classes(self.classes, window_probs, top_k, self.temperature)
        window_probs = tempered(window_probs, self.temperature)
        method = (self.card.get("trust") or {}).get("novelty", LEGACY_METHOD)
        score = (novelty(window_embeddings, self.trust_centres, method)
                 if window_embeddings is not None and self.trust_centres is not None and len(window_embeddings) else None)
        return Prediction(
            source=source,
            **ranked,
            window_probabilities=window_probs,
            window_starts=window_starts,
            duration=duration,
            padded=padded,
            silent=silent,
            model_id=self.model_id,
            flags=trust_flags(self.card, ranked["top"][0][1], score, silent),
            novelty=score,
            window_seconds=self.window_seconds,
            segments=timeline.segments(window_probs, window_starts, self.classes, self.window_seconds, duration),
            windows_total=len(window_starts) if windows_total is None else windows_total,
        )

    @property
    def window_seconds(self) -> float:
        """Length of one prediction window in seconds (a chunk, or ``duration`` for unchunked presets)."""
        return float(self.preset.chunk_seconds or self.preset.duration or 0.0)


def onnx_session(model: str | Path | bytes, label: str) -> Any:
    """An ONNX Runtime CPU session of a file or its bytes; a one-line error naming ``label`` when unreadable."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=_ONNX_PROVIDERS)
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types for bad files)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelgenreError(f"{label}: not a readable ONNX model ({reason})") from None


def _from_onnx(path: Path, hop: float | None = None, windows: int | str | None = None) -> GenreModel:
    if not path.is_file():
        raise MelgenreError(f"{path}: no such file")
    session = onnx_session(path, str(path))
    meta = session.get_modelmeta().custom_metadata_map
    if "melgenre_card" not in meta:
        raise MelgenreError(f"{path}: no melgenre card in the ONNX metadata (export it with `melgenre export`)")
    try:
        card = json.loads(meta["melgenre_card"])
    except json.JSONDecodeError:
        raise MelgenreError(f"{path}: the melgenre card in the ONNX metadata is not valid JSON") from None
    model = GenreModel(check_card(path, card), session=session, hop=hop, windows=windows)
    if "melgenre_trust_centres" in meta:
        values = np.frombuffer(base64.b64decode(meta["melgenre_trust_centres"]), dtype="<f4")
        model.trust_centres = values.reshape(-1, int(meta["melgenre_trust_dim"])).copy()
    elif "melgenre_trust_centre" in meta:  # exported before class centres: one centre
        model.trust_centres = np.frombuffer(base64.b64decode(meta["melgenre_trust_centre"]), dtype="<f4")[None].copy()
    return model


def auto_backend() -> str:
    """``"onnx"`` when ONNX Runtime can be imported (faster on CPU), else ``"torch"``."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def resolve_backend(path: str | Path, backend: str | None) -> str:
    """The backend :func:`load_model` uses for ``path``: ``backend``, with None -> ``"onnx"`` for an
    ``.onnx`` file else ``"torch"``, and ``"auto"`` -> ``"onnx"`` for an ``.onnx`` file else
    :func:`auto_backend` (an unknown name is returned as given, for the caller to reject)."""
    is_onnx = Path(path).suffix == ".onnx"
    if backend == "auto":
        return "onnx" if is_onnx else auto_backend()
    return backend or ("onnx" if is_onnx else "torch")


def load_model(path: str | Path | None = None, backend: str | None = None, hop: float | None = None,
               windows: int | str | None = None) -> GenreModel:
    """Load a model for prediction.

    Parameters
    ----------
    path : path, optional
        A run directory (its best checkpoint, else the last), a ``.ckpt`` inside a run
        directory, a package ``.json`` or ``.safetensors``, an ``.onnx`` file written by
        :func:`melgenre.export.export_onnx_file`, or the name of a shipped package (:func:`melgenre.package.shipped_models`:
        ``default``, ``melcnn``) when no such file exists. Default: the installed default
        package (:func:`melgenre.package.default_model_path`).
    backend : {"torch", "onnx", "auto"}, optional
        ``"onnx"`` runs the model with ONNX Runtime on CPU (a non-ONNX model is exported in
        memory first); ``"auto"`` is ``"onnx"`` when ONNX Runtime is installed, else ``"torch"``.
        Default: ``"torch"``, or ``"onnx"`` for an ``.onnx`` file.
    hop : float, optional
        Seconds between the starts of prediction windows, for chunked presets (default: the
        preset's ``chunk_hop_seconds``). The chunk length (``fast``: 3 s) gives back-to-back
        windows: about half the compute of the default 1.5 s, for a small loss of accuracy
        (see docs/results/melcnn.md).
    windows : int or "all", optional
        The most windows one prediction scores, spread evenly over a longer recording, of which
        only those stretches are decoded (:mod:`melgenre.windows`); ``"all"`` scores every
        window. Default: the card's ``predict_windows``, else
        :func:`~melgenre.windows.default_windows` (as many as a 30-s clip has, at least 3: the
        default model 5, ``fast`` models 18).

    Returns
    -------
    GenreModel

    Raises
    ------
    MelgenreError
        No default model is installed, or the source is missing or unreadable (the message
        names the file).
    """
    if path is None:
        path = default_model_path()
        if not path.is_file():
            raise MelgenreError("no default model is installed; pass --model (a run directory, .ckpt, "
                                "package .json or .onnx)")
    path = resolve_shipped(path)
    is_onnx = path.suffix == ".onnx"
    backend = resolve_backend(path, backend)
    if backend not in BACKENDS:
        raise MelgenreError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if is_onnx:
        if backend != "onnx":
            raise MelgenreError(f"{path}: an ONNX model runs only with the onnx backend")
        return _from_onnx(path, hop, windows)
    module, card = load_torch(path)
    centres = stored_trust_centres(path, card)
    if backend == "torch":
        model = GenreModel(card, module=module, hop=hop, windows=windows)
    else:
        with tempfile.TemporaryDirectory(prefix="melgenre-onnx-") as tmp:  # private (0700), removed at once
            onnx_path = Path(tmp) / "model.onnx"
            write_onnx(module, card, onnx_path)
            model = GenreModel(card, session=onnx_session(onnx_path.read_bytes(), str(path)), hop=hop,
                               windows=windows)
    model.trust_centres = centres
    return model


# -- many files --------------------------------------------------------------------------------

def predict_paths(paths: Iterable[str | Path], model: GenreModel,
                  top_k: int = 3) -> Iterator[tuple[Path, Prediction | None, str | None]]:
    """Predict every file of ``paths`` (directories are expanded with :func:`melgenre.audio.expand_paths`).

    Parameters
    ----------
    paths : iterable of path
        Files and directories.
    model : GenreModel
        The model to use.
    top_k : int
        Classes per ``Prediction.top``.

    Yields
    ------
    tuple
        ``(path, prediction, None)`` or, when the file fails, ``(path, None, reason)``;
        one file's failure never stops the run.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    for path in audio.expand_paths(paths):
        try:
            yield path, model.predict(path, top_k=top_k), None
        except AudioDecodeError as exc:
            yield path, None, exc.reason
        except MelgenreError as exc:
            yield path, None, str(exc)
        except Exception as exc:  # noqa: BLE001  (a batch run reports any per-file failure and goes on)
            yield path, None, f"{type(exc).__name__}: {exc}"
