"""musicnn's own 50 tags (Million Song Dataset or MagnaTagATune) of a clip: :func:`predict_tags`.

Not the genres of a genre model (:mod:`melgenre.inference`): the pretrained tagger as its authors
ship it, with its sigmoid outputs averaged over back-to-back 3-s patches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from melgenre import audio, features
from melgenre.errors import MelgenreError
from melgenre.inference import BATCH_SIZE, JsonResult, ranked_classes
from melgenre.package import model_id
from melgenre.utils import blas_controller

#: Tag sets of :func:`predict_tags`: musicnn trained on the Million Song Dataset or MagnaTagATune.
TAG_DATASETS = ("msd", "mtt")


@dataclass(eq=False)  # an array field makes field-wise == ambiguous: compare by identity
class TagPrediction(JsonResult):
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
        self.model_id = model_id(f"musicnn_{dataset}", weights)

    def __repr__(self) -> str:
        return f"MusicnnTagger({self.model_id!r}, dataset={self.dataset!r}, tags={len(self.classes)})"

    def clip_patches(self, y: np.ndarray) -> tuple[np.ndarray, list[float], bool]:
        """Back-to-back 3-s patches ``(W, 96, 187)`` of a whole clip (no 30-s limit), their starts
        in seconds, and whether the clip was zero-padded (shorter than one patch)."""
        with blas_controller().limit(limits=1, user_api="blas"):
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
        from melgenre.pipeline import samples

        y, label = samples(source, sr, name, self.preset.sr)
        patches, starts, padded = self.clip_patches(y)
        window_taggram = self.taggram(patches)
        return TagPrediction(
            source=label,
            dataset=self.dataset,
            **ranked_classes(self.classes, window_taggram, top_k),
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
