"""melgenre score: a model on a labelled corpus of audio files, training files left out, with intervals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.evaluate import score_corpus, training_tracks
from melgenre.predict import load_model

runner = CliRunner()


def test_score_leaves_out_the_training_files_and_matches_predict(tiny_card, tmp_path):
    clips = tiny_card.parent / "clips"
    card = json.loads(tiny_card.read_text())
    trained = card["training"]["data"]["tracks"]  # export lists the run's training tracks
    assert len(trained) == card["metrics"]["split_tracks"]["train"] and 0 < len(trained) < 12
    assert training_tracks(card) == {t.split("/")[-1] for t in trained}

    result = score_corpus(clips, tmp_path / "s", model=tiny_card, backend="torch", workers=0, progress=False)
    assert result["training_files"] == result["excluded"] == len(trained) and result["n"] == 12 - len(trained)
    model = load_model(tiny_card, backend="torch")
    names = set(training_tracks(card))
    held = [p for p in sorted(clips.rglob("*.wav")) if p.stem not in names]
    right = [model.predict(p).label == p.parent.name for p in held]
    assert result["track"]["accuracy"] == pytest.approx(np.mean(right), abs=1e-6)
    low, high = result["track"]["intervals"]["balanced_accuracy"]
    assert low <= result["track"]["balanced_accuracy"] + 1e-9 and result["track"]["balanced_accuracy"] <= high + 1e-9
    for c in result["track"]["per_class"]:  # each genre's recall with its Wilson interval
        low, high = c["recall_interval"]
        assert low <= c["recall"] <= high and c["support"] > 0
    for name in ("predictions.sqlite", "scores.json", "report.md", "confusion_corpus_track.png"):
        assert (tmp_path / "s" / name).is_file(), name
    report = (tmp_path / "s" / "report.md").read_text()
    assert f"{len(trained)} file(s) are named like tracks the model trained on: left out." in report
    ci = result["track"]["intervals"]["balanced_accuracy"]
    assert f"balanced accuracy (mean recall over the genres present) {result['track']['balanced_accuracy']:.3f} [" \
           f"{ci[0]:.3f}, {ci[1]:.3f}]" in report
    assert json.loads((tmp_path / "s" / "scores.json").read_text())["n"] == result["n"]

    everything = score_corpus(clips, tmp_path / "all", model=tiny_card, backend="torch", workers=0, progress=False,
                              include_training=True)
    assert everything["n"] == 12 and everything["excluded"] == 0 and everything["training_files"] == len(trained)
    assert "optimistic" in (tmp_path / "all" / "report.md").read_text()


def test_score_refuses_foreign_classes_and_reports_broken_files(tiny_card, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_card.parent / "clips", corpus)
    (corpus / "polka").mkdir()
    sf.write(corpus / "polka" / "p.wav", np.zeros(22_050, dtype=np.float32), 22_050)
    with pytest.raises(MelgenreError, match="class folder\\(s\\) polka are not genres of model"):
        score_corpus(corpus, tmp_path / "s", model=tiny_card, backend="torch", workers=0, progress=False)
    assert not (tmp_path / "s").exists()
    shutil.rmtree(corpus / "polka")
    broken = next(corpus.glob("class00")) / "broken.wav"
    broken.write_text("not audio")
    r = runner.invoke(app, ["score", str(corpus), "--model", str(tiny_card), "--out", str(tmp_path / "cli"),
                            "--backend", "torch", "--workers", "0", "--no-progress"])
    assert r.exit_code == 1, r.output  # the others are scored; the broken file is named
    assert "broken.wav" in r.output and "balanced accuracy" in r.output and "left out" in r.output
    result = json.loads((tmp_path / "cli" / "scores.json").read_text())
    assert [p for p, _ in result["failed"]] == [str(broken.resolve())]
    r = runner.invoke(app, ["score", str(tmp_path / "nowhere"), "--model", str(tiny_card), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "nowhere" in r.output and len(r.output.strip().splitlines()) == 1
