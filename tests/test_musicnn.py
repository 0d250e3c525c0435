"""The musicnn port: TF checkpoint reader, conversion, parity with the TensorFlow original, preset.

References (tests/data/musicnn_reference.npz) were computed once with the original TF graph by
tools/musicnn_reference.py; TensorFlow is not needed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import shared_path
from melgenre import audio, features
from melgenre.errors import ConfigError
from melgenre.models import build, export_onnx
from melgenre.models.convert_musicnn import CHECKPOINTS, convert, convert_variables
from melgenre.models.musicnn import MSD_TAGS, MTT_TAGS
from melgenre.models.tfcheckpoint import read_checkpoint, read_index

DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "musicnn_reference.npz")
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "melgenre" / "weights"
MODELS = [("MSD_musicnn", "musicnn", "msd"), ("MTT_musicnn", "musicnn", "mtt"),
          ("MSD_vgg", "musicnn_vgg", "msd"), ("MTT_vgg", "musicnn_vgg", "mtt")]


def _patches(k: int) -> torch.Tensor:
    """Clip k's reference input (3, 187, 96) as model input (3, 1, 96, 187)."""
    return torch.from_numpy(REF[f"clip{k}_input"]).transpose(1, 2)[:, None].float()


# -- the checkpoint reader --------------------------------------------------------------------

def test_reader_returns_every_tensor_of_a_tf_written_checkpoint():
    values = np.load(DATA / "tiny_tf_checkpoint_values.npz")
    got = read_checkpoint(DATA / "tiny_tf_checkpoint" / "model.ckpt", skip_optimizer=False)
    assert sorted(got) == sorted(k.replace("__", "/") for k in values)
    for key in values:
        want, have = values[key], got[key.replace("__", "/")]
        assert have.dtype == want.dtype and have.shape == want.shape, key
        np.testing.assert_array_equal(have, want)


def test_reader_skips_optimizer_slots_by_default():
    got = read_checkpoint(DATA / "tiny_tf_checkpoint" / "model.ckpt")
    assert "model/conv2d/kernel" in got and not any("/Adam" in k for k in got)
    assert read_index(DATA / "tiny_tf_checkpoint" / "model.ckpt")["model/conv2d/kernel"]["shape"] == (2, 3, 1, 4)


def test_reader_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.index").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="x.index: not a TensorFlow checkpoint index"):
        read_checkpoint(tmp_path / "x")


# -- conversion -------------------------------------------------------------------------------

def _tf_variables(model: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random variables with the names and TF layouts of a musicnn checkpoint."""
    if model == "musicnn":
        convs = [(7, 38, 1, 204), (7, 67, 1, 204), (128, 1, 1, 51), (64, 1, 1, 51), (32, 1, 1, 51),
                 (7, 561, 1, 64), (7, 64, 1, 64), (7, 64, 1, 64)]
        bns = [1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200]
        dense = {"dense": (1506, 200), "dense_1": (200, 50)}
        conv_names = ["conv2d"] + [f"conv2d_{i}" for i in range(1, 8)]
    else:
        convs = [(3, 3, 1, 128)] + [(3, 3, 128, 128)] * 4
        bns = [1] + [128] * 5
        dense = {"dense": (256, 50)}
        conv_names = [f"{i}CNN" for i in range(1, 6)]
    out = {}
    for name, shape in zip(conv_names, convs):
        out[f"{name}/kernel"] = rng.normal(size=shape).astype(np.float32)
        out[f"{name}/bias"] = rng.normal(size=shape[-1]).astype(np.float32)
    for i, n in enumerate(bns):
        for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
            out[f"batch_normalization{'' if i == 0 else f'_{i}'}/{leaf}"] = rng.normal(size=n).astype(np.float32)
    for name, shape in dense.items():
        out[f"{name}/kernel"] = rng.normal(size=shape).astype(np.float32)
        out[f"{name}/bias"] = rng.normal(size=shape[-1]).astype(np.float32)
    return out


def test_conversion_maps_tf_layouts_to_the_port():
    tf = _tf_variables("musicnn", np.random.default_rng(0))
    state = convert_variables(tf, "musicnn")
    np.testing.assert_array_equal(state["frontend.0.conv.weight"][5, 0, 2, 7], tf["conv2d/kernel"][2, 7, 0, 5])
    np.testing.assert_array_equal(state["frontend.2.conv.weight"][3, 0, 100, 0], tf["conv2d_2/kernel"][100, 0, 0, 3])
    # mid-end conv [7, 561, 1, 64] -> Conv1d weight [64, 561, 7]
    np.testing.assert_array_equal(state["midend.0.conv.weight"][9, 300, 4], tf["conv2d_5/kernel"][4, 300, 0, 9])
    np.testing.assert_array_equal(state["dense.weight"].numpy(), tf["dense/kernel"].T)
    np.testing.assert_array_equal(state["pool_bn.running_var"].numpy(), tf["batch_normalization_9/moving_variance"])
    np.testing.assert_array_equal(state["tag_fc.bias"].numpy(), tf["dense_1/bias"])
    model = build("musicnn", pretrained=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)


def test_conversion_of_the_vgg_layouts():
    tf = _tf_variables("vgg", np.random.default_rng(1))
    state = convert_variables(tf, "musicnn_vgg")
    np.testing.assert_array_equal(state["convs.3.weight"][1, 2, 0, 2], tf["4CNN/kernel"][0, 2, 2, 1])
    np.testing.assert_array_equal(state["bns.4.weight"].numpy(), tf["batch_normalization_5/gamma"])


def test_conversion_refuses_unknown_or_misshapen_variables():
    tf = _tf_variables("musicnn", np.random.default_rng(2))
    with pytest.raises(ValueError, match="conv2d_9/kernel: no such layer"):
        convert_variables({**tf, "conv2d_9/kernel": np.zeros((1, 1, 1, 1), np.float32)}, "musicnn")
    with pytest.raises(ValueError, match="dense/kernel: shape"):
        convert_variables({**tf, "dense/kernel": np.zeros((10, 200), np.float32)}, "musicnn")
    del tf["dense_1/bias"]
    with pytest.raises(ValueError, match="lacks tag_fc.bias"):
        convert_variables(tf, "musicnn")


@pytest.mark.skipif(not os.environ.get("MELGENRE_MUSICNN_WHEEL"),
                    reason="set MELGENRE_MUSICNN_WHEEL to musicnn-0.1.0-py3-none-any.whl to re-convert it "
                           "(.ci/run downloads it)")
def test_shipped_weights_equal_a_fresh_conversion_of_the_wheel(tmp_path):
    written = convert(os.environ["MELGENRE_MUSICNN_WHEEL"], tmp_path)
    assert len(written) == len(CHECKPOINTS)
    for path in written:
        fresh, shipped = load_file(str(path)), load_file(str(WEIGHTS / path.name))
        assert fresh.keys() == shipped.keys()
        assert all(torch.equal(fresh[k], shipped[k]) for k in fresh)


def test_shipped_weights_carry_their_licence():
    notice = (WEIGHTS / "MUSICNN_LICENSE.md").read_text()
    assert "Music Technology Group, Universitat Pompeu Fabra" in notice and "Permission to use" in notice


# -- parity with the TensorFlow original ------------------------------------------------------

@pytest.mark.parametrize("tf_name,name,pretrained", MODELS)
def test_port_matches_the_tensorflow_taggram(tf_name, name, pretrained):
    model = build(name, pretrained=pretrained).eval()
    for k in range(3):
        with torch.no_grad():
            feats = model.features(_patches(k))
        taggram = torch.sigmoid(feats["tag_logits"]).numpy()
        assert np.abs(taggram - REF[f"clip{k}_{tf_name}_taggram"]).max() <= 1e-4
        if name == "musicnn":
            for key in ("mean_pool", "max_pool", "penultimate"):
                np.testing.assert_allclose(feats[key].numpy(), REF[f"clip{k}_{tf_name}_{key}"], rtol=1e-4, atol=1e-4)
        else:
            pool5 = REF[f"clip{k}_{tf_name}_pool5"].reshape(3, -1)
            np.testing.assert_allclose(feats["pool5"].numpy(), pool5, rtol=1e-4, atol=1e-4)


def test_tag_names_are_the_originals():
    assert list(REF["tags_MSD"]) == list(MSD_TAGS) and list(REF["tags_MTT"]) == list(MTT_TAGS)
    assert build("musicnn", pretrained="mtt").tags == MTT_TAGS


def test_onnx_export_keeps_parity(tmp_path):
    import onnxruntime as ort

    model = build("musicnn", pretrained="msd", num_classes=10).eval()
    path = export_onnx(model, tmp_path / "musicnn.onnx", (1, 96, 187))
    x = _patches(0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"mel": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (3, 10)
    assert np.abs(got - want).max() <= 1e-4


GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
FUSE = {"pretrained": "mtt", "embedding": "penultimate", "head": False,
        "tag_prior": {"weight": 0.5, "genres": {"classical": ["classical"], "rock": ["rock"]}, "fill": "zero"}}


def _fused(**fuse):
    return build("musicnn", pretrained="msd", num_classes=10, freeze=True, classes=GENRES,
                 tag_prior={"weight": 0.5, "genres": {"rock": ["rock"], "jazz": ["jazz"]}}, fuse={**FUSE, **fuse}).eval()


def test_fused_mtt_tagger_prior_and_cached_rows():
    from melgenre.models.embedding import last_linear

    model = _fused()
    assert last_linear(model) is model.head.fc and model.head.fc.in_features == 1706  # head: false
    mtt = build("musicnn", pretrained="mtt").eval()
    x = _patches(0)
    with torch.no_grad():
        full = model.full_input(x)
        assert full.shape == (3, 1706 + 200)
        assert torch.allclose(full[:, 1706:], mtt.features(x)["penultimate"], atol=1e-5)  # the MTT weights
        # the prior: MTT's "classical" logit, 0.5 x, on classical only (fill zero); nothing on blues
        tags = mtt.features(x)["tag_logits"]
        prior = model.fused.prior_logits(full[:, 1706:])
        assert torch.allclose(prior[:, GENRES.index("classical")], 0.5 * tags[:, MTT_TAGS.index("classical")], atol=1e-5)
        assert torch.all(prior[:, GENRES.index("blues")] == 0)
        # classical has no MSD tag here: its MSD row is empty (not the others' mean); blues (no tag anywhere) keeps the mean
        assert torch.all(model.prior_map[GENRES.index("classical")] == 0)
        assert torch.allclose(model.prior_map[GENRES.index("blues")], model.prior_map[[5, 9]].mean(0))
        want = model.head(full[:, :1706]) + model.prior_logits(full) + prior
        assert torch.allclose(model(x), want, atol=1e-4)
        assert torch.allclose(model(full[:, None, None, :]), want, atol=1e-4)  # a cached (fused) store row
    model.train()
    assert not model.fused.training and all(not p.requires_grad for p in model.fused.parameters())
    assert build("musicnn", pretrained="msd", num_classes=10, classes=GENRES,
                 fuse={"pretrained": "mtt", "embedding": "pool+penultimate"}).head.fc.in_features == 2 * 1706
    with pytest.raises(ConfigError, match="fuse must be"):
        build("musicnn", num_classes=10, classes=GENRES, fuse={"bogus": 1})
    with pytest.raises(ConfigError, match="ends with penultimate"):
        _fused(embedding="pool")


def test_fused_model_onnx_parity(tmp_path):
    import onnxruntime as ort

    from melgenre.models.embedding import WithEmbedding

    wrapped = WithEmbedding(_fused()).eval()
    path = export_onnx(wrapped, tmp_path / "fused.onnx", (1, 96, 187), output_names=("logits", "embedding"))
    x = _patches(1)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"mel": x.numpy()})
    with torch.no_grad():
        want = wrapped(x)
    assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4 and np.abs(got[1] - want[1].numpy()).max() <= 1e-4


def test_frozen_model_trains_the_head_only():
    model = build("musicnn", pretrained="msd", num_classes=4, freeze=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    model.train()
    assert model.training and not model.frontend.training and not model.input_bn.training and model.head.training
    before = model.input_bn.running_mean.clone()
    model(torch.rand(2, 1, 96, 187) * 4).sum().backward()
    assert torch.equal(before, model.input_bn.running_mean)  # pretrained BN statistics untouched


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="pretrained must be msd, mtt or null"):
        build("musicnn", pretrained="imagenet")
    with pytest.raises(ConfigError, match="embedding must be one of"):
        build("musicnn", embedding="pool5")
    with pytest.raises(ConfigError, match="in_channels must be 1"):
        build("musicnn", in_channels=3)


# -- the preset -------------------------------------------------------------------------------

def test_musicnn_preset_equals_the_original_preprocessing():
    import librosa

    preset = features.get_preset("musicnn")
    assert (preset.sr, preset.n_fft, preset.hop_length, preset.n_mels, preset.chunk_frames) == (16000, 512, 256, 96, 187)
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 7) / 16000
    y = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    images = features.mel_images(features.fit_to_preset(y, preset), preset)
    mel = librosa.feature.melspectrogram(y=y, sr=16000, hop_length=256, n_fft=512, n_mels=96)
    want = np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)  # as musicnn's extractor (NumPy 1.x)
    assert images.shape == (2, 96, 187)  # 7 s -> 438 frames -> patches at 0 and 187
    assert np.abs(images[1] - want[:, 187:374]).max() < 2e-3  # float16 rounding of the power may flip
    assert np.isfinite(images).all() and images.max() > 3


def test_end_to_end_from_audio_is_close_to_the_original():
    """Looser: the references resampled with librosa.load; melgenre with soundfile + soxr."""
    preset = features.get_preset("musicnn")
    model = build("musicnn", pretrained="msd").eval()
    for k in range(3):
        path = shared_path("gtzan-dev", f"{REF[f'clip{k}_id']}.flac")
        clip = audio.load(path, sr=preset.sr)
        x = torch.from_numpy(features.mel_images(features.fit_to_preset(clip.samples, preset), preset))[:, None]
        assert x.shape[0] == int(REF[f"clip{k}_n_patches"])
        with torch.no_grad():
            taggram = model.taggram(x).mean(0).numpy()
        want = REF[f"clip{k}_MSD_musicnn_clip_taggram_mean"]
        assert np.abs(taggram - want).max() < 0.02
        assert np.argmax(taggram) == np.argmax(want)
