from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from melgenre import store as store_mod
from melgenre.config import AugmentConfig, DataConfig
from melgenre.data import (MelDataModule, augment_image, fault_filtered_split, group_kfold_splits, group_names,
                           gtzan_fault_filtered, kfold_split, rows_of, stratified_split, track_table)
from melgenre.errors import ConfigError
from melgenre.store import MelStore


def _tracks(per_class=(20, 20, 7, 7)):
    ids = np.array([f"c{c}/t{i:03d}" for c, n in enumerate(per_class) for i in range(n)], dtype=object)
    labels = np.array([c for c, n in enumerate(per_class) for _ in range(n)])
    return ids, labels


def test_stratified_split_is_stratified_deterministic_and_complete():
    ids, labels = _tracks()
    a = stratified_split(ids, labels, [0.7, 0.1, 0.2], seed=1)
    b = stratified_split(ids, labels, [0.7, 0.1, 0.2], seed=1)
    c = stratified_split(ids, labels, [0.7, 0.1, 0.2], seed=2)
    assert a == b and a != c
    all_ids = a["train"] + a["val"] + a["test"]
    assert sorted(all_ids) == sorted(ids) and len(set(all_ids)) == len(ids)
    label_of = dict(zip(ids, labels))
    for split, expected in (("train", [14, 14, 5, 5]), ("val", [2, 2, 1, 1]), ("test", [4, 4, 1, 1])):
        assert np.bincount([label_of[t] for t in a[split]], minlength=4).tolist() == expected, split


def test_report_split_sizes_on_gtzan_shape():
    ids, labels = _tracks((100,) * 9 + (99,))  # 999 tracks: jazz.00054 is unreadable
    for fractions, sizes in (([0.7, 0.1, 0.2], (700, 100, 200)), ([0.8, 0.1, 0.1], (800, 100, 100))):
        s = stratified_split(ids, labels, fractions, seed=0)
        got = (len(s["train"]), len(s["val"]), len(s["test"]))
        assert sum(got) == 999 and all(abs(g - e) <= 1 for g, e in zip(got, sizes)), got


def test_kfold_folds_disjoint_and_covering():
    ids, labels = _tracks()
    folds = [kfold_split(ids, labels, 0.2, 4, k, seed=3) for k in range(4)]
    test = folds[0]["test"]
    assert all(f["test"] == test for f in folds)
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(ids) - set(test)
    assert sum(len(v) for v in vals) == len(ids) - len(test)  # disjoint
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and not set(f["train"]) & set(test)
    with pytest.raises(ConfigError, match="folds"):
        kfold_split(ids, labels, 0.2, 8, 0, seed=0)  # a 7-track class cannot fill 8 folds


def test_fault_filtered_split_lists():
    split = gtzan_fault_filtered()
    assert [len(split[s]) for s in ("train", "val", "test")] == [443, 197, 290]
    assert not set(split["train"]) & set(split["test"])
    ids = np.array(["jazz/jazz.00054", "blues/blues.00012", "blues/blues.00000", "pop/pop.00015"], dtype=object)  # pop.00015: excluded
    mapped = fault_filtered_split(ids)
    assert mapped == {"train": ["jazz/jazz.00054"], "val": ["blues/blues.00000"], "test": ["blues/blues.00012"]}
    with pytest.raises(ConfigError, match="fault_filtered"):
        fault_filtered_split(np.array(["class00/x"], dtype=object))


def test_group_kfold_splits_hold_out_each_fault_filtered_part_once(caplog):
    # GTZAN-like ids: 3 tracks in each fault-filtered part (blues/rock), 2 outside it (pop.00015, jazz.00033)
    ids = np.array(["blues/blues.00030", "blues/blues.00000", "blues/blues.00012", "pop/pop.00015",
                    "rock/rock.00000", "rock/rock.00038", "rock/rock.00010", "jazz/jazz.00033",
                    "rock/rock.00001", "blues/blues.00001", "blues/blues.00013"], dtype=object)
    labels = np.array([0, 0, 0, 2, 1, 1, 1, 3, 1, 0, 0])
    folds = group_kfold_splits(ids, labels, "fault_filtered")
    assert group_names("fault_filtered") == ["train", "val", "test"] and len(folds) == 3
    assert folds[0] == {"train": ["blues/blues.00000", "blues/blues.00012", "pop/pop.00015", "rock/rock.00038",
                                  "rock/rock.00010", "jazz/jazz.00033", "blues/blues.00001", "blues/blues.00013"],
                        "val": ["blues/blues.00030", "rock/rock.00000", "rock/rock.00001"], "test": []}
    assert folds[1]["val"] == ["blues/blues.00000", "rock/rock.00038", "blues/blues.00001"]
    assert folds[2]["val"] == ["blues/blues.00012", "rock/rock.00010", "blues/blues.00013"]
    part_of = {t: part for part, names in gtzan_fault_filtered().items() for t in names}
    grouped = [t for t in ids if t.split("/")[1] in part_of]
    assert len(grouped) == 9
    scored = [t for f in folds for t in f["val"]]
    assert sorted(scored) == sorted(grouped)  # every grouped track scored exactly once
    for f in folds:
        assert sorted(f["train"] + f["val"]) == sorted(ids) and not f["test"]
        assert {"pop/pop.00015", "jazz/jazz.00033"} <= set(f["train"])  # ungrouped: always train
        held = {part_of[t.split("/")[1]] for t in f["val"]}
        trained = {part_of.get(t.split("/")[1]) for t in f["train"]} - {None}
        assert len(held) == 1 and not held & trained  # no group on both sides
    assert "lacks" not in caplog.text

    # a generic grouping (track id -> group); a class only in the held-out group is warned about
    folds = group_kfold_splits(["a/1", "a/2", "b/1", "b/2", "x"], [0, 1, 0, 0, 0], {"a/1": "A", "1": "B", "b/2": "B"})
    assert [f["val"] for f in folds] == [["a/1"], ["b/1", "b/2"]]  # "b/1" matches "1" by its last component
    assert folds[0]["train"] == ["a/2", "b/1", "b/2", "x"]
    assert "lacks" not in caplog.text
    group_kfold_splits(["a", "b", "c"], [0, 1, 0], {"a": "A", "b": "B"})
    assert "group 'B' of the grouping holds out class(es) 1 (e.g. b) that its training side lacks" in caplog.text


def test_group_kfold_splits_errors():
    with pytest.raises(ConfigError, match="no track id falls in a group of fault_filtered .*jazz/jazz.00012"):
        group_kfold_splits(np.array(["class00/x", "class01/y"], dtype=object), [0, 1])
    with pytest.raises(ConfigError, match="group 'test' of fault_filtered has no tracks here"):
        group_kfold_splits(["blues/blues.00030", "blues/blues.00000"])  # train and val parts only
    with pytest.raises(ConfigError, match="holding out group 'A' of the grouping leaves no tracks to train on"):
        group_kfold_splits(["a", "b"], None, {"a": "A", "b": "A"})
    with pytest.raises(ConfigError, match="unknown grouping 'artist'"):
        group_kfold_splits(["a"], None, "artist")
    with pytest.raises(ConfigError, match="3 track ids but 2 labels"):
        group_kfold_splits(["blues/blues.00030", "blues/blues.00000", "blues/blues.00012"], [0, 0])


def test_grouping_files_and_dealing_groups_to_folds(tmp_path, caplog):
    """A CSV/TSV of track,group (or artist) rows groups any corpus; fewer folds than groups deal
    whole groups to the folds, balanced by class and size, never one group on both sides."""
    from melgenre.data import group_folds, group_of, read_grouping

    csv_file = tmp_path / "artists.csv"
    rows = ["track,artist,year", "blues.00000,Hooker,1951", "blues/blues.00001.wav,Hooker,1952",
            "/music/gtzan/blues/blues.00002.flac,King,1960", "blues.00003,King,1961",
            "rock.00000,Clash,1979", "rock.00001,Clash,1979", "rock.00002,Queen,1975", "rock.00003,Who,1969",
            "rock.00004,Who,1969", "pop.00000,Abba,1976", "pop.00001,Madonna,1984", "pop.00002,Madonna,1984"]
    csv_file.write_text("\n".join(rows) + "\n")
    mapping = read_grouping(csv_file)
    assert mapping["blues.00000"] == "Hooker" and mapping["blues/blues.00001"] == "Hooker"  # suffix dropped
    assert mapping["blues.00002"] == "King"  # a long path: its stem
    tsv = tmp_path / "g.tsv"
    tsv.write_text("track\tgroup\nblues.00000\tHooker\n")
    assert read_grouping(tsv) == {"blues.00000": "Hooker"}

    stems = [".".join(Path(r.split(",")[0]).name.split(".")[:2]) for r in rows[1:]]  # blues.00002.flac -> blues.00002
    ids = [f"{stem.split('.')[0]}/{stem}" for stem in stems]
    labels = [{"blues": 0, "pop": 1, "rock": 2}[t.split("/")[0]] for t in ids]
    dealt = group_folds(ids, labels, csv_file, 3)
    assert sorted(g for fold in dealt for g in fold) == sorted(set(mapping.values()))  # each group dealt once
    assert all(dealt) and group_folds(ids, labels, csv_file, 3) == dealt  # deterministic
    assert group_folds(ids, labels, csv_file) == [[g] for g in dict.fromkeys(mapping.values())]  # one per group
    folds = group_kfold_splits(ids, labels, csv_file, folds=3)
    artist = dict(zip(ids, group_of(ids, csv_file)))
    assert sorted(t for f in folds for t in f["val"]) == sorted(ids)  # every track scored once
    for f in folds:
        assert not {artist[t] for t in f["val"]} & {artist[t] for t in f["train"]}  # no artist on both sides
        assert sorted(f["train"] + f["val"]) == sorted(ids)
    sizes = sorted(len(f["val"]) for f in folds)
    assert sizes[-1] - sizes[0] <= 2  # about equal
    for cls in range(3):  # each class spread over at least two folds where it has two or more groups
        assert sum(any(labels[ids.index(t)] == cls for t in f["val"]) for f in folds) >= 2
    # the CLI's CV runs these folds: tested in test_train

    with pytest.raises(ConfigError, match="7 groups of artists.csv among the tracks make 2 to 7 folds, not 8"):
        group_folds(ids, labels, csv_file, 8)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,artist\na,b\n")
    with pytest.raises(ConfigError, match="needs a header row with a 'track' column and a 'group' or 'artist' column"):
        read_grouping(bad)
    bad.write_text("track,group\na,A\nb,\n")
    with pytest.raises(ConfigError, match="bad.csv, line 3: empty track or group"):
        read_grouping(bad)
    bad.write_text("track,group\na,A\na.wav,B\n")
    with pytest.raises(ConfigError, match="line 3: track 'a' is in two groups \\('A' and 'B'\\)"):
        read_grouping(bad)
    with pytest.raises(ConfigError, match="cannot read .*missing.csv"):
        read_grouping(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="unknown grouping 'artists'.*or a .csv / .tsv file"):
        group_kfold_splits(["a"], None, "artists")


def test_augmentation_keeps_shape_and_changes_pixels():
    rng = np.random.default_rng(0)
    x = rng.random((32, 40)).astype(np.float32)
    cfg = AugmentConfig(time_masks=2, time_mask_width=8, freq_masks=2, freq_mask_width=6, time_shift=0.2, freq_shift=3)
    y = augment_image(x, cfg, rng)
    assert y.shape == x.shape and y.dtype == np.float32 and not np.array_equal(x, y)
    assert np.array_equal(augment_image(x, AugmentConfig(), rng), x)  # all off: identity
    shifted = augment_image(x, AugmentConfig(freq_shift=3), np.random.default_rng(5))
    k = next((k for k in range(-3, 4) if np.array_equal(shifted[3:-3], x[3 - k:32 - 3 - k])), None)
    assert k is not None and k != 0  # this seed shifts by 1-3 rows; the middle rows move intact
    edge, row = (shifted[:k], x[:1]) if k > 0 else (shifted[k:], x[-1:])
    assert np.array_equal(edge, np.repeat(row, abs(k), axis=0))  # edge-padded


def test_datamodule_groups_rows_by_track(small_corpus, tmp_path):
    path = tmp_path / "f.h5"
    store_mod.prepare(small_corpus, "fast", path, workers=1, progress=False)
    with MelStore(path) as s:
        ids, labels = track_table(s)
        splits = stratified_split(ids, labels, [0.5, 0.25, 0.25], seed=0)
        for name in splits:
            rows = rows_of(s, splits[name])
            assert set(s.track_id[rows]) == set(splits[name])  # every chunk of those tracks, nothing else
    dm = MelDataModule(path, splits, DataConfig(batch_size=2, in_memory=False))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 1, 128, 130) and x.dtype == torch.float32 and y.dtype == torch.int64
    weights = dm.class_weights()
    counts = np.bincount(dm.store.y[dm.rows_for("train")], minlength=3)
    np.testing.assert_allclose(weights.numpy() * counts, counts.sum() / 3, rtol=1e-6)
    assert dm.class_counts("train").sum() == len(splits["train"])
    n_train = len(dm.rows_for("train"))

    # drop_last is decided per DDP rank: a rank with no full batch keeps its partial one
    dm.cfg = DataConfig(batch_size=n_train - 1, in_memory=False)
    assert dm.train_dataloader().drop_last
    dm.trainer = SimpleNamespace(world_size=2)  # each rank gets ceil(n / 2) < batch_size rows
    assert not dm.train_dataloader().drop_last
    dm.cfg = DataConfig(batch_size=2, in_memory=False)
    assert dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last
