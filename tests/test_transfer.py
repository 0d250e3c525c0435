"""Transfer to genres: `melgenre embed` stores, a musicnn head trained on them, packaging, names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from melgenre import store, synth
from melgenre.cli import app
from melgenre.config import config_from_dict
from melgenre.errors import ConfigError, MelgenreError
from melgenre.models import build
from melgenre.models.musicnn import embed_images
from melgenre.predict import load_model, save_package, shipped_models
from melgenre.store import MelStore
from melgenre.train import GenreClassifier, fit

SPEC = {"model": "musicnn", "pretrained": "msd", "embedding": "penultimate"}
HEAD = {
    "name": "head", "seed": 0,
    "data": {"batch_size": 16, "fractions": [0.5, 0.25, 0.25]},
    "model": {"name": "musicnn", "pretrained": "msd", "embedding": "penultimate", "freeze": True, "dropout": 0.0},
    "optim": {"name": "adamw", "lr": 1e-2},
    "train": {"max_epochs": 8, "patience": 8},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 synthetic classes x 8 clips of 6.5 s (2 musicnn patches each)."""
    root = tmp_path_factory.mktemp("transfer") / "clips"
    synth.write_corpus(root, n_classes=3, per_class=8, seconds=6.5, seed=5)
    return root


@pytest.fixture(scope="module")
def emb_store(corpus) -> Path:
    out = corpus.parent / "emb.h5"
    store.prepare(corpus, "musicnn", out, workers=1, progress=False, embed=SPEC)
    return out


def test_embed_store_holds_the_taggers_embedding_of_every_patch(corpus, emb_store):
    with MelStore(emb_store) as s:
        assert s.x.shape == (24 * 2, 1, 200)
        assert json.loads(s.attrs["embedding"]) == {**SPEC, "size": 200}
        assert s.preset.name == "musicnn"
        path = corpus / s.tracks()["path"][0]
        rows = s.images(slice(0, 2))[:, 0]
    from melgenre import audio, features

    preset = features.get_preset("musicnn")
    images = features.mel_images(features.fit_to_preset(audio.load(path, sr=16000).samples, preset), preset)
    want = embed_images(images, SPEC)
    np.testing.assert_allclose(rows, want, rtol=2e-3, atol=2e-3)  # stored as float16


def test_embed_resumes_from_the_parts_of_an_interrupted_run(corpus, emb_store, tmp_path):
    out = tmp_path / "resumed.h5"
    job = store.start_prepare(corpus, "musicnn", out, overwrite=False, t0=0.0, embed=SPEC)
    for j in job.todo[:5]:  # an interrupted run left five finished tracks
        store._compute_track(j)
    report = store.prepare(corpus, "musicnn", out, workers=1, progress=False, embed=SPEC)
    assert (report.resumed, report.computed) == (5, 19)
    with MelStore(out) as a, MelStore(emb_store) as b:
        np.testing.assert_array_equal(a.images(slice(None)), b.images(slice(None)))
    again = store.prepare(corpus, "musicnn", out, workers=1, progress=False, embed=SPEC)
    assert again.up_to_date


def test_embed_refuses_a_preset_the_tagger_cannot_read(corpus, tmp_path):
    with pytest.raises(ConfigError, match="needs the musicnn preset"):
        store.prepare(corpus, "fast", tmp_path / "x.h5", workers=1, progress=False, embed=SPEC)
    with pytest.raises(ConfigError, match="embedding must be one of"):
        store.prepare(corpus, "musicnn", tmp_path / "x.h5", workers=1, progress=False,
                      embed={**SPEC, "embedding": "pool5"})


def test_embed_cli(corpus, tmp_path):
    out = tmp_path / "cli.h5"
    result = CliRunner().invoke(app, ["embed", str(corpus), "--embedding", "mean_pool", "--out", str(out),
                                      "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "753 values per patch" in result.output.replace("\n", " ")
    with MelStore(out) as s:
        assert s.x.shape == (48, 1, 753)


def test_head_trained_on_embeddings_predicts_from_audio(corpus, emb_store, tmp_path):
    run = fit(config_from_dict(HEAD), tmp_path, data=emb_store, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["results"]["val"]["track"]["accuracy"] >= 0.8
    card = save_package(run, tmp_path / "pkg" / "head")
    model = load_model(card)
    assert model.preset.name == "musicnn"
    assert json.loads(card.read_text())["training"]["data"]["embedding"]["embedding"] == "penultimate"
    assert "ISC" in json.loads(card.read_text())["pretrained"]["licence"]
    # the package runs the whole tagger on audio: its genre agrees with the head on stored embeddings
    with MelStore(emb_store) as s:
        tracks = s.tracks()
        for i in range(0, 24, 8):
            pred = model.predict(corpus / tracks["path"][i])
            assert pred.label == s.classes[tracks["label"][i]]
            assert len(pred.window_starts) == 2
    # a package can carry its default prediction hop: every other 3-s patch here
    sparse = load_model(save_package(run, tmp_path / "pkg" / "hop6", hop=6.0))
    assert sparse.card["predict_hop"] == 6.0 and sparse.predict(corpus / tracks["path"][0]).window_starts == [0.0]
    assert load_model(tmp_path / "pkg" / "hop6.json", hop=3.0).predict(corpus / tracks["path"][0]).window_starts \
        == [0.0, 3.008]  # 3 s = 187.5 frames, rounded to 188


def test_backbone_lr_scale_makes_two_optimiser_groups():
    cfg = config_from_dict({**HEAD, "model": {**HEAD["model"], "freeze": False},
                            "optim": {"name": "adamw", "lr": 1e-3, "backbone_lr_scale": 0.1}})
    module = GenreClassifier(cfg.model, ["a", "b"], dict(vars(cfg.optim)), max_epochs=1)
    groups = module.param_groups(1e-3, 0.1)
    assert sorted(g["lr"] for g in groups) == pytest.approx([1e-4, 1e-3])
    head = next(g for g in groups if g["lr"] == pytest.approx(1e-3))
    assert sum(p.numel() for p in head["params"]) == sum(p.numel() for p in module.model.head.parameters())
    frozen = GenreClassifier({**cfg.model, "freeze": True}, ["a", "b"], dict(vars(cfg.optim)), max_epochs=1)
    assert len(frozen.param_groups(1e-3, 0.1)) == 1  # only the head trains


@pytest.mark.parametrize("key,value", [("lr", -0.01), ("lr", float("nan")), ("backbone_lr_scale", 0)])
def test_bad_learning_rates_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"optim.{key}: must be a finite number > 0"):
        config_from_dict({**HEAD, "optim": {"name": "adam", key: value}})


def test_shipped_models_by_name():
    assert shipped_models()[0] == "default" and "melcnn" in shipped_models()
    fast = load_model("melcnn")
    assert fast.card["model"]["name"] == "melcnn" and fast.preset.name == "fast"
    default = load_model()
    assert default.card["model"]["name"] == "musicnn" and default.preset.name == "musicnn"
    estimates = default.card["metrics"]["estimates"]
    assert "artist-disjoint" in estimates[0]["protocol"] and "optimistic" in estimates[1]["protocol"]
    assert set(estimates[0]["recall"]) == set(default.classes)


def test_freeze_keeps_pretrained_weights_during_training(emb_store, tmp_path):
    run = fit(config_from_dict({**HEAD, "train": {"max_epochs": 1, "patience": 1}}), tmp_path, data=emb_store,
              progress=False)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    fresh = build("musicnn", pretrained="msd").state_dict()
    assert torch.equal(state["model.dense.weight"], fresh["dense.weight"])
    assert not torch.equal(state["model.head.fc.weight"], build("musicnn").state_dict()["head.fc.weight"])


def test_fusion_of_cross_validations(emb_store, tmp_path):
    """Fusing a CV with itself reproduces its pooled figures; two recipes on the same folds fuse."""
    from melgenre.cv import cross_validate, fuse_cv

    head = config_from_dict({**HEAD, "train": {"max_epochs": 2, "patience": 2}})
    a = cross_validate(head, 3, tmp_path, fixed_epochs=True, final_retrain=False, data=emb_store, progress=False)
    other = config_from_dict({**HEAD, "name": "other", "model": {**HEAD["model"], "embedding": "penultimate"},
                              "optim": {"name": "adamw", "lr": 3e-2}, "train": {"max_epochs": 2, "patience": 2}})
    cross_validate(other, 3, tmp_path, fixed_epochs=True, final_retrain=False, data=emb_store, progress=False)
    same = fuse_cv([tmp_path / "head", tmp_path / "head"], fixed_epochs=True)
    assert same["pooled"]["confusion"] == a["pooled"]["confusion"]
    both = fuse_cv([tmp_path / "head", tmp_path / "other"], fixed_epochs=True, weights=[2, 1])
    assert both["pooled"]["n"] == a["pooled"]["n"] == sum(a["fold_tracks"])
    assert both["recipes"] == ["head", "other"] and both["weights"] == [2, 1]
    with pytest.raises(MelgenreError, match="no cv-groups-last.json"):
        fuse_cv([tmp_path / "head", tmp_path / "other"], groups=True, fixed_epochs=True)
    result = CliRunner().invoke(app, ["fuse", str(tmp_path / "head"), str(tmp_path / "other"), "--fixed-epochs",
                                      "--out", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.json").read_text())["pooled"]["n"] == a["pooled"]["n"]
    ci = both["pooled"]["intervals"]["balanced_accuracy"]
    assert f"balanced accuracy {both['pooled']['balanced_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in result.output
    assert a["final_epochs"] is None and not (tmp_path / "head" / "final-last").exists()  # final_retrain=False
    # a paired comparison of the two recipes on the same out-of-fold tracks
    from melgenre.cv import compare_cv

    compared = compare_cv(tmp_path / "head", tmp_path / "other", fixed_epochs=True)
    assert compared["recipes"] == ["head", "other"] and compared["n"] == a["pooled"]["n"]
    acc = compared["metrics"]["accuracy"]
    assert acc["a"] == pytest.approx(a["pooled"]["accuracy"], abs=1e-6)
    assert acc["b"] == pytest.approx(both["each"][str(tmp_path / "other")]["accuracy"], abs=1e-6)
    assert compare_cv(tmp_path / "head", tmp_path / "head", fixed_epochs=True)["metrics"]["accuracy"]["interval"] == [0, 0]
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "head"), str(tmp_path / "other"), "--fixed-epochs",
                                      "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert f"{acc['difference']:+.3f}" in result.output and "only B:" in result.output
    assert json.loads((tmp_path / "c.json").read_text())["metrics"]["accuracy"]["a"] == pytest.approx(acc["a"])
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "head"), str(tmp_path / "other"), "--groups"])
    assert result.exit_code == 2 and "no cv-groups.json (run melgenre cv with the same protocol first)" in result.output
    # a package's card summarises the recipe's CV (export --estimate)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "head" / "fold0-last"), "--format", "package",
                                      "--out", str(tmp_path / "pkg"), "--estimate", str(tmp_path / "head" / "cv-last.json")])
    assert result.exit_code == 0, result.output
    (estimate,) = json.loads((tmp_path / "pkg.json").read_text())["metrics"]["estimates"]
    assert estimate["protocol"] == "stratified k-fold (same artists on both sides: optimistic)"
    assert estimate["track"]["n"] == a["pooled"]["n"] and estimate["folds"] == 3
    assert estimate["track"]["balanced_accuracy"] == pytest.approx(a["pooled"]["balanced_accuracy"], abs=1e-6)
    assert estimate["intervals"] == a["pooled"]["intervals"]  # the card carries the estimate's uncertainty
    assert set(estimate["recall_intervals"]) == {c["class"] for c in a["pooled"]["per_class"] if c["support"]}


@pytest.mark.slow  # ~15-25 s: trains the whole musicnn; CI runs it (`pytest -m slow`)
def test_finetune_recipe_trains_the_whole_tagger(corpus, tmp_path):
    """configs/musicnn-finetune.yaml on mel patches: the backbone moves, at its smaller learning rate."""
    import yaml

    mel = tmp_path / "mel.h5"
    store.prepare(corpus, "musicnn", mel, workers=1, progress=False)
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "musicnn-finetune.yaml").read_text())
    cfg = config_from_dict(data, overrides=["train.max_epochs=1", "data.batch_size=16"])
    run = fit(cfg, tmp_path, data=mel, progress=False)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    fresh = build("musicnn", pretrained="msd").state_dict()
    assert not torch.equal(state["state_dict"]["model.frontend.0.conv.weight"], fresh["frontend.0.conv.weight"])
    lrs = sorted(g["lr"] for g in state["optimizer_states"][0]["param_groups"])
    assert lrs[0] == pytest.approx(0.1 * lrs[1])  # backbone at a tenth of the head's rate
    assert json.loads((run / "metrics.json").read_text())["results"]["val"]["track"]["n"] >= 1


def test_embed_one_file(corpus, emb_store, tmp_path):
    """embed FILE: every back-to-back patch of the whole file, the same values as the store's rows."""
    with MelStore(emb_store) as s:
        path, rows = corpus / s.tracks()["path"][0], s.images(slice(0, 2))[:, 0]
    out = tmp_path / "one.npz"
    result = CliRunner().invoke(app, ["embed", str(path), "--embedding", "penultimate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["embeddings"].shape == (2, 200) and data["starts"].tolist() == pytest.approx([0.0, 2.992])
    np.testing.assert_allclose(data["embeddings"], rows, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(data["mean"], data["embeddings"].mean(0), rtol=1e-6)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = CliRunner().invoke(app, ["embed", str(bad), "--out", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and "bad.wav" in result.output and not (tmp_path / "bad.npz").exists()


def test_a_failed_start_leaves_nothing_and_a_resume_says_so(emb_store, tmp_path, caplog):
    """Data that does not open: one line, no run directory; a rerun of an unfinished run names its epoch."""
    import logging

    bad = tmp_path / "not.h5"
    bad.write_text("not hdf5")
    cfg = tmp_path / "head.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({**HEAD, "train": {"max_epochs": 1, "patience": 1}}))
    r = CliRunner().invoke(app, ["train", str(cfg), "--data", str(bad), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "not.h5: not an HDF5 file" in r.output and not (tmp_path / "runs").exists()
    short = config_from_dict({**HEAD, "train": {"max_epochs": 1, "patience": 1}})
    run = fit(short, tmp_path / "runs", data=emb_store, progress=False)  # the corrected start works
    (run / "metrics.json").unlink()  # as if killed after its last epoch, before the evaluation
    with caplog.at_level(logging.INFO, logger="melgenre.train"):
        fit(short, tmp_path / "runs", data=emb_store, progress=False)
    assert f"head: resuming from epoch 1 of 1 ({run / 'checkpoints' / 'last.ckpt'})" in caplog.text
    assert (run / "metrics.json").exists()


def test_embed_augment_trains_on_variants_and_scores_originals(corpus, tmp_path):
    out = tmp_path / "aug.h5"
    result = CliRunner().invoke(app, ["embed", str(corpus), "--embedding", "penultimate", "--augment", "fast,dark",
                                      "--out", str(out), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    with MelStore(out) as s:  # 6.5 s -> 2 patches; 6 % faster (6.1 s) -> 2; treble cut -> 2
        assert s.x.shape == (24 * 6, 1, 200) and np.bincount(s.variant).tolist() == [48, 48, 48]
        assert json.loads(s.attrs["augment"]) == ["fast", "dark"]
    run = fit(config_from_dict(HEAD), tmp_path, data=out, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    splits = json.loads((run / "splits.json").read_text())
    assert metrics["results"]["val"]["track"]["n"] == len(splits["val"])
    assert metrics["results"]["val"]["chunk"]["n"] == 2 * len(splits["val"])  # original patches only
    card = json.loads(save_package(run, tmp_path / "pkg" / "aug").read_text())
    assert card["training"]["data"]["augment"] == ["fast", "dark"]
    bad = CliRunner().invoke(app, ["embed", str(corpus), "--augment", "fast,loud", "--out", str(tmp_path / "x.h5")])
    assert bad.exit_code != 0 and "augment: loud" in bad.output and "Traceback" not in bad.output


# -- the zero-shot tag prior ---------------------------------------------------------------------

PRIOR = {"weight": 0.5, "genres": {"class00": ["rock"], "class01": ["jazz", "blues"]}}


def test_prior_map_rows():
    from melgenre.models.musicnn import MSD_TAGS, prior_map

    m = prior_map(PRIOR, ["class00", "class01", "class02"], MSD_TAGS, 3)
    rock, jazz, blues = (MSD_TAGS.index(t) for t in ("rock", "jazz", "blues"))
    assert m.shape == (3, 50) and m[0, rock] == 0.5 and m[1, jazz] == m[1, blues] == 0.25
    assert torch.allclose(m[2], (m[0] + m[1]) / 2)  # a class without tags: the neutral mean
    for bad, match in (({**PRIOR, "weight": 0}, "weight must be a number > 0"),
                       ({**PRIOR, "genres": {"class00": ["polka"]}}, "unknown tag.*'polka' for 'class00'"),
                       ({**PRIOR, "genres": {"other": ["rock"]}}, "no class of class00, class01, class02 has tags"),
                       ({"weight": 1}, "tag_prior must be")):
        with pytest.raises(ConfigError, match=match):
            prior_map(bad, ["class00", "class01", "class02"], MSD_TAGS, 3)
    with pytest.raises(ConfigError, match="needs the class names"):
        build("musicnn", num_classes=3, tag_prior=PRIOR)
    with pytest.raises(ConfigError, match="ends with penultimate"):
        build("musicnn", num_classes=3, tag_prior=PRIOR, classes=["class00", "class01", "class02"], embedding="pool")


def test_tag_prior_adds_the_taggers_genre_logits_in_eval_mode_only():
    classes = ["class00", "class01", "class02"]
    model = build("musicnn", num_classes=3, tag_prior=PRIOR, classes=classes, freeze=True, dropout=0.0).eval()
    x = torch.rand(4, 1, 96, 187) * 3
    with torch.no_grad():
        feats = model.features(x)
        head = model.head(feats["pool+penultimate"])
        tags = feats["tag_logits"]
        rock, jazz, blues = (model.tags.index(t) for t in ("rock", "jazz", "blues"))
        own = torch.stack([tags[:, rock], (tags[:, jazz] + tags[:, blues]) / 2], 1) * 0.5
        want = head + torch.cat([own, own.mean(1, keepdim=True)], 1)
        torch.testing.assert_close(model(x), want)
        cached = feats["pool+penultimate"][:, None, None]  # rows of an embed store give the same
        torch.testing.assert_close(model(cached), want)
        model.train()
        torch.testing.assert_close(model.head.fc(model.head.norm.eval()(feats["pool+penultimate"])), model(cached))
    assert "prior_map" in model.state_dict()  # part of the weights, and so of the model id


def test_tag_prior_recipe_trains_packages_and_exports(emb_store, corpus, tmp_path):
    prior = {**HEAD, "model": {**HEAD["model"], "tag_prior": PRIOR}, "train": {"max_epochs": 2, "patience": 2}}
    plain = {**HEAD, "train": {"max_epochs": 2, "patience": 2}}
    runs = {name: fit(config_from_dict({**cfg, "name": name}), tmp_path, data=emb_store, progress=False)
            for name, cfg in (("prior", prior), ("plain", plain))}
    with_prior = load_model(save_package(runs["prior"], tmp_path / "pkg" / "prior"), backend="torch")
    without = load_model(save_package(runs["plain"], tmp_path / "pkg" / "plain"), backend="torch")
    assert with_prior.card["model"]["tag_prior"] == PRIOR and with_prior.card["model"]["classes"] == with_prior.classes
    assert with_prior.model_id != without.model_id  # the prior (a buffer) is part of the weights
    clip = corpus / "class00" / "class00.00000.wav"
    a, b = with_prior.predict(clip), without.predict(clip)
    assert not np.allclose(a.window_probabilities, b.window_probabilities)
    onnx = load_model(tmp_path / "pkg" / "prior.json", backend="onnx").predict(clip)
    np.testing.assert_allclose(onnx.window_probabilities, a.window_probabilities, atol=1e-4)

    # explain says in words where the genre's margin comes from: the head's part plus the prior's
    from melgenre import audio, features
    from melgenre import explain as ex
    from melgenre.predict import window_images

    y = audio.load(clip, sr=with_prior.preset.sr).samples
    evidence = ex.explain(with_prior, y).evidence
    images = window_images(features.fit_to_preset(y, with_prior.preset), with_prior.preset)[0]
    with torch.no_grad():
        logits = with_prior._module.eval()(torch.from_numpy(images)[:, None]).mean(0)
    genre, runner = (with_prior.classes.index(g) for g in (evidence.genre, evidence.runner_up))
    assert evidence.genre == with_prior.classes[int(logits.argmax())] and runner != genre
    assert evidence.head_margin + evidence.tag_margin == pytest.approx(float(logits[genre] - logits[runner]), abs=1e-4)
    assert {t for t, _ in evidence.genre_tags} == set(PRIOR["genres"].get(evidence.genre, []))  # its own tags
    assert len(evidence.tags) == 5 and [p for _, p in evidence.tags] == sorted((p for _, p in evidence.tags), reverse=True)
    assert "class02 has no tag of its own" in ex.tag_evidence(with_prior, images, "class02").describe()
    assert ex.explain(without, y).evidence is None  # no prior: the saliency map alone
    from melgenre.serve import saliency_png

    png, method, words = saliency_png(y, with_prior, evidence.genre)  # the HTTP API's saliency says it too
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and method == "gradcam" and words == evidence.describe()



def test_own_default_model_from_a_gtzan_tree_end_to_end(tmp_path):
    """The recipe for a default model of one's own (docs/reproduce.md), through the CLI, on synthetic
    clips named as GTZAN tracks of each fault-filtered part: embed with augmentation, artist-disjoint cv
    with a final retrain, export with the estimate, calibrate, predict, score (training clips left out)."""
    from melgenre.data import gtzan_fault_filtered

    genres = ["blues", "classical", "rock"]
    synth.write_corpus(tmp_path / "syn", n_classes=3, per_class=7, seconds=6.5, seed=7)
    tree, unseen = tmp_path / "gtzan", tmp_path / "new"
    parts = gtzan_fault_filtered()
    for k, genre in enumerate(genres):
        clips = sorted((tmp_path / "syn" / f"class{k:02d}").glob("*.wav"))
        names = [n for part in ("train", "val", "test")
                 for n in [m for m in sorted(parts[part]) if m.startswith(genre + ".")][:2]]
        for clip, name in zip(clips[:6], names):
            (tree / genre).mkdir(parents=True, exist_ok=True)
            clip.rename(tree / genre / f"{name}.wav")
        (unseen / genre).mkdir(parents=True)
        clips[6].rename(unseen / genre / f"{genre}.09999.wav")  # not a GTZAN name: never trained on

    def cli(*args):
        r = CliRunner().invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.output

    cli("embed", tree, "--model", "musicnn", "--augment", "fast,slow", "--out", tmp_path / "aug.h5", "--workers", 1,
        "--no-progress")
    out = cli("cv", "configs/musicnn-tagprior.yaml", "--data", tmp_path / "aug.h5", "--groups", "fault_filtered",
              "--fixed-epochs", "--out", tmp_path / "runs", "-O", "train.max_epochs=3", "--no-progress")
    assert "3-fold CV, artist-disjoint (fault-filtered groups)" in out and "final retrain 3 epochs" in out
    recipe = tmp_path / "runs" / "musicnn-tagprior"
    cli("export", recipe / "final-groups-last", "--format", "package", "--out", tmp_path / "pkg" / "mine",
        "--estimate", recipe / "cv-groups-last.json", "--hop", 6)
    card_path = tmp_path / "pkg" / "mine.json"
    cli("calibrate", card_path, "--cv", recipe / "cv-groups-last.json", "--data", tmp_path / "aug.h5",
        "--nonmusic-seconds", 4)

    card = json.loads(card_path.read_text())
    assert card["classes"] == genres and card["predict_hop"] == 6 and card["model"]["tag_prior"]["weight"] == 0.5
    (estimate,) = card["metrics"]["estimates"]
    assert estimate["protocol"].startswith("artist-disjoint") and estimate["track"]["n"] == 18
    assert sorted(card["training"]["data"]["tracks"]) == sorted(f"{p.parent.name}/{p.stem}" for p in tree.rglob("*.wav"))
    assert card["calibration"]["n"] == 18 and card["trust"]["not_music_above"] > 0
    assert (tmp_path / "pkg" / "mine.trust.npz").is_file()

    pred = json.loads(cli("predict", unseen / "rock" / "rock.09999.wav", "--model", card_path, "--format", "json"))
    assert pred[0]["label"] in genres and pred[0]["model_id"] == card["model_id"]

    for genre in genres:  # score a tree that also holds every training clip: those are left out
        for clip in (tree / genre).glob("*.wav"):
            (unseen / genre / clip.name).symlink_to(clip)
    out = cli("score", unseen, "--model", card_path, "--out", tmp_path / "score", "--no-progress")
    assert "18 file(s) named like tracks the model trained on: left out" in out
    scores = json.loads((tmp_path / "score" / "scores.json").read_text())
    assert sorted(Path(f["path"]).name for f in scores["files"]) == [f"{g}.09999.wav" for g in genres]
    assert scores["n"] == 3 and scores["excluded"] == 18
