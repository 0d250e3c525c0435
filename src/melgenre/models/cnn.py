"""The report's model 1: a plain four-block CNN with a flatten + dense head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from melgenre.models.blocks import ExpandChannels, as_hw, check_choice, dense_head
from melgenre.models.registry import register_model


@register_model(
    "vanilla_cnn",
    description="Report model 1: 4x (conv3x3-ReLU-maxpool) 32/64/128/256, flatten, dense 128",
    default_input=(1, 416, 416),
)
class VanillaCNN(nn.Module):
    """Four Conv(3x3)->ReLU->MaxPool(2) blocks (32, 64, 128, 256 filters), Flatten, Dense, Dropout.

    The flatten width depends on the input size, so the model is built for one
    ``input_size`` and only accepts that size.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : {1, 3}
        1 for mel images; 3 replicates the mel channel (for 3-channel weights).
    input_size : int or [height, width]
        Input height and width the model is built for.
    filters : sequence of int
        Conv filters per block.
    dense : int
        Width of the hidden dense layer (ReLU).
    dropout : float
        Dropout rate after the dense layer.
    padding : {"same", "valid"}
        Conv padding; "valid" (Keras' default) loses 2 pixels per block before pooling.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 416,
        filters: Sequence[int] = (32, 64, 128, 256),
        dense: int = 128,
        dropout: float = 0.5,
        padding: str = "same",
    ):
        super().__init__()
        check_choice("padding", padding, ("same", "valid"))
        h, w = as_hw(input_size)
        layers: list[nn.Module] = [ExpandChannels(in_channels)]
        c_in = in_channels
        for c_out in filters:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
            shrink = 0 if padding == "same" else 2
            h, w = (h - shrink) // 2, (w - shrink) // 2
            c_in = c_out
        if h < 1 or w < 1:
            raise ValueError(f"input_size={input_size!r} is too small for {len(filters)} blocks")
        self.features = nn.Sequential(*layers)
        self.head = dense_head(c_in * h * w, num_classes, [dense], dropout, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, H/16, W/16)
        return self.head(x.flatten(1))  # (B, num_classes)
