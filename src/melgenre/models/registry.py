"""Model registry: build any model by name from keyword options or a YAML config section.

Every registered model takes ``num_classes`` and ``in_channels`` plus its own options, and
returns LOGITS of shape ``(N, num_classes)``. The built model carries ``model.config``: the
name and every option with defaults filled in, enough to rebuild it with
:func:`build_from_config` (e.g. from a checkpoint).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from melgenre.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 10  # GTZAN genres


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its constructor, a one-line description, its default input (C, H, W)."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    default_input: tuple[int, int, int]

    @property
    def options(self) -> dict[str, Any]:
        """Constructor options (besides ``num_classes``) and their defaults."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k != "num_classes"}


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, default_input: tuple[int, int, int]):
    """Class decorator adding a model constructor to the registry under ``name``.

    Parameters
    ----------
    name : str
        Registry key used by :func:`build` and in config files.
    description : str
        One line shown by ``melgenre models``.
    default_input : tuple of int
        Input shape (C, H, W) the model is designed for, used for summaries.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(name, factory, description, default_input)
        return factory

    return decorator


def list_models() -> list[ModelSpec]:
    """All registered models, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; :class:`ConfigError` listing the known names if absent."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build(
    name: str,
    num_classes: int = DEFAULT_NUM_CLASSES,
    *,
    weights: str | Path | None = None,
    weights_mapping: str | Mapping[str, str] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name : str
        Registered model name (see :func:`list_models`).
    num_classes : int
        Number of output logits.
    weights : path, optional
        A local ``state_dict`` file (.pt/.pth/.safetensors) to initialise from; whatever
        matches by name and shape is loaded (see :func:`melgenre.models.load_weights`) and
        the :class:`~melgenre.models.weights.LoadReport` is logged.
    weights_mapping : str or mapping, optional
        Key mapping for ``weights``, e.g. ``"ultralytics"`` for a YOLOv8 checkpoint.
    **options
        Model options, e.g. ``scale="s", head="gap"``; unknown keys raise :class:`ConfigError`.

    Returns
    -------
    torch.nn.Module
        The model, outputting logits of shape ``(N, num_classes)``, with ``model.config`` set.
    """
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(spec.options)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model {name!r}: num_classes={num_classes!r} must be a positive integer")
    try:
        model = spec.factory(num_classes=num_classes, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: bad option value: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from exc
    resolved = {**spec.options, **options}
    model.config = {
        "name": name,
        "num_classes": num_classes,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    if weights is not None:
        from melgenre.models.weights import load_weights

        log.info("%s", load_weights(model, weights, mapping=weights_mapping))
    return model


def build_from_config(config: Mapping[str, Any] | str, classes: Sequence[str] | None = None) -> nn.Module:
    """Build a model from a config section (a mapping, or YAML text of one).

    The section holds ``name`` plus any options of :func:`build`, e.g.
    ``{name: yolov8_cls, scale: n, head: gap, dense: [256, 128, 64]}``; a document
    whose only key is ``model`` is unwrapped. ``model.config`` round-trips. ``classes`` (the data's
    class names) sets ``num_classes``, and ``classes`` too for models that take it (``musicnn``'s tag prior).
    """
    if isinstance(config, str):
        config = yaml.safe_load(config)
    if isinstance(config, Mapping) and set(config) == {"model"}:
        config = config["model"]
    if not isinstance(config, Mapping) or "name" not in config:
        raise ConfigError("model config must be a mapping with a 'name' key")
    options = dict(config)
    name = options.pop("name")
    if classes is not None:
        options["num_classes"] = len(classes)
        if "classes" in get_spec(name).options:
            options["classes"] = list(classes)
    return build(name, **options)


def channels_last(model: nn.Module) -> nn.Module:
    """The model with channels-last (NHWC) conv weights, in place; returns it.

    oneDNN (CPU) and cuDNN then pick their NHWC kernels: on 2 CPU cores melcnn trains about 1.35x
    and predicts about 1.5x faster. Training and torch-backend prediction use it; :func:`build`
    does not, because ``safetensors`` refuses to save such non-contiguous tensors as they are
    (melgenre's own packages save ``.contiguous()`` copies).
    """
    return model.to(memory_format=torch.channels_last)
