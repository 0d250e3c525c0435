"""The batched PyTorch path of :mod:`melgenre.features`: mel images on any device (CPU or GPU).

Kept apart from :mod:`melgenre.features` so that code which only needs the NumPy path (the
``prepare`` workers above all) never pays for importing torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from melgenre.features import AMIN, Preset, chunk_starts, fft_size, mel_operator

class TorchMelImages(torch.nn.Module):
    """Batched mel images on any device: ``(B, T)`` audio -> ``(B, n_chunks, H, W)`` in [0, 1].

    Same steps as :func:`melgenre.features.mel_images` (the same frames, FFT size and mel
    operator, dB relative to each chunk's max, antialiased bilinear resize, ``norm``), within
    :data:`melgenre.features.TORCH_TOLERANCE`. All clips
    in a batch must have the same length. Move it with ``.to(device)``.
    """

    def __init__(self, preset: Preset):
        super().__init__()
        self.preset = preset
        self.register_buffer("window", torch.hann_window(preset.win_length, periodic=True), persistent=False)
        self.n_small = fft_size(preset)
        operator = mel_operator(preset.sr, preset.n_fft, preset.n_mels, preset.fmin, preset.fmax, self.n_small)
        self.register_buffer("mel_operator", torch.from_numpy(np.ascontiguousarray(operator)), persistent=False)

    def power_mel(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` audio -> ``(B, n_mels, frames)`` power mel spectrogram.

        The frames (:meth:`~melgenre.features.Preset.window_layout`) and the (folded) FFT of
        :func:`melgenre.features.melspectrogram`.
        """
        p = self.preset
        offset, length = p.window_layout(y.shape[-1])
        y = F.pad(y[..., :max(0, length - offset)], (offset, 0))
        y = F.pad(y, (0, length - y.shape[-1]))
        frames = y.unfold(-1, p.win_length, p.hop_length)  # (B, frames, win_length)
        spec = torch.fft.rfft(frames * self.window, n=self.n_small)
        power = spec.real.square() + spec.imag.square()
        return self.mel_operator @ power.transpose(-1, -2)  # (B, n_mels, frames)

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
