"""Prediction end to end: a tiny model trained on synthetic clips, packages, ONNX, windowing, CLI."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner

from melgenre import package, predict, store, synth, windows
from melgenre.cli import app
from melgenre.config import config_from_dict
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.features import Preset
from melgenre.predict import load_model, save_package, window_images
from melgenre.train import fit

from conftest import shared_path

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"batch_size": 8, "fractions": [0.5, 0.25, 0.25]},
    "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 3e-3},
    "train": {"max_epochs": 2, "patience": 2},
}
SR = 22_050
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A 2-epoch melcnn (width 4) run on 4 synthetic classes × 4 clips of 4.5 s (preset fast), and its package."""
    root = tmp_path_factory.mktemp("predict")
    synth.write_corpus(root / "clips", n_classes=4, per_class=4, seconds=4.5, seed=2)
    store.prepare(root / "clips", "fast", root / "syn-fast.h5", workers=1, progress=False)
    run = fit(config_from_dict(TINY), root / "runs", data=root / "syn-fast.h5", progress=False)
    card = save_package(run, root / "pkg" / "tiny")
    return {"run": run, "card": card, "clips": root / "clips", "clip": root / "clips" / "class01" / "class01.00000.wav"}


@pytest.fixture(scope="module")
def model(trained) -> predict.GenreModel:
    return load_model(trained["card"], backend="torch")


def _check(pred: predict.Prediction, model: predict.GenreModel, top_k: int = 3) -> None:
    probs = np.array([pred.probabilities[c] for c in model.classes])
    assert list(pred.probabilities) == model.classes
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and np.all(probs >= 0)
    np.testing.assert_allclose(pred.window_probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, pred.window_probabilities.mean(axis=0), atol=1e-6)
    assert pred.window_probabilities.shape == (len(pred.window_starts), len(model.classes))
    assert len(pred.top) == top_k and pred.top[0][0] == pred.label == model.classes[int(np.argmax(probs))]
    assert [p for _, p in pred.top] == sorted((p for _, p in pred.top), reverse=True)
    assert pred.top[-1][1] >= np.sort(probs)[-top_k]
    assert pred.model_id == model.model_id
    json.dumps(pred.to_dict())  # JSON-safe


def test_file_bytes_and_resampled_stereo_array_agree(trained, model):
    path = trained["clip"]
    by_path = model.predict(path)
    _check(by_path, model)
    assert by_path.source == str(path) and by_path.duration == pytest.approx(4.5)
    assert not by_path.padded and not by_path.silent

    by_bytes = model.predict(path.read_bytes(), name="upload.wav", top_k=2)
    _check(by_bytes, model, top_k=2)
    assert by_bytes.source == "upload.wav"
    np.testing.assert_array_equal(by_bytes.window_probabilities, by_path.window_probabilities)

    y, sr = sf.read(path, dtype="float32")
    hi = soxr.resample(y, sr, 44_100)
    stereo = np.stack([hi * 0.5, hi * 1.5], axis=1)  # downmixes back to hi
    by_array = model.predict(stereo, sr=44_100, top_k=4)
    _check(by_array, model, top_k=4)
    assert by_array.source == "<array>" and by_array.duration == pytest.approx(4.5, abs=1e-3)
    assert by_array.label == by_path.label
    np.testing.assert_allclose(by_array.window_probabilities, by_path.window_probabilities, atol=0.02)

    with pytest.raises(MelgenreError, match="sr="):
        model.predict(stereo)
    with pytest.raises(MelgenreError, match=r"\(samples, channels\)"):
        model.predict(stereo.T, sr=44_100)
    with pytest.raises(AudioDecodeError, match="junk.wav: not a decodable"):
        model.predict(b"not audio", name="junk.wav")


def test_embed_images_is_the_last_linear_layers_input(model):
    rng = np.random.default_rng(1)
    images, _, _ = model.clip_images(0.1 * rng.standard_normal(6 * SR).astype(np.float32))
    emb = model.embed_images(images)
    fc = [m for m in model._module.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert emb.shape == (len(images), fc.in_features) and emb.dtype == np.float32
    with torch.no_grad():
        logits = fc(torch.from_numpy(emb)).numpy()
    np.testing.assert_allclose(predict.softmax(logits), model.predict_images(images), atol=1e-5)
    assert model.embed_images(images[:0]).shape == (0, fc.in_features)


def test_short_long_and_silent_clips(trained, model, monkeypatch):
    monkeypatch.setattr(windows, "RECHECK_MARGIN", 0.0)  # a sample of the 2-epoch model's windows is never rechecked
    rng = np.random.default_rng(0)
    short = model.predict(0.1 * rng.standard_normal(SR // 2).astype(np.float32), sr=SR)
    _check(short, model)
    assert short.padded and short.window_starts == [0.0] and short.duration == pytest.approx(0.5)
    assert short.flags == ["padded"] and short.windows_total == 1

    y = 0.1 * rng.standard_normal(40 * SR).astype(np.float32)
    every = load_model(trained["card"], windows="all")
    long = every.predict(y, sr=SR)  # no 30-s limit
    _check(long, every)
    frames = 1 + 40 * SR // 512
    assert len(long.window_starts) == (frames - 130) // 65 + 1 == 25 == long.windows_total and not long.padded
    assert long.window_starts[-1] > 30
    # by default as many windows as a 30-s clip has (fast: 18), spread over a longer clip: a subset of
    # every window, the same images
    assert model.windows == 18 and every.windows is None
    sampled = load_model(trained["card"], windows=10).predict(y, sr=SR)
    chosen = [1, 3, 6, 8, 11, 13, 16, 18, 21, 23]  # the middle window of each tenth
    assert sampled.windows_total == 25 and sampled.window_starts == [long.window_starts[i] for i in chosen]
    np.testing.assert_allclose(sampled.window_probabilities, long.window_probabilities[chosen], atol=1e-5)
    assert sampled.to_dict()["windows_total"] == 25 and len(model.predict(y, sr=SR).window_starts) == 18
    # fast: hop 1.5 s = 65 STFT frames of 512 samples = 1.509 s
    np.testing.assert_allclose(np.diff(long.window_starts), 65 * 512 / SR)
    assert np.diff(long.window_starts)[0] == pytest.approx(1.5, abs=0.01)

    silent = model.predict(np.zeros(3 * SR, dtype=np.float32), sr=SR)
    # an uncalibrated package has no "not music" score: silence is still "not music"
    assert silent.silent and len(silent.window_starts) == 1 and silent.flags == ["silent", "not_music"]
    assert long.flags == [] and silent.to_dict()["flags"] == ["silent", "not_music"]


def test_hop_sets_the_step_between_windows(trained, model):
    y = 0.1 * np.random.default_rng(3).standard_normal(12 * SR).astype(np.float32)
    default = model.predict(y, sr=SR)
    for backend in ("torch", "onnx"):
        wide = load_model(trained["card"], backend=backend, hop=3.0)
        pred = wide.predict(y, sr=SR)
        _check(pred, wide)
        # 3 s = 129 frames of 512 samples; chunks of 130 frames in 1 + 12 * SR // 512 = 517 frames
        assert len(pred.window_starts) == (517 - 130) // 129 + 1 == 4 < len(default.window_starts) == 6
        np.testing.assert_allclose(np.diff(pred.window_starts), 129 * 512 / SR)
        # the first window is the same image as the default's first: the same probabilities
        np.testing.assert_allclose(pred.window_probabilities[0], default.window_probabilities[0], atol=1e-4)
    with pytest.raises(MelgenreError, match="hop must be positive"):
        load_model(trained["card"], hop=0)
    r = runner.invoke(app, ["predict", str(trained["clip"]), "--model", str(trained["card"]), "--hop", "3", "-f", "json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)[0]["window_starts"]) == 1  # a 4.5-s clip: one 3-s window at hop 3


@pytest.mark.parametrize("seconds, starts, padded", [
    (1.0, [0.0], True),  # shorter than one window: one zero-padded window
    (4.5, [0.0, 2.0], False),  # last 0.5 s < half a window: dropped
    (5.0, [0.0, 2.0, 4.0], True),  # last 1 s = half a window: kept, padded
    (6.0, [0.0, 2.0, 4.0], False),
])
def test_unchunked_windows(seconds, starts, padded):
    preset = Preset(name="tiny-v1", duration=2.0, n_fft=512, win_length=512, n_mels=16, image_size=(16, 24))
    y = np.random.default_rng(1).standard_normal(int(seconds * SR)).astype(np.float32)
    images, got_starts, got_padded = window_images(y, preset)
    assert got_starts == starts and got_padded == padded
    assert images.shape == (len(starts), 16, 24) and images.dtype == np.float32


def test_backends_package_and_sources_agree(trained, model, tmp_path):
    clip = trained["clip"]
    ref = model.predict(clip)
    from_run = load_model(trained["run"])
    from_ckpt = load_model(trained["run"] / "checkpoints" / "best.ckpt")
    from_weights = load_model(trained["card"].with_suffix(".safetensors"), backend="torch")
    for other in (from_run, from_ckpt, from_weights):
        assert other.model_id == model.model_id and other.backend == "torch"
        np.testing.assert_array_equal(other.predict(clip).window_probabilities, ref.window_probabilities)

    onnx_model = load_model(trained["run"], backend="onnx")
    assert onnx_model.backend == "onnx" and onnx_model.model_id == model.model_id
    got = onnx_model.predict(clip)
    assert got.label == ref.label
    np.testing.assert_allclose(got.window_probabilities, ref.window_probabilities, atol=1e-4)

    exported = predict.export_onnx_file(trained["card"], tmp_path / "m.onnx")
    from_file = load_model(exported)
    assert from_file.backend == "onnx" and from_file.classes == model.classes and from_file.card == model.card
    np.testing.assert_allclose(from_file.predict(clip).window_probabilities, ref.window_probabilities, atol=1e-4)
    batch = np.random.default_rng(2).random((5, 128, 130), dtype=np.float32)  # dynamic batch
    np.testing.assert_allclose(from_file.predict_images(batch), model.predict_images(batch), atol=1e-4)
    assert model.predict_images(batch[:0]).shape == (0, 4)

    card = json.loads(trained["card"].read_text())
    assert card["format"] == "melgenre-model/1" and card["classes"] == model.classes
    assert card["model"]["name"] == "melcnn" and card["model"]["width"] == 4 and card["model"]["num_classes"] == 4
    assert card["preset"]["name"] == "fast" and card["created_with"]
    assert card["model_id"].startswith("melcnn-") and len(card["model_id"]) == len("melcnn-") + 12
    assert set(card["metrics"]["test"]["track"]) >= {"accuracy", "macro_precision", "n"}
    assert card["metrics"]["split_tracks"] == {"train": 8, "val": 4, "test": 4}
    assert card["training"]["config"] == "tiny" and card["training"]["data"]["file"] == "syn-fast.h5"


def test_lazy_root_export_and_default_model(monkeypatch, tmp_path):
    from melgenre import load_model as root_load_model

    assert root_load_model is load_model
    monkeypatch.setattr(package, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(MelgenreError, match="no default model is installed; pass --model"):
        load_model()


def test_unreadable_models_raise_one_line_naming_the_file(trained, tmp_path):
    card = trained["card"]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not onnx")
    swapped = tmp_path / "swapped.json"  # a card beside someone else's weights
    shutil.copy(card, swapped)
    swapped.with_suffix(".safetensors").write_bytes(b"x" * 100)
    cases = [(bad_json, "cannot read JSON"), (other, "not a melgenre model card"), (garbage, "not a readable ONNX"),
             (swapped, "do not match"), (tmp_path / "missing.json", "no such file"),
             (tmp_path, "not a run directory"), (tmp_path / "model.bin", "no such file")]
    for path, reason in cases:
        with pytest.raises(MelgenreError, match=reason) as info:
            load_model(path)
        assert path.stem in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MelgenreError, match="unknown backend"):
        load_model(card, backend="tensorrt")


def _cli_corpus(trained, tmp_path) -> Path:
    folder = tmp_path / "songs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(trained["clip"], folder / "a.wav")
    shutil.copy(trained["clips"] / "class02" / "class02.00001.wav", folder / "sub" / "b.wav")
    (folder / "broken.wav").write_text("this is not audio")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_cli_predict_formats_and_failures(trained, tmp_path):
    folder = _cli_corpus(trained, tmp_path)
    model = str(trained["card"])
    r = runner.invoke(app, ["predict", str(folder), "--model", model, "--no-progress"])
    assert r.exit_code == 1, r.output
    assert f"error: {folder / 'broken.wav'}: not a decodable audio file" in r.stderr
    assert "a.wav" in r.stdout and "b.wav" in r.stdout and "notes" not in r.output

    r = runner.invoke(app, ["predict", str(folder), "--model", model, "--format", "json", "--top-k", "2"])
    assert r.exit_code == 1
    entries = json.loads(r.stdout)
    assert [Path(e["source"]).name for e in entries] == ["a.wav", "broken.wav", "b.wav"]
    assert "not a decodable" in entries[1]["error"]
    assert len(entries[0]["top"]) == 2 and sum(entries[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)

    r = runner.invoke(app, ["predict", str(folder / "a.wav"), str(folder / "sub"), "--model", model, "-f", "csv",
                            "--backend", "onnx"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [Path(row["file"]).name for row in rows] == ["a.wav", "b.wav"]
    assert rows[0]["label"] == rows[0]["top1"] and rows[0]["error"] == "" and float(rows[0]["prob3"]) > 0
    assert rows[0]["flags"] == ""

    sf.write(folder / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    r = runner.invoke(app, ["predict", str(folder / "silent.wav"), "--model", model, "-f", "csv"])
    assert r.exit_code == 0, r.output
    assert list(csv.DictReader(io.StringIO(r.stdout)))[0]["flags"] == "silent;padded;not_music"

    r = runner.invoke(app, ["predict", str(tmp_path / "missing.wav"), "--model", model])
    assert r.exit_code == 1 and "no such file" in r.stderr


def test_cli_export(trained, tmp_path):
    r = runner.invoke(app, ["export", str(trained["run"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "m.onnx" in r.stdout
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == ["class00", "class01", "class02", "class03"]
    assert json.loads(meta["melgenre_card"])["preset"] == json.loads(meta["preset"])
    r = runner.invoke(app, ["export", str(trained["run"]), "--format", "package", "--out", str(tmp_path / "p" / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "m.safetensors").is_file()
    assert json.loads((tmp_path / "p" / "m.json").read_text()) == json.loads(trained["card"].read_text())


def test_real_clip(model):
    flac = min(shared_path("gtzan-dev").rglob("*.flac"))
    pred = model.predict(flac)
    _check(pred, model)
    assert 25 < pred.duration < 35 and len(pred.window_starts) >= 18 and not pred.silent


def test_shipped_default_model():
    """The packaged default model loads with no arguments, matches its card and predicts."""
    from melgenre.predict import default_model_path

    card = json.loads(default_model_path().read_text())
    model = load_model()
    assert model.model_id == card["model_id"] and model.preset.name == "musicnn"
    assert model.classes == ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop",
                             "reggae", "rock"]
    # trained on every dev clip: the card carries CV estimates, the artist-disjoint one first
    first, second = card["metrics"]["estimates"]
    assert first["protocol"].startswith("artist-disjoint") and "optimistic" in second["protocol"]
    assert 0 < first["track"]["balanced_accuracy"] < second["track"]["balanced_accuracy"] <= 1
    y = np.random.default_rng(3).standard_normal(SR * 4).astype(np.float32) * 0.1
    pred = model.predict(y, sr=SR)
    assert pred.label in model.classes and len(pred.window_starts) == 1
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-5


@pytest.mark.parametrize("name,windows", [("default", 5), ("melcnn", 18)])  # the card hops 6 s; 1.5 s
def test_shipped_models_label_the_au_originals_of_training_clips(name, windows):
    """The ten .au originals are the dev clips' 00000 recordings, which both shipped models trained
    on: this checks the whole path (decode, resample, features, model) gives their genres, not accuracy
    (figures on training clips are optimistic)."""
    model = load_model(name)
    right = 0
    for genre in model.classes:
        pred = model.predict(shared_path("gtzan-au", genre, f"{genre}.00000.au"))
        assert pred.window_probabilities.shape == (windows, 10)
        right += pred.label == genre
    assert right >= 9
