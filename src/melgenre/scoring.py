"""Scoring with a model: a labelled corpus scored by a model (``melgenre score``), two such scorings
compared on the files both scored, and the per-track predictions file of a run's evaluation."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melgenre.errors import MelgenreError
from melgenre.metrics import add_intervals, compute_metrics, group_bootstrap_intervals, paired_bootstrap
from melgenre.report import with_interval, write_report
from melgenre.utils import atomic_path


def write_track_predictions(path: str | Path, tracks: Sequence[str], probs: np.ndarray, labels: np.ndarray,
                            classes: Sequence[str]) -> Path:
    """Write one row per track (``track``, ``label``, ``predicted``, then each class's probability) as CSV, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track", "label", "predicted", *classes])
        for t, p, y in zip(tracks, np.asarray(probs), np.asarray(labels)):
            w.writerow([t, classes[int(y)], classes[int(np.argmax(p))], *(f"{v:.6g}" for v in p)])
    return path


def read_track_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """:func:`write_track_predictions`' file as ``(track ids, probs (T, C), labels (T,), classes)``."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    classes = rows[0][3:]
    body = rows[1:]
    return (np.array([r[0] for r in body], dtype=object), np.array([[float(v) for v in r[3:]] for r in body]).reshape(len(body), len(classes)),
            np.array([classes.index(r[1]) for r in body], dtype=np.int64), classes)


def training_tracks(card: Mapping[str, Any]) -> set[str]:
    """The file stems (``blues.00012``) of the tracks a model package trained on, from its card's
    ``training.data.tracks`` (empty for cards written before they listed them)."""
    tracks = ((card.get("training") or {}).get("data") or {}).get("tracks") or []
    return {Path(t).name for t in tracks}


def score_corpus(root: str | Path, out_dir: str | Path, model: str | Path | None = None, backend: str = "auto",
                 include_training: bool = False, workers: int | None = None, progress: bool = True,
                 groups: str | Path | None = None) -> dict[str, Any]:
    """Score a model on a labelled corpus of audio files: the class folders are the truth.

    Every file is predicted by :func:`melgenre.library.predict_library` into
    ``out_dir/predictions.sqlite`` (a rerun resumes it and redoes only new or changed files),
    then scored at track level with :func:`melgenre.metrics.compute_metrics` and
    :func:`melgenre.metrics.bootstrap_intervals`;
    ``out_dir`` also gets ``report.md``, ``scores.json`` and the confusion and per-class plots.

    Parameters
    ----------
    root : path
        ``<class>/<file>`` folders (or GTZAN's ``genres/``), every class one of the model's genres, in any letter
        case or spelling :func:`melgenre.learn.genre_key` merges (``rock/``, ``hip hop/`` for ``Rock``, ``Hip-Hop``).
    out_dir : path
        Folder for the outputs (created).
    model : path, optional
        For :func:`melgenre.inference.load_model` (default: the installed default model).
    backend, workers, progress
        As for :func:`melgenre.library.predict_library`.
    include_training : bool
        Score files whose name (``blues.00012``) is one the model trained on (its card's
        ``training.data.tracks``) too, which flatters the figures. Default: leave them out.
    groups : path, optional
        A grouping file of ``track,group`` (or ``artist``) rows (:func:`melgenre.data.read_grouping`):
        ``track`` also gets ``group_intervals`` (:func:`melgenre.metrics.group_bootstrap_intervals`),
        which resample whole groups; files the file does not name count as groups of their own.

    Returns
    -------
    dict
        - ``model_id``, ``root``, ``n`` (files scored);
        - ``training_files`` (files named like training tracks) and ``excluded`` (those left out);
        - ``failed``: ``[path, reason]`` of the files that could not be predicted;
        - ``track``: :func:`melgenre.metrics.compute_metrics` with ``intervals`` and a Wilson
          ``recall_interval`` per scored class;
        - ``flags``: per flag, how many scored files carry it and how many of those are right;
        - ``files``: each scored file's ``path``, true ``genre``, predicted ``label`` and
          ``flags`` (what :func:`compare_scores` pairs);
        - ``plots``: the plot files written, or (a str) why none were (matplotlib is not installed).

    Raises
    ------
    MelgenreError
        A class folder that is not one of the model's genres, or nothing left to score.
    """
    from melgenre.datasets import discover
    from melgenre.inference import load_model
    from melgenre.learn import model_genre
    from melgenre.library import predict_library, result_rows

    genre_model = load_model(model)
    corpus = discover(root)
    # a folder is the model's genre of the same spelling (melgenre learn's genres are tags' spellings: "Rock")
    genre_of = {c: model_genre(c, genre_model.classes) for c in corpus.classes}
    unknown = [c for c, genre in genre_of.items() if genre is None]
    if unknown:
        raise MelgenreError(f"{root}: class folder(s) {', '.join(unknown)} are not genres of model "
                            f"{genre_model.model_id} ({', '.join(genre_model.classes)})")
    known = training_tracks(genre_model.card or {})
    seen = sum(Path(t.track_id).name in known for t in corpus.tracks)  # files named like training tracks
    truth = {str(t.path.resolve()): genre_model.classes.index(genre_of[corpus.classes[t.label]]) for t in corpus.tracks
             if include_training or Path(t.track_id).name not in known}
    if not truth:
        raise MelgenreError(f"{root}: every file is one the model trained on; nothing to score "
                            "(--include-training scores them anyway, optimistically)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predict_library(sorted(truth), out_dir / "predictions.sqlite", model=model, backend=backend, workers=workers,
                    progress=progress)
    rows = [r for r in result_rows(out_dir / "predictions.sqlite") if r["path"] in truth]
    failed = [[r["path"], r["error"]] for r in rows if r["error"] is not None]
    done = [r for r in rows if r["error"] is None]
    if not done:
        raise MelgenreError(f"{root}: no file could be predicted ({len(failed)} failed)")
    classes = list(genre_model.classes)
    probs = np.array([[r["probabilities"][c] for c in classes] for r in done])
    y = np.array([truth[r["path"]] for r in done])
    pred = probs.argmax(1)
    track = add_intervals(compute_metrics(probs, y, classes))
    if groups is not None:
        from melgenre.data import group_of, read_grouping

        ids = [f"{Path(r['path']).parent.name}/{Path(r['path']).stem}" for r in done]
        of = group_of(ids, read_grouping(groups))
        track["group_intervals"] = group_bootstrap_intervals(
            y, pred, [str(g) if g is not None else f"file:{i}" for i, g in enumerate(of)], len(classes))
    right = pred == y
    flags = {}
    for flag in sorted({f for r in done for f in r["flags"]}):
        has = np.array([flag in r["flags"] for r in done])
        flags[flag] = {"files": int(has.sum()), "right": int(right[has].sum())}
    result = {"model_id": genre_model.model_id, "root": str(root), "n": len(done), "training_files": seen,
              "excluded": 0 if include_training else seen, "failed": failed, "track": track, "flags": flags,
              "files": [{"path": r["path"], "genre": classes[truth[r["path"]]], "label": r["label"], "flags": r["flags"]}
                        for r in done]}
    result["plots"] = _plots(out_dir, track, classes)
    with atomic_path(out_dir / "scores.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    notes = [f"Model {genre_model.model_id} on {len(done)} files of {root} (class folders as the truth): balanced "
             f"accuracy (mean recall over the genres present) "
             f"{with_interval(track['balanced_accuracy'], track['intervals']['balanced_accuracy'])}."]
    if "group_intervals" in track:
        gi = track["group_intervals"]
        notes.append(f"Resampling whole groups of {Path(groups).name} ({gi['groups']} groups; a group's songs move "
                     f"together): accuracy {with_interval(track['accuracy'], gi['accuracy'])}, balanced accuracy "
                     f"{with_interval(track['balanced_accuracy'], gi['balanced_accuracy'])}.")
    if seen:
        notes.append(f"{seen} file(s) are named like tracks the model trained on: "
                     + ("scored too (--include-training), so the figures are optimistic." if include_training
                        else "left out."))
    if failed:
        notes.append(f"Not scored: {len(failed)} file(s) that could not be predicted (see scores.json).")
    if isinstance(result["plots"], str):
        notes.append(f"No plots: {result['plots']}.")
    notes += [f"Flag `{flag}`: {f['files']} file(s), right on {f['right']}." for flag, f in flags.items()]
    write_report(out_dir, f"{genre_model.model_id} on {Path(root).name}", {"model": str(model or "default"),
                 "root": str(root)}, {"corpus": {"track": track}}, extra_lines=notes)
    return result


def _plots(out_dir: Path, track: dict[str, Any], classes: list[str]) -> list[str] | str:
    """The confusion and per-class plots of a scored corpus (their file names), or why there are none:
    matplotlib is the ``train`` extra's, and the core install scores without it."""
    try:
        from melgenre.plots import save_all_plots
    except ImportError as exc:
        from melgenre.extras import missing_extra

        line = missing_extra(exc)
        if line is None:
            raise
        return line
    return [p.name for p in save_all_plots(out_dir, {"corpus": {"track": track}}, classes)]


def compare_scores(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any]:
    """Paired comparison of two :func:`score_corpus` results on the files both scored.

    ``dir_a`` and ``dir_b`` are ``score`` output folders (their ``scores.json``), e.g. two models on
    one labelled folder. Returns :func:`melgenre.metrics.paired_bootstrap`'s result (differences are
    A - B) with the two ``model_ids`` and the number of ``common`` files.

    Raises
    ------
    MelgenreError
        A folder without ``scores.json``, models of other genres, or no file scored by both.
    """
    results = []
    for d in (Path(dir_a), Path(dir_b)):
        path = d / "scores.json"
        if not path.is_file():
            raise MelgenreError(f"{d}: no scores.json (run melgenre score --out {d} first)")
        result = json.loads(path.read_text())
        if "files" not in result:
            raise MelgenreError(f"{path}: lists no files (written by an older melgenre; run melgenre score again)")
        results.append(result)
    classes = [c["class"] for c in results[0]["track"]["per_class"]]
    if sorted(classes) != sorted(c["class"] for c in results[1]["track"]["per_class"]):
        raise MelgenreError(f"{dir_a} and {dir_b}: the two models predict different genres")
    a, b = ({f["path"]: f for f in r["files"]} for r in results)
    common = sorted(set(a) & set(b))
    if not common:
        raise MelgenreError(f"{dir_a} and {dir_b}: no file was scored by both")
    mismatch = [p for p in common if a[p]["genre"] != b[p]["genre"]]
    if mismatch:
        raise MelgenreError(f"{mismatch[0]}: true genre {a[mismatch[0]]['genre']!r} in {dir_a}, "
                            f"{b[mismatch[0]]['genre']!r} in {dir_b}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[a[p]["genre"]] for p in common])
    pred_a, pred_b = (np.array([index[side[p]["label"]] for p in common]) for side in (a, b))
    return {"model_ids": [r["model_id"] for r in results], "common": len(common),
            **paired_bootstrap(y, pred_a, pred_b, len(classes))}
