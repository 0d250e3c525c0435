"""Mel-spectrogram images: presets, the librosa (NumPy) path and a batched PyTorch path.

The pipeline for one clip (``y`` already mono at ``preset.sr``, padded/trimmed to
``preset.duration``) is::

    power mel (librosa.stft, |.|^2, librosa's Slaney mel filter bank)
      -> cut into chunks along time (``chunk_seconds``; one chunk = the whole clip when unset)
      -> dB per chunk: librosa.power_to_db(ref=max, amin=1e-10, top_db)
      -> resize to ``image_size`` (bilinear with antialiasing, as PIL does; skipped when unset)
      -> normalise to [0, 1] (``norm``)

Normalisation (the ``norm`` preset field):

``minmax``
    per image: ``(S - S.min()) / (S.max() - S.min())`` (a constant image becomes all zeros).
    This is what the reproduced report does; presets v1 and v2 use it.
``fixed``
    a fixed dB range: ``clip((S - db_min) / (db_max - db_min), 0, 1)`` with
    ``db_range = [db_min, db_max]``; since dB is relative to the chunk's maximum, values lie in
    ``[-top_db, 0]``. Keeps contrast comparable between chunks; the ``fast`` preset uses it.

Image rows are mel bands, lowest frequency first (row 0); columns are time frames.

The torch path (:class:`TorchMelImages`) computes the same images batched, on any device, with
``torch.stft`` and the same filter bank. It matches the librosa path within
:data:`TORCH_TOLERANCE` (max absolute difference of the [0, 1] images; tested).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from melgenre import audio
from melgenre.errors import ConfigError

#: Max absolute difference between the librosa and torch paths' [0, 1] images (float32).
TORCH_TOLERANCE = 1e-4

NORMS = ("minmax", "fixed")
AMIN = 1e-10


@dataclass(frozen=True)
class Preset:
    """Everything that turns audio into a mel image; stored with every HDF5 file."""

    name: str
    description: str = ""
    sr: int = 22_050  # sample rate (Hz) audio is resampled to
    duration: float | None = 30.0  # clip length (s): pad/trim to it; None keeps the whole clip
    n_fft: int = 4096
    win_length: int = 1024  # Hann window, zero-padded to n_fft
    hop_length: int = 512
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # None = sr / 2
    top_db: float | None = 80.0  # floor of power_to_db relative to the chunk's max; None = no floor
    image_size: tuple[int, int] | None = (416, 416)  # (height, width); None = natural size
    norm: str = "minmax"  # "minmax" (per image) or "fixed" (db_range)
    db_range: tuple[float, float] = (-80.0, 0.0)  # used by norm "fixed"
    chunk_seconds: float | None = None  # cut each clip into chunks of this length; None = whole clip
    chunk_hop_seconds: float | None = None  # step between chunks; None = chunk_seconds

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"preset {self.name!r}: {key}: {why}")

        for key in ("sr", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(key, f"must be a positive integer, got {value!r}")
        if self.win_length > self.n_fft:
            raise bad("win_length", f"{self.win_length} exceeds n_fft {self.n_fft}")
        if self.duration is not None and self.duration <= 0:
            raise bad("duration", f"must be positive or null, got {self.duration!r}")
        fmax = self.sr / 2 if self.fmax is None else self.fmax
        if not 0 <= self.fmin < fmax <= self.sr / 2:
            raise bad("fmin/fmax", f"need 0 <= fmin < fmax <= sr/2, got {self.fmin}, {fmax}")
        if self.norm not in NORMS:
            raise bad("norm", f"must be one of {', '.join(NORMS)}, got {self.norm!r}")
        lo, hi = self.db_range
        if not lo < hi:
            raise bad("db_range", f"need db_min < db_max, got {list(self.db_range)}")
        if self.image_size is not None:
            if len(self.image_size) != 2 or any(int(s) <= 0 for s in self.image_size):
                raise bad("image_size", f"must be [height, width] > 0 or null, got {self.image_size!r}")
        if self.chunk_seconds is not None and self.chunk_seconds <= 0:
            raise bad("chunk_seconds", f"must be positive or null, got {self.chunk_seconds!r}")
        if self.chunk_hop_seconds is not None:
            if self.chunk_seconds is None:
                raise bad("chunk_hop_seconds", "needs chunk_seconds")
            if self.chunk_hop_seconds <= 0:
                raise bad("chunk_hop_seconds", f"must be positive, got {self.chunk_hop_seconds!r}")

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def chunk_frames(self) -> int | None:
        """Frames per chunk (as librosa counts them for a clip of ``chunk_seconds``), or None."""
        if self.chunk_seconds is None:
            return None
        return 1 + int(round(self.chunk_seconds * self.sr)) // self.hop_length

    @property
    def chunk_hop_frames(self) -> int | None:
        """Frames between chunk starts, or None."""
        if self.chunk_seconds is None:
            return None
        hop = self.chunk_hop_seconds or self.chunk_seconds
        return max(1, int(round(hop * self.sr / self.hop_length)))

    def n_frames(self, n_samples: int) -> int:
        """STFT frames for a clip of ``n_samples`` (``center=True``)."""
        return 1 + n_samples // self.hop_length

    def image_shape(self, n_samples: int | None = None) -> tuple[int, int]:
        """(height, width) of one image; ``n_samples`` is needed for a natural-size whole clip."""
        if self.image_size is not None:
            return int(self.image_size[0]), int(self.image_size[1])
        if self.chunk_frames is not None:
            return self.n_mels, self.chunk_frames
        if n_samples is None:
            if self.duration is None:
                raise ConfigError(f"preset {self.name!r}: image width unknown without duration")
            n_samples = int(round(self.duration * self.sr))
        return self.n_mels, self.n_frames(n_samples)

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/YAML safe)."""
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        d["db_range"] = list(self.db_range)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> Preset:
        """Build and validate a preset from a mapping; unknown keys are a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"preset {name!r}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        if name is not None:
            data.setdefault("name", name)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"preset {data.get('name', name)!r}: unknown key(s) {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(known))})"
            )
        if "name" not in data:
            raise ConfigError("preset: missing key 'name'")
        for key in ("image_size", "db_range"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ConfigError(f"preset {data['name']!r}: {exc}") from None


def builtin_presets() -> list[str]:
    """Names of the presets shipped in ``melgenre/presets/*.yaml``."""
    return sorted(p.name[:-5] for p in resources.files("melgenre.presets").iterdir()
                  if p.name.endswith(".yaml"))


def get_preset(preset: str | Path | Preset | dict) -> Preset:
    """Resolve a preset given as a built-in name (``v1``, ``v2``, ``fast``), a YAML path, or data."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, dict):
        return Preset.from_dict(preset)
    text = str(preset)
    if text in builtin_presets():
        source = resources.files("melgenre.presets").joinpath(f"{text}.yaml")
        return Preset.from_dict(yaml.safe_load(source.read_text()), name=text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        return Preset.from_dict(data, name=path.stem)
    raise ConfigError(f"unknown preset {text!r}: use one of {', '.join(builtin_presets())} or a YAML file")


# -- librosa / NumPy path ----------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """librosa's mel filter bank (Slaney scale and area normalisation), ``(n_mels, 1 + n_fft//2)``."""
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _sparse_mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None):
    # The filter bank is > 95 % zeros: a sparse product is several times faster than the dense one.
    return scipy.sparse.csr_matrix(mel_basis(sr, n_fft, n_mels, fmin, fmax))


def melspectrogram(y: np.ndarray, preset: Preset) -> np.ndarray:
    """Power mel spectrogram ``(n_mels, frames)`` exactly as ``librosa.feature.melspectrogram``.

    Uses ``librosa.stft`` (Hann window of ``win_length`` centred in ``n_fft``, ``center=True``,
    constant padding) and a sparse product with :func:`mel_basis`.
    """
    spec = librosa.stft(y, n_fft=preset.n_fft, hop_length=preset.hop_length,
                        win_length=preset.win_length, window="hann", center=True, pad_mode="constant")
    power = np.abs(spec) ** 2
    basis = _sparse_mel_basis(preset.sr, preset.n_fft, preset.n_mels, preset.fmin, preset.fmax)
    return np.asarray(basis @ power, dtype=np.float32)


def chunk_starts(n_frames: int, preset: Preset) -> list[int]:
    """Start frames of the chunks of a spectrogram with ``n_frames`` frames ([0] when unchunked).

    Only full chunks are kept; a clip shorter than one chunk yields one chunk, padded later.
    """
    size, hop = preset.chunk_frames, preset.chunk_hop_frames
    if size is None or n_frames <= size:
        return [0]
    return list(range(0, n_frames - size + 1, hop))


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to ``(height, width)``, antialiased as PIL does."""
    h, w = size
    if img.shape == (h, w):
        return img
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (w, h), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def normalise(img: np.ndarray, preset: Preset) -> np.ndarray:
    """Map a dB image to [0, 1] with the preset's ``norm`` (see the module docstring)."""
    if preset.norm == "minmax":
        lo, hi = float(img.min()), float(img.max())
        if hi - lo <= 0:
            return np.zeros_like(img, dtype=np.float32)
        return ((img - lo) / (hi - lo)).astype(np.float32)
    lo, hi = preset.db_range
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def power_to_image(power: np.ndarray, preset: Preset) -> np.ndarray:
    """One power-mel chunk ``(n_mels, frames)`` -> normalised image ``(H, W)`` in [0, 1]."""
    db = librosa.power_to_db(power, ref=np.max, amin=AMIN, top_db=preset.top_db)
    if preset.image_size is not None:
        db = resize_image(db, preset.image_shape())
    return normalise(db, preset)


def fit_to_preset(y: np.ndarray, preset: Preset) -> np.ndarray:
    """Apply the preset's ``duration`` to mono audio at ``preset.sr``.

    Unchunked presets (v1, v2) pad or trim every clip to exactly ``duration`` seconds, as the
    report does (``duration`` null keeps the clip). Chunked presets only trim to ``duration``:
    padding would add silent chunks, so a short clip yields fewer chunks, and a clip shorter than
    one chunk is zero-padded to one chunk.
    """
    if preset.chunk_seconds is not None:
        y = y if preset.duration is None else y[:int(round(preset.duration * preset.sr))]
        return audio.fix_length(y, max(len(y), int(round(preset.chunk_seconds * preset.sr))))
    if preset.duration is None:
        return y
    return audio.fix_length(y, int(round(preset.duration * preset.sr)))


def mel_images(y: np.ndarray, preset: Preset) -> np.ndarray:
    """All images of one clip: ``(n_chunks, H, W)`` float32 in [0, 1] (``n_chunks`` = 1 unchunked).

    ``y`` must already be mono at ``preset.sr`` (see :func:`melgenre.audio.load`) and fitted
    with :func:`fit_to_preset`.
    """
    power = melspectrogram(np.asarray(y, dtype=np.float32), preset)
    size = preset.chunk_frames or power.shape[1]
    images = []
    for start in chunk_starts(power.shape[1], preset):
        chunk = power[:, start:start + size]
        if chunk.shape[1] < size:
            chunk = np.pad(chunk, ((0, 0), (0, size - chunk.shape[1])))
        images.append(power_to_image(chunk, preset))
    return np.stack(images)


# -- PyTorch path ------------------------------------------------------------------------------

class TorchMelImages(torch.nn.Module):
    """Batched mel images on any device: ``(B, T)`` audio -> ``(B, n_chunks, H, W)`` in [0, 1].

    Same steps as :func:`mel_images` (``torch.stft`` + librosa's filter bank, dB relative to each
    chunk's max, antialiased bilinear resize, ``norm``), within :data:`TORCH_TOLERANCE`. All clips
    in a batch must have the same length. Move it with ``.to(device)``.
    """

    def __init__(self, preset: Preset):
        super().__init__()
        self.preset = preset
        window = torch.hann_window(preset.win_length, periodic=True)
        pad = (preset.n_fft - preset.win_length) // 2
        window = F.pad(window, (pad, preset.n_fft - preset.win_length - pad))
        self.register_buffer("window", window, persistent=False)
        basis = mel_basis(preset.sr, preset.n_fft, preset.n_mels, preset.fmin, preset.fmax)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)

    def power_mel(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` audio -> ``(B, n_mels, frames)`` power mel spectrogram."""
        p = self.preset
        # librosa pads with zeros ("constant") to centre frames; torch.stft's own padding is reflect.
        y = F.pad(y, (p.n_fft // 2, p.n_fft // 2))
        spec = torch.stft(y, n_fft=p.n_fft, hop_length=p.hop_length, window=self.window,
                          center=False, return_complex=True)
        return self.mel_basis @ spec.abs().pow(2)  # (B, n_mels, frames)

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        p = self.preset
        power = self.power_mel(y.to(self.window.dtype))
        size = p.chunk_frames or power.shape[-1]
        chunks = []
        for start in chunk_starts(power.shape[-1], p):
            chunk = power[..., start:start + size]
            chunks.append(F.pad(chunk, (0, size - chunk.shape[-1])))
        x = torch.stack(chunks, dim=1)  # (B, C, n_mels, frames)
        db = 10.0 * torch.log10(x.clamp_min(AMIN))
        db = db - db.amax(dim=(-2, -1), keepdim=True)  # ref = max of each chunk
        if p.top_db is not None:
            db = db.clamp_min(-p.top_db)
        if p.image_size is not None:
            b, c = db.shape[:2]
            db = F.interpolate(db.flatten(0, 1).unsqueeze(1), size=p.image_shape(), mode="bilinear",
                               align_corners=False, antialias=True).view(b, c, *p.image_shape())
        if p.norm == "minmax":
            lo = db.amin(dim=(-2, -1), keepdim=True)
            span = db.amax(dim=(-2, -1), keepdim=True) - lo
            return torch.where(span > 0, (db - lo) / span.clamp_min(1e-12), torch.zeros_like(db))
        lo, hi = p.db_range
        return ((db - lo) / (hi - lo)).clamp(0.0, 1.0)
