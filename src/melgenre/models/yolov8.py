"""The report's models 4-18: YOLOv8 backbones (scales n/s/m/l/x) with configurable heads.

The backbone is ultralytics' layer table (``yolov8.yaml`` / ``yolov8-cls.yaml``) as data,
scaled exactly as ultralytics' ``parse_model`` does: output channels
``make_divisible(min(c, max_channels) * width, 8)`` and repeats ``max(round(n * depth), 1)``.
Layer ``i`` is ``self.backbone[i]``, so an ultralytics checkpoint's ``model.{i}.*`` keys map
onto ``backbone.{i}.*`` (see :meth:`YOLOv8Classifier.ultralytics_key_map`).

Two backbone variants exist upstream:

* ``"detect"`` (``yolov8.yaml``, layers 0-9): ends with SPPF; per-scale channel caps
  n 1024, s 1024, m 768, l 512, x 512.
* ``"cls"`` (``yolov8-cls.yaml``, layers 0-8): no SPPF, channel cap 1024 at every scale;
  followed upstream by the ``Classify`` head (our ``head="ultralytics"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from melgenre.errors import ConfigError
from melgenre.models.blocks import (
    SPPF,
    C2f,
    ConvBnAct,
    ExpandChannels,
    PoolHead,
    as_hw,
    check_choice,
    conv_out_size,
    make_divisible,
    scale_depth,
)
from melgenre.models.registry import register_model

# (module, repeats, args) before scaling; args: conv (c_out, k, s), c2f (c_out, shortcut), sppf (c_out, k)
BACKBONE: tuple[tuple[str, int, tuple], ...] = (
    ("conv", 1, (64, 3, 2)),  # 0  P1/2
    ("conv", 1, (128, 3, 2)),  # 1  P2/4
    ("c2f", 3, (128, True)),  # 2
    ("conv", 1, (256, 3, 2)),  # 3  P3/8
    ("c2f", 6, (256, True)),  # 4
    ("conv", 1, (512, 3, 2)),  # 5  P4/16
    ("c2f", 6, (512, True)),  # 6
    ("conv", 1, (1024, 3, 2)),  # 7  P5/32
    ("c2f", 3, (1024, True)),  # 8
    ("sppf", 1, (1024, 5)),  # 9  detection backbone only
)
STRIDES = 5  # stride-2 convs in BACKBONE: the output is 1/32 of the input (rounded up)

# scale: (depth, width, max_channels of the detection backbone), from ultralytics' yolov8.yaml
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
CLS_MAX_CHANNELS = 1024  # yolov8-cls.yaml caps every scale at 1024
CLASSIFY_CHANNELS = 1280  # ultralytics Classify head's hidden 1x1 conv


def yolov8_backbone(
    in_channels: int, depth: float, width: float, max_channels: int, sppf: bool
) -> tuple[nn.Sequential, int]:
    """Build the YOLOv8 backbone layers; return them and the output channel count."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for kind, repeats, args in BACKBONE if sppf else BACKBONE[:-1]:
        c_out = make_divisible(min(args[0], max_channels) * width, 8)
        if kind == "conv":
            layers.append(ConvBnAct(c_in, c_out, args[1], args[2]))
        elif kind == "c2f":
            layers.append(C2f(c_in, c_out, scale_depth(repeats, depth), shortcut=args[1]))
        else:
            layers.append(SPPF(c_in, c_out, args[1]))
        c_in = c_out
    return nn.Sequential(*layers), c_in


class UltralyticsClassify(nn.Module):
    """ultralytics' ``Classify`` head: 1x1 Conv-BN-SiLU to 1280, GAP, dropout, Linear.

    Unlike upstream (which applies softmax in eval mode) this always returns logits.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.conv = ConvBnAct(channels, CLASSIFY_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(CLASSIFY_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x)).flatten(1)  # (B, 1280)
        return self.linear(self.drop(x))  # (B, num_classes)


@register_model(
    "yolov8_cls",
    description="Report models 4-18: YOLOv8 backbone (n/s/m/l/x: C2f, SPPF) + GAP/flatten/ultralytics head",
    default_input=(1, 416, 416),
)
class YOLOv8Classifier(nn.Module):
    """YOLOv8 backbone + classification head; outputs logits.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : {1, 3}
        1 for mel images; 3 replicates the mel channel (for 3-channel weights).
    scale : {"n", "s", "m", "l", "x"}
        ultralytics compound scale (depth, width, channel cap).
    head : {"gap", "flatten", "ultralytics"}
        "gap"/"flatten": global-average-pool or flatten, then the dense layers.
        "ultralytics": the upstream ``Classify`` head (only ``dropout`` applies).
    backbone : {"detect", "cls"}, optional
        Upstream backbone variant (see module docstring); default "cls" for
        ``head="ultralytics"``, else "detect".
    depth, width : float, optional
        Override the scale's depth/width multiples (e.g. tiny models for tests).
    input_size : int or [height, width], optional
        Input size; required by ``head="flatten"``.
    dense : sequence of int
        Hidden dense layer widths (may be empty).
    dropout : float
        Dropout rate (see ``dropout_before_pool``).
    dropout_before_pool : bool
        Apply dropout once to the last feature map instead of after each dense layer.
    pool_dropout : float
        Dropout rate on the last feature map before GAP/flatten, in addition to the dense
        layers' ``dropout`` (the report's row 18: "increased dropout (including before GAP)").
    dropout_before_output : bool
        False: no dropout after the last dense layer, right before the output layer (the
        report's row 5: "none before output layer"; row 18: "the first 2 have a dropout layer").
    head_norm : {"batch", "layer", "none"}
        Normalisation after each dense layer.
    head_act : {"relu", "silu", "mish", "gelu", "leaky"}
        Activation after each dense layer.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        scale: str = "n",
        head: str = "gap",
        backbone: str | None = None,
        depth: float | None = None,
        width: float | None = None,
        input_size: int | Sequence[int] | None = None,
        dense: Sequence[int] = (),
        dropout: float = 0.0,
        dropout_before_pool: bool = False,
        head_norm: str = "none",
        head_act: str = "relu",
        pool_dropout: float = 0.0,
        dropout_before_output: bool = True,
    ):
        super().__init__()
        check_choice("scale", scale, tuple(SCALES))
        check_choice("head", head, ("gap", "flatten", "ultralytics"))
        backbone = backbone or ("cls" if head == "ultralytics" else "detect")
        check_choice("backbone", backbone, ("detect", "cls"))
        scale_depth_, scale_width, max_channels = SCALES[scale]
        if backbone == "cls":
            max_channels = CLS_MAX_CHANNELS
        self.expand = ExpandChannels(in_channels)
        self.backbone, channels = yolov8_backbone(
            in_channels,
            scale_depth_ if depth is None else depth,
            scale_width if width is None else width,
            max_channels,
            sppf=backbone == "detect",
        )
        if head == "ultralytics":
            if (dense or dropout_before_pool or head_norm != "none" or head_act != "relu" or pool_dropout
                    or not dropout_before_output):
                raise ConfigError(
                    "head='ultralytics' takes only 'dropout'; drop dense/dropout_before_pool/head_norm/head_act/"
                    "pool_dropout/dropout_before_output"
                )
            self.head = UltralyticsClassify(channels, num_classes, dropout)
        else:
            flat_hw = None
            if input_size is not None:
                flat_hw = tuple(conv_out_size(n, STRIDES) for n in as_hw(input_size))
            self.head = PoolHead(
                channels, num_classes, head, flat_hw, dense, dropout, dropout_before_pool, head_norm, head_act,
                pool_dropout, dropout_before_output,
            )
        for m in self.modules():  # ultralytics' BatchNorm settings, so loaded weights behave alike
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(self.expand(x))  # (B, C, H/32, W/32)
        return self.head(x)  # (B, num_classes)

    def ultralytics_key_map(self) -> dict[str, str]:
        """Prefix renames from an ultralytics YOLOv8 ``state_dict`` to this model's keys.

        ``model.{i}.`` -> ``backbone.{i}.`` for every backbone layer; with the cls backbone
        and ``head="ultralytics"`` also ``model.9.`` (upstream ``Classify``) -> ``head.``.
        Other upstream keys (e.g. the detection neck, ``model.10.`` and up) are left as they
        are, match nothing and are reported as unexpected.
        """
        mapping = {f"model.{i}.": f"backbone.{i}." for i in range(len(self.backbone))}
        if isinstance(self.head, UltralyticsClassify) and len(self.backbone) == len(BACKBONE) - 1:
            mapping[f"model.{len(self.backbone)}."] = "head."
        return mapping
