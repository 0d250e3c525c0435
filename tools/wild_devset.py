"""Rebuild melgenre's non-GTZAN development set ("wild dev") from bare git mirrors of public repositories.

Three corpora of real, labelled music, none of it GTZAN (issue 32):

* ``emotify``: the Emotify set's one-minute Magnatune excerpts (Aljanaki et al. 2015) in
  ``sergi-andreu/ProjectMusicInformatics``: ``data/emotifymusic/<genre>/<n>.mp3``, 44.1 kHz MP3.
  Label = the folder: ``classical``, ``pop``, ``rock`` are GTZAN genres; ``electronic`` is out of the
  taxonomy (``other:electronic``). Artist = the file's ID3 artist (TPE1).
* ``allmusic``: the 900 30-s AllMusic previews of Panda et al.'s TAFFC emotion set in
  ``Famelgas/MULT_TP2`` (``MER_audio_taffc_dataset/Q*/<song>.mp3``, 32 kHz MP3, also copied under
  ``Musics/``, ``Dataset/Q*/`` and ``MER_audio_taffc_dataset/music/``); labels and artists from
  ``MER_audio_taffc_dataset/panda_dataset_taffc_metadata.csv`` (``GenresStr``, ``Artist``). See
  :func:`map_allmusic` for the rule on AllMusic's multi-genre labels.
* ``fma``: FMA-small clips (Defferrard et al. 2017) in ``Nam-TranDang/Data_Mining``
  (``fma_small/000/*.mp3``); label = the file's ID3 genre (TCON, FMA's top-level genre of the track),
  artist = TPE1; see :data:`FMA_MAP`.

Every clip listed in ``RESERVED.txt`` (``repo<TAB>path<TAB>md5``: kept for independent measurement)
is left out, by path **and** by md5 of the bytes: a clip (all the paths and blobs of one clip id, in
every commit of the mirror) is excluded when any of its paths is a reserved path of that repository
or any of its blobs has a reserved md5. The script asserts that no reserved md5 is in its output.

Output (outside the repository; default ``$MELGENRE_WILD_DATA`` or ``/work/data/wild-dev``)::

    <out>/<corpus>/<genre>/<clip>.mp3          the ten GTZAN genres: `melgenre score <out>/<corpus>` reads them
    <out>/_other/<corpus>/<name>/<clip>.mp3    out-of-taxonomy music (electronic, folk, Latin, R&B, ...)
    <out>/manifest.csv                         corpus, clip, genre (a GTZAN genre or other:<name>), source
                                               repo, path, md5, artist, label (the corpus's own label), file

Clips whose label is ambiguous (see :func:`map_allmusic`) are counted but not written. Idempotent:
files already present with the right md5 are not rewritten; the manifest is replaced atomically.

Usage::

    python tools/wild_devset.py [--out DIR] [--mirrors /work/.mirror] [--reserved ../shared/data/wild/RESERVED.txt]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
AUDIO = re.compile(r"\.(mp3|wav|flac|ogg|au|m4a)$", re.I)

# ---------------------------------------------------------------------------------------------- labels

#: AllMusic top-level genres that are GTZAN genres (``Pop/Rock`` is both pop and rock: ambiguous).
ALLMUSIC_MAP = {"Blues": "blues", "Classical": "classical", "Country": "country", "Jazz": "jazz",
                "Rap": "hiphop", "Reggae": "reggae"}
#: AllMusic labels that qualify a genre (where or when it is heard, who sings) rather than name a
#: sound of their own: ignored beside a genre; alone, they are the (out-of-taxonomy) genre.
ALLMUSIC_QUALIFIERS = ("International", "Vocal", "Holiday", "Children's", "Stage & Screen",
                       "Easy Listening", "Religious")

#: FMA genres (ID3 TCON of the FMA-small files) -> GTZAN genres; every other genre is ``other:<name>``.
FMA_MAP = {"Blues": "blues", "Classical": "classical", "Country": "country", "Disco": "disco",
           "Hip-Hop": "hiphop", "Jazz": "jazz", "Metal": "metal", "Pop": "pop", "Reggae - Dub": "reggae",
           "Rock": "rock", "Punk": "rock", "Krautrock": "rock"}

#: Emotify folders -> GTZAN genres (``electronic`` is out of the taxonomy).
EMOTIFY_MAP = {"classical": "classical", "pop": "pop", "rock": "rock"}


def other(name: str) -> str:
    """``other:<name>`` for a genre outside the ten, the name lower-cased."""
    return f"other:{name.strip().lower()}"


def map_allmusic(genres_str: str) -> str | None:
    """One clip's genre from AllMusic's ``GenresStr`` (``"Jazz; Vocal"``), or None when ambiguous.

    The rule, in order:

    1. the labels are split on ``;``; qualifiers (:data:`ALLMUSIC_QUALIFIERS`) are set aside;
    2. ``Pop/Rock`` among the rest: ambiguous (pop or rock, or a crossover) -> None;
    3. exactly one GTZAN genre (:data:`ALLMUSIC_MAP`) and no other genre: that genre
       (``Jazz; Vocal`` -> jazz, ``International; Reggae`` -> reggae);
    4. no GTZAN genre: ``other:<the first non-qualifier label>`` (``New Age; Electronic`` ->
       other:new age), or ``other:<the first qualifier>`` when there are only qualifiers
       (``Vocal`` -> other:vocal);
    5. otherwise (two GTZAN genres, or a GTZAN genre with an outside genre: ``Blues; R&B``,
       ``Electronic; Rap``, ``Jazz; Latin``): ambiguous -> None.
    """
    labels = [g.strip() for g in genres_str.split(";") if g.strip()]
    if not labels:
        return None
    core = [g for g in labels if g not in ALLMUSIC_QUALIFIERS]
    if "Pop/Rock" in core:
        return None
    ours = {ALLMUSIC_MAP[g] for g in core if g in ALLMUSIC_MAP}
    outside = [g for g in core if g not in ALLMUSIC_MAP]
    if len(ours) == 1 and not outside:
        return ours.pop()
    if not ours:
        return other(outside[0] if outside else labels[0])
    return None


def map_fma(tcon: str | None) -> str | None:
    """An FMA clip's genre from its ID3 genre, or None without one."""
    if not tcon:
        return None
    return FMA_MAP.get(tcon, other(tcon))


def map_emotify(folder: str) -> str:
    return EMOTIFY_MAP.get(folder, other(folder))


# ---------------------------------------------------------------------------------------------- git


def git(mirror: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True, capture_output=True, text=True).stdout


class Blobs:
    """Read blobs of one mirror through a single ``git cat-file --batch``."""

    def __init__(self, mirror: Path):
        self.proc = subprocess.Popen(["git", "-C", str(mirror), "cat-file", "--batch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def read(self, obj: str) -> bytes:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(obj.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) < 3 or header[1] != b"blob":
            raise KeyError(f"{obj}: {header!r}")
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def audio_paths(mirror: Path, pattern: re.Pattern[str]) -> dict[str, set[str]]:
    """Every ``path -> {blob, ...}`` of audio files matching ``pattern`` in any commit of the mirror."""
    out: dict[str, set[str]] = defaultdict(set)
    for commit in git(mirror, "rev-list", "--all").split():
        for line in git(mirror, "ls-tree", "-r", commit).splitlines():
            meta, path = line.split("\t", 1)
            _, kind, blob = meta.split()
            if kind == "blob" and AUDIO.search(path) and pattern.search(path):
                out[path].add(blob)
    return out


def show(mirror: Path, path: str) -> bytes:
    """A file's bytes at the newest commit that has it."""
    for commit in git(mirror, "rev-list", "--all").split():
        try:
            return subprocess.run(["git", "-C", str(mirror), "show", f"{commit}:{path}"], check=True,
                                  capture_output=True).stdout
        except subprocess.CalledProcessError:
            continue
    raise FileNotFoundError(f"{path} in no commit of {mirror}")


def id3(data: bytes) -> dict[str, str]:
    """``{"artist", "genre"}`` from an MP3's ID3 tags ("" where absent or unreadable)."""
    try:
        import mutagen

        tags = mutagen.File(io.BytesIO(data)).tags or {}
    except Exception:  # not audio mutagen reads (a test's fake bytes), no tags
        tags = {}

    def first(key: str) -> str:
        v = tags.get(key)
        return str(v.text[0]) if v is not None and getattr(v, "text", None) else ""

    return {"artist": first("TPE1"), "genre": first("TCON")}


# ---------------------------------------------------------------------------------------------- corpora


@dataclass
class Clip:
    corpus: str
    clip: str  # the clip's id within its corpus
    repo: str
    paths: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    genre: str | None = None
    label: str = ""
    artist: str = ""
    md5: str = ""
    path: str = ""  # the canonical path (the one written)
    data: bytes = b""


@dataclass
class Corpus:
    name: str
    repo: str  # owner/name
    pattern: str  # paths of its audio
    clip_id: Callable[[str], str]  # path -> clip id
    canonical: Callable[[str], int]  # path -> sort key (lowest = the path to name it by)
    label: Callable[[Path, Clip], None]  # fills genre, label, artist


def _emotify_label(mirror: Path, clip: Clip) -> None:
    folder = clip.path.split("/")[-2]
    clip.label, clip.genre = folder, map_emotify(folder)
    clip.artist = id3(clip.data)["artist"]


_ALLMUSIC_META: dict[Path, dict[str, dict[str, str]]] = {}


def _allmusic_label(mirror: Path, clip: Clip) -> None:
    if mirror not in _ALLMUSIC_META:
        text = show(mirror, "MER_audio_taffc_dataset/panda_dataset_taffc_metadata.csv").decode("latin-1")
        _ALLMUSIC_META[mirror] = {r["Song"]: r for r in csv.DictReader(io.StringIO(text))}
    row = _ALLMUSIC_META[mirror].get(clip.clip)
    if row is None:
        clip.label, clip.genre = "", None
        return
    clip.label, clip.artist = row["GenresStr"], row["Artist"]
    clip.genre = map_allmusic(row["GenresStr"])


def _fma_label(mirror: Path, clip: Clip) -> None:
    tags = id3(clip.data)
    clip.label, clip.artist, clip.genre = tags["genre"], tags["artist"], map_fma(tags["genre"])


def _stem(path: str) -> str:
    return Path(path).stem


CORPORA = (
    Corpus("emotify", "sergi-andreu/ProjectMusicInformatics", r"^data/emotifymusic/[^/]+/[^/]+$",
           lambda p: "/".join(p.split("/")[-2:])[:-4], lambda p: 0, _emotify_label),
    Corpus("allmusic", "Famelgas/MULT_TP2", r"^(MER_audio_taffc_dataset|Dataset)/(Q[1-4]|music)/[^/]+$|^Musics/[^/]+$",
           _stem, lambda p: 0 if re.match(r"^MER_audio_taffc_dataset/Q[1-4]/", p) else 1, _allmusic_label),
    Corpus("fma", "Nam-TranDang/Data_Mining", r"^fma_small/\d{3}/[^/]+$", _stem, lambda p: 0, _fma_label),
)


def read_reserved(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    """``({repo: {path, ...}}, {md5, ...})`` of a RESERVED.txt (``repo<TAB>path<TAB>md5``, ``#`` comments)."""
    paths: dict[str, set[str]] = defaultdict(set)
    md5s: set[str] = set()
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        repo, p, md5 = line.split("\t")
        paths[repo].add(p)
        md5s.add(md5.strip().lower())
    return paths, md5s


def mirror_dir(mirrors: Path, repo: str) -> Path:
    """``<mirrors>/<owner>+<name>/repo`` (as ``fetch`` lays them out), or ``<mirrors>/<owner>+<name>``."""
    base = mirrors / repo.replace("/", "+")
    return base / "repo" if (base / "repo").exists() else base


def collect(corpus: Corpus, mirror: Path, reserved_paths: set[str], reserved_md5: set[str],
            stats: Counter) -> list[Clip]:
    """The corpus's clips, reserved ones removed (``stats`` counts the exclusions)."""
    pattern = re.compile(corpus.pattern)
    clips: dict[str, Clip] = {}
    for path, blobs in audio_paths(mirror, pattern).items():
        cid = corpus.clip_id(path)
        clip = clips.setdefault(cid, Clip(corpus.name, cid, corpus.repo))
        clip.paths.add(path)
        clip.blobs |= blobs
    reader = Blobs(mirror)
    out = []
    try:
        for cid in sorted(clips):
            clip = clips[cid]
            md5s = {}
            for blob in sorted(clip.blobs):
                md5s[blob] = hashlib.md5(reader.read(blob)).hexdigest()
            by_path = bool(clip.paths & reserved_paths)
            by_md5 = bool(set(md5s.values()) & reserved_md5)
            if by_md5:  # the same bytes under paths RESERVED.txt does not list (copies in other folders)
                stats[f"{corpus.name}: reserved md5, paths not listed (copies), excluded"] += sum(
                    1 for p in clip.paths if p not in reserved_paths)
            if by_path or by_md5:
                stats[f"{corpus.name}: reserved, excluded"] += 1
                stats[f"{corpus.name}: reserved by path"] += by_path
                stats[f"{corpus.name}: reserved by md5"] += by_md5
                stats[f"{corpus.name}: reserved by md5 only (path not listed)"] += by_md5 and not by_path
                continue
            clip.path = min(clip.paths, key=lambda p: (corpus.canonical(p), p))
            # the canonical path's blob at the newest commit (several blobs: re-encodings of one clip)
            blob = git(mirror, "rev-parse", f"{_newest_with(mirror, clip.path)}:{clip.path}").strip()
            clip.data = reader.read(blob)
            clip.md5 = md5s[blob]
            if len(clip.blobs) > 1:
                stats[f"{corpus.name}: clips with several versions (newest kept)"] += 1
            corpus.label(mirror, clip)
            out.append(clip)
    finally:
        reader.close()
    return out


def _newest_with(mirror: Path, path: str) -> str:
    return git(mirror, "rev-list", "--all", "-n", "1", "--", path).strip()


def folder_of(genre: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", genre.split(":", 1)[1]).strip("-") if genre.startswith("other:") else genre


def build(out: Path, mirrors: Path, reserved: Path, corpora: Iterable[Corpus] = CORPORA,
          quiet: bool = False) -> dict[str, object]:
    """Write the set and its manifest; returns ``{"rows", "stats", "counts"}``."""
    reserved_paths, reserved_md5 = read_reserved(reserved)
    stats: Counter = Counter()
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for corpus in corpora:
        mirror = mirror_dir(mirrors, corpus.repo)
        if not mirror.exists():
            print(f"{corpus.name}: no mirror at {mirror}, skipped", file=sys.stderr)
            continue
        for clip in collect(corpus, mirror, reserved_paths.get(corpus.repo, set()), reserved_md5, stats):
            if clip.genre is None:
                stats[f"{corpus.name}: ambiguous or unlabelled, not written"] += 1
                continue
            assert clip.md5 not in reserved_md5, f"reserved md5 {clip.md5} about to be written ({clip.path})"
            name = clip.clip.replace("/", "-") + Path(clip.path).suffix.lower()
            sub = (Path(corpus.name) / clip.genre if clip.genre in GENRES
                   else Path("_other") / corpus.name / folder_of(clip.genre))
            dest = out / sub / name
            if not (dest.exists() and hashlib.md5(dest.read_bytes()).hexdigest() == clip.md5):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(dest.suffix + ".tmp")
                tmp.write_bytes(clip.data)
                os.replace(tmp, dest)
                stats["files written"] += 1
            rows.append({"corpus": corpus.name, "clip": clip.clip, "genre": clip.genre, "repo": clip.repo,
                         "path": clip.path, "md5": clip.md5, "artist": clip.artist, "label": clip.label,
                         "file": (sub / name).as_posix()})
    # nothing reserved, nothing stale: every file below out/ is a manifest row
    listed = {r["file"] for r in rows}
    for f in out.rglob("*"):
        if f.is_file() and AUDIO.search(f.name) and f.relative_to(out).as_posix() not in listed:
            f.unlink()
            stats["stale files removed"] += 1
    written = {hashlib.md5((out / r["file"]).read_bytes()).hexdigest() for r in rows}
    assert not written & reserved_md5, "a reserved clip is in the output"
    assert written == {r["md5"] for r in rows}
    tmp = out / "manifest.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["corpus", "clip", "genre", "repo", "path", "md5", "artist", "label", "file"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "manifest.csv")
    counts = Counter((r["corpus"], r["genre"]) for r in rows)
    if not quiet:
        print_counts(rows, stats)
    return {"rows": rows, "stats": stats, "counts": counts}


def print_counts(rows: list[dict[str, str]], stats: Counter) -> None:
    corpora = sorted({r["corpus"] for r in rows})
    counts = Counter((r["corpus"], r["genre"]) for r in rows)
    print("genre".ljust(24) + "".join(c.rjust(10) for c in corpora))
    for g in list(GENRES) + sorted({r["genre"] for r in rows if r["genre"] not in GENRES}):
        if any(counts[c, g] for c in corpora):
            print(g.ljust(24) + "".join(str(counts[c, g]).rjust(10) for c in corpora))
    for c in corpora:
        inside = sum(v for (cc, g), v in counts.items() if cc == c and g in GENRES)
        print(f"{c}: {inside} in the ten genres, {sum(v for (cc, g), v in counts.items() if cc == c) - inside} outside")
    for k in sorted(stats):
        print(f"{k}: {stats[k]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("MELGENRE_WILD_DATA", "/work/data/wild-dev")))
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--reserved", type=Path,
                    default=Path(os.environ.get("MELGENRE_SHARED_DATA", "../shared/data")) / "wild" / "RESERVED.txt")
    args = ap.parse_args(argv)
    build(args.out, args.mirrors, args.reserved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
