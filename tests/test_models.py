"""Tests of melgenre.models: every family at tiny sizes, parameter budgets, registry, weights, ONNX, CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from melgenre.errors import ConfigError
from melgenre.models import (
    build,
    build_from_config,
    count_params,
    count_params_of,
    export_onnx,
    list_models,
    load_weights,
    summarize,
)
from melgenre.models.blocks import DropBlock2d
from melgenre.models.yolov4 import CSPDarknet

CONFIGS = Path(__file__).parents[1] / "configs" / "models"

# Tiny variants of every family (and the YOLOv8 head variants), for 64 x 64 inputs.
TINY = {
    "vanilla_cnn": dict(input_size=64, filters=(4, 8, 8, 8), dense=16),
    "yolov4_cls": dict(width=0.125, depth=0.1, dense=(16,)),
    "yolov8_gap": dict(scale="n", width=0.125, dense=(16, 8), dropout=0.2, head_norm="batch"),
    "yolov8_flatten": dict(scale="n", width=0.125, head="flatten", input_size=64, dense=(8,),
                           dropout=0.2, dropout_before_pool=True, head_norm="layer", head_act="gelu"),
    "yolov8_ultralytics": dict(scale="n", width=0.125, head="ultralytics", dropout=0.2),
    "melcnn": dict(width=4),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded, and do not fight other tests for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(key: str, **extra) -> torch.nn.Module:
    name = "yolov8_cls" if key.startswith("yolov8") else key
    return build(name, num_classes=5, **TINY[key], **extra)


@pytest.mark.parametrize("key", TINY)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_and_eval_determinism(key, in_channels):
    torch.manual_seed(0)
    model = tiny(key, in_channels=in_channels)
    x = torch.randn(2, 1, 64, 64)  # a 1-channel mel image, replicated when in_channels=3
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_melcnn_takes_any_chunk_length():
    model = tiny("melcnn").eval()
    for frames in (40, 130, 300):
        assert model(torch.randn(1, 1, 128, frames)).shape == (1, 5)


def test_dropblock_zeroes_blocks_in_train_and_is_identity_in_eval():
    torch.manual_seed(0)
    drop = DropBlock2d(p=0.2, block_size=5)
    x = torch.ones(4, 8, 32, 32)
    y = drop.train()(x)
    zero = y == 0
    assert 0.1 < zero.float().mean() < 0.3
    # dropped units come in blocks: a zeroed unit's neighbours are mostly zeroed too
    assert (zero[..., 1:, :] & zero[..., :-1, :]).sum() > 0.7 * zero.sum()
    assert torch.allclose(y.mean(), x.mean(), rtol=0.1)  # kept units are rescaled
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize(
    "scale, reference",
    [("n", 2.7e6), ("s", 6.4e6), ("m", 17.0e6), ("l", 37.5e6), ("x", 57.4e6)],
)
def test_yolov8_cls_param_counts_match_ultralytics(scale, reference):
    """ultralytics' YOLOv8-cls table (1000 classes, 3-channel 224^2 input): n 2.7 M ... x 57.4 M."""
    params = count_params_of("yolov8_cls", 1000, in_channels=3, scale=scale, head="ultralytics")
    assert abs(params / reference - 1) < 0.02


def test_cspdarknet53_param_count():
    """CSPDarknet53 backbone alone: timm's ``cspdarknet53`` has 27.6 M parameters including its
    1024 x 1000 classifier (1.03 M), so about 26.6 M without it."""
    with torch.device("meta"):
        params = count_params(CSPDarknet(in_channels=3))
    assert 26.6e6 <= params <= 27.7e6


def test_melcnn_budget():
    model = build("melcnn")
    summary = summarize(model, (1, 128, 130))
    assert summary.total_params <= 2e6
    assert summary.flops <= 0.5e9
    assert summary.output_shape == (1, 10)


def test_registry_lists_and_builds_by_name():
    names = [spec.name for spec in list_models()]
    assert names == ["melcnn", "musicnn", "musicnn_vgg", "vanilla_cnn", "yolov4_cls", "yolov8_cls"]
    model = build("melcnn", num_classes=7, width=8)
    assert model.config["width"] == 8 and model.config["num_classes"] == 7


def test_build_from_yaml_section_and_config_round_trip():
    text = """
    model:
      name: yolov8_cls
      num_classes: 4
      scale: n
      width: 0.125
      head: gap
      dense: [256, 128, 64]
      head_norm: batch
    """
    model = build_from_config(text)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    rebuilt = build_from_config(model.config)
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("resnet9000", {}, ["resnet9000", "melcnn"]),
        ("melcnn", {"depthh": 3}, ["depthh", "width"]),
        ("yolov8_cls", {"scale": "q"}, ["scale", "'n'"]),
        ("yolov8_cls", {"head": "flatten"}, ["input_size"]),
        ("yolov8_cls", {"head": "ultralytics", "dense": [8]}, ["dense"]),
        ("yolov4_cls", {"head_act": "tanh"}, ["head_act", "'mish'"]),
        ("vanilla_cnn", {"in_channels": 2}, ["in_channels"]),
    ],
)
def test_bad_name_or_option_raises_config_error(name, options, words):
    with pytest.raises(ConfigError) as info:
        build(name, **options)
    assert all(word in str(info.value) for word in words)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_partial_weights_load_reports_matches(tmp_path, suffix):
    source = tiny("melcnn")
    state = {k: v.clone() for k, v in source.state_dict().items() if k.startswith("features.")}
    state["fc.weight"] = torch.zeros(3, 8)  # wrong shape
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    target = tiny("melcnn")
    report = load_weights(target, path)
    n_features = sum(k.startswith("features.") for k in target.state_dict())
    assert len(report.matched) == n_features
    assert report.unexpected == ["extra.weight"]
    assert [k for k, *_ in report.shape_mismatched] == ["fc.weight"]
    not_in_file = {k for k in target.state_dict() if not k.startswith(("features.", "fc.weight"))}
    assert set(report.missing) == not_in_file
    assert torch.equal(target.features[0].conv.weight, source.features[0].conv.weight)


def test_weights_errors(tmp_path):
    model = tiny("melcnn")
    with pytest.raises(ConfigError, match="not found"):
        load_weights(model, tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_weights(model, bad)
    other = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="no tensor matches"):
        load_weights(model, other)
    with pytest.raises(ConfigError, match="ultralytics"):
        load_weights(model, other, mapping="ultralytics")


@pytest.mark.parametrize("head, n_head", [("ultralytics", 1), ("gap", 0)])
def test_ultralytics_checkpoint_mapping(tmp_path, head, n_head):
    """A synthetic ultralytics-style state_dict (``model.{i}.`` keys) loads via the prefix map."""
    options = dict(scale="n", width=0.125, in_channels=3, head=head, backbone="cls")
    ours = build("yolov8_cls", 1000, **options).state_dict()
    n_backbone = sum(1 for k in ours if k.startswith("backbone."))
    upstream = {"model." + k.removeprefix("backbone."): torch.randn_like(v.float()).to(v.dtype)
                for k, v in ours.items() if k.startswith("backbone.")}
    if head == "ultralytics":  # upstream Classify is layer 9 of yolov8-cls
        upstream.update({"model.9." + k.removeprefix("head."): v for k, v in ours.items() if k.startswith("head.")})
    upstream["model.22.dfl.conv.weight"] = torch.zeros(1, 16, 1, 1)  # a detection-head key
    path = tmp_path / "yolov8n-cls-sd.pt"
    torch.save(upstream, path)
    model = build("yolov8_cls", 1000, **options)
    report = load_weights(model, path, mapping="ultralytics")
    n_head_keys = sum(1 for k in ours if k.startswith("head."))
    assert len(report.matched) == n_backbone + n_head * n_head_keys
    assert report.unexpected == ["model.22.dfl.conv.weight"]
    assert torch.equal(model.backbone[2].m[0].cv1.conv.weight, upstream["model.2.m.0.cv1.conv.weight"])


def test_build_with_weights_option(tmp_path):
    path = tmp_path / "melcnn.pt"
    torch.save(tiny("melcnn").state_dict(), path)
    model = build("melcnn", 5, weights=path, **TINY["melcnn"])
    assert torch.equal(model.state_dict()["fc.weight"], torch.load(path)["fc.weight"])


@pytest.mark.parametrize("key", ["vanilla_cnn", "yolov4_cls", "yolov8_gap", "yolov8_flatten", "yolov8_ultralytics", "melcnn"])
def test_onnx_export_matches_torch_with_dynamic_batch(tmp_path, key):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = tiny(key, in_channels=3 if key == "yolov8_ultralytics" else 1)
    path = export_onnx(model, tmp_path / f"{key}.onnx", (1, 64, 64), opset=17, batch_size=2)
    assert model.training  # mode restored
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"mel": x.numpy()})
    assert got.shape == (3, 5)
    assert abs(got - expected).max() < 1e-4


def test_cli_lists_and_shows_models():
    from melgenre.cli import app

    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pretrained taggers, counted on "meta", load no weights
        listing = runner.invoke(app, ["models"])
    assert listing.exit_code == 0, listing.output
    assert all(spec.name in listing.output for spec in list_models())
    assert "1,221,676" in listing.output  # melcnn at its defaults

    shown = runner.invoke(app, ["models", "show", "melcnn", "--input", "1x128x130", "--option", "width=16"])
    assert shown.exit_code == 0, shown.output
    summary = summarize(build("melcnn", width=16), (1, 128, 130))
    assert f"{summary.total_params:,}" in shown.output
    assert f"{summary.flops / 1e9:.3f} GFLOP" in shown.output
    assert "(1, 10)" in shown.output

    bad = runner.invoke(app, ["models", "show", "resnet9000"])
    assert bad.exit_code == 2
    assert "resnet9000" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_build(path):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_from_config(path.read_text())
    assert count_params(model) > 0


def test_channels_last_keeps_the_outputs():
    """Training and torch prediction run models channels-last: same logits, NHWC conv weights."""
    from melgenre.models import channels_last

    model = tiny("melcnn").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fast = channels_last(model)
        conv = next(p for p in fast.parameters() if p.dim() == 4 and p.shape[1] > 1)  # not the 1-channel stem
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
