"""The report's models 2-3: a YOLOv4-style classifier (CSPDarknet53 + SPP + PANet).

Backbone: CSPDarknet53 (Bochkovskiy et al., 2020; Darknet ``csdarknet53-omega``):
a 3x3 stem with 32 filters, then five CSP stages of 1-2-8-8-4 residual blocks with
64-128-256-512-1024 channels, Mish activations. Neck, as in YOLOv4: SPP (max-pool
5/9/13) on the stride-32 map between 1x1/3x3 convs, then a PANet that fuses the
stride-8/16/32 maps top-down (upsample + concat) and bottom-up (stride-2 conv + concat),
with leaky-ReLU convs. Head: DropBlock on each of the three fused maps (training only),
global average pooling, concat, dense layers + dropout -> logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from melgenre.models.blocks import (
    SPP,
    ConvBnAct,
    CSPStage,
    DropBlock2d,
    ExpandChannels,
    dense_head,
    make_divisible,
    scale_depth,
)
from melgenre.models.registry import register_model

# CSPDarknet53 stages: (out_channels, residual blocks, part_ratio, bottle_ratio). The first
# stage keeps full-width parts with half-width res-blocks, the others split channels in half.
CSPDARKNET53: tuple[tuple[int, int, float, float], ...] = (
    (64, 1, 1.0, 0.5),
    (128, 2, 0.5, 1.0),
    (256, 8, 0.5, 1.0),
    (512, 8, 0.5, 1.0),
    (1024, 4, 0.5, 1.0),
)
STEM_CHANNELS = 32
NECK_ACT = "leaky"


class CSPDarknet(nn.Module):
    """CSPDarknet backbone returning the stride-8, 16 and 32 feature maps.

    Parameters
    ----------
    in_channels : int
        Input channels.
    width, depth : float
        Channel and block-count multiples (1.0 = CSPDarknet53).
    stages : sequence of (channels, blocks, part_ratio, bottle_ratio)
        Stage table; defaults to :data:`CSPDARKNET53`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: float = 1.0,
        depth: float = 1.0,
        stages: Sequence[tuple[int, int, float, float]] = CSPDARKNET53,
    ):
        super().__init__()
        c_in = make_divisible(STEM_CHANNELS * width)
        self.stem = ConvBnAct(in_channels, c_in, 3, act="mish")
        self.stages = nn.ModuleList()
        for channels, blocks, part_ratio, bottle_ratio in stages:
            c_out = make_divisible(channels * width)
            n = scale_depth(blocks, depth)
            self.stages.append(CSPStage(c_in, c_out, n, part_ratio, bottle_ratio, act="mish"))
            c_in = c_out
        self.out_channels = [make_divisible(c * width) for c, *_ in stages[-3:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[-3:]  # strides 8, 16, 32


def conv_stack(c_in: int, c: int, n: int) -> nn.Sequential:
    """YOLOv4 neck stack: ``n`` convs alternating 1x1 (to ``c``) and 3x3 (to ``2c``), ending 1x1."""
    layers = []
    for i in range(n):
        k, c_out = (1, c) if i % 2 == 0 else (3, 2 * c)
        layers.append(ConvBnAct(c_in, c_out, k, act=NECK_ACT))
        c_in = c_out
    return nn.Sequential(*layers)


class PANet(nn.Module):
    """YOLOv4 neck: SPP on P5, top-down path (P5 -> P4 -> P3), bottom-up path (P3 -> P4 -> P5).

    Takes backbone maps with channels ``(c3, c4, c5)`` and returns fused maps with
    ``(c3 / 2, c4 / 2, c5 / 2)`` channels at the same strides.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        c3, c4, c5 = (c // 2 for c in channels)
        self.spp_in = conv_stack(2 * c5, c5, 3)
        self.spp = SPP((5, 9, 13))
        self.spp_out = conv_stack(4 * c5, c5, 3)
        # top-down: reduce the coarser map, upsample, concat with a 1x1 lateral of the finer map
        self.reduce5 = ConvBnAct(c5, c4, 1, act=NECK_ACT)
        self.lateral4 = ConvBnAct(2 * c4, c4, 1, act=NECK_ACT)
        self.td4 = conv_stack(2 * c4, c4, 5)
        self.reduce4 = ConvBnAct(c4, c3, 1, act=NECK_ACT)
        self.lateral3 = ConvBnAct(2 * c3, c3, 1, act=NECK_ACT)
        self.td3 = conv_stack(2 * c3, c3, 5)
        # bottom-up: stride-2 conv of the finer map, concat with the top-down map
        self.down3 = ConvBnAct(c3, c4, 3, 2, act=NECK_ACT)
        self.bu4 = conv_stack(2 * c4, c4, 5)
        self.down4 = ConvBnAct(c4, c5, 3, 2, act=NECK_ACT)
        self.bu5 = conv_stack(2 * c5, c5, 5)

    @staticmethod
    def _up_cat(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """Nearest-upsample ``coarse`` to ``fine``'s size (odd sizes allowed) and concat."""
        return torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")], 1)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = features
        p5 = self.spp_out(self.spp(self.spp_in(p5)))  # (B, c5, H/32, W/32)
        p4 = self.td4(self._up_cat(self.reduce5(p5), self.lateral4(p4)))  # (B, c4, H/16, W/16)
        n3 = self.td3(self._up_cat(self.reduce4(p4), self.lateral3(p3)))  # (B, c3, H/8, W/8)
        n4 = self.bu4(torch.cat([self.down3(n3), p4], 1))  # (B, c4, H/16, W/16)
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))  # (B, c5, H/32, W/32)
        return [n3, n4, n5]


@register_model(
    "yolov4_cls",
    description="Report models 2-3: CSPDarknet53 (Mish) + SPP + PANet + DropBlock, GAP + dense head",
    default_input=(1, 416, 416),
)
class YOLOv4Classifier(nn.Module):
    """YOLOv4-style classifier: CSPDarknet53 -> SPP + PANet -> DropBlock -> GAP x3 -> dense.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : {1, 3}
        1 for mel images; 3 replicates the mel channel (for 3-channel weights).
    width, depth : float
        Channel and block-count multiples (1.0 = CSPDarknet53).
    dense : sequence of int
        Hidden dense layer widths after pooling (may be empty).
    dropout : float
        Dropout rate after each dense layer.
    dropblock : float
        DropBlock drop fraction on the three fused maps (training only; 0 disables).
    dropblock_size : int
        DropBlock square size (clamped to each map's size).
    head_norm : {"batch", "layer", "none"}
        Normalisation after each dense layer.
    head_act : {"relu", "silu", "mish", "gelu", "leaky"}
        Activation after each dense layer.
    dropout_before_output : bool
        False: dropout after every dense layer but the last, none right before the output
        layer (with two dense layers: the report's "a single dropout layer" of rows 2-3).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dense: Sequence[int] = (512,),
        dropout: float = 0.5,
        dropblock: float = 0.1,
        dropblock_size: int = 7,
        head_norm: str = "none",
        head_act: str = "mish",
        dropout_before_output: bool = True,
    ):
        super().__init__()
        self.expand = ExpandChannels(in_channels)
        self.backbone = CSPDarknet(in_channels, width, depth)
        self.neck = PANet(self.backbone.out_channels)
        self.dropblock = DropBlock2d(dropblock, dropblock_size)
        pooled = sum(c // 2 for c in self.backbone.out_channels)
        self.head = dense_head(pooled, num_classes, dense, dropout, head_norm, head_act, dropout_before_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.neck(self.backbone(self.expand(x)))  # strides 8, 16, 32
        pooled = [self.dropblock(m).mean((2, 3)) for m in maps]  # 3 x (B, C_i)
        return self.head(torch.cat(pooled, 1))  # (B, num_classes)
