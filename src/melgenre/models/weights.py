"""Initialise a model from a local ``state_dict`` file: load what matches by name and shape.

Nothing is ever downloaded. Supported files: torch ``state_dict`` pickles (``.pt``/``.pth``,
read with ``torch.load(weights_only=True)``, optionally wrapped as ``{"state_dict": ...}`` or
``{"model": ...}``) and ``.safetensors``.

An ultralytics YOLOv8 checkpoint pickles the whole model object, which ``weights_only``
refuses; save its state_dict once with ultralytics installed,
``torch.save(YOLO("yolov8n-cls.pt").model.state_dict(), "yolov8n-cls-sd.pt")``, and load it
with ``mapping="ultralytics"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from melgenre.errors import ConfigError

KeyMapping = str | Mapping[str, str] | Callable[[str], str] | None


@dataclass
class LoadReport:
    """What :func:`load_weights` did, key by key (keys are the model's names)."""

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file (after mapping), not in the model
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.path}: loaded {len(self.matched)} tensors; {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatched)} shape-mismatched"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` from a .pt/.pth/.safetensors file; :class:`ConfigError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise anything from pickle/zip/safetensors errors
        raise ConfigError(
            f"{path.name}: cannot read weights ({type(exc).__name__}); it must be a state_dict "
            "(a pickled whole model, such as an ultralytics .pt, must be re-saved as its state_dict)"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path.name}: not a state_dict (a mapping of names to tensors)")
    return dict(state)


def _key_mapper(model: nn.Module, mapping: KeyMapping) -> Callable[[str], str]:
    """Turn ``mapping`` (None, "ultralytics", prefix dict or function) into a key function."""
    if mapping is None:
        return lambda key: key
    if callable(mapping):
        return mapping
    if mapping == "ultralytics":
        if not hasattr(model, "ultralytics_key_map"):
            raise ConfigError(f"mapping 'ultralytics' needs a yolov8_cls model, not {type(model).__name__}")
        mapping = model.ultralytics_key_map()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"unknown weights mapping {mapping!r}; use 'ultralytics' or a prefix dict")
    prefixes = sorted(mapping, key=len, reverse=True)  # longest prefix wins

    def rename(key: str) -> str:
        for prefix in prefixes:
            if key.startswith(prefix):
                return mapping[prefix] + key[len(prefix) :]
        return key

    return rename


def load_weights(model: nn.Module, path: str | Path, mapping: KeyMapping = None) -> LoadReport:
    """Copy every tensor of a weights file whose (mapped) name and shape match into ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Model to initialise in place.
    path : path
        Local ``.pt``/``.pth`` (torch ``state_dict``) or ``.safetensors`` file.
    mapping : {None, "ultralytics"} or mapping or callable
        How file keys become model keys: ``None`` keeps them, a dict renames prefixes
        (``{"model.": "backbone."}``), a function maps each key, and ``"ultralytics"`` uses
        the model's ``ultralytics_key_map()`` (YOLOv8 checkpoints).

    Returns
    -------
    LoadReport
        Matched, missing, unexpected and shape-mismatched keys.

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, or no tensor matches.
    """
    rename = _key_mapper(model, mapping)
    source = {rename(k): v for k, v in read_state_dict(path).items()}
    target = model.state_dict()
    report = LoadReport(str(path))
    loadable = {}
    for key, tensor in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif tensor.shape != target[key].shape:
            report.shape_mismatched.append((key, tuple(tensor.shape), tuple(target[key].shape)))
        else:
            loadable[key] = tensor
    report.matched = list(loadable)
    report.missing = [k for k in target if k not in source]
    if not loadable:
        raise ConfigError(
            f"{Path(path).name}: no tensor matches the model by name and shape "
            f"({len(report.unexpected)} unexpected, {len(report.shape_mismatched)} shape-mismatched)"
        )
    model.load_state_dict(loadable, strict=False)
    return report
