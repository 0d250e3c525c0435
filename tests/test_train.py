"""Training end to end on synthetic clips: accuracy, resume after a kill, CV, CLI."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from melgenre import store, synth
from melgenre.cli import app
from melgenre.config import config_from_dict
from melgenre.train import GenreClassifier, TrainingError, cross_validate, evaluate_run, fit

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"batch_size": 8, "fractions": [0.6, 0.2, 0.2]},
    "model": {"name": "melcnn", "width": 8, "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    "train": {"max_epochs": 12, "patience": 12},
}


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Path:
    """4 synthetic classes × 12 clips of 6 s in preset fast (3 chunks per clip)."""
    root = tmp_path_factory.mktemp("train")
    synth.write_corpus(root / "clips", n_classes=4, per_class=12, seconds=6.0, seed=1)
    path = root / "syn-fast.h5"
    store.prepare(root / "clips", "fast", path, workers=1, progress=False)
    return path


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_learns_synthetic_classes(synth_store, tmp_path):
    started = time.perf_counter()
    run = fit(config_from_dict(TINY), tmp_path, data=synth_store, progress=False)
    assert time.perf_counter() - started < 90  # "within a minute" on a quiet machine; slack for CI load
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["results"]["val"]["track"]["accuracy"] >= 0.9
    assert metrics["results"]["val"]["chunk"]["accuracy"] >= 0.9
    assert 0 <= metrics["best_epoch"] < metrics["epochs"] <= 12
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(len(history)))
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    for name in ("config.yaml", "splits.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "report.md",
                 "history.png", "confusion_val_track.png", "class_distribution.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    splits = json.loads((run / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"]) and len(splits["val"]) == 12  # 12 per class × 0.2 = 2.4 -> 3 (largest remainder)
    with pytest.raises(Exception, match="already finished"):
        fit(config_from_dict(TINY), tmp_path, data=synth_store, progress=False)


def test_resume_after_kill_finishes_with_same_epochs(synth_store, tmp_path):
    cfg = {**TINY, "name": "killed", "train": {"max_epochs": 6, "patience": 50}}
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "melgenre", "train", str(config), "--data", str(synth_store),
                             "--out", str(tmp_path / "runs"), "--no-progress"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = tmp_path / "runs" / "killed"
    assert last.exists() and not (run / "metrics.json").exists(), "killed too late or too early"
    done_before = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert done_before < 6

    fit(config_from_dict(cfg), tmp_path / "runs", data=synth_store, progress=False)
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(6))
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 6


def test_cross_validation_and_final_retrain(synth_store, tmp_path):
    cfg = config_from_dict({**TINY, "name": "cv", "train": {"max_epochs": 3, "patience": 3}})
    result = cross_validate(cfg, folds=2, runs_dir=tmp_path, data=synth_store, progress=False)
    assert len(result["val"]["track"]["accuracy"]["folds"]) == 2 and len(result["best_epochs"]) == 2
    assert 1 <= result["final_epochs"] <= 3
    final = json.loads((tmp_path / "cv" / "final" / "metrics.json").read_text())
    assert final["epochs"] == result["final_epochs"] and "test" in final["results"]
    assert final["results"]["test"]["track"]["n"] == 8  # 12 per class × 0.2 = 2.4 -> 2
    splits = [json.loads((tmp_path / "cv" / f"fold{k}" / "splits.json").read_text()) for k in range(2)]
    assert splits[0]["test"] == splits[1]["test"] and not set(splits[0]["val"]) & set(splits[1]["val"])
    assert "mean ± std" in (tmp_path / "cv" / "cv.md").read_text()
    pooled = result["pooled"]  # the folds' validation tracks, pooled: every non-test track once
    assert pooled["n"] == sum(len(s["val"]) for s in splits) == 40
    assert sum(map(sum, pooled["confusion"])) == 40 and 0 <= pooled["balanced"]["macro_precision"] <= 1


def test_fixed_epoch_cross_validation_scores_the_last_epoch(synth_store, tmp_path):
    """--fixed-epochs: no early stopping, each fold's last epoch is scored, the final retrain
    trains max_epochs; the folds live beside those of a best-epoch CV, not over them."""
    cfg = config_from_dict({**TINY, "name": "cv", "train": {"max_epochs": 2, "patience": 1}})
    result = cross_validate(cfg, folds=2, runs_dir=tmp_path, data=synth_store, progress=False, fixed_epochs=True)
    assert result["selection"] == "last epoch" and result["final_epochs"] == 2
    for k in range(2):
        metrics = json.loads((tmp_path / "cv" / f"fold{k}-last" / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and metrics["checkpoint"].endswith("last.ckpt")
        assert not (tmp_path / "cv" / f"fold{k}-last" / "checkpoints" / "best.ckpt").exists()
    final = json.loads((tmp_path / "cv" / "final-last" / "metrics.json").read_text())
    assert final["epochs"] == 2 and final["results"]["test"]["track"]["n"] == 8
    assert result["pooled"]["n"] == 40 and (tmp_path / "cv" / "cv-last.json").is_file()
    again = evaluate_run(tmp_path / "cv" / "fold0-last", splits=("val",))  # default: the kept last epoch
    assert again["checkpoint"].endswith("last.ckpt") and again["results"]["val"]["track"]["n"] == 20
    assert not (tmp_path / "cv" / "cv.json").exists()


def test_nan_loss_is_a_clear_error():
    module = GenreClassifier({"name": "melcnn", "width": 4}, ["a", "b"], {"name": "adam", "lr": 1e-3,
                                                                          "weight_decay": 0.0, "momentum": 0.9,
                                                                          "schedule": "none"})
    x = torch.full((2, 1, 64, 64), float("nan"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 0, batch 3"):
        module.training_step((x, torch.tensor([0, 1])), 3)


def test_cli_train_evaluate_table(synth_store, tmp_path):
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({**TINY, "name": "cli", "train": {"max_epochs": 2, "patience": 2}}))
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(config), "--data", str(synth_store), "--out", str(tmp_path / "runs"),
                            "--no-progress", "-O", "model.width=4"])
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.output and "macro precision" in r.output
    saved = yaml.safe_load((tmp_path / "runs" / "cli" / "config.yaml").read_text())
    assert saved["model"]["width"] == 4
    r = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "cli"), "--split", "test"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(config), "--data", str(synth_store), "--out", str(tmp_path / "runs"),
                            "--no-progress", "-O", "model.width=4", "-O", "name=all", "-O", "data.fractions=[1,0,0]",
                            "-O", "train.max_epochs=1"])
    assert r.exit_code == 0, r.output
    assert "no validation or test split: kept the last of 1 epochs" in r.output
    assert (tmp_path / "runs" / "all" / "checkpoints" / "last.ckpt").is_file()
    r = runner.invoke(app, ["cv", str(config), "--data", str(synth_store), "--out", str(tmp_path / "runs"),
                            "--folds", "2", "--fixed-epochs", "--no-progress", "-O", "model.width=4",
                            "-O", "train.max_epochs=1", "-O", "name=cli-cv"])
    assert r.exit_code == 0, r.output
    assert "last epoch" in r.output and "pooled over the folds (40 tracks)" in r.output
    assert (tmp_path / "runs" / "cli-cv" / "cv-last.md").is_file()
    r = runner.invoke(app, ["train", str(config), "-O", "train.patiense=3"])
    assert r.exit_code == 2 and "train.patiense: unknown key" in r.output
    r = runner.invoke(app, ["train", str(config), "--data", str(tmp_path / "none.h5")])
    assert r.exit_code == 2 and "none.h5 is not a file" in r.output
