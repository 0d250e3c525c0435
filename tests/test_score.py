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

    # --groups: each class's files by two "artists" (one file left unnamed: a group of its own)
    files = sorted(clips.rglob("*.wav"))
    artists = tmp_path / "artists.csv"
    artists.write_text("track,artist\n" + "".join(f"{p.parent.name}/{p.stem},{p.parent.name}-{i % 2}\n"
                                                   for i, p in enumerate(files[1:])))
    r = runner.invoke(app, ["score", str(clips), "--model", str(tiny_card), "--backend", "torch", "--workers", "0",
                            "--out", str(tmp_path / "g"), "--include-training", "--groups", str(artists), "--no-progress"])
    assert r.exit_code == 0, r.output
    grouped = json.loads((tmp_path / "g" / "scores.json").read_text())["track"]
    n_groups = len({f"{p.parent.name}-{i % 2}" for i, p in enumerate(files[1:])}) + 1
    gi = grouped["group_intervals"]
    assert gi["groups"] == n_groups and gi["accuracy"][0] - 1e-6 <= grouped["accuracy"] <= gi["accuracy"][1] + 1e-6
    assert f"resampling whole groups ({n_groups}; the intervals to quote when they are artists)" in r.output
    assert f"Resampling whole groups of artists.csv ({n_groups} groups" in (tmp_path / "g" / "report.md").read_text()


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


def test_compare_two_scores_of_the_same_files(tiny_card, tmp_path):
    """compare pairs two `score` folders by file: the same model scores no difference, a copy with
    some answers made wrong loses exactly those files."""
    from melgenre.evaluate import compare_scores

    clips = tiny_card.parent / "clips"
    held = score_corpus(clips, tmp_path / "held", model=tiny_card, backend="torch", workers=0, progress=False)
    everything = score_corpus(clips, tmp_path / "all", model=tiny_card, backend="torch", workers=0, progress=False,
                              include_training=True)
    same = compare_scores(tmp_path / "held", tmp_path / "all")
    assert same["common"] == held["n"] < everything["n"]  # only the files both scored
    assert same["metrics"]["accuracy"]["difference"] == 0 and same["discordant"] == {"a_only": 0, "b_only": 0}

    worse = json.loads((tmp_path / "all" / "scores.json").read_text())  # B: every right answer made wrong
    other_genre = {"class00": "class01", "class01": "class02", "class02": "class00"}
    spoiled = 0
    for f in worse["files"]:
        if f["label"] == f["genre"] and f["path"] in {g["path"] for g in held["files"]}:
            f["label"], spoiled = other_genre[f["genre"]], spoiled + 1
    assert spoiled > 0
    (tmp_path / "worse").mkdir()
    (tmp_path / "worse" / "scores.json").write_text(json.dumps(worse))
    result = compare_scores(tmp_path / "held", tmp_path / "worse")
    assert result["discordant"] == {"a_only": spoiled, "b_only": 0}
    assert result["metrics"]["accuracy"]["difference"] == pytest.approx(held["track"]["accuracy"])  # B: none right
    r = runner.invoke(app, ["compare", str(tmp_path / "held"), str(tmp_path / "worse")])
    assert r.exit_code == 0 and f"the {held['n']} files both scored" in " ".join(r.output.split())

    with pytest.raises(MelgenreError, match="no scores.json"):
        compare_scores(tmp_path / "held", tmp_path)
    other = json.loads((tmp_path / "all" / "scores.json").read_text())
    for c in other["track"]["per_class"]:
        c["class"] = "x" + c["class"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scores.json").write_text(json.dumps(other))
    with pytest.raises(MelgenreError, match="predict different genres"):
        compare_scores(tmp_path / "held", tmp_path / "other")
    r = runner.invoke(app, ["compare", str(tmp_path / "held"), str(tmp_path / "worse"), "--groups"])
    assert r.exit_code == 2 and "not score folders" in r.output
