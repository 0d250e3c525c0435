"""Calibrated probabilities: temperature scaling fitted on out-of-fold predictions.

A model's softmax is often over- or under-confident. Temperature scaling divides log-probabilities
by one number ``T`` before the softmax (``T > 1`` softens, ``T < 1`` sharpens). melgenre shows
**track-level** probabilities, the mean of the windows' softmax outputs, so ``T`` is applied to the
log of that mean (:func:`melgenre.inference.tempered`; a window's own probabilities are its logits
divided by ``T``, as :meth:`melgenre.inference.GenreModel.predict_images` gives them). Scaling the
track's mean, not each window before the mean, keeps every track's ranking, so a calibrated model
gives exactly the labels of the uncalibrated one. ``T`` is fitted to minimise the negative
log-likelihood of the track probabilities (:func:`fit_temperature`).

The data are the out-of-fold predictions of a cross-validation of the model's recipe
(``melgenre cv ... --groups fault_filtered --fixed-epochs``, see :func:`oof_outputs`): every
scored track is predicted by the fold model that did not train on it (nor, artist-disjoint, on its
artist). :func:`calibrate_package` writes the fitted ``T`` into a package's card as
``calibration`` and, with :mod:`melgenre.trust`, the "unsure" / "not music" thresholds.

Calibration error is the expected calibration error (:func:`ece`) of the top class with
:data:`ECE_BINS` equal-width confidence bins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melgenre.card import ModelCard
from melgenre.errors import MelgenreError

#: Equal-width confidence bins of :func:`ece` and the reliability diagram.
ECE_BINS = 15

#: How a card's ``calibration.temperature`` is applied (its ``level``).
TEMPERATURE_LEVEL = "track (softmax of the log of the windows' mean softmax, divided by temperature)"

#: Range of temperatures :func:`fit_temperature` searches.
T_RANGE = (0.05, 20.0)


def track_probabilities(window_logits: np.ndarray, track_index: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Track probabilities ``(T, C)``: the mean over each track's windows of ``softmax(logits)``,
    scaled by ``temperature`` (:func:`melgenre.inference.tempered`), as a calibrated model predicts.

    ``track_index`` ``(N,)`` gives each window's track as an integer in ``0 .. T-1``.
    """
    from melgenre.inference import softmax, tempered

    probs = softmax(np.asarray(window_logits, dtype=np.float64)).astype(np.float64)
    index = np.asarray(track_index, dtype=np.int64)
    n_tracks = int(index.max()) + 1 if len(index) else 0
    sums = np.zeros((n_tracks, probs.shape[1]))
    np.add.at(sums, index, probs)
    return tempered(sums / np.maximum(np.bincount(index, minlength=n_tracks), 1)[:, None], temperature)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = probs[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def fit_temperature(window_logits: np.ndarray, track_index: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the track-level NLL of :func:`track_probabilities`.

    A bounded one-dimensional search over ``log T`` in :data:`T_RANGE` (the NLL of temperature
    scaling is smooth and, for window-averaged probabilities, unimodal in practice).
    """
    from scipy.optimize import minimize_scalar

    from melgenre.inference import tempered

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise MelgenreError("calibration: no out-of-fold tracks to fit a temperature on")
    mean = track_probabilities(window_logits, track_index)  # the temperature scales the mean, which it does not change
    result = minimize_scalar(lambda log_t: nll(tempered(mean, np.exp(log_t)), labels),
                             bounds=np.log(T_RANGE), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def cross_fitted_probabilities(window_logits: np.ndarray, track_index: np.ndarray, labels: np.ndarray,
                               fold: np.ndarray) -> np.ndarray:
    """Track probabilities where each fold's tracks are scaled by the temperature fitted on the other
    folds' tracks: an estimate of calibration on tracks the temperature was not fitted on."""
    out = np.zeros((len(labels), window_logits.shape[1]))
    for k in np.unique(fold):
        held = fold == k
        rest = ~held[track_index]
        _, rest_index = np.unique(track_index[rest], return_inverse=True)
        t = fit_temperature(window_logits[rest], rest_index, labels[~held])
        mine = held[track_index]
        _, mine_index = np.unique(track_index[mine], return_inverse=True)
        out[held] = track_probabilities(window_logits[mine], mine_index, t)
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: ``sum_b |B_b|/n · |accuracy(B_b) − confidence(B_b)|``
    over ``bins`` equal-width bins of the top probability (a bin holds confidences in ``(lo, hi]``)."""
    conf, correct = _top(probs, labels)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - conf[members].mean())
    return float(total / max(len(conf), 1))


def _top(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)


# -- out-of-fold predictions of a cross-validation ------------------------------------------------

@dataclass
class OutOfFold:
    """Window-level out-of-fold outputs of a cross-validation, and each fold's training-side embeddings.

    ``tracks`` (T,) track ids, ``labels`` (T,) their classes, ``fold`` (T,) the fold that scored
    each; ``window_logits`` (N, C), ``window_embeddings`` (N, D) and ``track_index`` (N,) the scored
    windows; ``train_embeddings[k]`` the track-mean embeddings of fold ``k``'s training tracks, from
    fold ``k``'s model, and ``train_labels[k]`` their classes (the reference a scored track is
    compared with, see :mod:`melgenre.trust`).
    """

    classes: list[str]
    tracks: np.ndarray
    labels: np.ndarray
    fold: np.ndarray
    window_logits: np.ndarray
    window_embeddings: np.ndarray
    track_index: np.ndarray
    train_embeddings: list[np.ndarray]
    train_labels: list[np.ndarray]


def fold_dirs(cv_json: str | Path) -> list[Path]:
    """The fold run directories beside a ``cv*.json`` of :func:`melgenre.cv.cross_validate`
    (``cv-groups-last.json`` → ``group0-last``, ``group1-last``, ...)."""
    cv_json = Path(cv_json)
    if not cv_json.is_file():
        raise MelgenreError(f"{cv_json}: no such file (pass the cv-groups-last.json of `melgenre cv`)")
    try:
        cv = json.loads(cv_json.read_text())
        folds = int(cv["folds"])
    except (ValueError, KeyError, TypeError):
        raise MelgenreError(f"{cv_json}: not a cross-validation result (no 'folds')") from None
    stem = cv_json.stem
    if not stem.startswith("cv"):
        raise MelgenreError(f"{cv_json}: expected a cv*.json of `melgenre cv` (cv-groups-last.json, ...)")
    prefix = "group" if stem.startswith("cv-groups") else "fold"
    suffix = "-last" if stem.endswith("-last") else ""
    dirs = [cv_json.parent / f"{prefix}{k}{suffix}" for k in range(folds)]
    missing = [str(d) for d in dirs if not (d / "config.yaml").is_file()]
    if missing:
        raise MelgenreError(f"{cv_json}: fold run(s) missing: {', '.join(missing)}")
    return dirs


def window_step(store_preset: Any, hop: float | None) -> int:
    """Keep every ``step``-th stored chunk so the windows match prediction with ``hop`` seconds
    (the shipped musicnn model predicts every 6 s from 3-s back-to-back patches: step 2)."""
    if hop is None or store_preset.chunk_seconds is None or not store_preset.chunk_hop_seconds:
        return 1
    return max(1, int(round(hop / store_preset.chunk_hop_seconds)))


def predicted_rows(store: Any, hop: float | None) -> np.ndarray:
    """Boolean mask of the store's rows that prediction with ``hop`` would see: every
    :func:`window_step`-th chunk of the original audio (augmented variants never)."""
    return (store.chunk_index % window_step(store.preset, hop) == 0) & (store.variant == 0)


def _track_means(embeddings: np.ndarray, index: np.ndarray) -> np.ndarray:
    n = int(index.max()) + 1
    sums = np.zeros((n, embeddings.shape[1]))
    np.add.at(sums, index, embeddings)
    return (sums / np.bincount(index, minlength=n)[:, None]).astype(np.float32)


def _track_labels(row_labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The class of each track ``0..index.max()`` from its rows' labels."""
    out = np.zeros(int(index.max()) + 1, dtype=np.int64)
    out[index] = row_labels
    return out


def oof_outputs(cv_json: str | Path, data: str | Path | None = None, hop: float | None = None) -> OutOfFold:
    """Window logits and embeddings of every out-of-fold track of a cross-validation.

    Parameters
    ----------
    cv_json : path
        ``RUNS_DIR/<name>/cv-groups-last.json`` (or another ``cv*.json``); its fold runs are read
        from the same folder.
    data : path, optional
        The feature file the folds trained on. Default: each fold's ``data.path`` (relative to the
        current directory).
    hop : float, optional
        Prediction hop of the package (its card's ``predict_hop``): only the stored chunks that
        prediction would use are scored (see :func:`window_step`). Default: every chunk.
    """
    from melgenre.inference import forward_outputs
    from melgenre.train import _load_run

    logits, embs, index, tracks, labels, fold, train_refs, train_labels = [], [], [], [], [], [], [], []
    classes: list[str] | None = None
    for k, run in enumerate(fold_dirs(cv_json)):
        _, _, module, dm = _load_run(run, data=data)
        if classes is not None and dm.classes != classes:
            raise MelgenreError(f"{run}: classes differ from the other folds'")
        classes = dm.classes
        store = dm.store
        seen = predicted_rows(store, hop)
        model = module.model.eval()
        for split in ("val", "train"):
            rows = dm.rows_for(split)
            rows = rows[seen[rows]]
            if len(rows) == 0:
                continue
            out, emb = forward_outputs(model, store.images(rows), embeddings=True)
            ids, inverse = np.unique(store.track_id[rows], return_inverse=True)
            if split == "train":
                train_refs.append(_track_means(emb, inverse))
                train_labels.append(_track_labels(store.y[rows], inverse))
                continue
            index.append(inverse + len(tracks))
            tracks += ids.tolist()
            labels += _track_labels(store.y[rows], inverse).tolist()
            fold += [k] * len(ids)
            logits.append(out)
            embs.append(emb)
    if not tracks:
        raise MelgenreError(f"{cv_json}: the folds score no tracks")
    return OutOfFold(classes=classes, tracks=np.array(tracks), labels=np.array(labels), fold=np.array(fold),
                     window_logits=np.concatenate(logits), window_embeddings=np.concatenate(embs),
                     track_index=np.concatenate(index), train_embeddings=train_refs, train_labels=train_labels)


# -- fitting a package ------------------------------------------------------------------------------

def _store_of(cv_json: Path, data: str | Path | None) -> Path:
    """The feature file of the folds (``data``, or the first fold's ``data.path``)."""
    if data is not None:
        return Path(data)
    import yaml

    cfg = yaml.safe_load((fold_dirs(cv_json)[0] / "config.yaml").read_text()) or {}
    return Path((cfg.get("data") or {}).get("path", ""))


def _package_centres(module: Any, store_path: Path, hop: float | None, card: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Class centres of the training tracks' mean embeddings under the package's own model, and the track count."""
    from melgenre.inference import forward_outputs
    from melgenre.store import MelStore
    from melgenre.trust import class_centres

    with MelStore(store_path) as store:
        expected = ((card.get("training") or {}).get("data") or {}).get("input_hash")
        if expected and store.attrs.get("input_hash") and expected != str(store.attrs["input_hash"]):
            raise MelgenreError(f"{store_path}: not the feature file the package was trained on "
                                "(input_hash differs from the card's training.data.input_hash)")
        rows = np.flatnonzero(predicted_rows(store, hop))
        _, emb = forward_outputs(module, store.images(rows), embeddings=True)
        _, index = np.unique(store.track_id[rows], return_inverse=True)
        labels = _track_labels(store.y[rows], index)
    tracks = _track_means(emb, index)
    return class_centres(tracks, labels), len(tracks)


def calibrate_package(package: str | Path, cv_json: str | Path, data: str | Path | None = None,
                      plot: str | Path | None = None, report: str | Path | None = None,
                      nonmusic_seconds: float = 30.0, false_flag_rate: float | None = None) -> dict[str, Any]:
    """Fit a package's temperature and trust thresholds on a cross-validation of its recipe; write them into its card.

    Steps: out-of-fold window logits and embeddings (:func:`oof_outputs`, at the card's
    ``predict_hop``); the temperature (:func:`fit_temperature`) and the ECE before/after; the
    "unsure" threshold on the calibrated out-of-fold top probabilities
    (:func:`melgenre.trust.unsure_threshold`); the "not music" threshold on the out-of-fold
    novelty (:func:`melgenre.trust.novelty_threshold`, each fold's tracks against the class centres
    of that fold's training tracks); the package's own class centres over all its training tracks, written to
    ``<stem>.trust.npz``; then the card's ``calibration`` and ``trust`` (both files atomically). Last,
    the generated non-music set (:func:`melgenre.trust.nonmusic_clips`) is predicted with the
    updated package to measure the AUROC of music (out-of-fold) against non-music.

    Parameters
    ----------
    package : path
        The package's ``.json`` card (or ``.safetensors``); rewritten in place.
    cv_json : path
        ``cv-groups-last.json`` of ``melgenre cv`` of the package's recipe (its fold runs beside it).
    data : path, optional
        The feature file the package and the folds trained on. Default: the folds' ``data.path``.
    plot : path, optional
        Write a reliability diagram (PNG) there.
    report : path, optional
        Write every figure and per-clip score (JSON) there.
    nonmusic_seconds : float
        Length of the generated non-music clips (the GTZAN dev clips are 30 s).
    false_flag_rate : float, optional
        Share of the out-of-fold dev clips the "not music" threshold flags (default
        :data:`melgenre.trust.FALSE_FLAG_RATE`, 0.02).

    Returns
    -------
    dict
        The report: ``calibration``, ``trust`` and the non-music evaluation.
    """
    import hashlib
    import io

    from melgenre import trust
    from melgenre.metrics import compute_metrics, wilson_interval
    from melgenre.inference import tempered
    from melgenre.package import load_torch
    from melgenre.utils import atomic_path

    card_path = Path(package).with_suffix(".json")
    if Path(package).suffix not in (".json", ".safetensors"):
        raise MelgenreError(f"{package}: calibrate needs a model package .json (export a run with "
                            "`melgenre export --format package` first)")
    false_flag_rate = trust.FALSE_FLAG_RATE if false_flag_rate is None else false_flag_rate
    if not 0 < false_flag_rate < 1:
        raise MelgenreError(f"false flag rate must be between 0 and 1, got {false_flag_rate}")
    module, card = load_torch(card_path)
    cv_json = Path(cv_json)
    oof = oof_outputs(cv_json, data, card.get("predict_hop"))
    if oof.classes != card["classes"]:
        raise MelgenreError(f"{cv_json}: classes {oof.classes} differ from the package's {card['classes']}")
    temperature = fit_temperature(oof.window_logits, oof.track_index, oof.labels)
    before = track_probabilities(oof.window_logits, oof.track_index)
    after = tempered(before, temperature)
    correct = after.argmax(axis=1) == oof.labels
    unsure_below = trust.unsure_threshold(after.max(axis=1), correct)
    fold_centres = [trust.class_centres(e, y) for e, y in zip(oof.train_embeddings, oof.train_labels)]
    music = np.array([trust.novelty(oof.window_embeddings[oof.track_index == i], fold_centres[oof.fold[i]])
                      for i in range(len(oof.tracks))])
    not_music_above = trust.novelty_threshold(music, false_flag_rate)
    centres, n_reference = _package_centres(module, _store_of(cv_json, data), card.get("predict_hop"), card)

    source = f"{cv_json.parent.name}/{cv_json.name}"
    calibration = {"temperature": round(temperature, 6), "fitted_on": source,
                   "level": TEMPERATURE_LEVEL,
                   "ece_before": round(ece(before, oof.labels), 6), "ece_after": round(ece(after, oof.labels), 6),
                   "ece_after_cross_fitted": round(ece(cross_fitted_probabilities(
                       oof.window_logits, oof.track_index, oof.labels, oof.fold), oof.labels), 6),
                   "ece_bins": ECE_BINS, "nll_before": round(nll(before, oof.labels), 6),
                   "nll_after": round(nll(after, oof.labels), 6), "n": len(oof.tracks)}
    scores = compute_metrics(after, oof.labels, oof.classes)  # the labels as the package predicts them (its hop)
    calibration["accuracy"] = round(scores["accuracy"], 6)
    calibration["balanced_accuracy"] = round(scores["balanced_accuracy"], 6)
    buf = io.BytesIO()
    np.savez(buf, centres=centres, music_novelty=music.astype(np.float32))
    reference_bytes = buf.getvalue()
    flagged_unsure = after.max(axis=1) < unsure_below
    flagged_music = music > not_music_above
    trust_card = {
        "unsure_below": unsure_below,  # not rounded: the flags at predict time are those counted here
        "unsure_rule": "calibrated top probability below which out-of-fold predictions are right less than half the time",
        "unsure_rate_dev": round(float(flagged_unsure.mean()), 6),
        "accuracy_unsure_dev": round(float(correct[flagged_unsure].mean()), 6) if flagged_unsure.any() else None,
        "accuracy_sure_dev": round(float(correct[~flagged_unsure].mean()), 6) if (~flagged_unsure).any() else None,
        "novelty": trust.NOVELTY_METHOD,
        "not_music_above": not_music_above,
        "not_music_rule": f"{100 * (1 - false_flag_rate):g}th percentile of the out-of-fold dev clips' novelty "
                          "(distance of the clip's mean embedding to the nearest class centre of the training tracks)",
        "false_flag_rate_dev": round(float(flagged_music.mean()), 6),
        "false_flag_rate_dev_interval": [round(v, 6) for v in wilson_interval(int(flagged_music.sum()), len(music))],
        "fitted_on": source,
        "n": len(oof.tracks),
        "reference": {"file": trust.reference_path(card_path).name, "tracks": n_reference,
                      "sha256": hashlib.sha256(reference_bytes).hexdigest()},
    }
    new_card = {**card, "calibration": calibration, "trust": trust_card}
    with atomic_path(trust.reference_path(card_path)) as tmp:
        tmp.write_bytes(reference_bytes)
    ModelCard.from_dict(new_card, card_path).write(card_path)
    evaluation = evaluate_package(card_path, music_novelty=music, seconds=nonmusic_seconds)
    trust_card["evaluation"] = {k: v for k, v in evaluation.items() if k not in ("nonmusic", "model_id")}
    ModelCard.from_dict(new_card, card_path).write(card_path)  # the card again, with the non-music figures
    result = {"package": str(card_path), "calibration": calibration, "trust": trust_card, "evaluation": evaluation,
              "music_novelty": dict(zip(oof.tracks.tolist(), music.round(6).tolist()))}
    if plot is not None:
        reliability_diagram(before, after, oof.labels, plot, title=f"{card['model_id']}: {source}, {len(oof.tracks)} tracks")
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(report) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result


def evaluate_package(card_path: str | Path | None = None, music_novelty: np.ndarray | None = None,
                     with_speech: bool | None = None, seconds: float = 30.0) -> dict[str, Any]:
    """Music against generated non-music for a calibrated package (default: the shipped default model).

    Every clip of :func:`melgenre.trust.nonmusic_clips` is predicted with the package; the AUROC of the novelty
    score puts the out-of-fold dev clips (``music_novelty``, default: the package's stored ones)
    against them. Returns the AUROC, the dev false-flag rate at the card's threshold, how many
    non-music clips got "not_music" or any trust flag, and each clip's score, top probability and flags.
    ``seconds``: length of the generated clips (the dev clips are 30 s).

    Raises
    ------
    MelgenreError
        The package has no stored reference (run ``melgenre calibrate`` on it first).
    """
    from melgenre import trust
    from melgenre.inference import load_model
    from melgenre.package import default_model_path

    card_path = Path(card_path) if card_path is not None else default_model_path()
    model = load_model(card_path)
    reference = trust.load_reference(card_path.with_suffix(".json"), model.card)
    if reference is None or model.trust_centres is None:
        raise MelgenreError(f"{card_path}: no trust reference; run `melgenre calibrate` on the package first")
    music = reference["music_novelty"] if music_novelty is None else np.asarray(music_novelty)
    clips = trust.nonmusic_clips(sr=model.preset.sr, seconds=seconds, with_speech=with_speech)
    scores = {}
    for name, y in clips.items():
        pred = model.predict(y, sr=model.preset.sr, name=name)
        scores[name] = {"novelty": round(pred.novelty, 6), "top_probability": round(pred.top[0][1], 6),
                        "flags": list(pred.flags)}
    threshold = model.card["trust"]["not_music_above"]
    return {
        "model_id": model.model_id,
        "auroc_music_vs_nonmusic": round(trust.auroc(np.array([s["novelty"] for s in scores.values()]), music), 6),
        "false_flag_rate_dev": round(float(np.mean(music > threshold)), 6),
        "n_music": len(music), "n_nonmusic": len(scores),
        "nonmusic_not_music": sum("not_music" in s["flags"] for s in scores.values()),
        "nonmusic_flagged": sum(bool({"not_music", "unsure"} & set(s["flags"])) for s in scores.values()),
        "speech": any(name.startswith("speech") for name in scores), "seconds": seconds,
        "nonmusic": scores,
    }


def reliability_diagram(before: np.ndarray, after: np.ndarray, labels: np.ndarray, out: str | Path,
                        title: str = "", bins: int = ECE_BINS) -> Path:
    """A reliability diagram (PNG): accuracy against mean top probability per confidence bin, before
    and after calibration, with the bins' track counts and the ECE in the legend."""
    import matplotlib.pyplot as plt

    from melgenre.display import save_png  # (selects matplotlib's file-only backend)

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for probs, name, colour in ((before, "before", "tab:orange"), (after, "after", "tab:blue")):
        conf, correct = _top(probs, labels)
        which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        xs = [conf[which == b].mean() for b in used]
        ys = [correct[which == b].mean() for b in used]
        sizes = [12 + 4 * (which == b).sum() for b in used]
        ax.plot(xs, ys, color=colour, lw=1.2)
        ax.scatter(xs, ys, s=sizes, color=colour, alpha=0.7,
                   label=f"{name} (ECE {ece(probs, labels, bins):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean top probability in the bin (track level)",
           ylabel="accuracy in the bin", title=title or "reliability")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8, title=f"{bins} bins; dot area ~ tracks", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, out)
