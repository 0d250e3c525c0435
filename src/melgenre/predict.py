"""Genre prediction for audio files of any length, with PyTorch or ONNX Runtime.

Where a model comes from (:func:`load_model`):

* a **model package**: ``<stem>.safetensors`` (the model's ``state_dict``) beside ``<stem>.json``
  (the *card*: format, model config, classes, feature preset, model id, metrics, training facts),
  written by :func:`save_package`; the default model is the package ``melgenre/weights/default.json``;
* a **run directory** of ``melgenre train`` or one of its ``.ckpt`` files (the preset is read from
  the run's feature file, the metrics from its ``metrics.json``);
* an **ONNX file** written by :func:`export_onnx_file` (the card is in its metadata).

How a clip of any length becomes one prediction (:mod:`melgenre.windows`): chunked presets
(``fast``: 3-s chunks, hop 1.5 s) take the chunks of the whole clip, with no 30-s limit;
unchunked presets (``v1``, ``v2``: one image per 30 s) cut the clip into back-to-back windows of
``duration`` seconds. A long recording is scored on at most ``windows`` of them, spread over it
(default :func:`melgenre.windows.default_windows` or the card's ``predict_windows``), and only
those stretches are decoded. The track's probabilities are the mean of the windows' softmax
outputs, the same rule as track-level evaluation after training.

>>> from melgenre import load_model
>>> model = load_model("runs/melcnn-fast")  # doctest: +SKIP
>>> model.predict("song.mp3").top  # doctest: +SKIP
[('rock', 0.81), ('metal', 0.11), ('blues', 0.03)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from melgenre import __version__, audio, features, timeline
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.features import Preset
from melgenre.models import build_from_config, channels_last
from melgenre.timeline import Segment
from melgenre.utils import atomic_path, run_checkpoint
from melgenre.windows import (Windows, array_windows, close_call, default_windows, file_windows, merge,
                              parse_windows, window_images)

#: ``format`` field of a model card.
CARD_FORMAT = "melgenre-model/1"

#: Folder (an importlib resource) holding the default model package ``default.json`` + ``.safetensors``.
DEFAULT_MODEL_DIR = resources.files("melgenre").joinpath("weights")

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


def _ranked(classes: list[str], window_scores: np.ndarray, top_k: int, temperature: float = 1.0) -> dict[str, Any]:
    """Clip-level ``label``, ``probabilities`` and ``top`` (top-k, best first, stable on ties)
    from per-window scores ``(W, C)``: their mean over the windows, :func:`tempered` by ``temperature``
    (which never changes the order)."""
    probs = tempered(window_scores.mean(axis=0, dtype=np.float64)[None], temperature)[0]
    order = np.argsort(-probs, kind="stable")
    return {"label": classes[order[0]], "probabilities": {c: float(p) for c, p in zip(classes, probs)},
            "top": [(classes[i], float(probs[i])) for i in order[:top_k]]}


class _JsonDict:
    """Base of the prediction dataclasses: JSON export, and ``flags`` kept in step with ``silent``/``padded``."""

    def __post_init__(self) -> None:
        derived = [flag for flag in ("silent", "padded") if getattr(self, flag)]
        self.flags[:] = derived + [flag for flag in self.flags if flag not in derived]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: plain lists and floats rounded to 6 decimals."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(eq=False)  # an array field makes field-wise == ambiguous: compare by identity
class Prediction(_JsonDict):
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


def _last_linear(module: nn.Module) -> nn.Linear:
    """The model's last linear layer (its output layer): its input is the model's embedding."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


@contextlib.contextmanager
def _captured_embeddings(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of ``module`` appends its last linear layer's input
    ``(N, D)`` to the yielded list."""
    captured: list[torch.Tensor] = []
    handle = _last_linear(module).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
    try:
        yield captured
    finally:
        handle.remove()


def forward_outputs(module: nn.Module, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(N, C)`` of a torch model on images ``(N, H, W)``, in batches of ``batch``, and
    with ``embeddings`` the input of its last linear layer ``(N, D)`` from the same forward pass (else None)."""
    last = _last_linear(module)
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32)[:, None])
    logits = []
    with _captured_embeddings(module) if embeddings else contextlib.nullcontext([]) as captured:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                logits.append(module(torch.from_numpy(x[i:i + batch])).float().numpy())
    num_classes = last.out_features
    out = np.concatenate(logits) if logits else np.zeros((0, num_classes), dtype=np.float32)
    if not embeddings:
        return out, None
    emb = torch.cat(captured).float().numpy() if captured else np.zeros((0, last.in_features), dtype=np.float32)
    return out, emb


def _softmax(logits: np.ndarray) -> np.ndarray:
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
    return _softmax(logp).astype(probs.dtype, copy=False)


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
        with _blas_controller().limit(limits=1, user_api="blas"):
            return window_images(y, self.window_preset)

    def windows_of(self, source: str | Path | bytes | np.ndarray, sr: int | None = None,
                   name: str | None = None, exclude: Sequence[int] = (), more: int | None = None
                   ) -> tuple[Windows, str]:
        """The windows :meth:`predict` scores first of a file, its bytes or samples (at most :attr:`windows`,
        spread over a longer recording; a file is then read only there), and the name to report; with
        ``exclude`` (an earlier sample's ``indices``) up to ``more`` other windows instead (None: all)."""
        most = more if exclude else self.windows
        with _blas_controller().limit(limits=1, user_api="blas"):
            if isinstance(source, np.ndarray):
                y, label = self._samples(source, sr, name)
                return array_windows(y, self.window_preset, most, exclude), label
            label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
            return file_windows(source, self.window_preset, most, name=label, exclude=exclude), label

    def recheck(self, source: str | Path | bytes | np.ndarray, w: Windows, probs: np.ndarray,
                emb: np.ndarray | None, sr: int | None = None, name: str | None = None
                ) -> tuple[Windows, np.ndarray, np.ndarray | None]:
        """A sample's windows and their :meth:`window_outputs`; while the sample is too close to call
        (:func:`melgenre.windows.close_call` of its calibrated track probabilities), twice as many more
        windows, spread over those left, are scored and merged in time order (5, 15, 45, ... windows)."""
        while close_call(tempered(probs.mean(axis=0, keepdims=True), self.temperature)[0], w):
            rest, _ = self.windows_of(source, sr, name, exclude=w.indices, more=2 * len(w.indices))
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
        return _softmax(logits), emb

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

        ranked = _ranked(self.classes, window_probs, top_k, self.temperature)
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


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """NumPy's BLAS thread pool. The mel's matrix products are small: on more than one BLAS thread
    they gain nothing, and the idle threads keep spinning against the model's own thread pool
    (about 1.5x the latency of a whole prediction on 2 cores)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


# -- reading models ----------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MelgenreError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise MelgenreError(f"{path}: expected a JSON object")
    return data


def _weights_bytes(module: nn.Module) -> bytes:
    """The module's state_dict as safetensors bytes (deterministic: what a package stores)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def _model_id(name: str, weights: bytes) -> str:
    return f"{name}-{hashlib.sha256(weights).hexdigest()[:12]}"


def _build(path: Path, model_config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    try:
        module = build_from_config(model_config)
        module.load_state_dict(state, strict=True)
    except (MelgenreError, RuntimeError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelgenreError(f"{path}: weights do not fit the model config ({reason})") from None
    return module.eval()


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_card(run_dir: Path, hparams: dict[str, Any]) -> dict[str, Any]:
    """Card fields a run directory knows: preset (from its feature file), metrics, training facts."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    metrics_path = run_dir / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.exists() else {}
    candidates = [p for p in (metrics.get("data"), (cfg.get("data") or {}).get("path")) if p]
    data = next((Path(p) for p in candidates if Path(p).is_file()), None)
    if data is None:
        raise MelgenreError(f"{run_dir}: cannot find the run's feature file "
                            f"({', '.join(map(str, candidates)) or 'no data.path'}), which holds its preset")
    from melgenre.store import MelStore

    with MelStore(data) as store:
        preset = store.preset.to_dict()
        described = {"file": data.name, "root": str(store.attrs.get("root", "")),
                     "n_tracks": int(store.attrs.get("n_tracks", 0)),
                     "input_hash": str(store.attrs.get("input_hash", "")), "preset": store.preset.name}
        if "embedding" in store.attrs:  # trained on cached tagger embeddings (melgenre embed)
            described["embedding"] = json.loads(store.attrs["embedding"])
        if "augment" in store.attrs:  # audio variants among the training rows (prepare/embed --augment)
            described["augment"] = json.loads(store.attrs["augment"])
    splits_path = run_dir / "splits.json"
    splits = _read_json(splits_path) if splits_path.exists() else {}
    if splits.get("train"):  # `melgenre score` leaves these out of an evaluation
        described["tracks"] = sorted(splits["train"])
    card_metrics = {split: {level: _scalars(m) for level, m in levels.items()}
                    for split, levels in metrics.get("results", {}).items()}
    card_metrics["split_tracks"] = {k: len(v) for k, v in splits.items()}
    card_metrics |= _scalars({k: metrics[k] for k in ("epochs", "best_epoch") if k in metrics})
    return {
        "preset": preset,
        "metrics": card_metrics,
        "training": {"config": cfg.get("name", run_dir.name), "run": run_dir.name, "seed": cfg.get("seed"),
                     "optim": hparams.get("optim"), "data": described},
    }


def _from_checkpoint(ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a training checkpoint inside a run directory."""
    if not ckpt.is_file():
        raise MelgenreError(f"{ckpt}: no such checkpoint")
    try:  # weights_only: a checkpoint cannot run code while loading
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        hparams, full_state = dict(raw["hyper_parameters"]), raw["state_dict"]
        classes = list(hparams["classes"])
    except Exception as exc:  # noqa: BLE001  (corrupt zip, pickle or a foreign checkpoint: anything can come out)
        raise MelgenreError(f"{ckpt}: not a readable melgenre checkpoint ({type(exc).__name__})") from None
    run_dir = ckpt.parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise MelgenreError(f"{ckpt}: not inside a run directory (no {run_dir / 'config.yaml'}); "
                            "its preset is unknown")
    state = {k[len("model."):]: v for k, v in full_state.items() if k.startswith("model.")}
    config = build_from_config(hparams["model"], classes=classes).config
    module = _build(ckpt, config, state)
    card = {"format": CARD_FORMAT, "model": config, "classes": classes,
            "model_id": _model_id(config["name"], _weights_bytes(module)),
            **_run_card(run_dir, hparams), "created_with": __version__}
    return module, card


def _check_card(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    if card.get("format") != CARD_FORMAT:
        raise MelgenreError(f"{path}: not a melgenre model card (format {card.get('format')!r}, "
                            f"expected {CARD_FORMAT!r})")
    missing = [k for k in ("model", "classes", "preset", "model_id") if k not in card]
    if missing:
        raise MelgenreError(f"{path}: model card lacks {', '.join(missing)}")
    try:
        Preset.from_dict(card["preset"])
    except MelgenreError as exc:
        raise MelgenreError(f"{path}: {exc}") from None
    return card


def _from_package(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a package (``path`` is its .json or .safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    card_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not card_path.is_file():
        raise MelgenreError(f"{card_path}: no such file (a model package is <stem>.json + <stem>.safetensors)")
    card = _check_card(card_path, _read_json(card_path))
    if not weights_path.is_file():
        raise MelgenreError(f"{weights_path}: no such file (the weights of the package {card_path.name})")
    data = weights_path.read_bytes()
    if not card["model_id"].endswith(hashlib.sha256(data).hexdigest()[:12]):
        raise MelgenreError(f"{weights_path}: weights do not match the card's model_id {card['model_id']}")
    try:
        state = load(data)
    except (SafetensorError, ValueError) as exc:
        raise MelgenreError(f"{weights_path}: cannot read safetensors ({exc})") from None
    return _build(weights_path, card["model"], state), card


def package_card(source: str | Path | None = None) -> dict[str, Any] | None:
    """The card of a model package (as :func:`load_model` finds it; None: the default model) without
    loading its weights; None for other sources (run directories, checkpoints, ONNX files).

    Raises
    ------
    MelgenreError
        The package's card is missing or not a melgenre model card.
    """
    path = default_model_path() if source is None else _resolve_shipped(source)
    if path.suffix not in (".json", ".safetensors"):
        return None
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise MelgenreError(f"{card_path}: no such file (a model package is <stem>.json + <stem>.safetensors)")
    return _check_card(card_path, _read_json(card_path))


def _load_torch(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a run directory, checkpoint or package."""
    path = Path(source)
    if path.is_dir():
        return _from_checkpoint(run_checkpoint(path))
    if path.suffix == ".ckpt":
        return _from_checkpoint(path)
    if path.suffix in (".json", ".safetensors"):
        return _from_package(path)
    if path.suffix == ".onnx":
        raise MelgenreError(f"{path}: an ONNX file cannot be turned back into a PyTorch model; "
                            "use its run directory or package")
    if not path.exists():
        raise MelgenreError(f"{path}: no such file or directory")
    raise MelgenreError(f"{path}: not a model (use a run directory, a .ckpt, a package .json/.safetensors "
                        "or an exported .onnx)")


class _WithEmbedding(nn.Module):
    """A model whose forward returns its logits and its last linear layer's input (for the ONNX export)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        with _captured_embeddings(self.module) as captured:
            logits = self.module(x)
        return logits, captured[0]


def _write_onnx(module: nn.Module, card: dict[str, Any], path: Path, centres: np.ndarray | None = None) -> None:
    """Export ``module`` to ``path`` with the card (and the "not music" ``centres`` (K, D), if any) in the
    ONNX metadata; the graph outputs ``logits`` and ``embedding`` (the last linear layer's input)."""
    import base64

    import onnx

    from melgenre.models import export_onnx

    h, w = Preset.from_dict(card["preset"]).image_shape()
    export_onnx(_WithEmbedding(module), path, input_shape=(1, h, w), opset=17, output_names=("logits", "embedding"))
    proto = onnx.load(str(path))
    props = {"melgenre_card": json.dumps(card), "classes": json.dumps(card["classes"]),
             "preset": json.dumps(card["preset"])}
    if centres is not None:
        centres = np.atleast_2d(np.asarray(centres, dtype="<f4"))
        props["melgenre_trust_centres"] = base64.b64encode(centres.tobytes()).decode()
        props["melgenre_trust_dim"] = str(centres.shape[1])
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _onnx_session(model: str | Path | bytes, label: str) -> Any:
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
    session = _onnx_session(path, str(path))
    meta = session.get_modelmeta().custom_metadata_map
    if "melgenre_card" not in meta:
        raise MelgenreError(f"{path}: no melgenre card in the ONNX metadata (export it with `melgenre export`)")
    try:
        card = json.loads(meta["melgenre_card"])
    except json.JSONDecodeError:
        raise MelgenreError(f"{path}: the melgenre card in the ONNX metadata is not valid JSON") from None
    model = GenreModel(_check_card(path, card), session=session, hop=hop, windows=windows)
    import base64

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


def default_model_path() -> Path:
    """Path of the default package's card (``melgenre/weights/default.json``); it may not exist."""
    return shipped_model_path("default")


def shipped_model_path(name: str) -> Path:
    """A model shipped in ``melgenre/weights`` by name: a package's card (``default``, ``melcnn``) or
    an ONNX file (``melcnn-int8``)."""
    onnx = DEFAULT_MODEL_DIR.joinpath(f"{name}.onnx")
    return Path(str(onnx if onnx.is_file() else DEFAULT_MODEL_DIR.joinpath(f"{name}.json")))


def _resolve_shipped(source: str | Path) -> Path:
    """``source`` as a path; the name of a shipped model (and no such file here) is its shipped file."""
    path = Path(source)
    return shipped_model_path(str(source)) if not path.exists() and str(source) in shipped_models() else path


def shipped_models() -> list[str]:
    """Names of the models shipped with melgenre (``default`` first): packages and ONNX files."""
    names = sorted(p.name.rsplit(".", 1)[0] for p in DEFAULT_MODEL_DIR.iterdir()
                   if p.name.endswith((".json", ".onnx")))
    return sorted(names, key=lambda n: n != "default")


def load_model(path: str | Path | None = None, backend: str | None = None, hop: float | None = None,
               windows: int | str | None = None) -> GenreModel:
    """Load a model for prediction.

    Parameters
    ----------
    path : path, optional
        A run directory (its best checkpoint, else the last), a ``.ckpt`` inside a run
        directory, a package ``.json`` or ``.safetensors``, an ``.onnx`` file written by
        :func:`export_onnx_file`, or the name of a shipped package (:func:`shipped_models`:
        ``default``, ``melcnn``) when no such file exists. Default: the installed default
        package (:func:`default_model_path`).
    backend : {"torch", "onnx", "auto"}, optional
        ``"onnx"`` runs the model with ONNX Runtime on CPU (a non-ONNX model is exported in
        memory first); ``"auto"`` is ``"onnx"`` when ONNX Runtime is installed, else ``"torch"``.
        Default: ``"torch"``, or ``"onnx"`` for an ``.onnx`` file.
    hop : float, optional
        Seconds between the starts of prediction windows, for chunked presets (default: the
        preset's ``chunk_hop_seconds``). The chunk length (``fast``: 3 s) gives back-to-back
        windows: about half the compute of the default 1.5 s, for a small loss of accuracy
        (see docs/results.md).
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
    path = _resolve_shipped(path)
    is_onnx = path.suffix == ".onnx"
    backend = resolve_backend(path, backend)
    if backend not in BACKENDS:
        raise MelgenreError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if is_onnx:
        if backend != "onnx":
            raise MelgenreError(f"{path}: an ONNX model runs only with the onnx backend")
        return _from_onnx(path, hop, windows)
    module, card = _load_torch(path)
    centres = _trust_centres(path, card)
    if backend == "torch":
        model = GenreModel(card, module=module, hop=hop, windows=windows)
    else:
        with tempfile.TemporaryDirectory(prefix="melgenre-onnx-") as tmp:  # private (0700), removed at once
            onnx_path = Path(tmp) / "model.onnx"
            _write_onnx(module, card, onnx_path)
            model = GenreModel(card, session=_onnx_session(onnx_path.read_bytes(), str(path)), hop=hop,
                               windows=windows)
    model.trust_centres = centres
    return model


def _trust_centres(path: Path, card: dict[str, Any]) -> np.ndarray | None:
    """The "not music" class centres (K, D) stored beside a package (see :mod:`melgenre.trust`); None for other sources."""
    if path.suffix not in (".json", ".safetensors"):
        return None
    from melgenre.trust import load_reference

    reference = load_reference(path.with_suffix(".json"), card)
    return None if reference is None else reference["centres"]


# -- writing models ----------------------------------------------------------------------------

#: What a card says about pretrained weights a model starts from (by registry name).
PRETRAINED_NOTES = {
    "musicnn": {
        "weights": "musicnn 0.1.0 ({pretrained}): Pons & Serra 2019, trained on the {dataset}'s 50 most common tags",
        "licence": "ISC (melgenre/weights/MUSICNN_LICENSE.md)",
        "unknown": "whether GTZAN recordings (or other recordings of its artists) were among the tagger's "
                   "training audio; the Million Song Dataset covers many of GTZAN's artists",
    },
}
PRETRAINED_NOTES["musicnn_vgg"] = PRETRAINED_NOTES["musicnn"]
_TAG_DATASETS = {"msd": "Million Song Dataset", "mtt": "MagnaTagATune"}


def estimate_from_cv(path: str | Path) -> dict[str, Any]:
    """The card's summary of a cross-validation result (``cv*.json`` of :func:`melgenre.train.cross_validate`):
    protocol, folds, how epochs were chosen, the pooled out-of-fold track metrics and per-class recall."""
    path = Path(path)
    cv = _read_json(path)
    if "pooled" not in cv:
        raise MelgenreError(f"{path}: not a cross-validation result (no 'pooled' metrics)")
    pooled = cv["pooled"]
    recall_intervals = {c["class"]: [round(v, 3) for v in c["recall_interval"]]
                        for c in pooled.get("per_class", []) if "recall_interval" in c}
    return {
        "protocol": cv.get("protocol", "stratified k-fold (same artists on both sides: optimistic)"),
        "source": f"{cv.get('name', '')}/{path.name}", "folds": cv.get("folds"), "selection": cv.get("selection"),
        "track": _scalars({k: pooled[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_precision",
                                                  "macro_recall", "macro_f1")}),
        "recall": {c["class"]: round(float(c["recall"]), 3) for c in pooled.get("per_class", [])},
        **({"recall_intervals": recall_intervals} if recall_intervals else {}),
        "balanced": _scalars(pooled.get("balanced", {})),
        "untrained_classes": cv.get("untrained_classes"),
        **({"intervals": pooled["intervals"]} if "intervals" in pooled else {}),
        **({"learnable": pooled["learnable"]} if "learnable" in pooled else {}),
    }


def save_package(source: str | Path, out: str | Path, estimates: Iterable[str | Path] = (),
                 hop: float | None = None, windows: int | str | None = None) -> Path:
    """Write a model package: ``<out>.safetensors`` (weights) and ``<out>.json`` (the card).

    Parameters
    ----------
    source : path
        A run directory (its best checkpoint, config, metrics and feature-file preset), a
        ``.ckpt`` inside one, or another package.
    out : path
        The package stem; any suffix is replaced. Both files are written atomically, the
        weights first.
    estimates : paths
        Cross-validation results (``cv-groups-last.json``, ``cv-last.json``, ...) of the model's
        recipe, summarised into the card's ``metrics.estimates`` (see :func:`estimate_from_cv`),
        artist-disjoint ones first.
    hop : float, optional
        Default seconds between prediction windows, stored in the card as ``predict_hop`` (chunked
        presets; ``load_model(hop=...)`` still overrides it). Default: the preset's own hop.
    windows : int or "all", optional
        The most windows one prediction scores, stored in the card as ``predict_windows``
        (``load_model(windows=...)`` still overrides it). Default: the source's, else
        :func:`~melgenre.windows.default_windows`.

    Returns
    -------
    Path
        The card (``.json``).
    """
    module, card = _load_torch(_resolve_shipped(source))
    out = Path(out)
    weights = _weights_bytes(module)
    card = {**card, "model_id": _model_id(card["model"]["name"], weights)}
    if hop is not None:
        if Preset.from_dict(card["preset"]).chunk_seconds is None or not hop > 0:
            raise MelgenreError(f"hop {hop}: needs a positive number and a model on a chunked preset")
        card["predict_hop"] = float(hop)
    if windows is not None:
        most = parse_windows(windows)
        card["predict_windows"] = "all" if most is None else most
    summaries = sorted((estimate_from_cv(p) for p in estimates), key=lambda e: "artist" not in e["protocol"])
    if summaries:
        card["metrics"] = {**card.get("metrics", {}), "estimates": summaries}
    note = PRETRAINED_NOTES.get(card["model"]["name"])
    pretrained = card["model"].get("pretrained")
    if note and pretrained:
        card["pretrained"] = {**note, "weights": note["weights"].format(
            pretrained=pretrained, dataset=_TAG_DATASETS.get(pretrained, pretrained))}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".safetensors")) as tmp:
        tmp.write_bytes(weights)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(card, indent=1) + "\n")
    return out.with_suffix(".json")


def export_onnx_file(source: str | Path, out: str | Path, int8_calibration: Sequence[str | Path] = (),
                     calibration_files: int = 32) -> Path:
    """Export a model to ONNX (opset 17, dynamic batch) with its card in the metadata.

    The graph's input is ``mel`` ``(batch, 1, H, W)`` and its output ``logits``
    ``(batch, C)``; ``metadata_props`` hold ``melgenre_card`` (the card as JSON), ``classes``
    and ``preset``, so :func:`load_model` can predict with the file alone.

    Parameters
    ----------
    source : path or str
        A run directory, a ``.ckpt`` inside one, a package ``.json``/``.safetensors``, or the
        name of a shipped package.
    out : path
        The ``.onnx`` file to write (atomically).
    int8_calibration : sequence of paths, optional
        Audio files and/or folders: when given, the model is quantized to int8
        (:func:`melgenre.models.quantize_int8`), its activation ranges taken from every window of
        up to ``calibration_files`` of these files (evenly spread over the sorted list). The card
        gets ``quantization`` and the model id ``-int8``.
    calibration_files : int
        The most files read for calibration.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    MelgenreError
        No calibration file could be decoded.
    """
    path = _resolve_shipped(source)
    module, card = _load_torch(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    centres = _trust_centres(path, card)
    if not int8_calibration:
        with atomic_path(out) as tmp:
            _write_onnx(module, card, tmp, centres=centres)
        return out
    from melgenre.models import quantize_int8
    from melgenre.models.export import INT8_METHOD

    windows = _calibration_windows(int8_calibration, Preset.from_dict(card["preset"]), calibration_files)
    card = {**card, "model_id": f"{card['model_id']}-int8",
            "quantization": {"method": INT8_METHOD, "of": card["model_id"], "calibration_files": len(windows),
                             "calibration_windows": sum(len(w) for w in windows)}}
    with tempfile.TemporaryDirectory(prefix="melgenre-onnx-") as tmp, atomic_path(out) as part:
        float_path = Path(tmp) / "model.onnx"
        _write_onnx(module, card, float_path, centres=centres)
        quantize_int8(float_path, part, (w[:, None] for w in windows))
    return out


def _calibration_windows(sources: Sequence[str | Path], preset: Preset, most: int) -> list[np.ndarray]:
    """The window images ``(W, H, W_img)`` of up to ``most`` decodable files of ``sources``."""
    files = expand_paths(sources)
    if len(files) > most:
        files = [files[i * len(files) // most] for i in range(most)]
    out = []
    for f in files:
        try:
            out.append(window_images(audio.load(f, sr=preset.sr).samples, preset)[0])
        except AudioDecodeError:
            continue  # a calibration set is a sample: an undecodable file is left out
    if not out:
        raise MelgenreError(f"int8 calibration: none of the {len(files)} files could be decoded "
                            f"({', '.join(map(str, sources))})")
    return out


# -- many files --------------------------------------------------------------------------------

def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files to predict: files as given, and audio files under directories (recursive, sorted).

    Directory scans keep files whose suffix is in :data:`melgenre.audio.AUDIO_EXTENSIONS` and
    skip hidden names (such as temp files being written). Duplicates are dropped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                          and f.suffix.lower() in audio.AUDIO_EXTENSIONS)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def predict_paths(paths: Iterable[str | Path], model: GenreModel,
                  top_k: int = 3) -> Iterator[tuple[Path, Prediction | None, str | None]]:
    """Predict every file of ``paths`` (directories are expanded with :func:`expand_paths`).

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
    for path in expand_paths(paths):
        try:
            yield path, model.predict(path, top_k=top_k), None
        except AudioDecodeError as exc:
            yield path, None, exc.reason
        except MelgenreError as exc:
            yield path, None, str(exc)
        except Exception as exc:  # noqa: BLE001  (a batch run reports any per-file failure and goes on)
            yield path, None, f"{type(exc).__name__}: {exc}"


# -- musicnn's own tags ------------------------------------------------------------------------

#: Tag sets of :func:`predict_tags`: musicnn trained on the Million Song Dataset or MagnaTagATune.
TAG_DATASETS = ("msd", "mtt")


@dataclass(eq=False)  # an array field makes field-wise == ambiguous: compare by identity
class TagPrediction(_JsonDict):
    """musicnn's own 50 tags of one clip: clip-level probabilities plus the per-window taggram.

    Tags are independent (sigmoid outputs, not a softmax): probabilities do not sum to 1.
    """

    source: str  # file path, or the name given for bytes / arrays
    dataset: str  # tag set: "msd" (Million Song Dataset) or "mtt" (MagnaTagATune)
    label: str  # most probable tag
    probabilities: dict[str, float]  # all 50 tags, clip level (mean over windows)
    top: list[tuple[str, float]]  # the top-k tags, most probable first
    window_taggram: np.ndarray  # (W, 50) tag probabilities of each 3-s window
    window_starts: list[float]  # start of each window in seconds
    duration: float  # length of the clip in seconds
    padded: bool  # the clip is shorter than one window and was zero-padded to it
    silent: bool  # the clip's peak is below melgenre.audio.SILENCE_PEAK
    model_id: str  # e.g. musicnn_msd-<sha256 of the shipped weights, 12 hex digits>
    flags: list[str] = field(default_factory=list)  # warnings, see FLAGS


class MusicnnTagger:
    """musicnn (Pons & Serra 2019) as a tagger of whole clips, made by :func:`load_tagger`.

    Attributes: ``dataset`` (``"msd"`` or ``"mtt"``), ``classes`` (its 50 tag names, as
    ``GenreModel.classes``), ``preset`` (the ``musicnn`` preset), ``model_id`` and ``backend``
    (always ``"torch"``). ``predict`` has :meth:`GenreModel.predict`'s signature, so
    :func:`predict_paths` runs a tagger over many files as it runs a genre model.
    """

    backend = "torch"
    _samples = GenreModel._samples  # only reads self.preset: path / bytes / array -> mono at preset.sr

    def __init__(self, dataset: str = "msd"):
        from melgenre.models import build
        from melgenre.models.musicnn import weights_file

        if dataset not in TAG_DATASETS:
            raise MelgenreError(f"unknown tag set {dataset!r}; use one of {', '.join(TAG_DATASETS)}")
        self.dataset = dataset
        self.preset = features.get_preset("musicnn")
        with torch.random.fork_rng(devices=[]):  # the unused genre head's random init leaves the global RNG alone
            self._module = build("musicnn", pretrained=dataset).eval()
        self.classes: list[str] = list(self._module.tags)
        weights = resources.files("melgenre.weights").joinpath(weights_file("musicnn", dataset)).read_bytes()
        self.model_id = _model_id(f"musicnn_{dataset}", weights)

    def __repr__(self) -> str:
        return f"MusicnnTagger({self.model_id!r}, dataset={self.dataset!r}, tags={len(self.classes)})"

    def clip_patches(self, y: np.ndarray) -> tuple[np.ndarray, list[float], bool]:
        """Back-to-back 3-s patches ``(W, 96, 187)`` of a whole clip (no 30-s limit), their starts
        in seconds, and whether the clip was zero-padded (shorter than one patch)."""
        with _blas_controller().limit(limits=1, user_api="blas"):
            return features.whole_clip_chunks(y, self.preset)

    def taggram(self, patches: np.ndarray) -> np.ndarray:
        """Tag probabilities ``(N, 50)`` of patches ``(N, 96, 187)``, in batches of :data:`BATCH_SIZE`."""
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)[:, None])
        with torch.inference_mode():
            out = [self._module.taggram(x[i:i + BATCH_SIZE]).numpy() for i in range(0, len(x), BATCH_SIZE)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, source: str | Path | bytes | np.ndarray, sr: int | None = None, top_k: int = 5,
                name: str | None = None) -> TagPrediction:
        """The tags of one clip of any length; see :func:`predict_tags`."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        y, label = self._samples(source, sr, name)
        patches, starts, padded = self.clip_patches(y)
        window_taggram = self.taggram(patches)
        return TagPrediction(
            source=label,
            dataset=self.dataset,
            **_ranked(self.classes, window_taggram, top_k),
            window_taggram=window_taggram,
            window_starts=starts,
            duration=len(y) / self.preset.sr,
            padded=padded,
            silent=audio.is_silent(y),
            model_id=self.model_id,
        )


@functools.lru_cache(maxsize=len(TAG_DATASETS))
def load_tagger(dataset: str = "msd") -> MusicnnTagger:
    """The pretrained musicnn tagger of ``dataset`` (``"msd"`` or ``"mtt"``), built once per process.

    The weights ship with melgenre (converted from the ``musicnn`` wheel, ISC licence); nothing is
    downloaded.
    """
    return MusicnnTagger(dataset)


def predict_tags(source: str | Path | bytes | np.ndarray, dataset: str = "msd", top_k: int = 5,
                 sr: int | None = None, name: str | None = None) -> TagPrediction:
    """musicnn's own 50 tags of one clip of any length (not the genres of a genre model).

    The clip is resampled to 16 kHz and cut into back-to-back 3-s patches (preset ``musicnn``;
    a clip shorter than 3 s is zero-padded to one patch); the clip's tag probabilities are the
    mean of the patches' taggrams, as musicnn's own ``top_tags`` computes them.

    Parameters
    ----------
    source : path, bytes or np.ndarray
        An audio file (any format :func:`melgenre.audio.load` reads), its raw bytes, or
        samples of shape ``(T,)`` or ``(T, channels)`` (downmixed and resampled).
    dataset : {"msd", "mtt"}
        The tag set: musicnn trained on the Million Song Dataset's 50 most common tags
        (:data:`melgenre.models.musicnn.MSD_TAGS`) or MagnaTagATune's
        (:data:`melgenre.models.musicnn.MTT_TAGS`).
    top_k : int
        How many tags ``TagPrediction.top`` lists (at most 50).
    sr : int, optional
        Sample rate of an array ``source`` (required for arrays, ignored otherwise).
    name : str, optional
        Name used in the result and in error messages (default: the path, ``<bytes>`` or
        ``<array>``).

    Returns
    -------
    TagPrediction
        Clip-level probabilities of all 50 tags, the top-k, and the per-window taggram.

    Raises
    ------
    AudioDecodeError
        The file or bytes cannot be decoded.
    MelgenreError
        An unknown ``dataset``, or an array without ``sr``, of the wrong shape, empty or non-finite.

    Examples
    --------
    >>> from melgenre.predict import predict_tags
    >>> predict_tags("song.mp3", "mtt", top_k=3).top  # doctest: +SKIP
    [('classical', 0.62), ('strings', 0.48), ('violin', 0.31)]
    """
    return load_tagger(dataset).predict(source, sr=sr, top_k=top_k, name=name)
