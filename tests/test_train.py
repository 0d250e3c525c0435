"""Training end to end on synthetic clips: accuracy, resume after a kill, CV, CLI."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from melgenre import store, synth
from melgenre.cli import app
from melgenre.config import config_from_dict
from melgenre.cv import cross_validate
from melgenre.errors import ConfigError, MelgenreError
from melgenre.evaluate import wilson_interval
from melgenre.train import GenreClassifier, TrainingError, evaluate_run, fit, track_probabilities

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


@pytest.mark.slow  # ~40-80 s on 2 cores: trains until it learns; CI runs it (`pytest -m slow`)
def test_tiny_run_learns_synthetic_classes(synth_store, tmp_path):
    run = fit(config_from_dict(TINY), tmp_path, data=synth_store, progress=False)  # timing: melgenre bench
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
    with pytest.raises(MelgenreError) as finished:
        fit(config_from_dict(TINY), tmp_path, data=synth_store, progress=False)
    assert str(finished.value) == (f"{run}: this run already finished; use another name (--override name=...) "
                                   "or --overwrite")


def test_budgeted_epochs_limit_batches_and_validate_every_nth(synth_store, tmp_path):
    """train.limit_train_batches caps an epoch; train.val_every skips validation in between (a
    CPU-budgeted fixed-epoch run): those epochs' history rows have no val values, not stale ones."""
    cfg = config_from_dict({**TINY, "name": "budget",
                            "train": {"max_epochs": 4, "limit_train_batches": 2, "val_every": 2}})
    run = fit(cfg, tmp_path, data=synth_store, progress=False, keep_last=True)
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]
    assert [bool(r["val_macro_precision"]) for r in history] == [False, True, False, True]
    assert history[1]["val_loss"] != history[3]["val_loss"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["results"]["val"]["track"]["n"] == 12
    assert (run / "history.png").is_file()
    with pytest.raises(ConfigError, match="train.val_every: the plateau schedule"):
        config_from_dict({**TINY, "optim": {"schedule": "plateau"}, "train": {"val_every": 2}})
    with pytest.raises(ConfigError, match="train.val_every: must be a finite number >= 1"):
        config_from_dict({**TINY, "train": {"val_every": 0}})


def test_no_validation_split_with_val_every_still_writes_the_checkpoint(synth_store, tmp_path):
    """A run without a validation split and train.val_every > 1 (a final retrain on train+val) keeps its
    last epoch's weights: last.ckpt is written and the run can be evaluated and exported."""
    cfg = config_from_dict({**TINY, "name": "noval", "data": {"batch_size": 8, "fractions": [0.8, 0, 0.2]},
                            "train": {"max_epochs": 3, "limit_train_batches": 1, "val_every": 2}})
    run = fit(cfg, tmp_path, data=synth_store, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and any(k.startswith("model.") for k in ckpt["state_dict"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["results"]["test"]["track"]["n"] == 8


@pytest.mark.slow  # ~25-45 s: a killed training and its resume; CI runs it (`pytest -m slow`)
def test_resume_after_kill_restarts_from_last_ckpt(synth_store, tmp_path, monkeypatch):
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
    saved = torch.load(last, map_location="cpu", weights_only=False)
    done_before = len(saved["melgenre_history"])  # epochs 0 .. done_before - 1 finished before the kill
    assert 1 <= done_before < 6, "killed too late: no epoch left to resume into"
    assert saved["epoch"] == done_before - 1

    # Watch the rerun at the start of its first epoch, after Lightning restored last.ckpt: a restart
    # from scratch starts at epoch 0 with fresh weights and an empty optimiser state.
    seen = []

    def first_epoch_start(self):
        if not seen:
            opt = copy.deepcopy(self.trainer.optimizers[0].state_dict())  # its tensors change in place
            seen.append({"epoch": self.current_epoch, "history": list(self.history),
                         "weights": {k: v.detach().clone() for k, v in self.state_dict().items()},
                         "opt": opt})

    monkeypatch.setattr(GenreClassifier, "on_train_epoch_start", first_epoch_start)
    fit(config_from_dict(cfg), tmp_path / "runs", data=synth_store, progress=False)
    assert seen, "the rerun trained no epoch"
    start = seen[0]
    assert start["epoch"] == done_before  # restarts at the epoch after the last finished one
    assert start["history"] == saved["melgenre_history"]  # the finished epochs' rows carried over
    assert start["weights"].keys() == saved["state_dict"].keys()
    for name, tensor in saved["state_dict"].items():  # the weights of last.ckpt, bit for bit
        assert torch.equal(start["weights"][name], tensor), name
    saved_opt = saved["optimizer_states"][0]["state"]
    assert saved_opt and start["opt"]["state"].keys() == saved_opt.keys()
    for key, state in saved_opt.items():  # AdamW's step count and moments, as saved
        assert int(start["opt"]["state"][key]["step"]) == int(state["step"]) > 0
        assert torch.equal(start["opt"]["state"][key]["exp_avg"], state["exp_avg"])
        assert torch.equal(start["opt"]["state"][key]["exp_avg_sq"], state["exp_avg_sq"])
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(6))
    for row, kept in zip(history, saved["melgenre_history"]):  # the rows before the kill are unchanged
        assert float(row["train_loss"]) == pytest.approx(kept["train_loss"])
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 6


@pytest.mark.slow  # ~20-35 s: two folds and a retrain; CI runs it (`pytest -m slow`)
def test_cross_validation_and_final_retrain(synth_store, tmp_path):
    cfg = config_from_dict({**TINY, "name": "cv", "train": {"max_epochs": 3, "patience": 3}})
    folds_only = cross_validate(cfg, folds=2, runs_dir=tmp_path, data=synth_store, progress=False,
                                final_retrain=False)
    # each fold records its best epoch: the first with the best validation monitor, counted from 0
    monitor = cfg.train.monitor
    for k in range(2):
        values = [float(r[monitor]) for r in _history(tmp_path / "cv" / f"fold{k}")]
        best = values.index(min(values) if monitor.endswith("loss") else max(values))
        assert folds_only["best_epochs"][k] == best
        assert json.loads((tmp_path / "cv" / f"fold{k}" / "metrics.json").read_text())["best_epoch"] == best
    assert folds_only["final_epochs"] is None and not (tmp_path / "cv" / "final").exists()
    # The final retrain trains round(mean(best epoch + 1)) epochs. The synthetic folds peak at once, so
    # record best epochs 0 and 2 in the finished folds (reused on the rerun): (1 + 3) / 2 = 2 epochs,
    # which is neither max_epochs (3), the mean without the + 1 (1), nor the latest best + 1 (3).
    for k, best in enumerate((0, 2)):
        path = tmp_path / "cv" / f"fold{k}" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "best_epoch": best}))
    result = cross_validate(cfg, folds=2, runs_dir=tmp_path, data=synth_store, progress=False)
    assert len(result["val"]["track"]["accuracy"]["folds"]) == 2 and result["best_epochs"] == [0, 2]
    assert result["final_epochs"] == 2
    assert [int(r["epoch"]) for r in _history(tmp_path / "cv" / "final")] == [0, 1]
    final = json.loads((tmp_path / "cv" / "final" / "metrics.json").read_text())
    assert final["epochs"] == result["final_epochs"] and "test" in final["results"]
    assert final["results"]["test"]["track"]["n"] == 8  # 12 per class × 0.2 = 2.4 -> 2
    splits = [json.loads((tmp_path / "cv" / f"fold{k}" / "splits.json").read_text()) for k in range(2)]
    assert splits[0]["test"] == splits[1]["test"] and not set(splits[0]["val"]) & set(splits[1]["val"])
    assert "mean ± std" in (tmp_path / "cv" / "cv.md").read_text()
    pooled = result["pooled"]  # the folds' validation tracks, pooled: every non-test track once
    assert pooled["n"] == sum(len(s["val"]) for s in splits) == 40
    assert sum(map(sum, pooled["confusion"])) == 40 and 0 <= pooled["balanced"]["macro_precision"] <= 1


@pytest.mark.slow  # ~15-30 s: two cross-validations; CI runs it (`pytest -m slow`)
def test_fixed_epoch_cross_validation_scores_the_last_epoch(synth_store, tmp_path):
    """--fixed-epochs: no early stopping, each fold's last epoch is scored, the final retrain
    trains max_epochs; the folds live beside those of a best-epoch CV, not over them."""
    cfg = config_from_dict({**TINY, "name": "cv", "train": {"max_epochs": 2, "patience": 1}})
    result = cross_validate(cfg, folds=2, runs_dir=tmp_path, data=synth_store, progress=False, fixed_epochs=True)
    assert result["selection"] == "last epoch" and result["final_epochs"] == 2
    assert result["protocol"] == "stratified k-fold (same artists on both sides: optimistic)"
    assert result["groups"] is None and result["fold_tracks"] == [20, 20]
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


# GTZAN-like track numbers: two per class in each fault-filtered part, and two jazz tracks outside it
GTZAN_LIKE = {"blues": {"train": (30, 31), "val": (0, 1), "test": (12, 13)},
              "classical": {"train": (30, 31), "val": (0, 1), "test": (11, 12)},
              "jazz": {"train": (0, 1), "val": (2, 3), "test": (73, 74), None: (33, 34)}}


@pytest.fixture(scope="module")
def gtzan_like_store(tmp_path_factory) -> Path:
    """3 GTZAN genres × 6-8 synthetic 3.5-s clips named like GTZAN's (``blues/blues.00030``...)."""
    root = tmp_path_factory.mktemp("gtzan-like")
    rng = np.random.default_rng(2)
    for label, (genre, parts) in enumerate(GTZAN_LIKE.items()):
        (root / "clips" / genre).mkdir(parents=True)
        for number in sorted(n for numbers in parts.values() for n in numbers):
            sf.write(root / "clips" / genre / f"{genre}.{number:05d}.wav",
                     synth.synth_clip(label, len(GTZAN_LIKE), 3.5, 22_050, rng), 22_050)
    path = root / "gtzan-like-fast.h5"
    store.prepare(root / "clips", "fast", path, workers=1, progress=False)
    return path


def _gtzan_like_ids(part):
    return {f"{genre}/{genre}.{n:05d}" for genre, parts in GTZAN_LIKE.items() for n in parts.get(part, ())}


def test_artist_disjoint_cross_validation(gtzan_like_store, tmp_path):
    """cv --groups fault_filtered: one fold per fault-filtered part, that part scored; tracks outside
    the parts always train; results sit beside (not over) a stratified CV's."""
    cfg = config_from_dict({**TINY, "name": "cv", "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
                            "train": {"max_epochs": 1, "patience": 1}})
    with pytest.raises(ConfigError, match="fault_filtered groups make 3 folds, not 5"):
        cross_validate(cfg, folds=5, runs_dir=tmp_path, data=gtzan_like_store, progress=False, groups="fault_filtered")
    result = cross_validate(cfg, runs_dir=tmp_path, data=gtzan_like_store, progress=False, fixed_epochs=True,
                            groups="fault_filtered")
    assert result["protocol"] == "artist-disjoint (fault-filtered groups)" and result["groups"] == "fault_filtered"
    assert result["folds"] == 3 and result["fold_groups"] == ["train", "val", "test"]
    assert result["fold_tracks"] == [6, 6, 6] and result["untrained_classes"] == [[], [], []]
    everything = set().union(*(_gtzan_like_ids(part) for part in ("train", "val", "test", None)))
    for k, part in enumerate(("train", "val", "test")):
        run = tmp_path / "cv" / f"group{k}-last"
        splits = json.loads((run / "splits.json").read_text())
        assert set(splits["val"]) == _gtzan_like_ids(part)  # the held-out part, and nothing else
        assert set(splits["train"]) == everything - _gtzan_like_ids(part) and splits["test"] == []
        assert _gtzan_like_ids(None) <= set(splits["train"])  # outside every part: always trains
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["results"]["val"]["track"]["n"] == 6 and metrics["epochs"] == 1
    pooled = result["pooled"]  # every grouped track scored exactly once, the ungrouped never
    assert pooled["n"] == 18 and sum(map(sum, pooled["confusion"])) == 18
    assert [sum(row) for row in pooled["confusion"]] == [6, 6, 6]
    final = json.loads((tmp_path / "cv" / "final-groups-last" / "metrics.json").read_text())
    assert final["epochs"] == 1 and final["results"] == {} and result["test"] == {}
    assert len(json.loads((tmp_path / "cv" / "final-groups-last" / "splits.json").read_text())["train"]) == 20
    assert result["final_train_tracks"] == 20
    saved = json.loads((tmp_path / "cv" / "cv-groups-last.json").read_text())
    assert saved["protocol"] == result["protocol"] and saved["pooled"]["n"] == 18
    md = (tmp_path / "cv" / "cv-groups-last.md").read_text()
    assert "artist-disjoint (fault-filtered groups)" in md and "| 2 | fault_filtered part test | 6 |" in md
    assert "2 tracks outside every group" in md
    ci = pooled["intervals"]  # bootstrap intervals over the pooled tracks, in the JSON and the markdown
    assert ci["level"] == 0.95 and ci["accuracy"][0] - 1e-6 <= pooled["accuracy"] <= ci["accuracy"][1] + 1e-6
    assert (f"balanced accuracy {pooled['balanced_accuracy']:.3f} [{ci['balanced_accuracy'][0]:.3f}, "
            f"{ci['balanced_accuracy'][1]:.3f}]") in md
    assert "learnable" not in pooled and "classes every fold trained on" not in md  # every fold trained every class
    first = pooled["per_class"][0]
    assert f"{first['class']} {first['recall']:.3f} [{first['recall_interval'][0]:.3f}, " in md  # with its interval
    assert not (tmp_path / "cv" / "cv-last.json").exists() and not list((tmp_path / "cv").glob("fold*"))

    # the CLI reuses the finished folds and names the protocol
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    r = CliRunner().invoke(app, ["cv", str(config), "--data", str(gtzan_like_store), "--out", str(tmp_path),
                                 "--groups", "fault_filtered", "--fixed-epochs", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "3-fold CV, artist-disjoint (fault-filtered groups)" in r.output
    assert "pooled over the folds (18 tracks)" in r.output and "cv-groups-last.md" in r.output
    r = CliRunner().invoke(app, ["cv", str(config), "--data", str(gtzan_like_store), "--out", str(tmp_path),
                                 "--groups", "artists"])
    assert r.exit_code == 2 and "unknown grouping 'artists'" in r.output


def test_cross_validation_with_a_grouping_file(gtzan_like_store, tmp_path):
    """cv --groups FILE.csv --folds 3: a user's own artists, whole artists dealt to the folds."""
    artists = tmp_path / "artists.csv"
    with artists.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track", "artist"])
        for genre, parts in GTZAN_LIKE.items():
            for numbers in parts.values():  # the two tracks of each pair: one artist
                for n in numbers:
                    w.writerow([f"{genre}.{n:05d}", f"{genre}-{numbers[0]}"])
    cfg = config_from_dict({**TINY, "name": "own", "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
                            "train": {"max_epochs": 1, "patience": 1}})
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    r = CliRunner().invoke(app, ["cv", str(config), "--data", str(gtzan_like_store), "--out", str(tmp_path / "runs"),
                                 "--groups", str(artists), "--folds", "3", "--fixed-epochs", "--no-final", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "3-fold CV, group-disjoint (artists.csv: 10 groups in 3 folds, none on both sides)" in r.output
    result = json.loads((tmp_path / "runs" / "own" / "cv-groups-last.json").read_text())
    assert result["folds"] == 3 and result["groups"] == str(artists) and result["pooled"]["n"] == 20
    artist_of = {f"{g}/{g}.{n:05d}": f"{g}-{numbers[0]}" for g, parts in GTZAN_LIKE.items()
                 for numbers in parts.values() for n in numbers}
    scored = []
    for k in range(3):
        splits = json.loads((tmp_path / "runs" / "own" / f"group{k}-last" / "splits.json").read_text())
        assert not {artist_of[t] for t in splits["val"]} & {artist_of[t] for t in splits["train"]}
        scored += splits["val"]
    assert sorted(scored) == sorted(artist_of)  # every track scored once
    md = (tmp_path / "runs" / "own" / "cv-groups-last.md").read_text()
    assert "| 0 | artists.csv: " in md
    gi = result["pooled"]["group_intervals"]  # intervals that resample whole artists
    assert gi["groups"] == 10 and gi["accuracy"][0] - 1e-6 <= result["pooled"]["accuracy"] <= gi["accuracy"][1] + 1e-6
    assert "Resampling whole groups instead (10 groups of artists.csv" in md
    assert "resampling whole groups (10; the intervals to quote when they are artists)" in r.output
    fold = tmp_path / "runs" / "own" / "group0-last"  # each fold's track predictions, read back by fuse/compare
    tracks, probs, labels, classes = track_probabilities(fold)
    assert (fold / "predictions_val.csv").is_file() and sorted(tracks) == sorted(json.loads(
        (fold / "splits.json").read_text())["val"]) and probs.shape == (len(tracks), 3)
    (fold / "predictions_val.csv").unlink()
    again = track_probabilities(fold)  # an older run without the file: predicted again, the same
    order = np.argsort(again[0])
    np.testing.assert_allclose(again[1][order], probs[np.argsort(tracks)], atol=1e-5)
    r = CliRunner().invoke(app, ["table", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "group-disjoint (artists.csv groups)" in r.output, r.output
    r = CliRunner().invoke(app, ["cv", str(config), "--data", str(gtzan_like_store), "--out", str(tmp_path / "runs"),
                                 "--groups", str(artists), "--folds", "11", "--no-progress"])
    assert r.exit_code == 2 and "10 groups of artists.csv among the tracks make 2 to 10 folds, not 11" in r.output


def test_nan_loss_is_a_clear_error():
    module = GenreClassifier({"name": "melcnn", "width": 4}, ["a", "b"], {"name": "adam", "lr": 1e-3,
                                                                          "weight_decay": 0.0, "momentum": 0.9,
                                                                          "schedule": "none"})
    x = torch.full((2, 1, 64, 64), float("nan"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 0, batch 3"):
        module.training_step((x, torch.tensor([0, 1])), 3)


@pytest.mark.slow  # ~1 min on 2 cores: four CLI trainings and a CV; CI runs it (`pytest -m slow`)
def test_cli_train_evaluate_table(synth_store, tmp_path):
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({**TINY, "name": "cli", "train": {"max_epochs": 2, "patience": 2}}))
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(config), "--data", str(synth_store), "--out", str(tmp_path / "runs"),
                            "--no-progress", "-O", "model.width=4", "-O", "optim.lr=0.03"])  # lr: val != test scores
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.output and "macro precision" in r.output
    saved = yaml.safe_load((tmp_path / "runs" / "cli" / "config.yaml").read_text())
    assert saved["model"]["width"] == 4
    trained = json.loads((tmp_path / "runs" / "cli" / "metrics.json").read_text())
    val, test = trained["results"]["val"]["track"], trained["results"]["test"]["track"]

    # table: the run's own numbers, in the printed markdown and in the written .md and .csv
    r = runner.invoke(app, ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "table")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = {row["run"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"cli"}
    row = rows["cli"]
    assert row["status"] == "finished" and row["model"] == "melcnn" and row["split"] == "stratified 28/12/8"
    assert (row["epochs"], row["best_epoch"]) == (str(trained["epochs"]), str(trained["best_epoch"]))
    cells = [f"{val['accuracy']:.3f}", f"{val['macro_precision']:.3f}", f"{test['accuracy']:.3f}",
             f"{test['macro_precision']:.3f}"]
    assert [row[k] for k in ("val_accuracy", "val_macro_precision", "test_accuracy", "test_macro_precision")] == cells
    md_row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if "| cli |" in line)
    md_cells = [c.strip() for c in md_row.strip("|").split("|")]
    assert md_cells[9:12] + md_cells[13:14] == cells  # column 12: the test accuracy's interval
    low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
    assert md_cells[12] == row["test_accuracy_interval"] == f"{low:.3f}-{high:.3f}"
    assert md_row in r.output

    # evaluate again from the CLI: the same checkpoint scores the same on test, and says so
    r = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "cli"), "--split", "test"])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "runs" / "cli" / "metrics.json").read_text())["results"]
    assert again["test"]["track"] == test
    assert list(again) == ["val", "test"] and again["val"] == trained["results"]["val"]  # val kept, not dropped
    lines = [" ".join(line.replace("│", " ").split()) for line in r.output.splitlines()]
    assert (f"test track {test['accuracy']:.3f} {test['macro_precision']:.3f} {test['macro_recall']:.3f} "
            f"{test['macro_f1']:.3f} {test['n']}") in lines
    assert f"best epoch {trained['best_epoch']} of {trained['epochs']}" in r.output
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
    assert "stratified k-fold (same artists on both sides: optimistic)" in r.output
    assert (tmp_path / "runs" / "cli-cv" / "cv-last.md").is_file()
    r = runner.invoke(app, ["train", str(config), "-O", "train.patiense=3"])
    assert r.exit_code == 2 and "train.patiense: unknown key" in r.output
    r = runner.invoke(app, ["train", str(config), "--data", str(tmp_path / "none.h5")])
    assert r.exit_code == 2 and "none.h5 is not a file" in r.output


def _disjoint_parts(splits):
    train, val, test = (set(splits[part]) for part in ("train", "val", "test"))
    assert len(train) == len(splits["train"]) and len(val) == len(splits["val"]) and len(test) == len(splits["test"])
    assert not val & train and not val & test and not train & test
    return train, val, test


def test_fault_filtered_and_kfold_splits_through_make_splits_and_fit(gtzan_like_store, tmp_path):
    """data.split fault_filtered and kfold, as make_splits and fit use them: the val part never
    overlaps train or test, kfold's val folds tile the non-test tracks, fault_filtered keeps its parts."""
    from melgenre.data import make_splits
    from melgenre.store import MelStore

    base = {**TINY, "model": {"name": "melcnn", "width": 4, "dropout": 0.1}, "train": {"max_epochs": 1, "patience": 1}}
    ff = config_from_dict({**base, "name": "ff", "data": {**TINY["data"], "split": "fault_filtered"}})
    kfold = [config_from_dict({**base, "name": f"kf{k}", "data": {**TINY["data"], "split": "kfold", "folds": 2,
                                                                  "fold": k}}) for k in range(2)]
    with MelStore(gtzan_like_store) as st:
        everything = set(st.track_id.tolist())
        splits = make_splits(st, ff.data, ff.seed)
        folds = [make_splits(st, c.data, c.seed) for c in kfold]
    assert everything == set().union(*(_gtzan_like_ids(p) for p in ("train", "val", "test", None)))
    train, val, test = _disjoint_parts(splits)
    assert (train, val, test) == tuple(_gtzan_like_ids(p) for p in ("train", "val", "test"))  # outside: dropped
    parts = [_disjoint_parts(f) for f in folds]
    assert parts[0][2] == parts[1][2] and len(parts[0][2]) == 4  # one test part for every fold (20 × 0.2)
    assert not parts[0][1] & parts[1][1] and parts[0][1] | parts[1][1] == everything - parts[0][2]
    for train, val, test in parts:
        assert train | val | test == everything and train == everything - test - val

    for cfg, expected in ((ff, splits), (kfold[1], folds[1])):
        run = fit(cfg, tmp_path, data=gtzan_like_store, progress=False)
        saved = json.loads((run / "splits.json").read_text())
        assert {p: set(v) for p, v in saved.items()} == {p: set(v) for p, v in expected.items()}
        _disjoint_parts(saved)
        results = json.loads((run / "metrics.json").read_text())["results"]
        assert results["val"]["track"]["n"] == len(expected["val"])
        assert results["test"]["track"]["n"] == len(expected["test"])


def test_failed_checkpoint_save_leaves_no_partial_file(synth_store, tmp_path, monkeypatch):
    """AtomicCheckpoint: a save that fails half-way (a full disk) leaves the previous last.ckpt whole
    and no half-written file beside it."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    real, calls = TorchCheckpointIO.save_checkpoint, []

    def disk_full_on_second_last(self, checkpoint, path, storage_options=None):
        if Path(path).name in ("last.ckpt", "last.ckpt.tmp"):  # a save of last.ckpt, however it is written
            calls.append(path)
            if len(calls) == 2:
                Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
                raise OSError(28, "No space left on device")
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full_on_second_last)
    cfg = {**TINY, "name": "full", "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
           "train": {"max_epochs": 3, "patience": 3}}
    with pytest.raises(OSError, match="No space left on device"):
        fit(config_from_dict(cfg), tmp_path, data=synth_store, progress=False)
    assert len(calls) == 2
    ckpts = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0  # epoch 0's, whole
