import dataclasses
import subprocess
import sys

import librosa
import numpy as np
import pytest
import torch

from melgenre import audio, features, synth
from melgenre.errors import ConfigError
from melgenre.features import Preset, get_preset
from melgenre.torchmel import TorchMelImages

from conftest import shared_path


@pytest.fixture(scope="module")
def clip30() -> np.ndarray:
    """A 30-s synthetic clip at 22 050 Hz."""
    return synth.synth_clip(1, 4, seconds=30.0, rng=np.random.default_rng(0))


def test_builtin_presets_match_the_report():
    v1, v2 = get_preset("v1"), get_preset("v2")
    assert (v1.image_size, v1.sr, v1.duration, v1.win_length, v1.n_fft, v1.hop_length, v1.n_mels) == \
        ((416, 416), 22_050, 30.0, 1024, 4096, 512, 64)
    assert (v2.image_size, v2.win_length, v2.n_fft, v2.hop_length, v2.n_mels) == ((640, 640), 1024, 4096, 256, 128)
    assert v1.norm == v2.norm == "minmax"
    fast = get_preset("fast")
    assert fast.image_size is None and fast.chunk_frames == 130 and fast.image_shape() == (128, 130)
    assert set(features.builtin_presets()) >= {"v1", "v2", "fast"}


@pytest.mark.parametrize("name,shape,n_chunks", [("v1", (416, 416), 1), ("v2", (640, 640), 1),
                                                  ("fast", (128, 130), 18)])
def test_image_shapes_dtype_and_range(clip30, name, shape, n_chunks):
    preset = get_preset(name)
    images = features.mel_images(features.fit_to_preset(clip30, preset), preset)
    assert images.shape == (n_chunks, *shape) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    if preset.norm == "minmax":  # every image spans exactly [0, 1]
        assert np.allclose(images.min(axis=(1, 2)), 0) and np.allclose(images.max(axis=(1, 2)), 1)


@pytest.mark.parametrize("name", ["v1", "v2", "fast"])
@pytest.mark.parametrize("n_samples", [None, 22_050 * 7 + 333, 1500, 300])
def test_melspectrogram_equals_librosa(clip30, name, n_samples):
    """The folded-FFT, blocked path gives librosa's power mel, also for odd and very short clips."""
    preset = get_preset(name)
    y = clip30 if n_samples is None else clip30[:n_samples]
    ours = features.melspectrogram(y, preset)
    ref = librosa.feature.melspectrogram(y=y, sr=preset.sr, n_fft=preset.n_fft, hop_length=preset.hop_length,
                                         win_length=preset.win_length, n_mels=preset.n_mels, pad_mode="constant")
    assert ours.shape == ref.shape == (preset.n_mels, 1 + len(y) // preset.hop_length)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * ref.max())
    db_ours = features.power_to_db(ours, preset.top_db)
    db_ref = librosa.power_to_db(ref, ref=np.max, amin=features.AMIN, top_db=preset.top_db)
    # Worst case near the -80 dB floor (float32 rounding through the folded operator): below the
    # 0.04 dB step of the float16 rows a store keeps.
    assert np.abs(db_ours - db_ref).max() < 0.02  # dB


@pytest.mark.parametrize("args", [(22_050, 4096, 64, 0.0, None), (22_050, 2048, 128, 0.0, None),
                                  (16_000, 512, 40, 20.0, 7000.0), (44_100, 1024, 96, 300.0, None)])
def test_mel_basis_equals_librosa(args):
    sr, n_fft, n_mels, fmin, fmax = args
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = features.mel_basis(*args)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)


def test_prepare_workers_import_neither_torch_nor_librosa_filters():
    code = ("import sys; from melgenre import store, features; "
            "features.mel_images(features.fit_to_preset(__import__('numpy').zeros(22050, 'float32'), "
            "features.get_preset('v1')), features.get_preset('v1')); "
            "print(sorted(m for m in ('torch', 'librosa.filters', 'scipy.signal', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mel_operator_folds_the_long_fft():
    """v1/v2 (window 1024 in n_fft 4096) use a 2048-point FFT; fast (window = n_fft) does not."""
    assert features.fft_size(get_preset("v1")) == features.fft_size(get_preset("v2")) == 2048
    assert features.fft_size(get_preset("fast")) == 2048 == get_preset("fast").n_fft
    rng = np.random.default_rng(1)
    frame = np.hanning(1025)[:-1] * rng.normal(size=1024)
    long_power = np.abs(np.fft.rfft(frame, n=4096)) ** 2
    short_power = np.abs(np.fft.rfft(frame, n=2048)) ** 2
    basis = features.mel_basis(22_050, 4096, 64, 0.0, None).astype(np.float64)
    op = features.mel_operator(22_050, 4096, 64, 0.0, None, 2048)
    np.testing.assert_allclose(op @ short_power, basis @ long_power, rtol=1e-4, atol=1e-6 * long_power.max())


def test_mel_blocks_cover_the_operator_exactly():
    """The banded blocks of a plain filter bank hold all its non-zeros in about a quarter of its
    size; a folded (dense) operator stays one block."""
    for name, n_blocks in (("fast", features.MEL_GROUPS), ("v1", 1)):
        p = get_preset(name)
        n_small = features.fft_size(p)
        op = features.mel_operator(p.sr, p.n_fft, p.n_mels, p.fmin, p.fmax, n_small)
        blocks = features.mel_blocks(p.sr, p.n_fft, p.n_mels, p.fmin, p.fmax, n_small)
        assert len(blocks) == n_blocks
        rebuilt = np.zeros_like(op)
        for r0, r1, c0, c1, block in blocks:
            rebuilt[r0:r1, c0:c1] = block
        np.testing.assert_array_equal(rebuilt, op)
        if n_blocks > 1:
            assert sum(b[-1].size for b in blocks) < 0.4 * op.size


@pytest.mark.parametrize("name", ["v1", "v2", "fast"])
def test_torch_path_matches_librosa(clip30, name):
    preset = get_preset(name)
    y = features.fit_to_preset(clip30, preset)
    ref = features.mel_images(y, preset)
    batch = torch.from_numpy(np.stack([y, 0.25 * y]))  # gain must not matter (ref = max)
    out = TorchMelImages(preset)(batch).numpy()
    assert out.shape == (2, *ref.shape)
    assert np.abs(out[0] - ref).max() <= features.TORCH_TOLERANCE
    assert np.abs(out[1] - ref).max() <= features.TORCH_TOLERANCE


def test_normalisations():
    db = np.array([[-100.0, -40.0], [-20.0, 0.0]], dtype=np.float32)
    mm = features.normalise(db, get_preset("v1"))
    np.testing.assert_allclose(mm, [[0, 0.6], [0.8, 1.0]], atol=1e-6)
    fixed = features.normalise(db, get_preset("fast"))
    np.testing.assert_allclose(fixed, [[0, 0.5], [0.75, 1.0]], atol=1e-6)
    assert not features.normalise(np.full((3, 3), -5.0), get_preset("v1")).any()  # flat -> zeros


def test_silence_gives_a_finite_image():
    preset = get_preset("v1")
    images = features.mel_images(np.zeros(22_050 * 30, dtype=np.float32), preset)
    assert np.isfinite(images).all() and not images.any()


def test_fit_to_preset_pads_whole_clips_but_not_chunks():
    y = np.ones(22_050 * 5, dtype=np.float32)
    assert len(features.fit_to_preset(y, get_preset("v1"))) == 22_050 * 30
    assert len(features.fit_to_preset(y, get_preset("fast"))) == 22_050 * 5
    long = np.ones(22_050 * 40, dtype=np.float32)
    assert len(features.fit_to_preset(long, get_preset("fast"))) == 22_050 * 30
    # a clip shorter than one chunk still yields one (padded) chunk
    fast = get_preset("fast")
    padded = features.fit_to_preset(np.ones(1000, dtype=np.float32), fast)
    assert len(padded) == 3 * 22_050 and not padded[1000:].any()
    assert features.mel_images(padded, fast).shape == (1, 128, 130)


def test_user_preset_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nn_mels: 32\nimage_size: [64, 96]\nn_fft: 1024\nwin_length: 512\nhop_length: 256\n")
    preset = get_preset(path)
    assert preset.name == "mine" and preset.image_shape() == (64, 96)
    images = features.mel_images(np.random.default_rng(0).standard_normal(22_050 * 30).astype(np.float32), preset)
    assert images.shape == (1, 64, 96)
    assert Preset.from_dict(preset.to_dict()) == preset  # round trip


@pytest.mark.parametrize("change,message", [
    ({"norm": "zscore"}, "norm: must be one of"),
    ({"n_mels": 0}, "n_mels: must be a positive integer"),
    ({"win_length": 8192}, "win_length: 8192 exceeds n_fft"),
    ({"fmax": 20_000.0}, "fmin/fmax"),
    ({"chunk_hop_seconds": 1.0}, "chunk_hop_seconds: needs chunk_seconds"),
    ({"bogus": 1}, "unknown key(s) bogus"),
])
def test_bad_presets_name_the_key(change, message):
    data = get_preset("v1").to_dict() | change
    with pytest.raises(ConfigError) as err:
        Preset.from_dict(data)
    assert message in str(err.value)


def test_unknown_preset_name():
    with pytest.raises(ConfigError, match="unknown preset 'v9'"):
        get_preset("v9")


def test_chunking_counts():
    preset = get_preset("fast")
    assert preset.chunk_hop_frames == 65
    assert features.chunk_starts(1292, preset) == list(range(0, 1163, 65))
    unchunked = dataclasses.replace(preset, chunk_seconds=None, chunk_hop_seconds=None)
    assert features.chunk_starts(1292, unchunked) == [0]


def test_real_clip_v1_v2():
    path = shared_path("gtzan-dev", "rock", "rock.00003.flac")
    for name, shape in (("v1", (1, 416, 416)), ("v2", (1, 640, 640))):
        preset = get_preset(name)
        y = features.fit_to_preset(audio.load(path, sr=preset.sr).samples, preset)
        images = features.mel_images(y, preset)
        assert images.shape == shape and 0.2 < images.mean() < 0.8
        torch_images = TorchMelImages(preset)(torch.from_numpy(y)[None])[0].numpy()
        assert np.abs(torch_images - images).max() <= features.TORCH_TOLERANCE
        # both paths against librosa itself on real music, not only against each other
        ref = librosa.feature.melspectrogram(y=y, sr=preset.sr, n_fft=preset.n_fft, hop_length=preset.hop_length,
                                             win_length=preset.win_length, n_mels=preset.n_mels, pad_mode="constant")
        np.testing.assert_allclose(features.melspectrogram(y, preset), ref, rtol=1e-4, atol=1e-6 * ref.max())
        with torch.no_grad():
            power = TorchMelImages(preset).power_mel(torch.from_numpy(y)[None])[0].numpy()
        assert power.shape == ref.shape
        db = lambda p: librosa.power_to_db(p, ref=np.max, amin=features.AMIN, top_db=preset.top_db)  # noqa: E731
        assert np.abs(db(power) - db(ref)).max() < 0.05  # dB, float32 torch FFT
