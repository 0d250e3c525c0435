"""Score a genre model on the non-GTZAN dev set (``tools/wild_devset.py``), by corpus.

Every clip of the set's ``manifest.csv`` (the ten genres and the out-of-taxonomy ones) is predicted
the way a user predicts it (``melgenre.load_model(MODEL).predict(file)``: the package's windows,
calibration and flags), the answers are kept in a CSV (resumable), and a summary is printed and
written as JSON: per corpus, accuracy and balanced accuracy with 95 % bootstrap intervals (balanced
over the genres with at least ``--min-genre`` clips in that corpus), recall per genre with Wilson
intervals, the main confusions, how often the ``unsure`` / ``not_music`` flags are on and how often
flagged and unflagged answers are right, and how often out-of-taxonomy music is flagged.

Usage::

    python tools/wild_score.py [--model src/melgenre/weights/default.json] --out /work/data/score-default
    python tools/wild_score.py --summary /work/data/score-default/predictions.csv   # summary only
    python tools/wild_score.py --cached wild-msd.h5 --out DIR   # from cached embeddings (first 30 s), fast

The summary of any predictions CSV with the columns ``corpus, clip, genre, predicted, flags`` (``;``
separated) can be made with :func:`summarise` (the embedding experiments write such files too).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
FLAGGED = ("unsure", "not_music")


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 3), round(min(1.0, c + h), 3)]


def balanced(y: np.ndarray, pred: np.ndarray, genres: list[str]) -> float:
    return float(np.mean([np.mean(pred[y == g] == g) for g in genres]))


def bootstrap(y: np.ndarray, pred: np.ndarray, genres: list[str], n: int = 2000, seed: int = 0
              ) -> tuple[list[float], list[float]]:
    """95 % percentile intervals of accuracy and balanced accuracy (resampling within each genre)."""
    rng = np.random.default_rng(seed)
    idx = {g: np.flatnonzero(y == g) for g in set(y)}
    accs, bals = [], []
    for _ in range(n):
        take = np.concatenate([rng.choice(i, len(i)) for i in idx.values()])
        yy, pp = y[take], pred[take]
        accs.append(np.mean(yy == pp))
        bals.append(balanced(yy, pp, genres))
    return ([round(float(v), 3) for v in np.percentile(accs, [2.5, 97.5])],
            [round(float(v), 3) for v in np.percentile(bals, [2.5, 97.5])])


def summarise(rows: list[dict[str, str]], min_genre: int = 5) -> dict[str, dict]:
    """Figures per corpus (and ``all`` pooled, never to be quoted alone) of prediction rows."""
    out = {}
    corpora = sorted({r["corpus"] for r in rows})
    for corpus in corpora + ["all"]:
        mine = [r for r in rows if corpus == "all" or r["corpus"] == corpus]
        inside = [r for r in mine if r["genre"] in GENRES]
        outside = [r for r in mine if r["genre"] not in GENRES]
        res: dict = {"n": len(inside), "n_outside": len(outside)}
        if inside:
            y = np.array([r["genre"] for r in inside])
            pred = np.array([r["predicted"] for r in inside])
            counts = Counter(y)
            genres = sorted(g for g in counts if counts[g] >= min_genre)
            acc_ci, bal_ci = bootstrap(y, pred, genres)
            flagged = np.array([any(f in r["flags"].split(";") for f in FLAGGED) for r in inside])
            right = y == pred
            res.update({
                "accuracy": round(float(right.mean()), 3), "accuracy_interval": acc_ci,
                "balanced_accuracy": round(balanced(y, pred, genres), 3), "balanced_accuracy_interval": bal_ci,
                "balanced_over": genres,
                "recall": {g: {"recall": round(float(np.mean(pred[y == g] == g)), 3), "n": int(counts[g]),
                               "interval": wilson(int(np.sum(pred[y == g] == g)), int(counts[g]))}
                           for g in sorted(counts)},
                "confusions": [f"{a}->{b} {k}" for (a, b), k in
                               Counter((a, b) for a, b in zip(y, pred) if a != b).most_common(8)],
                "flag_rate_inside": round(float(flagged.mean()), 3),
                "accuracy_unflagged": round(float(right[~flagged].mean()), 3) if (~flagged).any() else None,
                "accuracy_flagged": round(float(right[flagged].mean()), 3) if flagged.any() else None,
            })
            if "classical" in counts:
                res["classical_to_jazz"] = round(float(np.mean(pred[y == "classical"] == "jazz")), 3)
        if outside:
            flagged_out = [any(f in r["flags"].split(";") for f in FLAGGED) for r in outside]
            res["flag_rate_outside"] = round(float(np.mean(flagged_out)), 3)
            res["outside_predicted"] = dict(Counter(r["predicted"] for r in outside).most_common(5))
        out[corpus] = res
    return out


def table(summary: dict[str, dict]) -> str:
    """Markdown rows: corpus | n | accuracy | balanced | classical->jazz | flags in | flags out."""
    lines = []
    for corpus, s in summary.items():
        if corpus == "all" or not s.get("n"):
            continue
        lines.append(f"| {corpus} | {s['n']} | {s['accuracy']:.3f} {s['accuracy_interval']} | "
                     f"{s['balanced_accuracy']:.3f} {s['balanced_accuracy_interval']} | "
                     f"{s.get('classical_to_jazz', '—')} | {s['flag_rate_inside']:.2f} | "
                     f"{s.get('flag_rate_outside', '—')} |")
    return "\n".join(lines)


def predict_all(model_path: str | None, data: Path, out_csv: Path, backend: str | None = None) -> list[dict[str, str]]:
    from melgenre import load_model

    model = load_model(model_path, backend=backend)
    with (data / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    done: dict[tuple[str, str], dict[str, str]] = {}
    if out_csv.exists():
        with out_csv.open() as fh:
            done = {(r["corpus"], r["clip"]): r for r in csv.DictReader(fh)}
    fields = ["corpus", "clip", "genre", "predicted", "top_probability", "flags", "novelty", "model_id"]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if not done:
            w.writeheader()
        for r in manifest:
            if (r["corpus"], r["clip"]) in done:
                continue
            p = model.predict(data / r["file"])
            row = {"corpus": r["corpus"], "clip": r["clip"], "genre": r["genre"], "predicted": p.label,
                   "top_probability": f"{p.top[0][1]:.4f}", "flags": ";".join(p.flags),
                   "novelty": "" if p.novelty is None else f"{p.novelty:.3f}", "model_id": model.model_id}
            w.writerow(row)
            fh.flush()
            done[r["corpus"], r["clip"]] = row
    return [done[r["corpus"], r["clip"]] for r in manifest]


def predict_cached(model_path: str | None, store_path: Path, data: Path, out_csv: Path, hop: int = 2
                   ) -> list[dict[str, str]]:
    """As :func:`predict_all`, from a ``melgenre embed`` store of the set's clips (``<genre-folder>/<corpus>__<clip>``
    track ids, e.g. ``melgenre embed`` of a folder of links to the manifest's files) instead of the audio: the
    package's own module on the cached rows of each clip's first 30 s, a patch every ``hop`` patches (2: every
    6 s, as the package predicts a 30-s clip), then its calibration and flags (:meth:`GenreModel.prediction`)."""
    from melgenre import load_model
    from melgenre.inference import forward_outputs, softmax
    from melgenre.store import MelStore

    model = load_model(model_path, backend="torch")
    with (data / "manifest.csv").open() as fh:
        manifest = {(r["corpus"], r["clip"].replace("/", "-")): r for r in csv.DictReader(fh)}
    rows_out = []
    with MelStore(store_path) as store:
        keep = np.flatnonzero((store.variant == 0) & (store.chunk_index % hop == 0))
        logits, emb = forward_outputs(model._module, store.images(keep), embeddings=model.trust_centres is not None)
        tids = store.track_id[keep]
    for tid in dict.fromkeys(tids):
        sel = tids == tid
        corpus, clip = tid.rsplit("/", 1)[-1].split("__", 1)
        r = manifest[corpus, clip]
        starts = [3.0 * hop * i for i in range(int(sel.sum()))]
        p = model.prediction(tid, softmax(logits[sel]), starts, duration=30.0, padded=False, silent=False,
                             window_embeddings=None if emb is None else emb[sel])
        rows_out.append({"corpus": corpus, "clip": r["clip"], "genre": r["genre"], "predicted": p.label,
                         "top_probability": f"{p.top[0][1]:.4f}", "flags": ";".join(p.flags),
                         "novelty": "" if p.novelty is None else f"{p.novelty:.3f}", "model_id": model.model_id})
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    return rows_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a package .json (default: the shipped default)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MELGENRE_WILD_DATA", "/work/data/wild-dev")))
    ap.add_argument("--out", type=Path, help="folder for predictions.csv and summary.json")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--summary", type=Path, help="only summarise this predictions CSV")
    ap.add_argument("--min-genre", type=int, default=5)
    ap.add_argument("--cached", type=Path, help="score from this embedding store of the set (see predict_cached)")
    args = ap.parse_args(argv)
    if args.summary:
        with args.summary.open() as fh:
            rows = list(csv.DictReader(fh))
        out_dir = args.summary.parent
    else:
        if args.out is None:
            ap.error("--out is required (or --summary)")
        rows = (predict_cached(args.model, args.cached, args.data, args.out / "predictions.csv") if args.cached
                else predict_all(args.model, args.data, args.out / "predictions.csv", args.backend))
        out_dir = args.out
    summary = summarise(rows, args.min_genre)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
