"""Leave-one-out precision@k of same-genre neighbours in a `melgenre index` of GTZAN clips.

Usage (the figures in docs/results/similar.md)::

    PYTHONPATH=src python3 tools/similar_precision.py /work/shared/data/gtzan-dev \
        --index /tmp/gtzan-dev-library.h5 --out docs/similar-precision.json

It indexes the corpus folder (``<genre>/<genre>.NNNNN.*``) with the model (default: the shipped
default model) through :func:`melgenre.similar.build_index`, unless the index is already up to
date, then every clip is a query against all the others (cosine similarity of the stored
embeddings, the same scores as ``melgenre similar``) and scores the share of its ``k`` nearest
neighbours that have its genre:

* ``artist_disjoint``: neighbours are searched only among clips of another part of GTZAN's
  fault-filtered split (Kereliuk, Sturm & Larsen 2015; parts train/val/test are
  artist-disjoint), so the same artist or recording never counts. Clips outside the three
  parts (unknown artist grouping) are neither queries nor neighbours here.
* ``plain``: all other clips are candidates (same artist allowed: optimistic).

For each it reports the mean over queries (micro), the mean of the per-genre means (macro:
the dev clips are imbalanced, 40 vs 7 per genre), the chance level (the share of same-genre
clips among a query's candidates, averaged) and the best attainable precision@k (a genre with
fewer than k candidates in other parts cannot reach 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from melgenre.data import group_of
from melgenre.similar import Index, build_index


def precision_at_k(sim: np.ndarray, genres: np.ndarray, candidates: np.ndarray, queries: np.ndarray,
                   k: int) -> dict:
    """Precision@k of same-genre neighbours; ``candidates[i, j]`` says whether j may answer query i."""
    per_query, chance, best = [], [], []
    for i in np.flatnonzero(queries):
        allowed = np.flatnonzero(candidates[i])
        top = allowed[np.argsort(-sim[i, allowed], kind="stable")[:k]]
        same = genres[allowed] == genres[i]
        per_query.append(float(np.mean(genres[top] == genres[i])))
        chance.append(float(same.mean()))
        best.append(min(k, int(same.sum())) / k)
    q_genres = genres[queries]
    per_query = np.array(per_query)
    per_genre = {g: round(float(per_query[q_genres == g].mean()), 4) for g in sorted(set(q_genres))}
    return {"queries": int(queries.sum()), "micro": round(float(per_query.mean()), 4),
            "macro": round(float(np.mean(list(per_genre.values()))), 4),
            "chance": round(float(np.mean(chance)), 4), "attainable": round(float(np.mean(best)), 4),
            "per_genre": per_genre}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Corpus folder: <genre>/<genre>.NNNNN.<ext>.")
    parser.add_argument("--index", type=Path, required=True, help="Index file to build or reuse.")
    parser.add_argument("--model", default=None, help="Model (default: the shipped default model).")
    parser.add_argument("-k", type=int, default=5, help="Neighbours per query (default 5).")
    parser.add_argument("--workers", type=int, default=None, help="Worker processes (default: all cores).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the result as JSON here.")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    report = build_index(args.data, args.index, model=args.model, workers=args.workers)
    index = Index(args.index)
    paths = [Path(p) for p in index.paths]
    ids = [f"{p.parent.name}/{p.stem}" for p in paths]
    genres = np.array([p.parent.name for p in paths])
    groups = np.array([g or "" for g in group_of(ids, "fault_filtered")])
    emb = index.embeddings_at(slice(None))
    sim = emb @ emb.T
    n = len(ids)
    others = ~np.eye(n, dtype=bool)
    in_part = groups != ""
    disjoint = others & in_part[None, :] & in_part[:, None] & (groups[None, :] != groups[:, None])
    result = {
        "command": "PYTHONPATH=src python3 tools/similar_precision.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
        "model_id": index.model_id, "dim": index.dim, "tracks": n, "k": args.k,
        "outside_parts": sorted(i for i, g in zip(ids, groups) if not g),
        "artist_disjoint": precision_at_k(sim, genres, disjoint, in_part, args.k),
        "plain": precision_at_k(sim, genres, others, np.ones(n, dtype=bool), args.k),
        "index_seconds": round(report.seconds, 1), "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
