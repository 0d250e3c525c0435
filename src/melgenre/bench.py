"""Benchmarks: preprocessing, mel features, training, inference and memory (``melgenre bench``).

Not tests: every figure is measured a few times on the machine at hand and reported as the
median of its repeats, beside a description of that machine (cores, CPU model, torch version,
GPU if any, load average). :func:`run_bench` writes ``results.json`` (everything) and
``results.md`` (tables) into one folder, rewriting both after each section, so a run stopped
half-way keeps what it measured.

Sections (see ``docs/benchmarks.md`` for what each figure means):

``preprocessing``
    tracks/s on the same N 30-s files: :func:`melgenre.store.prepare` (parallel, one worker per
    core, and in-process with ``workers=1``) against the naive report-style loop
    (:func:`naive_image`: ``librosa.load`` → ``melspectrogram`` → ``power_to_db(ref=np.max)`` →
    PIL bilinear resize → min-max, one file after the other in one process).
``features``
    ms per 30-s track: :func:`melgenre.features.mel_images` against the batched
    :class:`~melgenre.torchmel.TorchMelImages` on CPU (and CUDA when available).
``training``
    samples/s of forward + backward + Adam step at batch 8 for every registered model at its
    report input size, and the peak RSS while doing it.
``inference``
    end-to-end latency of one 30-s file (decode → mel → model → top-k) with torch and ONNX
    Runtime, its breakdown into stages, and files/s over a batch of files.
``memory``
    peak RSS of a ``prepare`` subprocess (and of its workers) at N and 4N tracks.
``library``
    files/s over the same N 30-s files for every shipped model: the per-file path
    (:func:`melgenre.predict.predict_paths`, torch and ONNX Runtime) against the library job
    (:func:`melgenre.library.predict_library`: decoding workers, batches across files).
``songs``
    the default model's library job on full-length MP3 songs made from the clips, scoring every
    window against the default sample of windows: songs/s, peak RSS, label agreement
    (:mod:`melgenre.songs`).

>>> from melgenre.bench import BenchSettings, run_bench
>>> results = run_bench("bench", BenchSettings.make(quick=True))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melgenre import __version__
from melgenre.songs import bench_songs, songs_markdown

SECTIONS = ("preprocessing", "features", "training", "inference", "memory", "trust", "library", "songs")

#: The issues' targets: prepare vs the naive loop, and one 30-s file's end-to-end latency per model.
TARGET_SPEEDUP = 5.0
TARGET_LATENCY_MS = {"melcnn": 50.0, "musicnn": 150.0}
DEFAULT_TARGET_MS = 50.0
#: The library job's targets: files/s against the per-file path with the same model, and melcnn's files/s.
TARGET_LIBRARY_SPEEDUP = 2.0
TARGET_LIBRARY_FILES_PER_S = {"melcnn": 25.0}

#: Models with more parameters than this skip their larger input sizes in quick mode.
BIG_MODEL_PARAMS = 5_000_000

#: Class names of the package built when no default model is installed (GTZAN's genres).
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


@dataclass
class BenchSettings:
    """What :func:`run_bench` measures, and how much. Use :meth:`make` for the quick/full defaults."""

    quick: bool = False
    presets: tuple[str, ...] = ("v1", "v2")
    data: Path | None = None  # a corpus folder to take the files from (default: synthetic clips)
    n_files: int = 200  # files of the preprocessing benchmark (start-up of the pool included)
    seconds: float = 30.0  # length of the synthetic clips
    workers: int | None = None  # prepare's workers (default: all cores)
    repeats: int = 3  # repeats of the preprocessing and feature figures
    feature_batch: int = 8  # clips per batch of the torch mel path
    models: tuple[str, ...] | None = None  # registered models to train (default: all)
    image_sizes: tuple[int, ...] = (416, 640)  # input sizes of the report's image models
    train_batch: int = 8
    train_steps: int = 5  # timed steps per model at most (after one warm-up step)
    train_budget_s: float = 20.0  # time per model for the timed steps (at least one step is timed)
    infer_repeats: int = 10  # single-file latency repeats per backend
    infer_files: int = 20  # files of the batch throughput figure
    memory_sizes: tuple[int, ...] = (250, 1000)  # prepare subprocess at these track counts
    memory_preset: str | None = None  # default: the last of ``presets``
    library_files: int = 200  # files of the library section (the same files for every path)
    songs: int = 40  # full-length MP3 songs of the songs section (melgenre.songs)
    song_clips: int = 6  # clips joined into one song (30-s clips: 3-minute songs)
    songs_dir: Path | None = None  # keep the songs here and reuse them (default: made anew in a temp folder)
    songs_model: str | None = None  # the songs section's model (default: the default model)
    sections: tuple[str, ...] = SECTIONS
    note: str = ""  # free text stored with the results, e.g. "under load: a training job ran"

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchSettings:
        """Full (default) or quick settings, with any field overridden."""
        base: dict[str, Any] = {}
        if quick:
            base = {"quick": True, "n_files": 8, "repeats": 1, "feature_batch": 2, "train_steps": 2,
                    "train_budget_s": 6.0, "infer_repeats": 3, "infer_files": 4, "memory_sizes": (10, 40),
                    "library_files": 4, "songs": 4}
        settings = cls(**{**base, **overrides})
        unknown = [s for s in settings.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        return settings


# -- measuring ---------------------------------------------------------------------------------

def stat(values: Iterable[float], unit: str) -> dict[str, Any]:
    """A figure: the median of its repeats, the repeats themselves and the unit."""
    vals = [float(v) for v in values]
    return {"median": float(np.median(vals)), "values": vals, "unit": unit}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), or None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so the next peak-RSS figure starts from a low level."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB since start or the last :func:`reset_peak_rss`."""
    kb = _status_kb("self", "VmHWM")
    if kb is None:  # no /proc: the lifetime peak (kB on Linux, bytes on macOS)
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb / 1024 if sys.platform == "darwin" else kb
    return kb / 1024


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    children, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class TreeMemoryMonitor(threading.Thread):
    """Samples the RSS of a process and all its descendants until :meth:`stop`.

    ``peak_kb[pid]`` is each process's own peak (VmHWM, exact); ``total_peak_kb`` the largest
    sampled sum of the tree's RSS (shared pages counted once per process, so an upper bound).
    """

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb: dict[int, int] = {}
        self.total_peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample every ``interval`` seconds until stopped."""
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        """Read the tree's RSS once."""
        total = 0
        for p in _tree(self.pid):
            rss, hwm = _status_kb(p, "VmRSS"), _status_kb(p, "VmHWM")
            if rss is None:
                continue
            total += rss
            self.peak_kb[p] = max(self.peak_kb.get(p, 0), hwm or rss)
        self.total_peak_kb = max(self.total_peak_kb, total)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


def machine_info() -> dict[str, Any]:
    """Cores, CPU model (and its int8 features: :func:`melgenre.models.int8_cpu`), memory, versions, GPU (if any)
    and load average of this machine."""
    import torch

    from melgenre.models import int8_cpu

    cpu = int8_cpu()
    mem_kb = None
    try:
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                          if l.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    versions = {"python": platform.python_version(), "melgenre": __version__, "torch": torch.__version__}
    for name in ("numpy", "librosa", "onnxruntime", "lightning"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu.model,
        "int8_cpu": str(cpu),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "memory_gb": round(mem_kb / 1024 ** 2, 1) if mem_kb else None,
        "torch_threads": torch.get_num_threads(),
        "cuda": bool(gpus),
        "gpus": gpus,
        "versions": versions,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# -- inputs ------------------------------------------------------------------------------------

def _link_subset(tracks: Sequence, root: Path, n: int, dest: Path) -> Path:
    """``dest/<class>/<file>`` hard links (copies across devices) to ``n`` tracks, spread over classes."""
    from melgenre.datasets import discover

    by_class: dict[int, list] = {}
    for t in tracks:
        by_class.setdefault(t.label, []).append(t)
    picked, k = [], 0
    while len(picked) < n and any(k < len(v) for v in by_class.values()):
        picked += [v[k] for v in by_class.values() if k < len(v)][: n - len(picked)]
        k += 1
    for t in picked:
        target = dest / t.path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(t.path, target)
            except OSError:
                shutil.copy2(t.path, target)
    discover(dest)  # fail early on an unusable subset
    return dest


class _Inputs:
    """The audio files the benchmarks use: ``--data`` or synthetic 30-s clips, made once."""

    def __init__(self, settings: BenchSettings, tmp: Path):
        from melgenre import synth
        from melgenre.datasets import discover

        self.tmp = tmp
        if settings.data is not None:
            self.pool = discover(settings.data)
            if not self.pool.tracks:
                raise ValueError(f"{settings.data}: no audio files")
            self.synthetic = False
        else:
            need = max([settings.n_files, settings.infer_files, 1]
                       + ([settings.library_files] if "library" in settings.sections else [])
                       + list(settings.memory_sizes if "memory" in settings.sections else []))
            n_classes = 4
            synth.write_corpus(tmp / "pool", n_classes=n_classes, per_class=math.ceil(need / n_classes),
                               seconds=settings.seconds, seed=0)
            self.pool = discover(tmp / "pool")
            self.synthetic = True

    def corpus(self, n: int) -> Path:
        """A folder of ``n`` files (fewer when the pool is smaller), as links into the pool."""
        dest = self.tmp / f"subset-{n}"
        if not dest.exists():
            _link_subset(self.pool.tracks, self.pool.root, n, dest)
        return dest

    def by_class(self) -> dict[str, list[Path]]:
        """Every file of the pool by class name."""
        out: dict[str, list[Path]] = {}
        for t in self.pool.tracks:
            out.setdefault(self.pool.classes[t.label], []).append(t.path)
        return out

    def files(self, n: int) -> list[Path]:
        """``n`` audio files (the first of each class in turn)."""
        from melgenre.datasets import discover

        return [t.path for t in discover(self.corpus(n)).tracks]


# -- 1. preprocessing ---------------------------------------------------------------------------

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


def bench_preprocessing(settings: BenchSettings, inputs: _Inputs, log: Callable[[str], None]) -> list[dict]:
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


# -- 2. mel features -----------------------------------------------------------------------------

def _torch_mel(module: Any, x: Any) -> tuple[Any, float]:
    """Images of one batch and the seconds it took (waiting for the GPU when on CUDA)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        images = module(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - t0


def bench_features(settings: BenchSettings, inputs: _Inputs, log: Callable[[str], None]) -> list[dict]:
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


# -- 3. training -----------------------------------------------------------------------------------

def training_configs(settings: BenchSettings) -> list[tuple[str, dict[str, Any], tuple[int, int, int]]]:
    """(model, options, input shape) of every model to train: image models at each report size."""
    from melgenre.models import count_params_of, list_models

    configs = []
    for spec in list_models():
        if settings.models and spec.name not in settings.models:
            continue
        c, h, _ = spec.default_input
        if h < min(settings.image_sizes):  # a model for natural-size chunks (melcnn): its own input
            configs.append((spec.name, {}, spec.default_input))
            continue
        big = settings.quick and count_params_of(spec.name) > BIG_MODEL_PARAMS
        for size in sorted(settings.image_sizes)[: 1 if big else None]:
            opts = {"input_size": size} if spec.options.get("input_size") is not None else {}
            configs.append((spec.name, opts, (c, size, size)))
    return configs


def _train_one(name: str, opts: dict[str, Any], shape: tuple[int, int, int], settings: BenchSettings) -> dict:
    """Time training steps of one model on random data; its peak RSS."""
    import torch
    import torch.nn.functional as F

    from melgenre.models import build, channels_last

    model = channels_last(build(name, num_classes=10, **opts)).train()  # as melgenre train runs it
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = settings.train_batch
    x, y = torch.rand(b, *shape), torch.randint(0, 10, (b,))
    gc.collect()
    _malloc_trim()
    reset_peak_rss()
    rss_before = (_status_kb("self", "VmRSS") or 0) / 1024

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    warm = _timed(step)
    if settings.quick and warm > settings.train_budget_s:  # a huge model in quick mode: one step only
        times, includes_warmup = [warm], True
    else:
        n = max(1, min(settings.train_steps, int(settings.train_budget_s // max(warm, 1e-6))))
        times, includes_warmup = [_timed(step) for _ in range(n)], False
    return {"model": name, "options": opts, "input": list(shape), "batch": b, "params": params,
            "steps": len(times), "includes_warmup": includes_warmup,
            "step_s": stat(times, "s"), "samples_per_s": stat([b / t for t in times], "samples/s"),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(rss_before, 1)}


def bench_training(settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    """Samples/s of forward + backward + Adam step (random data, batch ``train_batch``) and peak RSS."""
    import torch

    torch.manual_seed(0)
    out = []
    for name, opts, shape in training_configs(settings):
        row = _train_one(name, opts, shape, settings)
        log(f"training {name} {'x'.join(map(str, shape))}: {row['samples_per_s']['median']:.2f} samples/s "
            f"({row['step_s']['median']:.2f} s/step, {row['steps']} step(s)), peak RSS {row['peak_rss_mb']:.0f} MB")
        out.append(row)
        gc.collect()
        _malloc_trim()
    return out


# -- 4. inference -------------------------------------------------------------------------------

def build_untrained_package(out: str | Path, model: str = "melcnn", preset: str = "fast",
                            classes: Sequence[str] = GENRES, seed: int = 0, **options: Any) -> Path:
    """Write an untrained model package (``<out>.safetensors`` + ``<out>.json``) for timing only."""
    import torch
    from safetensors.torch import save

    from melgenre import features, predict
    from melgenre.models import build

    torch.manual_seed(seed)
    module = build(model, num_classes=len(classes), **options).eval()
    weights = save({k: v.detach().contiguous() for k, v in module.state_dict().items()})
    card = {"format": predict.CARD_FORMAT, "model": module.config, "classes": list(classes),
            "preset": features.get_preset(preset).to_dict(),
            "model_id": f"{model}-{hashlib.sha256(weights).hexdigest()[:12]}",
            "metrics": {}, "training": {"note": "untrained: built by melgenre.bench for timing"},
            "created_with": __version__}
    out = Path(out).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".safetensors").write_bytes(weights)
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return out.with_suffix(".json")


def _inference_sources(inputs: _Inputs) -> list[tuple[Path, str]]:
    """The packages to time: every shipped model (default first), or an untrained melcnn."""
    from melgenre.predict import shipped_model_path, shipped_models

    packages = [n for n in shipped_models() if shipped_model_path(n).suffix == ".json"]  # an int8 file is
    if packages:                                                                          # timed with its package
        return [(shipped_model_path(n), f"shipped model {n!r}") for n in packages]
    return [(build_untrained_package(inputs.tmp / "pkg" / "melcnn-untrained"),
             "untrained melcnn package (no model installed)")]


def _int8_sibling(source: Path) -> Path:
    """The shipped int8 ONNX file of a shipped package (``melcnn`` -> ``melcnn-int8.onnx``); it may not exist."""
    from melgenre.predict import shipped_model_path

    return shipped_model_path(f"{Path(source).stem}-int8")


def bench_inference(settings: BenchSettings, inputs: _Inputs, log: Callable[[str], None]) -> dict:
    """End-to-end latency of one file and files/s over a batch, torch eager vs ONNX Runtime, for
    every shipped model at its default prediction hop and with back-to-back chunks."""
    from melgenre.features import Preset

    files = inputs.files(max(settings.infer_files, 1))
    result: dict[str, Any] = {"n_batch_files": len(files), "models": []}
    for source, which in _inference_sources(inputs):
        card = json.loads(Path(source).read_text())
        entry = {"source": which, "model": card["model"]["name"],
                 "target_ms": TARGET_LATENCY_MS.get(card["model"]["name"], DEFAULT_TARGET_MS), "backends": []}
        hops: list[float | None] = [None]  # the card's (or preset's) own hop
        preset = Preset.from_dict(card["preset"])  # read from the card: no model load just for this
        chunk = preset.chunk_seconds
        if chunk is not None and chunk != card.get("predict_hop", preset.chunk_hop_seconds or chunk):
            hops.append(chunk)  # back-to-back windows (predict --hop <chunk length>)
        for hop, backend in itertools.product(hops, ("torch", "onnx")):
            entry["backends"].append(_time_model(source, backend, hop, files, settings, log))
        int8 = _int8_sibling(source)
        for hop in hops if int8.is_file() else ():
            entry["backends"].append({**_time_model(int8, "onnx", hop, files, settings, log), "backend": "onnx int8"})
        result["models"].append(entry)
    return result


def _time_model(source: Path, backend: str, hop: float | None, files: list[Path], settings: BenchSettings,
                log: Callable[[str], None]) -> dict[str, Any]:
    """One (model, backend, hop) row of :func:`bench_inference`."""
    from melgenre import audio
    from melgenre.predict import load_model, predict_paths

    t0 = time.perf_counter()
    model = load_model(source, backend=backend, hop=hop)
    load_s = time.perf_counter() - t0
    model.predict(files[0])  # warm-up
    latency = []
    for i in range(settings.infer_repeats):
        t0 = time.perf_counter()
        model.predict(files[i % len(files)], top_k=3)
        latency.append(1e3 * (time.perf_counter() - t0))
    stages: dict[str, list[float]] = {"decode": [], "mel": [], "model": []}
    for i in range(settings.infer_repeats):
        f = files[i % len(files)]
        t0 = time.perf_counter()
        y = audio.load(f, sr=model.preset.sr).samples
        t1 = time.perf_counter()
        images, _, _ = model.clip_images(y)
        t2 = time.perf_counter()
        model.predict_images(images)
        t3 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[key].append(1e3 * dt)
    batch = []
    for _ in range(max(1, settings.repeats)):
        t0 = time.perf_counter()
        list(predict_paths(files, model, 3))
        batch.append(len(files) / (time.perf_counter() - t0))
    target = TARGET_LATENCY_MS.get(model.card["model"]["name"], DEFAULT_TARGET_MS)
    row = {"backend": backend, "model_id": model.model_id, "preset": model.preset.name,
           "hop_s": model.window_preset.chunk_hop_seconds, "windows_per_file": len(images),
           "load_s": round(load_s, 3), "latency_ms": stat(latency, "ms"),
           "stages_ms": {k: stat(v, "ms") for k, v in stages.items()},
           "batch_files_per_s": stat(batch, "files/s")}
    row["meets_target"] = row["latency_ms"]["median"] <= target
    log(f"inference {model.model_id} {backend} (hop {row['hop_s']} s): {row['latency_ms']['median']:.1f} ms/file "
        f"(decode {row['stages_ms']['decode']['median']:.1f}, mel {row['stages_ms']['mel']['median']:.1f}, model "
        f"{row['stages_ms']['model']['median']:.1f}); batch {row['batch_files_per_s']['median']:.1f} files/s")
    return row


# -- 5. memory ----------------------------------------------------------------------------------

_PREPARE_SCRIPT = ("import sys; from melgenre.store import prepare; "
                   "prepare(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), progress=False)")


def prepare_peak_rss(data: Path, preset: str, out: Path, workers: int) -> dict[str, Any]:
    """Run ``prepare`` in a subprocess and sample the RSS of it and its workers."""
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE_SCRIPT, str(data), preset, str(out), str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    monitor = TreeMemoryMonitor(proc.pid)
    monitor.start()
    _, err = proc.communicate()
    monitor.stop()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"prepare subprocess failed ({proc.returncode}): {err.decode()[-2000:]}")
    others = [kb for p, kb in monitor.peak_kb.items() if p != proc.pid]
    return {"seconds": round(seconds, 2),
            "peak_rss_mb_main": round(monitor.peak_kb.get(proc.pid, 0) / 1024, 1),
            "peak_rss_mb_largest_child": round(max(others, default=0) / 1024, 1),
            "children": len(others),
            "peak_rss_mb_total": round(monitor.total_peak_kb / 1024, 1),
            "output_mb": round(out.stat().st_size / 1024 ** 2, 1)}


def bench_memory(settings: BenchSettings, inputs: _Inputs, log: Callable[[str], None]) -> list[dict]:
    """Peak RSS of ``prepare`` at each of ``memory_sizes`` tracks (should not grow with N)."""
    from melgenre.datasets import discover

    preset = settings.memory_preset or settings.presets[-1]
    workers = settings.workers or os.cpu_count() or 1
    out = []
    for n in settings.memory_sizes:
        root = inputs.corpus(n)
        tracks = len(discover(root).tracks)
        row = {"n_tracks": tracks, "preset": preset, "workers": workers,
               **prepare_peak_rss(root, preset, inputs.tmp / f"mem-{n}.h5", workers)}
        (inputs.tmp / f"mem-{n}.h5").unlink(missing_ok=True)
        log(f"memory: prepare {tracks} tracks ({preset}): main {row['peak_rss_mb_main']:.0f} MB, largest child "
            f"{row['peak_rss_mb_largest_child']:.0f} MB, whole tree {row['peak_rss_mb_total']:.0f} MB")
        out.append(row)
    if len(out) >= 2 and out[0]["peak_rss_mb_total"] > 0:
        ratio = out[-1]["peak_rss_mb_total"] / out[0]["peak_rss_mb_total"]
        for row in out:
            row["growth_vs_smallest"] = round(row["peak_rss_mb_total"] / out[0]["peak_rss_mb_total"], 3)
        log(f"memory: whole-tree peak at {out[-1]['n_tracks']} vs {out[0]['n_tracks']} tracks: {ratio:.2f}x")
    return out


# -- 6. library ----------------------------------------------------------------------------------

def bench_library(settings: BenchSettings, inputs: _Inputs, log: Callable[[str], None]) -> dict:
    """files/s of the per-file path (torch, ONNX) and of the library job, over the same files, per shipped model."""
    from melgenre.library import default_workers, predict_library
    from melgenre.predict import load_model, predict_paths

    files = inputs.files(max(settings.library_files, 1))
    workers = settings.workers or default_workers()
    result: dict[str, Any] = {"n_files": len(files), "workers": workers, "models": []}
    for source, which in _inference_sources(inputs):
        name = json.loads(Path(source).read_text())["model"]["name"]
        entry: dict[str, Any] = {"source": which, "model": name, "per_file": {}}
        for backend in ("torch", "onnx"):
            model = load_model(source, backend=backend)
            model.predict(files[0])  # warm-up
            t0 = time.perf_counter()
            list(predict_paths(files, model, 3))
            entry["per_file"][backend] = round(len(files) / (time.perf_counter() - t0), 2)
        db = inputs.tmp / f"library-{name}.sqlite"
        db.unlink(missing_ok=True)
        report = predict_library(files, db, model=source, workers=workers, progress=False)
        db.unlink(missing_ok=True)
        # as for the per-file path, the model is loaded before the clock starts; the workers' start-up counts
        entry |= {"model_id": report.model_id, "backend": report.backend,
                  "library": round(report.predicted / (report.seconds - report.load_seconds), 2),
                  "library_end_to_end": round(report.files_per_s, 2), "library_seconds": round(report.seconds, 2),
                  "load_seconds": round(report.load_seconds, 2)}
        entry["speedup_vs_torch"] = round(entry["library"] / entry["per_file"]["torch"], 2)
        entry["speedup_vs_same_backend"] = round(entry["library"] / entry["per_file"][report.backend], 2)
        int8 = _int8_sibling(source)
        if int8.is_file():
            quick = predict_library(files, db, model=int8, workers=workers, progress=False)
            db.unlink(missing_ok=True)
            entry |= {"int8_model_id": quick.model_id,
                      "library_int8": round(quick.predicted / (quick.seconds - quick.load_seconds), 2)}
        best = max(entry["library"], entry.get("library_int8", 0.0))
        floor = TARGET_LIBRARY_FILES_PER_S.get(name)
        entry["target"] = {"speedup": TARGET_LIBRARY_SPEEDUP, "files_per_s": floor}
        entry["meets_target"] = (best / entry["per_file"]["torch"] >= TARGET_LIBRARY_SPEEDUP
                                 and (floor is None or best >= floor))
        log(f"library {report.model_id}: per file {entry['per_file']['torch']:.1f} files/s torch, "
            f"{entry['per_file']['onnx']:.1f} onnx; library job ({report.backend}, {workers} workers) "
            f"{entry['library']:.1f} files/s ({entry['speedup_vs_torch']:.2f}x torch, "
            f"{entry['speedup_vs_same_backend']:.2f}x {report.backend})"
            + (f"; int8 {entry['library_int8']:.1f} files/s" if "library_int8" in entry else ""))
        result["models"].append(entry)
    return result


# -- the suite -----------------------------------------------------------------------------------

def bench_trust(settings: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """The default model's "not music" score: AUROC of its out-of-fold dev clips against the generated
    non-music set (:func:`melgenre.calibrate.evaluate_package`; 6-s clips when quick, else 30 s)."""
    from melgenre.errors import MelgenreError
    from melgenre.calibrate import evaluate_package

    try:
        result = evaluate_package(seconds=6.0 if settings.quick else 30.0)
    except MelgenreError as exc:
        log(f"trust: skipped ({exc})")
        return {"skipped": str(exc)}
    log(f"trust: AUROC {result['auroc_music_vs_nonmusic']:.3f} music vs non-music; "
        f"{result['nonmusic_not_music']}/{result['n_nonmusic']} non-music flagged not_music")
    return result


def run_bench(out: str | Path = "bench", settings: BenchSettings | None = None,
              log: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark sections of ``settings`` and write ``out/results.json`` and ``out/results.md``.

    Parameters
    ----------
    out : path
        Folder for the results (created).
    settings : BenchSettings, optional
        What to measure; default ``BenchSettings.make()`` (the full suite).
    log : callable
        Called with one line per figure as it is measured.
    command : str, optional
        The command line that produced the results (stored with them).

    Returns
    -------
    dict
        The results, as written to ``results.json``.
    """
    settings = settings or BenchSettings.make()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "format": "melgenre-bench/1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command or "melgenre.bench.run_bench",
        "quick": settings.quick,
        "note": settings.note,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()},
        "machine": machine_info(),
    }
    with tempfile.TemporaryDirectory(prefix="melgenre-bench-") as tmp:
        if settings.data is None:
            log("writing the synthetic input clips (about 0.1 s each) ...")
        inputs = _Inputs(settings, Path(tmp))
        results["inputs"] = ("synthetic clips (melgenre.synth.write_corpus), "
                             f"{settings.seconds:g} s, 22 050 Hz, 16-bit WAV") if inputs.synthetic \
            else f"files of {settings.data}"
        for section in SECTIONS:
            if section not in settings.sections:
                continue
            t0 = time.perf_counter()
            if section == "preprocessing":
                results[section] = bench_preprocessing(settings, inputs, log)
            elif section == "features":
                results[section] = bench_features(settings, inputs, log)
            elif section == "training":
                results[section] = bench_training(settings, log)
            elif section == "inference":
                results[section] = bench_inference(settings, inputs, log)
            elif section == "trust":
                results[section] = bench_trust(settings, log)
            elif section == "library":
                results[section] = bench_library(settings, inputs, log)
            elif section == "songs":
                results[section] = bench_songs(settings, inputs.by_class(), inputs.tmp, log)
            else:
                results[section] = bench_memory(settings, inputs, log)
            results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
            results["seconds"] = round(time.perf_counter() - started, 1)
            results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            write_results(results, out)
    return results


def write_results(results: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json`` and ``results.md`` into ``out`` (each atomically)."""
    from melgenre.utils import atomic_path

    out = Path(out)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(results_markdown(results))


def _m(figure: dict[str, Any], digits: int = 1) -> str:
    return f"{figure['median']:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (medians; repeats are in results.json)."""
    m = results["machine"]
    lines = [f"# melgenre benchmarks{' (quick)' if results.get('quick') else ''}", "",
             f"- command: `{results.get('command', '')}`",
             f"- date: {results['created']}; total {results.get('seconds', 0):.0f} s",
             (f"- machine: {m['cores']} cores ({m.get('int8_cpu', m['cpu_model'])}), {m['memory_gb']} GB RAM, torch "
              f"{m['versions']['torch']} ({m['torch_threads']} threads), GPU: {', '.join(m['gpus']) or 'none'}"),
             (f"- load average at start {m['loadavg']}, at end {m.get('loadavg_end', '?')}"
              " (1, 5, 15 min; a value above the core count means other work shared the CPU)"),
             f"- inputs: {results.get('inputs', '')}"]
    if results.get("note"):
        lines.append(f"- note: {results['note']}")
    lines.append("- every figure is the median of its repeats (all repeats are in results.json)")
    if results.get("preprocessing"):
        lines += ["", "## 1. Preprocessing throughput (tracks/s, higher is better)", "",
                  ("| preset | files | naive loop (1 process) | prepare, 1 worker | prepare, workers (end to end) | "
                   "prepare, workers (steady state) | prepare / naive | target |"),
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["preprocessing"]:
            steady = r.get("prepare_steady_tracks_per_s")
            steady_txt = (f"{steady:.1f} (start-up {r['prepare_startup_s']:.1f} s)"
                          if steady and r.get("prepare_startup_s") is not None else "—")
            ratio = f"**{r['speedup']:.2f}×** end to end"
            if r.get("speedup_steady"):
                ratio += f", **{r['speedup_steady']:.2f}×** steady"
            lines.append(f"| {r['preset']} | {r['n_files']} | {_m(r['naive'])} | {_m(r['prepare_1_worker'])} | "
                         f"{_m(r['prepare'])} ({r['workers']} workers) | {steady_txt} | {ratio} | "
                         f"≥ {r['target_speedup']:g}× {'met' if r['meets_target'] else 'not met'} |")
    if results.get("features"):
        lines += ["", "## 2. Mel images of one 30-s track (ms per track, lower is better)", "",
                  "| preset | path | device | batch | ms / track | max abs diff vs numpy path |",
                  "|---|---|---|---|---|---|"]
        for r in results["features"]:
            diff = f"{r['max_abs_diff_vs_numpy']:.1e}" if r["path"] != "numpy" else "—"
            lines.append(f"| {r['preset']} | {r['path']} | {r['device']} | {r['batch']} | "
                         f"{_m(r['ms_per_track'])} | {diff} |")
    if results.get("training"):
        lines += ["", "## 3. Training throughput (forward + backward + Adam, random data)", "",
                  ("| model | options | input | batch | params | steps | s / step | samples / s | "
                   "peak RSS, MB (RSS before) |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["training"]:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
            steps = f"{r['steps']}{' (incl. warm-up)' if r['includes_warmup'] else ''}"
            lines.append(f"| {r['model']} | {opts} | {'×'.join(map(str, r['input']))} | {r['batch']} | "
                         f"{r['params']:,} | {steps} | {_m(r['step_s'], 2)} | {_m(r['samples_per_s'], 2)} | "
                         f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |")
    if results.get("inference"):
        inf = results["inference"]
        lines += ["", "## 4. Inference: one 30-s file end to end, per model", "",
                  (f"| model | backend | preset | hop (s) | windows | ms / file | decode | mel | model | target | "
                   f"batch of {inf['n_batch_files']} files (files/s) |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for entry in inf["models"]:
            for r in entry["backends"]:
                s = r["stages_ms"]
                lines.append(f"| {r['model_id']} | {r['backend']} | {r['preset']} | {r.get('hop_s') or '—'} | "
                             f"{r['windows_per_file']} | **{_m(r['latency_ms'])}** | {_m(s['decode'])} | "
                             f"{_m(s['mel'])} | {_m(s['model'])} | ≤ {entry['target_ms']:g} ms "
                             f"{'met' if r['meets_target'] else 'not met'} | {_m(r['batch_files_per_s'])} |")
    if results.get("memory"):
        lines += ["", "## 5. Memory of `prepare` (peak RSS, MB)", "",
                  ("| tracks | preset | workers | main process | largest child | whole process tree | "
                   "vs smallest N | seconds |"), "|---|---|---|---|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['n_tracks']} | {r['preset']} | {r['workers']} | {r['peak_rss_mb_main']:.0f} | "
                         f"{r['peak_rss_mb_largest_child']:.0f} | {r['peak_rss_mb_total']:.0f} | "
                         f"{r.get('growth_vs_smallest', 1.0):.2f}× | {r['seconds']:.1f} |")
    trust = results.get("trust")
    if trust and "skipped" not in trust:
        lines += ["", "## 6. Not music: the default model's novelty score", "",
                  f"- AUROC, out-of-fold dev clips ({trust['n_music']}) against generated non-music "
                  f"({trust['n_nonmusic']} clips of {trust['seconds']:g} s{'' if trust['speech'] else ', no speech'}): "
                  f"**{trust['auroc_music_vs_nonmusic']:.3f}** (target ≥ 0.95)",
                  f"- false-flag rate on the dev clips: {100 * trust['false_flag_rate_dev']:.1f} %",
                  f"- non-music flagged not_music: {trust['nonmusic_not_music']} of {trust['n_nonmusic']}; "
                  f"not_music or unsure: {trust['nonmusic_flagged']}"]
    if results.get("library"):
        lib = results["library"]
        lines += ["", f"## 7. Library job: {lib['n_files']} files (files/s, higher is better)", "",
                  ("| model | per file, torch | per file, onnx | library job (backend, workers) | vs per file torch | "
                   "vs per file, same backend | library job, int8 | target |"), "|---|---|---|---|---|---|---|---|"]
        for r in lib["models"]:
            floor = r["target"]["files_per_s"]
            target = f"≥ {r['target']['speedup']:g}×" + (f" and ≥ {floor:g} files/s" if floor else "")
            lines.append(f"| {r['model_id']} | {r['per_file']['torch']:.1f} | {r['per_file']['onnx']:.1f} | "
                         f"**{r['library']:.1f}** ({r['backend']}, {lib['workers']}) | {r['speedup_vs_torch']:.2f}× | "
                         f"{r['speedup_vs_same_backend']:.2f}× | "
                         f"{'**%.1f**' % r['library_int8'] if 'library_int8' in r else '—'} | "
                         f"{target} {'met' if r['meets_target'] else 'not met'} |")
    if results.get("songs"):
        lines += songs_markdown(results["songs"])
    return "\n".join(lines) + "\n"


__all__ = ["BenchSettings", "TreeMemoryMonitor", "build_untrained_package", "machine_info", "naive_image",
           "peak_rss_mb", "prepare_peak_rss", "reset_peak_rss", "results_markdown", "run_bench", "stat",
           "training_configs", "write_results"]
