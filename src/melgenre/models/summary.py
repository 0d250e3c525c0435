"""Model summaries (layer table, parameters, FLOPs) and parameter counting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from melgenre.errors import ConfigError
from melgenre.models.registry import build, get_spec


@dataclass(frozen=True)
class LayerInfo:
    """One row of a summary: a submodule, its output shape and its parameter count (recursive)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """Layer table and totals for one forward pass at ``input_shape`` (batch 1).

    ``flops`` is what ``torch.utils.flop_counter.FlopCounterMode`` reports: FLOPs counted
    as 2 x multiply-accumulates of convolutions and matmuls (norms/activations/pools excluded).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    flops: int


def count_params(model: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def count_params_of(name: str, num_classes: int = 10, **options) -> int:
    """Parameter count of a registered model, built on the ``meta`` device (no memory, fast)."""
    with torch.device("meta"):
        return count_params(build(name, num_classes, **options))


def summarize(model: nn.Module, input_shape: Sequence[int], depth: int = 2) -> ModelSummary:
    """Run one eval-mode forward pass on zeros of shape ``(1, *input_shape)`` and tabulate it.

    Parameters
    ----------
    model : torch.nn.Module
        Model to summarise; its train/eval mode is restored afterwards.
    input_shape : sequence of int
        Input shape without the batch axis, e.g. ``(1, 128, 130)``.
    depth : int
        Table rows are submodules up to this many name levels (``backbone.2`` is level 2).

    Returns
    -------
    ModelSummary
    """
    rows: dict[str, LayerInfo] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth:

            def hook(mod, args, out, name=name):
                out = out[0] if isinstance(out, (list, tuple)) else out
                rows[name] = LayerInfo(name, type(mod).__name__, tuple(out.shape), count_params(mod))

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    order = [name for name, _ in model.named_modules() if name in rows]  # definition order
    return ModelSummary(
        input_shape=tuple(x.shape),
        output_shape=tuple(out.shape),
        layers=[rows[name] for name in order],
        total_params=count_params(model),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=counter.get_total_flops(),
    )


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse an input shape like ``"1x128x130"`` into ``(1, 128, 130)``; :class:`ConfigError` if malformed."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input shape {text!r} must look like CxHxW, e.g. 1x128x130")
    return shape


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` into a dict; values are read as YAML (``8``, ``[256, 128]``, ``true``)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"model option {pair!r} must look like key=value")
        options[key.strip()] = yaml.safe_load(value)
    return options


def summarize_by_name(
    name: str, input_shape: Sequence[int] | None = None, num_classes: int = 10, depth: int = 2, **options
) -> ModelSummary:
    """Build a registered model and summarise it at ``input_shape`` (default: the model's own).

    Models with an ``input_size`` option (flatten heads) are built for ``input_shape``'s
    height and width unless ``input_size`` is given. A forward pass that fails (e.g. an
    input too small for the model) raises :class:`ConfigError`.
    """
    spec = get_spec(name)
    input_shape = tuple(input_shape or spec.default_input)
    if "input_size" in spec.options and "input_size" not in options:
        options["input_size"] = list(input_shape[1:])
    model = build(name, num_classes, **options)
    try:
        return summarize(model, input_shape, depth)
    except RuntimeError as exc:
        raise ConfigError(f"model {name!r} cannot run on input {input_shape}: {exc}") from exc
