"""Classifiers for mel-spectrogram images, built by name from a registry.

Every model maps ``(N, C, H, W)`` mel images (C = 1, or 3 with ``in_channels=3``, which
replicates a 1-channel input) to LOGITS of shape ``(N, num_classes)``. The report's
"softmax output layer" is these logits followed by ``softmax`` at inference time;
training uses ``CrossEntropyLoss`` on the logits directly.

>>> from melgenre.models import build
>>> model = build("yolov8_cls", num_classes=10, scale="n", head="gap", dense=[256, 128, 64])
"""

from melgenre.models import cnn, melcnn, musicnn, yolov4, yolov8  # noqa: F401  (register the models)
from melgenre.models.export import Int8Cpu, export_onnx, int8_cpu, quantize_int8
from melgenre.models.registry import (
    ModelSpec,
    build,
    build_from_config,
    channels_last,
    get_spec,
    list_models,
    register_model,
)
from melgenre.models.summary import (
    LayerInfo,
    ModelSummary,
    count_params,
    count_params_of,
    parse_options,
    parse_shape,
    summarize,
    summarize_by_name,
)
from melgenre.models.weights import LoadReport, load_weights, read_state_dict

__all__ = [
    "LayerInfo",
    "LoadReport",
    "ModelSpec",
    "ModelSummary",
    "build",
    "build_from_config",
    "channels_last",
    "count_params",
    "count_params_of",
    "export_onnx",
    "int8_cpu",
    "Int8Cpu",
    "quantize_int8",
    "get_spec",
    "list_models",
    "load_weights",
    "parse_options",
    "parse_shape",
    "read_state_dict",
    "register_model",
    "summarize",
    "summarize_by_name",
]
