"""Similar tracks: the library index (shapes, incremental updates, resume, refusals, bad files),
exact and faiss search, the `index` / `similar` commands and the Ray path.

The model is the session's tiny melcnn (conftest ``tiny_card``: 3 synthetic classes, preset fast)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from melgenre import similar
from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.similar import Index, build_index

runner = CliRunner()


@pytest.fixture()
def library(tiny_card, tmp_path) -> Path:
    """Six clips (two per class) and a byte copy of one of them, in a private folder."""
    root = tmp_path / "music"
    for src in sorted((tiny_card.parent / "clips").glob("*/*.0000[01].wav")):
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / src.parent.name / src.name)
    shutil.copy2(root / "class01" / "class01.00000.wav", root / "twin.wav")
    return root


@pytest.fixture(scope="module")
def other_card(tmp_path_factory) -> Path:
    """A different (untrained, wider) melcnn for the same classes: another model id."""
    from melgenre.bench import build_untrained_package

    return build_untrained_package(tmp_path_factory.mktemp("other") / "other",
                                   classes=["class00", "class01", "class02"], width=8, seed=3)


def _random_index(path: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Write an index of ``n`` random unit vectors (no audio, no model) and return them."""
    x = similar._normalise(np.random.default_rng(seed).normal(size=(n, dim)))
    rows = [(similar._EmbedJob(f"/lib/t{i:05d}.wav", "", "", i, i), x[i], 1.0) for i in range(n)]
    similar._write(path, None, [], rows, [], "random", "default", dim)
    return x


# -- building ------------------------------------------------------------------------------------

def test_index_shapes_normalisation_and_twin(library, tiny_card, tmp_path):
    from melgenre.predict import load_model

    out = tmp_path / "library.h5"
    report = build_index(library, out, model=tiny_card, workers=1)
    model = load_model(tiny_card)
    assert report.n_tracks == 7 and len(report.added) == 7 and report.computed == 7 and not report.skipped
    index = Index(out)
    assert len(index) == 7 and index.model_id == model.model_id == report.model_id
    with h5py.File(out, "r") as f:
        emb = f["embeddings"][:]
        assert emb.dtype == np.float32 and emb.shape == (7, index.dim) == (7, similar._model_dim(model))
        assert f.attrs["dim"] == index.dim and f["size"].dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert set(index.paths) == {str(p.resolve()) for p in library.rglob("*.wav")}
    assert index.attrs["root"] == str(library.resolve())
    assert not (tmp_path / "library.h5.parts").exists() and not list(tmp_path.glob(".*tmp"))

    # the stored embedding is the mean window embedding of the model, normalised
    clip = library / "class00" / "class00.00001.wav"
    expected, duration = similar.embed_file(model, clip)
    np.testing.assert_allclose(index.embeddings_at([index.row(clip)])[0], expected, atol=1e-5)
    assert duration == pytest.approx(3.5)

    # a byte copy is its twin (score ~1), the query itself is left out; scores sorted, exact
    twin = index.query_file(library / "twin.wav", k=3)
    assert twin[0].path == str((library / "class01" / "class01.00000.wav").resolve())
    assert twin[0].score == pytest.approx(1.0, abs=1e-5)
    assert str((library / "twin.wav").resolve()) not in [m.path for m in twin]
    assert [m.score for m in twin] == sorted((m.score for m in twin), reverse=True)
    scores = emb @ expected
    best = np.argsort(-scores)[:3]
    by_embedding = index.query(expected, k=3)
    assert [m.path for m in by_embedding] == list(index.paths[best])
    np.testing.assert_allclose([m.score for m in by_embedding], scores[best], atol=1e-5)

    # a file outside the index is embedded with the index's own model
    outside = tmp_path / "elsewhere.wav"
    shutil.copy2(clip, outside)
    got = index.query_file(outside, k=1)
    assert got[0].path == str(clip.resolve()) and got[0].score == pytest.approx(1.0, abs=1e-5)


def test_rerun_is_incremental(library, tiny_card, tmp_path):
    out = tmp_path / "library.h5"
    build_index(library, out, model=tiny_card, workers=1)
    before = Index(out)
    kept_path = str((library / "class02" / "class02.00000.wav").resolve())
    kept = before.embeddings_at([before.row(kept_path)])[0]

    again = build_index(library, out, workers=1)  # no model: the one the index was built with
    assert again.up_to_date and again.computed == 0 and again.n_tracks == 7

    shutil.copy2(library / "class00" / "class00.00000.wav", library / "class00" / "new.wav")
    changed = library / "class01" / "class01.00001.wav"
    shutil.copy2(library / "class02" / "class02.00001.wav", changed)  # other content, same name
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    (library / "class02" / "class02.00001.wav").unlink()
    report = build_index(library, out, model=tiny_card, workers=1)
    assert report.computed == 2 and report.resumed == 0
    assert report.added == [str((library / "class00" / "new.wav").resolve())]
    assert report.updated == [str(changed.resolve())]
    assert report.removed == [str((library / "class02" / "class02.00001.wav").resolve())]
    assert report.unchanged == 5 and report.n_tracks == 7
    after = Index(out)
    assert len(after) == 7 and after.row(library / "class02" / "class02.00001.wav") is None
    np.testing.assert_array_equal(after.embeddings_at([after.row(kept_path)])[0], kept)  # not recomputed
    assert after.attrs["content_id"] != before.attrs["content_id"]

    # Index.add: files from another folder are added, and kept when the first folder is re-indexed
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy2(library / "twin.wav", extra / "more.wav")
    added = after.add([extra])
    assert added.added == [str((extra / "more.wav").resolve())] and len(after) == 8
    assert build_index(library, out, model=tiny_card, workers=1).up_to_date
    assert len(Index(out)) == 8


def test_long_tracks_are_embedded_from_the_windows_a_prediction_scores(library, tiny_card, tmp_path):
    """A track longer than the model's windows is embedded from the sample predict scores first (read
    only there), not from every window. A rerun keeps the index's own windows (every window for an
    index from before sampling); other windows embed every track again, also those from other folders."""
    import soundfile as sf

    from melgenre.predict import load_model, save_package

    sampled_card = save_package(tiny_card, tmp_path / "four" / "tiny4", windows=4)
    model, every = load_model(sampled_card), load_model(sampled_card, windows="all")
    parts = [sf.read(f, dtype="float32") for f in sorted(library.rglob("class*.wav"))]
    song = library / "song.wav"
    sf.write(song, np.concatenate([y for y, _ in parts]), parts[0][1])  # 21 s: 12 windows of the fast preset
    w = model.windows_of(song)[0]
    assert w.sampled and len(w.starts) == 4 and w.total == 12

    out = tmp_path / "library.h5"
    report = build_index(library, out, model=sampled_card, workers=1)
    index = Index(out)
    assert report.n_tracks == 8 and index.attrs["windows"] == "4"
    stored = index.embeddings_at([index.row(song)])[0]
    np.testing.assert_allclose(stored, similar._normalise(model.embed_images(w.images).mean(axis=0)), atol=1e-5)
    whole = similar._normalise(every.embed_images(every.windows_of(song)[0].images).mean(axis=0))
    assert not np.allclose(stored, whole, atol=1e-3)  # the sample, not every window
    np.testing.assert_allclose(similar.embed_file(model, song)[0], stored, atol=1e-5)
    assert similar.embed_file(model, song)[1] == pytest.approx(21.0)
    short = library / "class00" / "class00.00000.wav"  # a 3.5-s clip: every window, as before
    np.testing.assert_allclose(index.embeddings_at([index.row(short)])[0], similar.embed_file(every, short)[0],
                               atol=1e-5)

    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy2(song, extra / "other.wav")
    assert Index(out).add([extra]).added == [str((extra / "other.wav").resolve())]
    with h5py.File(out, "a") as f:  # as an index written before sampling: every window, no attribute
        del f.attrs["windows"]
        f["embeddings"][:] = whole
    assert build_index(library, out, model=sampled_card, workers=1).up_to_date  # its own windows: all
    assert Index(out).model().windows is None  # and queries are embedded the same way
    again = build_index(library, out, model=sampled_card, workers=1, windows=4)
    assert not again.up_to_date and again.computed == 9 and again.n_tracks == 9 and again.unchanged == 0
    index = Index(out)
    assert index.attrs["windows"] == "4"
    for path in (song, extra / "other.wav"):
        np.testing.assert_allclose(index.embeddings_at([index.row(path)])[0], stored, atol=1e-5)
    assert build_index(library, out, model=sampled_card, workers=1).up_to_date
    assert Index(out).model().windows == 4
    result = runner.invoke(app, ["index", str(library), "--out", str(out), "--model", str(sampled_card),
                                 "--windows", "all", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert Index(out).attrs["windows"] == "all" and "re-embedded" in result.output
    np.testing.assert_allclose(Index(out).embeddings_at([Index(out).row(song)])[0], whole, atol=1e-5)


def test_resume_after_interruption(library, tiny_card, tmp_path, monkeypatch):
    out = tmp_path / "library.h5"
    real, calls = similar.embed_file, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(similar, "embed_file", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_index(library, out, model=tiny_card, workers=1)
    assert not out.exists()
    assert len(list((tmp_path / "library.h5.parts").glob("*.npz"))) == 2
    monkeypatch.setattr(similar, "embed_file", real)
    report = build_index(library, out, model=tiny_card, workers=1)
    assert (report.resumed, report.computed, report.n_tracks) == (2, 5, 7)
    assert not (tmp_path / "library.h5.parts").exists()

    # an interrupted update leaves the old index whole
    shutil.copy2(library / "twin.wav", library / "twin2.wav")
    monkeypatch.setattr(similar, "embed_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build_index(library, out, model=tiny_card, workers=1)
    assert len(Index(out)) == 7


@pytest.mark.slow  # ~15 s: two forkserver workers import torch and load the model; CI runs it (`pytest -m slow`)
def test_worker_processes_give_the_same_index(library, tiny_card, tmp_path):
    one = build_index(library, tmp_path / "one.h5", model=tiny_card, workers=1)
    two = build_index(library, tmp_path / "two.h5", model=tiny_card, workers=2)
    assert one.n_tracks == two.n_tracks == 7
    a, b = Index(tmp_path / "one.h5"), Index(tmp_path / "two.h5")
    assert list(a.paths) == list(b.paths)
    np.testing.assert_allclose(a.embeddings_at(slice(None)), b.embeddings_at(slice(None)), atol=1e-5)


def test_wrong_model_is_refused(library, tiny_card, other_card, tmp_path):
    out = tmp_path / "library.h5"
    build_index(library, out, model=tiny_card, workers=1)
    with pytest.raises(MelgenreError, match=r"library\.h5: made with model .* not .*use the same --model"):
        build_index(library, out, model=other_card, workers=1)
    index = Index(out)
    outside = tmp_path / "q.wav"
    shutil.copy2(library / "twin.wav", outside)
    with pytest.raises(MelgenreError, match="made with model"):
        index.query_file(outside, model=other_card)
    from melgenre.predict import load_model
    from melgenre.serve import create_app

    with pytest.raises(MelgenreError, match="made with model"):
        create_app(model=load_model(other_card), index=out)
    r = runner.invoke(app, ["index", str(library), "--out", str(out), "--model", str(other_card), "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "made with model" in r.output


def test_bad_files_and_bad_indexes(library, tiny_card, tmp_path):
    (library / "class00" / "broken.wav").write_text("this is not audio")
    (library / "class01" / "empty.flac").write_bytes(b"")
    out = tmp_path / "library.h5"
    report = build_index(library, out, model=tiny_card, workers=1)
    assert report.n_tracks == 7
    assert sorted(Path(s["path"]).name for s in report.skipped) == ["broken.wav", "empty.flac"]
    assert all(s["reason"] for s in report.skipped)
    again = build_index(library, out, model=tiny_card, workers=1)  # not retried until they change
    assert again.up_to_date and again.computed == 0 and len(again.skipped) == 2

    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    with pytest.raises(MelgenreError, match=r"notes\.h5: not an HDF5 file"):
        Index(not_h5)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(MelgenreError, match=r"other\.h5: not a melgenre index"):
        Index(tmp_path / "other.h5")
    with pytest.raises(MelgenreError, match="no such file"):
        Index(tmp_path / "missing.h5")
    with pytest.raises(MelgenreError, match="no such file"):
        Index(out).query_file(tmp_path / "missing.wav")
    with pytest.raises(MelgenreError, match="query embedding of 3 values"):
        Index(out).query(np.ones(3))
    with pytest.raises(MelgenreError, match=r"broken\.wav"):
        Index(out).query_file(library / "class00" / "broken.wav")
    with pytest.raises(MelgenreError, match="no such file or directory"):
        build_index(tmp_path / "nothing-here", tmp_path / "x.h5", model=tiny_card, workers=1)
    (tmp_path / "void").mkdir()
    with pytest.raises(MelgenreError, match="no audio files"):
        build_index(tmp_path / "void", tmp_path / "x.h5", model=tiny_card, workers=1)
    assert not (tmp_path / "x.h5").exists()


# -- search --------------------------------------------------------------------------------------

def test_exact_search_in_blocks_from_disk(tmp_path, monkeypatch):
    x = _random_index(tmp_path / "rand.h5", 1000, 16)
    monkeypatch.setattr(similar, "BLOCK_BYTES", 64 * 16 * 4)  # 64 rows per block
    index = Index(tmp_path / "rand.h5", in_memory=False)
    assert index._emb is None and index.method() == "exact"
    q = x[17] + 0.1 * x[3]
    scores = x @ similar._normalise(q)
    got = index.query(q, k=10, exclude=17)
    expected = [i for i in np.argsort(-scores) if i != 17][:10]
    assert [m.path for m in got] == [f"/lib/t{i:05d}.wav" for i in expected]
    np.testing.assert_allclose([m.score for m in got], scores[expected], atol=1e-5)
    assert len(index.query(q, k=5000)) == 1000  # k above the size: every track


def test_faiss_agrees_with_exact(tmp_path, monkeypatch):
    pytest.importorskip("faiss", reason="the ann extra is not installed (pip install 'melgenre[ann]')")
    x = _random_index(tmp_path / "rand.h5", 3000, 32, seed=1)
    index = Index(tmp_path / "rand.h5")
    assert index.method("auto") == "exact"
    monkeypatch.setattr(similar, "ANN_THRESHOLD", 2000)
    assert index.method("auto") == "faiss"
    queries = similar._normalise(x[:20] + 0.3 * np.random.default_rng(2).normal(size=(20, 32)))
    recall = []
    for i, q in enumerate(queries):
        exact = index.query(q, k=10, method="exact")
        approx = index.query(q, k=10, exclude=None)
        recall.append(len({m.path for m in exact} & {m.path for m in approx}) / 10)
        by_path = {m.path: m.score for m in exact}
        for m in approx:  # same scores where both found a track
            if m.path in by_path:
                assert m.score == pytest.approx(by_path[m.path], abs=1e-4)
        assert f"/lib/t{i:05d}.wav" not in [m.path for m in index.query(x[i], k=5, exclude=i)]
    assert np.mean(recall) >= 0.95
    cache = list(tmp_path.glob("rand.h5.*.faiss"))
    assert len(cache) == 1 and index.attrs["content_id"] in cache[0].name
    assert Index(tmp_path / "rand.h5").query(queries[0], k=10, method="faiss") == \
        index.query(queries[0], k=10, method="faiss")  # from the cache file


def test_method_errors(tmp_path, monkeypatch):
    _random_index(tmp_path / "rand.h5", 10, 4)
    index = Index(tmp_path / "rand.h5")
    with pytest.raises(MelgenreError, match="unknown search method 'annoy'"):
        index.method("annoy")
    monkeypatch.setattr(similar, "faiss_available", lambda: False)
    with pytest.raises(MelgenreError, match=r"pip install 'melgenre\[ann\]'"):
        index.query(np.ones(4), method="faiss")
    monkeypatch.setattr(similar, "ANN_THRESHOLD", 1)
    assert index.method("auto") == "exact"  # no faiss: exact whatever the size


# -- command line --------------------------------------------------------------------------------

def test_cli_index_and_similar(library, tiny_card, tmp_path):
    out = tmp_path / "library.h5"
    r = runner.invoke(app, ["index", str(library), "--out", str(out), "--model", str(tiny_card), "--workers", "1",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "7 tracks" in r.output and "added 7" in r.output
    r = runner.invoke(app, ["index", str(library), "--out", str(out), "--model", str(tiny_card), "--no-progress"])
    assert r.exit_code == 0 and "up to date" in r.output

    r = runner.invoke(app, ["similar", str(library / "twin.wav"), "--index", str(out), "-k", "3", "--format", "json"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["model_id"] == Index(out).model_id and body["method"] == "exact"
    assert len(body["similar"]) == 3 and set(body["similar"][0]) == {"path", "score"}
    assert body["similar"][0]["path"] == str((library / "class01" / "class01.00000.wav").resolve())
    assert body["similar"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= m["score"] <= 1.0 for m in body["similar"])

    r = runner.invoke(app, ["similar", str(library / "twin.wav"), "--index", str(out), "-k", "2"],
                      terminal_width=300)
    assert r.exit_code == 0 and "class01.00000.wav" in r.output and "1.000" in r.output

    for args, message in ((["--format", "xml"], "--format must be table or json"),
                          (["--index", str(tmp_path / "none.h5")], "none.h5: no such file"),
                          (["--method", "annoy"], "unknown search method")):
        r = runner.invoke(app, ["similar", str(library / "twin.wav"), "--index", str(out), *args])
        assert r.exit_code == 2 and message in r.output, r.output
    r = runner.invoke(app, ["index", "--help"])
    assert r.exit_code == 0 and all(opt in r.output for opt in ("--out", "--model", "--workers", "--ray"))


# -- Ray -----------------------------------------------------------------------------------------

@pytest.mark.slow  # ~20 s on 2 cores: Ray starts and its workers load the model; CI runs it (`pytest -m slow`)
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'melgenre[ray]')")
def test_index_through_ray_equals_local(library, tiny_card, tmp_path):
    import ray

    local = build_index(library, tmp_path / "local.h5", model=tiny_card, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = build_index(library, tmp_path / "ray.h5", model=tiny_card, ray="")
    finally:
        ray.shutdown()
    assert remote.computed == local.computed == 7
    a, b = Index(tmp_path / "local.h5"), Index(tmp_path / "ray.h5")
    assert list(a.paths) == list(b.paths)
    np.testing.assert_allclose(a.embeddings_at(slice(None)), b.embeddings_at(slice(None)), atol=1e-5)
