"""Saliency (melgenre.explain): Grad-CAM targets and maps for every registry CNN, occlusion, the band test
(a tiny CNN trained on classes that differ in one frequency band must put its saliency there), the figure
and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fit_tiny_cnn
from typer.testing import CliRunner

from melgenre import explain as ex
from melgenre.cli import app
from melgenre.models import build

runner = CliRunner()

#: Tiny versions of every registry CNN and an input (H, W) each accepts.
TINY = {
    "melcnn": ({"width": 4}, (128, 64)),
    "vanilla_cnn": ({"input_size": [64, 48], "filters": [4, 8, 8, 8], "dense": 8}, (64, 48)),
    "yolov4_cls": ({"width": 0.125, "depth": 0.34, "dense": [8]}, (32, 32)),
    "yolov8_cls": ({"width": 0.125, "depth": 0.34}, (64, 64)),
    "yolov8_cls-ultralytics": ({"width": 0.125, "depth": 0.34, "head": "ultralytics"}, (64, 64)),
    "musicnn": ({"pretrained": None}, (96, 48)),
    "musicnn_vgg": ({"pretrained": None}, (96, 187)),
}


@pytest.mark.parametrize("name", list(TINY))
def test_gradcam_maps_of_every_registry_cnn(name):
    options, (h, w) = TINY[name]
    torch.manual_seed(0)
    module = build(name.split("-")[0], num_classes=3, **options).eval()
    images = np.random.default_rng(0).random((2, h, w), dtype=np.float32)
    with torch.no_grad():
        before = module(torch.from_numpy(images[:, None])).numpy()
    # an untrained model may have no positive evidence for a class: some class must have some
    for c in np.argsort(-before[0]):
        maps = ex.gradcam(module, images, class_index=int(c))
        assert maps.shape == (2, h, w) and maps.dtype == np.float32
        assert np.all(np.isfinite(maps)) and maps.min() >= 0
        if maps.max() > 0:
            break
    assert maps.max() > 0
    with torch.no_grad():  # hooks are gone and the model is unchanged
        np.testing.assert_array_equal(module(torch.from_numpy(images[:, None])).numpy(), before)
    targets = ex.cam_targets(module, (h, w))
    assert targets and all(not isinstance(t.module, torch.nn.modules.pooling._MaxPoolNd) for t in targets)


def test_musicnn_hook_keeps_the_output():
    """The front-end hook rebuilds each branch's map and must give the fused eval path's output."""
    torch.manual_seed(1)
    module = build("musicnn", num_classes=4, pretrained=None).eval()
    for m in module.modules():  # non-trivial BN statistics, some negative gammas
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(-1, 1)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 1, 96, 40)
    with torch.no_grad():
        plain = module(x)
    maps: list[torch.Tensor] = []
    targets = ex.cam_targets(module)
    assert len(targets) == 5 and all(t.pooled and t.time_major for t in targets)
    handles = [t.module.register_forward_hook(ex._hook(t, maps)) for t in targets]
    try:
        with torch.no_grad():
            hooked = module(x)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(hooked, plain, rtol=1e-4, atol=1e-4)
    assert [tuple(m.shape[2:]) for m in maps] == [(40, 59), (40, 30), (40, 96), (40, 96), (40, 96)]


def test_occlusion_finds_the_patch_that_matters():
    """A 'model' whose probability is the mean of one region: only that region's occlusion lowers it."""
    def predict(images):
        p = images[:, 8:16, 20:30].mean(axis=(1, 2))
        return np.stack([1 - p, p], axis=1)

    images = np.zeros((2, 32, 40), dtype=np.float32)
    images[:, 8:16, 20:30] = 1.0
    done = []
    maps = ex.occlusion(predict, images, class_index=1, patch=(4, 5), on_image=lambda i, n: done.append((i, n)))
    assert maps.shape == images.shape and maps.min() >= 0
    inside, outside = maps[0, 8:16, 20:30].mean(), np.delete(maps[0], np.s_[4:20], axis=0).mean()
    assert inside > 0.01 and outside == 0.0
    assert done == [(1, 2), (2, 2)]  # progress: after each image


# -- band test -----------------------------------------------------------------------------------

BAND = (48, 64)  # mel rows that carry the class difference, of 128
SHAPE = (128, 32)


def band_images(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Mel-like images: a noisy background with random short 'notes' anywhere, in both classes;
    class 1 adds a pulse (every 4th frame, random phase) inside BAND only, so the classes differ
    in that band and nowhere else."""
    h, w = SHAPE
    out = 0.3 + 0.1 * rng.standard_normal((n, h, w)).astype(np.float32)
    for img in out:
        for _ in range(8):
            r, c = rng.integers(0, h - 2), rng.integers(0, w - 8)
            img[r:r + 2, c:c + 8] += 0.4
        if label == 1:
            img[BAND[0]:BAND[1], rng.integers(0, 4)::4] += 0.4
    return np.clip(out, 0, 1)


@pytest.fixture(scope="module")
def band_model():
    """melcnn (width 8) trained a few epochs on the two band classes; near-perfect on fresh images."""
    rng = np.random.default_rng(0)
    x = np.concatenate([band_images(32, 0, rng), band_images(32, 1, rng)])
    module = fit_tiny_cnn(x, np.repeat([0, 1], 32), n_classes=2)
    test = np.concatenate([band_images(16, 0, rng), band_images(16, 1, rng)])
    with torch.no_grad():
        acc = (module(torch.from_numpy(test[:, None])).argmax(1).numpy() == np.repeat([0, 1], 16)).mean()
    assert acc >= 0.95, f"the tiny CNN did not learn the band classes (accuracy {acc:.2f})"
    return module, band_images(4, 1, rng)


def _band_ratio(maps: np.ndarray) -> float:
    """Share of the saliency mass inside BAND, over the band's share of the image."""
    share = (BAND[1] - BAND[0]) / SHAPE[0]
    return float(maps[:, BAND[0]:BAND[1]].sum() / maps.sum() / share)


def test_saliency_concentrates_in_the_band(band_model):
    module, images = band_model

    def predict(batch):
        with torch.no_grad():
            return torch.softmax(module(torch.from_numpy(np.ascontiguousarray(batch[:, None]))), 1).numpy()

    cam = _band_ratio(ex.gradcam(module, images, 1))
    occ = _band_ratio(ex.occlusion(predict, images, 1, patch=(16, 16)))
    print(f"saliency mass in the band / band share of the image: Grad-CAM {cam:.2f}, occlusion {occ:.2f}")
    assert cam > 2 and occ > 2


# -- whole clips, figure, CLI ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_card):
    from melgenre.predict import load_model

    return load_model(tiny_card, backend="torch")  # Grad-CAM needs the torch module


def test_explain_assembles_the_clip_map(tiny, tmp_path, monkeypatch):
    """Window maps land at their columns of the clip's mel image, overlaps averaged, then scaled to max 1."""
    from melgenre import features, synth
    from melgenre.display import unchunked

    y = synth.synth_clip(2, 3, seconds=6.2, rng=np.random.default_rng(3))
    monkeypatch.setattr(ex, "gradcam", lambda module, images, c: np.ones_like(images)
                        * np.arange(1, len(images) + 1, dtype=np.float32)[:, None, None])
    expl = ex.explain(tiny, y, genre="class02", source="clip.wav")
    image = features.mel_images(features.fit_to_preset(y, tiny.preset), unchunked(tiny.preset))[0]
    np.testing.assert_array_equal(expl.image, image)
    assert expl.saliency.shape == image.shape and expl.genre == "class02" and expl.method == "gradcam"
    assert expl.window_starts == pytest.approx([0.0, 1.5, 3.0], abs=0.02) and len(expl.window_probabilities) == 3
    assert expl.seconds == pytest.approx(6.2, abs=0.01)
    col = [round(s * tiny.preset.sr / tiny.preset.hop_length) for s in expl.window_starts]
    width = tiny.preset.chunk_frames
    expected = {0: 1, col[1]: 1.5, col[2]: 2.5, col[2] + width - 1: 3, col[2] + width: 0}
    assert {c: round(float(expl.saliency[5, c]) * 3, 4) for c in expected} == expected
    assert np.all(expl.saliency.max(axis=0) == expl.saliency.min(axis=0))  # constant over frequency here

    monkeypatch.undo()
    real = ex.explain(tiny, y, method="gradcam")
    assert real.saliency.max() in (0.0, pytest.approx(1.0)) and real.saliency.min() >= 0  # 0: no evidence at all
    occ = ex.explain(tiny, y, genre=tiny.classes[0], method="occlusion")
    assert occ.genre == tiny.classes[0] and occ.saliency.shape == image.shape and occ.saliency.min() >= 0
    out = ex.save_saliency_figure(y, tiny.preset, expl, tmp_path / "x.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ex.MelgenreError, match="unknown genre 'polka'"):
        ex.explain(tiny, y, genre="polka")
    with pytest.raises(ex.MelgenreError, match="unknown saliency method"):
        ex.explain(tiny, y, method="lime")


def test_cli_explain(tiny_card, tmp_path):
    clip = next((tiny_card.parent / "clips").rglob("*.wav"))
    out = tmp_path / "why.png"
    r = runner.invoke(app, ["explain", str(clip), "--model", str(tiny_card), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "gradcam" in r.output and out.stat().st_size > 10_000 and "silent:" not in r.output
    r = runner.invoke(app, ["explain", str(clip), "--model", str(tiny_card), "--method", "occlusion", "--out",
                            str(tmp_path / "occ.png")])
    assert r.exit_code == 0, r.output
    assert "(occlusion) over" in r.output and (tmp_path / "occ.png").stat().st_size > 10_000
    silent = tmp_path / "silent.wav"  # a silent clip's saliency comes with its warning
    sf.write(silent, np.zeros(22_050 * 4, dtype=np.float32), 22_050)
    r = runner.invoke(app, ["explain", str(silent), "--model", str(tiny_card), "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 0 and "silent: the clip is silent, so the genre means little" in r.output
    r = runner.invoke(app, ["explain", str(clip), "--model", str(tiny_card), "--genre", "polka", "--out",
                            str(tmp_path / "no.png")])
    assert r.exit_code == 2 and "unknown genre 'polka'" in r.output and not (tmp_path / "no.png").exists()
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    r = runner.invoke(app, ["explain", str(bad), "--model", str(tiny_card), "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 2 and "bad.wav" in r.output and not (tmp_path / "b.png").exists()


def test_mel_figure_of_a_preset_with_frame_counts():
    """The musicnn preset fixes its chunks in frames; the whole-clip view drops them with the chunking
    (the page's spectrogram and `show --preset musicnn` failed before)."""
    import matplotlib.pyplot as plt

    from melgenre import features
    from melgenre.display import mel_figure, unchunked

    preset = features.get_preset("musicnn")
    view = unchunked(preset)
    assert view.chunk_seconds is None and view.frames_per_chunk is None and unchunked(view) is view
    y = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16_000 * 4) / 16_000).astype(np.float32)
    fig = mel_figure(y, preset)
    assert fig.axes[0].get_xlim()[1] == pytest.approx(4.0, abs=0.05)
    plt.close(fig)
