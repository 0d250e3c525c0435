"""musicnn's own 50 tags: the API (predict_tags) and `melgenre predict --tags`."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import shared_path, tone
from melgenre.cli import app
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.models.musicnn import MSD_TAGS, MTT_TAGS
from melgenre.predict import TagPrediction, load_tagger, predict_tags

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _clip(seconds: float, sr: int = 22_050, seed: int = 0) -> np.ndarray:
    """A chord with a little noise (any rate: predict_tags resamples to 16 kHz)."""
    rng = np.random.default_rng(seed)
    y = tone(seconds, sr, 220.0) + tone(seconds, sr, 330.0, amp=0.3) + tone(seconds, sr, 550.0, amp=0.2)
    return (y + 0.02 * rng.standard_normal(y.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 7-s and a 1-s wav (22.05 kHz) and a .wav of garbage bytes."""
    root = tmp_path_factory.mktemp("tags")
    sf.write(root / "long.wav", _clip(7.0), 22_050)
    sf.write(root / "short.wav", _clip(1.0, seed=1), 22_050)
    (root / "garbage.wav").write_bytes(b"\x00\x17RIFFnot audio at all\xff" * 4)
    return root


# -- the API ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,names", [("msd", MSD_TAGS), ("mtt", MTT_TAGS)])
def test_predict_tags_on_a_synthetic_clip(dataset, names):
    y = _clip(7.0)
    pred = predict_tags(y, dataset, top_k=5, sr=22_050)
    assert isinstance(pred, TagPrediction) and pred.dataset == dataset and pred.source == "<array>"
    # 7 s at 16 kHz -> 438 frames -> back-to-back 187-frame patches at frames 0 and 187
    assert pred.window_taggram.shape == (2, 50) and pred.window_taggram.dtype == np.float32
    assert pred.window_starts == pytest.approx([0.0, 187 * 256 / 16000])
    assert pred.duration == pytest.approx(7.0) and not pred.padded and not pred.silent
    assert list(pred.probabilities) == list(names)
    probs = np.array(list(pred.probabilities.values()))
    assert np.all((probs >= 0) & (probs <= 1)) and np.all((pred.window_taggram >= 0) & (pred.window_taggram <= 1))
    np.testing.assert_allclose(probs, pred.window_taggram.mean(axis=0), rtol=1e-6)  # clip level = mean of windows
    assert len(pred.top) == 5 and all(tag in names for tag, _ in pred.top)
    top_probs = [p for _, p in pred.top]
    assert top_probs == sorted(top_probs, reverse=True) and top_probs[0] == pytest.approx(probs.max())
    assert pred.label == pred.top[0][0] and top_probs[-1] >= np.sort(probs)[-5]
    assert pred.model_id.startswith(f"musicnn_{dataset}-") and len(pred.model_id) == len(f"musicnn_{dataset}-") + 12


def test_a_short_clip_gives_one_padded_window_and_matches_a_file_and_bytes(clips):
    pred = predict_tags(clips / "short.wav", "mtt", top_k=3)
    assert pred.window_taggram.shape == (1, 50) and pred.window_starts == [0.0]
    assert pred.padded and pred.duration == pytest.approx(1.0) and pred.source == str(clips / "short.wav")
    again = predict_tags((clips / "short.wav").read_bytes(), "mtt", top_k=3, name="upload")
    assert again.source == "upload"
    np.testing.assert_array_equal(again.window_taggram, pred.window_taggram)


def test_to_dict_is_json_safe_and_rounded():
    pred = predict_tags(_clip(4.0), "msd", top_k=2, sr=22_050, name="clip")
    d = json.loads(json.dumps(pred.to_dict()))
    assert d["source"] == "clip" and d["dataset"] == "msd" and d["label"] == pred.label
    assert [t for t, _ in d["top"]] == [t for t, _ in pred.top]
    assert d["top"][0][1] == round(pred.top[0][1], 6)
    assert len(d["window_taggram"]) == 1 and len(d["window_taggram"][0]) == 50
    assert d["probabilities"]["rock"] == round(pred.probabilities["rock"], 6)


def test_the_tagger_is_built_once_per_dataset():
    assert load_tagger("msd") is load_tagger("msd") and load_tagger("mtt") is not load_tagger("msd")
    assert load_tagger("mtt").classes == list(MTT_TAGS)


def test_bad_inputs_raise_melgenre_errors(clips):
    with pytest.raises(MelgenreError, match="unknown tag set 'imagenet'"):
        predict_tags(_clip(1.0), "imagenet", sr=22_050)
    with pytest.raises(MelgenreError, match="pass sr="):
        predict_tags(_clip(1.0))
    with pytest.raises(AudioDecodeError, match="garbage.wav"):
        predict_tags(clips / "garbage.wav")
    with pytest.raises(ValueError, match="top_k"):
        predict_tags(_clip(1.0), sr=22_050, top_k=0)


# -- the command line --------------------------------------------------------------------------

def test_cli_tags_json(clips):
    r = invoke("predict", clips / "long.wav", clips / "short.wav", "--tags", "mtt", "-k", 4, "-f", "json",
               "--no-progress")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [d["source"] for d in out] == [str(clips / "long.wav"), str(clips / "short.wav")]
    for d in out:
        want = predict_tags(d["source"], "mtt", top_k=4)
        assert d["dataset"] == "mtt" and len(d["top"]) == 4 and len(d["probabilities"]) == 50
        assert [t for t, _ in d["top"]] == [t for t, _ in want.top]
        assert [p for _, p in d["top"]] == pytest.approx([p for _, p in want.top], abs=1e-6)
        assert all(t in MTT_TAGS for t, _ in d["top"])
    assert [len(d["window_taggram"]) for d in out] == [2, 1] and out[1]["padded"] is True


def test_cli_tags_csv_reports_a_broken_file_and_goes_on(clips):
    r = invoke("predict", clips, "--tags", "msd", "-k", 3, "-f", "csv", "--no-progress")
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "garbage.wav" in errors[0] and "not a decodable audio file" in errors[0]
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["file", "label", "prob", "top1", "prob1", "top2", "prob2", "top3", "prob3", "flags", "error"]
    by_file = {row[0]: row for row in rows[1:]}
    assert set(by_file) == {str(clips / n) for n in ("garbage.wav", "long.wav", "short.wav")}
    assert by_file[str(clips / "garbage.wav")][1:-1] == [""] * 9
    assert by_file[str(clips / "short.wav")][-2] == "padded" and by_file[str(clips / "long.wav")][-2] == ""
    assert "not a decodable audio file" in by_file[str(clips / "garbage.wav")][-1]
    want = predict_tags(clips / "long.wav", "msd", top_k=3)
    row = by_file[str(clips / "long.wav")]
    assert row[1] == want.label and float(row[2]) == pytest.approx(want.top[0][1], abs=1e-6)
    assert row[3:9:2] == [t for t, _ in want.top] and row[3:9:2][0] in MSD_TAGS
    assert [float(p) for p in row[4:9:2]] == pytest.approx([p for _, p in want.top], abs=1e-6)
    assert row[-1] == ""


def test_cli_tags_table(clips):
    r = invoke("predict", clips / "short.wav", "--tags", "mtt", "-k", 2)
    assert r.exit_code == 0, r.output
    top = predict_tags(clips / "short.wav", "mtt", top_k=2).top
    assert "musicnn MTT tags" in r.stdout and f"{top[0][0]} {top[0][1]:.3f}" in r.stdout and "padded" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--tags", "imagenet"], "--tags must be msd or mtt"),
    (["--tags", "msd", "--hop", "3"], "does not take --hop"),
    (["--tags", "msd", "--ray"], "does not take --ray"),
    (["--tags", "mtt", "--backend", "onnx"], "does not take --backend onnx"),
    (["--tags", "mtt", "--model", "runs/x"], "does not take --model"),
])
def test_cli_tags_rejects_options_it_cannot_use(clips, args, message):
    r = invoke("predict", clips / "short.wav", *args)
    assert r.exit_code == 2 and message in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_cli_tags_mtt_finds_a_classical_clip_classical():
    path = shared_path("gtzan-dev", "classical", "classical.00001.flac")
    r = invoke("predict", path, "--tags", "mtt", "-k", 3, "-f", "json")
    assert r.exit_code == 0, r.output
    (d,) = json.loads(r.stdout)
    assert "classical" in [t for t, _ in d["top"]]
    assert len(d["window_taggram"]) == 10 and d["probabilities"]["classical"] > 0.5
