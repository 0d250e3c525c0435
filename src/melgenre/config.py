"""Experiment configuration: YAML files validated into dataclasses, with ``key=value`` overrides.

One YAML file per experiment (``configs/``). Every section and key is checked: an unknown key or
a value of the wrong type is a :class:`~melgenre.errors.ConfigError` that names it, e.g.
``configs/x.yaml: train.patiense: unknown key (allowed: ...)``. The same names are used in YAML,
on the command line (``--override optim.lr=3e-4``) and in Python.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from melgenre.errors import ConfigError

SPLITS = ("stratified", "kfold", "fault_filtered")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "plateau", "onecycle")
MONITORS = ("val_macro_precision", "val_accuracy", "val_loss")


@dataclass
class AugmentConfig:
    """Training-time augmentation of mel images (all off by default, as in the report)."""

    time_masks: int = 0  # SpecAugment: number of time masks per image
    time_mask_width: int = 0  # maximum width of each, in frames (columns)
    freq_masks: int = 0  # number of frequency masks per image
    freq_mask_width: int = 0  # maximum height of each, in mel rows
    time_shift: float = 0.0  # random circular shift along time, up to this fraction of the width
    freq_shift: int = 0  # random shift along frequency by up to this many rows (edge-padded)
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha) on batches; 0 = off


@dataclass
class DataConfig:
    """Where the images come from and how tracks are split (always grouped by track)."""

    path: str | None = None  # HDF5 file from `melgenre prepare` (or --data on the command line)
    split: str = "stratified"  # stratified | kfold | fault_filtered
    fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test share of tracks
    folds: int = 5  # kfold: number of folds over the non-test tracks
    fold: int = 0  # kfold: which fold is the validation part
    groups: str | None = None  # set by `cv --groups` on its runs: the grouping whose held-out part is val
    batch_size: int = 8
    num_workers: int = 0  # DataLoader worker processes
    in_memory: bool = True  # load all images into RAM (see `melgenre info` for the size)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    backbone_lr_scale: float = 1.0  # lr of parameters outside the model's head, relative to lr (fine-tuning)
    schedule: str = "none"  # none | cosine | plateau | onecycle (peak lr = lr)


@dataclass
class TrainConfig:
    """The training loop (Lightning Trainer settings)."""

    max_epochs: int = 100
    patience: int = 100  # early stopping on `monitor`
    monitor: str = "val_macro_precision"  # val_macro_precision | val_accuracy | val_loss
    class_weights: bool = False  # balanced cross-entropy weights from the training split
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    accelerator: str = "cpu"  # cpu | gpu | auto ...
    devices: int | str = 1
    strategy: str = "auto"  # auto | ddp | ...
    num_nodes: int = 1
    precision: str = "32-true"
    limit_train_batches: float = 1.0  # fraction (<= 1.0) or number (> 1) of batches per epoch
    val_every: int = 1  # validate after epochs n, 2n, ... only (faster fixed-epoch runs); patience counts validations
    deterministic: bool = False  # torch deterministic algorithms (slower)


#: Allowed range of every numeric config value: (minimum, maximum or None, minimum excluded?).
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "seed": (0, None, False),
    "data.folds": (2, None, False), "data.fold": (0, None, False), "data.batch_size": (1, None, False),
    "data.num_workers": (0, None, False),
    "data.augment.time_masks": (0, None, False), "data.augment.time_mask_width": (0, None, False),
    "data.augment.freq_masks": (0, None, False), "data.augment.freq_mask_width": (0, None, False),
    "data.augment.time_shift": (0, 1, False), "data.augment.freq_shift": (0, None, False),
    "data.augment.mixup_alpha": (0, None, False),
    "optim.lr": (0, None, True), "optim.weight_decay": (0, None, False), "optim.momentum": (0, 1, False),
    "optim.backbone_lr_scale": (0, None, True),
    "train.max_epochs": (1, None, False), "train.patience": (0, None, False),
    "train.label_smoothing": (0, 0.999, False), "train.grad_clip": (0, None, False),
    "train.num_nodes": (1, None, False), "train.limit_train_batches": (0, None, True),
    "train.val_every": (1, None, False),
}


@dataclass
class ExperimentConfig:
    """One experiment: data, model, optimiser, training loop; see ``configs/`` for examples."""

    name: str
    description: str = ""
    seed: int = 0
    reference: dict[str, Any] = field(default_factory=dict)  # published numbers this config reproduces
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "melcnn"})  # registry name + options
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON safe)."""
        return dataclasses.asdict(self)

    def validate(self) -> ExperimentConfig:
        """Check values that types alone cannot; returns self."""
        checks = [
            ("data.split", self.data.split, SPLITS), ("optim.name", self.optim.name, OPTIMIZERS),
            ("optim.schedule", self.optim.schedule, SCHEDULES), ("train.monitor", self.train.monitor, MONITORS),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        fr = self.data.fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or fr[0] <= 0 or sum(fr) <= 0:
            raise ConfigError(f"data.fractions: need [train, val, test] >= 0 with train > 0, got {fr}")
        if self.data.split == "kfold" and not (2 <= self.data.folds and 0 <= self.data.fold < self.data.folds):
            raise ConfigError(f"data.fold: need 0 <= fold < folds and folds >= 2, got {self.data.fold}/{self.data.folds}")
        for key, (lo, hi, open_lo) in RANGES.items():
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if value is None:
                continue
            if not math.isfinite(value) or (value <= lo if open_lo else value < lo) or (hi is not None and value > hi):
                bound = f"> {lo:g}" if open_lo else f">= {lo:g}"
                raise ConfigError(f"{key}: must be a finite number {bound}" + (f" and <= {hi:g}" if hi is not None else "")
                                  + f", got {value!r}")
        if self.train.val_every > 1 and self.optim.schedule == "plateau":
            raise ConfigError("train.val_every: the plateau schedule steps on every epoch's validation; "
                              "use val_every 1 or another schedule")
        if not isinstance(self.model.get("name"), str):
            raise ConfigError("model.name: missing (a registered model name, see `melgenre models`)")
        from melgenre.models import get_spec

        get_spec(self.model["name"])  # ConfigError naming the registered models
        return self


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting the harmless cases (int -> float,
    YAML 1.1 strings such as ``1e-4`` -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    where = f"{prefix}." if prefix else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (allowed: {', '.join(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def set_by_path(data: dict, dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted = "a.b"``, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 3e-4)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=3e-4")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from None


def config_from_dict(data: dict[str, Any], overrides: list[str] = (), source: str = "config") -> ExperimentConfig:
    """Validate a mapping (plus ``key=value`` overrides) into an :class:`ExperimentConfig`."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy as plain data
    for text in overrides:
        set_by_path(data, *parse_override(text))
    try:
        return _from_dict(ExperimentConfig, data).validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML file; the name defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (an experiment config is YAML)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    return config_from_dict(data, overrides, source=str(path))
