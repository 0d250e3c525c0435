"""Synthetic labelled clips for tests and demos: classes that differ audibly and visibly.

Class ``k`` of ``n`` has its own

- tempo (notes and drum hits at ``70 + 110·k/(n-1)`` BPM, ±3 % per clip),
- pitch range (notes drawn from a pentatonic scale in one octave starting ``7·k`` semitones above
  MIDI 40, i.e. E2),
- timbre (waveform: sine, odd harmonics (square-like) or all harmonics (saw-like), by ``k mod 3``),
- noise colour of its percussion (white, pink or brown, by ``k mod 3``, shifted so neighbours
  differ).

Everything else (notes, phases, levels, the noise) is random per clip, so a small CNN has to
learn the class cues from the mel image; it does so to near-perfect accuracy in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from melgenre.utils import atomic_path

MAX_CLASSES = 12
_PENTATONIC = np.array([0, 2, 4, 7, 9, 12])


def class_names(n_classes: int) -> list[str]:
    """Folder names of the synthetic classes: ``class00``, ``class01``, …"""
    return [f"class{k:02d}" for k in range(n_classes)]


def _coloured_noise(n: int, colour: int, rng: np.random.Generator) -> np.ndarray:
    """White (0), pink (1, 1/f power) or brown (2, 1/f² power) noise, unit peak."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spectrum *= f ** (-0.5 * colour)
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.max(np.abs(noise)) + 1e-12)


def synth_clip(label: int, n_classes: int, seconds: float = 5.0, sr: int = 22_050,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """One clip of class ``label`` (see the module docstring), mono float32 with peak ≈ 0.8."""
    if not 0 <= label < n_classes:
        raise ValueError(f"label {label} outside 0..{n_classes - 1}")
    rng = rng or np.random.default_rng()
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    bpm = (70 + 110 * label / max(n_classes - 1, 1)) * rng.uniform(0.97, 1.03)
    beat = 60.0 / bpm
    base_midi = 40 + 7 * label
    harmonics = {0: [1], 1: [1, 3, 5, 7], 2: [1, 2, 3, 4, 5, 6]}[label % 3]
    out = np.zeros(n)

    onsets = np.arange(rng.uniform(0, beat / 2), seconds, beat)
    for onset in onsets:
        start = int(onset * sr)
        length = min(int(beat * sr * 0.9), n - start)
        if length <= 0:
            continue
        tt = t[:length]
        f0 = 440.0 * 2 ** ((base_midi + rng.choice(_PENTATONIC) - 69) / 12)
        note = sum(np.sin(2 * np.pi * h * f0 * tt + rng.uniform(0, 2 * np.pi)) / h
                   for h in harmonics if h * f0 < sr / 2)
        envelope = np.exp(-tt / (0.25 * beat)) * np.minimum(1.0, tt / 0.005)
        out[start:start + length] += 0.5 * note * envelope

    drum_len = int(0.08 * sr)
    drum = _coloured_noise(drum_len, (label + label // 3) % 3, rng) * np.exp(-np.arange(drum_len) / (0.02 * sr))
    for onset in onsets:
        start = int(onset * sr)
        stop = min(start + drum_len, n)
        out[start:stop] += 0.4 * drum[: stop - start]

    out += 0.01 * rng.standard_normal(n)  # a little broadband floor so no frame is digital silence
    out *= 0.8 / (np.max(np.abs(out)) + 1e-12)
    return out.astype(np.float32)


def write_corpus(out_dir: str | Path, n_classes: int = 4, per_class: int = 10, seconds: float = 5.0,
                 sr: int = 22_050, seed: int = 0) -> list[Path]:
    """Write ``<out_dir>/<class>/<class>.NNNNN.wav`` (16-bit PCM) for every class; returns the paths.

    The same arguments always give the same files. Each file is written to a temp name and
    renamed, so an interrupted run never leaves a half-written clip.
    """
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"classes must be between 2 and {MAX_CLASSES}, got {n_classes}")
    if per_class < 1 or seconds <= 0:
        raise ValueError("per-class must be >= 1 and seconds > 0")
    rng = np.random.default_rng(seed)
    paths = []
    for label, name in enumerate(class_names(n_classes)):
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y = synth_clip(label, n_classes, seconds, sr, rng)
            path = folder / f"{name}.{i:05d}.wav"
            with atomic_path(path) as tmp:
                sf.write(tmp, y, sr, subtype="PCM_16", format="WAV")
            paths.append(path)
    return paths
