"""Predicted genres written into the audio files' own tags, safely and reversibly (mutagen).

:func:`plan` reads a results database (``melgenre predict DIR --out results.sqlite``) and decides,
file by file, whether its genre tag would change and why not; :func:`apply` writes the planned
tags; :func:`undo` puts the previous tags back from the change log.

Tags: ID3 ``TCON`` for MP3, WAV and AIFF; the Vorbis comment ``GENRE`` for FLAC, Ogg Vorbis and
Opus; ``©gen`` for M4A. Other files are skipped with a reason.

Safety:

- A file is rewritten on a temp copy beside it, which replaces the original by an atomic rename
  only once the copy has been saved, read back, and (``verify``) decodes to exactly the same
  samples. A crash at any point leaves either the untouched original or the complete new file
  (and at worst a hidden ``.NAME.PID.tmp`` beside it).
- The copy keeps the file's permission bits, its extended attributes (Linux: a file manager's
  ``user.*`` tags, the SELinux label, the POSIX ACL) and, where the user may, its owner; hard-linked
  files are skipped (a rename would split the links). The modification time becomes the time
  of tagging unless ``keep_mtime`` is set.
- Every change is appended to a JSON-lines log (one ``os.write`` per line, fsynced) *before* the
  rename, with the previous values of every genre field exactly (``"absent"`` when there were
  none) and the file's SHA-256 before and after.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melgenre import audio
from melgenre.errors import MelgenreError
from melgenre.utils import atomic_path, file_sha256, stale_temp_target

#: Default ``--min-confidence``: the predicted genre must be more likely than all others together.
DEFAULT_MIN_CONFIDENCE = 0.5

#: Result flags under which a file is never tagged.
BLOCKING_FLAGS = ("unsure", "not_music", "silent")

#: Value logged for a genre field the file did not have.
ABSENT = "absent"

#: Genre labels whose tag spelling is not the capitalised label (ID3v1's standard names).
GENRE_NAMES = {"hiphop": "Hip-Hop", "rnb": "R&B"}

_MTIME_TOLERANCE = 1e-6  # seconds; a REAL round trip of st_mtime
_LOG_KEYS = {"path", "format", "had_tags", "before", "after", "sha256_before", "sha256_after"}


def genre_name(label: str) -> str:
    """The tag text for a class label: ``"rock"`` -> ``"Rock"``, ``"hiphop"`` -> ``"Hip-Hop"``; a label
    with capitals is already a tag's spelling (``melgenre learn``'s genres: ``"IDM"``) and stays as it is."""
    if label != label.lower():
        return label
    return GENRE_NAMES.get(label, label.replace("_", " ").title())


# -- tag formats ---------------------------------------------------------------------------------

class _Id3:
    """ID3v2 ``TCON`` (MP3, WAV, AIFF); values are ``{"encoding": int, "text": [str]}``."""

    name = "id3"
    key = "TCON"

    @staticmethod
    def read(tags):
        frames = tags.getall("TCON") if tags is not None else []
        if not frames:
            return ABSENT
        return {"encoding": int(frames[0].encoding), "text": [str(t) for t in frames[0].text]}

    @staticmethod
    def write(tags, value) -> None:
        from mutagen.id3 import TCON

        tags.delall("TCON")
        if value != ABSENT:
            tags.add(TCON(encoding=value["encoding"], text=list(value["text"])))

    @staticmethod
    def new(tags, genre: str):
        v23 = tags.version[:2] == (2, 3)
        # Latin-1 where it fits (readable by every player), else what the tag version allows.
        encoding = 0 if all(ord(c) < 256 for c in genre) else (1 if v23 else 3)
        return {"encoding": encoding, "text": [genre]}

    @staticmethod
    def save_kwargs(tags) -> dict:
        return {"v2_version": 3 if tags.version[:2] == (2, 3) else 4}  # keep an ID3v2.3 tag v2.3

    @staticmethod
    def text(value) -> str:
        return "; ".join(value["text"])

    @staticmethod
    def genres(tags) -> list[str]:
        frames = tags.getall("TCON")
        return list(frames[0].genres) if frames else []  # ID3v1 numbers such as "(17)" as names

    @staticmethod
    def artist(tags) -> str:
        return next((str(f.text[0]) for key in ("TPE1", "TPE2") for f in tags.getall(key) if f.text), "")


class _Vorbis:
    """Vorbis comment ``GENRE`` (FLAC, Ogg Vorbis, Opus), any letter case; values are the
    ``[index, key, text]`` entries of the comment list, so that undo restores order and case."""

    name = "vorbis"
    key = "GENRE"

    @staticmethod
    def read(tags):
        found = [[i, k, v] for i, (k, v) in enumerate(tags or []) if k.lower() == "genre"]
        return found or ABSENT

    @staticmethod
    def write(tags, value) -> None:
        # list methods: VCommentDict's own item access takes keys, not positions
        for i in reversed([i for i, (k, _) in enumerate(tags) if k.lower() == "genre"]):
            list.__delitem__(tags, i)
        for i, k, v in sorted(value) if value != ABSENT else []:
            list.insert(tags, i, (k, v))

    @staticmethod
    def new(tags, genre: str):
        at = [i for i, (k, _) in enumerate(tags) if k.lower() == "genre"]
        return [[at[0] if at else len(tags), "GENRE", genre]]

    @staticmethod
    def save_kwargs(tags) -> dict:
        return {}

    @staticmethod
    def text(value) -> str:
        return "; ".join(v for _, _, v in value)

    @staticmethod
    def genres(tags) -> list[str]:
        return [v for k, v in tags if k.lower() == "genre"]

    @staticmethod
    def artist(tags) -> str:
        return next((v for key in ("artist", "albumartist", "album artist") for k, v in tags if k.lower() == key), "")


class _Mp4:
    """MP4 ``©gen``; values are lists of text. (mutagen reads the older ``gnre`` atom, an ID3v1
    genre number, as ``©gen`` and saves it as ``©gen``, as every tagger built on it does.)"""

    name = "mp4"
    key = "\xa9gen"

    @staticmethod
    def read(tags):
        value = tags.get("\xa9gen") if tags is not None else None
        return list(value) if value else ABSENT

    @staticmethod
    def write(tags, value) -> None:
        if value == ABSENT:
            tags.pop("\xa9gen", None)
        else:
            tags["\xa9gen"] = list(value)

    @staticmethod
    def new(tags, genre: str):
        return [genre]

    @staticmethod
    def save_kwargs(tags) -> dict:
        return {}

    @staticmethod
    def text(value) -> str:
        return "; ".join(value)

    @staticmethod
    def genres(tags) -> list[str]:
        return list(tags.get("\xa9gen", []))

    @staticmethod
    def artist(tags) -> str:
        return next((str(tags[key][0]) for key in ("\xa9ART", "aART") if tags.get(key)), "")


def _format(audio_file) -> type | None:
    """The tag format of a file mutagen opened, or None when melgenre does not tag it."""
    from mutagen.aiff import AIFF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    for types, fmt in (((MP3, WAVE, AIFF), _Id3), ((FLAC, OggVorbis, OggOpus), _Vorbis), ((MP4,), _Mp4)):
        if isinstance(audio_file, types):
            return fmt
    return None


def _open(path: Path, cls: type | None = None):
    """Open ``path`` with mutagen (as ``cls`` when given: temp copies have no telling suffix)."""
    import mutagen

    try:
        return cls(path) if cls is not None else mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise MelgenreError(f"{path}: unreadable tags ({exc})") from None


def _reason(exc: Exception) -> str:
    """Why a file failed, without its path (the table shows it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(": ", 1)[-1]


def genre_fields(audio_file) -> dict:
    """Every genre field of a file opened with mutagen: ``{key: value or "absent"}``."""
    fmt = _format(audio_file)
    if fmt is None:
        raise MelgenreError(f"{getattr(audio_file, 'filename', 'file')}: no supported tag format")
    return {fmt.key: fmt.read(audio_file.tags)}


def genre_text(audio_file) -> str:
    """The file's current genre as one line of text ("" when it has none)."""
    fmt = _format(audio_file)
    value = fmt.read(audio_file.tags)
    return "" if value == ABSENT else fmt.text(value)


def genres_and_artist(path: str | Path) -> tuple[list[str], str]:
    """The genres of an audio file's tags, every value in order (one field ``"Rock; Pop"`` counts as
    two), and its artist (the album artist when the artist is missing); ``([], "")`` without tags.

    Raises
    ------
    MelgenreError
        mutagen cannot read the file (not audio, or a broken header).
    """
    audio_file = _open(Path(path))
    fmt = _format(audio_file) if audio_file is not None else None
    if fmt is None or audio_file.tags is None:
        return [], ""
    genres = [g.strip() for value in fmt.genres(audio_file.tags) for g in str(value).split(";")]
    return [g for g in genres if g], fmt.artist(audio_file.tags).strip()


# -- results database ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """One row of the results database (only the fields tagging uses)."""

    path: Path
    size: int
    mtime: float
    sha256: str | None
    model_id: str | None
    label: str | None
    confidence: float | None
    flags: tuple[str, ...]
    error: str | None


def read_results(db: str | Path, root: str | Path) -> dict[Path, Result]:
    """Read a results database into ``{resolved path: Result}``.

    Relative paths in the database are taken from the current folder, else from ``root``.

    Raises
    ------
    MelgenreError
        Not a SQLite file (e.g. the ``.csv``/``.jsonl`` outputs), or not a results database.
    """
    db, root = Path(db), Path(root)
    if not db.is_file():
        raise MelgenreError(f"{db}: no such results database")
    with open(db, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise MelgenreError(f"{db}: not a SQLite results database (tag reads the database written by "
                                f"`melgenre predict DIR --out results.sqlite`, not .csv or .jsonl)")
    from melgenre import library  # (imports torch: only when a database is read)

    results = {}
    for row in library.result_rows(db):
        p = Path(row["path"])
        if not p.is_absolute():
            p = p if p.exists() else root / p
        results[p.resolve()] = Result(p, row["size"], row["mtime"], row["sha256"], row["model_id"], row["label"],
                                      row["confidence"], tuple(row["flags"] or ()), row["error"])
    return results


# -- plan ----------------------------------------------------------------------------------------

@dataclass
class Change:
    """What tagging does (or would do) to one file: ``action`` is ``write``, ``skip`` (with the
    rule's reason) or, after :func:`apply`, ``failed`` (with the reason; the file is unchanged)."""

    path: Path
    old: str
    new: str
    action: str
    reason: str = ""
    result: Result | None = None


def taggable_files(root: str | Path) -> list[Path]:
    """Audio files under ``root`` (recursive, hidden names skipped), resolved, sorted, each once."""
    root = Path(root)
    if not root.is_dir():
        raise MelgenreError(f"{root}: not a folder")
    return sorted({f.resolve() for f in root.rglob("*") if f.is_file() and not f.name.startswith(".")
                   and f.suffix.lower() in audio.AUDIO_EXTENSIONS})


def leftovers(root: str | Path, remove: bool = False) -> list[Path]:
    """The temp copies beside audio files under ``root`` that a killed ``--write`` or ``--undo`` left
    (``.NAME.PID.tmp`` of a process that is gone: their rename never happened, so the file beside
    is as it was), sorted; with ``remove``, they are deleted."""
    found = sorted(p for p in Path(root).rglob(".*.tmp")
                   if (target := stale_temp_target(p)) is not None and target.suffix.lower() in audio.AUDIO_EXTENSIONS
                   and p.is_file())
    if remove:
        for p in found:
            p.unlink(missing_ok=True)
    return found


def _genre_now(path: Path) -> str:
    """The file's genre as :func:`genre_text` gives it, "" when it has none or its tags cannot be read."""
    try:
        audio_file = _open(path)
        return genre_text(audio_file) if audio_file is not None and _format(audio_file) is not None else ""
    except (MelgenreError, OSError):
        return ""


def _decide(path: Path, root: Path, result: Result | None, min_confidence: float, replace: bool) -> Change:
    """The planned change of one file (reads its tags, writes nothing)."""
    def skip(reason: str, old: str | None = None, new: str = "") -> Change:
        return Change(path, _genre_now(path) if old is None else old, new, "skip", reason, result)

    if not path.is_relative_to(root):
        return skip("a link to a file outside the folder")
    if result is None:
        return skip("not in the results database")
    new = genre_name(result.label) if result.label else ""
    if result.error is not None or result.label is None:
        return skip(f"prediction failed: {result.error or 'no label'}")
    st = path.stat()
    if st.st_size != result.size or abs(st.st_mtime - result.mtime) > _MTIME_TOLERANCE:
        return skip("file changed since the prediction (size or mtime differs)", new=new)
    blocking = [f for f in result.flags if f in BLOCKING_FLAGS]
    if blocking:
        return skip(f"flagged {', '.join(blocking)}", new=new)
    if result.confidence is None or result.confidence < min_confidence:
        return skip(f"confidence {result.confidence or 0:.2f} < {min_confidence:.2f}", new=new)
    try:
        audio_file = _open(path)
    except (MelgenreError, OSError) as exc:
        return skip(_reason(exc), "", new)
    if audio_file is None or _format(audio_file) is None:
        return skip(f"no supported tag format for {path.suffix or 'this file'}", "", new)
    old = genre_text(audio_file)
    if old.lower() == new.lower():
        return skip("already tagged", old, new)
    if old and not replace:
        return skip("has a genre (keep existing)", old, new)
    if st.st_nlink > 1:
        return skip("hard-linked (rewriting it would split the links)", old, new)
    return Change(path, old, new, "write", "", result)


def plan(root: str | Path, db: str | Path, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
         replace: bool = False) -> list[Change]:
    """Decide the genre tag of every audio file under ``root`` from the results database ``db``.

    Parameters
    ----------
    root : path
        The folder to tag (searched recursively); database rows outside it are ignored.
    db : path
        The SQLite results database from ``melgenre predict DIR --out results.sqlite``.
    min_confidence : float
        Tag only files whose predicted genre has at least this probability.
    replace : bool
        Replace an existing genre tag (default: keep it).

    Returns
    -------
    list of Change
        One per audio file, ``write`` or ``skip`` with the reason. Nothing is written.
    """
    results = read_results(db, root)
    return [_decide(path, Path(root).resolve(), results.get(path), min_confidence, replace)
            for path in taggable_files(root)]


# -- safe rewrite --------------------------------------------------------------------------------

class TagLog:
    """An append-only JSON-lines change log: each entry is one ``write`` of a whole line, fsynced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, entry: dict) -> None:
        """Append one entry durably (a crash loses at most the entry being written)."""
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        """Every entry; a torn last line (a crash while appending: no newline at its end) is ignored.

        Raises
        ------
        MelgenreError
            The file is missing, not UTF-8 text (a results database), holds a line that is not an entry,
            or no complete entry at all.
        """
        if not self.path.is_file():
            raise MelgenreError(f"{self.path}: no such tag log")
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise MelgenreError(f"{self.path}: not a melgenre tag log (binary, not JSON lines: a results "
                                f"database?)") from None
        lines = text.splitlines()
        entries = []
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) and not text.endswith("\n"):
                    break
                raise MelgenreError(f"{self.path}: not a melgenre tag log (line {n} is not JSON)") from None
            if not isinstance(entry, dict) or entry.get("op") != "tag" or not _LOG_KEYS <= entry.keys():
                raise MelgenreError(f"{self.path}: not a melgenre tag log (line {n} is not a tag entry)")
            entries.append(entry)
        if not entries:
            raise MelgenreError(f"{self.path}: not a melgenre tag log (no complete entry)")
        return entries


def _rewrite(path: Path, edit: Callable[[object, type], dict], before_log: Callable[[dict], None] | None,
             verify: bool, keep_mtime: bool) -> dict:
    """Rewrite ``path``'s tags on a temp copy and rename it over the original.

    ``edit(audio_file, fmt)`` changes the tags of the opened copy and returns the genre fields it
    expects to read back; ``before_log(facts)`` is called (to log the change) once the copy is
    complete and checked, just before the rename. Returns the facts: ``format``, ``had_tags``,
    ``before``, ``after``, ``sha256_before``, ``sha256_after``.
    """
    import mutagen

    st = path.stat()
    original = _open(path)
    fmt = _format(original)
    cls = type(original)
    facts = {"format": fmt.name, "had_tags": original.tags is not None, "before": genre_fields(original)}
    with atomic_path(path) as tmp:
        facts["sha256_before"] = file_sha256(path, copy_to=tmp)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass  # a user may not give a file away; the copy is theirs, as any editor's would be
        _copy_xattrs(path, tmp)
        try:
            expected = edit(_open(tmp, cls), fmt)
        except mutagen.MutagenError as exc:
            raise MelgenreError(f"{path}: tags could not be saved ({exc})") from None
        facts["after"] = genre_fields(_open(tmp, cls))
        if facts["after"] != expected:
            raise MelgenreError(f"{path}: the genre read back differs from the one written; file left as it was")
        if verify and audio.sample_digest(path) != audio.sample_digest(tmp, name=str(path)):
            raise MelgenreError(f"{path}: audio decoded differently after tagging; file left as it was")
        if keep_mtime:
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        facts["sha256_after"] = file_sha256(tmp)
        now = path.stat()
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise MelgenreError(f"{path}: changed while it was being tagged; left as it is")
        if before_log is not None:
            before_log(facts)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return facts


#: The extended attribute of a POSIX access ACL (Linux); a new file may inherit one from its folder's default ACL.
_ACL_XATTR = "system.posix_acl_access"


def _copy_xattrs(src: Path, dst: Path) -> None:
    """Give ``dst`` every extended attribute of ``src`` (Linux: a file manager's ``user.*`` tags, an SELinux
    label, the POSIX ACL), and no access ACL ``src`` lacks, so that the rename keeps them.

    Raises
    ------
    MelgenreError
        An attribute cannot be set on ``dst`` (the rewrite is then abandoned: nothing is lost).
    """
    if not hasattr(os, "listxattr"):  # not Linux
        return
    try:
        names = os.listxattr(src)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):  # a filesystem without extended attributes
            return
        raise
    for name in names:
        value = os.getxattr(src, name)
        try:
            if os.getxattr(dst, name) == value:  # e.g. the SELinux label the copy was given already
                continue
        except OSError:
            pass
        try:
            os.setxattr(dst, name, value)
        except OSError as exc:
            raise MelgenreError(f"{src}: its extended attribute {name} cannot be kept ({exc.strerror}); file left "
                                f"as it was") from None
    if _ACL_XATTR not in names and _ACL_XATTR in os.listxattr(dst):  # inherited from the folder's default ACL
        os.removexattr(dst, _ACL_XATTR)


def _set_fields(values: dict, drop_empty: bool) -> Callable[[object, type], dict]:
    """An ``edit`` for :func:`_rewrite` that sets the genre fields to ``values`` and saves; with
    ``drop_empty`` a tag container left empty is removed (it was absent before tagging)."""
    def edit(audio_file, fmt) -> dict:
        if audio_file.tags is None:
            audio_file.add_tags()
        fmt.write(audio_file.tags, values[fmt.key])
        if drop_empty and len(audio_file.tags) == 0:
            audio_file.delete()
        else:
            audio_file.save(**fmt.save_kwargs(audio_file.tags))
        return values
    return edit


def apply(changes: list[Change], log: str | Path, verify: bool = True, keep_mtime: bool = False,
           on_done: Callable[[Change], None] | None = None) -> list[Change]:
    """Write the genre of every ``write`` change; log each one to ``log`` before its rename.

    A file that fails (it changed meanwhile, cannot be saved, decodes differently) becomes
    ``failed`` with the reason and is left as it was; the others go on. Returns ``changes``.
    """
    tag_log = TagLog(log)
    for change in changes:
        if change.action == "write":
            try:
                def log_entry(facts, change=change):
                    tag_log.append({"op": "tag", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "path": str(change.path), **facts, "model_id": change.result.model_id,
                                    "label": change.result.label, "confidence": change.result.confidence})

                def edit(audio_file, fmt, change=change):
                    if audio_file.tags is None:
                        audio_file.add_tags()
                    values = {fmt.key: fmt.new(audio_file.tags, change.new)}
                    return _set_fields(values, drop_empty=False)(audio_file, fmt)

                _rewrite(change.path, edit, log_entry, verify, keep_mtime)
            except (MelgenreError, OSError) as exc:
                change.action, change.reason = "failed", _reason(exc)
        if on_done is not None:
            on_done(change)
    return changes


# -- undo ----------------------------------------------------------------------------------------

@dataclass
class Undo:
    """What undo did to one file: ``action`` is ``restored``, ``already`` (it has its previous
    genre already) or ``refused`` (with the reason)."""

    path: Path
    action: str
    reason: str = ""


def undo(log: str | Path, verify: bool = True, keep_mtime: bool = False) -> list[Undo]:
    """Restore the genre fields every entry of the tag ``log`` replaced, exactly.

    A file is restored only when it is byte for byte what tagging left (SHA-256 from the log);
    a file edited since is refused and left alone. A file tagged more than once in the log gets
    its state from before the first time. Undoing twice is harmless (``already``).
    """
    by_path: dict[str, list[dict]] = {}
    for entry in TagLog(log).read():
        by_path.setdefault(entry["path"], []).append(entry)
    done = []
    for name, entries in by_path.items():
        path, first, last = Path(name), entries[0], entries[-1]
        try:
            if not path.is_file():
                done.append(Undo(path, "refused", "file is gone"))
            elif file_sha256(path) == last["sha256_after"]:
                _rewrite(path, _set_fields(first["before"], drop_empty=not first["had_tags"]), None, verify,
                         keep_mtime)
                done.append(Undo(path, "restored"))
            elif genre_fields(_open(path)) == first["before"]:
                done.append(Undo(path, "already"))
            else:
                done.append(Undo(path, "refused", "changed since it was tagged (left alone)"))
        except (MelgenreError, OSError) as exc:
            done.append(Undo(path, "refused", _reason(exc)))
    return done
