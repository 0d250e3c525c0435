"""melgenre tag: genre tags written into the files from a results database, safely and reversibly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import shared_path
from melgenre import audio, tagging
from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.library import result_rows

runner = CliRunner()

# The results database of `melgenre predict DIR --out results.sqlite` (schema version 1).
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE results (
  path TEXT PRIMARY KEY, size INTEGER, mtime REAL, sha256 TEXT, model_id TEXT,
  label TEXT, confidence REAL, probabilities TEXT, flags TEXT,
  duration REAL, error TEXT, finished_at TEXT);
"""
CLASSES = ["blues", "hiphop", "jazz", "rock"]
SOUNDFILE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"),
                     ".opus": ("OGG", "OPUS"), ".mp3": ("MP3", "MPEG_LAYER_III"), ".aiff": ("AIFF", "PCM_16")}
ALL_SUFFIXES = [*SOUNDFILE_FORMATS, ".m4a"]


def make_clip(path: Path, seed: int = 0, seconds: float = 1.0) -> Path:
    """A short synthetic clip (two tones and a little noise) in the format of ``path``'s suffix."""
    sr = 48_000 if path.suffix == ".opus" else 22_050
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    y = (0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
         + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".m4a":
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
        wav = path.with_name(f".{path.stem}.src.wav")
        sf.write(wav, y, sr)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
        wav.unlink()
    else:
        fmt, subtype = SOUNDFILE_FORMATS[path.suffix]
        sf.write(path, y, sr, format=fmt, subtype=subtype)
    return path


def result_row(path: Path, label: str = "rock", confidence: float = 0.9, flags=(), error=None) -> dict:
    """A results row for ``path`` as it is on disk now."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": st.st_mtime,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "model_id": "test-model",
            "label": None if error else label, "confidence": None if error else confidence,
            "probabilities": None if error else json.dumps({label: confidence}),
            "flags": json.dumps(list(flags)), "duration": 1.0, "error": error,
            "finished_at": "2026-01-01T00:00:00"}


def write_results(db: Path, rows: list[dict]) -> Path:
    """A results database holding ``rows``."""
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("model_id", "test-model"),
                                                       ("classes", json.dumps(CLASSES)), ("melgenre", "test")])
    con.executemany(f"INSERT INTO results VALUES ({', '.join(':' + k for k in rows[0])})", rows)
    con.commit()
    con.close()
    return db


def tag_snapshot(path: Path):
    """Every tag of a file, comparable with ==: Vorbis comments in order, else (version, items)."""
    tags = mutagen.File(path).tags
    if tags is None:
        return None
    if isinstance(tags, list):
        return list(tags)
    return getattr(tags, "version", None), sorted((str(k), repr(v)) for k, v in tags.items())


def samples(path: Path) -> np.ndarray:
    return audio.decode(path)[0]


def cli(*args):
    return runner.invoke(app, ["tag", *map(str, args)])


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_every_format_tags_and_undoes_with_identical_audio(tmp_path, suffix):
    clip = make_clip(tmp_path / "lib" / f"song{suffix}")
    db = write_results(tmp_path / "results.sqlite", [result_row(clip, "hiphop")])
    pcm, tags_before = samples(clip), tag_snapshot(clip)

    r = cli(tmp_path / "lib", "--from", db, "--write", "--log", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.output
    assert "1 written, 0 skipped, 0 failed; undo with: melgenre tag --undo" in r.output
    tagged = mutagen.File(clip)
    assert tagging.genre_text(tagged) == "Hip-Hop"
    assert np.array_equal(samples(clip), pcm)
    (entry,) = tagging.TagLog(tmp_path / "log.jsonl").read()
    assert entry["path"] == str(clip.resolve()) and entry["model_id"] == "test-model"
    assert all(v == "absent" for v in entry["before"].values())
    assert entry["sha256_after"] == hashlib.sha256(clip.read_bytes()).hexdigest()

    r = cli("--undo", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.output
    assert "1 restored" in r.output
    assert tag_snapshot(clip) == tags_before
    assert np.array_equal(samples(clip), pcm)
    assert sorted(p.name for p in clip.parent.iterdir()) == [clip.name]  # no temp file left


def test_dry_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default log would go
    clips = [make_clip(tmp_path / "lib" / f"c{i}{s}", seed=i) for i, s in enumerate((".flac", ".mp3", ".ogg"))]
    db = write_results(tmp_path / "r.sqlite", [result_row(c) for c in clips])
    before = {c: (c.read_bytes(), c.stat().st_mtime_ns) for c in clips}
    r = cli(tmp_path / "lib", "--from", db)
    assert r.exit_code == 0, r.output
    assert r.output.count("would write") == 3 and "dry run: 3 of 3 files would be tagged" in r.output
    assert {c: (c.read_bytes(), c.stat().st_mtime_ns) for c in clips} == before
    assert not list(tmp_path.glob("*.jsonl"))


def test_rules_confidence_flags_errors_changes_and_existing_genres(tmp_path):
    lib = tmp_path / "lib"
    c = {name: make_clip(lib / f"{name}.flac", seed=i) for i, name in enumerate(
        ("good", "low", "unsure", "notmusic", "silent", "error", "changed", "missing", "tagged", "same"))}
    rows = [result_row(c["good"]), result_row(c["low"], confidence=0.3),
            result_row(c["unsure"], flags=["unsure"]), result_row(c["notmusic"], flags=["not_music"]),
            result_row(c["silent"], flags=["silent", "padded"]), result_row(c["error"], error="decode failed"),
            result_row(c["changed"]), result_row(c["tagged"], "jazz"), result_row(c["same"], "jazz")]
    for name, genre in (("tagged", "Blues"), ("same", "jazz")):
        f = mutagen.File(c[name])
        f["genre"] = genre
        f.save()
        rows = [result_row(c[name], "jazz") if r["path"] == str(c[name]) else r for r in rows]
    (lib / "broken.mp3").write_bytes(b"not audio" * 100)
    rows.append(result_row(lib / "broken.mp3"))
    db = write_results(tmp_path / "r.sqlite", rows)
    os.utime(c["changed"], ns=(0, c["changed"].stat().st_mtime_ns + 10**9))
    (lib / ".hidden.flac").write_bytes(c["good"].read_bytes())
    outside = make_clip(tmp_path / "elsewhere" / "outside.flac")
    (lib / "outside.flac").symlink_to(outside)
    (lib / "good-link.flac").symlink_to(c["good"])  # the same file twice: tagged once

    reasons = {ch.path.stem: (ch.action, ch.reason) for ch in tagging.plan(lib, db)}
    assert reasons == {
        "good": ("write", ""), "low": ("skip", "confidence 0.30 < 0.50"),
        "unsure": ("skip", "flagged unsure"), "notmusic": ("skip", "flagged not_music"),
        "silent": ("skip", "flagged silent"), "error": ("skip", "prediction failed: decode failed"),
        "changed": ("skip", "file changed since the prediction (size or mtime differs)"),
        "missing": ("skip", "not in the results database"),
        "tagged": ("skip", "has a genre (keep existing)"), "same": ("skip", "already tagged"),
        "broken": ("skip", "unreadable tags (can't sync to MPEG frame)"),
        "outside": ("skip", "a link to a file outside the folder")}
    assert {ch.path.stem: ch.action for ch in tagging.plan(lib, db, min_confidence=0.2)}["low"] == "write"
    replaced = {ch.path.stem: ch for ch in tagging.plan(lib, db, replace=True)}
    assert replaced["tagged"].action == "write" and (replaced["tagged"].old, replaced["tagged"].new) == ("Blues", "Jazz")
    assert replaced["same"].action == "skip"

    snap = {name: path.read_bytes() for name, path in c.items()}
    r = cli(lib, "--from", db, "--write", "--log", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.output
    assert "1 written, 11 skipped, 0 failed" in r.output
    assert tagging.genre_text(mutagen.File(c["good"])) == "Rock"
    assert all(c[name].read_bytes() == snap[name] for name in c if name != "good")


def test_replace_and_undo_restore_existing_fields_exactly(tmp_path):
    lib = tmp_path / "lib"
    flac, mp3 = make_clip(lib / "a.flac"), make_clip(lib / "b.mp3", seed=1)
    f = mutagen.File(flac)
    f.tags.extend([("ARTIST", "x"), ("Genre", "Blues"), ("TITLE", "y"), ("genre", "Soul")])
    f.save()
    from mutagen.id3 import ID3, TCON, TIT2

    id3 = ID3()
    id3.add(TCON(encoding=1, text=["Jazz", "Funk"]))
    id3.add(TIT2(encoding=1, text=["title"]))
    id3.save(mp3, v2_version=3)
    files = [flac, mp3]
    if shutil.which("ffmpeg"):
        m4a = make_clip(lib / "c.m4a", seed=2)
        mp4 = mutagen.File(m4a)
        mp4["\xa9gen"] = ["Metal", "Punk"]
        mp4.save()
        files.append(m4a)
    db = write_results(tmp_path / "r.sqlite", [result_row(p, "rock") for p in files])
    before = {p: tag_snapshot(p) for p in files}
    pcm = {p: samples(p) for p in files}

    changes = tagging.apply(tagging.plan(lib, db, replace=True), tmp_path / "log.jsonl")
    assert [ch.action for ch in changes] == ["write"] * len(files)
    assert [v for _, v in mutagen.File(flac).tags] == ["x", "Rock", "y"]  # both genre entries replaced by one
    assert ID3(mp3).version[:2] == (2, 3) and ID3(mp3).getall("TCON")[0].text == ["Rock"]
    if len(files) == 3:
        assert mutagen.File(m4a).tags["\xa9gen"] == ["Rock"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["before"] == {"GENRE": [[1, "Genre", "Blues"], [3, "genre", "Soul"]]}
    assert log[1]["before"] == {"TCON": {"encoding": 1, "text": ["Jazz/Funk"]}}  # ID3v2.3 joins values with /

    undone = tagging.undo(tmp_path / "log.jsonl")
    assert [u.action for u in undone] == ["restored"] * len(files)
    for p in files:
        assert tag_snapshot(p) == before[p], p.name
        assert np.array_equal(samples(p), pcm[p])
    assert ID3(mp3).version[:2] == (2, 3)
    assert [u.action for u in tagging.undo(tmp_path / "log.jsonl")] == ["already"] * len(files)


def test_undo_restores_every_value_of_a_multi_value_id3v24_genre(tmp_path):
    """ID3v2.4 keeps several TCON values apart (v2.3 joins them with /): undo gives both back."""
    from mutagen.id3 import ID3, TCON

    mp3 = make_clip(tmp_path / "lib" / "a.mp3")
    id3 = ID3()
    id3.add(TCON(encoding=3, text=["Rock", "Blues"]))
    id3.save(mp3, v2_version=4)
    db = write_results(tmp_path / "r.sqlite", [result_row(mp3, "jazz")])
    r = cli(tmp_path / "lib", "--from", db, "--write", "--replace", "--log", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.output
    assert ID3(mp3).getall("TCON")[0].text == ["Jazz"]

    r = cli("--undo", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.output
    tags = ID3(mp3)
    assert tags.version[:2] == (2, 4)
    assert [(f.encoding, f.text) for f in tags.getall("TCON")] == [(3, ["Rock", "Blues"])]


def test_undo_refuses_a_file_changed_since(tmp_path):
    clip = make_clip(tmp_path / "lib" / "a.ogg")
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    f = mutagen.File(clip)
    f["genre"] = "Punk"  # the user retagged it by hand
    f.save()
    edited = clip.read_bytes()
    r = cli("--undo", tmp_path / "log.jsonl")
    assert r.exit_code == 1
    assert "refused: changed since it was tagged" in r.output and "0 restored" in r.output
    assert clip.read_bytes() == edited


def test_crash_in_save_or_rename_leaves_the_original(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "lib" / "a.flac")
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    original = clip.read_bytes()

    def broken_save(self, *args, **kwargs):
        with open(self.filename, "r+b") as f:  # half-written, then the disk fails
            f.truncate(len(original) // 2)
        raise OSError(28, "No space left on device")

    from mutagen.flac import FLAC

    with monkeypatch.context() as m:
        m.setattr(FLAC, "save", broken_save)
        (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert (change.action, change.reason) == ("failed", "No space left on device")
    assert clip.read_bytes() == original and not (tmp_path / "log.jsonl").exists()

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", broken_replace)
        (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert change.action == "failed" and clip.read_bytes() == original
    assert sorted(p.name for p in clip.parent.iterdir()) == ["a.flac"]
    # the log is written ahead of the rename: undo sees the file never changed
    assert [u.action for u in tagging.undo(tmp_path / "log.jsonl")] == ["already"]
    assert clip.read_bytes() == original


def test_killed_mid_write_leaves_a_valid_untouched_file(tmp_path):
    clip = make_clip(tmp_path / "lib" / "a.flac")
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    original, pcm = clip.read_bytes(), samples(clip)
    code = f"""
import os, signal
from mutagen.flac import FLAC
from melgenre import tagging

def dying_save(self, *args, **kwargs):
    with open(self.filename, "r+b") as f:
        f.truncate(100)
    os.kill(os.getpid(), signal.SIGKILL)

FLAC.save = dying_save
tagging.apply(tagging.plan({str(tmp_path / "lib")!r}, {str(db)!r}), {str(tmp_path / "log.jsonl")!r})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert clip.read_bytes() == original and np.array_equal(samples(clip), pcm)
    leftovers = [p.name for p in clip.parent.iterdir() if p != clip]
    assert len(leftovers) == 1 and leftovers[0].startswith(".a.flac.")  # hidden: scans skip it
    (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert change.action == "write" and tagging.genre_text(mutagen.File(clip)) == "Rock"


def _dead_pid() -> int:
    """The pid of a process that has just exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temp_copies_of_a_killed_run_are_reported_then_removed(tmp_path):
    lib = tmp_path / "lib"
    clip = make_clip(lib / "a.flac")
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    stale = lib / f".a.flac.{_dead_pid()}.tmp"  # a kill -9 mid-write: the copy stays, hidden
    stale.write_bytes(clip.read_bytes())
    live = lib / f".a.flac.{os.getppid()}.tmp"  # a run still going (a live process)
    foreign = lib / f".notes.txt.{_dead_pid()}.tmp"  # not a copy of an audio file: not ours
    for p in (live, foreign):
        p.write_bytes(b"x")
    assert tagging.leftovers(lib) == [stale]
    r = cli(lib, "--from", db)  # a dry run says so and removes nothing
    assert r.exit_code == 0 and f"left over {stale}: the temp copy of a killed melgenre tag run" in r.output, r.output
    assert stale.exists()
    r = cli(lib, "--from", db, "--write", "--log", tmp_path / "log.jsonl")
    assert r.exit_code == 0 and f"removed {stale}" in r.output, r.output
    assert not stale.exists() and live.exists() and foreign.exists()
    assert tagging.genre_text(mutagen.File(clip)) == "Rock"


def test_genre_now_is_shown_for_skipped_files(tmp_path):
    lib = tmp_path / "lib"
    changed, missing = make_clip(lib / "changed.flac"), make_clip(lib / "missing.ogg", seed=1)
    for clip, genre in ((changed, "Punk"), (missing, "Ska")):
        f = mutagen.File(clip)
        f["genre"] = genre
        f.save()
    db = write_results(tmp_path / "r.sqlite", [result_row(changed)])
    os.utime(changed, ns=(0, changed.stat().st_mtime_ns + 10**9))  # touched since the prediction
    assert {c.path.name: (c.old, c.action) for c in tagging.plan(lib, db, replace=True)} == {
        "changed.flac": ("Punk", "skip"), "missing.ogg": ("Ska", "skip")}
    r = cli(lib, "--from", db, "--replace")
    assert r.exit_code == 0 and "Punk" in r.output and "Ska" in r.output, r.output


def test_verify_keeps_the_original_when_the_audio_would_differ(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "lib" / "a.wav")
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    original = clip.read_bytes()
    calls = iter(["digest of the original", "another digest of the copy"])
    monkeypatch.setattr(audio, "sample_digest", lambda path, name=None: next(calls))
    (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert (change.action, change.reason) == ("failed", "audio decoded differently after tagging; file left as it was")
    assert clip.read_bytes() == original


def test_verify_compares_the_audio_in_bounded_memory(tmp_path):
    """The copy and the check that the audio decodes the same read the files block by block: the peak of
    Python's allocations stays far below one decoded copy of the file (a 3-hour mix is 10 GB decoded)."""
    import tracemalloc

    sr, seconds = 22_050, 240
    clip = tmp_path / "lib" / "long.flac"
    clip.parent.mkdir()
    t = np.arange(sr * seconds) / sr
    sf.write(clip, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1), sr,
             subtype="PCM_16")
    decoded = sr * seconds * 2 * 4  # float32 stereo: 42 MB
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    changes = tagging.plan(tmp_path / "lib", db)
    tracemalloc.start()
    try:
        (change,) = tagging.apply(changes, tmp_path / "log.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert change.action == "write" and tagging.genre_text(mutagen.File(clip)) == "Rock"
    assert peak < decoded / 10, f"{peak / 1e6:.1f} MB"


def _acl_reading(uid: int) -> bytes:
    """A POSIX access ACL (the ``system.posix_acl_access`` value) that also lets user ``uid`` read the file."""
    import struct

    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_extended_attributes_and_acls_survive_tagging_and_undo(tmp_path):
    clip = make_clip(tmp_path / "lib" / "a.flac")
    clip.chmod(0o644)
    try:
        os.setxattr(clip, "user.xdg.tags", b"red,work")  # a file manager's tags (Finder's are xattrs too)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"no user extended attributes here ({getattr(exc, 'strerror', None) or exc})")
    os.setxattr(clip, "user.melgenre.test", b"\x00\x01 binary")
    try:
        os.setxattr(clip, "system.posix_acl_access", _acl_reading(65534))
    except OSError:  # a filesystem without POSIX ACLs: the user.* attributes are still checked
        pass
    kept = {name: os.getxattr(clip, name) for name in os.listxattr(clip)}
    db = write_results(tmp_path / "r.sqlite", [result_row(clip)])
    (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert change.action == "write" and tagging.genre_text(mutagen.File(clip)) == "Rock"
    assert {name: os.getxattr(clip, name) for name in os.listxattr(clip)} == kept
    assert [u.action for u in tagging.undo(tmp_path / "log.jsonl")] == ["restored"]
    assert {name: os.getxattr(clip, name) for name in os.listxattr(clip)} == kept and clip.stat().st_mode & 0o777 == 0o644
    # a folder whose default ACL new files inherit: the copy does not keep an access ACL the file did not have
    plain = make_clip(tmp_path / "shared" / "b.flac")
    try:
        os.setxattr(plain.parent, "system.posix_acl_default", _acl_reading(65534))
    except OSError:
        return
    db = write_results(tmp_path / "s.sqlite", [result_row(plain)])
    (change,) = tagging.apply(tagging.plan(tmp_path / "shared", db), tmp_path / "log2.jsonl")
    assert change.action == "write" and "system.posix_acl_access" not in os.listxattr(plain)


def test_mode_mtime_and_hard_links(tmp_path):
    lib = tmp_path / "lib"
    a, b = make_clip(lib / "a.mp3"), make_clip(lib / "b.mp3", seed=1)
    a.chmod(0o640)
    os.utime(a, ns=(10**18, 10**18))
    os.link(b, tmp_path / "b-link.mp3")
    db = write_results(tmp_path / "r.sqlite", [result_row(a), result_row(b)])
    changes = tagging.apply(tagging.plan(lib, db), tmp_path / "log.jsonl", keep_mtime=True)
    assert [(ch.action, ch.reason) for ch in changes] == [
        ("write", ""), ("skip", "hard-linked (rewriting it would split the links)")]
    assert a.stat().st_mode & 0o777 == 0o640 and a.stat().st_mtime_ns == 10**18
    assert tagging.genre_text(mutagen.File(a)) == "Rock"


def test_bad_inputs_are_one_line_errors(tmp_path):
    make_clip(tmp_path / "lib" / "a.flac")
    (tmp_path / "results.jsonl").write_text('{"path": "a.flac"}\n')
    r = cli(tmp_path / "lib", "--from", tmp_path / "results.jsonl")
    assert r.exit_code == 2
    assert "results.jsonl: not a SQLite results database" in r.output and "Traceback" not in r.output
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(MelgenreError, match="other.sqlite: not a melgenre results database"):
        tagging.plan(tmp_path / "lib", tmp_path / "other.sqlite")
    (tmp_path / "bad.jsonl").write_text("nonsense\n{}\n")
    r = cli("--undo", tmp_path / "bad.jsonl")
    assert r.exit_code == 2 and "bad.jsonl: not a melgenre tag log (line 1 is not JSON)" in r.output
    (tmp_path / "partial.jsonl").write_text('{"op": "tag", "path": "/x", "before": {}}\n{}\n')
    r = cli("--undo", tmp_path / "partial.jsonl")
    assert r.exit_code == 2 and "partial.jsonl: not a melgenre tag log (line 1 is not a tag entry)" in r.output
    assert cli(tmp_path / "lib").exit_code == 2  # no --from


def test_undo_of_a_file_that_is_not_a_tag_log_says_so_in_one_line(tmp_path):
    clip = make_clip(tmp_path / "lib" / "a.flac")
    db = write_results(tmp_path / "results.sqlite", [result_row(clip)])  # binary: not UTF-8 text
    (tmp_path / "garbage.jsonl").write_text("this is not a tag log\n")  # one complete line: not a torn entry
    (tmp_path / "empty.jsonl").write_text("")
    for log in (db, tmp_path / "garbage.jsonl", tmp_path / "empty.jsonl"):
        r = cli("--undo", log)
        assert r.exit_code == 2, (log, r.output, r.exception)
        assert len(r.output.strip().splitlines()) == 1 and f"{log.name}: not a melgenre tag log" in r.output, r.output
    assert tagging.genre_text(mutagen.File(clip)) == ""


def test_relative_paths_and_torn_log_line(tmp_path):
    clip = make_clip(tmp_path / "lib" / "sub" / "a.opus")
    row = result_row(clip) | {"path": "sub/a.opus"}
    db = write_results(tmp_path / "r.sqlite", [row])
    (change,) = tagging.apply(tagging.plan(tmp_path / "lib", db), tmp_path / "log.jsonl")
    assert change.action == "write"
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"op": "tag", "path": "/x", "bef')  # a crash while appending
    assert [u.action for u in tagging.undo(tmp_path / "log.jsonl")] == ["restored"]
    assert tagging.genre_text(mutagen.File(clip)) == ""


# -- end to end on real clips ------------------------------------------------------------------------

REAL_CLIPS = {".wav": "classical.00001", ".flac": "jazz.00002", ".ogg": "metal.00003", ".opus": "rock.00004",
              ".mp3": "blues.00005", ".aiff": "disco.00001", ".m4a": "reggae.00002"}


def real_library(root: Path) -> dict[Path, str]:
    """One real dev clip per supported format (re-encoded from its FLAC), and each file's genre."""
    import soxr

    lib = {}
    for suffix, name in REAL_CLIPS.items():
        genre = name.split(".")[0]
        y, sr = sf.read(shared_path("gtzan-dev", genre, f"{name}.flac"), dtype="float32")
        path = root / f"{name.replace('.', '_')}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".m4a":
            if shutil.which("ffmpeg") is None:
                pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
            wav = root.parent / f"{name}.wav"
            sf.write(wav, y, sr)
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
        elif suffix == ".opus":  # Opus runs at 48 kHz
            sf.write(path, soxr.resample(y, sr, 48_000), 48_000, format="OGG", subtype="OPUS")
        else:
            sf.write(path, y, sr, format=SOUNDFILE_FORMATS[suffix][0], subtype=SOUNDFILE_FORMATS[suffix][1])
        lib[path] = genre
    return lib


def test_predict_tag_and_undo_a_library_of_training_clips_in_every_format(tmp_path):
    """Issue 13's three commands end to end with the shipped default model: predict a folder of
    real GTZAN clips in every supported format into a database, resume, tag the files, undo.
    The clips are the model's training clips: its labels and confidence on them are optimistic."""
    lib = real_library(tmp_path / "lib")
    db, log = tmp_path / "results.sqlite", tmp_path / "log.jsonl"
    before = {p: (samples(p), tag_snapshot(p), hashlib.sha256(p.read_bytes()).hexdigest()) for p in lib}

    r = runner.invoke(app, ["predict", str(tmp_path / "lib"), "--out", str(db), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "7 files: 7 predicted this run (0 failed)" in r.output
    rows = {Path(row["path"]): row for row in result_rows(db)}
    assert set(rows) == set(lib)
    for path, genre in lib.items():  # training clips of the default model: each decoder must give it the music
        assert rows[path]["error"] is None and rows[path]["label"] == genre, (path.name, rows[path])
    r = runner.invoke(app, ["predict", str(tmp_path / "lib"), "--out", str(db), "--no-progress"])
    assert r.exit_code == 0 and "0 predicted this run (0 failed), 7 unchanged" in r.output, r.output

    r = cli(tmp_path / "lib", "--from", db)  # dry run
    assert r.exit_code == 0, r.output
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == before[p][2] for p in lib)

    eligible = {p for p, row in rows.items()
                if not row["flags"] and row["confidence"] >= tagging.DEFAULT_MIN_CONFIDENCE}
    assert len(eligible) >= 5  # confident training clips: at most two may come out "unsure"
    r = cli(tmp_path / "lib", "--from", db, "--write", "--log", log)
    assert r.exit_code == 0, r.output
    assert f"{len(eligible)} written" in r.output
    for path, genre in lib.items():
        written = tagging.genre_text(mutagen.File(path))
        assert written == (tagging.genre_name(genre) if path in eligible else ""), path.name
        assert np.array_equal(samples(path), before[path][0]), f"{path.name}: audio changed"

    r = cli("--undo", log)
    assert r.exit_code == 0, r.output
    assert f"{len(eligible)} restored" in r.output
    for path in lib:
        assert tag_snapshot(path) == before[path][1], path.name
        assert np.array_equal(samples(path), before[path][0]), f"{path.name}: audio changed"
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == sorted(p.name for p in lib)  # no temp file left
