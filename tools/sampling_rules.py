"""Which windows of a whole song to score: sampling rules judged against the genre labels (issue 33).

Reproduces the rule tables of docs/benchmarks/songs.md. Two steps:

``cache``
    Every window of every song (``<part>/<genre>/*.mp3`` of ``--unseen``, ``<genre>/*.mp3`` of
    ``--training``) through the frozen MSD-musicnn once (the head's input, 1706 values a window),
    written to ``--cache`` (an .npz; a rerun adds new songs only).
``simulate``
    Each window's logits under the model that did not hear the song's clips (fold ``k`` of an
    artist-disjoint ``melgenre cv --groups fault_filtered --fixed-epochs`` run for songs of part ``k``,
    the default model for songs of its training clips), then each rule replayed on them: the windows it would score (the same spread and rechecks
    as :mod:`melgenre.windows`), its label and ``unsure`` flag (the default card's temperature and
    threshold), against the labels and against every window; songs/s estimated from the windows
    scored with the cost per song measured by ``melgenre bench --sections songs`` (``--cost``).

    PYTHONPATH=src python tools/sampling_rules.py cache --unseen songs-unseen --training songs40 \\
        --cache rules-cache.npz
    PYTHONPATH=src python tools/sampling_rules.py simulate --cache rules-cache.npz --cv runs/musicnn-tagprior \\
        --out rules.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melgenre import windows as W
from melgenre.inference import softmax, tempered

# -- cache -----------------------------------------------------------------------------------------


def _songs(root: Path, parted: bool) -> list[tuple[str, str, Path]]:
    """(part, genre, path) of the songs under ``root`` (``<part>/<genre>/x.mp3`` or ``<genre>/x.mp3``)."""
    out = []
    for path in sorted(root.rglob("*.mp3")):
        rel = path.relative_to(root).parts
        out.append((rel[0] if parted else "training", rel[-2], path))
    return out


def cache(args: argparse.Namespace) -> None:
    """The frozen musicnn's head input (1706 values) of every window of every song, into ``--cache``
    (songs already there are kept)."""
    import torch

    from melgenre.inference import load_model

    default = load_model("default", backend="torch")
    preset, backbone = default.window_preset, default._module
    songs = (_songs(Path(args.unseen), True) if args.unseen else []) + \
        (_songs(Path(args.training), False) if args.training else [])
    done = dict(np.load(args.cache, allow_pickle=False)) if Path(args.cache).is_file() else {}
    have = set(map(str, done.get("path", [])))
    rows = {k: list(done[k]) for k in ("part", "genre", "path", "n")} if done else \
        {"part": [], "genre": [], "path": [], "n": []}
    embs = [done["embeddings"]] if done else []
    for i, (part, genre, path) in enumerate(songs):
        if str(path) in have:
            continue
        w = W.file_windows(path, preset, None)
        with torch.no_grad():
            x = torch.from_numpy(w.images[:, None])
            emb = torch.cat([backbone.head_input(x[j:j + 8]) for j in range(0, len(x), 8)])
            if not embs:  # the head on the cached input gives the model's own logits of the images
                np.testing.assert_allclose(backbone(emb[:8, None, None, :]).numpy(), backbone(x[:8]).numpy(),
                                           atol=1e-3)
        embs.append(emb.numpy().astype(np.float32))
        for k, v in (("part", part), ("genre", genre), ("path", str(path)), ("n", len(emb))):
            rows[k].append(v)
        print(f"{i + 1}/{len(songs)} {part} {path.name}: {len(emb)} windows", file=sys.stderr, flush=True)
        if len(rows["n"]) % 10 == 0 or i == len(songs) - 1:
            np.savez(args.cache, embeddings=np.concatenate(embs), **{k: np.array(v) for k, v in rows.items()})


def window_logits(data: dict[str, np.ndarray], cv: str | None) -> tuple[np.ndarray, list[str], float, float]:
    """Each cached window's logits under the model that did not hear its song's clips: fold ``k`` of
    ``cv`` for songs of part ``k``, the default model for songs of its training clips; and the
    classes, the default card's temperature and ``unsure`` threshold."""
    import torch

    from melgenre.data import group_names
    from melgenre.inference import load_model
    from melgenre.package import load_torch

    default = load_model("default", backend="torch")
    models = {"training": default._module}
    if cv:
        for k, part in enumerate(group_names("fault_filtered")):
            module, card = load_torch(Path(cv) / f"group{k}-last")
            assert list(card["classes"]) == default.classes, card["classes"]
            models[part] = module.eval()
    ends = np.cumsum(data["n"])
    out = np.zeros((len(data["embeddings"]), len(default.classes)), np.float32)
    with torch.no_grad():
        for part in np.unique(data["part"]):
            rows = np.concatenate([np.arange(e - n, e) for e, n, p in zip(ends, data["n"], data["part"]) if p == part])
            emb = torch.from_numpy(data["embeddings"][rows])[:, None, None, :]
            out[rows] = models[str(part)](emb).numpy()
    return out, default.classes, default.temperature, float(default.card["trust"]["unsure_below"])


# -- rules -----------------------------------------------------------------------------------------

#: A rule: (calibrated track probabilities of the sample, its windows' uncalibrated probabilities,
#: windows scored, windows of the song) -> how many more windows to score (0: stop).
Rule = Callable[[np.ndarray, np.ndarray, int, int], int]


def _margin(p: np.ndarray) -> float:
    top = np.sort(p)
    return float(top[-1] - top[-2])


def doubling(margin: float, most: int | None = None, growth: float = 2.0) -> Rule:
    """While the top two are within ``margin``: ``growth`` times as many more windows, up to ``most`` in all."""
    def rule(p: np.ndarray, wp: np.ndarray, n: int, total: int) -> int:
        cap = total if most is None else min(most, total)
        if n >= cap or _margin(p) >= margin:
            return 0
        return max(1, min(cap - n, math.ceil(growth * n)))
    return rule


def sequential(z: float, most: int | None = None, step: int = 5) -> Rule:
    """A sequential test on the windows: while the mean difference between the sample's top two genres'
    window probabilities is within ``z`` standard errors of 0 (finite-population corrected), ``step``
    more windows, up to ``most`` in all."""
    def rule(p: np.ndarray, wp: np.ndarray, n: int, total: int) -> int:
        cap = total if most is None else min(most, total)
        if n >= cap:
            return 0
        a, b = np.argsort(p)[-2:][::-1]
        d = wp[:, a] - wp[:, b]
        se = d.std(ddof=1) / math.sqrt(n) * math.sqrt(max(0.0, 1 - n / total)) if n > 1 else np.inf
        return 0 if d.mean() > z * se else min(step, cap - n)
    return rule


def never(p: np.ndarray, wp: np.ndarray, n: int, total: int) -> int:
    return 0


def production(p: np.ndarray, wp: np.ndarray, n: int, total: int) -> int:
    """What melgenre.windows does now (its own code)."""
    fake = W.Windows(images=np.zeros((0, 1, 1)), starts=[0.0] * n, padded=False, silent=False, duration=0.0,
                     total=total, indices=list(range(n)))
    more = getattr(W, "more_windows", None)
    if more is not None:
        return int(more(p, fake) or 0)
    return 2 * n if W.close_call(p, fake) else 0


@dataclass
class Outcome:
    label: int
    top: float
    scored: int
    close: bool  # the sample it stopped on was a close call (top two within RECHECK_MARGIN)


def replay(logits: np.ndarray, temperature: float, first: int | None, rule: Rule) -> Outcome:
    """The windows ``rule`` scores of one song (``first`` spread windows, then its rechecks), as melgenre does."""
    probs = softmax(logits)
    total = len(probs)
    idx = W.spread(total, first)
    while True:
        p = tempered(probs[idx].mean(axis=0, keepdims=True), temperature)[0]
        more = rule(p, probs[idx], len(idx), total) if len(idx) < total else 0
        if not more:
            break
        rest = [i for i in range(total) if i not in set(idx)]
        idx = sorted(idx + [rest[j] for j in W.spread(len(rest), more)])
    return Outcome(int(np.argmax(p)), float(p.max()), len(idx), len(idx) < total and _margin(p) < W.RECHECK_MARGIN)


RULES: dict[str, tuple[int | None, Rule]] = {
    "every window": (None, never),
    "1 window": (1, never),
    "3 windows": (3, never),
    "5 windows, no recheck": (5, never),
    "8 windows, no recheck": (8, never),
    "10 windows, no recheck": (10, never),
    "15 windows, no recheck": (15, never),
    "5, doubling while margin < 0.2 (before)": (5, doubling(0.2)),
    "5, doubling while margin < 0.1": (5, doubling(0.1)),
    "5, doubling while margin < 0.05": (5, doubling(0.05)),
    "5, +5 once if margin < 0.2 (at most 10)": (5, doubling(0.2, most=10, growth=1.0)),
    "5, +5 once if margin < 0.1 (at most 10)": (5, doubling(0.1, most=10, growth=1.0)),
    "5, +5 once if margin < 0.05 (at most 10)": (5, doubling(0.05, most=10, growth=1.0)),
    "5, +10 once if margin < 0.2 (at most 15)": (5, doubling(0.2, most=15)),
    "5, +10 once if margin < 0.1 (at most 15)": (5, doubling(0.1, most=15)),
    "5, +10 once if margin < 0.05 (at most 15)": (5, doubling(0.05, most=15)),
    "5, sequential z 2, +5, at most 15": (5, sequential(2.0, most=15)),
    "5, sequential z 1, +5, at most 15": (5, sequential(1.0, most=15)),
    "5, sequential z 1, +5, at most 10": (5, sequential(1.0, most=10)),
    "5, sequential z 2, +5, every window": (5, sequential(2.0)),
    "melgenre.windows now": (5, production),
}


# -- simulate --------------------------------------------------------------------------------------




def evaluate(outcomes: list[Outcome], every: list[Outcome], y: np.ndarray, n_classes: int,
             unsure_below: float, cost: tuple[float, float, float] | None) -> dict:
    from melgenre.metrics import paired_bootstrap

    pred = np.array([o.label for o in outcomes])
    base = np.array([o.label for o in every])
    right = pred == y
    unsure = np.array([o.top < unsure_below for o in outcomes])
    flagged_close = unsure | np.array([o.close for o in outcomes])
    scored = np.array([o.scored for o in outcomes])
    pb = paired_bootstrap(y, pred, base, n_classes)["metrics"]["accuracy"]

    def acc(mask: np.ndarray) -> float | None:
        return round(float(right[mask].mean()), 4) if mask.any() else None

    out = {"songs": len(y), "accuracy": round(float(right.mean()), 4),
           "vs_every_window": {"difference": round(pb["difference"], 4),
                               "interval": [round(v, 4) for v in pb["interval"]]},
           "same_label_as_every_window": round(float(np.mean(pred == base)), 4),
           "unsure_rate": round(float(unsure.mean()), 4), "accuracy_unsure": acc(unsure), "accuracy_sure": acc(~unsure),
           "unsure_or_close_rate": round(float(flagged_close.mean()), 4),
           "accuracy_unsure_or_close": acc(flagged_close), "accuracy_neither": acc(~flagged_close),
           "windows_per_song": round(float(scored.mean()), 2),
           "windows_per_song_every": round(float(np.mean([o.scored for o in every])), 2),
           "mean_top": round(float(np.mean([o.top for o in outcomes])), 4)}
    if cost is not None:  # seconds a song: every window E, a sample a + b * windows
        e, a, b = cost
        out["est_speedup"] = round(float(e / (a + b * scored.mean())), 2) if scored.mean() < out["windows_per_song_every"] else 1.0
    return out


def simulate(args: argparse.Namespace) -> None:
    data = dict(np.load(args.cache))
    flat, classes, temperature, unsure_below = window_logits(data, args.cv)
    logits = np.split(flat, np.cumsum(data["n"])[:-1])
    cost = tuple(map(float, args.cost.split(","))) if args.cost else None
    results = {}
    for subset in ("unseen", "training"):
        mask = (data["part"] == "training") if subset == "training" else (data["part"] != "training")
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        y = np.array([classes.index(str(data["genre"][i])) for i in rows])
        every = [replay(logits[i], temperature, None, never) for i in rows]
        results[subset] = {}
        for name, (first, rule) in RULES.items():
            outcomes = [replay(logits[i], temperature, first, rule) for i in rows]
            results[subset][name] = evaluate(outcomes, every, y, len(classes), unsure_below, cost)
    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for subset, table in results.items():
        print(f"\n{subset} ({next(iter(table.values()))['songs']} songs)")
        print(f"{'rule':46s} {'acc':>6s} {'d vs all':>17s} {'=all':>5s} {'unsure':>6s} {'acc u/s':>11s} "
              f"{'u|close':>7s} {'acc':>11s} {'win':>5s} {'x':>5s}")
        for name, r in table.items():
            d = r["vs_every_window"]
            print(f"{name:46s} {r['accuracy']:6.3f} {d['difference']:+6.3f} [{d['interval'][0]:+.2f},{d['interval'][1]:+.2f}]"
                  f" {r['same_label_as_every_window']:5.2f} {r['unsure_rate']:6.2f} {r['accuracy_unsure'] or 0:5.2f}/"
                  f"{r['accuracy_sure'] or 0:4.2f} {r['unsure_or_close_rate']:7.2f} {r['accuracy_unsure_or_close'] or 0:5.2f}/"
                  f"{r['accuracy_neither'] or 0:4.2f} {r['windows_per_song']:5.1f} {r.get('est_speedup', 0):5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--unseen", help="songs as <part>/<genre>/*.mp3 (part: train, val, test)")
    c.add_argument("--training", help="songs of training clips as <genre>/*.mp3")
    c.add_argument("--cache", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--cache", required=True)
    s.add_argument("--cv", help="melgenre cv folder with group0-last .. group2-last (fault_filtered, --fixed-epochs)")
    s.add_argument("--cost", help="E,a,b: seconds a song for every window, and a + b x windows for a sample")
    s.add_argument("--out")
    args = parser.parse_args()
    cache(args) if args.step == "cache" else simulate(args)


if __name__ == "__main__":
    main()
