"""Calibration (temperature scaling on out-of-fold predictions) and the "unsure" / "not music" flags."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_SERVE
from typer.testing import CliRunner

from melgenre import calibrate, synth, trust
from melgenre.cli import app
from melgenre.config import config_from_dict
from melgenre.cv import cross_validate
from melgenre.errors import MelgenreError
from melgenre.evaluate import wilson_interval
from melgenre.predict import export_onnx_file, forward_outputs, load_model, save_package, softmax, tempered
from melgenre.store import prepare

runner = CliRunner()

TINY = {**TINY_SERVE, "name": "tiny-cal", "train": {"max_epochs": 1, "patience": 1}}
SR = 22_050


# -- the numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    """Labels drawn from track probabilities made with temperature T: the fit finds T again."""
    rng = np.random.default_rng(0)
    tracks, windows, classes = 3000, 3, 5
    logits = rng.normal(0, 2.0, (tracks * windows, classes)) + np.repeat(rng.normal(0, 2.0, (tracks, classes)), windows, 0)
    index = np.repeat(np.arange(tracks), windows)
    probs = calibrate.track_probabilities(logits, index, true_t)
    labels = np.array([rng.choice(classes, p=p / p.sum()) for p in probs])
    fitted = calibrate.fit_temperature(logits, index, labels)
    assert fitted == pytest.approx(true_t, rel=0.08)
    # the fitted temperature gives a lower NLL than no scaling, and a low calibration error
    assert calibrate.nll(calibrate.track_probabilities(logits, index, fitted), labels) < \
        calibrate.nll(calibrate.track_probabilities(logits, index), labels)
    assert calibrate.ece(calibrate.track_probabilities(logits, index, fitted), labels) < 0.03


def test_track_probabilities_average_the_windows_softmax_then_scale_the_mean():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    mean0 = (softmax(logits[:1]) + softmax(logits[1:2]))[0] / 2
    np.testing.assert_allclose(calibrate.track_probabilities(logits, np.array([0, 0, 1])), [mean0, [1 / 3] * 3], atol=1e-6)
    probs = calibrate.track_probabilities(logits, np.array([0, 0, 1]), temperature=0.5)
    expected0 = mean0 ** 2 / (mean0 ** 2).sum()  # softmax(log(mean) / 0.5)
    np.testing.assert_allclose(probs, [expected0, [1 / 3] * 3], atol=1e-6)
    # of one window, the same as dividing its logits by the temperature
    np.testing.assert_allclose(tempered(softmax(logits), 0.5), softmax(logits / 0.5), atol=1e-6)


def test_temperature_never_changes_a_track_label():
    """Windows whose per-window scaling would flip the track's winner: scaling the mean keeps it."""
    # the mean of the two windows' softmax favours class 2 (0.40 against 0.35 for class 0) ...
    logits = np.array([[2.7, 1.6, 0.5], [-0.6, 2.9, 3.9]])
    index = np.array([0, 0])
    assert calibrate.track_probabilities(logits, index).argmax() == 2
    # ... sharpening each window before the mean would hand it to class 0
    assert ((softmax(logits / 0.3)).mean(0)).argmax() == 0
    for t in (0.1, 0.3, 0.784, 2.0, 10.0):
        probs = calibrate.track_probabilities(logits, index, t)
        assert probs.argmax() == 2 and probs.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    many = rng.normal(0, 3, (600, 6))
    groups = np.repeat(np.arange(100), 6)
    plain = calibrate.track_probabilities(many, groups).argmax(1)
    for t in (0.2, 0.5, 3.0):
        assert (calibrate.track_probabilities(many, groups, t).argmax(1) == plain).all()


def test_ece_on_known_values():
    # top probabilities 0.95 (right), 0.55 (wrong), 0.85 (right), 0.65 (right); 10 bins: one per bin
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.15, 0.85], [0.35, 0.65]])
    labels = np.array([0, 1, 1, 1])
    assert calibrate.ece(probs, labels, bins=10) == pytest.approx((0.05 + 0.55 + 0.15 + 0.35) / 4)
    # one bin over (0.5, 1]: accuracy 0.75 against mean confidence 0.75
    assert calibrate.ece(probs, labels, bins=2) == pytest.approx(0.0, abs=1e-12)
    perfect = np.eye(3)[[0, 1, 2]]
    assert calibrate.ece(perfect, np.array([0, 1, 2])) == 0.0


def test_thresholds_and_auroc():
    music = np.arange(100, dtype=float)
    threshold = trust.novelty_threshold(music)
    assert np.mean(music > threshold) == pytest.approx(trust.FALSE_FLAG_RATE, abs=0.011)
    assert trust.auroc(np.array([200.0, 300.0]), music) == 1.0
    assert trust.auroc(np.array([49.5]), music) == pytest.approx(0.5)
    assert trust.auroc(np.array([0.0]), np.array([0.0])) == 0.5

    # below 0.4 the predictions are right 1 time in 3; adding 0.4-0.6 brings the running accuracy to 0.5
    top = np.array([0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9, 0.95])
    right = np.array([0, 1, 0, 1, 1, 1, 1, 1])
    assert trust.unsure_threshold(top, right) == pytest.approx(0.4)
    assert trust.unsure_threshold(top, np.ones(8)) == 0.0  # always right: nothing is unsure
    assert trust.unsure_threshold(top, np.zeros(8)) > 0.95  # always wrong: everything is


def test_novelty_and_flags():
    windows = np.array([[3.0, 4.0, 0, 0], [3.0, 4.0, 0, 2.0]])  # mean (3, 4, 0, 1)
    centres = trust.class_centres(np.array([[0.0, 0, 0, 0], [0, 0, 0, 2], [3, 4, 0, 3], [3, 4, 0, 5]]),
                                  np.array([0, 0, 2, 2]))
    np.testing.assert_allclose(centres, [[0, 0, 0, 1], [3, 4, 0, 4]])  # one row per class present
    assert trust.novelty(windows, centres) == pytest.approx(3.0)  # the clip mean to the nearest centre
    assert trust.novelty(windows, centres[:1]) == pytest.approx(5.0)
    # packages calibrated before class centres: the windows' mean distance to their one centre
    assert trust.novelty(windows, np.zeros(4), trust.LEGACY_METHOD) == pytest.approx((5.0 + 29 ** 0.5) / 2)
    with pytest.raises(MelgenreError, match="unknown novelty method 'knn'"):
        trust.novelty(windows, centres, "knn")
    with pytest.raises(MelgenreError, match="no training tracks"):
        trust.class_centres(np.zeros((0, 4)), np.zeros(0))
    card = {"trust": {"unsure_below": 0.5, "not_music_above": 2.0}}
    assert trust.trust_flags(card, 0.9, 1.0, silent=False) == []
    assert trust.trust_flags(card, 0.4, 3.0, silent=False) == ["not_music", "unsure"]
    assert trust.trust_flags({}, 0.1, None, silent=True) == ["not_music"]  # no thresholds: silence only
    assert trust.trust_flags({}, 0.1, None, silent=False) == []


def test_nonmusic_clips_are_generated_without_speech():
    clips = trust.nonmusic_clips(sr=8000, seconds=2.0, with_speech=False)
    assert {"silence", "noise-white-0", "noise-pink-0", "tone-440hz", "clicks-2hz"} <= set(clips)
    assert all(y.shape == (16_000,) and y.dtype == np.float32 for y in clips.values())
    assert np.max(np.abs(clips["silence"])) == 0 and 0.4 < np.max(np.abs(clips["noise-white-0"])) <= 0.5


@pytest.mark.skipif(not trust.have_espeak(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_speech_from_espeak():
    y = trust.speech("one two three", "en", sr=16_000, seconds=3.0)
    assert y.shape == (48_000,) and np.max(np.abs(y)) > 0.05


# -- a calibrated tiny package ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A 2-fold CV of a tiny melcnn on 3 synthetic classes and one of its fold models as a package
    (standing in for the final retrain, to save time), calibrated through the CLI (with a reliability
    diagram and a report)."""
    root = tmp_path_factory.mktemp("calibrate")
    synth.write_corpus(root / "clips", n_classes=3, per_class=4, seconds=3.5, seed=4)
    prepare(root / "clips", "fast", root / "syn.h5", workers=1, progress=False)
    cross_validate(config_from_dict(TINY), folds=2, runs_dir=root / "runs", data=root / "syn.h5", progress=False,
                   fixed_epochs=True, final_retrain=False)
    card = save_package(root / "runs" / "tiny-cal" / "fold0-last", root / "pkg" / "tiny")  # any model of the recipe
    plain = save_package(card, root / "plain" / "tiny")  # the same model, never calibrated
    r = runner.invoke(app, ["calibrate", str(card), "--cv", str(root / "runs" / "tiny-cal" / "cv-last.json"),
                            "--data", str(root / "syn.h5"), "--plot", str(root / "rel.png"),
                            "--report", str(root / "report.json"), "--nonmusic-seconds", "4"])
    assert r.exit_code == 0, r.output
    return {"root": root, "card": card, "plain": plain, "output": r.output}


def test_calibrate_writes_the_card_and_reference(calibrated):
    root, card_path = calibrated["root"], calibrated["card"]
    card = json.loads(card_path.read_text())
    cal, tr = card["calibration"], card["trust"]
    assert cal["fitted_on"] == "tiny-cal/cv-last.json" and cal["ece_bins"] == 15
    assert calibrate.T_RANGE[0] <= cal["temperature"] <= calibrate.T_RANGE[1]
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert cal["n"] == tr["n"] > 0
    # the labels as the package predicts them are the CV's own (every window here; the temperature changes none)
    pooled = json.loads((root / "runs" / "tiny-cal" / "cv-last.json").read_text())["pooled"]
    assert cal["n"] == pooled["n"]
    assert cal["accuracy"] == pytest.approx(pooled["accuracy"], abs=1e-6)
    assert cal["balanced_accuracy"] == pytest.approx(pooled["balanced_accuracy"], abs=1e-6)
    assert f"accuracy {cal['accuracy']:.3f}, balanced accuracy {cal['balanced_accuracy']:.3f}" in calibrated["output"]
    assert tr["not_music_above"] > 0 and 0 <= tr["false_flag_rate_dev"] <= 0.5
    low, high = tr["false_flag_rate_dev_interval"]  # Wilson, of the flagged count among the n dev clips
    assert [low, high] == pytest.approx(wilson_interval(round(tr["false_flag_rate_dev"] * tr["n"]), tr["n"]), abs=1e-6)
    assert tr["novelty"] == trust.NOVELTY_METHOD and tr["not_music_rule"].startswith("98th percentile")
    assert 0 <= tr["evaluation"]["auroc_music_vs_nonmusic"] <= 1 and tr["evaluation"]["n_nonmusic"] >= 14
    npz = card_path.with_name("tiny.trust.npz")
    assert tr["reference"]["file"] == npz.name
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == tr["reference"]["sha256"]
    assert npz.stat().st_size < 100_000
    assert (root / "rel.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((root / "report.json").read_text())
    assert report["calibration"] == cal and len(report["music_novelty"]) == cal["n"]
    assert f"temperature {cal['temperature']:.3f}" in calibrated["output"] and "tiny.trust.npz" in calibrated["output"]
    # the card still loads as a package (round trip) and the reference is found
    model = load_model(card_path)
    assert model.temperature == cal["temperature"] and model.trust_centres.shape[0] == 3  # one centre per class
    with np.load(card_path.with_name("tiny.trust.npz")) as npz:
        np.testing.assert_allclose(npz["centres"], model.trust_centres)
        music = npz["music_novelty"]
    # the threshold flags about 2 % of the out-of-fold music (of the few tiny dev clips here: the top one)
    assert tr["not_music_above"] == pytest.approx(np.quantile(music, 1 - trust.FALSE_FLAG_RATE), abs=1e-6)


def _top_class_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE written out again for the test: bins of the top probability in (lo, hi]."""
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        members = (conf > lo) & (conf <= hi) if lo > 0 else conf <= hi
        if members.any():
            total += members.sum() * abs(right[members].mean() - conf[members].mean())
    return total / len(conf)


def test_card_figures_are_those_of_the_out_of_fold_predictions(calibrated):
    """The card's temperature, NLL, ECE, accuracy and "unsure" figures, computed again from the
    folds' out-of-fold window logits (not read back from the card)."""
    root, card = calibrated["root"], json.loads(calibrated["card"].read_text())
    cal, tr = card["calibration"], card["trust"]
    oof = calibrate.oof_outputs(root / "runs" / "tiny-cal" / "cv-last.json", root / "syn.h5", card.get("predict_hop"))
    assert len(oof.tracks) == cal["n"] > 0

    logits = oof.window_logits.astype(np.float64)
    window_probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    window_probs /= window_probs.sum(axis=1, keepdims=True)
    mean = np.stack([window_probs[oof.track_index == i].mean(axis=0) for i in range(len(oof.tracks))])

    def at(t: float) -> np.ndarray:  # the track mean's log, divided by t, through a softmax
        z = np.exp(np.log(mean) / t)
        return z / z.sum(axis=1, keepdims=True)

    def nll(t: float) -> float:
        return float(-np.mean(np.log(at(t)[np.arange(len(oof.labels)), oof.labels])))

    t = cal["temperature"]
    assert nll(t) <= min(nll(other) for other in np.geomspace(*calibrate.T_RANGE, 300)) + 1e-7  # the best in range
    assert (cal["nll_before"], cal["nll_after"]) == pytest.approx((nll(1.0), nll(t)), abs=1e-5)
    assert cal["ece_before"] == pytest.approx(_top_class_ece(at(1.0), oof.labels, 15), abs=1e-5)
    assert cal["ece_after"] == pytest.approx(_top_class_ece(at(t), oof.labels, 15), abs=1e-5)
    after = at(t)
    top, right = after.max(axis=1), after.argmax(axis=1) == oof.labels
    assert cal["accuracy"] == pytest.approx(right.mean(), abs=1e-6)

    # "unsure": the largest observed top probability below which fewer than half are right
    candidates = [c for c in [*np.unique(top), top.max() + 1e-9] if (top < c).any() and right[top < c].mean() < 0.5]
    assert tr["unsure_below"] == pytest.approx(max(candidates, default=0.0), abs=1e-6)
    unsure = top < tr["unsure_below"]
    assert tr["unsure_rate_dev"] == pytest.approx(unsure.mean(), abs=1e-6)
    assert tr["accuracy_unsure_dev"] == (pytest.approx(right[unsure].mean(), abs=1e-6) if unsure.any() else None)
    assert tr["accuracy_sure_dev"] == (pytest.approx(right[~unsure].mean(), abs=1e-6) if (~unsure).any() else None)
    with np.load(calibrated["card"].with_name("tiny.trust.npz")) as npz:
        music = npz["music_novelty"]
    assert tr["false_flag_rate_dev"] == pytest.approx(np.mean(music > tr["not_music_above"]), abs=1e-6)


def test_predictions_use_the_calibrated_probabilities(calibrated):
    card_path, plain = calibrated["card"], calibrated["plain"]
    torch_model, onnx_model, raw = load_model(card_path), load_model(card_path, backend="onnx"), load_model(plain)
    assert raw.temperature == 1.0 and raw.trust_centres is None
    clip = synth.synth_clip(1, 3, 4.0, SR, np.random.default_rng(5))
    images, _, _ = torch_model.clip_images(clip)
    logits = forward_outputs(raw._module, images)[0]
    expected = softmax(logits / np.float32(torch_model.temperature))
    np.testing.assert_allclose(torch_model.predict_images(images), expected, atol=1e-5)
    np.testing.assert_allclose(onnx_model.predict_images(images), expected, atol=1e-4)
    p_torch, p_onnx = torch_model.predict(clip, sr=SR), onnx_model.predict(clip, sr=SR)
    np.testing.assert_allclose(p_torch.window_probabilities, p_onnx.window_probabilities, atol=1e-4)
    np.testing.assert_allclose(p_torch.window_probabilities, expected, atol=1e-5)
    # the track's probabilities: the mean of the raw windows, then the temperature; the label is raw's
    track = tempered(softmax(logits).mean(0, keepdims=True), torch_model.temperature)[0]
    np.testing.assert_allclose([p_torch.probabilities[c] for c in torch_model.classes], track, atol=1e-5)
    assert p_torch.label == raw.predict(clip, sr=SR).label == torch_model.classes[int(track.argmax())]
    assert p_torch.novelty == pytest.approx(p_onnx.novelty, rel=1e-4) and p_torch.flags == p_onnx.flags
    assert "novelty" in p_torch.to_dict()
    # an exported ONNX file carries the calibration and the class centres
    onnx_file = export_onnx_file(card_path, calibrated["root"] / "tiny.onnx")
    from_file = load_model(onnx_file).predict(clip, sr=SR)
    np.testing.assert_allclose(from_file.window_probabilities, p_torch.window_probabilities, atol=1e-4)
    assert from_file.novelty == pytest.approx(p_torch.novelty, rel=1e-4)
    # a graph without the embedding output (exported before it existed): no score, no crash
    old = load_model(onnx_file)
    old.runner.__dict__["has_embedding"] = False
    assert old.predict(clip, sr=SR).novelty is None


def test_flags_of_silence_noise_and_tones(calibrated):
    model = load_model(calibrated["card"])
    clips = trust.nonmusic_clips(sr=SR, seconds=4.0, with_speech=False)
    silence = model.predict(clips["silence"], sr=SR)
    assert "not_music" in silence.flags and "silent" in silence.flags
    for name in ("noise-white-0", "tone-440hz", "clicks-10hz"):
        pred = model.predict(clips[name], sr=SR, name=name)
        expected = pred.novelty > model.card["trust"]["not_music_above"]
        assert ("not_music" in pred.flags) == expected
        assert ("unsure" in pred.flags) == (pred.top[0][1] < model.card["trust"]["unsure_below"])
    # the CLI: the flags in the table with their meaning, the score in JSON
    silent_wav = calibrated["root"] / "silent.wav"
    sf.write(silent_wav, clips["silence"], SR)
    r = runner.invoke(app, ["predict", str(silent_wav), "--model", str(calibrated["card"])])
    assert r.exit_code == 0 and "not_music: this does not sound like the music the model was trained on" in r.stdout
    assert "not music? nearest:" in " ".join(r.stdout.split())  # no genre headline for it in the table
    entry = json.loads(runner.invoke(app, ["predict", str(silent_wav), "--model", str(calibrated["card"]),
                                           "-f", "json"]).stdout)[0]
    assert "not_music" in entry["flags"] and entry["novelty"] == pytest.approx(silence.novelty, rel=1e-4)
    # a package without trust data (never calibrated) falls back: silence only, no crash
    raw = load_model(calibrated["plain"])
    assert raw.predict(clips["silence"], sr=SR).flags == ["silent", "not_music"]
    assert raw.predict(clips["noise-white-0"], sr=SR).novelty is None


def test_calibrate_errors_are_one_line(calibrated, tmp_path):
    card = str(calibrated["card"])
    r = runner.invoke(app, ["calibrate", card, "--cv", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "none.json: no such file" in r.output and "Traceback" not in r.output
    (tmp_path / "cv-last.json").write_text("{}")
    r = runner.invoke(app, ["calibrate", card, "--cv", str(tmp_path / "cv-last.json")])
    assert r.exit_code == 2 and "not a cross-validation result" in r.output
    r = runner.invoke(app, ["calibrate", str(calibrated["root"] / "runs"), "--cv", str(tmp_path / "cv-last.json")])
    assert r.exit_code == 2 and "calibrate needs a model package .json" in r.output
    bad = calibrated["root"] / "pkg" / "tiny.trust.npz"
    saved = bad.read_bytes()
    clip = calibrated["root"] / "clips" / "class00" / "class00.00000.wav"
    try:
        bad.write_bytes(saved[:-1] + b"x")
        r = runner.invoke(app, ["predict", str(clip), "--model", card])
        assert r.exit_code == 2 and "tiny.trust.npz: does not match" in r.output
        bad.unlink()  # a package copied without its side file: no "not music" score, no crash
        assert load_model(card).predict(clip).novelty is None
    finally:
        bad.write_bytes(saved)


def test_a_package_calibrated_before_class_centres_keeps_its_score(calibrated, tmp_path):
    """An older package: one centre in its .trust.npz and no trust.novelty in its card. It loads,
    and its score is the windows' mean distance to that centre, the score its threshold was set on."""
    import shutil

    old_dir = tmp_path / "old"
    shutil.copytree(calibrated["card"].parent, old_dir)
    card_path = old_dir / "tiny.json"
    card = json.loads(card_path.read_text())
    with np.load(old_dir / "tiny.trust.npz") as npz:
        centre, music = npz["centres"].mean(axis=0), npz["music_novelty"]
    np.savez(old_dir / "tiny.trust.npz", centre=centre, music_novelty=music)
    del card["trust"]["novelty"]
    card["trust"]["reference"]["sha256"] = hashlib.sha256((old_dir / "tiny.trust.npz").read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    model = load_model(card_path)
    assert model.trust_centres.shape == (1, centre.shape[0])
    clip = synth.synth_clip(2, 3, 4.0, SR, np.random.default_rng(6))
    images, _, _ = model.clip_images(clip)
    _, emb = model.window_outputs(images)
    assert model.predict(clip, sr=SR).novelty == pytest.approx(
        float(np.mean(np.linalg.norm(emb - centre, axis=1))), rel=1e-5)


# -- the shipped default model ----------------------------------------------------------------------

def test_default_model_is_calibrated_and_flags_non_music():
    model = load_model()
    cal, tr = model.card["calibration"], model.card["trust"]
    assert model.temperature == cal["temperature"] != 1.0 and cal["ece_after"] < cal["ece_before"]
    assert tr["evaluation"]["auroc_music_vs_nonmusic"] >= 0.95 and tr["false_flag_rate_dev"] <= 0.1
    assert model.trust_centres.shape == (10, 1706) and model.card["trust"]["novelty"] == trust.NOVELTY_METHOD
    clips = trust.nonmusic_clips(sr=model.preset.sr, seconds=6.0, with_speech=False)
    for name in ("silence", "noise-white-0", "noise-pink-0", "tone-1000hz"):
        pred = model.predict(clips[name], sr=model.preset.sr, name=name)
        assert {"not_music", "unsure"} & set(pred.flags), (name, pred.flags, pred.novelty)
    assert "not_music" in model.predict(clips["silence"], sr=model.preset.sr).flags


@pytest.mark.skipif(not trust.have_espeak(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_default_model_flags_speech():
    model = load_model()
    y = trust.speech(trust.SPEECH[0][1], trust.SPEECH[0][0], sr=model.preset.sr, seconds=12.0)
    pred = model.predict(y, sr=model.preset.sr)
    assert "not_music" in pred.flags, (pred.novelty, pred.flags)
