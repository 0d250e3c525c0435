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
from melgenre.models import int8_cpu
from melgenre.predict import export_onnx_file, expand_paths, load_model, shipped_model_path, shipped_models

runner = CliRunner()

# How far int8 probabilities may be from the float model's. Measured on an AMD EPYC (avx2, no
# avx512_vnni/avx_vnni): the shipped melcnn-int8 is at most 0.030 from melcnn on the 202 dev clips
# (0.048 for one window), and at most 0.018 per window on the synthetic clips below. With weights in
# [-64, 64] the integer products are exact on every x86 CPU (VNNI or not), so other CPUs differ only
# in float rounding; int8 ranges that saturate (full-range weights on this CPU: 0.61) or that were
# calibrated on silence (all-zero input: 0.56) are far outside.
TOLERANCE = 0.05


def _window_agreement(exact, quick, clips) -> float:
    """The largest difference between the two models' window probabilities on ``clips``."""
    return max(float(np.abs(np.asarray(exact.predict(c).window_probabilities)
                            - np.asarray(quick.predict(c).window_probabilities)).max()) for c in clips)


def test_export_int8_writes_a_quantized_model_with_its_card(tmp_path):
    # melcnn, not the tiny test model: its near-uniform outputs barely move whatever the int8 ranges
    clips = tmp_path / "clips"
    synth.write_corpus(clips, n_classes=3, per_class=2, seconds=6.0, seed=5)
    out = export_onnx_file("melcnn", tmp_path / "melcnn-int8.onnx", [clips], calibration_files=6)
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the graph really is quantized
    quick, exact = load_model(out), load_model("melcnn", backend="onnx")
    assert quick.backend == "onnx" and quick.model_id == exact.model_id + "-int8"
    q = quick.card["quantization"]
    assert q["of"] == exact.model_id and q["calibration_files"] == 6 and q["calibration_windows"] >= 6
    assert {k: v for k, v in quick.card.items() if k not in ("model_id", "quantization")} == \
        {k: v for k, v in exact.card.items() if k != "model_id"}
    worst = _window_agreement(exact, quick, expand_paths([clips]))  # near-tied labels: probabilities only
    assert worst < TOLERANCE, f"on {int8_cpu()}: window probabilities up to {worst:.3f} apart (tolerance {TOLERANCE})"


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
    worst = _window_agreement(exact, quick, expand_paths([tmp_path]))
    assert worst < TOLERANCE, f"on {int8_cpu()}: window probabilities up to {worst:.3f} apart (tolerance {TOLERANCE})"


def test_shipped_int8_melcnn_agrees_with_melcnn_on_training_clips():
    """Real dev clips, which melcnn trained on: agreement on training clips is optimistic."""
    clips = expand_paths([shared_path("gtzan-dev")])[::10]  # 21 clips, every genre
    quick, exact = load_model("melcnn-int8"), load_model("melcnn", backend="onnx")
    same, diffs = 0, []
    for clip in clips:
        a, b = exact.predict(clip), quick.predict(clip)
        same += a.label == b.label
        diffs.append(max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities))
    assert same == len(clips) and max(diffs) < TOLERANCE, (
        f"on {int8_cpu()}: {same} of {len(clips)} labels equal melcnn's, probabilities up to {max(diffs):.3f} "
        f"apart (tolerance {TOLERANCE})")
    assert quick.card["quantization"]["calibration_files"] == 32  # as tools/make_int8.sh made it


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu avx avx2 fma", "avx2, no avx512_vnni/avx_vnni"),
    ("avx2 avx512f avx512_vnni", "avx2, avx512_vnni, no avx_vnni"),
    ("avx2 avx512vnni avx_vnni", "avx2, avx512_vnni, avx_vnni"),  # spelt without "_" by some tools
    ("sse4_2", "no avx2/avx512_vnni/avx_vnni"),
])
def test_int8_cpu_names_the_cpu_and_its_int8_features(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    "model name\t: Other CPU\nflags\t\t: avx2 avx512_vnni avx_vnni\n")
    assert str(int8_cpu(info)) == f"Some CPU ({expected})"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp\n")  # ARM: no x86 flags
    assert int8_cpu(info).flags is None and str(int8_cpu(info)).endswith("(int8 features unknown)")
    assert int8_cpu(tmp_path / "missing").flags is None
