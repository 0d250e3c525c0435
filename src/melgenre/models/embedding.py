"""A model's embedding: the input of its last linear layer (its penultimate features).

The "not music" score (:mod:`melgenre.trust`), ``melgenre embed``-style caches and the ONNX graph's
``embedding`` output all read the same tensor, captured by a forward hook during the one forward
pass that gives the logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def last_linear(module: nn.Module) -> nn.Linear:
    """The model's last linear layer (its output layer): its input is the model's embedding."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


@contextlib.contextmanager
def captured_embeddings(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of ``module`` appends its last linear layer's input
    ``(N, D)`` to the yielded list."""
    captured: list[torch.Tensor] = []
    handle = last_linear(module).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
    try:
        yield captured
    finally:
        handle.remove()


class WithEmbedding(nn.Module):
    """A model whose forward returns its logits and its embedding (for the ONNX export)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        with captured_embeddings(self.module) as captured:
            logits = self.module(x)
        return logits, captured[0]
