"""Merge ``melgenre embed`` stores of one tagger into one store, for training a head on several corpora.

The first store's classes are the merged store's; rows of other stores whose class is not among them
(the non-GTZAN dev set's ``other-*`` folders) are left out. Track ids must be unique across the
inputs (``tools/wild_devset.py``'s clips are ``<genre>/<corpus>__<clip>``, GTZAN's ``<genre>/<genre>.NNNNN``).
Stores must share preset and embedding; the merged store keeps the first store's ``augment`` list
(rows of a store without variants are all originals, variant 0). With ``--groups-out`` it also
writes a ``track,group`` CSV for ``melgenre cv --groups``: GTZAN tracks get their fault-filtered part
(``gtzan-<part>``), every other track the corpus its clip id names (``emotify``, ``allmusic``, ``fma``)::

    python tools/merge_stores.py dev-msd-aug.h5 wild-msd.h5 --out gtzan+wild-msd.h5 --groups-out groups.csv
    python tools/merge_stores.py dev-msd-aug.h5 dev-mtt.h5 --concat --last 200 --out dev-msd+mtt.h5   # a fuse model's rows
    melgenre cv configs/musicnn-tagprior.yaml --data gtzan+wild-msd.h5 --groups groups.csv --folds 5 --fixed-epochs
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from melgenre.data import group_of
from melgenre.store import _STR, _TRACK_FIELDS, MelStore
from melgenre.utils import atomic_path


def merge(inputs: list[Path], out: Path) -> list[str]:
    """Write the merged store; returns its track ids."""
    stores = [MelStore(p) for p in inputs]
    first = stores[0]
    classes = first.classes
    for s in stores[1:]:
        for key in ("preset", "embedding"):
            if json.loads(s.attrs[key]) != json.loads(first.attrs[key]):
                raise SystemExit(f"{s.path}: another {key} than {first.path}")
    xs, cols, tracks = [], {k: [] for k in ("y", "track_id", "chunk_index", "variant", "path")}, \
        {k: [] for k in _TRACK_FIELDS}
    n = 0
    for s in stores:
        t = s.tracks()
        keep_class = {i: classes.index(c) for i, c in enumerate(s.classes) if c in classes}
        with h5py.File(s.path, "r") as f:
            x = f["x"][:]
            paths = f["path"].asstr()[:]
        for k in range(len(t["id"])):
            if int(t["label"][k]) not in keep_class:
                continue
            a, b = int(t["first_row"][k]), int(t["first_row"][k]) + int(t["n_rows"][k])
            label = keep_class[int(t["label"][k])]
            xs.append(x[a:b])
            cols["y"].append(np.full(b - a, label, np.int16))
            cols["track_id"].append(s.track_id[a:b])
            cols["chunk_index"].append(s.chunk_index[a:b].astype(np.int16))
            cols["variant"].append(s.variant[a:b].astype(np.int8))
            cols["path"].append(paths[a:b])
            for key in _TRACK_FIELDS:
                tracks[key].append(t[key][k])
            tracks["label"][-1], tracks["first_row"][-1], tracks["n_rows"][-1] = label, n, b - a
            n += b - a
    ids = [str(i) for i in tracks["id"]]
    if len(set(ids)) != len(ids):
        raise SystemExit("track ids repeat across the inputs")
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=np.concatenate(xs), chunks=(1, *xs[0].shape[1:]))
            for key, parts in cols.items():
                data = np.concatenate(parts)
                f.create_dataset(key, data=data.astype(object) if key in ("track_id", "path") else data,
                                 dtype=_STR if key in ("track_id", "path") else data.dtype)
            g = f.create_group("tracks")
            for key, values in tracks.items():
                dtype = _STR if key in ("id", "path", "sha256") else None
                g.create_dataset(key, data=np.array(values, dtype=object if dtype else None), dtype=dtype)
            attrs = dict(first.attrs)
            attrs.update({"n_tracks": len(ids), "root": "; ".join(str(s.attrs["root"]) for s in stores),
                          "input_hash": hashlib.sha256("|".join(str(s.attrs["input_hash"]) for s in stores)
                                                      .encode()).hexdigest(),
                          "skipped": json.dumps(sum((s.skipped for s in stores), []))})
            f.attrs.update(attrs)
    for s in stores:
        s.close()
    return ids


def concat(first: Path, second: Path, out: Path, last: int | None = None) -> tuple[int, int]:
    """Write ``first``'s store with ``second``'s row of the same (track, patch, variant) appended to
    every row: the input of a ``fuse`` model (its own tagger's embedding, then the second tagger's).
    Rows ``second`` lacks (e.g. augmented variants, when ``second`` was embedded without them) get
    zeros: use such a store only with ``fuse.head: false``, where the second part feeds the prior,
    which training never applies. Returns (rows, rows filled with zeros)."""
    a, b = MelStore(first), MelStore(second)
    key = {(t, int(c), int(v)): i for i, (t, c, v) in enumerate(zip(b.track_id, b.chunk_index, b.variant))}
    rows = np.array([key.get((t, int(c), int(v)), -1) for t, c, v in zip(a.track_id, a.chunk_index, a.variant)])
    with h5py.File(a.path, "r") as fa, h5py.File(b.path, "r") as fb:
        xa, xb = fa["x"][:], fb["x"][:]
        if last:  # only the second store's last values (e.g. the 200 of penultimate out of pool+penultimate)
            xb = xb[:, :, -last:]
        extra = np.where(rows[:, None, None] >= 0, xb[np.maximum(rows, 0)], 0).astype(xa.dtype)
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                for key_ in fa:
                    if key_ != "x":
                        fa.copy(fa[key_], f, key_)
                f.create_dataset("x", data=np.concatenate([xa, extra], 2), chunks=(1, 1, xa.shape[2] + xb.shape[2]))
                attrs = dict(fa.attrs)
                spec = json.loads(attrs["embedding"])
                second_spec = json.loads(fb.attrs["embedding"])
                if last:
                    second_spec = {**second_spec, "embedding": "penultimate" if last == 200 else f"last {last}", "size": last}
                spec = {**spec, "fuse": second_spec, "size": spec["size"] + xb.shape[2]}
                attrs.update({"embedding": json.dumps(spec),
                              "input_hash": hashlib.sha256(f"{fa.attrs['input_hash']}|{fb.attrs['input_hash']}"
                                                           .encode()).hexdigest()})
                f.attrs.update(attrs)
    a.close()
    b.close()
    return len(rows), int(np.sum(rows < 0))


def groups_for(ids: list[str]) -> list[tuple[str, str]]:
    ff = group_of(ids, "fault_filtered")
    rows = []
    for t, g in zip(ids, ff):
        stem = t.rsplit("/", 1)[-1]
        if g is not None:
            rows.append((t, f"gtzan-{g}"))
        elif "__" in stem:
            rows.append((t, stem.split("__", 1)[0]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--groups-out", type=Path)
    ap.add_argument("--concat", action="store_true",
                    help="two stores of the same tracks: append the second's rows to the first's (a fuse model's input)")
    ap.add_argument("--last", type=int, help="with --concat: append only the second store's last N values per row")
    args = ap.parse_args(argv)
    if args.concat:
        if len(args.inputs) != 2:
            ap.error("--concat takes two stores")
        n, zeros = concat(*args.inputs, args.out, args.last)
        print(f"{args.out}: {n} rows, {zeros} without a row of {args.inputs[1]} (zeros)")
        return 0
    ids = merge(args.inputs, args.out)
    print(f"{args.out}: {len(ids)} tracks")
    if args.groups_out:
        rows = groups_for(ids)
        with args.groups_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["track", "group"])
            w.writerows(rows)
        print(f"{args.groups_out}: {len(rows)} tracks in {len({g for _, g in rows})} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
