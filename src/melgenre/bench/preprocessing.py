"""The ``preprocessing`` and ``features`` sections: mel images of 30-s files by ``prepare`` against the
report's naive loop, and per track by the NumPy and the batched torch paths."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melgenre.bench.inputs import Inputs
from melgenre.bench.measure import stat
from melgenre.bench.settings import TARGET_SPEEDUP, BenchSettings

# -- preprocessing ------------------------------------------------------------------------------

def naive_image(path: str | Path, preset: Any) -> np.ndarray:
    """The report's per-file loop: librosa.load → melspectrogram → power_to_db(ref=max) → PIL resize → min-max.

    Chunked presets are not supported (the report makes one image per clip).
    """
    import librosa

    y, sr = librosa.load(str(path), sr=preset.sr, mono=True, duration=preset.duration)
    if preset.duration is not None:
        y = librosa.util.fix_length(y, size=round(preset.duration * sr))
    return naive_image_of(y, preset)


def naive_image_of(y: np.ndarray, preset: Any) -> np.ndarray:
    """:func:`naive_image` after loading: librosa's melspectrogram, power_to_db, PIL resize, min-max."""
    import librosa
    from PIL import Image

    s = librosa.feature.melspectrogram(y=y, sr=preset.sr, n_fft=preset.n_fft, hop_length=preset.hop_length,
                                       win_length=preset.win_length, n_mels=preset.n_mels, fmin=preset.fmin,
                                       fmax=preset.fmax, pad_mode="constant")
    db = librosa.power_to_db(s, ref=np.max)
    h, w = preset.image_shape()
    img = np.asarray(Image.fromarray(db.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _naive_seconds(files: Sequence[Path], preset: Any) -> float:
    """Seconds of :func:`naive_image` over ``files``, one after the other."""
    t0 = time.perf_counter()
    for f in files:
        naive_image(f, preset)
    return time.perf_counter() - t0


def _prepare_seconds(corpus: Any, preset: Any, h5: Path, workers: int) -> float:
    """Seconds of a fresh :func:`melgenre.store.prepare` of ``corpus`` (start-up of the pool included)."""
    from melgenre import store

    h5.unlink(missing_ok=True)
    t0 = time.perf_counter()
    store.prepare(corpus, preset, h5, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    h5.unlink(missing_ok=True)
    return seconds


def bench_preprocessing(settings: BenchSettings, inputs: Inputs, log: Callable[[str], None]) -> list[dict]:
    """Tracks/s of the naive loop, ``prepare`` with one worker per core, and ``prepare`` in-process.

    The parallel ``prepare`` is also run on a small subset (``2 × workers`` files): the difference
    of the two runs gives its steady-state rate, without the fixed start-up of the worker pool
    (forkserver, imports, librosa's lazy imports in every worker) that dominates small corpora.
    Repeats are interleaved (naive, prepare, ...) so a change of machine load hits all alike.
    """
    from melgenre import features
    from melgenre.datasets import discover

    workers = settings.workers or os.cpu_count() or 1
    corpus = discover(inputs.corpus(settings.n_files))
    files = [t.path for t in corpus.tracks]
    n = len(files)
    k = min(2 * workers, n - 1)
    small = discover(inputs.corpus(k)) if k >= 1 else None
    out = []
    for name in settings.presets:
        preset = features.get_preset(name)
        if preset.chunk_seconds is not None:
            log(f"preprocessing: skipping chunked preset {name} (the naive loop makes one image per clip)")
            continue
        naive_image(files[0], preset)  # librosa's lazy imports and caches, not timed
        h5 = inputs.tmp / f"prep-{preset.name}.h5"
        times: dict[str, list[float]] = {"naive": [], "prepare": [], "prepare_1_worker": [], "prepare_small": []}
        for _ in range(settings.repeats):
            times["naive"].append(_naive_seconds(files, preset))
            times["prepare"].append(_prepare_seconds(corpus, preset, h5, workers))
            times["prepare_1_worker"].append(_prepare_seconds(corpus, preset, h5, 1))
            if small is not None:
                times["prepare_small"].append(_prepare_seconds(small, preset, h5, workers))
        row: dict[str, Any] = {"preset": preset.name, "n_files": n, "workers": workers}
        for key in ("naive", "prepare", "prepare_1_worker"):
            row[key] = stat([n / t for t in times[key]], "tracks/s")
        if small is not None:
            extra = float(np.median(times["prepare"])) - float(np.median(times["prepare_small"]))
            row["prepare_small"] = {"n_files": k, **stat(times["prepare_small"], "s")}
            row["prepare_steady_tracks_per_s"] = (n - k) / extra if extra > 0 else None
            row["prepare_startup_s"] = max(0.0, float(np.median(times["prepare"])) - n / row["prepare_steady_tracks_per_s"]) \
                if row["prepare_steady_tracks_per_s"] else None
        naive = row["naive"]["median"]
        row["speedup"] = row["prepare"]["median"] / naive
        row["speedup_1_worker"] = row["prepare_1_worker"]["median"] / naive
        steady = row.get("prepare_steady_tracks_per_s")
        row["speedup_steady"] = steady / naive if steady else None
        row["target_speedup"] = TARGET_SPEEDUP
        row["meets_target"] = max(row["speedup"], row["speedup_steady"] or 0.0) >= TARGET_SPEEDUP
        log(f"preprocessing {preset.name}: naive {naive:.1f}, prepare ({workers} workers) "
            f"{row['prepare']['median']:.1f} (steady state {steady or float('nan'):.1f}), prepare (1 worker) "
            f"{row['prepare_1_worker']['median']:.1f} tracks/s -> {row['speedup']:.2f}x "
            f"(steady state {row['speedup_steady'] or float('nan'):.2f}x)")
        out.append(row)
    return out


# -- mel features -------------------------------------------------------------------------------

def _torch_mel(module: Any, x: Any) -> tuple[Any, float]:
    """Images of one batch and the seconds it took (waiting for the GPU when on CUDA)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        images = module(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - t0


def bench_features(settings: BenchSettings, inputs: Inputs, log: Callable[[str], None]) -> list[dict]:
    """ms per 30-s track: the report's librosa calls, melgenre's NumPy path and the batched torch path
    (CPU, and CUDA when available), with each image's largest difference from the NumPy path's."""
    import torch

    from melgenre import audio, features
    from melgenre.torchmel import TorchMelImages

    path = inputs.files(1)[0]
    names = list(dict.fromkeys([*settings.presets, "fast"]))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    repeats = max(settings.repeats, 3)
    out = []
    for name in names:
        preset = features.get_preset(name)
        y = features.fit_to_preset(audio.load(path, sr=preset.sr).samples[: int(30 * preset.sr)], preset)
        ref = features.mel_images(y, preset)  # also the warm-up

        def cpu_row(path_name: str, make: Callable[[], np.ndarray]) -> dict[str, Any]:
            make()  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                image = make()
                times.append(1e3 * (time.perf_counter() - t0))
            return {"preset": preset.name, "path": path_name, "device": "cpu", "batch": 1,
                    "ms_per_track": stat(times, "ms"), "max_abs_diff_vs_numpy": float(np.abs(image - ref).max())}

        rows = [cpu_row("numpy", lambda: features.mel_images(y, preset))]
        if preset.chunk_seconds is None:  # the report's librosa calls make one image per clip
            rows.insert(0, cpu_row("librosa", lambda: naive_image_of(y, preset)[None]))
        batch = np.stack([y] * settings.feature_batch)
        for device in devices:
            module = TorchMelImages(preset).to(device)
            x = torch.from_numpy(batch).to(device)
            first, _ = _torch_mel(module, x)  # warm-up + agreement check
            diff = float(np.abs(first[0].cpu().numpy() - ref).max())
            times = [1e3 * _torch_mel(module, x)[1] / len(batch) for _ in range(repeats)]
            rows.append({"preset": preset.name, "path": "torch", "device": device, "batch": len(batch),
                         "ms_per_track": stat(times, "ms"), "max_abs_diff_vs_numpy": diff})
        for r in rows:
            log(f"features {r['preset']} {r['path']} ({r['device']}, batch {r['batch']}): "
                f"{r['ms_per_track']['median']:.1f} ms/track")
        out += rows
    return out
