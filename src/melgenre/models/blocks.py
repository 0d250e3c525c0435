"""Small building blocks shared by every model family.

Module and attribute names (``conv``/``bn``/``act``, ``cv1``/``cv2``/``m``) mirror
ultralytics so that YOLOv8 checkpoints map onto our models by a prefix rename.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from melgenre.errors import ConfigError

ACTIVATIONS = ("relu", "silu", "mish", "gelu", "leaky")
NORMS = ("batch", "layer", "none")


def check_choice(key: str, value: object, choices: Sequence[object]) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"option {key}={value!r} is not allowed; choose one of {allowed}")


def make_divisible(x: float, divisor: int = 8) -> int:
    """Round ``x`` up to a multiple of ``divisor`` (ultralytics' channel rounding)."""
    return math.ceil(x / divisor) * divisor


def scale_depth(n: int, depth: float) -> int:
    """Scale a repeat count like ultralytics: ``max(round(n * depth), 1)`` when ``n > 1``."""
    return max(round(n * depth), 1) if n > 1 else n


def make_act(name: str) -> nn.Module:
    """Activation module by name: relu, silu, mish, gelu, leaky (slope 0.1, as in YOLOv4)."""
    check_choice("act", name, ACTIVATIONS)
    return {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "mish": nn.Mish,
        "gelu": nn.GELU,
        "leaky": lambda: nn.LeakyReLU(0.1),
    }[name]()


class ExpandChannels(nn.Module):
    """Repeat a 1-channel mel image to ``channels`` channels (for stems from 3-channel weights).

    An input that already has ``channels`` channels passes through unchanged.
    """

    def __init__(self, channels: int):
        super().__init__()
        check_choice("in_channels", channels, (1, 3))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # expand() repeats a size-1 axis as a view (no copy) and leaves a 3-channel input as is
        return x if self.channels == 1 else x.expand(-1, self.channels, -1, -1)  # (B, C, H, W)


class ConvBnAct(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation (ultralytics ``Conv``)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: str = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two convs with an optional residual add (ultralytics ``Bottleneck``, Darknet res-block).

    YOLOv8 uses kernels (3, 3) and ``e=1.0``; the CSPDarknet53 residual block is (1, 3).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        shortcut: bool = True,
        e: float = 0.5,
        k: tuple[int, int] = (3, 3),
        act: str = "silu",
    ):
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = ConvBnAct(c_in, hidden, k[0], act=act)
        self.cv2 = ConvBnAct(hidden, c_out, k[1], act=act)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8 CSP block: split, ``n`` bottlenecks each feeding the next, concat all, fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c_out * e)
        self.cv1 = ConvBnAct(c_in, 2 * self.c, 1)
        self.cv2 = ConvBnAct((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))  # (B, (2 + n) c, H, W) -> (B, c_out, H, W)


class SPPF(nn.Module):
    """YOLOv8 fast spatial pyramid pooling: three chained k x k max-pools (= 5/9/13 pyramid)."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBnAct(c_in, hidden, 1)
        self.cv2 = ConvBnAct(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class SPP(nn.Module):
    """YOLOv4 spatial pyramid pooling: concat the input with stride-1 max-pools of sizes ``k``."""

    def __init__(self, k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.m = nn.ModuleList(nn.MaxPool2d(size, 1, size // 2) for size in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(m(x) for m in self.m)], 1)  # (B, (1 + len(k)) C, H, W)


class CSPStage(nn.Module):
    """One CSPDarknet stage: stride-2 conv, then a cross-stage-partial stack of res-blocks.

    The downsampled map is projected twice by 1x1 convs into a ``main`` part (run through
    ``n`` residual blocks and a 1x1 transition) and a ``cross`` part; both are concatenated
    and fused by a 1x1 conv. ``part_ratio`` sets the width of each part relative to
    ``c_out`` and ``bottle_ratio`` the hidden width of the residual blocks.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n: int,
        part_ratio: float = 0.5,
        bottle_ratio: float = 1.0,
        act: str = "mish",
    ):
        super().__init__()
        part = int(c_out * part_ratio)
        self.down = ConvBnAct(c_in, c_out, 3, 2, act=act)
        self.main = ConvBnAct(c_out, part, 1, act=act)
        self.cross = ConvBnAct(c_out, part, 1, act=act)
        self.blocks = nn.Sequential(
            *(Bottleneck(part, part, e=bottle_ratio, k=(1, 3), act=act) for _ in range(n))
        )
        self.transition = ConvBnAct(part, part, 1, act=act)
        self.fuse = ConvBnAct(2 * part, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)  # (B, c_out, H/2, W/2)
        main = self.transition(self.blocks(self.main(x)))
        return self.fuse(torch.cat([main, self.cross(x)], 1))


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., 2018): drop contiguous ``block_size`` squares of a feature map.

    Active only in training mode; in eval mode (and with ``p=0``) it is the identity, so it
    exports to ONNX as nothing. The seed rate ``gamma`` is chosen so that about a fraction
    ``p`` of the units is dropped; kept units are rescaled by ``numel / kept``.

    Parameters
    ----------
    p : float
        Fraction of units to drop, in [0, 1).
    block_size : int
        Side of the dropped squares; clamped to the feature-map size.
    """

    def __init__(self, p: float = 0.1, block_size: int = 7):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"DropBlock p={p} must be in [0, 1)")
        if block_size < 1:
            raise ConfigError(f"DropBlock block_size={block_size} must be >= 1")
        self.p = p
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        h, w = x.shape[-2:]
        bs = min(self.block_size, h, w)
        gamma = self.p / bs**2 * (h * w) / ((h - bs + 1) * (w - bs + 1))
        seeds = (torch.rand_like(x) < gamma).to(x.dtype)  # (B, C, H, W), 1 = block centre
        dropped = F.max_pool2d(seeds, bs, stride=1, padding=bs // 2)[..., :h, :w]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


def dense_head(
    in_features: int,
    num_classes: int,
    dense: Sequence[int] = (),
    dropout: float = 0.0,
    norm: str = "none",
    act: str = "relu",
    dropout_before_output: bool = True,
) -> nn.Sequential:
    """Classifier MLP on pooled features: ``[Linear -> norm -> act -> Dropout] * len(dense) -> Linear``.

    Parameters
    ----------
    in_features : int
        Width of the pooled or flattened features.
    num_classes : int
        Width of the output layer (logits).
    dense : sequence of int
        Hidden layer widths, possibly empty (then the head is a single linear layer).
    dropout : float
        Dropout rate after every hidden layer (before the output layer when ``dense`` is empty).
    norm : {"batch", "layer", "none"}
        Normalisation after each hidden linear layer.
    act : {"relu", "silu", "mish", "gelu", "leaky"}
        Activation after each hidden layer.
    dropout_before_output : bool
        False: no dropout after the last hidden layer, i.e. right before the output layer
        (the report's rows 5 and 18: "none before output layer", "the first 2 have a dropout").
    """
    check_choice("head_norm", norm, NORMS)
    check_choice("head_act", act, ACTIVATIONS)
    layers: list[nn.Module] = []
    if not dense and dropout and dropout_before_output:
        layers.append(nn.Dropout(dropout))
    for i, width in enumerate(dense):
        layers.append(nn.Linear(in_features, width))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        layers.append(make_act(act))
        if dropout and (dropout_before_output or i < len(dense) - 1):
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``416`` -> ``(416, 416)``; ``(128, 130)`` -> ``(128, 130)`` (height = mel bins, width = frames)."""
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ConfigError(f"option input_size={input_size!r} must be an int or [height, width]")
    return hw


def conv_out_size(n: int, strides: int) -> int:
    """Size after ``strides`` stride-2 'same'-padded convs: ceil(n / 2) applied ``strides`` times."""
    for _ in range(strides):
        n = (n + 1) // 2
    return n


class PoolHead(nn.Module):
    """Global-average-pool (``"gap"``) or flatten (``"flatten"``) a feature map, then :func:`dense_head`.

    With ``dropout_before_pool`` the dropout is applied once to the feature map instead of
    after every hidden dense layer; ``pool_dropout`` is a separate rate for the feature map, in
    addition to the dense layers' dropout. ``flat_hw`` (the map's height and width) is required
    for ``"flatten"``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        pool: str = "gap",
        flat_hw: tuple[int, int] | None = None,
        dense: Sequence[int] = (),
        dropout: float = 0.0,
        dropout_before_pool: bool = False,
        norm: str = "none",
        act: str = "relu",
        pool_dropout: float = 0.0,
        dropout_before_output: bool = True,
    ):
        super().__init__()
        check_choice("head", pool, ("gap", "flatten"))
        if pool_dropout and dropout_before_pool:
            raise ConfigError("pool_dropout and dropout_before_pool both drop the feature map: set one")
        if pool == "flatten" and flat_hw is None:
            raise ConfigError("head='flatten' needs the option input_size")
        in_features = channels if pool == "gap" else channels * flat_hw[0] * flat_hw[1]
        self.pool = pool
        map_dropout = dropout if dropout_before_pool else pool_dropout
        self.drop = nn.Dropout(map_dropout) if map_dropout else nn.Identity()
        mlp_dropout = 0.0 if dropout_before_pool else dropout
        self.mlp = dense_head(in_features, num_classes, dense, mlp_dropout, norm, act, dropout_before_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)  # (B, C, H, W)
        x = x.mean((2, 3)) if self.pool == "gap" else x.flatten(1)  # (B, C) or (B, C*H*W)
        return self.mlp(x)  # (B, num_classes)
