"""Training with Lightning: the LightningModule, one run directory per experiment, resume.

A run directory (``RUNS_DIR/<name>/``) holds::

    config.yaml        the resolved experiment config
    splits.json        train/val/test track ids
    checkpoints/       best.ckpt (best val monitor) and last.ckpt (every epoch), written atomically
    history.csv        per epoch: train/val loss, accuracy, macro precision, learning rate
    tb/                TensorBoard logs
    metrics.json       chunk- and track-level metrics of the best checkpoint on val and test
    *.png, report.md   plots and a short report (see melgenre.evaluate)

Rerunning ``fit`` on an unfinished run directory resumes from ``last.ckpt`` (model, optimiser,
schedule, early-stopping state and history), so a killed run finishes with the same number of
epochs as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassPrecision

from melgenre import evaluate
from melgenre.config import ExperimentConfig, config_from_dict
from melgenre.data import MelDataModule, load_splits, make_splits, save_splits
from melgenre.errors import ConfigError, MelgenreError
from melgenre.models import build_from_config, channels_last
from melgenre.utils import atomic_path, run_checkpoint

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "train_macro_precision",
                   "val_loss", "val_accuracy", "val_macro_precision", "lr")


class TrainingError(MelgenreError):
    """Training cannot go on (e.g. the loss became NaN)."""


def _metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "macro_precision": MulticlassPrecision(num_classes, average="macro"),
    })


class GenreClassifier(L.LightningModule):
    """Any registered model + cross-entropy (optional class weights, label smoothing, mixup).

    Logs per epoch ``train_loss``, ``train_accuracy``, ``train_macro_precision`` and the same for
    ``val_``; keeps the history in its checkpoints and writes it to ``history_path`` if set.
    """

    def __init__(self, model: dict[str, Any], classes: list[str], optim: dict[str, Any],
                 class_weights: list[float] | None = None, mixup_alpha: float = 0.0,
                 label_smoothing: float = 0.0, max_epochs: int = 100):
        super().__init__()
        self.save_hyperparameters()
        n = len(classes)
        self.model = channels_last(build_from_config(model, classes=classes))
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_metrics, self.val_metrics = _metrics(n), _metrics(n)
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.history: list[dict[str, float]] = []
        self.history_path: Path | None = None
        self._val: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: D102
        x, y = batch
        alpha = self.hparams.mixup_alpha
        if alpha > 0:
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(x), device=x.device)
            logits = self(lam * x + (1 - lam) * x[perm])
            loss = lam * self.loss_fn(logits, y) + (1 - lam) * self.loss_fn(logits, y[perm])
            target = y if lam >= 0.5 else y[perm]
        else:
            logits = self(x)
            loss = self.loss_fn(logits, y)
            target = y
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}: "
                                "lower optim.lr, or set train.grad_clip")
        self.train_loss.update(loss.detach(), weight=len(x))
        self.train_metrics.update(logits.detach().argmax(1), target)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.val_loss.update(self.loss_fn(logits, y), weight=len(x))
        self.val_metrics.update(logits.argmax(1), y)

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        values = {f"val_{k}": float(v) for k, v in self.val_metrics.compute().items()}
        values["val_loss"] = float(self.val_loss.compute())
        self.val_metrics.reset()
        self.val_loss.reset()
        self._val = values
        self.log_dict(values, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:  # noqa: D102  (runs after this epoch's validation)
        row = {"epoch": self.current_epoch, "train_loss": float(self.train_loss.compute())}
        row |= {f"train_{k}": float(v) for k, v in self.train_metrics.compute().items()}
        self.train_metrics.reset()
        self.train_loss.reset()
        self.log_dict({k: v for k, v in row.items() if k != "epoch"}, sync_dist=True)
        row |= self._val
        self._val = {}  # an epoch without validation (train.val_every > 1) gets none in its row
        row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.history.append(row)
        if self.trainer.is_global_zero:
            val = ("val loss %.4f acc %.3f macro precision %.3f" % (row["val_loss"], row["val_accuracy"],
                                                                     row["val_macro_precision"])
                   if "val_loss" in row else "no validation this epoch")
            log.info("epoch %d: train loss %.4f acc %.3f | %s | lr %.2e",
                     row["epoch"], row["train_loss"], row["train_accuracy"], val, row["lr"])
        if self.history_path is not None and self.trainer.is_global_zero:
            write_history(self.history, self.history_path)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: D102
        return torch.softmax(self(batch[0]), dim=1)

    def configure_optimizers(self):  # noqa: D102
        o = self.hparams.optim
        params = self.param_groups(o["lr"], o.get("backbone_lr_scale", 1.0))
        if o["name"] == "adam":
            opt = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
        elif o["name"] == "adamw":
            opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
        else:
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                                  nesterov=True)
        schedule = o["schedule"]
        if schedule == "cosine":
            return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_epochs)]
        if schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_macro_precision"}}
        if schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt

    def param_groups(self, lr: float, backbone_scale: float = 1.0) -> list[dict[str, Any]]:
        """Trainable parameters as optimiser groups: the model's ``head.*`` at ``lr``, the rest (a
        pretrained backbone being fine-tuned) at ``lr * backbone_scale``; frozen ones are left out."""
        groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups[name.startswith("head.") or backbone_scale == 1.0].append(p)
        return [{"params": ps, "lr": lr * (1.0 if is_head else backbone_scale)}
                for is_head, ps in groups.items() if ps]

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # noqa: D102
        checkpoint["melgenre_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # noqa: D102
        self.history = list(checkpoint.get("melgenre_history", []))
        if self.history_path is not None:  # fit() resuming a run (not a later evaluation)
            log.info("%s: resuming from epoch %d of %d (%s)", self.history_path.parent.name,
                     checkpoint.get("epoch", -1) + 1, self.hparams.max_epochs,
                     self.history_path.parent / "checkpoints" / "last.ckpt")


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    """Write the per-epoch history as CSV (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class AtomicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to a temp file and renames it: a kill never leaves half a file."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        try:
            super()._save_checkpoint(trainer, tmp)
            if trainer.is_global_zero:
                os.replace(tmp, filepath)
        except BaseException:  # a failed save (a full disk) leaves no half-written file behind
            if trainer.is_global_zero:
                Path(tmp).unlink(missing_ok=True)
            raise
        self._last_checkpoint_saved = filepath


def _batches_limit(value: float) -> float | int | None:
    """Lightning reads a float as a fraction and an int as a count; None means all batches."""
    if value == 1.0:
        return None
    return int(value) if value > 1 else value


def _train_batches(rows: int, cfg: ExperimentConfig) -> int:
    """Training batches per epoch (after ``train.limit_train_batches``)."""
    batches, limit = rows // cfg.data.batch_size, _batches_limit(cfg.train.limit_train_batches)
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def _mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") else "max"


def _load_or_save_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    path = run_dir / "config.yaml"
    if path.exists():
        saved = yaml.safe_load(path.read_text())
        if saved != cfg.to_dict():
            raise ConfigError(f"{run_dir}: holds an unfinished run of a different config; "
                              "resume it with the same config, or pass --overwrite")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _with_data(cfg: ExperimentConfig, data: str | Path | None) -> ExperimentConfig:
    """``cfg`` with ``data.path`` replaced by ``data`` (if given), checked to be a file."""
    if data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    if not cfg.data.path or not Path(cfg.data.path).is_file():
        raise ConfigError(f"data.path: {cfg.data.path or '(unset)'} is not a file; "
                          "run `melgenre prepare` and pass --data")
    return cfg


def fit(cfg: ExperimentConfig, runs_dir: str | Path = "runs", data: str | Path | None = None,
        overwrite: bool = False, progress: bool = True, evaluate_splits: tuple[str, ...] = ("val", "test"),
        splits: dict[str, list[str]] | None = None, keep_last: bool = False) -> Path:
    """Train one experiment into ``runs_dir/<cfg.name>`` (resuming if unfinished), then evaluate.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment; ``data`` overrides ``cfg.data.path``.
    runs_dir : path
        Parent folder of run directories.
    overwrite : bool
        Delete an existing run directory of the same name first (default: resume an unfinished
        run, refuse a finished one).
    progress : bool
        Show Lightning's progress bar.
    evaluate_splits : tuple of str
        Splits to evaluate with the best checkpoint after training.
    splits : dict, optional
        Use these track-id splits instead of making them from ``cfg.data`` (used by CV).
    keep_last : bool
        Train all ``train.max_epochs`` epochs and evaluate the last one, even with a validation
        split (no early stopping, no checkpoint chosen on validation; used by fixed-epoch CV).

    Returns
    -------
    Path
        The run directory.
    """
    cfg = _with_data(cfg, data)
    data_path = Path(cfg.data.path)
    run_dir = Path(runs_dir) / cfg.name
    # Under DDP every rank runs this; only rank 0 deletes or writes files of the run directory.
    is_zero = rank_zero_only.rank == 0
    if overwrite and run_dir.exists() and is_zero:
        shutil.rmtree(run_dir)
    if (run_dir / "metrics.json").exists():
        raise MelgenreError(f"{run_dir}: this run already finished; use another name (--override name=...) "
                            "or --overwrite")
    from melgenre.store import MelStore

    # Open the data and make the splits before the run directory exists: a start that fails here
    # leaves nothing that would block the corrected rerun.
    split_path = run_dir / "splits.json"
    with MelStore(data_path) as store:
        if split_path.exists():
            splits = load_splits(split_path)
        elif splits is None:
            splits = make_splits(store, cfg.data, cfg.seed)  # deterministic: the same on every rank
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_zero:
        _load_or_save_config(cfg, run_dir)
        if not split_path.exists():
            save_splits(splits, split_path)

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 vs torch 2.13 deprecation noise
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = MelDataModule(data_path, splits, cfg.data, cfg.seed)
    if len(dm.rows_for("train")) == 0:
        raise ConfigError(f"{cfg.name}: the train split has no tracks")
    empty = [c for c, n in zip(dm.classes, dm.class_counts("train")) if n == 0]
    if empty:
        log.warning("%s: class(es) %s have no training tracks; the model still outputs all %d classes",
                    cfg.name, ", ".join(empty), len(dm.classes))

    module = GenreClassifier(
        model=cfg.model, classes=dm.classes, optim=dataclasses.asdict(cfg.optim),
        class_weights=dm.class_weights().tolist() if cfg.train.class_weights else None,
        mixup_alpha=cfg.data.augment.mixup_alpha, label_smoothing=cfg.train.label_smoothing,
        max_epochs=cfg.train.max_epochs,
    )
    module.history_path = run_dir / "history.csv"
    monitor, mode = cfg.train.monitor, _mode(cfg.train.monitor)
    ckpt_dir = run_dir / "checkpoints"
    has_val = len(dm.rows_for("val")) > 0
    # last.ckpt every epoch (the resume point): Lightning >= 2.2's save_last only writes it when a
    # top-k checkpoint was saved in the same epoch, i.e. only when the monitor improved.
    # Without a validation split it is written at the end of each training epoch: by default Lightning writes
    # it after validation when validation runs only every train.val_every > 1 epochs, i.e. never here.
    last_ckpt = AtomicCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False,
                                 save_on_train_epoch_end=True if not has_val else None)
    if has_val and not keep_last:
        best = AtomicCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                                enable_version_counter=False)
        callbacks = [best, last_ckpt, EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.patience)]
    else:  # a fixed number of epochs (a final retrain, or keep_last): keep the last epoch
        best = last_ckpt
        callbacks = [last_ckpt]
    trainer = L.Trainer(
        default_root_dir=run_dir, max_epochs=cfg.train.max_epochs, accelerator=cfg.train.accelerator,
        devices=cfg.train.devices, strategy=cfg.train.strategy, num_nodes=cfg.train.num_nodes,
        precision=cfg.train.precision, gradient_clip_val=cfg.train.grad_clip or None,
        deterministic=cfg.train.deterministic,
        limit_train_batches=_batches_limit(cfg.train.limit_train_batches),
        check_val_every_n_epoch=cfg.train.val_every,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="epoch")], limit_val_batches=None if has_val else 0,
        logger=TensorBoardLogger(save_dir=run_dir, name="tb", version=""),
        enable_progress_bar=progress, enable_model_summary=progress, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, _train_batches(len(dm.rows_for("train")), cfg))),
    )
    last = ckpt_dir / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None)
    if not trainer.is_global_zero:
        return run_dir
    best_path = Path(best.best_model_path) if best is not last_ckpt and best.best_model_path else last
    evaluate_run(run_dir, checkpoint=best_path, splits=evaluate_splits, data=data_path,
                 extra={"train_seconds": round(time.perf_counter() - started, 1),
                        "best_epoch": best_epoch(module.history, monitor),
                        "epochs": len(module.history)})
    return run_dir


def best_epoch(history: list[dict[str, float]], monitor: str) -> int:
    """0-based epoch with the best ``monitor`` value (the first one on ties; -1 if none)."""
    values = [(row[monitor], row["epoch"]) for row in history if row.get(monitor) is not None]
    if not values:
        return -1
    best_value = (min if _mode(monitor) == "min" else max)(v for v, _ in values)
    return int(next(e for v, e in values if v == best_value))


def predict_rows(module: GenreClassifier, dm: MelDataModule, split: str) -> np.ndarray:
    """Class probabilities ``(rows, C)`` of one split, in store row order."""
    module.eval()
    out = []
    with torch.inference_mode():
        for x, _ in dm.loader(split):
            out.append(torch.softmax(module(x.to(module.device)), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(dm.classes)), dtype=np.float32)


def _load_run(run_dir: Path, checkpoint: str | Path | None = None, data: str | Path | None = None
              ) -> tuple[ExperimentConfig, Path, GenreClassifier, MelDataModule]:
    """A run's config, checkpoint path, model and data module (its splits over its feature file)."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise MelgenreError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
    checkpoint = Path(checkpoint or run_checkpoint(run_dir))
    if not checkpoint.exists():
        raise MelgenreError(f"{checkpoint}: no such checkpoint")
    data_path = Path(data or cfg.data.path)
    module = GenreClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    dm = MelDataModule(data_path, load_splits(run_dir / "splits.json"), cfg.data, cfg.seed)
    if dm.classes != module.hparams.classes:
        raise MelgenreError(f"{data_path}: classes {dm.classes} differ from the model's {module.hparams.classes}")
    return cfg, checkpoint, module, dm


def track_probabilities(run_dir: str | Path, split: str = "val") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A run's track-level probabilities on one of its splits: ``(track ids, probs (T, C), labels, classes)``.

    Read from the ``predictions_<split>.csv`` its evaluation wrote, or (runs evaluated before those
    files existed) predicted again with its checkpoint."""
    saved = Path(run_dir) / f"predictions_{split}.csv"
    if saved.is_file():
        return evaluate.read_track_predictions(saved)
    _, _, module, dm = _load_run(Path(run_dir))
    rows = dm.rows_for(split)
    probs = predict_rows(module, dm, split)
    track_probs, track_y, tracks = evaluate.track_level(probs, dm.store.y[rows], dm.store.track_id[rows])
    return tracks, track_probs, track_y, dm.classes


def evaluate_run(run_dir: str | Path, checkpoint: str | Path | None = None, splits: tuple[str, ...] = ("val", "test"),
                 data: str | Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint on its splits: metrics.json, plots and report.md in the run dir."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise MelgenreError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg, checkpoint, module, dm = _load_run(run_dir, checkpoint, data)
    data_path = dm.store_path
    results = {}
    for split in splits:
        rows = dm.rows_for(split)
        if len(rows) == 0:
            continue
        probs = predict_rows(module, dm, split)
        results[split] = evaluate.evaluate_predictions(probs, dm.store.y[rows], dm.store.track_id[rows], dm.classes)
        track_probs, track_y, tracks = evaluate.track_level(probs, dm.store.y[rows], dm.store.track_id[rows])
        evaluate.write_track_predictions(run_dir / f"predictions_{split}.csv", tracks, track_probs, track_y, dm.classes)
    metrics = {"name": cfg.name, "checkpoint": str(checkpoint), "data": str(data_path),
               "classes": dm.classes, **(extra or {}), "results": results}
    old = run_dir / "metrics.json"
    if old.exists() and not extra:  # re-evaluation keeps training facts
        before = json.loads(old.read_text())
        if before.get("checkpoint") == metrics["checkpoint"]:  # and the other splits' results of this checkpoint
            results = {**{k: v for k, v in (before.get("results") or {}).items() if k not in results}, **results}
            metrics["results"] = results
        metrics = {k: v for k, v in before.items() if k not in metrics} | metrics
    with atomic_path(run_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    counts = {s: dm.class_counts(s).tolist() for s in ("train", "val", "test") if dm.splits.get(s)}
    evaluate.save_all_plots(run_dir, results, dm.classes, split_counts=counts)
    lines = [f"- {k}: {v}" for k, v in (extra or {}).items()]
    evaluate.write_report(run_dir, f"{cfg.name}", cfg.to_dict(), results, extra_lines=lines)
    return metrics
