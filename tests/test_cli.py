"""The command line end to end, through Typer's CliRunner (and one real subprocess)."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from melgenre import synth
from melgenre.cli import app
from melgenre.store import MelStore

from conftest import shared_path

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_synth_prepare_info(tmp_path):
    data, out = tmp_path / "data", tmp_path / "feat.h5"
    r = invoke("synth", data, "--classes", 3, "--per-class", 2, "--seconds", 2, "--seed", 5)
    assert r.exit_code == 0, r.output
    assert "wrote 6 clips" in r.output and len(list(data.rglob("*.wav"))) == 6
    r = invoke("prepare", data, "--preset", "v1", "--out", out, "--workers", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "computed 6 tracks" in r.output and "skipped 0 undecodable" in r.output
    with MelStore(out) as s:
        assert s.x.shape == (6, 416, 416) and s.classes == ["class00", "class01", "class02"]
    r = invoke("prepare", data, "--preset", "v1", "--out", out, "--workers", 1, "--no-progress")
    assert r.exit_code == 0 and "already up to date" in r.output
    r = invoke("info", out)
    assert r.exit_code == 0, r.output
    assert "(6, 416, 416) float16, uncompressed" in r.output and "class02" in r.output and "n_mels=64" in r.output
    gz = tmp_path / "gz.h5"
    r = invoke("prepare", data, "--preset", "v1", "--out", gz, "--workers", 1, "--no-progress", "--compression", "gzip")
    assert r.exit_code == 0, r.output
    assert "float16, gzip" in invoke("info", gz).output
    with MelStore(out) as plain, MelStore(gz) as packed:
        np.testing.assert_array_equal(plain.x[:], packed.x[:])
    r = invoke("prepare", data, "--out", gz, "--no-progress", "--compression", "lz4")
    assert r.exit_code == 2 and "unknown compression 'lz4'" in r.output


def test_prepare_reports_skipped_and_silent(small_corpus, tmp_path):
    r = invoke("prepare", small_corpus, "-p", "fast", "-o", tmp_path / "f.h5", "-w", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "skipped 1 undecodable file(s); 1 silent clip(s)" in r.output
    assert "class01/broken.wav: not a decodable audio file" in r.output
    assert "silent class02/quiet" in r.output


def test_default_output_name(synth_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("prepare", synth_corpus, "-p", "fast", "-w", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / f"{synth_corpus.name}-fast.h5").is_file()


def test_show_writes_png(tmp_path):
    data = tmp_path / "d"
    invoke("synth", data, "--classes", 2, "--per-class", 1, "--seconds", 4)
    out = tmp_path / "spec.png"
    r = invoke("show", data / "class01" / "class01.00000.wav", "--preset", "fast", "--out", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["info", "missing.h5"], "missing.h5: no such file"),
    (["prepare", "nowhere"], "nowhere: no such directory"),
    (["prepare", "afile.txt"], "afile.txt: is a file, not a corpus folder"),
    (["prepare", ".", "--preset", "v7"], "unknown preset 'v7'"),
    (["show", "nothing.wav"], "nothing.wav: no such file"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("not a folder")
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1


def test_negative_workers_are_refused(synth_corpus, tmp_path):
    r = runner.invoke(app, ["prepare", str(synth_corpus), "--workers", "-3", "--out", str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "Invalid value for '--workers'" in r.output and not (tmp_path / "x.h5").exists()


def test_os_errors_are_one_line_naming_the_path(synth_corpus, tmp_path):
    """An output path that is a directory (as a read-only or full disk would): one line, exit 2."""
    taken = tmp_path / "taken.npz"
    taken.mkdir()
    wav = next(synth_corpus.rglob("*.wav"))
    r = runner.invoke(app, ["embed", str(wav), "--out", str(taken)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "taken.npz" in lines[0] and "Is a directory" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["taken.npz"]  # no temp file left behind


def test_show_rejects_corrupt_audio_in_a_real_process(tmp_path):
    bad = tmp_path / "renamed.wav"
    bad.write_text("just text")
    proc = subprocess.run([sys.executable, "-m", "melgenre", "show", str(bad), "-o", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: renamed.wav: not a decodable audio file (Format not recognised)"
    assert not (tmp_path / "x.png").exists()


def test_help_shows_defaults():
    r = invoke("prepare", "--help")
    assert r.exit_code == 0 and "default: v1" in r.output.replace("[", "").replace("]", "")


@pytest.mark.parametrize("command", ["prepare", "predict", "fuse", "compare", "score", "cv", "embed", "train", "serve", "bench", "tag",
                                     "index", "similar"])
def test_help_has_no_stray_metavars(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "--help" in r.output
    assert "<bool>" not in r.output  # flags take no value
    assert "...}..." not in r.output and "...]..." not in r.output  # one ellipsis per repeated argument


def test_prepare_real_clips_v1_v2(tmp_path):
    """A few real GTZAN clips (and the corrupt one) through prepare with both report presets."""
    dev = shared_path("gtzan-dev")
    corpus = tmp_path / "real"
    for genre in ("blues", "metal", "classical"):
        (corpus / genre).mkdir(parents=True)
        (corpus / genre / f"{genre}.00001.flac").symlink_to(dev / genre / f"{genre}.00001.flac")
    (corpus / "jazz").mkdir()
    (corpus / "jazz" / "jazz.00054.wav").symlink_to(shared_path("bad", "jazz.00054.wav"))
    for preset, shape in (("v1", (416, 416)), ("v2", (640, 640))):
        out = tmp_path / f"{preset}.h5"
        r = invoke("prepare", corpus, "-p", preset, "-o", out, "-w", 2, "--no-progress")
        assert r.exit_code == 0, r.output
        assert "jazz/jazz.00054.wav: not a decodable audio file" in r.output
        assert "dropped class jazz: none of its files could be decoded" in r.output
        with MelStore(out) as s:  # jazz had only the corrupt file: dropped, labels renumbered
            assert s.x.shape == (3, *shape) and s.classes == ["blues", "classical", "metal"]
            assert list(s.y) == [0, 1, 2] and len(s.skipped) == 1
            images = s.images(slice(None))
            assert np.allclose(images.min(axis=(1, 2)), 0) and np.allclose(images.max(axis=(1, 2)), 1, atol=1e-3)


def _one_line_error(r, *parts):
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and all(p in lines[0] for p in parts), lines


def test_prepare_into_a_directory_is_refused_before_any_work(synth_corpus, tmp_path):
    (tmp_path / "out.h5").mkdir()
    for extra in ([], ["--overwrite"]):
        r = runner.invoke(app, ["prepare", str(synth_corpus), "--out", str(tmp_path / "out.h5"), *extra])
        _one_line_error(r, "out.h5: is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no .parts left behind


@pytest.mark.parametrize("code,text", [("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system"),
                                       ("EACCES", "Permission denied")])
def test_prepare_on_a_full_disk_says_what_is_kept(synth_corpus, tmp_path, monkeypatch, code, text):
    """A full, read-only or forbidden disk while assembling: one line naming the file, parts kept."""
    import errno
    import os

    from melgenre import store

    def full(job):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(job.out))

    monkeypatch.setattr(store, "_assemble", full)
    out = tmp_path / "x.h5"
    r = runner.invoke(app, ["prepare", str(synth_corpus), "--preset", "fast", "--out", str(out), "--workers", "1",
                           "--no-progress"])
    _one_line_error(r, f"x.h5: {text}", "24 finished tracks are kept in", "rerun the same command")
    assert len(list((tmp_path / "x.h5.parts").glob("*.npz"))) == 24


def test_a_class_without_decodable_files_is_dropped(tmp_path):
    from melgenre import synth
    from melgenre.store import MelStore

    root = tmp_path / "c"
    synth.write_corpus(root, n_classes=3, per_class=2, seconds=3.5, seed=2)
    for f in (root / "class01").iterdir():
        f.write_bytes(b"broken")
    r = runner.invoke(app, ["prepare", str(root), "--preset", "fast", "--out", str(tmp_path / "c.h5"), "--workers", "1"])
    assert r.exit_code == 0 and "dropped class class01: none of its files could be decoded" in r.output
    with MelStore(tmp_path / "c.h5") as s:
        assert s.classes == ["class00", "class02"] and sorted(set(s.y.tolist())) == [0, 1]
        assert [s.classes[i] for i in s.tracks()["label"]] == ["class00", "class00", "class02", "class02"]


@pytest.mark.parametrize("damage,message", [
    ("truncate", "unreadable HDF5 file"),
    ("newer", "store format 99 is newer than this melgenre reads"),
])
def test_damaged_or_newer_stores_are_one_line(synth_corpus, tmp_path, damage, message):
    import h5py

    path = tmp_path / "s.h5"
    assert runner.invoke(app, ["prepare", str(synth_corpus), "--preset", "fast", "--out", str(path),
                               "--workers", "1"]).exit_code == 0
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with h5py.File(path, "a") as f:
            f.attrs["format_version"] = 99
    _one_line_error(runner.invoke(app, ["info", str(path)]), "s.h5", message)


def test_show_figure_has_units_a_legend_and_a_fixed_colour_scale():
    import matplotlib.pyplot as plt

    from melgenre import features
    from melgenre.display import mel_figure

    preset = features.get_preset("fast")
    fig = mel_figure(np.zeros(preset.sr * 6, dtype=np.float32), preset)  # silent: a flat image
    ax, bar = fig.axes
    assert ax.get_xlabel() == "time (s)" and "Hz" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["start of a 3-s model window"]
    assert bar.get_ylim() == (0.0, 1.0)  # not 0.9-1.1 around a flat image
    plt.close(fig)


def test_a_newline_in_a_file_name_stays_on_its_error_line(tiny_card, tmp_path):
    """File names are shown with control characters escaped (a newline as \\n): each error stays one line."""
    songs = tmp_path / "songs"
    songs.mkdir()
    bad = songs / "bad\nname.wav"
    bad.write_text("not audio")
    sf.write(songs / "good.wav", synth.synth_clip(0, 3, seconds=3.0, rng=np.random.default_rng(0)), 22_050)
    shown = str(bad).replace("\n", "\\n")
    r = invoke("show", bad, "--out", tmp_path / "x.png")
    _one_line_error(r, "bad\\nname.wav: not a decodable audio file")
    for extra in ([], ["--out", tmp_path / "r.sqlite"]):
        r = invoke("predict", songs, "--model", tiny_card, "--workers", 0, "--no-progress", *extra)
        assert r.exit_code == 1, r.output
        errors = [line for line in r.stderr.splitlines() if line.strip()]
        assert errors == [f"error: {shown}: not a decodable audio file (Format not recognised)"], r.stderr
    r = invoke("tag", songs, "--from", tmp_path / "r.sqlite")
    assert r.exit_code == 0 and "bad\\nname.wav" in r.output and "name.wav" not in r.output.replace("bad\\nname.wav", "")


def test_predict_prints_one_line_per_bad_mp3_and_no_decoder_chatter(tiny_card, tmp_path, capfd):
    """libmpg123's notes ("Illegal Audio-MPEG-Header", "Trying to resync", "Xing stream size") go to file
    descriptor 2, below Python: capfd sees them; melgenre keeps them off, so its own line stands alone."""
    from test_audio import damaged_mp3

    songs = tmp_path / "songs"
    songs.mkdir()
    damaged_mp3(songs / "resync.mp3")  # decodes, with notes
    (songs / "junk.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2000))  # fails
    for extra in ([], ["--out", tmp_path / "r.sqlite"]):
        r = invoke("predict", songs, "--model", tiny_card, "--workers", 0, "--no-progress", *extra)
        assert r.exit_code == 1, r.output
        errors = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith(f"error: {songs / 'junk.mp3'}: not a decodable audio file")
        assert ("2 predicted this run (1 failed)" if extra else "resync.mp3") in r.stdout
        assert capfd.readouterr().err == ""
