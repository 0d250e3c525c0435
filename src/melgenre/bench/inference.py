"""The ``inference``, ``library`` and ``trust`` sections: the shipped models at prediction time (one
file's latency, files/s per file and in the library job, the default model's "not music" score)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from melgenre import __version__
from melgenre.bench.inputs import Inputs
from melgenre.bench.measure import stat
from melgenre.bench.settings import (
    DEFAULT_TARGET_MS,
    TARGET_LATENCY_MS,
    TARGET_LIBRARY_FILES_PER_S,
    TARGET_LIBRARY_SPEEDUP,
    BenchSettings,
)

#: Class names of the package built when no default model is installed (GTZAN's genres).
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


# -- inference ----------------------------------------------------------------------------------

def build_untrained_package(out: str | Path, model: str = "melcnn", preset: str = "fast",
                            classes: Sequence[str] = GENRES, seed: int = 0, **options: Any) -> Path:
    """Write an untrained model package (``<out>.safetensors`` + ``<out>.json``) for timing only."""
    import torch
    from safetensors.torch import save

    from melgenre import features, package
    from melgenre.models import build

    torch.manual_seed(seed)
    module = build(model, num_classes=len(classes), **options).eval()
    weights = save({k: v.detach().contiguous() for k, v in module.state_dict().items()})
    card = {"format": package.CARD_FORMAT, "model": module.config, "classes": list(classes),
            "preset": features.get_preset(preset).to_dict(),
            "model_id": f"{model}-{hashlib.sha256(weights).hexdigest()[:12]}",
            "metrics": {}, "training": {"note": "untrained: built by melgenre.bench for timing"},
            "created_with": __version__}
    out = Path(out).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".safetensors").write_bytes(weights)
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return out.with_suffix(".json")


def _inference_sources(inputs: Inputs) -> list[tuple[Path, str]]:
    """The packages to time: every shipped model (default first), or an untrained melcnn."""
    from melgenre.package import shipped_model_path, shipped_models

    packages = [n for n in shipped_models() if shipped_model_path(n).suffix == ".json"]  # an int8 file is
    if packages:                                                                          # timed with its package
        return [(shipped_model_path(n), f"shipped model {n!r}") for n in packages]
    return [(build_untrained_package(inputs.tmp / "pkg" / "melcnn-untrained"),
             "untrained melcnn package (no model installed)")]


def _int8_sibling(source: Path) -> Path:
    """The shipped int8 ONNX file of a shipped package (``melcnn`` -> ``melcnn-int8.onnx``); it may not exist."""
    from melgenre.package import shipped_model_path

    return shipped_model_path(f"{Path(source).stem}-int8")


def bench_inference(settings: BenchSettings, inputs: Inputs, log: Callable[[str], None]) -> dict:
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
    from melgenre.inference import load_model, predict_paths

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


# -- library ------------------------------------------------------------------------------------

def bench_library(settings: BenchSettings, inputs: Inputs, log: Callable[[str], None]) -> dict:
    """files/s of the per-file path (torch, ONNX) and of the library job, over the same files, per shipped model."""
    from melgenre.inference import load_model, predict_paths
    from melgenre.library import default_workers, predict_library

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


# -- trust --------------------------------------------------------------------------------------

def bench_trust(settings: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """The default model's "not music" score: AUROC of its out-of-fold dev clips against the generated
    non-music set (:func:`melgenre.calibrate.evaluate_package`; 6-s clips when quick, else 30 s)."""
    from melgenre.calibrate import evaluate_package
    from melgenre.errors import MelgenreError

    try:
        result = evaluate_package(seconds=6.0 if settings.quick else 30.0)
    except MelgenreError as exc:
        log(f"trust: skipped ({exc})")
        return {"skipped": str(exc)}
    log(f"trust: AUROC {result['auroc_music_vs_nonmusic']:.3f} music vs non-music; "
        f"{result['nonmusic_not_music']}/{result['n_nonmusic']} non-music flagged not_music")
    return result
