"""Genre timeline (melgenre.timeline): smoothing, segments, Prediction.segments, the figure, the CLI, and
joined clips of two genres (synthetic with a tiny trained CNN; real dev clips with the default model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import fit_tiny_cnn, shared_path
from typer.testing import CliRunner

from melgenre import audio, features, synth
from melgenre import timeline as tl
from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.predict import GenreModel, load_model, window_images

runner = CliRunner()
CLASSES = ["a", "b", "c"]


def _probs(labels: list[int], p: float = 0.8) -> np.ndarray:
    out = np.full((len(labels), 3), (1 - p) / 2, dtype=np.float32)
    out[np.arange(len(labels)), labels] = p
    return out


def test_smooth_is_a_centred_moving_average():
    p = _probs([0, 0, 1, 0, 2])
    s = tl.smooth(p)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(s[0], p[:2].mean(0), atol=1e-6)  # fewer windows at the ends
    np.testing.assert_allclose(s[2], p[1:4].mean(0), atol=1e-6)
    np.testing.assert_allclose(s[4], p[3:].mean(0), atol=1e-6)
    np.testing.assert_array_equal(tl.smooth(p, 1), p)
    with pytest.raises(ValueError, match="odd"):
        tl.smooth(p, 2)


def test_segments_split_at_the_midpoint_between_window_centres():
    starts = [3.0 * i for i in range(10)]  # 3-s windows back to back
    segs = tl.segments(_probs([0] * 5 + [2] * 5), starts, CLASSES, window_seconds=3.0, duration=30.0)
    assert [(s.start, s.end, s.genre) for s in segs] == [(0.0, 15.0, "a"), (15.0, 30.0, "c")]
    assert segs[0].probability == pytest.approx(0.8)
    assert tl.describe(segs) == "0:00-0:15 a, 0:15-0:30 c"


def test_short_runs_merge_into_the_likelier_neighbour():
    starts = [3.0 * i for i in range(12)]
    labels = [0] * 5 + [1] * 2 + [2] * 5  # a 6-s run of b between a and c
    p = _probs(labels)
    p[5:7, 2] += 0.05  # c is the more probable neighbour over b's windows
    p /= p.sum(1, keepdims=True)
    kept = tl.segments(p, starts, CLASSES, 3.0, 36.0, min_segment=0)
    assert [s.genre for s in kept] == ["a", "b", "c"] and kept[1].end - kept[1].start == 6.0
    merged = tl.segments(p, starts, CLASSES, 3.0, 36.0, min_segment=10)
    assert [s.genre for s in merged] == ["a", "c"]
    assert merged[0].end == merged[1].start and merged[0].start == 0.0 and merged[-1].end == 36.0
    one = tl.segments(p, starts, CLASSES, 3.0, 36.0, min_segment=100)  # nothing is long enough: one segment
    assert len(one) == 1 and (one[0].start, one[0].end) == (0.0, 36.0)


@pytest.mark.parametrize(("likelier", "expected"), [
    (2, [(0.0, 15.0, "a"), (15.0, 36.0, "c")]),  # b's 6 s go to c: the boundary moves back to 15 s
    (0, [(0.0, 21.0, "a"), (21.0, 36.0, "c")]),  # b's 6 s go to a: the boundary moves on to 21 s
])
def test_a_short_run_merges_into_the_likelier_neighbour_at_the_right_boundary(likelier, expected):
    """Both neighbours have other genres, so only the boundary shows which one took the short run."""
    starts = [3.0 * i for i in range(12)]
    p = _probs([0] * 5 + [1] * 2 + [2] * 5)  # windows 5-6 (15-21 s) are b, between a and c
    p[5:7, likelier] += 0.2
    p /= p.sum(1, keepdims=True)
    smoothed = tl.smooth(p)[5:7]
    assert smoothed[:, likelier].mean() > smoothed[:, 2 - likelier].mean() + 0.05  # clearly the likelier one
    segs = tl.segments(p, starts, CLASSES, 3.0, 36.0, min_segment=10)
    assert [(s.start, s.end, s.genre) for s in segs] == expected
    assert [s.probability for s in segs] == pytest.approx(
        [p[round(s.start / 3):round(s.end / 3), CLASSES.index(s.genre)].mean() for s in segs])


def test_segment_edge_cases():
    assert tl.segments(np.zeros((0, 3)), [], CLASSES, 3.0, 0.0) == []
    single = tl.segments(_probs([1]), [0.0], CLASSES, 3.0, 1.2)
    assert [(s.start, s.end, s.genre) for s in single] == [(0.0, 1.5, "b")]  # the window's centre at least
    with pytest.raises(MelgenreError, match="do not match"):
        tl.segments(_probs([0, 1]), [0.0], CLASSES, 3.0, 6.0)
    with pytest.raises(MelgenreError, match=">= 0"):
        tl.segments(_probs([0]), [0.0], CLASSES, 3.0, 3.0, min_segment=-1)
    assert tl.clock(3725.9) == "1:02:05" and tl.clock(72) == "1:12"


# -- a joined file of two synthetic genres ---------------------------------------------------------

@pytest.fixture(scope="module")
def separating_model() -> GenreModel:
    """A melcnn trained a few epochs on fast-preset windows of synthetic classes 0 and 2, as a GenreModel."""
    preset = features.get_preset("fast")
    rng = np.random.default_rng(4)
    images, labels = [], []
    for label in (0, 1):
        for _ in range(5):
            imgs, _, _ = window_images(synth.synth_clip(2 * label, 3, seconds=4.5, rng=rng), preset)
            images.append(imgs)
            labels += [label] * len(imgs)
    module = fit_tiny_cnn(np.concatenate(images), np.array(labels), n_classes=2, width=4)
    card = {"classes": ["slow", "fast"], "preset": preset.to_dict(), "model_id": "tiny-timeline"}
    return GenreModel(card, module=module)


def test_joined_clips_give_two_segments_split_near_the_join(separating_model, tmp_path):
    model = separating_model
    rng = np.random.default_rng(11)
    first, second = (synth.synth_clip(k, 3, seconds=15.0, rng=rng) for k in (0, 2))
    pred = model.predict(np.concatenate([first, second]), sr=model.preset.sr)
    assert [s.genre for s in pred.segments] == ["slow", "fast"]
    assert abs(pred.segments[1].start - 15.0) <= pred.window_seconds  # within one window of the join
    assert pred.segments[0].start == 0.0 and pred.segments[-1].end == pytest.approx(30.0)
    assert all(s.probability > 0.5 for s in pred.segments)
    body = pred.to_dict()
    assert body["window_seconds"] == 3.0
    assert body["segments"][0] == {"start": 0.0, "end": round(pred.segments[0].end, 6), "genre": "slow",
                                   "probability": round(pred.segments[0].probability, 6)}
    json.dumps(body)

    out = tl.save_timeline_figure(pred, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000

    def label_heights(segs):
        fig = tl.timeline_figure(pred, segs)
        texts = [t for t in fig.axes[0].texts if t.get_text().split()[0] in ("slow", "fast")]
        return [t.get_position()[1] for t in texts]

    assert label_heights(pred.segments) == [1.02, 1.02]  # two wide segments: one row of labels
    narrow = [tl.Segment(0.0, 14.0, "slow", 0.9), tl.Segment(14.0, 15.0, "fast", 0.6), tl.Segment(15.0, 16.0, "slow", 0.6),
              tl.Segment(16.0, 30.0, "fast", 0.8)]
    heights = label_heights(narrow)  # labels of 1-s segments would overlap: every other one goes up a row
    assert heights[0] == heights[3] == 1.02 and heights[1] != heights[2]


def test_default_model_on_two_joined_training_clips():
    """Two real dev clips the default model trained on: figures on training clips are optimistic."""
    root = shared_path("gtzan-dev")
    model = load_model(None, windows="all")  # a timeline scores every window
    a, b = (audio.load(root / g / f"{g}.00002.flac", sr=model.preset.sr).samples for g in ("classical", "metal"))
    pred = model.predict(np.concatenate([a, b]), sr=model.preset.sr)
    assert [s.genre for s in pred.segments] == ["classical", "metal"]
    assert abs(pred.segments[1].start - len(a) / model.preset.sr) <= pred.window_seconds


# -- CLI ---------------------------------------------------------------------------------------------

def test_cli_timeline(tiny_card, tmp_path):
    clip = tmp_path / "mix.wav"
    rng = np.random.default_rng(2)
    sf.write(clip, np.concatenate([synth.synth_clip(k, 3, seconds=6.0, rng=rng) for k in (0, 2)]), 22_050)
    png = tmp_path / "tl.png"
    r = runner.invoke(app, ["timeline", str(clip), "--model", str(tiny_card), "--out", str(png), "--min-segment", "0"])
    assert r.exit_code == 0, r.output
    line = r.output.splitlines()[0]
    assert line.startswith("0:00-") and line.endswith(("0:12 class00", "0:12 class01", "0:12 class02"))
    assert png.stat().st_size > 10_000
    r = runner.invoke(app, ["timeline", str(clip), "--model", str(tiny_card), "-f", "json", "--min-segment", "100"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert len(body["segments"]) == 1 and body["segments"][0]["start"] == 0.0
    assert body["segments"][0]["end"] == pytest.approx(12.0) and len(body["window_starts"]) == 6
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    r = runner.invoke(app, ["timeline", str(bad), "--model", str(tiny_card), "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 2 and "bad.wav" in r.output and not (tmp_path / "b.png").exists()
    r = runner.invoke(app, ["timeline", str(clip), "--model", str(tiny_card), "-f", "csv"])
    assert r.exit_code == 2 and "--format" in r.output
    silent = tmp_path / "silent.wav"  # the segments of a silent clip come with its warning
    sf.write(silent, np.zeros(22_050 * 4, dtype=np.float32), 22_050)
    r = runner.invoke(app, ["timeline", str(silent), "--model", str(tiny_card)])
    assert r.exit_code == 0 and "silent: the clip is silent, so the genre means little" in r.output
    assert "silent:" not in runner.invoke(app, ["timeline", str(clip), "--model", str(tiny_card)]).output
