"""What ``melgenre bench`` measures: its sections, the issues' targets and :class:`BenchSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTIONS = ("preprocessing", "features", "training", "inference", "memory", "trust", "library", "songs", "install")

#: The issues' targets: prepare vs the naive loop, and one 30-s file's end-to-end latency per model.
TARGET_SPEEDUP = 5.0
TARGET_LATENCY_MS = {"melcnn": 50.0, "musicnn": 150.0}
DEFAULT_TARGET_MS = 50.0
#: The library job's targets: files/s against the per-file path with the same model, and melcnn's files/s.
TARGET_LIBRARY_SPEEDUP = 2.0
TARGET_LIBRARY_FILES_PER_S = {"melcnn": 25.0}

#: Models with more parameters than this skip their larger input sizes in quick mode.
BIG_MODEL_PARAMS = 5_000_000


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
    songs: int = 40  # full-length MP3 songs of the songs section (melgenre.bench.songs)
    song_clips: int = 6  # clips joined into one song (30-s clips: 3-minute songs)
    songs_dir: Path | None = None  # keep the songs here and reuse them (default: made anew in a temp folder)
    songs_model: str | None = None  # the songs section's model (default: the default model)
    wheel: Path | None = None  # the install section's wheel (default: built from the source tree)
    # an artist-disjoint cv of the songs model's recipe (``melgenre cv CONFIG --groups fault_filtered
    # --fixed-epochs``): the songs section also scores songs of each part's clips with the fold that held it out
    songs_cv: Path | None = None
    sections: tuple[str, ...] = SECTIONS
    note: str = ""  # free text stored with the results, e.g. "under load: a training job ran"

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchSettings:
        """Full (default) or quick settings, with any field overridden."""
        base: dict[str, Any] = {}
        if quick:
            base = {"quick": True, "n_files": 8, "repeats": 1, "feature_batch": 2, "train_steps": 2,
                    "train_budget_s": 6.0, "infer_repeats": 3, "infer_files": 4, "memory_sizes": (10, 40),
                    "library_files": 4, "songs": 4,
                    # the install section builds a wheel and installs it from the package index: named only
                    "sections": tuple(s for s in SECTIONS if s != "install")}
        settings = cls(**{**base, **overrides})
        unknown = [s for s in settings.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        return settings
