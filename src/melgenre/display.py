"""Pictures of mel images with real axes (time in seconds, frequency in Hz on a mel scale)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import librosa
import librosa.display
import matplotlib.pyplot as plt
import numpy as np

from melgenre import audio, features
from melgenre.features import Preset
from melgenre.utils import save_png


def unchunked(preset: Preset) -> Preset:
    """The preset without chunking: one image of the whole (fitted) clip at natural size."""
    if preset.chunk_seconds is None:
        return preset
    return dataclasses.replace(preset, chunk_seconds=None, chunk_hop_seconds=None, frames_per_chunk=None,
                               frames_per_hop=None)


def mel_figure(y: np.ndarray, preset: Preset, title: str = "") -> plt.Figure:
    """A figure of the clip's mel image as the model sees it, with time/frequency axes.

    Whole-clip presets (v1, v2) show the resized square image; chunked presets show the whole
    clip at natural size with dashed lines where chunks start.
    """
    y = features.fit_to_preset(y, preset)
    image = features.mel_images(y, unchunked(preset))[0]
    rows, cols = image.shape
    seconds = len(y) / preset.sr
    fmax = preset.fmax or preset.sr / 2
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    mesh = librosa.display.specshow(
        image, ax=ax, x_axis="time", y_axis="mel", sr=preset.sr, fmin=preset.fmin, fmax=fmax,
        x_coords=np.linspace(0, seconds, cols + 1),
        y_coords=librosa.mel_frequencies(rows + 1, fmin=preset.fmin, fmax=fmax), cmap="magma",
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz, mel scale)")
    if preset.chunk_seconds:
        starts = features.chunk_starts(features.Preset.n_frames(preset, len(y)), preset)[1:]
        for i, start in enumerate(starts):
            ax.axvline(start * preset.hop_length / preset.sr, color="white", lw=0.6, ls="--", alpha=0.6,
                       label=f"start of a {preset.chunk_seconds:g}-s model window" if i == 0 else None)
        if starts:
            ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    if preset.norm != "log":  # [0, 1] images: a fixed colour scale, also for a flat (silent) image
        mesh.set_clim(0.0, 1.0)
    label = "log10(10000·power + 1)" if preset.norm == "log" else f"image value ({preset.norm} normalised to [0, 1])"
    fig.colorbar(mesh, ax=ax, label=label)
    size = f"{rows}×{cols}" if preset.image_size else f"{preset.n_mels} mels, chunks of {preset.chunk_frames or cols} frames"
    ax.set_title(title or f"preset {preset.name}: {size}")
    fig.tight_layout()
    return fig


def save_mel_figure(path: str | Path, out: str | Path, preset: str | Path | Preset = "v1") -> Path:
    """Load ``path``, draw :func:`mel_figure` and write it as a PNG to ``out`` (atomically)."""
    preset = features.get_preset(preset)
    clip = audio.load(path, sr=preset.sr)
    return save_png(mel_figure(clip.samples, preset, title=f"{Path(path).name} — preset {preset.name}"), out)
