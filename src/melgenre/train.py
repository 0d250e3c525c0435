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


def out_of_fold(cv_dirs: list[str | Path], groups: bool = False,
                fixed_epochs: bool = False) -> tuple[list[dict[str, Any]], list[str], list[tuple[np.ndarray, list[np.ndarray]]]]:
    """The aligned out-of-fold track predictions of cross-validated recipes.

    Every ``cv_dir`` is a ``RUNS_DIR/<name>`` of :func:`cross_validate` run with the same
    protocol (``groups`` / ``fixed_epochs`` as given here) on the same tracks, e.g. melcnn on a
    ``fast`` store and a musicnn head on an embedding store: fold ``k`` of each holds out the
    same tracks. Returns the recipes' CV summaries, the classes, and per fold ``(labels,
    [probabilities of each recipe])`` with the rows in one track order.
    """
    cv_dirs = [Path(d) for d in cv_dirs]
    stem = ("cv-groups" if groups else "cv") + ("-last" if fixed_epochs else "")
    prefix, suffix = ("group" if groups else "fold"), ("-last" if fixed_epochs else "")
    summaries = []
    for d in cv_dirs:
        if not (d / f"{stem}.json").is_file():
            raise MelgenreError(f"{d}: no {stem}.json (run melgenre cv with the same protocol first)")
        summaries.append(json.loads((d / f"{stem}.json").read_text()))
    folds = {s["folds"] for s in summaries}
    if len(folds) != 1:
        raise ConfigError(f"the cross-validations have different numbers of folds: {sorted(folds)}")
    classes, aligned = None, []
    for k in range(folds.pop()):
        parts = [track_probabilities(d / f"{prefix}{k}{suffix}") for d in cv_dirs]
        tracks, _, labels, classes = parts[0]
        for d, (other, _, _, other_classes) in zip(cv_dirs, parts):
            if other_classes != classes or sorted(other) != sorted(tracks):
                raise MelgenreError(f"{d}: fold {k} holds out other tracks or classes than {cv_dirs[0]}")
        aligned.append((labels[np.argsort(tracks)], [p[np.argsort(t)] for t, p, _, _ in parts]))
    return summaries, classes, aligned


def _learnable(summaries: list[dict[str, Any]], classes: list[str], y: np.ndarray) -> list[str] | None:
    """:func:`melgenre.metrics.learnable_classes` of aligned CVs scoring labels ``y``."""
    from melgenre.evaluate import learnable_classes

    return learnable_classes(classes, np.bincount(y, minlength=len(classes)), summaries[0].get("untrained_classes") or [])


def fuse_cv(cv_dirs: list[str | Path], groups: bool = False, fixed_epochs: bool = False,
            weights: list[float] | None = None) -> dict[str, Any]:
    """Late fusion of cross-validated recipes: average their out-of-fold track probabilities.

    The recipes' folds are aligned by :func:`out_of_fold`; each fold's tracks get the weighted
    mean of the recipes' probabilities, and the folds are pooled as in :func:`cross_validate`.
    Returns the ``pooled`` metrics, the protocol, the recipes and weights, and each recipe's own
    pooled metrics on the same tracks.
    """
    from melgenre.evaluate import compute_metrics, pooled_metrics

    if len(cv_dirs) < 2:
        raise ConfigError("fuse: need at least two cross-validation directories")
    weights = [1.0] * len(cv_dirs) if weights is None else list(weights)
    if len(weights) != len(cv_dirs) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"fuse: need one non-negative weight per directory, not all zero; got {weights}")
    summaries, classes, folds = out_of_fold(cv_dirs, groups, fixed_epochs)
    names = [str(Path(d)) for d in cv_dirs]
    confusions: dict[str, list] = {name: [] for name in ["fusion", *names]}
    for y, probs in folds:
        fused = sum(w * p for w, p in zip(weights, probs)) / sum(weights)
        confusions["fusion"].append(compute_metrics(fused, y, classes)["confusion"])
        for name, p in zip(names, probs):
            confusions[name].append(compute_metrics(p, y, classes)["confusion"])
    learnable = _learnable(summaries, classes, np.concatenate([y for y, _ in folds]))
    return {
        "protocol": summaries[0].get("protocol"), "recipes": [s.get("name") for s in summaries],
        "weights": weights, "pooled": pooled_metrics(confusions["fusion"], classes, learnable),
        "each": {d: pooled_metrics(c, classes, learnable) for d, c in confusions.items() if d != "fusion"},
    }


def compare_cv(cv_a: str | Path, cv_b: str | Path, groups: bool = False, fixed_epochs: bool = False) -> dict[str, Any]:
    """Paired comparison of two cross-validated recipes on the same out-of-fold tracks.

    Both recipes' predictions of each track are resampled together (:func:`melgenre.metrics.paired_bootstrap`),
    so the interval of a difference is much narrower than the two recipes' own intervals side
    by side. Returns the protocol, the recipe names and :func:`~melgenre.metrics.paired_bootstrap`'s
    result (differences are A - B).
    """
    from melgenre.evaluate import paired_bootstrap

    summaries, classes, folds = out_of_fold([cv_a, cv_b], groups, fixed_epochs)
    y = np.concatenate([y for y, _ in folds])
    pred_a, pred_b = (np.concatenate([probs[i].argmax(1) for _, probs in folds]) for i in (0, 1))
    return {"protocol": summaries[0].get("protocol"), "recipes": [s.get("name") for s in summaries],
            **paired_bootstrap(y, pred_a, pred_b, len(classes), _learnable(summaries, classes, y), classes)}


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


def cross_validate(cfg: ExperimentConfig, folds: int | None = None, runs_dir: str | Path = "runs",
                   data: str | Path | None = None, progress: bool = True, fixed_epochs: bool = False,
                   groups: str | None = None, final_retrain: bool = True) -> dict[str, Any]:
    """K-fold CV, then a final retrain (the report's models 19–20); stratified or artist-disjoint.

    Without ``groups`` (stratified k-fold): a stratified test part (``data.fractions[2]``) is
    held out; the other tracks are cut into ``folds`` (default 5) stratified folds. GTZAN is
    ordered by artist, so these folds put one artist on both sides: the estimate is optimistic.
    Each fold trains with early stopping on its validation fold (``RUNS_DIR/<name>/fold<k>``).
    Then ``final`` trains on all non-test tracks for the mean best epoch count (no validation)
    and is evaluated once on the test part. Writes ``cv.json`` and ``cv.md`` into
    ``RUNS_DIR/<name>``; finished folds are skipped on a rerun.

    With ``groups`` (a name from :data:`melgenre.data.GROUPINGS`; ``"fault_filtered"``: the
    three artist-disjoint parts of GTZAN's fault-filtered split), the folds are
    :func:`melgenre.data.group_kfold_splits`: one per group, that group scored, all other
    tracks (tracks outside every group included) trained on. There are as many folds as groups:
    ``folds`` must be None or that number. ``groups`` may also be a ``.csv`` / ``.tsv`` file of
    ``track,group`` rows (e.g. artists, :func:`melgenre.data.read_grouping`); its groups are dealt
    to ``folds`` folds (default 5, at most one per group). No test part is held out (every grouped track is
    scored once in the folds), so the final retrain (``final-groups``) trains on all tracks and
    is not evaluated. Folds go to ``group<k>``, results to ``cv-groups.json`` / ``cv-groups.md``,
    beside those of a stratified CV of the same config.

    With ``fixed_epochs`` every fold trains ``train.max_epochs`` epochs and its last epoch is
    scored (``fold<k>-last`` / ``group<k>-last``; nothing is chosen on the tracks it is scored
    on, so the pooled figures estimate the recipe without optimism), the final retrain trains as
    many (``final-last`` / ``final-groups-last``) and results go to ``cv-last.json`` /
    ``cv-groups-last.json``. Both modes report the folds' track-level predictions pooled
    (``pooled``, see :func:`melgenre.metrics.pooled_metrics`). The result's ``protocol`` says
    in words which folds were used. ``final_retrain=False`` stops after the folds (an estimate
    only: no final model, no test result).
    """
    from melgenre.data import (GROUPINGS, group_folds, group_kfold_splits, group_of, is_grouping_file, kfold_split,
                               track_table)
    from melgenre.evaluate import group_bootstrap_intervals, learnable_classes, pooled_metrics, with_interval
    from melgenre.store import MelStore

    if groups is not None and groups not in GROUPINGS and not is_grouping_file(groups):
        raise ConfigError(f"groups: unknown grouping {groups!r}; known: {', '.join(GROUPINGS)}, "
                          "or a .csv / .tsv file of track,group rows")
    cfg = _with_data(cfg, data)
    data_path = Path(cfg.data.path)
    base = Path(runs_dir) / cfg.name
    suffix = "-last" if fixed_epochs else ""
    with MelStore(data_path) as store:
        ids, labels = track_table(store)
        classes = list(store.classes)
    if groups in GROUPINGS:
        fold_splits = group_kfold_splits(ids, labels, groups)
        if folds is not None and folds != len(fold_splits):
            raise ConfigError(f"folds: {groups} groups make {len(fold_splits)} folds, not {folds}; "
                              "leave the number of folds unset")
        folds, protocol = len(fold_splits), GROUPINGS[groups]
        fold_groups = [", ".join(held) for held in group_folds(ids, labels, groups)]
    elif groups is not None:  # a grouping file: its groups dealt to the folds
        groups = str(groups)
        folds = 5 if folds is None else folds
        dealt = group_folds(ids, labels, groups, folds)
        fold_splits = group_kfold_splits(ids, labels, groups, folds)
        protocol = (f"group-disjoint ({Path(groups).name}: {sum(map(len, dealt))} groups in {folds} folds, "
                    "none on both sides)")
        fold_groups = [", ".join(held[:3]) + (f" (+{len(held) - 3} more)" if len(held) > 3 else "") for held in dealt]
    if groups is not None:
        stem, fold_name, final_name = "cv-groups", "group", "final-groups"
        final_splits = {"train": [str(t) for t in ids], "val": [], "test": []}
    else:
        folds = 5 if folds is None else folds
        if folds < 2:
            raise ConfigError(f"folds: need at least 2, got {folds}")
        test_fraction = cfg.data.fractions[2] / sum(cfg.data.fractions)
        fold_splits = [kfold_split(ids, labels, test_fraction, folds, k, cfg.seed) for k in range(folds)]
        protocol, fold_groups = "stratified k-fold (same artists on both sides: optimistic)", None
        stem, fold_name, final_name = "cv", "fold", "final"
        held = fold_splits[0]
        final_splits = {"train": held["train"] + held["val"], "val": [], "test": held["test"]}
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    untrained = [sorted({classes[label_of[t]] for t in s["val"]} - {classes[label_of[t]] for t in s["train"]})
                 for s in fold_splits]
    fold_metrics = []
    for k, fold_split in enumerate(fold_splits):
        fold_data = (dataclasses.replace(cfg.data, split="kfold", folds=folds, fold=k) if groups is None
                     else dataclasses.replace(cfg.data, groups=groups))
        fold_cfg = dataclasses.replace(cfg, name=f"{fold_name}{k}{suffix}", data=fold_data)
        run = base / fold_cfg.name
        if not (run / "metrics.json").exists():
            fit(fold_cfg, base, progress=progress, evaluate_splits=("val",), splits=fold_split,
                keep_last=fixed_epochs)
        fold_metrics.append(json.loads((run / "metrics.json").read_text()))

    if fixed_epochs:
        epochs = cfg.train.max_epochs
    else:
        epochs = max(1, int(round(float(np.mean([m["best_epoch"] + 1 for m in fold_metrics])))))
    final_cfg = dataclasses.replace(cfg, name=f"{final_name}{suffix}",
                                    train=dataclasses.replace(cfg.train, max_epochs=epochs))
    final_dir = base / final_cfg.name
    final: dict[str, Any] = {"results": {}}
    if final_retrain:
        if not (final_dir / "metrics.json").exists():
            fit(final_cfg, base, progress=progress, evaluate_splits=("test",), splits=final_splits)
        final = json.loads((final_dir / "metrics.json").read_text())

    def summary(level: str, key: str) -> dict[str, Any]:
        values = [m["results"]["val"][level][key] for m in fold_metrics]
        return {"folds": values, "mean": float(np.mean(values)), "std": float(np.std(values))}

    confusions = [m["results"]["val"]["track"]["confusion"] for m in fold_metrics]
    pooled = pooled_metrics(confusions, classes, learnable_classes(classes, np.sum(confusions, axis=(0, 2)), untrained))
    if groups is not None and groups not in GROUPINGS:  # a grouping file (artists): intervals resampling its groups
        parts = [track_probabilities(base / f"{fold_name}{k}{suffix}") for k in range(folds)]
        tracks = np.concatenate([p[0] for p in parts])
        pooled["group_intervals"] = group_bootstrap_intervals(
            np.concatenate([p[2] for p in parts]), np.concatenate([p[1].argmax(1) for p in parts]),
            [str(g) for g in group_of(tracks, groups)], len(classes))
    result = {
        "name": cfg.name, "protocol": protocol, "groups": groups, "folds": folds,
        "final_epochs": epochs if final_retrain else None,
        "selection": "last epoch" if fixed_epochs else "best epoch on the validation fold",
        "fold_groups": fold_groups, "fold_tracks": [len(s["val"]) for s in fold_splits],
        "untrained_classes": untrained, "final_train_tracks": len(final_splits["train"]),
        "val": {level: {key: summary(level, key) for key in ("accuracy", "macro_precision", "macro_f1")}
                for level in ("chunk", "track")},
        "pooled": pooled,
        "best_epochs": [m["best_epoch"] for m in fold_metrics],
        "test": final["results"].get("test", {}),
    }
    with atomic_path(base / f"{stem}{suffix}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    lines = [f"# {cfg.name}: {folds}-fold cross-validation, {protocol}", "",
             f"Protocol: {protocol}. Scored: the {result['selection']} of each fold.", "",
             "| fold | held out | tracks | best epoch | val accuracy (track) | val macro precision (track) |",
             "|---|---|---|---|---|---|"]
    for k, m in enumerate(fold_metrics):
        t = m["results"]["val"]["track"]
        held_out = ((f"{groups} part {fold_groups[k]}" if groups in GROUPINGS else f"{Path(groups).name}: {fold_groups[k]}")
                    if groups else f"fold {k}")
        lines.append(f"| {k} | {held_out} | {t['n']} | {m['best_epoch']} | {t['accuracy']:.3f} | "
                     f"{t['macro_precision']:.3f} |")
    acc, prec = result["val"]["track"]["accuracy"], result["val"]["track"]["macro_precision"]
    lines.append(f"| mean ± std | | | | {acc['mean']:.3f} ± {acc['std']:.3f} | "
                 f"{prec['mean']:.3f} ± {prec['std']:.3f} |")
    bal, ci = pooled["balanced"], pooled["intervals"]
    lines += ["", f"Pooled over the folds ({pooled['n']} tracks), with {ci['level']:.0%} bootstrap intervals "
              f"(tracks resampled within each class; they ignore songs shared by an artist, so they are if anything "
              f"too narrow): accuracy {with_interval(pooled['accuracy'], ci['accuracy'])}, balanced accuracy "
              f"{with_interval(pooled['balanced_accuracy'], ci['balanced_accuracy'])}, macro precision "
              f"{with_interval(pooled['macro_precision'], ci['macro_precision'])}, macro F1 "
              f"{with_interval(pooled['macro_f1'], ci['macro_f1'])}; reweighted to equal class counts: macro precision "
              f"{bal['macro_precision']:.3f}, macro F1 {bal['macro_f1']:.3f}."]
    if "group_intervals" in pooled:
        gi = pooled["group_intervals"]
        lines += ["", f"Resampling whole groups instead ({gi['groups']} groups of {Path(groups).name}, drawn within "
                  f"each class: a group's songs move together): accuracy {with_interval(pooled['accuracy'], gi['accuracy'])}, "
                  f"balanced accuracy {with_interval(pooled['balanced_accuracy'], gi['balanced_accuracy'])}, macro "
                  f"precision {with_interval(pooled['macro_precision'], gi['macro_precision'])}. These are the intervals "
                  "to quote when the groups are artists."]
    lines += ["", "Recall per class, with 95% Wilson intervals: " + ", ".join(
        f"{c['class']} {with_interval(c['recall'], c['recall_interval'])} ({c['support']} tracks)"
        for c in pooled["per_class"] if c["support"]) + "."]
    for k, missing in enumerate(untrained):
        if missing:
            lines += ["", f"Fold {k} scores class(es) {', '.join(missing)} that its training side lacks."]
    if "learnable" in pooled:
        lc = pooled["learnable"]
        lines += ["", f"Balanced accuracy over the {len(lc['classes'])} classes every fold trained on before scoring "
                  f"them: {with_interval(lc['balanced_accuracy'], lc['interval'])}."]
    if groups:
        outside = len(ids) - sum(result["fold_tracks"])
        lines += ["", f"{outside} tracks outside every group trained in every fold and were never scored."]
        if final_retrain:
            lines[-1] += (f" Final retrain on all {len(final_splits['train'])} tracks for {epochs} epochs "
                          f"({final_cfg.name}/; no test part: every grouped track was scored in its fold).")
    if result["test"]:
        t = result["test"]["track"]
        lines += ["", f"Final retrain on all non-test tracks for {epochs} epochs: test accuracy {t['accuracy']:.3f}, "
                  f"macro precision {t['macro_precision']:.3f} (track level; see {final_cfg.name}/report.md)."]
    with atomic_path(base / f"{stem}{suffix}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return result
