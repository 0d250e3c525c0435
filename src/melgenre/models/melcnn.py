"""``melcnn``: our CPU-fast short-chunk CNN for ~1.5 s mel chunks (1 x 128 x ~130).

Design (from the short-chunk CNN literature on GTZAN):

* **Short chunks + small 3x3 kernels.** Won et al. (2020, "Evaluation of CNN-based
  automatic music tagging models") found a VGG-ish stack of 3x3 convs on ~3.7 s chunks
  (Short-chunk CNN, and its residual variant) to match or beat larger front-ends; Choi
  et al. (2017) showed 2D 3x3 conv stacks work well on mel spectrograms. Training on short
  chunks gives many examples per track, and song-level predictions average chunk logits.
* **Input batch-norm** standardises the log-mel energy instead of a fixed per-dataset scale.
* **VGG-ish early, residual later.** The two full- and half-resolution layers are single
  3x3 conv-BN-ReLU layers (cheap where the maps are large); the three deeper stages are
  residual blocks (two 3x3 conv-BN, 1x1 projection shortcut when widening) as in Won et
  al.'s residual short-chunk CNN.
* **Early square pools, later frequency-only pools.** 2x2 pools early; the last pool
  halves frequency more than time, keeping temporal resolution for the time pooling.
* **Frequency then time pooling.** Max over the remaining frequency bins (a timbre
  detector fires anywhere in frequency) and then mean + max over time, so any chunk length
  works (global pooling) and both sustained and transient evidence is kept.
* **Budget:** at ``width=32`` 1.22 M parameters and 0.44 GFLOP per 1 x 128 x 130 chunk
  (FLOPs = 2 x multiply-accumulates, as torch's FlopCounterMode counts).
"""

from __future__ import annotations

import torch
from torch import nn

from melgenre.models.blocks import ConvBnAct, ExpandChannels
from melgenre.models.registry import register_model

# (channel multiple of ``width``, residual block?, max-pool (freq, time) after the stage)
STAGES: tuple[tuple[int, bool, tuple[int, int]], ...] = (
    (1, False, (2, 2)),  # stem conv at full resolution: 128 x 130 -> 64 x 65
    (1, False, (2, 2)),  # -> 32 x 32
    (2, True, (2, 2)),  # -> 16 x 16
    (4, True, (2, 2)),  # -> 8 x 8
    (8, True, (4, 1)),  # -> 2 x 8: frequency only
)


class ResBlock(nn.Module):
    """Two 3x3 conv-BN(-ReLU) layers plus a shortcut (1x1 conv-BN when the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.cv1 = ConvBnAct(c_in, c_out, 3, act="relu")
        self.cv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.cv2(self.cv1(x)) + self.shortcut(x))


@register_model(
    "melcnn",
    description="Ours: CPU-fast residual short-chunk CNN for 1x128x~130 mel chunks, freq+time pooling",
    default_input=(1, 128, 130),
)
class MelCNN(nn.Module):
    """Residual short-chunk CNN with frequency-then-time global pooling; outputs logits.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : {1, 3}
        1 for mel images; 3 replicates the mel channel.
    width : int
        Base channel count; stages use 1, 1, 2, 4, 8 times it.
    dropout : float
        Dropout rate before the output layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.3):
        super().__init__()
        self.expand = ExpandChannels(in_channels)
        self.input_bn = nn.BatchNorm2d(in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        for multiple, residual, pool in STAGES:
            c_out = multiple * width
            layers.append(ResBlock(c_in, c_out) if residual else ConvBnAct(c_in, c_out, 3, act="relu"))
            layers.append(nn.MaxPool2d(pool))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.input_bn(self.expand(x)))  # (B, C, F, T)
        x = x.amax(2)  # (B, C, T): max over frequency
        x = torch.cat([x.mean(2), x.amax(2)], 1)  # (B, 2C): mean + max over time
        return self.fc(self.drop(x))  # (B, num_classes)
