import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from melgenre import __version__, audio, features, store, synth
from melgenre.errors import StoreError
from melgenre.store import MelStore


def _contents(path: Path) -> dict:
    """Everything in a store that must be identical between two equivalent runs."""
    with MelStore(path) as s:
        attrs = {k: s.attrs[k] for k in ("classes", "preset", "input_hash", "skipped", "n_tracks", "format_version")}
        return {"x": s.x[:], "y": s.y, "track_id": s.track_id, "chunk_index": s.chunk_index,
                "path": s._h5()["path"].asstr()[:], "tracks": s.tracks(), "attrs": attrs}


def _assert_same(a: dict, b: dict) -> None:
    for key in ("x", "y", "track_id", "chunk_index", "path"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in a["tracks"]:
        np.testing.assert_array_equal(a["tracks"][key], b["tracks"][key], err_msg=f"tracks/{key}")
    assert a["attrs"] == b["attrs"]


def test_prepare_round_trip(small_corpus, tmp_path):
    out = tmp_path / "feat.h5"
    report = store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    assert report.n_tracks == 10 and report.computed == 11 and report.resumed == 0
    assert report.skipped == [{"path": "class01/broken.wav", "reason": "not a decodable audio file (Format not recognised)"}]
    assert report.silent == ["class02/quiet"]
    assert report.tracks_per_class == {"class00": 3, "class01": 3, "class02": 4}
    assert not (tmp_path / "feat.h5.parts").exists() and not list(tmp_path.glob(".*tmp"))

    with MelStore(out) as s:
        assert s.classes == ["class00", "class01", "class02"]
        assert s.preset == features.get_preset("fast")
        assert s.attrs["melgenre_version"] == __version__ and len(s.attrs["input_hash"]) == 64
        assert s.x.dtype == np.float16 and s.x.chunks == (1, 128, 130) and s.x.compression is None
        # 4.6-s clips -> 2 chunks; the 3-s silent clip -> 1 chunk
        assert len(s) == 9 * 2 + 1 and s.image_shape == (128, 130)
        assert list(s.chunk_index[:2]) == [0, 1] and s.track_id[0] == "class00/class00.00000"
        image, label = s[0]
        assert image.dtype == np.float32 and image.shape == (128, 130) and label == 0
        # the stored row equals a fresh computation (up to float16 rounding)
        clip = audio.load(small_corpus / "class00" / "class00.00000.wav")
        fresh = features.mel_images(features.fit_to_preset(clip.samples, s.preset), s.preset)
        np.testing.assert_allclose(image, fresh[0], atol=1e-3)
        tracks = s.tracks()
        assert list(tracks["n_rows"][:3]) == [2, 2, 2] and tracks["first_row"][1] == 2
        assert tracks["sha256"][0] == __import__("hashlib").sha256(
            (small_corpus / "class00" / "class00.00000.wav").read_bytes()).hexdigest()
        batch = s.images([3, 1, 2])
        np.testing.assert_array_equal(batch[1], s[1][0])


def test_worker_compressed_chunks_are_what_h5py_writes(small_corpus, tmp_path):
    """Rows compressed by the workers are byte for byte the chunks h5py's gzip + shuffle makes."""
    out = tmp_path / "feat.h5"
    store.prepare(small_corpus, "v1", out, workers=1, progress=False, compression="gzip")
    plain = tmp_path / "plain.h5"
    store.prepare(small_corpus, "v1", plain, workers=1, progress=False)
    with h5py.File(plain) as f:
        assert f["x"].compression is None and f["x"].chunks == (1, 416, 416)
        plain_rows = f["x"][:]
    assert plain.stat().st_size > 1.3 * out.stat().st_size
    with h5py.File(out) as f:
        x = f["x"]
        np.testing.assert_array_equal(x[:], plain_rows)
        assert x.compression == "gzip" and x.compression_opts == store.GZIP_LEVEL and x.shuffle
        rows = x[:3]
        with h5py.File(tmp_path / "ref.h5", "w") as g:
            ref = g.create_dataset("x", data=rows, chunks=(1, *rows.shape[1:]), compression="gzip",
                                   compression_opts=store.GZIP_LEVEL, shuffle=True)
            for i in range(3):
                assert x.id.read_direct_chunk((i, 0, 0)) == ref.id.read_direct_chunk((i, 0, 0))
    with pytest.raises(StoreError, match="unknown compression 'zstd'; use one of none, gzip"):
        store.prepare(small_corpus, "v1", tmp_path / "z.h5", workers=1, progress=False, compression="zstd")
    assert rows.dtype == np.float16 and rows.shape == (3, 416, 416)
    assert 0 <= rows.min() and rows.max() == 1  # minmax rows, read back through the filters


def test_lazy_in_memory_and_pickle(small_corpus, tmp_path):
    out = tmp_path / "f.h5"
    store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    lazy, ram = MelStore(out), MelStore(out, in_memory=True)
    for i in (0, 5, len(lazy) - 1):
        np.testing.assert_array_equal(lazy[i][0], ram[i][0])
    clone = pickle.loads(pickle.dumps(lazy))  # what DataLoader workers receive
    assert clone._file is None
    np.testing.assert_array_equal(clone[3][0], lazy[3][0])
    lazy.close(), ram.close(), clone.close()


def test_parallel_equals_serial_and_rerun_is_up_to_date(synth_corpus, tmp_path):
    serial = store.prepare(synth_corpus, "v1", tmp_path / "a.h5", workers=1, progress=False)
    parallel = store.prepare(synth_corpus, "v1", tmp_path / "b.h5", workers=2, progress=False)
    assert serial.n_rows == parallel.n_rows == 24
    _assert_same(_contents(tmp_path / "a.h5"), _contents(tmp_path / "b.h5"))
    again = store.prepare(synth_corpus, "v1", tmp_path / "a.h5", workers=1, progress=False)
    assert again.up_to_date and again.computed == 0
    with pytest.raises(StoreError, match="already exists and was made from other inputs"):
        store.prepare(synth_corpus, "fast", tmp_path / "a.h5", workers=1, progress=False)
    store.prepare(synth_corpus, "fast", tmp_path / "a.h5", workers=1, progress=False, overwrite=True)
    assert MelStore(tmp_path / "a.h5").preset.name == "fast"


def test_failed_assembly_leaves_no_output(small_corpus, tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    calls = {"n": 0}
    real = store._read_part

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk on fire")
        return real(path)

    monkeypatch.setattr(store, "_read_part", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(store, "_read_part", real)  # the parts survive: the rerun resumes them all
    report = store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    assert report.resumed == 11 and report.computed == 0 and out.exists()


def test_resume_after_kill(tmp_path):
    corpus = tmp_path / "corpus"
    synth.write_corpus(corpus, n_classes=3, per_class=8, seconds=8.0, seed=11)
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    cmd = [sys.executable, "-m", "melgenre", "prepare", str(corpus), "--preset", "v2", "--out", str(out),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.npz"))) < 5 and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("*.npz")))
    assert not out.exists(), "the job finished before it could be killed"
    assert 5 <= done_before < 24

    resumed = store.prepare(corpus, "v2", out, workers=1, progress=False)
    assert resumed.resumed >= done_before and resumed.resumed + resumed.computed == 24
    clean = store.prepare(corpus, "v2", tmp_path / "clean.h5", workers=1, progress=False)
    assert clean.resumed == 0
    _assert_same(_contents(out), _contents(tmp_path / "clean.h5"))


def test_stale_parts_of_other_inputs_are_discarded(small_corpus, tmp_path):
    out = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"plan": "something else"}))
    np.savez(parts / "000000.npz", x=np.zeros((1, 2, 2)), info=np.array("{}"))
    report = store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    assert report.resumed == 0 and report.computed == 11


def test_reader_errors(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        MelStore(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        MelStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not a melgenre store"):
        MelStore(tmp_path / "other.h5")


def test_truncated_part_files_are_recomputed(small_corpus, tmp_path, monkeypatch):
    """A part file cut short (a full disk, a copy interrupted) is not a finished track: _part_ok says
    so for every cut, and the rerun computes that track again instead of failing or resuming it."""
    out = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"

    def no_assembly(job):
        raise OSError("stop before assembly")

    monkeypatch.setattr(store, "_assemble", no_assembly)  # keep the parts
    with pytest.raises(OSError, match="stop before assembly"):
        store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    monkeypatch.undo()
    files = sorted(parts.glob("*.npz"))
    assert len(files) == 11 and all(store._part_ok(p) for p in files)
    assert not store._part_ok(parts / "missing.npz")
    victim = files[3]
    data = victim.read_bytes()
    for cut in (0, 1, 4, 30, len(data) // 2, len(data) - 22, len(data) - 1):
        victim.write_bytes(data[:cut])
        assert not store._part_ok(victim), cut
    victim.write_bytes(data[:len(data) // 2])
    report = store.prepare(small_corpus, "fast", out, workers=1, progress=False)
    assert report.resumed == 10 and report.computed == 1
    _assert_same(_contents(out), _contents(store.prepare(small_corpus, "fast", tmp_path / "clean.h5", workers=1,
                                                         progress=False).out))


def test_augment_variants_audio():
    sr = 16_000
    y = audio.fix_length(0.3 * np.sin(2 * np.pi * 440 * np.arange(6 * sr) / sr).astype(np.float32), 6 * sr)
    fast, slow = audio.augment(y, sr, "fast"), audio.augment(y, sr, "slow")
    assert len(fast) == pytest.approx(len(y) / 1.06, abs=2) and len(slow) == pytest.approx(len(y) * 1.06, abs=2)
    spectrum = lambda z: np.argmax(np.abs(np.fft.rfft(z[:sr]))) * sr / sr  # noqa: E731  (1-Hz bins)
    assert spectrum(fast) == pytest.approx(440 * 1.06, abs=2) and spectrum(slow) == pytest.approx(440 / 1.06, abs=2)
    np.testing.assert_array_equal(audio.augment(y, sr, "offset"), y[int(1.5 * sr):])
    for name in ("bright", "dark"):
        z = audio.augment(y, sr, name)
        assert z.dtype == np.float32 and len(z) == len(y) and not np.allclose(z, y)
        assert np.sqrt(np.mean(z ** 2)) == pytest.approx(np.sqrt(np.mean(y ** 2)), rel=1e-4)
        np.testing.assert_array_equal(z, audio.augment(y, sr, name))  # deterministic
    with pytest.raises(ValueError, match="unknown augmentation 'reverse'"):
        audio.augment(y, sr, "reverse")


def test_prepare_with_augment_adds_training_only_variants(small_corpus, tmp_path):
    from melgenre.config import DataConfig
    from melgenre.data import MelDataModule

    plain, out = tmp_path / "plain.h5", tmp_path / "aug.h5"
    store.prepare(small_corpus, "fast", plain, workers=1, progress=False)
    report = store.prepare(small_corpus, "fast", out, workers=1, progress=False, augment=("fast", "offset"))
    assert report.n_tracks == 10
    with MelStore(plain) as p, MelStore(out) as s:
        assert json.loads(s.attrs["augment"]) == ["fast", "offset"] and "augment" not in p.attrs
        np.testing.assert_array_equal(p.variant, 0)
        first = s.track_id == "class00/class00.00000"
        # 4.6 s -> 2 chunks of 3 s every 1.5 s; 6 % faster (4.34 s) -> 1; 1.5 s later (3.1 s) -> 1
        assert list(s.variant[first]) == [0, 0, 1, 2] and list(s.chunk_index[first]) == [0, 1, 0, 0]
        assert len(s) == len(p) + int((s.variant > 0).sum())
        np.testing.assert_array_equal(s.images(np.flatnonzero(s.variant == 0)), p.images(slice(None)))
        assert not np.allclose(s.images(np.flatnonzero(first)[2:3]), p.images(np.flatnonzero(p.track_id == "class00/class00.00000")[:1]))
        ids = list(dict.fromkeys(s.track_id))
    dm = MelDataModule(out, {"train": ids[:6], "val": ids[6:8], "test": ids[8:]}, DataConfig())
    train = dm.rows_for("train")
    assert set(dm.store.variant[train]) == {0, 1, 2}
    for split in ("val", "test"):
        rows = dm.rows_for(split)
        assert len(rows) > 0 and set(dm.store.variant[rows]) == {0}
    with pytest.raises(StoreError, match="augment: reverse"):
        store.prepare(small_corpus, "fast", tmp_path / "x.h5", workers=1, progress=False, augment=("reverse",))
    with pytest.raises(StoreError, match="other inputs or settings"):  # another augment list is another plan
        store.prepare(small_corpus, "fast", out, workers=1, progress=False, augment=("fast",))
