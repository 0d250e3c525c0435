"""Segment boundary error of the genre timeline on joined real clips (the figure in docs/results/timeline.md).

Joins PAIRS pairs of 30-s clips of two different genres (drawn with a fixed seed from a GTZAN
layout <root>/<genre>/<file>), predicts each joined file with a model and reports how many give
exactly two segments with the right genres, and the distance from the join to the nearest segment
boundary.

    python3 tools/timeline_boundary.py ../shared/data/gtzan-dev --pairs 20 [--model PATH] [--hop S]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from melgenre import audio, load_model
from melgenre.timeline import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="GTZAN layout: <root>/<genre>/<file>")
    parser.add_argument("--pairs", type=int, default=20, help="joined files to make (default 20)")
    parser.add_argument("--model", default=None, help="model (default: the shipped default model)")
    parser.add_argument("--hop", type=float, default=None, help="prediction hop in seconds (default: the card's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the pairs (default 0)")
    args = parser.parse_args()

    model = load_model(args.model, hop=args.hop)
    files = {g.name: sorted(g.glob("*.*")) for g in sorted(args.root.iterdir()) if g.is_dir()}
    rng = np.random.default_rng(args.seed)
    genre_pairs = [p for p in itertools.permutations(sorted(files), 2) if p[0] in model.classes and p[1] in model.classes]
    chosen = [genre_pairs[i] for i in rng.choice(len(genre_pairs), args.pairs, replace=False)]
    errors, two_right = [], 0
    print(f"model {model.model_id}, windows of {model.window_seconds:g} s every "
          f"{model.window_preset.chunk_hop_seconds:g} s")
    for first, second in chosen:
        a, b = (audio.load(files[g][rng.integers(len(files[g]))], sr=model.preset.sr).samples for g in (first, second))
        join = len(a) / model.preset.sr
        pred = model.predict(np.concatenate([a, b]), sr=model.preset.sr, name=f"{first}+{second}")
        inner = [s.start for s in pred.segments[1:]]
        error = min((abs(t - join) for t in inner), default=float("nan"))
        errors.append(error)
        two_right += [s.genre for s in pred.segments] == [first, second]
        print(f"{first:>9} + {second:<9} join {join:5.1f} s  error {error:4.1f} s  {describe(pred.segments)}")
    err = np.array(errors)
    found = err[np.isfinite(err)]
    print(f"\n{len(chosen)} joined files: {two_right} with exactly two segments of the right genres; "
          f"{len(found)} with a boundary; |boundary - join| median {np.median(found):.2f} s, mean "
          f"{found.mean():.2f} s, max {found.max():.2f} s; within one window ({model.window_seconds:g} s): "
          f"{int((found <= model.window_seconds).sum())}/{len(chosen)}")


if __name__ == "__main__":
    main()
