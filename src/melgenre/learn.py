"""Your own genres: a genre model learnt from your labelled music, with an honest estimate of it.

:func:`learn` takes a folder of ``<genre>/<file>`` folders, or a music folder whose files carry
genre tags, and makes a model package of the shipped default's recipe on *your* genres:

1. **Labels.** Genres from the tags (mutagen: the first value of the genre field; the artist, or
   the album artist when it is missing) or from the folder names. Spellings are merged by
   :func:`genre_key` (case, spaces, hyphens, ``&``: "Hip-Hop", "hip hop", "HipHop" are one genre)
   and by a mapping file (:func:`read_mapping`); genres with fewer than ``min_per_genre`` tracks
   are listed and left out.
2. **Embeddings** of the frozen MSD-musicnn tagger for every 3-s patch of each file (its first
   30 s) and of its augmented variants (:func:`melgenre.store.prepare` with a cache folder: parallel,
   resumable after a kill, and a rerun embeds only new or changed files, whatever the genres).
3. **Estimate.** Cross-validation of the recipe (:func:`melgenre.cv.cross_validate`, fixed
   epochs) with whole artists held out when the files carry artist tags (or a grouping file is
   given); otherwise each track is its own group and the estimate says it is optimistic.
4. **Package.** The final retrain on every track, packaged with the estimate
   (:func:`melgenre.package.save_package`), the tagger's zero-shot prior for genres named like
   one of its tags, and calibration (:func:`melgenre.calibrate.calibrate_package` on the
   out-of-fold predictions: temperature, "unsure" and "not music" thresholds).

Everything but the package goes to a work folder (default ``<out stem>.learn/`` beside it):
``cache/`` (each file's embedding rows), ``embeddings.h5``, the grouping file, ``runs/`` and
``learn.json`` (this report, with the folds). A rerun with the same inputs reuses all of it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from melgenre.audio import AUDIO_EXTENSIONS, expand_paths
from melgenre.card import ModelCard
from melgenre.errors import ConfigError, DatasetError, MelgenreError
from melgenre.utils import atomic_path

#: The tagger and embedding of the default model's recipe.
EMBEDDING = {"model": "musicnn", "pretrained": "msd", "embedding": "pool+penultimate"}
#: The default model's audio variants (``embed --augment``).
DEFAULT_AUGMENT = ("fast", "slow", "offset", "bright", "dark")
#: The default model's training recipe (configs/musicnn-tagprior.yaml, whose tag prior is made per taxonomy here).
RECIPE: dict[str, Any] = {
    "seed": 0,
    "data": {"batch_size": 64, "num_workers": 0, "in_memory": True},
    "model": {"name": "musicnn", "pretrained": "msd", "embedding": "pool+penultimate", "dropout": 0.5,
              "freeze": True},
    "optim": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-2, "schedule": "cosine"},
    "train": {"max_epochs": 30, "patience": 100, "class_weights": True, "label_smoothing": 0.1},
}
#: Weight of the tagger's zero-shot logits (the default model's).
PRIOR_WEIGHT = 0.5
#: Tags the default model's prior gives genres besides their namesake (configs/musicnn-tagprior.yaml).
PRIOR_ALIASES = {"disco": ("dance",), "metal": ("heavy metal",)}
#: Seconds between prediction windows, as the default model predicts.
PREDICT_HOP = 6.0
MIN_PER_GENRE = 5
#: Genres with fewer tracks are flagged: their recall interval is too wide to trust.
FEW_TRACKS = 10
#: Out-of-fold tracks calibration needs: the "not music" threshold is their 98th percentile of
#: novelty, which below 50 tracks is simply the largest one.
MIN_CALIBRATION = 50
GENRES_FROM = ("auto", "tags", "folders")
_CONJUNCTION = {"and", "n"}  # "Drum & Bass", "Drum and Bass", "Drum 'n' Bass", "R&B" -> one genre


def genre_key(name: str) -> str:
    """The spelling-free key of a genre name: letter case, spaces, hyphens, underscores, dots,
    slashes, apostrophes and ``&``/"and"/"n" between words do not count
    (``"Hip-Hop"``, ``"hip hop"``, ``"HipHop"`` -> ``"hiphop"``; ``"R&B"`` -> ``"rnb"``)."""
    words = re.split(r"[\s\-_./]+", re.sub(r"['\u2019]", "", name.casefold()).replace("&", " and "))
    return "".join("n" if w in _CONJUNCTION else w for w in words)


def model_genre(name: str, classes: Sequence[str]) -> str | None:
    """The genre of ``classes`` (a model's) that ``name`` (a class folder, a tag) spells: ``name`` itself,
    else the one genre of the same :func:`genre_key` (``"rock"``, ``"ROCK"`` -> ``"Rock"``; ``"hip hop"`` ->
    ``"Hip-Hop"``); None when no genre, or more than one, is spelt so."""
    if name in classes:
        return name
    same = [c for c in classes if genre_key(c) == genre_key(name)]
    return same[0] if len(same) == 1 else None


def artist_key(name: str) -> str:
    """Whom an artist tag names, for grouping: letter case, spacing and a featured artist do not count."""
    return re.split(r"\s+(?:feat\.?|ft\.?|featuring)\s+", " ".join(name.casefold().split()))[0]


def read_mapping(path: str | Path) -> dict[str, str]:
    """A genre mapping ``{genre_key(from): to}`` from a CSV/TSV file of ``from,to`` rows (a header row
    ``from,to`` is skipped) or a YAML mapping ``{from: to}``. An empty ``to`` leaves that genre out.

    Raises
    ------
    ConfigError
        The file is unreadable, a row has not two columns, or one genre maps to two names.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"map: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"map: {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"map: {path}: expected a mapping of from: to")
        rows = [(None, str(k), "" if v is None else str(v)) for k, v in data.items()]
    else:
        reader = csv.reader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows = []
        for line, row in enumerate(reader, start=1):
            if not row or (line == 1 and [c.strip().lower() for c in row] == ["from", "to"]):
                continue
            if len(row) != 2 or not row[0].strip():
                raise ConfigError(f"map: {path}, line {line}: expected two columns from,to")
            rows.append((line, row[0], row[1]))
    mapping: dict[str, str] = {}
    for line, source, target in rows:
        key, target = genre_key(source), target.strip()
        if mapping.get(key, target) != target:
            raise ConfigError(f"map: {path}{f', line {line}' if line else ''}: {source.strip()!r} maps to both "
                              f"{mapping[key]!r} and {target!r}")
        mapping[key] = target
    return mapping


@dataclass
class Labelled:
    """One audio file with its raw genre spelling (None: untagged) and artist ("" unknown)."""

    path: Path
    genre: str | None
    artist: str = ""


@dataclass
class Found:
    """What :func:`scan` found under a source folder."""

    root: Path  # the folder track ids are relative to
    genres_from: str  # "tags" or "folders"
    files: list[Labelled]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): mutagen failed
    several: int = 0  # files whose genre field held several genres (the first one is used)


def scan(source: str | Path, genres_from: str = "auto", progress: bool = False) -> Found:
    """Read the genre and artist of every audio file under ``source``.

    ``genres_from``: ``"tags"`` (every audio file below, the first value of its genre tag),
    ``"folders"`` (``<genre>/<file>`` folders or GTZAN's layouts, :func:`melgenre.datasets.discover`;
    tags give only the artists) or ``"auto"``: tags when at least one file has a genre tag, else folders.
    """
    from rich.progress import track

    from melgenre.tagging import genres_and_artist

    source = Path(source)
    if genres_from not in GENRES_FROM:
        raise ConfigError(f"genres from {genres_from!r}: use one of {', '.join(GENRES_FROM)}")
    if not source.is_dir():
        raise DatasetError(f"{source}: {'not a folder' if source.exists() else 'no such folder'}")
    paths = expand_paths([source])
    if not paths:
        raise DatasetError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    tags: dict[Path, tuple[list[str], str]] = {}
    unreadable = []
    for path in track(paths, description="read tags", disable=not progress, transient=True):
        try:
            tags[path] = genres_and_artist(path)
        except (MelgenreError, OSError) as exc:
            unreadable.append((str(path.relative_to(source)), str(exc).split(": ", 1)[-1]))
    tagged = any(genres for genres, _ in tags.values())
    if genres_from == "folders" or (genres_from == "auto" and not tagged):
        from melgenre.datasets import discover

        try:
            corpus = discover(source)
        except DatasetError:
            if genres_from == "folders":
                raise
            raise DatasetError(f"{source}: no file has a genre tag and there are no <genre>/<file> folders: "
                               "tag some files (or sort them into genre folders) first") from None
        files = [Labelled(t.path, corpus.classes[t.label], tags.get(t.path, ([], ""))[1]) for t in corpus.tracks]
        return Found(corpus.root, "folders", files)
    files = [Labelled(p, genres[0] if genres else None, artist) for p, (genres, artist) in tags.items()]
    several = sum(len(genres) > 1 for genres, _ in tags.values())
    return Found(source, "tags", files, unreadable, several)


@dataclass
class Taxonomy:
    """The genres :func:`taxonomy` made of the files' spellings."""

    classes: list[str]
    counts: dict[str, int]  # tracks per kept genre
    too_small: dict[str, int]  # genres left out, with their track counts
    merged: dict[str, list[str]]  # genre -> the spellings merged into it (when more than one)
    mapped_out: int  # files whose genre the mapping leaves out
    label_of: dict[Path, str]  # every kept file -> its genre


def taxonomy(files: Sequence[Labelled], mapping: dict[str, str] | None = None,
             min_per_genre: int = MIN_PER_GENRE) -> Taxonomy:
    """Merge the spellings of the files' genres into genres and keep those with ``min_per_genre`` tracks.

    A genre's name is the mapping's ``to`` when the mapping names it, else its most common spelling.

    Raises
    ------
    DatasetError
        Fewer than two genres keep enough tracks.
    """
    mapping = mapping or {}
    spellings: dict[str, Counter] = {}
    named: dict[str, str] = {}
    members: dict[str, list[Path]] = {}
    mapped_out = 0
    for f in files:
        if f.genre is None:
            continue
        name = mapping.get(genre_key(f.genre), f.genre)
        if not name:
            mapped_out += 1
            continue
        key = genre_key(name)
        if genre_key(f.genre) in mapping:
            named[key] = name
        spellings.setdefault(key, Counter())[f.genre] += 1
        members.setdefault(key, []).append(f.path)
    names = {k: named.get(k) or min(c, key=lambda s: (-c[s], s)) for k, c in spellings.items()}
    counts = {names[k]: len(v) for k, v in members.items()}
    kept = sorted((n for n, c in counts.items() if c >= min_per_genre), key=str.casefold)
    too_small = {n: c for n, c in sorted(counts.items(), key=lambda x: x[0].casefold()) if c < min_per_genre}
    if len(kept) < 2:
        if not counts:
            raise DatasetError("no file has a genre (untagged, or every genre mapped out)")
        have = ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda x: -x[1])[:8])
        raise DatasetError(f"{len(kept) or 'no'} genre{'' if len(kept) == 1 else 's'} with at least {min_per_genre} "
                           f"tracks ({have}): need two or more; lower --min-per-genre or merge spellings with --map")
    merged = {names[k]: sorted(c) for k, c in spellings.items() if len(c) > 1 and names[k] in kept}
    label_of = {p: names[k] for k, ps in members.items() if names[k] in kept for p in ps}
    return Taxonomy(kept, {n: counts[n] for n in kept}, too_small, merged, mapped_out, label_of)


def prior_genres(classes: Sequence[str]) -> dict[str, list[str]]:
    """The zero-shot prior's mapping: each genre's musicnn MSD tag of the same name (by :func:`genre_key`),
    plus the default model's two extra choices (:data:`PRIOR_ALIASES`); genres without one are left out."""
    from melgenre.models.musicnn import MSD_TAGS

    tags = {c: [t for t in MSD_TAGS if genre_key(t) == genre_key(c)] + list(PRIOR_ALIASES.get(genre_key(c), ()))
            for c in classes}
    return {c: t for c, t in tags.items() if t}


def _track_id(path: Path, root: Path) -> str:
    """``<folders below root joined by '|'>/<file stem>``: two parts at most, so a grouping file
    names it whole (:func:`melgenre.data.read_grouping`), and the file stem last (``melgenre score``)."""
    parts = path.relative_to(root).with_suffix("").parts
    return "/".join(p for p in ("|".join(parts[:-1]), parts[-1]) if p)


@dataclass
class LearnReport:
    """What :func:`learn` did (also written to ``<work>/learn.json``)."""

    package: Path
    work: Path
    genres_from: str
    classes: list[str]
    counts: dict[str, int]
    too_small: dict[str, int]
    few_tracks: list[str]  # kept genres with fewer than FEW_TRACKS tracks: figures not to trust
    merged: dict[str, list[str]]
    untagged: int
    unreadable: list[tuple[str, str]]
    undecodable: list[dict[str, str]]
    several_genres: int
    mapped_out: int
    protocol: str
    artist_disjoint: bool
    folds: list[dict[str, list[str]]]  # per fold, the track ids it trained on and scored (its splits.json)
    groups: dict[str, str]  # track id -> group (artist) of the grouping the folds used
    untrained: list[str]  # genres some fold scored without having trained on them (one artist only)
    pooled: dict[str, Any]  # the cross-validation's pooled out-of-fold figures
    tag_prior: dict[str, list[str]]
    augment: list[str]
    calibration: dict[str, Any] | None  # temperature and thresholds; None: not calibrated
    not_calibrated: str | None  # why not
    embedded: int  # files embedded by this run (the others came from the cache)
    seconds: dict[str, float]


def _embed(found: Found, tax: Taxonomy, mapping: str | Path | None, min_per_genre: int, data: Path,
           augment: Sequence[str], workers: int | None, progress: bool
           ) -> tuple[Taxonomy, dict[str, Path], list[dict[str, str]], int]:
    """Embed the kept files into ``data`` (rows cached in ``cache/`` beside it). When undecodable files
    change which genres keep enough tracks, the genres are made again without them and the file
    assembled again (from the cache). Returns the genres, ``{track id: path}``, the undecodable
    files and how many files were embedded now."""
    from melgenre import store
    from melgenre.datasets import Corpus, Track

    undecodable: list[dict[str, str]] = []
    embedded = 0
    while True:
        ids: dict[str, Path] = {}
        for path in sorted(tax.label_of):  # a file of the same name in another format is a duplicate: left out
            ids.setdefault(_track_id(path, found.root), path)
        tracks = [Track(p, tax.classes.index(tax.label_of[p]), t) for t, p in ids.items()]
        report = store.prepare(Corpus(found.root, tax.classes, tracks, found.genres_from), "musicnn", data,
                               workers=workers, overwrite=True, progress=progress, embed=EMBEDDING,
                               augment=tuple(augment), cache=data.parent / "cache")
        embedded += report.computed
        undecodable += report.skipped
        if not report.skipped:
            return tax, ids, undecodable, embedded
        bad = {found.root / s["path"] for s in report.skipped}
        before = tax.classes
        tax = taxonomy([f for f in found.files if f.path not in bad], read_mapping(mapping) if mapping else None,
                       min_per_genre)
        if tax.classes == before:
            return tax, ids, undecodable, embedded


def _grouping(ids: list[str], artists: dict[str, str], groups: str | Path | None, work: Path,
              min_share: float = 0.5) -> tuple[str, dict[str, str], str | None]:
    """The grouping file the folds use (written to ``work`` unless ``groups`` names one), its
    ``{track: group}``, and why the folds are not artist-disjoint (None when they are): fewer than
    two artists, or artist tags on fewer than ``min_share`` of the tracks."""
    from melgenre.data import GROUPINGS, group_of, grouping

    if groups is not None:
        named = str(groups) if str(groups) in GROUPINGS else str(Path(groups).resolve())
        of = group_of(ids, named)
        return named, {t: g for t, g in zip(ids, of) if g is not None}, None
    keys = {t: artist_key(a) for t, a in artists.items() if a}
    spelled = {}
    for t, a in artists.items():
        if a:
            spelled.setdefault(keys[t], a)
    n = len(set(keys.values()))
    why = ("no artist tags" if n == 0 else "one artist" if n == 1 else
           f"artist tags on only {len(keys)} of {len(ids)} tracks" if len(keys) < min_share * len(ids) else None)
    rows = {t: spelled[keys[t]] for t in ids if t in keys} if why is None else {t: t for t in ids}
    path = work / ("artists.csv" if why is None else "tracks.csv")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["track", "artist" if why is None else "group"])
        writer.writerows(rows.items())
    return str(path), grouping(str(path)), why


def _package(run: Path, out: Path, estimate: dict[str, Any], section: dict[str, Any], cv_json: Path | None,
             data: Path) -> dict[str, float] | None:
    """Write the package of the final run with the estimate and ``section`` as the card's ``learn``, and
    calibrate it on ``cv_json``'s out-of-fold predictions; a package a run with the same inputs
    wrote is kept as it is. Returns the calibration's temperature and thresholds (None: uncalibrated)."""
    from melgenre.package import package_card, save_package

    try:
        card = package_card(out) if out.with_suffix(".safetensors").is_file() else None
    except MelgenreError:
        card = None
    if card is None or card.get("learn") != section or (cv_json is not None and "trust" not in card):
        save_package(run, out, hop=PREDICT_HOP)
        card = json.loads(out.read_text())
        card["metrics"] = {**card.get("metrics", {}), "estimates": [estimate]}
        card["training"] = {**card["training"], "config": "melgenre learn"}
        card["learn"] = section
        ModelCard.from_dict(card, out).write(out)
        if cv_json is not None:
            from melgenre.calibrate import calibrate_package

            card = {**card, **calibrate_package(out, cv_json, data=data)}
    if cv_json is None:
        return None
    return {"temperature": card["calibration"]["temperature"], "unsure_below": card["trust"]["unsure_below"],
            "not_music_above": card["trust"]["not_music_above"]}


def learn(source: str | Path, out: str | Path, *, genres_from: str = "auto", mapping: str | Path | None = None,
          min_per_genre: int = MIN_PER_GENRE, groups: str | Path | None = None, folds: int = 5,
          augment: Sequence[str] = DEFAULT_AUGMENT, tag_prior: bool | None = None, epochs: int | None = None,
          calibrate: bool = True, work: str | Path | None = None, workers: int | None = None,
          progress: bool = True) -> LearnReport:
    """Learn a genre model of your own genres from labelled music (see the module docstring).

    Parameters
    ----------
    source : path
        ``<genre>/<file>`` folders, or a music folder whose files carry genre tags.
    out : path
        The package to write: ``<out>.json`` (card), ``.safetensors`` and ``.trust.npz``.
    genres_from : {"auto", "tags", "folders"}
        Where the genres come from (:func:`scan`). Default: tags when any file has one, else folders.
    mapping : path, optional
        A ``from,to`` CSV/TSV or YAML file merging or renaming genres (:func:`read_mapping`).
    min_per_genre : int
        Genres with fewer tracks are left out (and listed).
    groups : path or "fault_filtered", optional
        A grouping file of ``track,artist`` rows (as ``melgenre cv --groups``) instead of the artist tags.
    folds : int
        Cross-validation folds (fewer when there are fewer artists).
    augment : sequence of str
        Audio variants added to the training rows (default: the default model's five; ``()`` for
        none: 3-5 times faster to embed).
    tag_prior : bool, optional
        Add the tagger's zero-shot logits for genres named like one of its tags (:func:`prior_genres`).
        Default: when at least one genre is.
    epochs : int, optional
        Training epochs of every fold and of the final model. Default: the recipe's 30.
    calibrate : bool
        Fit the temperature and the "unsure" / "not music" thresholds on the out-of-fold predictions
        (:func:`melgenre.calibrate.calibrate_package`), when there are :data:`MIN_CALIBRATION` of them.
    work : path, optional
        The work folder (default ``<out stem>.learn`` beside the package).
    workers : int, optional
        Embedding worker processes (default: one per core).
    progress : bool
        Show progress bars.

    Raises
    ------
    MelgenreError
        One line: no audio, no genre tags, fewer than two genres with enough tracks, a bad mapping
        or grouping file, too few groups for two folds, ...
    """
    from melgenre.config import config_from_dict
    from melgenre.package import estimate_from_cv
    from melgenre.store import MelStore
    from melgenre.cv import cross_validate

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(out).with_suffix(".json")
    work = Path(work) if work is not None else out.with_name(out.stem + ".learn")
    found = scan(source, genres_from, progress)
    tax = taxonomy(found.files, read_mapping(mapping) if mapping else None, min_per_genre)
    prior = prior_genres(tax.classes)
    if tag_prior and not prior:
        raise ConfigError(f"tag prior: no genre of {', '.join(tax.classes)} is named like a musicnn tag")
    prior = prior if tag_prior is not False else {}
    seconds["scan"] = time.perf_counter() - t0

    work.mkdir(parents=True, exist_ok=True)
    data = work / "embeddings.h5"
    tax, ids, undecodable, embedded = _embed(found, tax, mapping, min_per_genre, data, augment, workers, progress)
    prior = {c: t for c, t in prior.items() if c in tax.classes}
    seconds["embed"] = time.perf_counter() - t0 - seconds["scan"]

    t1 = time.perf_counter()
    with MelStore(data) as s:
        track_ids = s.tracks()["id"].tolist()
        input_hash = str(s.attrs["input_hash"])
    artist_of = {f.path: f.artist for f in found.files}
    grouping, group_of, why = _grouping(track_ids, {t: artist_of[ids[t]] for t in track_ids}, groups, work)
    n_groups = len(set(group_of.values()))
    n_folds = min(folds, n_groups)
    if n_folds < 2:
        raise DatasetError(f"{grouping}: {n_groups} group(s) among the tracks; need two for cross-validation")
    recipe = json.loads(json.dumps(RECIPE))
    if prior:
        recipe["model"]["tag_prior"] = {"weight": PRIOR_WEIGHT, "genres": prior}
    recipe["train"]["max_epochs"] = epochs or recipe["train"]["max_epochs"]
    identity = json.dumps([input_hash, recipe, sorted(group_of.items()), n_folds], sort_keys=True)
    recipe["name"] = name = f"learn-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    runs = work / "runs"
    for stale in runs.glob("learn-*"):  # runs of other inputs: a changed mapping, new files, ...
        if stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)
    result = cross_validate(config_from_dict(recipe, source="melgenre learn"), n_folds, runs, data=data,
                            progress=progress, fixed_epochs=True, groups=grouping)
    base = runs / name
    cv_json = base / "cv-groups-last.json"
    if why is not None:
        protocol = f"same artists on both sides (optimistic): {why}"
    elif groups is None:
        protocol = f"artist-disjoint (artist tags: {n_groups} artists in {n_folds} folds)"
    else:
        protocol = result["protocol"]
    seconds["train"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    estimate = {**estimate_from_cv(cv_json), "protocol": protocol}
    if why is None and "group_intervals" in result["pooled"]:
        estimate["group_intervals"] = result["pooled"]["group_intervals"]
    untrained = sorted({c for fold in result["untrained_classes"] for c in fold}, key=str.casefold)
    few = [c for c in tax.classes if tax.counts[c] < FEW_TRACKS]
    section = {"run": name, "source": str(Path(source).resolve()), "genres_from": found.genres_from,
               "min_per_genre": min_per_genre, "too_small": tax.too_small, "few_tracks": few,
               "few_tracks_rule": f"fewer than {FEW_TRACKS} tracks: the figures of these genres are not to trust",
               "untrained_in_a_fold": untrained, "merged_spellings": tax.merged, "tracks_per_genre": tax.counts,
               "tag_prior": prior, "augment": list(augment)}
    not_calibrated = ("--no-calibrate" if not calibrate else None if result["pooled"]["n"] >= MIN_CALIBRATION else
                      f"only {result['pooled']['n']} out-of-fold tracks; calibration needs {MIN_CALIBRATION}")
    section["calibrated"] = not_calibrated is None
    calibration = _package(base / "final-groups-last", out, estimate, section, None if not_calibrated else cv_json,
                           data)
    seconds["package"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0

    splits = [json.loads((base / f"group{i}-last" / "splits.json").read_text()) for i in range(n_folds)]
    learnt = LearnReport(
        package=out, work=work, genres_from=found.genres_from, classes=tax.classes, counts=tax.counts,
        too_small=tax.too_small, few_tracks=few, merged=tax.merged,
        untagged=sum(f.genre is None for f in found.files), unreadable=found.unreadable, undecodable=undecodable,
        several_genres=found.several, mapped_out=tax.mapped_out, protocol=protocol, artist_disjoint=why is None,
        folds=[{"train": s["train"], "scored": s["val"]} for s in splits], groups=group_of, untrained=untrained,
        pooled=result["pooled"], tag_prior=prior, augment=list(augment), calibration=calibration,
        not_calibrated=not_calibrated,
        embedded=embedded, seconds={k: round(v, 1) for k, v in seconds.items()})
    with atomic_path(work / "learn.json") as tmp:
        tmp.write_text(json.dumps(asdict(learnt), indent=1, default=str) + "\n")
    return learnt
