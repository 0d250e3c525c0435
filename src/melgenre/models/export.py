"""ONNX export with a dynamic batch axis, and int8 quantization of an exported model.

Uses torch's TorchScript-based exporter (``dynamo=False``): it works offline and needs only
the ``onnx`` package, whereas the dynamo exporter would also need ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
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


#: How :func:`quantize_int8` quantizes (recorded in the cards of the models it makes).
INT8_METHOD = ("ONNX Runtime static quantization: QDQ, weights int8 per output channel, activations uint8 "
               "with MinMax ranges from calibration windows")


def quantize_int8(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Quantize an exported model to int8 (:data:`INT8_METHOD`); the metadata is kept.

    On CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI) convolutional networks
    run 2-3× faster; check the quantized model's agreement with the float one before using it
    (musicnn, with its wide mel-axis kernels, loses accuracy and gains no speed).

    Parameters
    ----------
    src : path
        A float ONNX file written by :func:`export_onnx` (input ``mel``).
    dst : path
        The int8 ONNX file to write.
    calibration : iterable of np.ndarray
        Batches ``(N, *input_shape)`` of typical inputs (real music windows): the activation
        ranges are their minimum and maximum.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = ({"mel": np.ascontiguousarray(b, dtype=np.float32)} for b in calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="melgenre-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings(), _quiet_onnx_quantization():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(prepared))
            quantize_static(str(prepared), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return dst


@contextlib.contextmanager
def _quiet_onnx_quantization() -> Iterator[None]:
    """Silence the quantizer's root-logger warnings (e.g. about 1-D BatchNorm weights it leaves as float)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
