"""melgenre learn: your own genres from genre tags or <genre>/<file> folders, estimated by artist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
import yaml
from mutagen.id3 import ID3, TCON, TPE1
from typer.testing import CliRunner

from conftest import shared_path
from melgenre import learn as learn_module
from melgenre import synth, tagging
from melgenre.cli import app
from melgenre.errors import ConfigError, DatasetError
from melgenre.learn import Labelled, genre_key, learn, model_genre, prior_genres, read_mapping, taxonomy
from melgenre.predict import load_model

runner = CliRunner()
FORMATS = {".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III")}
FAST = {"augment": (), "folds": 3, "epochs": 10, "workers": 1, "progress": False}
FAST_CLI = ["--augment", "none", "--folds", "3", "--epochs", "10", "--workers", "1", "--no-progress"]


def write_tagged(path: Path, y: np.ndarray, sr: int, genre: str | None = None, artist: str | None = None) -> Path:
    """``y`` as FLAC, Ogg Vorbis or MP3 (by ``path``'s suffix) with mutagen genre and artist tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = FORMATS[path.suffix]
    sf.write(path, y, sr, format=fmt, subtype=subtype)
    if path.suffix == ".mp3":
        tags = ID3()
        tags.add(TCON(encoding=3, text=[genre])) if genre else None
        tags.add(TPE1(encoding=3, text=[artist])) if artist else None
        tags.save(path)
    else:
        f = mutagen.File(path)
        f.update({k: v for k, v in (("genre", genre), ("artist", artist)) if v})
        f.save()
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A hand-tagged library: Rock, Hip-Hop (also spelled "hip hop") and Jazz, 6 tracks each by 3
    artists; Folk with 2 tracks; 3 untagged tracks; one file that is not audio."""
    root = tmp_path_factory.mktemp("learn") / "music"
    rng, sr, n = np.random.default_rng(0), 22_050, 0
    spellings = {0: ["Rock"], 1: ["Hip-Hop", "hip hop"], 2: ["Jazz"], 3: ["Folk"]}
    for label, names in spellings.items():
        for i in range(2 if label == 3 else 6):
            artist = f"Artist {label}{i // 2}"
            write_tagged(root / artist / f"{i:02d} song{list(FORMATS)[n % 3]}", synth.synth_clip(label, 4, 6.5, sr, rng),
                         sr, names[i % len(names)], artist)
            n += 1
    for i in range(3):
        write_tagged(root / "new" / f"new{i}.flac", synth.synth_clip(i, 4, 6.5, sr, rng), sr)
    (root / "broken.mp3").write_bytes(b"not audio at all " * 20)
    return root


@pytest.fixture(scope="module")
def learnt(library):
    """The library learnt from its tags once (the Python API), with the knobs that make it fast."""
    return learn(library, library.parent / "mine.json", tag_prior=False, **FAST)


def test_genre_spellings_merge_and_map():
    assert {genre_key(s) for s in ("Hip-Hop", "hip hop", "HipHop", "HIP_HOP")} == {"hiphop"}
    assert genre_key("Drum & Bass") == genre_key("drum and bass") == genre_key("Drum'n'Bass") == "drumnbass"
    assert genre_key("R&B") == genre_key("rnb") and genre_key("Band") == "band"
    assert model_genre("ROCK", ["Jazz", "Rock"]) == "Rock" and model_genre("hip hop", ["Hip-Hop"]) == "Hip-Hop"
    assert model_genre("Polka", ["Jazz", "Rock"]) is None and model_genre("rock", ["Rock", "ROCK"]) is None
    assert model_genre("ROCK", ["Rock", "ROCK"]) == "ROCK"  # its own spelling first
    files = [Labelled(Path(f"{i}.mp3"), g) for i, g in enumerate(["Hip-Hop", "hip hop", "Hip-Hop", "Rap", "Rock",
                                                                   "rock", "Rock", "Folk", "Noise", None])]
    tax = taxonomy(files, {"rap": "Hip-Hop", "noise": ""}, min_per_genre=3)
    assert tax.classes == ["Hip-Hop", "Rock"] and tax.counts == {"Hip-Hop": 4, "Rock": 3}
    assert tax.merged == {"Hip-Hop": ["Hip-Hop", "Rap", "hip hop"], "Rock": ["Rock", "rock"]}
    assert tax.too_small == {"Folk": 1} and tax.mapped_out == 1 and len(tax.label_of) == 7
    with pytest.raises(DatasetError, match=r"^1 genre with at least 5 tracks \(Hip-Hop 7, Folk 1, Noise 1\): need two or more"):
        taxonomy(files, {"rap": "Hip-Hop", "rock": "Hip-Hop"}, min_per_genre=5)


def test_mapping_files(tmp_path):
    (tmp_path / "m.csv").write_text("from,to\nRap,Hip-Hop\nhip hop,Hip-Hop\nSpoken Word,\n")
    assert read_mapping(tmp_path / "m.csv") == {"rap": "Hip-Hop", "hiphop": "Hip-Hop", "spokenword": ""}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"Electronica": "Electronic", "Podcast": None}))
    assert read_mapping(tmp_path / "m.yaml") == {"electronica": "Electronic", "podcast": ""}
    (tmp_path / "bad.csv").write_text("Rap,Hip-Hop\nRock\n")
    with pytest.raises(ConfigError, match=r"bad.csv, line 2: expected two columns from,to$"):
        read_mapping(tmp_path / "bad.csv")
    (tmp_path / "two.csv").write_text("Rap,Hip-Hop\nrap,Urban\n")
    with pytest.raises(ConfigError, match="line 2: 'rap' maps to both 'Hip-Hop' and 'Urban'"):
        read_mapping(tmp_path / "two.csv")


def test_prior_genres_are_the_musicnn_tags_named_like_a_genre():
    assert prior_genres(["Hip Hop", "R&B", "electronic", "Classical", "Heavy-Metal"]) == {
        "Hip Hop": ["Hip-Hop"], "R&B": ["rnb"], "electronic": ["electronic"], "Heavy-Metal": ["heavy metal"]}
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / "musicnn-tagprior.yaml").read_text())
    gtzan = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
    assert prior_genres(gtzan) == shipped["model"]["tag_prior"]["genres"]  # the default model's, from names alone


def test_recipe_is_the_default_models():
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / "musicnn-tagprior.yaml").read_text())
    del shipped["model"]["tag_prior"]
    assert {k: shipped[k] for k in ("seed", "model", "optim", "train")} == {
        k: learn_module.RECIPE[k] for k in ("seed", "model", "optim", "train")}
    assert learn_module.RECIPE["data"].items() <= shipped["data"].items()
    assert shipped["model"]["embedding"] == learn_module.EMBEDDING["embedding"]


def test_tag_names_keep_a_learnt_spelling():
    assert tagging.genre_name("hiphop") == "Hip-Hop" and tagging.genre_name("rock") == "Rock"
    assert tagging.genre_name("IDM") == "IDM" and tagging.genre_name("Drum and Bass") == "Drum and Bass"


def test_learn_from_tags_makes_a_package_of_the_merged_genres(learnt, library):
    model = load_model(learnt.package)
    assert model.classes == learnt.classes == ["Hip-Hop", "Jazz", "Rock"]
    assert learnt.counts == {"Hip-Hop": 6, "Jazz": 6, "Rock": 6} and learnt.too_small == {"Folk": 2}
    assert learnt.merged == {"Hip-Hop": ["Hip-Hop", "hip hop"]} and learnt.untagged == 3
    assert [p for p, _ in learnt.unreadable] == ["broken.mp3"] and learnt.few_tracks == learnt.classes
    card = model.card
    (estimate,) = card["metrics"]["estimates"]
    assert estimate["protocol"] == learnt.protocol == "artist-disjoint (artist tags: 9 artists in 3 folds)"
    assert set(estimate["recall"]) == set(estimate["recall_intervals"]) == set(learnt.classes)
    assert estimate["group_intervals"]["groups"] == 9 and estimate["track"]["n"] == 18
    assert card["learn"]["too_small"] == {"Folk": 2} and card["learn"]["few_tracks"] == learnt.classes
    assert card["learn"]["tag_prior"] == {} and card["model"]["tag_prior"] is None
    assert sorted(Path(t).name for t in card["training"]["data"]["tracks"]) == sorted(
        f"{i:02d} song" for _ in range(3) for i in range(6))
    # 18 out-of-fold tracks are too few to calibrate on: said, and the package has no thresholds
    assert learnt.calibration is None and "only 18 out-of-fold tracks" in learnt.not_calibrated
    assert "trust" not in card and learnt.embedded == 18
    saved = json.loads((learnt.work / "learn.json").read_text())
    assert saved["protocol"] == learnt.protocol and saved["groups"] == learnt.groups


def test_folds_hold_out_whole_artists(learnt):
    assert len(learnt.folds) == 3 and len(set(learnt.groups.values())) == 9
    scored = [t for fold in learnt.folds for t in fold["scored"]]
    assert sorted(scored) == sorted(learnt.groups)  # every track is scored once
    for fold in learnt.folds:  # the runs' own splits.json: no artist on both sides
        assert not {learnt.groups[t] for t in fold["train"]} & {learnt.groups[t] for t in fold["scored"]}
        assert {t.split("/")[0] for t in fold["scored"]} == {learnt.groups[t] for t in fold["scored"]}


def test_learnt_model_fills_the_gaps_of_the_library(learnt, library, tmp_path):
    music = tmp_path / "music"
    shutil.copytree(library, music)
    before = {p: tagging.genres_and_artist(p)[0] for p in music.rglob("*.*") if p.name != "broken.mp3"}
    db = tmp_path / "r.sqlite"
    result = runner.invoke(app, ["predict", str(music), "--out", str(db), "--model", str(learnt.package), "--no-progress"])
    assert result.exit_code == 1 and "broken.mp3" in result.output  # the file that is not audio fails; the others go on
    result = runner.invoke(app, ["tag", str(music), "--from", str(db), "--write", "--log", str(tmp_path / "t.jsonl")])
    assert result.exit_code == 0, result.output
    for path, genres in before.items():
        now = tagging.genres_and_artist(path)[0]
        if genres:
            assert now == genres, path  # a genre by hand is kept, even "hip hop" and Folk
        else:
            assert now == [["Rock", "Hip-Hop", "Jazz"][int(path.stem[-1])]], path  # new<label>.flac


def test_score_a_learnt_model_on_class_folders_spelt_otherwise(learnt, tmp_path):
    """The round trip: genres learnt from tags (Hip-Hop, Jazz, Rock) are the class folders ROCK/, hip hop/
    and jazz/ of a test set: letter case and the spellings learn merges do not count."""
    rng, sr = np.random.default_rng(3), 22_050
    for label, folder in enumerate(("ROCK", "hip hop", "jazz")):  # the library fixture's labels 0, 1, 2
        (tmp_path / "test" / folder).mkdir(parents=True)
        for i in range(2):
            sf.write(tmp_path / "test" / folder / f"t{i}.flac", synth.synth_clip(label, 4, 6.5, sr, rng), sr)
    out = tmp_path / "score"
    r = runner.invoke(app, ["score", str(tmp_path / "test"), "--model", str(learnt.package), "--out", str(out),
                            "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "scores.json").read_text())
    assert result["n"] == 6 and {(Path(f["path"]).parent.name, f["genre"]) for f in result["files"]} == {
        ("ROCK", "Rock"), ("hip hop", "Hip-Hop"), ("jazz", "Jazz")}
    assert [c["class"] for c in result["track"]["per_class"]] == learnt.classes


def test_learn_cli_rerun_reuses_the_embeddings_and_calibrates(learnt, library, tmp_path, monkeypatch):
    from melgenre import trust

    clips = trust.nonmusic_clips
    monkeypatch.setattr(trust, "nonmusic_clips", lambda **kw: clips(**{**kw, "seconds": 3.0, "with_speech": False}))
    monkeypatch.setattr(learn_module, "MIN_CALIBRATION", 10)
    (tmp_path / "map.csv").write_text("from,to\nJazz,\nRock,Rock & Roll\n")
    out = tmp_path / "cli.json"
    result = runner.invoke(app, ["learn", str(library), "--out", str(out), "--work", str(learnt.work), "--map",
                                 str(tmp_path / "map.csv"), *FAST_CLI])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "2 genres from tags, 12 tracks: Hip-Hop 6, Rock & Roll 6" in text
    assert "merged spellings: Hip-Hop <- Hip-Hop, hip hop" in text and "left out, fewer than 5 tracks: Folk 2" in text
    assert "3 without a genre tag, 1 with unreadable tags, 0 undecodable, 6 mapped out" in text
    assert "skipped broken.mp3: unreadable tags" in text
    assert "estimate, artist-disjoint (artist tags: 6 artists in 3 folds)" in text and "recall per genre" in text
    assert "zero-shot prior from musicnn's tags: Hip-Hop = Hip-Hop" in text  # on by default: a genre matches
    assert "calibrated: temperature" in text and "0 files embedded now" in text
    card = json.loads(out.read_text())
    assert card["classes"] == ["Hip-Hop", "Rock & Roll"] and card["calibration"]["n"] == 12
    assert card["model"]["tag_prior"] == {"weight": 0.5, "genres": {"Hip-Hop": ["Hip-Hop"]}}
    again = runner.invoke(app, ["learn", str(library), "--out", str(out), "--work", str(learnt.work), "--map",
                                str(tmp_path / "map.csv"), *FAST_CLI])
    assert again.exit_code == 0 and json.loads(out.read_text()) == card  # same inputs: the same package, kept


def test_learn_from_genre_folders_says_when_the_estimate_is_optimistic(tmp_path):
    synth.write_corpus(tmp_path / "clips", n_classes=3, per_class=5, seconds=3.5, seed=2)
    for old, new in zip(sorted((tmp_path / "clips").iterdir()), ("blues", "jazz", "rock")):
        old.rename(old.with_name(new))
    report = learn(tmp_path / "clips", tmp_path / "folders", **FAST)
    assert report.genres_from == "folders" and report.classes == ["blues", "jazz", "rock"]
    assert report.protocol == "same artists on both sides (optimistic): no artist tags"
    card = load_model(tmp_path / "folders.json").card
    assert card["metrics"]["estimates"][0]["protocol"] == report.protocol
    assert "group_intervals" not in card["metrics"]["estimates"][0]
    assert card["model"]["tag_prior"]["genres"] == {"blues": ["blues"], "jazz": ["jazz"], "rock": ["rock"]}
    assert card["training"]["data"]["tracks"][0] == "blues/class00.00000"  # as `melgenre score` names them


@pytest.mark.parametrize("case,message", [
    ("empty", "no audio files"),
    ("untagged", "no file has a genre tag and there are no <genre>/<file> folders"),
    ("one genre", "1 genre with at least 7 tracks (Hip-Hop 12, Rock 6, Folk 2): need two or more"),
    ("bad map", "map.csv, line 2: expected two columns from,to"),
    ("no prior", "tag prior: no genre of Beats, Loud, Quiet, Smooth is named like a musicnn tag"),
])
def test_bad_inputs_get_one_line(case, message, library, tmp_path):
    source, extra = library, []
    if case in ("empty", "untagged"):
        source = tmp_path / "music"
        source.mkdir()
        if case == "untagged":
            sf.write(source / "a.wav", np.zeros(22_050, dtype=np.float32), 22_050)
    elif case == "one genre":
        (tmp_path / "map.csv").write_text("Jazz,Hip-Hop\n")
        extra = ["--map", str(tmp_path / "map.csv"), "--min-per-genre", "7"]
    elif case == "bad map":
        (tmp_path / "map.csv").write_text("from,to\nJazz\n")
        extra = ["--map", str(tmp_path / "map.csv")]
    else:
        (tmp_path / "map.csv").write_text("Jazz,Smooth\nRock,Loud\nHip-Hop,Beats\nFolk,Quiet\n")
        extra = ["--map", str(tmp_path / "map.csv"), "--tag-prior", "--min-per-genre", "1"]
    result = runner.invoke(app, ["learn", str(source), "--out", str(tmp_path / "x.json"), *extra, *FAST_CLI])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in " ".join(result.output.split())
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_learn_on_real_clips_reencoded_with_tags(tmp_path):
    """Dev clips of four genres as FLAC, Ogg and MP3 with genre and artist tags (artists: blocks of five
    consecutive clips, as GTZAN is ordered by artist): learn, then fill in the genre of untagged copies."""
    dev = shared_path("gtzan-dev")
    music, rng = tmp_path / "music", np.random.default_rng(0)
    for genre in ("blues", "classical", "jazz", "rock"):
        for i in range(15):
            y, sr = sf.read(dev / genre / f"{genre}.{i:05d}.flac", dtype="float32")
            tagged = i < 12
            write_tagged(music / (genre if tagged else "new") / f"{genre}{i:02d}{list(FORMATS)[rng.integers(3)]}", y, sr,
                         genre.title() if tagged else None, f"{genre} artist {i // 5}" if tagged else None)
    report = learn(music, tmp_path / "gtzan4", augment=(), workers=2, progress=False)
    assert report.classes == ["Blues", "Classical", "Jazz", "Rock"] and report.counts["Rock"] == 12
    assert report.protocol == "artist-disjoint (artist tags: 12 artists in 5 folds)"
    assert report.pooled["accuracy"] >= 0.7 and report.tag_prior == {"Blues": ["blues"], "Jazz": ["jazz"], "Rock": ["rock"]}
    db = tmp_path / "r.sqlite"
    assert runner.invoke(app, ["predict", str(music), "--out", str(db), "--model", str(report.package),
                               "--no-progress"]).exit_code == 0
    assert runner.invoke(app, ["tag", str(music), "--from", str(db), "--write", "--log", str(tmp_path / "t.jsonl"),
                               "--min-confidence", "0"]).exit_code == 0
    new = {p.stem: tagging.genres_and_artist(p)[0] for p in (music / "new").iterdir()}
    right = sum(genres == [stem[:-2].title()] for stem, genres in new.items())
    assert right >= 9, new  # of 12 untagged clips (some may be flagged unsure and stay untagged)
