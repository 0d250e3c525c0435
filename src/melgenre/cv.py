"""Cross-validation of a training recipe: K folds, a final retrain, pooled out-of-fold figures.

One training run scores its model on one validation split, so its figures depend on which
tracks landed there. K-fold cross-validation (:func:`cross_validate`) cuts the tracks into K
folds and trains K runs of the same config (:func:`melgenre.train.fit`), each on all folds but
one and scored on the fold it did not train on; every track of the folds is then scored exactly
once, by a model that never saw it.

How the tracks are cut decides what the figures mean. Stratified folds keep each genre's share
in every fold, but GTZAN is ordered by artist, so they put songs of one artist on both sides of
a fold and the estimate is optimistic. Artist-disjoint folds keep every group of tracks (an
artist, or a part of GTZAN's fault-filtered split) on one side: a group is held out whole, so a
fold is scored on artists its model never heard.

After the folds, a final retrain trains one model on all tracks the folds used (stratified: all
but a held-out test part, on which it is evaluated once; grouped: all tracks, with no test
part). With no validation split left to stop it, it trains for the mean over the folds of their
best epoch count, rounded (with ``fixed_epochs``: ``train.max_epochs``, the count every fold
trained).

The folds are reported two ways: the mean and standard deviation of the folds' own validation
figures, and the pooled out-of-fold figures, computed once over all scored tracks with their
track-level confusion matrices summed (:func:`melgenre.metrics.pooled_metrics`), with bootstrap
intervals. Cross-validations of several recipes on the same folds can be fused
(:func:`fuse_cv`: their out-of-fold probabilities averaged) or compared track by track
(:func:`compare_cv`: a paired bootstrap).

A cross-validation directory (``RUNS_DIR/<name>/``) holds::

    fold<k>/, final/                 one run directory per fold and the final retrain (melgenre.train)
    cv.json, cv.md                   per-fold and pooled figures, the final model's test figures
    group<k>/, final-groups/         the same with artist-disjoint groups ...
    cv-groups.json, cv-groups.md     ... beside those of a stratified CV of the same config
    *-last/, cv-last.json, ...       the same again with ``fixed_epochs`` (each fold's last epoch scored)

Finished folds are skipped on a rerun, so a killed cross-validation goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from melgenre.config import ExperimentConfig
from melgenre.data import (
    GROUPINGS,
    group_folds,
    group_kfold_splits,
    group_of,
    is_grouping_file,
    kfold_split,
    track_table,
)
from melgenre.errors import ConfigError, MelgenreError
from melgenre.evaluate import (
    compute_metrics,
    group_bootstrap_intervals,
    learnable_classes,
    paired_bootstrap,
    pooled_metrics,
    with_interval,
)
from melgenre.train import _with_data, fit, track_probabilities
from melgenre.utils import atomic_path


def cross_validate(cfg: ExperimentConfig, folds: int | None = None, runs_dir: str | Path = "runs",
                   data: str | Path | None = None, progress: bool = True, fixed_epochs: bool = False,
                   groups: str | None = None, final_retrain: bool = True) -> dict[str, Any]:
    """K-fold CV, then a final retrain (the report's models 19–20); stratified or artist-disjoint.

    Without ``groups`` (stratified k-fold): a stratified test part (``data.fractions[2]``) is
    held out; the other tracks are cut into ``folds`` (default 5) stratified folds. GTZAN is
    ordered by artist, so these folds put one artist on both sides: the estimate is optimistic.
    Each fold trains with early stopping on its validation fold (``RUNS_DIR/<name>/fold<k>``).
    Then ``final`` trains on all non-test tracks for the mean best epoch count (no validation)
    and is evaluated once on the test part. Writes ``cv.json`` and ``cv.md`` into
    ``RUNS_DIR/<name>``; finished folds are skipped on a rerun.

    With ``groups`` (a name from :data:`melgenre.data.GROUPINGS`; ``"fault_filtered"``: the
    three artist-disjoint parts of GTZAN's fault-filtered split), the folds are
    :func:`melgenre.data.group_kfold_splits`: one per group, that group scored, all other
    tracks (tracks outside every group included) trained on. There are as many folds as groups:
    ``folds`` must be None or that number. ``groups`` may also be a ``.csv`` / ``.tsv`` file of
    ``track,group`` rows (e.g. artists, :func:`melgenre.data.read_grouping`); its groups are dealt
    to ``folds`` folds (default 5, at most one per group). No test part is held out (every grouped track is
    scored once in the folds), so the final retrain (``final-groups``) trains on all tracks and
    is not evaluated. Folds go to ``group<k>``, results to ``cv-groups.json`` / ``cv-groups.md``,
    beside those of a stratified CV of the same config.

    With ``fixed_epochs`` every fold trains ``train.max_epochs`` epochs and its last epoch is
    scored (``fold<k>-last`` / ``group<k>-last``; nothing is chosen on the tracks it is scored
    on, so the pooled figures estimate the recipe without optimism), the final retrain trains as
    many (``final-last`` / ``final-groups-last``) and results go to ``cv-last.json`` /
    ``cv-groups-last.json``. Both modes report the folds' track-level predictions pooled
    (``pooled``, see :func:`melgenre.metrics.pooled_metrics`). The result's ``protocol`` says
    in words which folds were used. ``final_retrain=False`` stops after the folds (an estimate
    only: no final model, no test result).
    """
    from melgenre.store import MelStore

    if groups is not None and groups not in GROUPINGS and not is_grouping_file(groups):
        raise ConfigError(f"groups: unknown grouping {groups!r}; known: {', '.join(GROUPINGS)}, "
                          "or a .csv / .tsv file of track,group rows")
    cfg = _with_data(cfg, data)
    data_path = Path(cfg.data.path)
    base = Path(runs_dir) / cfg.name
    suffix = "-last" if fixed_epochs else ""
    with MelStore(data_path) as store:
        ids, labels = track_table(store)
        classes = list(store.classes)
    if groups in GROUPINGS:
        fold_splits = group_kfold_splits(ids, labels, groups)
        if folds is not None and folds != len(fold_splits):
            raise ConfigError(f"folds: {groups} groups make {len(fold_splits)} folds, not {folds}; "
                              "leave the number of folds unset")
        folds, protocol = len(fold_splits), GROUPINGS[groups]
        fold_groups = [", ".join(held) for held in group_folds(ids, labels, groups)]
    elif groups is not None:  # a grouping file: its groups dealt to the folds
        groups = str(groups)
        folds = 5 if folds is None else folds
        dealt = group_folds(ids, labels, groups, folds)
        fold_splits = group_kfold_splits(ids, labels, groups, folds)
        protocol = (f"group-disjoint ({Path(groups).name}: {sum(map(len, dealt))} groups in {folds} folds, "
                    "none on both sides)")
        fold_groups = [", ".join(held[:3]) + (f" (+{len(held) - 3} more)" if len(held) > 3 else "") for held in dealt]
    if groups is not None:
        stem, fold_name, final_name = "cv-groups", "group", "final-groups"
        final_splits = {"train": [str(t) for t in ids], "val": [], "test": []}
    else:
        folds = 5 if folds is None else folds
        if folds < 2:
            raise ConfigError(f"folds: need at least 2, got {folds}")
        test_fraction = cfg.data.fractions[2] / sum(cfg.data.fractions)
        fold_splits = [kfold_split(ids, labels, test_fraction, folds, k, cfg.seed) for k in range(folds)]
        protocol, fold_groups = "stratified k-fold (same artists on both sides: optimistic)", None
        stem, fold_name, final_name = "cv", "fold", "final"
        held = fold_splits[0]
        final_splits = {"train": held["train"] + held["val"], "val": [], "test": held["test"]}
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    untrained = [sorted({classes[label_of[t]] for t in s["val"]} - {classes[label_of[t]] for t in s["train"]})
                 for s in fold_splits]
    fold_metrics = []
    for k, fold_split in enumerate(fold_splits):
        fold_data = (dataclasses.replace(cfg.data, split="kfold", folds=folds, fold=k) if groups is None
                     else dataclasses.replace(cfg.data, groups=groups))
        fold_cfg = dataclasses.replace(cfg, name=f"{fold_name}{k}{suffix}", data=fold_data)
        run = base / fold_cfg.name
        if not (run / "metrics.json").exists():
            fit(fold_cfg, base, progress=progress, evaluate_splits=("val",), splits=fold_split,
                keep_last=fixed_epochs)
        fold_metrics.append(json.loads((run / "metrics.json").read_text()))

    if fixed_epochs:
        epochs = cfg.train.max_epochs
    else:
        epochs = max(1, int(round(float(np.mean([m["best_epoch"] + 1 for m in fold_metrics])))))
    final_cfg = dataclasses.replace(cfg, name=f"{final_name}{suffix}",
                                    train=dataclasses.replace(cfg.train, max_epochs=epochs))
    final_dir = base / final_cfg.name
    final: dict[str, Any] = {"results": {}}
    if final_retrain:
        if not (final_dir / "metrics.json").exists():
            fit(final_cfg, base, progress=progress, evaluate_splits=("test",), splits=final_splits)
        final = json.loads((final_dir / "metrics.json").read_text())

    def summary(level: str, key: str) -> dict[str, Any]:
        values = [m["results"]["val"][level][key] for m in fold_metrics]
        return {"folds": values, "mean": float(np.mean(values)), "std": float(np.std(values))}

    confusions = [m["results"]["val"]["track"]["confusion"] for m in fold_metrics]
    pooled = pooled_metrics(confusions, classes, learnable_classes(classes, np.sum(confusions, axis=(0, 2)), untrained))
    if groups is not None and groups not in GROUPINGS:  # a grouping file (artists): intervals resampling its groups
        parts = [track_probabilities(base / f"{fold_name}{k}{suffix}") for k in range(folds)]
        tracks = np.concatenate([p[0] for p in parts])
        pooled["group_intervals"] = group_bootstrap_intervals(
            np.concatenate([p[2] for p in parts]), np.concatenate([p[1].argmax(1) for p in parts]),
            [str(g) for g in group_of(tracks, groups)], len(classes))
    result = {
        "name": cfg.name, "protocol": protocol, "groups": groups, "folds": folds,
        "final_epochs": epochs if final_retrain else None,
        "selection": "last epoch" if fixed_epochs else "best epoch on the validation fold",
        "fold_groups": fold_groups, "fold_tracks": [len(s["val"]) for s in fold_splits],
        "untrained_classes": untrained, "final_train_tracks": len(final_splits["train"]),
        "val": {level: {key: summary(level, key) for key in ("accuracy", "macro_precision", "macro_f1")}
                for level in ("chunk", "track")},
        "pooled": pooled,
        "best_epochs": [m["best_epoch"] for m in fold_metrics],
        "test": final["results"].get("test", {}),
    }
    with atomic_path(base / f"{stem}{suffix}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    lines = [f"# {cfg.name}: {folds}-fold cross-validation, {protocol}", "",
             f"Protocol: {protocol}. Scored: the {result['selection']} of each fold.", "",
             "| fold | held out | tracks | best epoch | val accuracy (track) | val macro precision (track) |",
             "|---|---|---|---|---|---|"]
    for k, m in enumerate(fold_metrics):
        t = m["results"]["val"]["track"]
        held_out = ((f"{groups} part {fold_groups[k]}" if groups in GROUPINGS else f"{Path(groups).name}: {fold_groups[k]}")
                    if groups else f"fold {k}")
        lines.append(f"| {k} | {held_out} | {t['n']} | {m['best_epoch']} | {t['accuracy']:.3f} | "
                     f"{t['macro_precision']:.3f} |")
    acc, prec = result["val"]["track"]["accuracy"], result["val"]["track"]["macro_precision"]
    lines.append(f"| mean ± std | | | | {acc['mean']:.3f} ± {acc['std']:.3f} | "
                 f"{prec['mean']:.3f} ± {prec['std']:.3f} |")
    bal, ci = pooled["balanced"], pooled["intervals"]
    lines += ["", f"Pooled over the folds ({pooled['n']} tracks), with {ci['level']:.0%} bootstrap intervals "
              f"(tracks resampled within each class; they ignore songs shared by an artist, so they are if anything "
              f"too narrow): accuracy {with_interval(pooled['accuracy'], ci['accuracy'])}, balanced accuracy "
              f"{with_interval(pooled['balanced_accuracy'], ci['balanced_accuracy'])}, macro precision "
              f"{with_interval(pooled['macro_precision'], ci['macro_precision'])}, macro F1 "
              f"{with_interval(pooled['macro_f1'], ci['macro_f1'])}; reweighted to equal class counts: macro precision "
              f"{bal['macro_precision']:.3f}, macro F1 {bal['macro_f1']:.3f}."]
    if "group_intervals" in pooled:
        gi = pooled["group_intervals"]
        lines += ["", f"Resampling whole groups instead ({gi['groups']} groups of {Path(groups).name}, drawn within "
                  f"each class: a group's songs move together): accuracy {with_interval(pooled['accuracy'], gi['accuracy'])}, "
                  f"balanced accuracy {with_interval(pooled['balanced_accuracy'], gi['balanced_accuracy'])}, macro "
                  f"precision {with_interval(pooled['macro_precision'], gi['macro_precision'])}. These are the intervals "
                  "to quote when the groups are artists."]
    lines += ["", "Recall per class, with 95% Wilson intervals: " + ", ".join(
        f"{c['class']} {with_interval(c['recall'], c['recall_interval'])} ({c['support']} tracks)"
        for c in pooled["per_class"] if c["support"]) + "."]
    for k, missing in enumerate(untrained):
        if missing:
            lines += ["", f"Fold {k} scores class(es) {', '.join(missing)} that its training side lacks."]
    if "learnable" in pooled:
        lc = pooled["learnable"]
        lines += ["", f"Balanced accuracy over the {len(lc['classes'])} classes every fold trained on before scoring "
                  f"them: {with_interval(lc['balanced_accuracy'], lc['interval'])}."]
    if groups:
        outside = len(ids) - sum(result["fold_tracks"])
        lines += ["", f"{outside} tracks outside every group trained in every fold and were never scored."]
        if final_retrain:
            lines[-1] += (f" Final retrain on all {len(final_splits['train'])} tracks for {epochs} epochs "
                          f"({final_cfg.name}/; no test part: every grouped track was scored in its fold).")
    if result["test"]:
        t = result["test"]["track"]
        lines += ["", f"Final retrain on all non-test tracks for {epochs} epochs: test accuracy {t['accuracy']:.3f}, "
                  f"macro precision {t['macro_precision']:.3f} (track level; see {final_cfg.name}/report.md)."]
    with atomic_path(base / f"{stem}{suffix}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return result


def out_of_fold(cv_dirs: list[str | Path], groups: bool = False,
                fixed_epochs: bool = False) -> tuple[list[dict[str, Any]], list[str], list[tuple[np.ndarray, list[np.ndarray]]]]:
    """The aligned out-of-fold track predictions of cross-validated recipes.

    Every ``cv_dir`` is a ``RUNS_DIR/<name>`` of :func:`cross_validate` run with the same
    protocol (``groups`` / ``fixed_epochs`` as given here) on the same tracks, e.g. melcnn on a
    ``fast`` store and a musicnn head on an embedding store: fold ``k`` of each holds out the
    same tracks. Returns the recipes' CV summaries, the classes, and per fold ``(labels,
    [probabilities of each recipe])`` with the rows in one track order.
    """
    cv_dirs = [Path(d) for d in cv_dirs]
    stem = ("cv-groups" if groups else "cv") + ("-last" if fixed_epochs else "")
    prefix, suffix = ("group" if groups else "fold"), ("-last" if fixed_epochs else "")
    summaries = []
    for d in cv_dirs:
        if not (d / f"{stem}.json").is_file():
            raise MelgenreError(f"{d}: no {stem}.json (run melgenre cv with the same protocol first)")
        summaries.append(json.loads((d / f"{stem}.json").read_text()))
    folds = {s["folds"] for s in summaries}
    if len(folds) != 1:
        raise ConfigError(f"the cross-validations have different numbers of folds: {sorted(folds)}")
    classes, aligned = None, []
    for k in range(folds.pop()):
        parts = [track_probabilities(d / f"{prefix}{k}{suffix}") for d in cv_dirs]
        tracks, _, labels, classes = parts[0]
        for d, (other, _, _, other_classes) in zip(cv_dirs, parts):
            if other_classes != classes or sorted(other) != sorted(tracks):
                raise MelgenreError(f"{d}: fold {k} holds out other tracks or classes than {cv_dirs[0]}")
        aligned.append((labels[np.argsort(tracks)], [p[np.argsort(t)] for t, p, _, _ in parts]))
    return summaries, classes, aligned


def _learnable(summaries: list[dict[str, Any]], classes: list[str], y: np.ndarray) -> list[str] | None:
    """:func:`melgenre.metrics.learnable_classes` of aligned CVs scoring labels ``y``."""
    return learnable_classes(classes, np.bincount(y, minlength=len(classes)), summaries[0].get("untrained_classes") or [])


def fuse_cv(cv_dirs: list[str | Path], groups: bool = False, fixed_epochs: bool = False,
            weights: list[float] | None = None) -> dict[str, Any]:
    """Late fusion of cross-validated recipes: average their out-of-fold track probabilities.

    The recipes' folds are aligned by :func:`out_of_fold`; each fold's tracks get the weighted
    mean of the recipes' probabilities, and the folds are pooled as in :func:`cross_validate`.
    Returns the ``pooled`` metrics, the protocol, the recipes and weights, and each recipe's own
    pooled metrics on the same tracks.
    """
    if len(cv_dirs) < 2:
        raise ConfigError("fuse: need at least two cross-validation directories")
    weights = [1.0] * len(cv_dirs) if weights is None else list(weights)
    if len(weights) != len(cv_dirs) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"fuse: need one non-negative weight per directory, not all zero; got {weights}")
    summaries, classes, folds = out_of_fold(cv_dirs, groups, fixed_epochs)
    names = [str(Path(d)) for d in cv_dirs]
    confusions: dict[str, list] = {name: [] for name in ["fusion", *names]}
    for y, probs in folds:
        fused = sum(w * p for w, p in zip(weights, probs)) / sum(weights)
        confusions["fusion"].append(compute_metrics(fused, y, classes)["confusion"])
        for name, p in zip(names, probs):
            confusions[name].append(compute_metrics(p, y, classes)["confusion"])
    learnable = _learnable(summaries, classes, np.concatenate([y for y, _ in folds]))
    return {
        "protocol": summaries[0].get("protocol"), "recipes": [s.get("name") for s in summaries],
        "weights": weights, "pooled": pooled_metrics(confusions["fusion"], classes, learnable),
        "each": {d: pooled_metrics(c, classes, learnable) for d, c in confusions.items() if d != "fusion"},
    }


def compare_cv(cv_a: str | Path, cv_b: str | Path, groups: bool = False, fixed_epochs: bool = False) -> dict[str, Any]:
    """Paired comparison of two cross-validated recipes on the same out-of-fold tracks.

    Both recipes' predictions of each track are resampled together (:func:`melgenre.metrics.paired_bootstrap`),
    so the interval of a difference is much narrower than the two recipes' own intervals side
    by side. Returns the protocol, the recipe names and :func:`~melgenre.metrics.paired_bootstrap`'s
    result (differences are A - B).
    """
    summaries, classes, folds = out_of_fold([cv_a, cv_b], groups, fixed_epochs)
    y = np.concatenate([y for y, _ in folds])
    pred_a, pred_b = (np.concatenate([probs[i].argmax(1) for _, probs in folds]) for i in (0, 1))
    return {"protocol": summaries[0].get("protocol"), "recipes": [s.get("name") for s in summaries],
            **paired_bootstrap(y, pred_a, pred_b, len(classes), _learnable(summaries, classes, y), classes)}
