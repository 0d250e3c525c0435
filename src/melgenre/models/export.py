"""ONNX export with a dynamic batch axis.

Uses torch's TorchScript-based exporter (``dynamo=False``): it works offline and needs only
the ``onnx`` package, whereas the dynamo exporter would also need ``onnxscript``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from melgenre.errors import ConfigError


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], opset: int = 17, batch_size: int = 1,
    output_names: Sequence[str] = ("logits",),
) -> Path:
    """Export ``model`` (in eval mode: DropBlock/dropout off) to ONNX.

    The graph has one input ``mel`` of shape ``(batch, *input_shape)`` and one output
    ``logits`` of shape ``(batch, num_classes)``; ``batch`` is a dynamic axis.

    Parameters
    ----------
    model : torch.nn.Module
        Model to export; its train/eval mode is restored afterwards.
    path : path
        Destination ``.onnx`` file (parent folders are created).
    input_shape : sequence of int
        Input shape without the batch axis, e.g. ``(1, 128, 130)``.
    opset : int
        ONNX opset version (>= 17).
    batch_size : int
        Batch size of the example input used for tracing.
    output_names : sequence of str
        Names of the model's outputs (a model returning a tuple has one name per element), each
        with a dynamic batch axis.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if opset < 17:
        raise ConfigError(f"ONNX opset {opset} is too old; use 17 or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags the TorchScript exporter as legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            # musicnn's TF-style padding slices: informational, the graph is right (parity is tested)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            torch.onnx.export(
                model,
                (torch.zeros(batch_size, *input_shape),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["mel"],
                output_names=list(output_names),
                dynamic_axes={"mel": {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            )
    finally:
        model.train(was_training)
    return path
