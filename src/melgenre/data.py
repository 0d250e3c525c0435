"""Training data: track-grouped splits, augmentation, and a LightningDataModule over a store.

Splits are always made over *tracks* (``track_id``), never rows, so the chunks of one track
never cross splits. Every run records its split as lists of track ids (``splits.json``).

- ``stratified``: per class, a seeded shuffle of its tracks cut by ``fractions``
  (train/val/test; the report's 700/100/200 is ``[0.7, 0.1, 0.2]``, 800/100/100 is
  ``[0.8, 0.1, 0.1]``). Per-class counts are rounded so that every split with a non-zero
  fraction gets at least one track of each class that has enough tracks.
- ``kfold``: the test part is held out as above (``fractions[2]``), the remaining tracks are
  cut into ``folds`` stratified folds; fold ``fold`` is validation, the others train.
- ``fault_filtered``: GTZAN's artist-disjoint split of Kereliuk, Sturm & Larsen (2015),
  443/197/290 tracks (``resources/gtzan_fault_filtered.yaml``); tracks outside it are unused.

Group cross-validation (:func:`group_kfold_splits`) holds out one group of tracks per fold, so
that no group is on both sides; with ``fault_filtered`` the groups are the split's three
artist-disjoint parts, which makes the folds artist-disjoint (GTZAN is ordered by artist, so
stratified folds put one artist on both sides and flatter the scores). For another corpus, a CSV
file of ``track,group`` rows (e.g. each track's artist, :func:`read_grouping`) groups the tracks;
with fewer folds than groups, whole groups are dealt to the folds (:func:`group_folds`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, Dataset

from melgenre.audio import AUDIO_EXTENSIONS
from melgenre.config import AugmentConfig, DataConfig
from melgenre.errors import ConfigError
from melgenre.store import MelStore
from melgenre.utils import atomic_path

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")

#: Named track groupings for group cross-validation -> the protocol they give, in words.
GROUPINGS = {"fault_filtered": "artist-disjoint (fault-filtered groups)"}


# -- splits ------------------------------------------------------------------------------------

def _allocate(n: int, fractions: list[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` (largest remainder), giving each non-zero share >= 1
    item when ``n`` allows it, taken from the largest share."""
    f = np.asarray(fractions, dtype=float) / sum(fractions)
    raw = f * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((f > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def track_table(store: MelStore) -> tuple[np.ndarray, np.ndarray]:
    """Unique track ids (in store order) and their labels."""
    ids, first = np.unique(store.track_id, return_index=True)
    order = np.argsort(first)
    return ids[order], store.y[first[order]]


def stratified_split(ids: np.ndarray, labels: np.ndarray, fractions: list[float], seed: int) -> dict[str, list[str]]:
    """Per-class seeded shuffle and cut of track ids into train/val/test."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for label in np.unique(labels):
        members = ids[labels == label].copy()
        rng.shuffle(members)
        start = 0
        for name, count in zip(SPLIT_NAMES, _allocate(len(members), fractions)):
            out[name] += members[start:start + count].tolist()
            start += count
    return out


def kfold_split(ids: np.ndarray, labels: np.ndarray, test_fraction: float, folds: int, fold: int,
                seed: int) -> dict[str, list[str]]:
    """Hold out a stratified test part, then stratified K folds over the rest (fold = val)."""
    held = stratified_split(ids, labels, [1.0 - test_fraction, 0.0, test_fraction], seed) if test_fraction > 0 \
        else {"train": ids.tolist(), "test": []}
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    rest = np.array(held["train"], dtype=object)
    rest_labels = np.array([label_of[t] for t in rest], dtype=np.int64)
    smallest = np.bincount(rest_labels).min() if len(rest) else 0
    if smallest < folds:
        raise ConfigError(f"data.folds: {folds} folds need >= {folds} non-test tracks per class; "
                          f"the smallest class has {smallest}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(rest, rest_labels))[fold]
    return {"train": rest[train_idx].tolist(), "val": rest[val_idx].tolist(), "test": held["test"]}


def gtzan_fault_filtered() -> dict[str, list[str]]:
    """The fault-filtered GTZAN split as ``{"train", "val", "test"}`` lists of ``genre.NNNNN``."""
    text = resources.files("melgenre.resources").joinpath("gtzan_fault_filtered.yaml").read_text()
    data = yaml.safe_load(text)
    out = {}
    for split, source in zip(SPLIT_NAMES, ("train", "valid", "test")):
        ids = []
        for genre, spec in data[source].items():
            for part in filter(None, (p.strip() for p in str(spec).split(","))):
                lo, _, hi = part.partition("-")
                ids += [f"{genre}.{i:05d}" for i in range(int(lo), int(hi or lo) + 1)]
        out[split] = ids
    return out


def fault_filtered_split(ids: np.ndarray) -> dict[str, list[str]]:
    """Map the store's track ids (``genre/genre.NNNNN``) onto the fault-filtered split."""
    where = {name: split for split, names in gtzan_fault_filtered().items() for name in names}
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for track in ids:
        split = where.get(track.rsplit("/", 1)[-1])
        if split:
            out[split].append(str(track))
    if not out["train"]:
        raise ConfigError("data.split: fault_filtered needs GTZAN track ids like 'jazz/jazz.00012'; none matched")
    return out


#: Column names a grouping file may give its group column (the track column is ``track``).
GROUP_COLUMNS = ("group", "artist")


def is_grouping_file(groups: object) -> bool:
    """Whether ``groups`` names a grouping file (a ``.csv`` or ``.tsv`` path) rather than a named grouping."""
    return isinstance(groups, (str, Path)) and Path(groups).suffix.lower() in (".csv", ".tsv")


def read_grouping(path: str | Path) -> dict[str, str]:
    """``{track: group}`` from a CSV (or TSV) file with a header row naming a ``track`` column and a
    ``group`` (or ``artist``) column; other columns are ignored.

    A track is named by its file stem (``blues.00012``), its class and stem (``blues/blues.00012``)
    or a path; a path's audio suffix is dropped and a path of more than two parts is reduced to its
    stem, so a file list of absolute paths works too.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, lacks the columns, has an empty cell, or gives one track
        two groups.
    """
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"groups: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    column = next((c for c in GROUP_COLUMNS if rows and c in rows[0]), None)
    if not rows or "track" not in rows[0] or column is None:
        raise ConfigError(f"groups: {path} needs a header row with a 'track' column and a "
                          f"{' or '.join(map(repr, GROUP_COLUMNS))} column, and at least one row")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        track, group = (row.get("track") or "").strip(), (row.get(column) or "").strip()
        if not track or not group:
            raise ConfigError(f"groups: {path}, line {line}: empty track or {column}")
        parts = Path(track).with_suffix("").parts if Path(track).suffix.lower() in AUDIO_EXTENSIONS else Path(track).parts
        key = "/".join(parts) if len(parts) <= 2 else parts[-1]
        if mapping.get(key, group) != group:
            raise ConfigError(f"groups: {path}, line {line}: track {key!r} is in two groups "
                              f"({mapping[key]!r} and {group!r})")
        mapping[key] = group
    return mapping


def grouping(groups: str | Mapping[str, str]) -> dict[str, str]:
    """A track grouping as ``{track: group name}``.

    ``groups`` is a name from :data:`GROUPINGS` (``"fault_filtered"``: ``genre.NNNNN`` -> the
    part ``train``, ``val`` or ``test`` of :func:`gtzan_fault_filtered`), a grouping file
    (:func:`read_grouping`) or such a mapping itself.
    """
    if isinstance(groups, (str, Path)):
        if groups == "fault_filtered":
            return {track: part for part, names in gtzan_fault_filtered().items() for track in names}
        if is_grouping_file(groups):
            return read_grouping(groups)
        raise ConfigError(f"groups: unknown grouping {str(groups)!r}; known: {', '.join(GROUPINGS)}, "
                          "or a .csv / .tsv file of track,group rows")
    return {str(track): str(group) for track, group in groups.items()}


def group_names(groups: str | Mapping[str, str]) -> list[str]:
    """The groups of a grouping in fold order (``["train", "val", "test"]`` for ``fault_filtered``;
    for a file or mapping, the order in which its groups first appear)."""
    return list(dict.fromkeys(grouping(groups).values()))


def group_folds(ids: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray | None,
                groups: str | Mapping[str, str], folds: int | None = None) -> list[list[str]]:
    """The groups each fold holds out: one group per fold, or, with ``folds`` fewer than the groups
    among ``ids``, whole groups dealt to ``folds`` folds.

    Dealing is deterministic and greedy: groups from the largest down (ties by name), each to the
    fold with the fewest tracks of that group's most frequent class, then the fewest tracks (then
    the lowest index), so the folds come out about equal in size and in each class.

    Raises
    ------
    ConfigError
        ``folds`` below 2 or above the number of groups among ``ids``.
    """
    return _deal_groups([str(t) for t in ids], labels, grouping(groups), folds, _grouping_label(groups))


def _deal_groups(ids: list[str], labels: Sequence[int] | np.ndarray | None, mapping: dict[str, str],
                 folds: int | None, label: str) -> list[list[str]]:
    """:func:`group_folds` of an already read grouping (``label`` names it in messages)."""
    of = group_of(ids, mapping)
    present = dict.fromkeys(g for g in of if g is not None)
    names = [g for g in group_names(mapping) if g in present] if folds is not None else group_names(mapping)
    if folds is None or folds == len(names):
        return [[g] for g in names]
    if not 2 <= folds <= len(names):
        raise ConfigError(f"folds: {len(names)} groups of {label} among the tracks make "
                          f"2 to {len(names)} folds, not {folds}")
    labels = np.zeros(len(ids), dtype=int) if labels is None else np.asarray(labels)
    members: dict[str, list[int]] = {g: [] for g in names}
    for i, g in enumerate(of):
        if g is not None:
            members[g].append(int(labels[i]))
    n_classes = int(labels.max()) + 1 if len(labels) else 1
    per_class = np.zeros((folds, n_classes), dtype=int)
    dealt: list[list[str]] = [[] for _ in range(folds)]
    for g in sorted(names, key=lambda g: (-len(members[g]), g)):
        counts = np.bincount(members[g], minlength=n_classes)
        major = int(counts.argmax())
        k = min(range(folds), key=lambda f: (per_class[f, major], per_class[f].sum(), f))
        per_class[k] += counts
        dealt[k].append(g)
    return [sorted(d, key=names.index) for d in dealt]


def _grouping_label(groups: str | Mapping[str, str]) -> str:
    """How messages name a grouping: its name, its file's name, or "the grouping"."""
    if isinstance(groups, (str, Path)):
        return Path(groups).name if is_grouping_file(groups) else str(groups)
    return "the grouping"


def group_of(ids: Sequence[str] | np.ndarray, groups: str | Mapping[str, str]) -> list[str | None]:
    """The group of each track id (None outside every group). An id matches a grouping key
    either whole or by its last path component (``jazz/jazz.00012`` matches ``jazz.00012``)."""
    mapping = grouping(groups)
    return [mapping.get(t, mapping.get(t.rsplit("/", 1)[-1])) for t in map(str, ids)]


def group_kfold_splits(ids: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray | None = None,
                       groups: str | Mapping[str, str] = "fault_filtered",
                       folds: int | None = None) -> list[dict[str, list[str]]]:
    """The folds of group cross-validation: one fold per group, that group held out (or, with
    ``folds`` fewer than the groups, the groups :func:`group_folds` deals to each fold).

    Parameters
    ----------
    ids : sequence of str
        Track ids, e.g. the store's ``genre/genre.NNNNN`` (:func:`track_table`).
    labels : sequence of int, optional
        The tracks' class labels, only to log a warning when a fold holds out a class that its
        training side lacks (such a fold cannot score that class right).
    groups : str or mapping
        ``"fault_filtered"`` (GTZAN's three artist-disjoint parts, so 3 folds), a grouping file
        (:func:`read_grouping`) or a mapping ``{track id: group name}`` (see :func:`grouping` and
        :func:`group_of`).
    folds : int, optional
        Deal the groups to this many folds (:func:`group_folds`). Default: one fold per group.

    Returns
    -------
    list of dict
        One ``{"train", "val", "test"}`` dict of track ids per group, in :func:`group_names`
        order. ``val`` is the held-out group (the tracks a fold scores), ``train`` is every
        other track, ``test`` is empty. Tracks outside every group are in ``train`` of every
        fold and never scored; every grouped track is scored in exactly one fold. Each list
        keeps the order of ``ids``.

    Raises
    ------
    ConfigError
        When no id falls in a group, when a group has no track among ``ids``, or when a fold's
        training side would be empty.
    """
    ids = [str(t) for t in ids]
    what = _grouping_label(groups)
    mapping = grouping(groups)  # a grouping file is read once
    of = group_of(ids, mapping)
    if not any(g is not None for g in of):
        hint = " (it needs GTZAN track ids like 'jazz/jazz.00012')" if groups == "fault_filtered" else ""
        raise ConfigError(f"groups: no track id falls in a group of {what}{hint}")
    label_of: dict[str, int] = {}
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(ids):
            raise ConfigError(f"groups: {len(ids)} track ids but {len(labels)} labels")
        label_of = dict(zip(ids, labels.tolist()))
    splits = []
    for held_groups in _deal_groups(ids, labels, mapping, folds, what):
        name = held_groups[0] if len(held_groups) == 1 else f"{len(held_groups)} groups"
        held = [t for t, g in zip(ids, of) if g in held_groups]
        train = [t for t, g in zip(ids, of) if g not in held_groups]
        if not held:
            raise ConfigError(f"groups: group {name!r} of {what} has no tracks here, so its fold would score nothing")
        if not train:
            raise ConfigError(f"groups: holding out group {name!r} of {what} leaves no tracks to train on")
        if label_of:
            unseen = sorted({label_of[t] for t in held} - {label_of[t] for t in train})
            if unseen:
                examples = ", ".join(f"{u} (e.g. {next(t for t in held if label_of[t] == u)})" for u in unseen)
                log.warning("group %r of %s holds out class(es) %s that its training side lacks", name, what, examples)
        splits.append({"train": train, "val": held, "test": []})
    return splits


def make_splits(store: MelStore, cfg: DataConfig, seed: int) -> dict[str, list[str]]:
    """The train/val/test track ids for ``cfg.split`` (see the module docstring)."""
    ids, labels = track_table(store)
    if cfg.split == "stratified":
        return stratified_split(ids, labels, cfg.fractions, seed)
    if cfg.split == "kfold":
        return kfold_split(ids, labels, cfg.fractions[2] / sum(cfg.fractions), cfg.folds, cfg.fold, seed)
    return fault_filtered_split(ids)


def save_splits(splits: dict[str, list[str]], path: Path) -> None:
    """Write the split as JSON lists of track ids (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1))


def load_splits(path: Path) -> dict[str, list[str]]:
    """Read a split written by :func:`save_splits`."""
    return json.loads(Path(path).read_text())


def rows_of(store: MelStore, track_ids: list[str]) -> np.ndarray:
    """Row indices of the given tracks, in store order."""
    return np.flatnonzero(np.isin(store.track_id, np.asarray(track_ids, dtype=object)))


# -- augmentation ------------------------------------------------------------------------------

def augment_image(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment-style masks and random shifts on one ``(H, W)`` image (returns a new array)."""
    x = x.copy()
    h, w = x.shape
    if cfg.time_shift > 0:
        x = np.roll(x, int(rng.integers(-int(cfg.time_shift * w), int(cfg.time_shift * w) + 1)), axis=1)
    if cfg.freq_shift > 0:
        k = int(rng.integers(-cfg.freq_shift, cfg.freq_shift + 1))
        if k > 0:
            x = np.concatenate([np.repeat(x[:1], k, axis=0), x[:-k]])
        elif k < 0:
            x = np.concatenate([x[-k:], np.repeat(x[-1:], -k, axis=0)])
    fill = float(x.mean())
    for _ in range(cfg.time_masks):
        width = int(rng.integers(0, cfg.time_mask_width + 1))
        start = int(rng.integers(0, max(1, w - width)))
        x[:, start:start + width] = fill
    for _ in range(cfg.freq_masks):
        height = int(rng.integers(0, cfg.freq_mask_width + 1))
        start = int(rng.integers(0, max(1, h - height)))
        x[start:start + height, :] = fill
    return x


class RowDataset(Dataset):
    """Rows of a store as ``(image (1, H, W) float32 tensor, label)``, optionally augmented."""

    def __init__(self, store: MelStore, rows: np.ndarray, augment: AugmentConfig | None = None, seed: int = 0):
        self.store, self.rows, self.augment, self.seed = store, np.asarray(rows), augment, seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.store[int(self.rows[i])]
        if self.augment is not None:
            if self._rng is None:  # one stream per worker process, seeded by torch's worker seed
                self._rng = np.random.default_rng(torch.initial_seed() % 2**32)
            image = augment_image(image, self.augment, self._rng)
        return torch.from_numpy(image).unsqueeze(0), label


class MelDataModule(L.LightningDataModule):
    """Train/val/test loaders over one store and a track split.

    ``train`` takes every row of its tracks, augmented variants included (``prepare --augment``);
    ``val`` and ``test`` take the rows of the original audio only, so scores never count a variant.
    """

    def __init__(self, store_path: str | Path, splits: dict[str, list[str]], cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.store_path, self.splits, self.cfg, self.seed = Path(store_path), splits, cfg, seed
        self.store: MelStore | None = None
        self.rows: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        if self.store is None:
            self.store = MelStore(self.store_path, in_memory=self.cfg.in_memory)
            # augmented variants train; every split that is scored sees the original audio only
            original = self.store.variant == 0
            self.rows = {name: rows if name == "train" else rows[original[rows]]
                         for name, ids in self.splits.items() for rows in [rows_of(self.store, ids)]}

    def rows_for(self, split: str) -> np.ndarray:
        """Store row indices of a split (empty when the split has no tracks)."""
        self.setup()
        return self.rows.get(split, np.zeros(0, dtype=np.int64))

    @property
    def classes(self) -> list[str]:
        """Class names of the store."""
        self.setup()
        return self.store.classes

    def class_counts(self, split: str) -> np.ndarray:
        """Tracks per class in a split."""
        self.setup()
        ids, labels = track_table(self.store)
        members = np.isin(ids, np.asarray(self.splits.get(split, []), dtype=object))
        return np.bincount(labels[members], minlength=len(self.store.classes))

    def class_weights(self) -> torch.Tensor:
        """Balanced weights ``n_rows / (n_classes × rows of class)`` from the training rows."""
        self.setup()
        counts = np.bincount(self.store.y[self.rows["train"]], minlength=len(self.store.classes)).astype(float)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)

    def loader(self, split: str, train: bool = False) -> DataLoader:
        """A DataLoader over one split (shuffled and augmented when ``train``)."""
        self.setup()
        dataset = RowDataset(self.store, self.rows_for(split), self.cfg.augment if train else None, self.seed)
        # Under DDP, Lightning gives each rank ceil(N / world) rows: drop a last partial batch (no
        # batch of 1 for BatchNorm) only when a rank still has a full one.
        world = getattr(self.trainer, "world_size", 1) or 1
        per_rank = -(-len(dataset) // world)
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=train, num_workers=self.cfg.num_workers,
            drop_last=train and per_rank > self.cfg.batch_size, persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self.loader("test")
