"""int8 ONNX models: `melgenre export --int8`, and the shipped melcnn-int8 against its float model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from melgenre import synth
from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.predict import export_onnx_file, expand_paths, load_model, shipped_model_path, shipped_models

runner = CliRunner()


def test_export_int8_writes_a_quantized_model_with_its_card(tiny_card, tmp_path):
    clips = tiny_card.parent / "clips"
    out = export_onnx_file(tiny_card, tmp_path / "tiny-int8.onnx", [clips], calibration_files=6)
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the graph really is quantized
    quick, exact = load_model(out), load_model(tiny_card, backend="onnx")
    assert quick.backend == "onnx" and quick.model_id == exact.model_id + "-int8"
    q = quick.card["quantization"]
    assert q["of"] == exact.model_id and q["calibration_files"] == 6 and q["calibration_windows"] >= 6
    assert {k: v for k, v in quick.card.items() if k not in ("model_id", "quantization")} == \
        {k: v for k, v in exact.card.items() if k != "model_id"}
    for clip in expand_paths([clips]):
        a, b = exact.predict(clip), quick.predict(clip)
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.1


def test_int8_errors_are_one_line(tiny_card, tmp_path):
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "bad.wav").write_text("not audio")
    with pytest.raises(MelgenreError, match="int8 calibration: none of the 1 files could be decoded"):
        export_onnx_file(tiny_card, tmp_path / "x.onnx", [tmp_path / "noise"])
    assert not (tmp_path / "x.onnx").exists()
    r = runner.invoke(app, ["export", str(tiny_card), "--format", "package", "--out", str(tmp_path / "p"),
                            "--int8", str(tmp_path)])
    assert r.exit_code == 2 and "--int8 goes with --format onnx" in r.output
    r = runner.invoke(app, ["export", "melcnn", "--format", "package", "--out", str(tmp_path / "copy")])
    assert r.exit_code == 0, r.output  # SOURCE may name a shipped package, for either format
    assert json.loads((tmp_path / "copy.json").read_text())["model_id"] == load_model("melcnn").model_id
    r = runner.invoke(app, ["predict", str(tiny_card.parent / "clips"), "--model", "melcnn-int8", "--backend", "torch"])
    assert r.exit_code != 0 and "runs only with the onnx backend" in r.output


def test_shipped_int8_melcnn_agrees_with_melcnn_on_synthetic_audio(tmp_path):
    assert "melcnn-int8" in shipped_models() and shipped_model_path("melcnn-int8").suffix == ".onnx"
    quick, exact = load_model("melcnn-int8"), load_model("melcnn", backend="onnx")
    assert quick.card["quantization"]["of"] == exact.model_id and quick.classes == exact.classes
    synth.write_corpus(tmp_path, n_classes=3, per_class=2, seconds=6.0, seed=5)
    for clip in expand_paths([tmp_path]):
        a, b = exact.predict(clip), quick.predict(clip)
        np.testing.assert_allclose(b.window_probabilities, a.window_probabilities, atol=0.1)


def test_shipped_int8_melcnn_agrees_with_melcnn_on_real_clips():
    clips = expand_paths([shared_path("gtzan-dev")])[::10]  # 21 clips, every genre
    quick, exact = load_model("melcnn-int8"), load_model("melcnn", backend="onnx")
    diffs, same = [], 0
    for clip in clips:
        a, b = exact.predict(clip), quick.predict(clip)
        same += a.label == b.label
        diffs.append(max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities))
    assert same == len(clips) and max(diffs) < 0.05, (same, max(diffs))
    assert quick.card["quantization"]["calibration_files"] == 32  # as tools/make_int8.sh made it
