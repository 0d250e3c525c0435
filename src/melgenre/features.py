"""Mel-spectrogram images: presets, the librosa (NumPy) path and a batched PyTorch path.

The pipeline for one clip (``y`` already mono at ``preset.sr``, padded/trimmed to
``preset.duration``) is::

    power mel (librosa.stft's frames, |.|^2, librosa's Slaney mel filter bank)
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
``log``
    musicnn's input (Pons & Serra 2019): no dB step, ``log10(log_gain * float16(S) + 1)``
    (values in about [0, 7], not [0, 1]); the ``musicnn`` preset (see :func:`log_compress`).

Image rows are mel bands, lowest frequency first (row 0); columns are time frames.

The batched torch path (:class:`melgenre.torchmel.TorchMelImages`, in its own module so that
this one, and the ``prepare`` workers, never import torch) computes the same images on any
device. It matches this path within :data:`TORCH_TOLERANCE` (max absolute difference of the
[0, 1] images; tested).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from melgenre import audio
from melgenre.errors import ConfigError

#: Max absolute difference between the librosa and torch paths' [0, 1] images (float32).
TORCH_TOLERANCE = 1e-4

NORMS = ("minmax", "fixed", "log")
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
    frames_per_chunk: int | None = None  # exact chunk length in frames; None = from chunk_seconds
    frames_per_hop: int | None = None  # exact step in frames; None = from chunk_hop_seconds
    log_gain: float = 10_000.0  # used by norm "log"

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
        for key in ("frames_per_chunk", "frames_per_hop"):
            value = getattr(self, key)
            if value is not None:
                if self.chunk_seconds is None:
                    raise bad(key, "needs chunk_seconds")
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise bad(key, f"must be a positive integer or null, got {value!r}")
        if not self.log_gain > 0:
            raise bad("log_gain", f"must be positive, got {self.log_gain!r}")

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def chunk_frames(self) -> int | None:
        """Frames per chunk (as librosa counts them for a clip of ``chunk_seconds``), or None."""
        if self.chunk_seconds is None:
            return None
        if self.frames_per_chunk is not None:
            return self.frames_per_chunk
        return 1 + int(round(self.chunk_seconds * self.sr)) // self.hop_length

    @property
    def chunk_hop_frames(self) -> int | None:
        """Frames between chunk starts, or None."""
        if self.chunk_seconds is None:
            return None
        if self.frames_per_hop is not None:
            return self.frames_per_hop
        hop = self.chunk_hop_seconds or self.chunk_seconds
        return max(1, int(round(hop * self.sr / self.hop_length)))

    def n_frames(self, n_samples: int) -> int:
        """STFT frames for a clip of ``n_samples`` (``center=True``)."""
        return 1 + n_samples // self.hop_length

    def window_layout(self, n_samples: int) -> tuple[int, int]:
        """``(offset, length)``: with the clip placed at ``offset`` in ``length`` zeros, frame
        ``t``'s window covers samples ``t * hop_length`` to ``t * hop_length + win_length``.

        These are librosa's frames (centred at ``t * hop_length``, zero padding, the window
        centred in ``n_fft``), keeping only the samples the window does not zero.
        """
        offset = self.n_fft // 2 - (self.n_fft - self.win_length) // 2
        return offset, (self.n_frames(n_samples) - 1) * self.hop_length + self.win_length

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

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's ``hz_to_mel(htk=False)``): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, hz / (200.0 / 3))


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel` (librosa's ``mel_to_hz(htk=False)``)."""
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=16)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """librosa's mel filter bank (Slaney scale and area normalisation), ``(n_mels, 1 + n_fft//2)``.

    The same numbers as ``librosa.filters.mel`` (tested), in NumPy alone: importing
    ``librosa.filters`` (scipy.signal, numba) costs every ``prepare`` worker ~1.7 s.
    """
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    ramps = np.subtract.outer(mel_f, fft_freqs)
    fdiff = np.diff(mel_f)
    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):  # triangles: rising from band i, falling to band i + 2
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]  # Slaney: equal area
    return weights


#: Frames per block of the STFT: small enough that a block's spectrum stays in the CPU cache.
STFT_BLOCK = 64


def fft_size(preset: Preset) -> int:
    """Smallest FFT size that gives the exact power mel (see :func:`mel_operator`)."""
    return 2 * preset.win_length if 2 * preset.win_length < preset.n_fft else preset.n_fft


@functools.lru_cache(maxsize=16)
def mel_operator(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, n_small: int) -> np.ndarray:
    """The mel filter bank as a map from the power spectrum of an ``n_small``-point FFT.

    With ``n_small == n_fft`` this is librosa's filter bank (> 95 % zeros). When the
    window is at most ``n_small / 2`` long (v1/v2: 1024 samples zero-padded to 4096), a frame's
    power spectrum is the DFT of its autocorrelation, which spans fewer than ``n_small`` lags; so
    the ``n_fft``-point power spectrum is an exact linear function of the ``n_small``-point one
    (zero-padding the autocorrelation). Folding that map into the filter bank gives a dense
    ``(n_mels, 1 + n_small // 2)`` matrix and an FFT half the size: the same mel spectrogram
    several times faster. In float32 the quietest bins (near the ``top_db`` floor) move by up to
    ~0.01 dB against librosa's float32 result, below the 0.04 dB step of a store's float16 rows.
    """
    basis = mel_basis(sr, n_fft, n_mels, fmin, fmax)
    if n_small == n_fft:
        return basis
    half = n_small // 2
    acf = np.fft.irfft(np.eye(half + 1), n=n_small, axis=-1)  # autocorrelation of each basis spectrum
    lags = np.zeros((half + 1, n_fft))
    lags[:, :half] = acf[:, :half]  # lags 0 .. half-1
    lags[:, n_fft - half + 1:] = acf[:, half + 1:]  # lags -(half-1) .. -1
    spread = np.fft.rfft(lags, axis=-1).real  # (1 + n_small//2, 1 + n_fft//2)
    return (basis.astype(np.float64) @ spread.T).astype(np.float32)


#: Row groups of a sparse filter bank in :func:`mel_blocks`.
MEL_GROUPS = 4


@functools.lru_cache(maxsize=16)
def mel_blocks(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None,
               n_small: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`mel_operator` as dense blocks ``(row0, row1, col0, col1, block)`` without its zeros.

    A triangular filter bank is banded: low mel bands cover a few FFT bins, high ones many. Cut
    into :data:`MEL_GROUPS` groups of bands, each with only the bins its bands touch, it needs about
    a quarter of the multiplications of the dense matrix (same sums, exact up to float rounding).
    A folded operator is dense and stays one block.
    """
    op = mel_operator(sr, n_fft, n_mels, fmin, fmax, n_small)
    blocks = []
    for g in range(MEL_GROUPS):
        r0, r1 = g * n_mels // MEL_GROUPS, (g + 1) * n_mels // MEL_GROUPS
        used = np.flatnonzero(np.any(op[r0:r1] != 0, axis=0))
        if r1 > r0 and used.size:
            c0, c1 = int(used[0]), int(used[-1]) + 1
            blocks.append((r0, r1, c0, c1, np.ascontiguousarray(op[r0:r1, c0:c1])))
    if sum(b[-1].size for b in blocks) > 0.75 * op.size:
        return ((0, n_mels, 0, op.shape[1], op),)
    return tuple(blocks)


def melspectrogram(y: np.ndarray, preset: Preset) -> np.ndarray:
    """Power mel spectrogram ``(n_mels, frames)``, as ``librosa.feature.melspectrogram`` computes it.

    Same frames as ``librosa.stft`` (Hann window of ``win_length`` centred in ``n_fft``,
    ``center=True``, zero padding) and librosa's filter bank, computed faster: only the window's
    samples are framed, the FFT is ``2 * win_length`` points when that is shorter than ``n_fft``
    (exact, see :func:`mel_operator`), and frames go through FFT, power and filter bank in
    cache-sized blocks. Matches librosa to float32 rounding (tested).
    """
    p = preset
    y = np.asarray(y, dtype=np.float32)
    n_small = fft_size(p)
    blocks = mel_blocks(p.sr, p.n_fft, p.n_mels, p.fmin, p.fmax, n_small)
    window = np.hanning(p.win_length + 1)[:-1].astype(np.float32)  # periodic Hann, as librosa's
    offset, length = p.window_layout(len(y))
    n_frames = p.n_frames(len(y))
    padded = np.zeros(length, dtype=np.float32)
    src = y[: max(0, length - offset)]
    padded[offset:offset + len(src)] = src
    frames = np.lib.stride_tricks.sliding_window_view(padded, p.win_length)[::p.hop_length]
    out = np.zeros((p.n_mels, n_frames), dtype=np.float32)
    for start in range(0, n_frames, STFT_BLOCK):
        spec = np.fft.rfft(frames[start:start + STFT_BLOCK] * window, n=n_small, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2
        for r0, r1, c0, c1, block in blocks:
            out[r0:r1, start:start + STFT_BLOCK] = block @ power[:, c0:c1].T
    return out


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
    from PIL import Image  # only presets with an image_size resize (v1, v2); the musicnn and fast ones never do

    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (w, h), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def normalise(img: np.ndarray, preset: Preset) -> np.ndarray:
    """Map dB images ``(..., H, W)`` to [0, 1] with the preset's ``norm`` (see the module docstring)."""
    img = np.asarray(img, dtype=np.float32)
    if preset.norm == "minmax":
        lo = img.min(axis=(-2, -1), keepdims=True)
        span = img.max(axis=(-2, -1), keepdims=True) - lo
        return np.where(span > 0, (img - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
    lo, hi = preset.db_range
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def power_to_db(power: np.ndarray, top_db: float | None) -> np.ndarray:
    """``librosa.power_to_db(ref=np.max, amin=AMIN, top_db)`` of each image of ``(..., n_mels, frames)``."""
    peak = power.max(axis=(-2, -1), keepdims=True)
    db = 10.0 * np.log10(np.maximum(AMIN, power)) - 10.0 * np.log10(np.maximum(AMIN, peak))
    if top_db is not None:
        db = np.maximum(db, db.max(axis=(-2, -1), keepdims=True) - top_db)
    return db


def log_compress(power: np.ndarray, gain: float) -> np.ndarray:
    """musicnn's compression: ``log10(gain * S + 1)`` of ``S`` rounded to float16.

    The original (``musicnn.extractor``: ``S.astype(float16)``, then ``log10(10000 * S + 1)``)
    computes in float32 under NumPy 1.x (10000 promotes float16 to float32); under NumPy 2 the
    same expression stays float16 and overflows to ``inf`` on loud frames, so the float32 step is
    explicit here.
    """
    return np.log10(np.float32(gain) * np.asarray(power).astype(np.float16).astype(np.float32) + np.float32(1))


def power_to_images(power: np.ndarray, preset: Preset) -> np.ndarray:
    """Power-mel chunks ``(C, n_mels, frames)`` -> normalised images ``(C, H, W)`` (see ``norm``)."""
    if preset.norm == "log":
        power = power if preset.image_size is None else np.stack(
            [resize_image(img, preset.image_shape()) for img in power])
        return log_compress(power, preset.log_gain)
    db = power_to_db(power, preset.top_db)
    if preset.image_size is not None:
        db = np.stack([resize_image(img, preset.image_shape()) for img in db])
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


def whole_clip_chunks(y: np.ndarray, preset: Preset) -> tuple[np.ndarray, list[float], bool]:
    """Every chunk of a whole clip of any length for a chunked preset (``duration`` ignored).

    ``y`` is mono at ``preset.sr``. Returns the images ``(n_chunks, H, W)`` of :func:`mel_images`,
    each chunk's start in seconds, and whether the clip was shorter than one chunk (zero-padded).
    """
    whole = dataclasses.replace(preset, duration=None)
    padded = len(y) < round(whole.chunk_seconds * whole.sr)
    y = fit_to_preset(y, whole)
    starts = chunk_starts(whole.n_frames(len(y)), whole)
    return mel_images(y, whole), [s * whole.hop_length / whole.sr for s in starts], padded


def mel_images(y: np.ndarray, preset: Preset) -> np.ndarray:
    """All images of one clip: ``(n_chunks, H, W)`` float32 in [0, 1] (``n_chunks`` = 1 unchunked).

    ``y`` must already be mono at ``preset.sr`` (see :func:`melgenre.audio.load`) and fitted
    with :func:`fit_to_preset`.
    """
    power = melspectrogram(y, preset)
    size = preset.chunk_frames or power.shape[1]
    if power.shape[1] < size:
        power = np.pad(power, ((0, 0), (0, size - power.shape[1])))
    starts = chunk_starts(power.shape[1], preset)
    return power_to_images(np.stack([power[:, s:s + size] for s in starts]), preset)
