"""Find labelled audio files: GTZAN in its usual layouts, or any ``<class>/<file>`` folder tree.

Layouts recognised under the folder you point at (first match wins):

- ``genres/<genre>/<genre>.NNNNN.au`` (the original GTZAN archive),
- ``genres_original/<genre>/<genre>.NNNNN.wav`` or ``Data/genres_original/...`` (the common WAV copy),
- otherwise the folder itself holds one sub-folder per class, with audio files anywhere below it.

Classes are sorted by name, so the class order is stable and the same on every machine; it is
stored with every feature file. Corrupt files are *not* filtered here (that needs decoding): the
``prepare`` step skips, counts and lists them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from melgenre.audio import AUDIO_EXTENSIONS
from melgenre.errors import DatasetError

_GTZAN_SUBDIRS = (("gtzan", "genres"), ("gtzan-original", "genres_original"),
                  ("gtzan-original", "Data/genres_original"))


@dataclass(frozen=True)
class Track:
    """One labelled audio file. ``track_id`` is ``<class>/<path below the class folder, no suffix>``."""

    path: Path
    label: int
    track_id: str


@dataclass
class Corpus:
    """A labelled collection of audio files."""

    root: Path  # the folder holding the class folders
    classes: list[str]
    tracks: list[Track]
    layout: str  # "gtzan", "gtzan-original" or "folders"
    ignored: list[Path] = field(default_factory=list)  # files without an audio suffix

    def counts(self) -> dict[str, int]:
        """Tracks per class, in class order."""
        c = Counter(t.label for t in self.tracks)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.tracks)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def discover(root: str | Path, classes: list[str] | None = None) -> Corpus:
    """Scan ``root`` for labelled audio files.

    Parameters
    ----------
    root : path
        A GTZAN folder (containing ``genres/`` or ``genres_original/``) or a folder of class folders.
    classes : list of str, optional
        Fix the class order (e.g. a trained model's). Folders not in the list are an error;
        listed classes without a folder simply have no tracks.

    Raises
    ------
    DatasetError
        ``root`` is missing, holds no class folder with audio, or two files map to one track id.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: is a file, not a corpus folder (<class>/<file> folders or GTZAN's genres/)")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    layout, class_root = "folders", root
    for name, sub in _GTZAN_SUBDIRS:
        if (root / sub).is_dir():
            layout, class_root = name, root / sub
            break

    found: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    for class_dir in sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and _visible(p, class_root))
        audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
        ignored += [p for p in files if p.suffix.lower() not in AUDIO_EXTENSIONS]
        if audio:
            found[class_dir.name] = audio
    if not found:
        raise DatasetError(
            f"{root}: no class folders with audio files found (expected <class>/<file> with one of "
            f"{', '.join(AUDIO_EXTENSIONS)}, or GTZAN's genres/ or genres_original/)"
        )

    if classes is None:
        classes = sorted(found)
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{root}: class folder(s) {', '.join(unknown)} not in the given classes")
    index = {name: i for i, name in enumerate(classes)}

    tracks: list[Track] = []
    seen: dict[str, Path] = {}
    for name in classes:
        for path in found.get(name, []):
            track_id = path.relative_to(class_root).with_suffix("").as_posix()
            if track_id in seen:
                raise DatasetError(f"{path}: same track id {track_id!r} as {seen[track_id].name}")
            seen[track_id] = path
            tracks.append(Track(path=path, label=index[name], track_id=track_id))
    return Corpus(root=class_root, classes=list(classes), tracks=tracks, layout=layout, ignored=ignored)
