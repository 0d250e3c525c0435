"""ONNX export with a dynamic batch axis, and int8 quantization of an exported model.

Uses torch's TorchScript-based exporter (``dynamo=False``): it works offline and needs only
the ``onnx`` package, whereas the dynamo exporter would also need ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
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
INT8_METHOD = ("ONNX Runtime static quantization: QDQ, weights int8 per output channel in the reduced range "
               "[-64, 64] (reduce_range), activations uint8 with MinMax ranges from calibration windows")


def quantize_int8(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Quantize an exported model to int8 (:data:`INT8_METHOD`); the metadata is kept.

    The weights' reduced range makes the model compute the same on every x86 CPU: without
    VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which
    adds pairs of products in int16 and saturates once ``255 * |w| * 2`` exceeds 32767 (full-range
    weights changed 54 of 202 melcnn labels on an AVX2-only CPU); with ``|w| <= 64`` it cannot,
    and VNNI CPUs keep their int8 dot-product speed (uint8 weights would not). Convolutional
    networks run faster than in float; check the quantized model's agreement with the float one
    before using it (musicnn, with its wide mel-axis kernels, loses accuracy and gains no speed).

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
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return dst


#: The x86 features (``/proc/cpuinfo`` flag names) that decide how ONNX Runtime multiplies int8 tensors:
#: AVX2 without VNNI uses ``vpmaddubsw`` (int16 pair sums that can saturate), AVX-512 VNNI and AVX-VNNI
#: ``vpdpbusd`` (exact int32 sums).
INT8_CPU_FLAGS = ("avx2", "avx512_vnni", "avx_vnni")


@dataclasses.dataclass(frozen=True)
class Int8Cpu:
    """A CPU's model name and which of :data:`INT8_CPU_FLAGS` it has (``flags`` None: unknown).

    ``str()`` gives e.g. ``"AMD EPYC (avx2, no avx512_vnni/avx_vnni)"``.
    """

    model: str
    flags: dict[str, bool] | None

    def __str__(self) -> str:
        if self.flags is None:
            return f"{self.model} (int8 features unknown)"
        has = [f for f in INT8_CPU_FLAGS if self.flags[f]]
        lacks = [f for f in INT8_CPU_FLAGS if not self.flags[f]]
        parts = ([", ".join(has)] if has else []) + ([f"no {'/'.join(lacks)}"] if lacks else [])
        return f"{self.model} ({', '.join(parts)})"


def int8_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> Int8Cpu:
    """This machine's CPU model and int8-relevant x86 features, read from ``cpuinfo`` (Linux).

    Without a readable ``cpuinfo`` or an x86 ``flags`` line in it (macOS, Windows, ARM) the model
    is :func:`platform.processor` (or the machine type) and the flags are unknown (None).
    """
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        first = Path(cpuinfo).read_text(errors="replace").split("\n\n", 1)[0]  # the first processor's block
    except OSError:
        return Int8Cpu(model, None)
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = None
    if "flags" in fields:
        have = {f.replace("_", "") for f in fields["flags"].split()}  # also as spelt without "_" (avx512vnni)
        flags = {f: f.replace("_", "") in have for f in INT8_CPU_FLAGS}
    return Int8Cpu(fields.get("model name") or model, flags)


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
