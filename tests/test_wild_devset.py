"""tools/wild_devset.py: label mapping, reserved-clip exclusion (by path and by md5), idempotence, on a
fake mirror made here; and, when the real set is present, that its manifest holds no reserved clip."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("wild_devset", ROOT / "tools" / "wild_devset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["wild_devset"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


wd = _tool()


@pytest.mark.parametrize("label, genre", [
    ("Jazz", "jazz"), ("Jazz; Vocal", "jazz"), ("International; Reggae", "reggae"), ("Rap", "hiphop"),
    ("Holiday; Country", "country"), ("Pop/Rock", None), ("Electronic; Pop/Rock", None), ("Blues; R&B", None),
    ("Blues; Jazz; Vocal", None), ("Electronic; Rap", None), ("New Age; Electronic", "other:new age"),
    ("Vocal", "other:vocal"), ("International; Latin", "other:latin"), ("", None),
])
def test_map_allmusic(label, genre):
    assert wd.map_allmusic(label) == genre


def test_map_fma_and_emotify():
    assert wd.map_fma("Hip-Hop") == "hiphop" and wd.map_fma("Reggae - Dub") == "reggae"
    assert wd.map_fma("Folk") == "other:folk" and wd.map_fma("") is None
    assert wd.map_emotify("classical") == "classical" and wd.map_emotify("electronic") == "other:electronic"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _commit(repo: Path, files: dict[str, bytes], message: str) -> None:
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-m", message)


def _repo(mirrors: Path, name: str) -> Path:
    repo = mirrors / name.replace("/", "+") / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    return repo


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture
def fake(tmp_path):
    mirrors = tmp_path / "mirrors"
    emo = _repo(mirrors, "sergi-andreu/ProjectMusicInformatics")
    reserved_bytes = b"ID3 reserved rock clip"
    _commit(emo, {"data/emotifymusic/classical/1.mp3": b"ID3 classical one",
                  "data/emotifymusic/pop/2.mp3": b"ID3 pop two",
                  "data/emotifymusic/electronic/3.mp3": b"ID3 electronic three",
                  "data/emotifymusic/rock/4.mp3": reserved_bytes}, "first")
    # a later commit: the reserved clip's bytes again under another name (must go by md5), and the
    # reserved path itself removed from the newest tree (must still go: every commit is read)
    (emo / "data/emotifymusic/rock/4.mp3").unlink()
    _commit(emo, {"data/emotifymusic/rock/5.mp3": reserved_bytes}, "second")
    am = _repo(mirrors, "Famelgas/MULT_TP2")
    meta = ('"Song","Artist","GenresStr"\n"MT1","Ann","Jazz; Vocal"\n"MT2","Bob","Pop/Rock"\n'
            '"MT3","Cy","New Age; Electronic"\n"MT4","Di","Rap"\n')
    _commit(am, {"MER_audio_taffc_dataset/panda_dataset_taffc_metadata.csv": meta.encode(),
                 "MER_audio_taffc_dataset/Q1/MT1.mp3": b"ID3 jazz", "Musics/MT1.mp3": b"ID3 jazz",
                 "MER_audio_taffc_dataset/Q2/MT2.mp3": b"ID3 poprock", "MER_audio_taffc_dataset/Q3/MT3.mp3": b"ID3 newage",
                 "MER_audio_taffc_dataset/Q4/MT4.mp3": b"ID3 rap", "Musics/MT4.mp3": b"ID3 rap"}, "first")
    reserved = tmp_path / "RESERVED.txt"
    reserved.write_text("# comment\n"
                        f"sergi-andreu/ProjectMusicInformatics\tdata/emotifymusic/rock/4.mp3\t{_md5(reserved_bytes)}\n"
                        f"Famelgas/MULT_TP2\tMER_audio_taffc_dataset/Q4/MT4.mp3\t{_md5(b'ID3 rap')}\n")
    return mirrors, reserved, tmp_path / "out"


def test_build_maps_excludes_and_is_idempotent(fake):
    mirrors, reserved, out = fake
    result = wd.build(out, mirrors, reserved, quiet=True)
    rows = {(r["corpus"], r["clip"]): r for r in result["rows"]}
    assert set(rows) == {("emotify", "classical/1"), ("emotify", "pop/2"), ("emotify", "electronic/3"),
                         ("allmusic", "MT1"), ("allmusic", "MT3")}
    assert rows["allmusic", "MT1"]["genre"] == "jazz" and rows["allmusic", "MT1"]["artist"] == "Ann"
    assert rows["allmusic", "MT1"]["path"] == "MER_audio_taffc_dataset/Q1/MT1.mp3"  # canonical over Musics/
    assert rows["allmusic", "MT3"]["genre"] == "other:new age"
    assert (out / "allmusic" / "jazz" / "MT1.mp3").read_bytes() == b"ID3 jazz"
    assert (out / "_other" / "emotify" / "electronic" / "electronic-3.mp3").exists()
    assert (out / "_other" / "allmusic" / "new-age" / "MT3.mp3").exists()
    stats = result["stats"]
    assert stats["emotify: reserved by path"] == 1 and stats["emotify: reserved by md5 only (path not listed)"] == 1
    assert stats["allmusic: reserved by path"] == 1  # MT4 and its Musics/ copy: one clip
    assert stats["allmusic: reserved md5, paths not listed (copies), excluded"] == 1
    assert stats["allmusic: ambiguous or unlabelled, not written"] == 1  # Pop/Rock
    bad = {_md5(b"ID3 reserved rock clip"), _md5(b"ID3 rap")}
    assert not bad & {r["md5"] for r in result["rows"]}
    with (out / "manifest.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 5
    # a rerun writes nothing; a stray file is removed
    (out / "emotify" / "pop" / "stray.mp3").write_bytes(b"x")
    again = wd.build(out, mirrors, reserved, quiet=True)
    assert again["stats"]["files written"] == 0 and again["stats"]["stale files removed"] == 1


def test_real_manifest_has_no_reserved_clip():
    data = Path(os.environ.get("MELGENRE_WILD_DATA", "/work/data/wild-dev"))
    shared = Path(os.environ.get("MELGENRE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "manifest.csv").exists() or not (shared / "wild" / "RESERVED.txt").exists():
        pytest.skip("no non-GTZAN dev set (tools/wild_devset.py) or no RESERVED.txt here")
    paths, md5s = wd.read_reserved(shared / "wild" / "RESERVED.txt")
    with (data / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for r in rows:
        assert r["md5"] not in md5s and r["path"] not in paths.get(r["repo"], set())
        assert r["genre"] in wd.GENRES or r["genre"].startswith("other:")
    for r in rows[:: max(1, len(rows) // 40)]:  # a sample of the files: bytes as the manifest says
        assert hashlib.md5((data / r["file"]).read_bytes()).hexdigest() == r["md5"]
