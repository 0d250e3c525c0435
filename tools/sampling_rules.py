"""Which windows of a whole song to score: sampling rules judged against the genre labels (issue 33).

Reproduces the rule tables of docs/benchmarks/songs.md. Steps:

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
    scored with the cost per song (``--cost``, from ``cost``). ``--recombine CLIPS`` replays them on
    songs recombined from the cached songs' clip windows instead (many more songs, sharing clips).
``cost``
    Seconds a song of the library job for every window and for fixed samples: ``E,a,b`` for ``--cost``.
``table``
    The markdown tables of docs/benchmarks/songs.md from ``simulate``'s JSON.

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
    for path in sorted(root.glob("*/*/*.mp3" if parted else "*/*.mp3")):  # not bench-songs/unseen/ as training
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
#: windows scored, windows of the song, rechecks so far) -> how many more windows to score (0: stop).
Rule = Callable[[np.ndarray, np.ndarray, int, int, int], int]


def _margin(p: np.ndarray) -> float:
    top = np.sort(p)
    return float(top[-1] - top[-2])


def doubling(margin: float, most: int | None = None, growth: float = 2.0) -> Rule:
    """While the top two are within ``margin``: ``growth`` times as many more windows, up to ``most`` in all."""
    def rule(p: np.ndarray, wp: np.ndarray, n: int, total: int, rounds: int) -> int:
        cap = total if most is None else min(most, total)
        if n >= cap or _margin(p) >= margin:
            return 0
        return max(1, min(cap - n, math.ceil(growth * n)))
    return rule


def sequential(z: float, most: int | None = None, step: int = 5) -> Rule:
    """A sequential test on the windows: while the mean difference between the sample's top two genres'
    window probabilities is within ``z`` standard errors of 0 (finite-population corrected), ``step``
    more windows, up to ``most`` in all."""
    def rule(p: np.ndarray, wp: np.ndarray, n: int, total: int, rounds: int) -> int:
        cap = total if most is None else min(most, total)
        if n >= cap:
            return 0
        a, b = np.argsort(p)[-2:][::-1]
        d = wp[:, a] - wp[:, b]
        se = d.std(ddof=1) / math.sqrt(n) * math.sqrt(max(0.0, 1 - n / total)) if n > 1 else np.inf
        return 0 if d.mean() > z * se else min(step, cap - n)
    return rule


def sequential_margin(margin: float, most: int | None = None, step: int = 5) -> Rule:
    """While the top two are within ``margin``: ``step`` more windows, up to ``most`` in all."""
    def rule(p: np.ndarray, wp: np.ndarray, n: int, total: int, rounds: int) -> int:
        cap = total if most is None else min(most, total)
        return 0 if n >= cap or _margin(p) >= margin else min(step, cap - n)
    return rule


def never(p: np.ndarray, wp: np.ndarray, n: int, total: int, rounds: int) -> int:
    return 0


def production(p: np.ndarray, wp: np.ndarray, n: int, total: int, rounds: int) -> int:
    """What melgenre.windows does now (its own code: melgenre.windows.more_windows under RECHECK)."""
    fake = W.Windows(images=np.zeros((0, 1, 1)), starts=[0.0] * n, padded=False, silent=False, duration=0.0,
                     total=total, indices=list(range(n)), rounds=rounds)
    return W.more_windows(p, fake)


@dataclass
class Outcome:
    label: int
    top: float
    scored: int
    close: bool  # the sample it stopped on was a close call (top two within RECHECK_MARGIN)
    probs: np.ndarray  # the track's calibrated probabilities


def replay(logits: np.ndarray, temperature: float, first: int | None, rule: Rule) -> Outcome:
    """The windows ``rule`` scores of one song (``first`` spread windows, then its rechecks), as melgenre does."""
    probs = softmax(logits)
    total = len(probs)
    idx = W.spread(total, first)
    rounds = 0
    while True:
        p = tempered(probs[idx].mean(axis=0, keepdims=True), temperature)[0]
        more = rule(p, probs[idx], len(idx), total, rounds) if len(idx) < total else 0
        if not more:
            break
        rest = [i for i in range(total) if i not in set(idx)]
        idx = sorted(idx + [rest[j] for j in W.spread(len(rest), more)])
        rounds += 1
    return Outcome(int(np.argmax(p)), float(p.max()), len(idx), len(idx) < total and _margin(p) < W.RECHECK_MARGIN, p)


RULES: dict[str, tuple[int | None, Rule]] = {
    "every window": (None, never),
    "1 window": (1, never),
    "3 windows": (3, never),
    "5 windows, no recheck": (5, never),
    "6 windows, no recheck": (6, never),
    "7 windows, no recheck": (7, never),
    "8 windows, no recheck": (8, never),
    "10 windows, no recheck": (10, never),
    "15 windows, no recheck": (15, never),
    "5, doubling while margin < 0.2 (before)": (5, doubling(0.2)),
    "5, doubling while margin < 0.1": (5, doubling(0.1)),
    "5, doubling while margin < 0.05": (5, doubling(0.05)),
    "5, +1 once if margin < 0.2 (at most 6)": (5, doubling(0.2, most=6)),
    "5, +2 once if margin < 0.2 (at most 7)": (5, doubling(0.2, most=7)),
    "5, +5 once if margin < 0.2 (at most 10)": (5, doubling(0.2, most=10, growth=1.0)),
    "5, +5 once if margin < 0.1 (at most 10)": (5, doubling(0.1, most=10, growth=1.0)),
    "5, +5 once if margin < 0.05 (at most 10)": (5, doubling(0.05, most=10, growth=1.0)),
    "5, +10 once if margin < 0.2 (at most 15)": (5, doubling(0.2, most=15)),
    "5, +10 once if margin < 0.1 (at most 15)": (5, doubling(0.1, most=15)),
    "5, +10 once if margin < 0.05 (at most 15)": (5, doubling(0.05, most=15)),
    "5, +5 while margin < 0.2, at most 15": (5, sequential_margin(0.2, most=15)),
    "5, +1 while margin < 0.2, at most 10": (5, sequential_margin(0.2, most=10, step=1)),
    "5, +1 while margin < 0.2, at most 8": (5, sequential_margin(0.2, most=8, step=1)),
    "5, +2 while margin < 0.2, at most 9": (5, sequential_margin(0.2, most=9, step=2)),
    "5, sequential z 2, +5, at most 15": (5, sequential(2.0, most=15)),
    "5, sequential z 1, +5, at most 15": (5, sequential(1.0, most=15)),
    "5, sequential z 1, +5, at most 10": (5, sequential(1.0, most=10)),
    "5, sequential z 2, +5, every window": (5, sequential(2.0)),
    "melgenre.windows.RECHECK (shipped)": (5, production),
}


# -- simulate --------------------------------------------------------------------------------------




def evaluate(outcomes: list[Outcome], every: list[Outcome], y: np.ndarray, n_classes: int,
             unsure_below: float, cost: tuple[float, float, float] | None) -> dict:
    from melgenre.calibrate import ece
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
           "unsure_where_labels_differ": round(float(unsure[pred != base].mean()), 4) if (pred != base).any() else None,
           "every_window_unsure_where_labels_differ": (round(float(np.mean([o.top < unsure_below for o, d in zip(every, pred != base) if d])), 4)
                                                     if (pred != base).any() else None),
           "unsure_rate": round(float(unsure.mean()), 4), "accuracy_unsure": acc(unsure), "accuracy_sure": acc(~unsure),
           "unsure_or_close_rate": round(float(flagged_close.mean()), 4),
           "accuracy_unsure_or_close": acc(flagged_close), "accuracy_neither": acc(~flagged_close),
           "windows_per_song": round(float(scored.mean()), 2),
           "windows_per_song_every": round(float(np.mean([o.scored for o in every])), 2),
           "mean_top": round(float(np.mean([o.top for o in outcomes])), 4),
           "ece": round(ece(np.stack([o.probs for o in outcomes]), y, bins=10), 4)}
    if cost is not None:  # seconds a song: every window E, a sample a + b * windows
        e, a, b = cost
        out["est_speedup"] = round(float(e / (a + b * scored.mean())), 2) if scored.mean() < out["windows_per_song_every"] else 1.0
    return out


def virtual_songs(store: str, cv: str, per: int, clips_per_song: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Songs made in memory from the embedding store the models trained on (``melgenre embed ... --augment``):
    a clip's windows at the default's 6-s hop are its original audio's patches 0, 2, 4, 6, 8 (3-s hop), so
    a song of six clips has the same 30 windows as an MP3 of them, up to the encoding. ``per`` songs of
    random clips (in random order) of each genre of each artist-disjoint part with at least 3 clips, as
    ``part`` = the part (fold models), and ``per`` of each genre's dev clips as ``part`` = "training" (the
    default model). Returns the arrays :func:`simulate` reads, with ``logits`` instead of ``embeddings``."""
    import h5py

    from melgenre.data import grouping

    with h5py.File(store, "r") as f:
        keep = (f["variant"][:] == 0) & (f["chunk_index"][:] % 2 == 0)
        x = f["x"][:, 0, :][keep].astype(np.float32)
        track = np.array([t.decode() for t in f["track_id"][:][keep]])
    where = grouping("fault_filtered")
    tracks = list(dict.fromkeys(track))
    per_track = {t: np.flatnonzero(track == t) for t in tracks}
    part_of = {t: where.get(t.rsplit("/", 1)[-1], "none") for t in tracks}
    data = {"embeddings": x, "n": np.full(len(tracks), 5), "part": np.array([part_of[t] for t in tracks])}
    rows = np.concatenate([per_track[t] for t in tracks])
    data["embeddings"] = x[rows]
    fold, classes, _, _ = window_logits({**data, "part": np.array([p if p != "none" else "training" for p in data["part"]])}, cv)
    default, _, _, _ = window_logits({**data, "part": np.full(len(tracks), "training")}, None)
    by_track = {t: (fold[5 * i:5 * i + 5], default[5 * i:5 * i + 5]) for i, t in enumerate(tracks)}
    rng = np.random.default_rng(seed)
    out = {"part": [], "genre": [], "path": [], "n": [], "logits": []}

    def add(part: str, genre: str, members: list[str], which: int) -> None:
        for k in range(per):
            order = []
            while len(order) < clips_per_song:  # each clip once before any twice
                order += [members[i] for i in rng.permutation(len(members))]
            chosen = order[:clips_per_song]
            out["logits"].append(np.concatenate([by_track[t][which] for t in chosen]))
            for key, v in (("part", part), ("genre", genre), ("path", f"{part}/{genre}/virtual-{k:03d}"), ("n", 5 * clips_per_song)):
                out[key].append(v)

    genres = sorted({t.split("/")[0] for t in tracks})
    for part in ("train", "val", "test"):
        for g in genres:
            members = [t for t in tracks if part_of[t] == part and t.startswith(g + "/")]
            if len(members) >= 3:
                add(part, g, members, 0)
    for g in genres:
        add("training", g, [t for t in tracks if t.startswith(g + "/")], 1)
    return {"part": np.array(out["part"]), "genre": np.array(out["genre"]), "path": np.array(out["path"]),
            "n": np.array(out["n"]), "logits": np.concatenate(out["logits"]), "classes": classes}


def song_clips(data: dict[str, np.ndarray], clips_root: str) -> list[list[str]]:
    """The clips (``genre/stem``) of each cached song, as :mod:`melgenre.bench.songs` planned it: songs of
    unseen clips by :func:`~melgenre.bench.songs.plan_part_songs` of each part, songs of training clips by
    :func:`~melgenre.bench.songs.plan_songs` (``<genre>-song-NN`` in plan order)."""
    from melgenre.bench.songs import part_clips, plan_part_songs, plan_songs
    from melgenre.datasets import discover

    ds = discover(Path(clips_root))
    clips: dict[str, list[Path]] = {}
    for t in ds.tracks:
        clips.setdefault(ds.classes[t.label], []).append(t.path)
    names = {}
    for part, plan in [(p, plan_part_songs(c)) for p, c in part_clips(clips).items()] + \
            [("training", plan_songs(clips, sum(data["part"] == "training")))]:
        counts: dict[str, int] = {}
        for genre, parts in plan:
            counts[genre] = counts.get(genre, 0) + 1
            names[(part, f"{genre}-song-{counts[genre]:02d}.mp3")] = [f"{q.parent.name}/{q.stem}" for q in parts]
    return [names[(str(part), Path(str(path)).name)] for part, path in zip(data["part"], data["path"])]


def recombined_songs(data: dict[str, np.ndarray], logits: list[np.ndarray], clips_root: str, per: int,
                     clips_per_song: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Songs recombined from the real MP3 songs' windows: each clip's 5 windows (one 6-s hop block) as some
    cached song decoded them, six random clips of one genre and part in random order (each clip once before
    any twice), ``per`` songs of each genre of each part (songs of training clips: of each genre)."""
    made = song_clips(data, clips_root)
    blocks: dict[tuple[str, str], list[np.ndarray]] = {}
    for part, members, lg in zip(data["part"], made, logits):
        for j, clip in enumerate(members):
            if 5 * j + 5 <= len(lg):
                blocks.setdefault((str(part), clip), []).append(lg[5 * j:5 * j + 5])
    rng = np.random.default_rng(seed)
    out = {"part": [], "genre": [], "path": [], "n": [], "logits": []}
    groups: dict[tuple[str, str], list[str]] = {}
    for part, clip in blocks:
        groups.setdefault((part, clip.split("/")[0]), []).append(clip)
    for (part, genre), members in sorted(groups.items()):
        if len(members) < 3:
            continue
        for k in range(per):
            order: list[str] = []
            while len(order) < clips_per_song:
                order += [members[i] for i in rng.permutation(len(members))]
            chosen = [blocks[(part, c)][rng.integers(len(blocks[(part, c)]))] for c in order[:clips_per_song]]
            out["logits"].append(np.concatenate(chosen))
            for key, v in (("part", part), ("genre", genre), ("path", f"{part}/{genre}/recombined-{k:03d}"),
                           ("n", 5 * clips_per_song)):
                out[key].append(v)
    return {k: (np.concatenate(v) if k == "logits" else np.array(v)) for k, v in out.items()}


def simulate(args: argparse.Namespace) -> None:
    if args.virtual:
        data = virtual_songs(args.virtual, args.cv, args.per, seed=args.seed)
        flat, classes = data["logits"], data["classes"]
        _, _, temperature, unsure_below = window_logits({"embeddings": np.zeros((0, 1706), np.float32),
                                                         "n": np.zeros(0, int), "part": np.zeros(0, str)}, None)
    else:
        data = dict(np.load(args.cache))
        flat, classes, temperature, unsure_below = window_logits(data, args.cv)
    logits = np.split(flat, np.cumsum(data["n"])[:-1])
    if args.recombine:
        data = recombined_songs(data, logits, args.recombine, args.per, seed=args.seed)
        logits = np.split(data["logits"], np.cumsum(data["n"])[:-1])
    cost = tuple(map(float, args.cost.split(","))) if args.cost else None
    results = {}
    first = [replay(lg, temperature, 5, never) for lg in logits]
    close5 = np.array([o.close for o in first])  # the first sample of 5 is a close call
    for subset in ("unseen", "training", "unseen, close calls on 5 windows", "training, close calls on 5 windows"):
        mask = (data["part"] == "training") if subset.startswith("training") else (data["part"] != "training")
        if "close calls" in subset:
            mask = mask & close5
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
              f"{'u|close':>7s} {'acc':>11s} {'win':>5s} {'x':>5s} {'ece':>5s}")
        for name, r in table.items():
            d = r["vs_every_window"]
            print(f"{name:46s} {r['accuracy']:6.3f} {d['difference']:+6.3f} [{d['interval'][0]:+.2f},{d['interval'][1]:+.2f}]"
                  f" {r['same_label_as_every_window']:5.2f} {r['unsure_rate']:6.2f} {r['accuracy_unsure'] or 0:5.2f}/"
                  f"{r['accuracy_sure'] or 0:4.2f} {r['unsure_or_close_rate']:7.2f} {r['accuracy_unsure_or_close'] or 0:5.2f}/"
                  f"{r['accuracy_neither'] or 0:4.2f} {r['windows_per_song']:5.1f} {r.get('est_speedup', 0):5.2f} {r['ece']:5.3f}")


def cost(args: argparse.Namespace) -> None:
    """Seconds a song of the library job (the model's loading left out): every window, and n windows without
    rechecks for each n of ``--windows``, in turn on the same songs (``--rounds`` times); fits a + b * n."""
    import os
    import tempfile
    import time

    from melgenre.library import predict_library

    songs = sorted(Path(args.songs).rglob("*.mp3"))[: args.n_songs]
    counts = [int(n) for n in args.windows.split(",")]
    W.RECHECK = W.Recheck(margin=0.0)  # a fixed sample: no rechecks
    times: dict[str, list[float]] = {"all": [], **{str(n): [] for n in counts}}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        predict_library(songs[:2], Path(tmp) / "warm.sqlite", model=args.model, windows=5, progress=False)
        for r in range(args.rounds):
            for key in times:
                db = Path(tmp) / f"{key}-{r}.sqlite"
                rep = predict_library(songs, db, model=args.model, windows=key, progress=False)
                times[key].append((rep.seconds - rep.load_seconds) / rep.predicted)
                print(f"round {r} {key}: {times[key][-1]:.3f} s a song", file=sys.stderr, flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    b, a = np.polyfit(counts, [med[str(n)] for n in counts], 1)
    out = {"songs": len(songs), "rounds": args.rounds, "seconds_per_song": med, "every_window": med["all"],
           "a": float(a), "b": float(b), "loadavg_start": load, "loadavg_end": os.getloadavg()}
    print(json.dumps(out, indent=1))
    print(f"--cost {med['all']:.4f},{a:.4f},{b:.4f}")


#: The rules docs/benchmarks/songs.md shows (of :data:`RULES`), in its order.
SHOWN = ("every window", "1 window", "3 windows", "5 windows, no recheck", "10 windows, no recheck",
         "15 windows, no recheck", "5, doubling while margin < 0.2 (before)", "5, doubling while margin < 0.1",
         "5, doubling while margin < 0.05", "5, +1 once if margin < 0.2 (at most 6)",
         "5, +5 once if margin < 0.2 (at most 10)", "5, +5 once if margin < 0.1 (at most 10)",
         "5, +10 once if margin < 0.2 (at most 15)", "5, +5 while margin < 0.2, at most 15",
         "5, +1 while margin < 0.2, at most 8", "5, sequential z 1, +5, at most 10",
         "5, sequential z 2, +5, at most 15", "5, sequential z 2, +5, every window")


def table(args: argparse.Namespace) -> None:
    """Markdown tables of :func:`simulate`'s JSON (``--real`` songs and ``--recombined`` ones), songs/s
    against every window estimated with ``--cost E,a,b``."""
    e, a, b = map(float, args.cost.split(","))

    def ratio(w: float) -> str:  # songs/s (est.) and the ratio to every window
        return f"{1 / (a + b * w):.2f} ({e / (a + b * w):.1f}×)" if w < 30 else f"{1 / e:.2f} (1×)"

    def acc(r: dict) -> str:
        d = r["vs_every_window"]
        return (f"{100 * r['accuracy']:.1f} %" + ("" if r["windows_per_song"] >= r["windows_per_song_every"] else
                f" ({100 * d['difference']:+.1f} [{100 * d['interval'][0]:+.1f}, {100 * d['interval'][1]:+.1f}])"))

    def flag(r: dict) -> str:
        u, s = r["accuracy_unsure"], r["accuracy_sure"]
        return f"{100 * r['unsure_rate']:.0f} % ({'—' if u is None else f'{100 * u:.0f}'} / {'—' if s is None else f'{100 * s:.0f}'})"

    for path, title in ((args.real, "songs"), (args.recombined, "recombined songs")):
        if not path:
            continue
        res = json.loads(Path(path).read_text())
        un, tr = res["unseen"], res["training"]
        close = res.get("unseen, close calls on 5 windows")
        n_un, n_tr = next(iter(un.values()))["songs"], next(iter(tr.values()))["songs"]
        head = (f"| rule | {n_un} {title} of unseen clips: accuracy (Δ vs every window [95 %]) | unsure (% right "
                f"when unsure / otherwise) | windows | songs/s, est. (× every window) |")
        cols = 4
        if close:
            head += f" {next(iter(close.values()))['songs']} of them close calls on 5 windows: accuracy, windows, songs/s est. |"
            cols += 1
        head += f" {n_tr} {title} of training clips: accuracy (Δ) | windows |"
        cols += 2
        print("\n" + head + "\n" + "|---" * (cols + 1) + "|")
        for name in SHOWN:
            if name not in un:
                continue
            u, t = un[name], tr[name]
            shipped = " (**shipped**)" if name == "5, +5 once if margin < 0.2 (at most 10)" else ""
            row = f"| {name}{shipped} | {acc(u)} | {flag(u)} | {u['windows_per_song']:.1f} | {ratio(u['windows_per_song'])} |"
            if close:
                c = close[name]
                row += f" {100 * c['accuracy']:.1f} %, {c['windows_per_song']:.1f}, {ratio(c['windows_per_song'])} |"
            row += f" {acc(t)} | {t['windows_per_song']:.1f} |"
            print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--unseen", help="songs as <part>/<genre>/*.mp3 (part: train, val, test)")
    c.add_argument("--training", help="songs of training clips as <genre>/*.mp3")
    c.add_argument("--cache", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--cache")
    s.add_argument("--virtual", help="instead of --cache: songs made in memory from this embedding store")
    s.add_argument("--recombine", metavar="CLIPS", help="with --cache: songs recombined from the cached songs' "
                   "clip windows (CLIPS: the clips the songs were made of, to know which clip is where)")
    s.add_argument("--per", type=int, default=30, help="virtual or recombined songs per genre and part")
    s.add_argument("--seed", type=int, default=0, help="of the virtual songs' clips")
    s.add_argument("--cv", help="melgenre cv folder with group0-last .. group2-last (fault_filtered, --fixed-epochs)")
    s.add_argument("--cost", help="E,a,b: seconds a song for every window, and a + b x windows for a sample")
    s.add_argument("--out")
    t = sub.add_parser("cost")
    t.add_argument("--songs", required=True)
    t.add_argument("--model", default=None)
    t.add_argument("--n-songs", type=int, default=20)
    t.add_argument("--windows", default="5,10,15")
    t.add_argument("--rounds", type=int, default=3)
    m = sub.add_parser("table")
    m.add_argument("--real")
    m.add_argument("--recombined")
    m.add_argument("--cost", required=True)
    args = parser.parse_args()
    {"cache": cache, "simulate": simulate, "cost": cost, "table": table}[args.step](args)


if __name__ == "__main__":
    main()
