"""The head dropout options the report's Table 2 rows need: ``dropout_before_output`` (rows 2-3,
5 and 18: no dropout right before the output layer) and ``pool_dropout`` (row 18: dropout before
GAP as well as in the dense layers)."""

from __future__ import annotations

import pytest
from torch import nn

from melgenre.errors import ConfigError
from melgenre.models import build_from_config
from melgenre.models.blocks import dense_head

TINY = {"name": "yolov8_cls", "depth": 0.33, "width": 0.0625, "num_classes": 10}


def kinds(seq: nn.Module) -> list[str]:
    return [type(m).__name__ for m in seq]


def test_dense_head_dropout_before_output():
    assert kinds(dense_head(8, 10, [6, 4], 0.3, "layer")) == [
        "Linear", "LayerNorm", "ReLU", "Dropout", "Linear", "LayerNorm", "ReLU", "Dropout", "Linear"]
    assert kinds(dense_head(8, 10, [6, 4], 0.3, "layer", dropout_before_output=False)) == [
        "Linear", "LayerNorm", "ReLU", "Dropout", "Linear", "LayerNorm", "ReLU", "Linear"]
    assert kinds(dense_head(8, 10, [], 0.3, dropout_before_output=False)) == ["Linear"]


def test_yolov8_row18_head():
    model = build_from_config({**TINY, "dense": [256, 128, 64], "dropout": 0.3, "pool_dropout": 0.2,
                               "head_norm": "layer", "dropout_before_output": False})
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.2
    drops = [m.p for m in model.head.mlp if isinstance(m, nn.Dropout)]
    assert drops == [0.3, 0.3]  # after the first two of three dense layers only
    assert kinds(model.head.mlp)[-2:] == ["ReLU", "Linear"]
    default = build_from_config({**TINY, "dense": [256, 64], "dropout": 0.3})
    assert isinstance(default.head.drop, nn.Identity)
    assert [m.p for m in default.head.mlp if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def test_yolov8_pool_dropout_conflicts():
    with pytest.raises(ConfigError, match="pool_dropout"):
        build_from_config({**TINY, "dropout": 0.3, "dropout_before_pool": True, "pool_dropout": 0.2})
    with pytest.raises(ConfigError, match="ultralytics"):
        build_from_config({**TINY, "head": "ultralytics", "pool_dropout": 0.2})


def test_yolov4_single_dropout_head():
    model = build_from_config({"name": "yolov4_cls", "width": 0.0625, "depth": 0.33, "dense": [256, 64],
                               "dropout": 0.3, "dropout_before_output": False})
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.3]
