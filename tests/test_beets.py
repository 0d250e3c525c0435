"""The beets plugin (src/beetsplug/melgenre.py) in a real beets library: real audio files, ``beet``
run as a subprocess, the library read back with beets' own ``Library``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
from mutagen.id3 import TALB, TCON, TIT2

from melgenre import synth
from melgenre.library import result_rows
from melgenre.tagging import genre_name, genre_text

pytest.importorskip("beets", reason="beets is not installed (pip install 'melgenre[beets]')")
from beets.library import Library  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"

#: (file, format, existing genre) of the incoming album; plus one silent FLAC.
TRACKS = [("t0.flac", "FLAC", None), ("t1.mp3", "MP3", None), ("t2.wav", "WAV", None), ("t3.flac", "FLAC", "Jazz")]


def _tag(path: Path, title: str, genre: str | None) -> None:
    """Title, album and (optionally) genre tags, written with mutagen."""
    if path.suffix == ".wav":
        f = mutagen.File(path)
        f.add_tags()
        f.tags.add(TIT2(encoding=3, text=title))
        f.tags.add(TALB(encoding=3, text="Synth"))
        if genre:
            f.tags.add(TCON(encoding=3, text=genre))
    else:
        f = mutagen.File(path, easy=True)
        if f.tags is None:
            f.add_tags()
        f["title"], f["album"] = title, "Synth"
        if genre:
            f["genre"] = genre
    f.save()


def _album(folder: Path) -> Path:
    """Four 3-s synthetic clips (FLAC, MP3, WAV, a FLAC already tagged Jazz) and a silent FLAC."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, fmt, genre) in enumerate(TRACKS):
        sf.write(folder / name, synth.synth_clip(i % 3, 3, 3.0, 22_050, rng), 22_050, format=fmt)
        _tag(folder / name, f"track {i}", genre)
    sf.write(folder / "silence.flac", np.zeros(3 * 22_050, np.float32), 22_050)
    _tag(folder / "silence.flac", "silence", None)
    return folder


class Beets:
    """A beets setup in a temp folder: its config (BEETSDIR), library, music folder and results database."""

    def __init__(self, root: Path, model: Path, auto: bool, copy: bool, write: bool, monkeypatch):
        self.root, self.config, self.music = root, root / "config", root / "music"
        self.library, self.results = root / "library.db", root / "results.sqlite"
        self.config.mkdir(parents=True)
        settings = {
            "directory": str(self.music), "library": str(self.library), "plugins": "melgenre",
            "import": {"copy": copy, "write": write, "autotag": False, "quiet": True},
            # the tiny model's answers are about 0.35 sure: min_confidence 0 lets the flags alone decide
            "melgenre": {"model": str(model), "database": str(self.results), "auto": auto, "min_confidence": 0},
        }
        (self.config / "config.yaml").write_text(json.dumps(settings))  # JSON is YAML
        monkeypatch.setenv("BEETSDIR", str(self.config))  # this process's beets never reads ~/.config
        self.env = {**os.environ, "BEETSDIR": str(self.config),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}

    def __call__(self, *args: str) -> str:
        """Run ``beet ARGS``; its stdout (fails the test with its output on a non-zero exit)."""
        done = subprocess.run([sys.executable, "-m", "beets", *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"beet {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def items(self) -> dict[str, object]:
        """The library's items by file name, read with beets' own Library."""
        lib = Library(str(self.library), str(self.music))  # newer beets store paths relative to it
        try:
            return {Path(os.fsdecode(item.path)).name: item for item in lib.items()}
        finally:
            lib._close()

    def rows(self) -> dict[str, dict]:
        """The results database's rows by file name."""
        return {Path(r["path"]).name: r for r in result_rows(self.results)}

    def state(self) -> tuple[bytes, dict[str, str]]:
        """The library database's bytes and the SHA-256 of every file under the music folder."""
        files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.music.rglob("*"))
                 if p.is_file()}
        return self.library.read_bytes(), files


def _genre(item) -> str:
    """The item's genre (beets >= 2.7: the list ``genres``; before: the text ``genre``)."""
    value = item.get("genres") or item.get("genre") or ""
    return "; ".join(value) if isinstance(value, list) else value


def _file_genre(item) -> str:
    return genre_text(mutagen.File(os.fsdecode(item.path)))


def _summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_import_then_command(tmp_path, tiny_card, monkeypatch):
    """auto on import, then rerun, dry run and --force: genres only where empty, never from a flagged
    answer, flexible attributes everywhere, files tagged, a rerun predicts nothing."""
    beet = Beets(tmp_path, tiny_card, auto=True, copy=True, write=True, monkeypatch=monkeypatch)
    incoming = _album(tmp_path / "incoming" / "album")
    model_id = json.loads(tiny_card.read_text())["model_id"]

    out = beet("import", str(incoming))
    items, rows = beet.items(), beet.rows()
    assert sorted(items) == sorted([f"00 track {i}{Path(n).suffix}" for i, (n, _, _) in enumerate(TRACKS)]
                                   + ["00 silence.flac"])
    assert all(beet.music in Path(os.fsdecode(i.path)).parents for i in items.values()), "imported into the library"
    assert set(rows) == set(items), "predicted after the files were copied: the database holds the library's paths"
    assert _summary(out).startswith("melgenre: 3 written, 1 kept (had a genre), 1 flagged (not written), 0 failed; "
                                    "5 predicted, 0 already"), out
    for name, item in items.items():
        row = rows[name]
        assert item.get("melgenre_model") == model_id
        assert item.get("melgenre_genre") == genre_name(row["label"])
        assert float(item.get("melgenre_confidence")) == pytest.approx(row["confidence"])
        assert item.get("melgenre_flags") == ",".join(row["flags"])
        if name == "00 silence.flac":
            assert {"silent", "not_music"} <= set(row["flags"])
            assert _genre(item) == "" and _file_genre(item) == "", "a not-music answer is never written"
        elif name == "00 track 3.flac":
            assert _genre(item) == "Jazz" and _file_genre(item) == "Jazz", "an existing genre is kept"
        else:
            assert _genre(item) == genre_name(row["label"]) == _file_genre(item), "empty genre set, file written"

    # a rerun finds every file in the results database (even those whose tags it just wrote)
    before = beet.state()
    out = beet("melgenre")
    assert "0 written, 4 kept (had a genre), 1 flagged (not written), 0 failed; 0 predicted, 5 already" in out, out
    assert beet.rows() == rows, "no file predicted again"
    assert beet.state() == before

    # the dry run shows the change --force would make and changes nothing
    out = beet("melgenre", "--force", "--pretend")
    assert "would set" in out and "(was Jazz)" in out and "00 track 3.flac" in out, out
    assert _summary(out).startswith("melgenre: 1 would be written,"), out
    assert beet.state() == before, "the dry run changed the library or a file"

    out = beet("melgenre", "-f")
    items = beet.items()
    jazz = items["00 track 3.flac"]
    assert _genre(jazz) == genre_name(rows["00 track 3.flac"]["label"]) == _file_genre(jazz), "--force replaces"
    assert _genre(items["00 silence.flac"]) == "", "--force never writes a flagged answer"
    assert "0 predicted, 5 already" in _summary(out), out


def test_flagged_never_written(tmp_path, tiny_card, monkeypatch):
    """A model whose every answer is unsure: nothing is written even with --force, the answers are
    stored as flexible attributes, and with import.write off the files stay as they were. A missing
    model is one line of error."""
    strict = tmp_path / "model" / "strict.json"
    strict.parent.mkdir()
    shutil.copy(tiny_card.with_suffix(".safetensors"), strict.with_suffix(".safetensors"))
    card = json.loads(tiny_card.read_text())
    strict.write_text(json.dumps({**card, "trust": {"unsure_below": 1.01}}))  # no answer is that sure
    beet = Beets(tmp_path, tiny_card, auto=False, copy=False, write=False, monkeypatch=monkeypatch)
    incoming = _album(tmp_path / "incoming" / "album")
    beet("import", str(incoming))
    files = {p.name: p.read_bytes() for p in incoming.iterdir()}

    missing = tmp_path / "nope.json"
    done = subprocess.run([sys.executable, "-m", "beets", "melgenre", "-m", str(missing)], env=beet.env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and done.stderr.strip() == (
        f"error: melgenre: {missing}: no such file (a model package is <stem>.json + <stem>.safetensors)")

    out = beet("melgenre", "--force", "--model", str(strict))
    assert _summary(out).startswith("melgenre: 0 written, 0 kept (had a genre), 5 flagged (not written), 0 failed; "
                                    "5 predicted"), out
    for item in beet.items().values():
        assert "unsure" in item.get("melgenre_flags").split(",")
        assert item.get("melgenre_model") == card["model_id"]
    assert {n: _genre(i) for n, i in beet.items().items()} == {n: "Jazz" if n == "t3.flac" else "" for n in files}
    assert {p.name: p.read_bytes() for p in incoming.iterdir()} == files, "import.write is off: files untouched"
