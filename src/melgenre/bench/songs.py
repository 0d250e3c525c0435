"""Full-length songs for benchmarks: MP3s made from labelled clips, and the songs benchmark.

A real library holds 3-minute MP3s at 44.1 kHz stereo, not 30-s mono clips. :func:`make_songs` joins
``clips_per_song`` clips of one genre (GTZAN's, or any ``<class>/<file>`` corpus) into such a song;
:func:`bench_songs` (``melgenre bench --sections songs``) times the library job
(:func:`melgenre.library.predict_library`) on them scoring every window against the default sample
of windows (:mod:`melgenre.windows`), in the same run, and measures how often the two agree.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from melgenre import audio

#: Songs are written as MP3 at this rate, stereo, constant bitrate (libsndfile's LAME at level 0.4: 192 kbps).
SONG_SR = 44_100
MP3_COMPRESSION = 0.4

#: Windows per song whose agreement with every-window prediction :func:`bench_songs` reports.
AGREEMENT_WINDOWS = (1, 3, 5, 10, 15, 20)

#: Targets of the songs section (issues 25, 33): songs/s of the default sample against every window, on
#: songs of training clips and (with ``--songs-cv``) of unseen clips, with accuracy against the songs'
#: genres no lower than every window's; the sampled job's peak RSS.
TARGET_SPEEDUP = 5.0
TARGET_PEAK_RSS_MB = 1024

#: Songs of unseen clips (:func:`plan_part_songs`): each clip is in about this many songs, and a genre needs
#: at least this many clips in an artist-disjoint part to make songs of it.
UNSEEN_USES = 2
UNSEEN_LEAST_CLIPS = 3


def plan_songs(clips: dict[str, list[Path]], n_songs: int, clips_per_song: int = 6) -> list[tuple[str, list[Path]]]:
    """Which clips make which song: genres in turn (sorted), each genre's clips in order, wrapping round
    when a genre has fewer clips than its songs need (so a small genre's songs repeat clips in another
    order and position). Returns ``(genre, clips)`` per song."""
    genres = sorted(g for g, files in clips.items() if files)
    plan, used = [], dict.fromkeys(genres, 0)
    while genres and len(plan) < n_songs:
        for g in genres[: n_songs - len(plan)]:
            files = clips[g]
            plan.append((g, [files[(used[g] + i) % len(files)] for i in range(clips_per_song)]))
            used[g] += clips_per_song
    return plan


def write_song(parts: Sequence[Path], out: Path) -> Path:
    """Join the clips ``parts`` into one stereo 44.1-kHz MP3 at 192 kbps (atomically); returns ``out``.

    The right channel is the left delayed by 10 samples, so the encoder sees two channels.
    """
    from melgenre.utils import atomic_path

    y = np.concatenate([audio.load(p, sr=SONG_SR).samples for p in parts])
    stereo = np.stack([y, np.concatenate([np.zeros(10, np.float32), y[:-10]])], axis=1)
    peak = float(np.max(np.abs(stereo))) or 1.0
    with atomic_path(out) as tmp:
        sf.write(tmp, stereo / max(peak, 1.0), SONG_SR, format="MP3", subtype="MPEG_LAYER_III",
                 compression_level=MP3_COMPRESSION, bitrate_mode="CONSTANT")
    return out


def part_clips(clips: dict[str, list[Path]], groups: str = "fault_filtered") -> dict[str, dict[str, list[Path]]]:
    """The clips of each group of an artist-disjoint grouping (:func:`melgenre.data.grouping`; the fold
    order of :func:`melgenre.data.group_names`), by genre: ``{group: {genre: [clip, ...]}}``. Clips in
    no group are left out (as ``melgenre cv --groups`` never scores them)."""
    from melgenre.data import group_names, grouping

    where = grouping(groups)
    out: dict[str, dict[str, list[Path]]] = {g: {} for g in group_names(groups)}
    for genre, files in sorted(clips.items()):
        for f in files:
            part = where.get(f.stem) or where.get(f"{genre}/{f.stem}")
            if part is not None:
                out[part].setdefault(genre, []).append(f)
    return out


def plan_part_songs(clips: dict[str, list[Path]], clips_per_song: int = 6, uses: int = UNSEEN_USES,
                    least: int = UNSEEN_LEAST_CLIPS) -> list[tuple[str, list[Path]]]:
    """Which clips make which song when every clip of ``clips`` (one artist-disjoint part) should be heard
    about ``uses`` times: each genre with at least ``least`` clips gets ``ceil(uses * n / clips_per_song)``
    songs of consecutive clips, wrapping round (so a clip is in about ``uses`` songs, at other positions,
    and in one song twice only when its genre has fewer clips than a song). Returns ``(genre, clips)``."""
    plan = []
    for g in sorted(clips):
        files = clips[g]
        if len(files) < least:
            continue
        for j in range(math.ceil(uses * len(files) / clips_per_song)):
            plan.append((g, [files[(j * clips_per_song + i) % len(files)] for i in range(clips_per_song)]))
    return plan


def make_songs(clips: dict[str, list[Path]], out: Path, n_songs: int, clips_per_song: int = 6,
               workers: int = 1, plan: list[tuple[str, list[Path]]] | None = None) -> list[Path]:
    """Write ``n_songs`` songs (:func:`plan_songs`, :func:`write_song`) as ``out/<genre>/<genre>-song-NN.mp3``
    (or the songs of ``plan``, such as :func:`plan_part_songs`'s).

    Songs already there are kept (encoding takes several seconds a song), so a folder can be reused.
    """
    plan = plan_songs(clips, n_songs, clips_per_song) if plan is None else plan
    counts: dict[str, int] = {}
    jobs = []
    for genre, parts in plan:
        counts[genre] = counts.get(genre, 0) + 1
        path = out / genre / f"{genre}-song-{counts[genre]:02d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((parts, path))
    todo = [(parts, path) for parts, path in jobs if not path.is_file()]
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_song, *zip(*todo)))
    else:
        for parts, path in todo:
            write_song(parts, path)
    return [path for _, path in jobs]


def _library_job(files: list[str], db: str, model: str | None, windows: str | None) -> dict[str, Any]:
    """One library job in a fresh process: its report and the process's peak RSS (MB)."""
    from melgenre.bench.memory import peak_rss_mb
    from melgenre.library import predict_library, result_rows

    report = predict_library(files, db, model=model, windows=windows, progress=False)
    rows = result_rows(db)
    return {"seconds": report.seconds, "load_seconds": report.load_seconds, "predicted": report.predicted,
            "rechecked": report.rechecked, "windows": report.windows,
            "failed": len(report.failed), "model_id": report.model_id, "backend": report.backend,
            "peak_rss_mb": round(peak_rss_mb(), 1), "labels": {r["path"]: r["label"] for r in rows},
            "unsure": {r["path"]: "unsure" in (r["flags"] or []) for r in rows}}


def run_library_job(files: Sequence[Path], db: Path, model: str | None = None,
                    windows: str | None = None) -> dict[str, Any]:
    """:func:`melgenre.library.predict_library` over ``files`` into a new ``db`` in a fresh (spawned) process,
    so its peak RSS is its own: songs/s without the model's loading, end to end, peak RSS and labels.
    ``windows`` as for ``predict_library`` (None: the model's default)."""
    db.unlink(missing_ok=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = pool.submit(_library_job, [str(f) for f in files], str(db), model, windows).result()
    db.unlink(missing_ok=True)
    job["songs_per_s"] = round(job["predicted"] / (job["seconds"] - job["load_seconds"]), 3)
    job["songs_per_s_end_to_end"] = round(job["predicted"] / job["seconds"], 3)
    return job


def window_agreement(files: Sequence[Path], model: Any, counts: Sequence[int] = AGREEMENT_WINDOWS) -> dict[str, Any]:
    """How often the label from ``n`` windows spread over a song (:func:`melgenre.windows.spread`) equals
    the label from every window, for each ``n`` of ``counts``; ``model`` scores every window."""
    from melgenre.windows import spread

    same = dict.fromkeys(counts, 0)
    totals = []
    for f in files:
        pred = model.predict(f)
        probs = pred.window_probabilities
        totals.append(len(probs))
        for n in counts:
            same[n] += int(np.argmax(probs[spread(len(probs), n)].mean(axis=0)) == np.argmax(probs.mean(axis=0)))
    return {"songs": len(files), "windows_per_song": round(float(np.mean(totals)), 1),
            "agreement": {str(n): round(same[n] / len(files), 4) for n in counts}}


def against_labels(every: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """Two library jobs over the same songs (:func:`run_library_job`) against the songs' genres (the name of
    each song's folder): accuracy of each, the paired bootstrap of the difference (sampled - every window,
    :func:`melgenre.metrics.paired_bootstrap`), how often each flags ``unsure`` and how right it is when it
    does and when it does not, and the windows each scored per song."""
    from melgenre.metrics import paired_bootstrap

    paths = sorted(every["labels"])
    truth = [Path(p).parent.name for p in paths]
    classes = sorted(set(truth) | {v for job in (every, sampled) for v in job["labels"].values() if v})
    y = np.array([classes.index(t) for t in truth])

    def pred(job: dict[str, Any]) -> np.ndarray:
        return np.array([classes.index(job["labels"][p]) if job["labels"].get(p) else -1 for p in paths])

    a, b = pred(sampled), pred(every)
    pb = paired_bootstrap(y, np.where(a < 0, (y + 1) % len(classes), a), np.where(b < 0, (y + 1) % len(classes), b),
                          len(classes))
    out: dict[str, Any] = {"songs": len(paths), "difference": round(pb["metrics"]["accuracy"]["difference"], 4),
                           "interval": [round(v, 4) for v in pb["metrics"]["accuracy"]["interval"]],
                           "level": pb["level"], "method": pb["method"],
                           "sampled_only_right": pb["discordant"]["a_only"],
                           "every_window_only_right": pb["discordant"]["b_only"]}
    for name, job, p in (("every_window", every, b), ("sampled", sampled, a)):
        unsure = np.array([bool(job["unsure"].get(path)) for path in paths])
        right = p == y
        out[name] = {"accuracy": round(float(right.mean()), 4), "unsure_rate": round(float(unsure.mean()), 4),
                     "accuracy_unsure": round(float(right[unsure].mean()), 4) if unsure.any() else None,
                     "accuracy_sure": round(float(right[~unsure].mean()), 4) if (~unsure).any() else None,
                     "windows_per_song": round(job["windows"] / max(1, job["predicted"]), 2)}
    return out


def fold_packages(cv_dir: Path, out: Path, base: str | None = None) -> dict[str, Path]:
    """A package of each fold of an artist-disjoint cross-validation of ``base``'s recipe (``melgenre cv
    CONFIG --groups fault_filtered --fixed-epochs``: ``cv_dir/group<k>-last``), by the group it held out,
    with ``base``'s window settings, calibration and ``unsure`` threshold (the default model's were fitted
    on these folds' out-of-fold predictions); ``not_music`` falls back to silence (no class centres)."""
    import json

    from melgenre.data import group_names
    from melgenre.package import package_card, read_json, save_package

    card = package_card(base)
    if card is None:
        raise ValueError(f"{base}: the songs' fold models take the windows and calibration of a package")
    packages = {}
    for k, part in enumerate(group_names("fault_filtered")):
        run = Path(cv_dir) / f"group{k}-last"
        path = save_package(run, out / f"fold-{part}", hop=card.get("predict_hop"), windows=card.get("predict_windows"))
        fold = read_json(path)
        fold.update({key: card[key] for key in ("calibration",) if key in card})
        if "trust" in card:
            fold["trust"] = {key: v for key, v in card["trust"].items() if key != "reference"}
        path.write_text(json.dumps(fold, indent=1) + "\n")
        packages[part] = path
    return packages


def _pooled(jobs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Library jobs over disjoint songs as one: summed counts and times, the highest peak RSS, merged labels."""
    out: dict[str, Any] = {k: sum(j[k] for j in jobs) for k in ("seconds", "load_seconds", "predicted", "rechecked",
                                                                 "windows", "failed")}
    out.update(peak_rss_mb=max(j["peak_rss_mb"] for j in jobs), backend=jobs[0]["backend"],
               model_id=", ".join(j["model_id"] for j in jobs),
               labels={k: v for j in jobs for k, v in j["labels"].items()},
               unsure={k: v for j in jobs for k, v in j["unsure"].items()})
    out["songs_per_s"] = round(out["predicted"] / (out["seconds"] - out["load_seconds"]), 3)
    out["songs_per_s_end_to_end"] = round(out["predicted"] / out["seconds"], 3)
    return out


def bench_unseen_songs(settings: Any, clips: dict[str, list[Path]], tmp: Path, log: Callable[[str], None]
                       ) -> dict[str, Any]:
    """Songs of clips the model did not hear: the songs of each artist-disjoint part of ``clips``
    (:func:`part_clips`, :func:`plan_part_songs`) through the library job of the fold model that held that
    part out (:func:`fold_packages` of ``settings.songs_cv``), every window against the default sample, in
    the same run; songs/s over all parts, their ratio, and both against the songs' genres (:func:`against_labels`)."""
    folder = (Path(settings.songs_dir) if settings.songs_dir else tmp / "songs") / "unseen"
    packages = fold_packages(Path(settings.songs_cv), tmp / "folds", settings.songs_model)
    every, sampled, parts = [], [], {}
    for part, part_files in part_clips(clips).items():
        plan = plan_part_songs(part_files, settings.song_clips)
        if not plan:
            continue
        songs = make_songs(part_files, folder / part, len(plan), settings.song_clips, workers=settings.workers or 1,
                           plan=plan)
        model = str(packages[part])
        every.append(run_library_job(songs, tmp / "unseen-all.sqlite", model, "all"))
        sampled.append(run_library_job(songs, tmp / "unseen-sampled.sqlite", model))
        parts[part] = {"songs": len(songs), "genres": sorted({g for g, _ in plan}), "model_id": sampled[-1]["model_id"]}
        log(f"songs of unseen clips ({part}): {len(songs)} songs, every window {every[-1]['songs_per_s']:.2f} songs/s, "
            f"sampled {sampled[-1]['songs_per_s']:.2f} songs/s")
    if not parts:
        return {}
    e, s = _pooled(every), _pooled(sampled)
    result = {"n_songs": e["predicted"], "parts": parts, "cv": str(settings.songs_cv),
              "every_window": {k: v for k, v in e.items() if k not in ("labels", "unsure")},
              "sampled": {k: v for k, v in s.items() if k not in ("labels", "unsure")},
              "speedup": round(s["songs_per_s"] / e["songs_per_s"], 2),
              "label_agreement": round(sum(e["labels"][k] == v for k, v in s["labels"].items()) / len(s["labels"]), 4),
              "labels": against_labels(e, s)}
    log(f"songs of unseen clips: {result['n_songs']} songs, {result['speedup']:.2f}x, accuracy "
        f"{result['labels']['sampled']['accuracy']:.3f} sampled against {result['labels']['every_window']['accuracy']:.3f} "
        f"every window ({result['labels']['difference']:+.3f}, {100 * result['labels']['level']:g} % interval "
        f"{result['labels']['interval'][0]:+.3f} to {result['labels']['interval'][1]:+.3f})")
    return result


def bench_songs(settings: Any, clips: dict[str, list[Path]], tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The songs benchmark: the default model's library job on full-length MP3 songs, every window
    (today's path before sampling) against the default sample of windows, in the same run.

    Figures: songs/s of both (the model's loading excluded, as in the library section) and their
    ratio, peak RSS of each job in its own process (and of the sampled job on a quarter of the songs:
    memory must not grow with the library), label agreement between the two, and the agreement of
    ``n`` windows per song with every window for :data:`AGREEMENT_WINDOWS` (without rechecks).
    """
    from melgenre.inference import load_model

    folder = Path(settings.songs_dir) if settings.songs_dir else tmp / "songs"
    t0 = time.perf_counter()
    songs = make_songs(clips, folder, settings.songs, settings.song_clips, workers=settings.workers or 1)
    log(f"songs: {len(songs)} songs of {settings.song_clips} clips ({time.perf_counter() - t0:.0f} s to make or find)")
    model = settings.songs_model
    every = run_library_job(songs, tmp / "songs-all.sqlite", model, "all")
    sampled = run_library_job(songs, tmp / "songs-sampled.sqlite", model)
    small = run_library_job(songs[: max(1, math.ceil(len(songs) / 4))], tmp / "songs-small.sqlite", model)
    same = sum(every["labels"][k] == v for k, v in sampled["labels"].items())
    genre_model = load_model(model, windows="all")
    agreement = window_agreement(songs, genre_model)
    sampled_windows = load_model(model).windows
    size_mb = sum(s.stat().st_size for s in songs) / len(songs) / 1e6
    drop = ("labels", "unsure")
    result = {
        "n_songs": len(songs), "clips_per_song": settings.song_clips, "mb_per_song": round(size_mb, 2),
        "source": str(settings.data) if settings.data else "synthetic clips",
        "model_id": sampled["model_id"], "backend": sampled["backend"], "windows": sampled_windows,
        "every_window": {k: v for k, v in every.items() if k not in drop},
        "sampled": {k: v for k, v in sampled.items() if k not in drop},
        "sampled_quarter": {k: v for k, v in small.items() if k not in drop},
        "speedup": round(sampled["songs_per_s"] / every["songs_per_s"], 2),
        "label_agreement": round(same / len(sampled["labels"]), 4),
        "labels": against_labels(every, sampled),
        "window_agreement": agreement,
        "target": {"speedup": TARGET_SPEEDUP, "accuracy_difference": 0.0, "peak_rss_mb": TARGET_PEAK_RSS_MB},
    }
    log(f"songs: every window {every['songs_per_s']:.2f} songs/s (peak {every['peak_rss_mb']:.0f} MB), "
        f"{sampled_windows} windows {sampled['songs_per_s']:.2f} songs/s (peak {sampled['peak_rss_mb']:.0f} MB; "
        f"{small['peak_rss_mb']:.0f} MB on {small['predicted']} songs; {sampled['rechecked']} rechecked): "
        f"{result['speedup']:.2f}x, labels {100 * result['label_agreement']:.1f} % the same, accuracy "
        f"{result['labels']['sampled']['accuracy']:.3f} against {result['labels']['every_window']['accuracy']:.3f}")
    if settings.songs_cv:
        result["unseen"] = bench_unseen_songs(settings, clips, tmp, log)
    checks = [result] + ([result["unseen"]] if result.get("unseen") else [])
    result["meets_target"] = (all(r["speedup"] >= TARGET_SPEEDUP and r["labels"]["difference"] >= 0 for r in checks)
                              and max(sampled["peak_rss_mb"], small["peak_rss_mb"]) <= TARGET_PEAK_RSS_MB)
    return result


def _labels_rows(name: str, r: dict[str, Any]) -> list[str]:
    """Table rows of one set of songs: every window and the default sample, songs/s and against the labels."""
    def share(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.0f} %"

    rows = []
    for key, what in (("every_window", "every window"), ("sampled", "the default sample")):
        job, acc = r[key], r["labels"][key]
        speed = f"{job['songs_per_s']:.2f}" + (f" (**{r['speedup']:.2f}×**)" if key == "sampled" else "")
        rows.append(f"| {name}: {what} | {speed} | {acc['windows_per_song']:.1f} | {100 * acc['accuracy']:.1f} % | "
                    f"{share(acc['unsure_rate'])} | {share(acc['accuracy_unsure'])} | {share(acc['accuracy_sure'])} |")
    return rows


def songs_markdown(r: dict[str, Any]) -> list[str]:
    """The songs section of ``results.md``."""
    every, sampled, small = r["every_window"], r["sampled"], r["sampled_quarter"]
    agree = r["window_agreement"]
    unseen = r.get("unseen") or {}
    lines = [
        "", f"## 8. Whole songs: the library job on {r['n_songs']} full-length MP3s ({r['model_id']})", "",
        (f"Songs of {r['clips_per_song']} clips of one genre ({r['source']}), 44.1 kHz stereo MP3 at 192 kbps, "
         f"{r['mb_per_song']:.1f} MB each; {r['backend']} backend; songs/s without loading the model."), "",
        "| windows per song | songs/s | end to end | peak RSS, MB | labels as every window |", "|---|---|---|---|---|",
        f"| every window (before sampling) | {every['songs_per_s']:.2f} | {every['songs_per_s_end_to_end']:.2f} | "
        f"{every['peak_rss_mb']:.0f} | — |",
        f"| at most {r['windows']} (default) | **{sampled['songs_per_s']:.2f}** ({r['speedup']:.2f}×) | "
        f"{sampled['songs_per_s_end_to_end']:.2f} | {sampled['peak_rss_mb']:.0f} ({small['peak_rss_mb']:.0f} on "
        f"{small['predicted']} songs) | **{100 * r['label_agreement']:.1f} %** |", "",
        (f"{sampled['rechecked']} of {sampled['predicted']} songs were too close to call on {r['windows']} windows "
         f"and were scored on more (melgenre.windows.more_windows)."), "",
        "Against the songs' genres (the songs of training clips are optimistic: the model trained on their clips):", "",
        "| songs | songs/s | windows per song | accuracy | unsure | right when unsure | right otherwise |",
        "|---|---|---|---|---|---|---|",
        *_labels_rows(f"{r['n_songs']} of training clips", r),
        *(_labels_rows(f"{unseen['n_songs']} of unseen clips", unseen) if unseen else []), "",
    ]
    for name, x in (("training clips", r), ("unseen clips", unseen)):
        if x:
            lab = x["labels"]
            lines.append(f"Accuracy of the sample minus every window's, songs of {name}: {lab['difference']:+.3f} "
                         f"({100 * lab['level']:g} % paired interval {lab['interval'][0]:+.3f} to {lab['interval'][1]:+.3f}; "
                         f"right only with the sample {lab['sampled_only_right']}, only with every window "
                         f"{lab['every_window_only_right']}); labels as every window {100 * x['label_agreement']:.1f} %.")
    if unseen:
        parts = ", ".join(f"{k}: {v['songs']} songs" for k, v in unseen["parts"].items())
        lines += ["", (f"Songs of unseen clips: each of the {len(unseen['parts'])} artist-disjoint parts' clips "
                       f"({parts}) scored by the fold model of `{unseen['cv']}` that held it out, with the default "
                       "card's calibration.")]
    t = r["target"]
    lines += ["", (f"Target: ≥ {t['speedup']:g}× songs/s and accuracy no lower than every window's, on songs of "
                   f"training clips{' and of unseen clips' if unseen else ''}; peak RSS ≤ {t['peak_rss_mb']} MB: "
                   f"{'met' if r['meets_target'] else 'not met'}."), "",
              f"Labels of n windows spread over a song equal to every window's ({agree['songs']} songs, "
              f"{agree['windows_per_song']:g} windows each on average):", "",
              "| n | " + " | ".join(agree["agreement"]) + " |", "|---" * (len(agree["agreement"]) + 1) + "|",
              "| agreement | " + " | ".join(f"{100 * v:.1f} %" for v in agree["agreement"].values()) + " |"]
    return lines


__all__ = ["AGREEMENT_WINDOWS", "TARGET_PEAK_RSS_MB", "TARGET_SPEEDUP", "UNSEEN_LEAST_CLIPS", "UNSEEN_USES",
           "against_labels", "bench_songs", "bench_unseen_songs", "fold_packages", "make_songs", "part_clips",
           "plan_part_songs", "plan_songs", "run_library_job", "songs_markdown", "window_agreement", "write_song"]

