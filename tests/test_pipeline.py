"""The one prediction pipeline (melgenre.pipeline), the backend protocol (melgenre.backends), the typed
model card (melgenre.card), the windows setting (melgenre.windows.WindowCount), and what the service
decodes of an upload (only what it scores)."""

from __future__ import annotations

import json
import resource
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melgenre import audio, synth
from melgenre.backends import Backend, OnnxBackend, TorchBackend
from melgenre.card import CARD_FORMAT, ModelCard
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.features import Preset
from melgenre.package import DEFAULT_MODEL_DIR
from melgenre.pipeline import Item, Predictor, failure_reason, track_embedding
from melgenre.windows import WindowCount

SR = 22_050


@pytest.fixture(scope="module")
def tiny(tiny_card):
    from melgenre.inference import load_model

    return load_model(tiny_card)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> list[Path]:
    """Three synthetic clips of different lengths (more windows than one batch together) and a broken file."""
    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(3)
    paths = []
    for i, seconds in enumerate((4.0, 9.0, 6.5)):
        path = root / f"c{i}.wav"
        sf.write(path, synth.synth_clip(i % 3, 3, seconds, SR, rng), SR)
        paths.append(path)
    (root / "broken.wav").write_text("not audio")
    return [paths[0], root / "broken.wav", paths[1], paths[2]]


# -- the pipeline ------------------------------------------------------------------------------

def test_results_do_not_depend_on_batching(tiny, songs):
    alone = {str(p): tiny.predict(p) for p in songs if p.name != "broken.wav"}
    for batch in (1, 3, 64):
        predictor = Predictor(tiny, batch=batch)
        results = list(predictor.predict_paths(songs))
        assert [item.key for item, _ in results] == [str(p) for p in songs]  # input order, failures in place
        for item, pred in results:
            if item.key.endswith("broken.wav"):
                assert pred is None and item.error.startswith("not a decodable audio file")
                continue
            assert item.error is None
            np.testing.assert_allclose(pred.window_probabilities, alone[item.key].window_probabilities, atol=1e-6)
            assert pred.label == alone[item.key].label and pred.flags == alone[item.key].flags


def test_process_executor_gives_the_same_results(tiny, songs):
    local = list(Predictor(tiny).predict_paths(songs, facts=True))
    pooled = {i.key: (i, p) for i, p in Predictor(tiny).predict_paths(songs, executor="process", workers=2, facts=True)}
    assert sorted(pooled) == sorted(i.key for i, _ in local)  # in the order decoding finishes
    for a, pa in local:
        b, pb = pooled[a.key]
        assert a.error == b.error and a.info["sha256"] == b.info["sha256"] and a.info["size"] == b.info["size"]
        if pa is not None:
            assert pa.probabilities == pytest.approx(pb.probabilities, abs=1e-6)
    with pytest.raises(MelgenreError, match="unknown executor 'gpu'"):
        list(Predictor(tiny).predict_paths(songs, executor="gpu", workers=1))


def test_predict_raises_and_decode_reports(tiny, songs):
    predictor = Predictor(tiny)
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        predictor.predict(songs[1])
    item = predictor.decode(songs[1])
    assert isinstance(item, Item) and item.windows is None and "not a decodable audio file" in item.error
    with pytest.raises(MelgenreError, match="pass sr="):
        predictor.predict(np.zeros(SR, np.float32))
    assert "pass sr=" in predictor.decode(np.zeros(SR, np.float32)).error
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(songs[0], top_k=0)


def test_failure_reason_is_one_line_per_kind():
    assert failure_reason(AudioDecodeError("a.wav", "not a decodable audio file (x)")) == \
        "not a decodable audio file (x)"
    assert failure_reason(MelgenreError("a.wav: broken")) == "a.wav: broken"
    assert failure_reason(FileNotFoundError(2, "No such file or directory")) == \
        "cannot read file (No such file or directory)"
    assert failure_reason(ValueError("odd")) == "ValueError: odd"


def test_embeddings_from_the_same_pass(tiny, songs):
    pred = Predictor(tiny, embeddings=True).predict(songs[2])
    assert pred.window_embeddings.shape[0] == len(pred.window_starts)
    np.testing.assert_allclose(pred.window_embeddings, tiny.embed_images(tiny.windows_of(songs[2])[0].images),
                               atol=1e-5)
    vector = track_embedding(pred, "c1")
    assert vector.shape == (pred.window_embeddings.shape[1],) and np.linalg.norm(vector) == pytest.approx(1.0)
    assert "window_embeddings" not in pred.to_dict()  # never in the JSON
    assert Predictor(tiny).predict(songs[2]).window_embeddings is None


def test_a_card_alone_cannot_predict(tiny_card):
    from melgenre.inference import GenreModel

    with pytest.raises(MelgenreError, match="card alone"):
        Predictor(GenreModel(ModelCard.read(tiny_card)))


# -- backends ----------------------------------------------------------------------------------

def test_both_backends_follow_the_protocol(tiny_card):
    from melgenre.inference import load_model

    torch_model, onnx_model = load_model(tiny_card, backend="torch"), load_model(tiny_card, backend="onnx")
    assert isinstance(torch_model.runner, TorchBackend) and isinstance(onnx_model.runner, OnnxBackend)
    assert isinstance(torch_model.runner, Backend) and isinstance(onnx_model.runner, Backend)
    images = torch_model.clip_images(synth.synth_clip(0, 3, 4.0, SR, np.random.default_rng(1)))[0]
    for embeddings in (False, True):
        (lt, et), (lo, eo) = (m.runner.run(images, embeddings=embeddings, batch=2) for m in (torch_model, onnx_model))
        np.testing.assert_allclose(lt, lo, atol=1e-4)
        assert (et is None) == (eo is None) == (not embeddings)
        if embeddings:
            np.testing.assert_allclose(et, eo, atol=1e-4)
    empty = np.zeros((0, *images.shape[1:]), np.float32)
    assert onnx_model.runner.run(empty)[0].shape == (0, len(onnx_model.classes))


def test_a_package_prefers_its_onnx_twin(tiny_card, tmp_path):
    import shutil

    from melgenre.inference import load_model

    for suffix in (".json", ".safetensors", ".onnx"):
        shutil.copy(tiny_card.with_suffix(suffix), tmp_path / f"m{suffix}")
    assert load_model(tmp_path / "m.json").backend == "onnx"  # save_package wrote the twin
    assert load_model(tmp_path / "m.json", backend="torch").backend == "torch"
    card = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**card, "model_id": "melcnn-000000000000"}))
    with pytest.raises(MelgenreError, match=r"m\.onnx: holds model .*, not the package's melcnn-000000000000"):
        load_model(tmp_path / "m.json")


# -- the card ----------------------------------------------------------------------------------

def test_card_round_trip_of_the_shipped_cards():
    for name in ("default", "melcnn"):
        path = DEFAULT_MODEL_DIR.joinpath(f"{name}.json")
        data = json.loads(path.read_text())
        card = ModelCard.read(path)
        back = card.to_dict()
        # nothing lost, nothing added (a preset written before a field existed gets its default)
        assert {k: v for k, v in back.items() if k != "preset"} == {k: v for k, v in data.items() if k != "preset"}
        assert back["preset"].items() >= data["preset"].items() and Preset.from_dict(back["preset"]) == card.preset
        assert card.model_id == data["model_id"] and card.classes == data["classes"]
        assert card.architecture == data["model"]["name"]
        if "predict_windows" in data:
            assert card.predict_windows == WindowCount.parse(data["predict_windows"])
        # the dict it was, for one release
        assert card["classes"] == data["classes"] and card.get("nothing") is None and dict(card) == back


def test_card_keeps_unknown_fields_and_refuses_non_cards(tmp_path):
    data = json.loads(DEFAULT_MODEL_DIR.joinpath("melcnn.json").read_text())
    card = ModelCard.from_dict({**data, "learn": {"genres": ["a"]}})
    assert card.extra == {"learn": {"genres": ["a"]}} and card["learn"] == {"genres": ["a"]}
    written = card.replace(predict_windows=WindowCount(None)).write(tmp_path / "c.json")
    back = json.loads(written.read_text())
    assert back["learn"] == {"genres": ["a"]} and back["predict_windows"] == "all"
    assert ModelCard.read(written).predict_windows.most is None
    with pytest.raises(MelgenreError, match="x.json: not a melgenre model card"):
        ModelCard.from_dict({**data, "format": "other"}, "x.json")
    with pytest.raises(MelgenreError, match="model card lacks classes"):
        ModelCard.from_dict({k: v for k, v in data.items() if k != "classes"})
    with pytest.raises(MelgenreError, match="windows must be a positive whole number"):
        ModelCard.from_dict({**data, "predict_windows": "some"})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MelgenreError, match="bad.json: cannot read JSON"):
        ModelCard.read(tmp_path / "bad.json")
    assert CARD_FORMAT == data["format"]


def test_window_count_is_parsed_once():
    assert WindowCount.parse("all") == WindowCount.parse(None) == WindowCount(None)
    assert WindowCount.parse(5) == WindowCount.parse("5") == WindowCount.parse(WindowCount(5)) == WindowCount(5)
    assert str(WindowCount(5)) == "5" and str(WindowCount(None)) == "all" and WindowCount(None).to_json() == "all"
    for bad in ("0", -1, "2.5", "five", True):
        with pytest.raises(MelgenreError, match="windows must be a positive whole number or 'all'"):
            WindowCount.parse(bad)


# -- serve: only what it scores is decoded (issue 34, item 1) ----------------------------------

def _long_silence(path: Path, minutes: float, sr: int = 8_000) -> Path:
    """``minutes`` of digital silence as a FLAC (as ffmpeg's anullsrc makes), written in blocks: a small
    file of a long recording."""
    block = np.zeros(sr * 60, np.int16)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16", format="FLAC") as f:
        for _ in range(int(minutes)):
            f.write(block)
    return path


def test_serve_decodes_only_the_windows_it_scores(tiny, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from melgenre.serve import create_app

    bomb = _long_silence(tmp_path / "hour.flac", 60)
    assert bomb.stat().st_size < 1_000_000  # an hour of audio in a small upload
    decoded_whole = []
    real_load = audio.load
    monkeypatch.setattr(audio, "load", lambda *a, **k: decoded_whole.append(a[0]) or real_load(*a, **k))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with TestClient(create_app(model=tiny, max_upload_mb=5)) as client:
        r = client.post("/predict?spectrogram=true", files={"file": ("hour.flac", bomb.read_bytes(), "audio/flac")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["duration"] == pytest.approx(3600.0, abs=0.1)
        assert len(body["windows"]["starts"]) < 30 and body["spectrogram"].startswith("data:image/png;base64,")
    assert decoded_whole == []  # the windows and the first 30 s were read, never the whole hour
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"peak RSS grew by {grown_mb:.0f} MB"  # decoding the hour whole: about 1 GB
    with TestClient(create_app(model=tiny, max_upload_mb=5, max_minutes=30)) as client:
        r = client.post("/predict", files={"file": ("hour.flac", bomb.read_bytes(), "audio/flac")})
        assert r.status_code == 413
        assert r.json()["detail"] == "hour.flac: 60 minutes of audio is longer than the 30-minute limit"
