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
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from melgenre import audio, timeline
from melgenre.backends import (  # noqa: F401  (BATCH_SIZE, PREDICT_BATCH, forward_outputs, onnx_session: public here too)
    BATCH_SIZE,
    PREDICT_BATCH,
    Backend,
    OnnxBackend,
    TorchBackend,
    forward_outputs,
    onnx_session,
)
from melgenre.card import ModelCard
from melgenre.errors import MelgenreError
from melgenre.extras import require
from melgenre.features import Preset
from melgenre.package import (
    check_card,
    default_model_path,
    onnx_twin,
    package_card,
    resolve_shipped,
    stored_trust_centres,
)
from melgenre.timeline import Segment
from melgenre.utils import blas_controller
from melgenre.windows import (
    WindowCount,
    Windows,
    default_windows,
    window_images,
)

if TYPE_CHECKING:
    from torch import nn

#: Backends :func:`load_model` accepts (``"auto"``: :func:`auto_backend`).
BACKENDS = ("torch", "onnx", "auto")

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
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("json", True)}


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
    #: (W, D) embedding of each scored window, kept when asked (melgenre.pipeline.Predictor(embeddings=True));
    #: not part of :meth:`to_dict`.
    window_embeddings: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})


#: Warnings a :class:`Prediction` may carry in ``flags``, with their meaning in plain words.
FLAGS = {
    "silent": "the clip is silent, so the genre means little",
    "padded": "the clip is shorter than the model's input and was padded with silence",
    "unsure": "the model is unsure: its top genre is more likely wrong than right",
    "not_music": "this does not sound like the music the model was trained on (speech, noise, tones or silence?), "
                 "so the genre means little",
}


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

def windows_setting(card: ModelCard | dict[str, Any], preset: Preset,
                    windows: WindowCount | int | str | None = None) -> int | None:
    """The most windows a prediction with ``preset`` scores (None: all): ``windows`` (``"all"``: None) when
    given, else the card's ``predict_windows`` (``"all"`` or a number), else
    :func:`melgenre.windows.default_windows` (as many as a 30-s clip has, at least 3)."""
    if windows is None:
        windows = ModelCard.from_dict(card, strict=False).predict_windows or default_windows(preset)
    return WindowCount.parse(windows).most


class GenreModel:
    """A trained classifier with its classes and feature preset, ready to predict.

    Made by :func:`load_model`. Attributes: ``classes`` (list of str), ``preset``
    (:class:`~melgenre.features.Preset`, as trained), ``window_preset`` (the same with the
    prediction ``hop``), ``hop``, ``card`` (the model card dict), ``model_id``, ``backend``
    (``"torch"`` or ``"onnx"``) and ``windows`` (the most windows one prediction scores; None: all).
    """

    def __init__(self, card: ModelCard | dict[str, Any], module: nn.Module | None = None, session: Any = None,
                 hop: float | None = None, windows: WindowCount | int | str | None = None,
                 backend: Backend | None = None):
        card = ModelCard.from_dict(card, strict=False)
        #: The model card (:class:`melgenre.card.ModelCard`; for one release it also reads as the dict it was).
        self.card = card
        self.classes: list[str] = list(card.classes)
        self.preset = card.preset
        hop = card.predict_hop if hop is None else hop  # a package may carry its default hop
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
        self.batch_size = int(card.predict_batch or PREDICT_BATCH.get(card.architecture, BATCH_SIZE))
        self.model_id: str = card.model_id
        #: Temperature of the card's calibration (1 without one): scales the track probabilities and each
        #: window's (:func:`tempered`), never their order.
        self.temperature = card.temperature
        #: Class centres of the training tracks' embeddings for the "not music" score (melgenre.trust); None: unknown.
        self.trust_centres: np.ndarray | None = None
        #: What runs the network (:mod:`melgenre.backends`); None for a model made from a card alone.
        #: ``module`` (a torch module) and ``session`` (an ONNX Runtime session) are shorthands for one.
        self.runner: Backend | None = backend or (TorchBackend(module) if module is not None else
                                                  OnnxBackend(session, len(self.classes)) if session is not None
                                                  else None)

    @property
    def window_count(self) -> WindowCount:
        """:attr:`windows` as the one ``windows`` setting type (``str()``: ``"all"`` or the number)."""
        return WindowCount(self.windows)

    @property
    def backend(self) -> str:
        """The backend's name: ``"onnx"`` or ``"torch"`` (``"onnx"`` for a model made from a card alone)."""
        return self.runner.name if self.runner is not None else "onnx"

    @property
    def _module(self) -> nn.Module | None:
        """The torch module with the torch backend (Grad-CAM needs it), else None."""
        return getattr(self.runner, "module", None)

    @property
    def loaded(self) -> bool:
        """Whether the model can predict: False for one made from a card alone (its ids and windows only)."""
        return self.runner is not None

    @property
    def calibration_id(self) -> str:
        """12 hex digits of the card's ``calibration`` and ``trust`` entries: the same weights (model
        id) recalibrated give other probabilities and flags ("" for an uncalibrated model)."""
        parts = {k: getattr(self.card, k) for k in ("calibration", "trust") if getattr(self.card, k) is not None}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12] if parts else ""

    def __repr__(self) -> str:
        return (f"GenreModel({self.model_id!r}, backend={self.backend!r}, preset={self.preset.name!r}, "
                f"classes={len(self.classes)}, windows={self.windows or 'all'})")

    def clip_images(self, y: np.ndarray) -> tuple[np.ndarray, list[float], bool]:
        """:func:`window_images` of mono samples at ``preset.sr``, with this model's prediction hop
        (every window, however long the clip)."""
        with blas_controller().limit(limits=1, user_api="blas"):
            return window_images(y, self.window_preset)

    def windows_of(self, source: str | Path | bytes | np.ndarray, sr: int | None = None,
                   name: str | None = None, exclude: Sequence[int] = (), more: int | None = None
                   ) -> tuple[Windows, str]:
        """The windows :meth:`predict` scores first of a file, its bytes or samples, and the name to
        report (:func:`melgenre.pipeline.windows_of`)."""
        from melgenre.pipeline import windows_of

        return windows_of(self, source, sr, name, exclude, more)

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

    def window_outputs(self, images: np.ndarray, embeddings: bool = False, batch: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """The images' softmax probabilities before calibration (what :meth:`prediction` takes) and, from
        the same forward pass, their embeddings (:meth:`embed_images`) when asked (``embeddings``) or when
        the "not music" score can use them (a stored :attr:`trust_centres`), and the backend gives them,
        else None; in batches of ``batch`` (default :attr:`batch_size`)."""
        want = embeddings or self.trust_centres is not None
        logits, emb = self.runner.run(images, embeddings=want, batch=batch or self.batch_size)
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
            An ONNX model exported without an ``embedding`` output (before melgenre 0.9).
        """
        if not self.runner.has_embedding:
            raise MelgenreError(f"model {self.model_id}: its ONNX graph has no embedding output; export it again")
        return self.runner.run(images, embeddings=True, batch=self.batch_size)[1]

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
        from melgenre.pipeline import Predictor

        return Predictor(self).predict(source, sr=sr, top_k=top_k, name=name)

    def prediction(self, source: str, window_probs: np.ndarray, window_starts: list[float], duration: float,
                   padded: bool, silent: bool, top_k: int = 3,
                   window_embeddings: np.ndarray | None = None, windows_total: int | None = None) -> Prediction:
        """The :class:`Prediction` of one clip from its windows' uncalibrated probabilities (from
        :meth:`window_outputs`); the track's probabilities are their mean, then the card's temperature
        (:func:`tempered`), and ``window_probabilities`` are each window's calibrated ones.

        Every prediction ends here (:class:`melgenre.pipeline.Predictor`, however its windows were
        batched), so a result never depends on who asked. The "unsure" and
        "not_music" flags follow the card's ``trust`` thresholds (:func:`melgenre.trust.trust_flags`);
        "not_music" needs ``window_embeddings`` (from :meth:`window_outputs`) except for silent clips.
        ``windows_total`` is the number of windows of the whole recording (default: those given).
        """
        from melgenre.trust import LEGACY_METHOD, novelty, trust_flags

        ranked = ranked_classes(self.classes, window_probs, top_k, self.temperature)
        window_probs = tempered(window_probs, self.temperature)
        method = (self.card.trust or {}).get("novelty", LEGACY_METHOD)
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
    """The backend :func:`load_model` uses for ``path``: ``backend``, with ``"auto"`` -> ``"onnx"`` for an
    ``.onnx`` file else :func:`auto_backend`, and None -> ``"onnx"`` for an ``.onnx`` file or a package with
    an ONNX twin (:func:`melgenre.package.onnx_twin`: the shipped models have one) when ONNX Runtime is
    installed, else ``"torch"`` (an unknown name is returned as given, for the caller to reject)."""
    path = Path(path)
    if backend == "auto":
        return "onnx" if path.suffix == ".onnx" else auto_backend()
    if backend is None:
        lean = path.suffix == ".onnx" or onnx_twin(path) is not None
        return "onnx" if lean and auto_backend() == "onnx" else "torch"
    return backend


def _from_twin(path: Path, twin: Path, hop: float | None, windows: int | str | None) -> GenreModel:
    """A package run by its ONNX twin: the card (calibration, trust, windows) from the package's
    ``.json``, the network from ``twin``, which must hold the same weights (model id)."""
    card_path = path.with_suffix(".json")
    card = package_card(card_path)
    session = onnx_session(twin, str(twin))
    try:
        twin_id = json.loads(session.get_modelmeta().custom_metadata_map["melgenre_card"])["model_id"]
    except (KeyError, TypeError, json.JSONDecodeError):
        twin_id = None
    if twin_id != card.model_id:
        raise MelgenreError(f"{twin}: holds model {twin_id}, not the package's {card.model_id}; export it "
                            f"again (melgenre export {card_path} --format onnx --out {twin})")
    model = GenreModel(card, session=session, hop=hop, windows=windows)
    model.trust_centres = stored_trust_centres(card_path, card)
    return model


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
        ``"onnx"`` runs the model with ONNX Runtime on CPU: a package with an ONNX twin
        (``<stem>.onnx`` beside its card, as the shipped models have) runs that file, without torch;
        any other model is exported in memory first (which needs the ``train`` extra). ``"torch"``
        runs the PyTorch module (the ``train`` extra). ``"auto"`` is ``"onnx"`` when ONNX Runtime is
        installed, else ``"torch"``. Default: :func:`resolve_backend`: ``"onnx"`` for ONNX files and
        packages with an ONNX twin (the shipped models), else ``"torch"``.
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
        No default model is installed, the source is missing or unreadable (the message names
        the file), or it needs PyTorch and the ``train`` extra is not installed.
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
    twin = onnx_twin(path)
    if backend == "onnx" and twin is not None:
        return _from_twin(path, twin, hop, windows)
    require("torch", f"{path}: the {backend} backend of a model without an ONNX file")
    from melgenre.package import load_torch

    module, card = load_torch(path)
    centres = stored_trust_centres(path, card)
    if backend == "torch":
        model = GenreModel(card, module=module, hop=hop, windows=windows)
    else:
        from melgenre.export import write_onnx

        from melgenre.utils import private_tempdir

        # private (0700), removed at once; one a killed run left (its PID is in the name) goes on the next
        with private_tempdir("melgenre-onnx-") as tmp:
            onnx_path = tmp / "model.onnx"
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
    from melgenre.pipeline import Predictor, failure_reason

    files = audio.expand_paths(paths)
    if isinstance(model, GenreModel):
        for item, pred in Predictor(model).predict_paths(files, top_k):
            yield Path(item.key), pred, item.error
        return
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    for path in files:  # another predictor with a predict method: musicnn's own tagger (melgenre.tags)
        try:
            yield path, model.predict(path, top_k=top_k), None
        except Exception as exc:  # noqa: BLE001  (a batch run reports any per-file failure and goes on)
            yield path, None, failure_reason(exc)
