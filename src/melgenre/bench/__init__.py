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
    (:func:`melgenre.inference.predict_paths`, torch and ONNX Runtime) against the library job
    (:func:`melgenre.library.predict_library`: decoding workers, batches across files).
``songs``
    the default model's library job on full-length MP3 songs made from the clips, scoring every
    window against the default sample of windows: songs/s, peak RSS, label agreement
    (:mod:`melgenre.bench.songs`).

The sections live in :mod:`~melgenre.bench.preprocessing` (preprocessing, features),
:mod:`~melgenre.bench.training`, :mod:`~melgenre.bench.inference` (inference, library, trust) and
:mod:`~melgenre.bench.memory`; the settings in :mod:`~melgenre.bench.settings`, the files they read in
:mod:`~melgenre.bench.inputs`, the machine description in :mod:`~melgenre.bench.measure` and the results
files in :mod:`~melgenre.bench.report`.

>>> from melgenre.bench import BenchSettings, run_bench
>>> results = run_bench("bench", BenchSettings.make(quick=True))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from melgenre.bench.inference import (
    bench_inference,
    bench_library,
    bench_trust,
    build_untrained_package,
)
from melgenre.bench.inputs import Inputs
from melgenre.bench.measure import machine_info, stat
from melgenre.bench.memory import (
    TreeMemoryMonitor,
    bench_memory,
    peak_rss_mb,
    prepare_peak_rss,
    reset_peak_rss,
)
from melgenre.bench.preprocessing import (
    bench_features,
    bench_preprocessing,
    naive_image,
    naive_image_of,
)
from melgenre.bench.report import results_markdown, write_results
from melgenre.bench.settings import SECTIONS, BenchSettings
from melgenre.bench.training import bench_training, training_configs
from melgenre.bench.songs import bench_songs


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
        inputs = Inputs(settings, Path(tmp))
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
            elif section == "install":
                from melgenre.bench.install import bench_install

                clip = next(iter(inputs.by_class().values()))[0]
                results[section] = bench_install(settings, clip, inputs.tmp, log, wheel=settings.wheel)
            else:
                results[section] = bench_memory(settings, inputs, log)
            results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
            results["seconds"] = round(time.perf_counter() - started, 1)
            results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            write_results(results, out)
    return results


__all__ = ["SECTIONS", "BenchSettings", "TreeMemoryMonitor", "build_untrained_package", "machine_info", "naive_image",
           "naive_image_of", "peak_rss_mb", "prepare_peak_rss", "reset_peak_rss", "results_markdown", "run_bench",
           "stat", "training_configs", "write_results"]
