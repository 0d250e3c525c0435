"""The benchmark suite runs once, in a reduced setting, and writes well-formed results (no timing assertions)."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from melgenre.bench import SECTIONS, BenchSettings, run_bench, training_configs
from melgenre.cli import app


def _figure(fig: dict, unit: str | None = None) -> None:
    assert set(fig) == {"median", "values", "unit"}
    assert fig["values"] and all(isinstance(v, float) and v > 0 and math.isfinite(v) for v in fig["values"])
    assert isinstance(fig["median"], float) and min(fig["values"]) <= fig["median"] <= max(fig["values"])
    if unit:
        assert fig["unit"] == unit


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    settings = BenchSettings.make(quick=True, presets=("v1",), n_files=2, models=("melcnn",), infer_files=2,
                                  infer_repeats=2, memory_sizes=(2, 4), library_files=2, songs=2, song_clips=2,
                                  songs_model="melcnn", note="test")
    lines: list[str] = []
    returned = run_bench(out, settings, log=lines.append, command="pytest")
    assert lines  # one line per figure
    return returned, out


@pytest.mark.slow  # the suite once, every section (~1.5-2.5 min on 2 cores); CI runs it (`pytest -m slow`)
def test_results_json_is_well_formed(results):
    returned, out = results
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(returned))
    assert data["format"] == "melgenre-bench/1" and data["quick"] is True and data["command"] == "pytest"
    assert data["note"] == "test" and set(data["section_seconds"]) == set(SECTIONS) - {"install"}  # quick: install only when named

    m = data["machine"]
    assert isinstance(m["cores"], int) and m["cores"] >= 1 and m["usable_cores"] >= 1
    assert isinstance(m["cpu_model"], str) and m["cpu_model"] and m["int8_cpu"].startswith(m["cpu_model"] + " (")
    assert m["versions"]["torch"] and m["versions"]["melgenre"] and isinstance(m["gpus"], list)
    assert isinstance(m["cuda"], bool) and len(m["loadavg"]) == 3 and len(m["loadavg_end"]) == 3

    (pre,) = data["preprocessing"]
    assert pre["preset"] == "v1" and pre["n_files"] == 2 and pre["workers"] >= 1
    for key in ("naive", "prepare", "prepare_1_worker"):
        _figure(pre[key], "tracks/s")
    assert pre["speedup"] > 0 and isinstance(pre["meets_target"], bool)
    assert pre["prepare_small"]["n_files"] == 1 and pre["prepare_small"]["median"] > 0
    steady = pre["prepare_steady_tracks_per_s"]  # None when the two runs were too close to tell apart
    assert steady is None or (steady > 0 and pre["speedup_steady"] > 0 and pre["prepare_startup_s"] >= 0)

    feats = data["features"]
    assert {(r["preset"], r["path"], r["device"]) for r in feats} >= {
        ("v1", "librosa", "cpu"), ("v1", "numpy", "cpu"), ("v1", "torch", "cpu"), ("fast", "numpy", "cpu"),
        ("fast", "torch", "cpu")}
    assert ("fast", "librosa", "cpu") not in {(r["preset"], r["path"], r["device"]) for r in feats}
    for r in feats:
        _figure(r["ms_per_track"], "ms")
        # the same images (features.TORCH_TOLERANCE and the librosa equality are tested elsewhere)
        assert r["max_abs_diff_vs_numpy"] < 1e-3

    (tr,) = data["training"]
    assert tr["model"] == "melcnn" and tr["input"] == [1, 128, 130] and tr["batch"] == 8 and tr["params"] > 0
    _figure(tr["samples_per_s"], "samples/s")
    _figure(tr["step_s"], "s")
    assert tr["peak_rss_mb"] > 0 and tr["steps"] >= 1

    inf = data["inference"]
    default, fast = inf["models"]  # every shipped model, the default first
    assert (default["model"], default["target_ms"], fast["model"], fast["target_ms"]) == ("musicnn", 150, "melcnn", 50)
    # each at its own hop (the default's card: 6 s; the fast preset's: 1.5 s), then back-to-back 3-s windows
    assert [(b["backend"], b["hop_s"]) for b in default["backends"]] == [("torch", 6.0), ("onnx", 6.0),
                                                                         ("torch", 3.0), ("onnx", 3.0)]
    assert [(b["backend"], b["hop_s"]) for b in fast["backends"]] == [("torch", 1.5), ("onnx", 1.5), ("torch", 3.0),
                                                                      ("onnx", 3.0), ("onnx int8", 1.5),
                                                                      ("onnx int8", 3.0)]  # its shipped int8 file
    assert fast["backends"][4]["model_id"] == fast["backends"][1]["model_id"] + "-int8"
    for entry in inf["models"]:
        rows = entry["backends"]
        assert rows[2]["windows_per_file"] > rows[0]["windows_per_file"] if entry is default \
            else rows[2]["windows_per_file"] < rows[0]["windows_per_file"]
        assert rows[0]["model_id"] == rows[1]["model_id"]
        for b in rows:
            _figure(b["latency_ms"], "ms")
            _figure(b["batch_files_per_s"], "files/s")
            assert set(b["stages_ms"]) == {"decode", "mel", "model"}
            for fig in b["stages_ms"].values():
                _figure(fig, "ms")
            assert b["windows_per_file"] >= 1 and isinstance(b["meets_target"], bool)

    mem = data["memory"]
    assert [r["n_tracks"] for r in mem] == [2, 4]
    for r in mem:
        assert r["peak_rss_mb_main"] > 0 and r["peak_rss_mb_total"] >= r["peak_rss_mb_main"]
        assert r["children"] >= 1 and r["peak_rss_mb_largest_child"] > 0 and r["growth_vs_smallest"] > 0

    trust = data["trust"]  # the shipped default model against generated non-music (6-s clips when quick)
    assert trust["seconds"] == 6.0 and trust["n_music"] > 100 and trust["n_nonmusic"] >= 14
    assert 0.9 <= trust["auroc_music_vs_nonmusic"] <= 1 and 0 < trust["false_flag_rate_dev"] < 0.1
    assert trust["nonmusic_flagged"] == trust["n_nonmusic"] and "silent" in trust["nonmusic"]["silence"]["flags"]

    lib = data["library"]
    from melgenre.library import default_workers

    assert lib["n_files"] == 2 and lib["workers"] == default_workers()  # 0 on 2 cores: decoding in-process
    assert [e["model"] for e in lib["models"]] == ["musicnn", "melcnn"]  # every shipped model, the default first
    for e in lib["models"]:
        assert e["per_file"]["torch"] > 0 and e["per_file"]["onnx"] > 0 and e["library"] > 0
        assert e["backend"] == "onnx" and isinstance(e["meets_target"], bool)
        assert e["speedup_vs_torch"] == pytest.approx(e["library"] / e["per_file"]["torch"], abs=0.01)
    assert lib["models"][1]["target"] == {"speedup": 2.0, "files_per_s": 25.0}
    assert lib["models"][1]["int8_model_id"] == "melcnn-3bd30150b86c-int8" and lib["models"][1]["library_int8"] > 0
    assert "library_int8" not in lib["models"][0]  # no int8 file of the default is shipped

    songs = data["songs"]  # two 60-s MP3 songs of two synthetic 30-s clips each, melcnn: 18 of 38 windows
    assert songs["n_songs"] == 2 and songs["clips_per_song"] == 2 and songs["windows"] == 18
    assert songs["model_id"].startswith("melcnn-") and songs["mb_per_song"] > 0.5  # 192 kbps stereo
    for job in ("every_window", "sampled", "sampled_quarter"):
        assert songs[job]["songs_per_s"] > 0 and songs[job]["peak_rss_mb"] > 100 and songs[job]["failed"] == 0
    assert songs["sampled"]["predicted"] == 2 and songs["sampled_quarter"]["predicted"] == 1
    assert songs["speedup"] == pytest.approx(songs["sampled"]["songs_per_s"] / songs["every_window"]["songs_per_s"],
                                             abs=0.01)
    assert songs["label_agreement"] in (0.0, 0.5, 1.0) and isinstance(songs["meets_target"], bool)
    labels = songs["labels"]  # against the songs' genres (synthetic classes: melcnn never names them)
    assert labels["songs"] == 2 and labels["every_window"]["accuracy"] == labels["sampled"]["accuracy"] == 0.0
    assert labels["difference"] == 0.0 and labels["interval"] == [0.0, 0.0]
    assert labels["sampled"]["windows_per_song"] >= 18 and labels["every_window"]["windows_per_song"] > 30
    assert songs["target"] == {"speedup": 5.0, "accuracy_difference": 0.0, "peak_rss_mb": 1024}
    assert "unseen" not in songs  # no --songs-cv
    agree = songs["window_agreement"]
    assert agree["songs"] == 2 and agree["windows_per_song"] > 30 and list(agree["agreement"]) == ["1", "3", "5", "10",
                                                                                                    "15", "20"]


@pytest.mark.slow  # the suite once, every section (~1.5-2.5 min on 2 cores); CI runs it (`pytest -m slow`)
def test_results_markdown(results):
    _, out = results
    text = (out / "results.md").read_text()
    assert text.startswith("# melgenre benchmarks (quick)")
    for heading in ("## 1. Preprocessing", "## 2. Mel images", "## 3. Training", "## 4. Inference", "## 5. Memory",
                    "## 6. Not music", "## 7. Library job", "## 8. Whole songs"):
        assert heading in text
    assert "| melcnn |" in text and "cores" in text


def test_training_configs_sizes():
    full = training_configs(BenchSettings.make(models=("melcnn", "vanilla_cnn", "yolov8_cls")))
    assert ("melcnn", {}, (1, 128, 130)) in full
    assert ("vanilla_cnn", {"input_size": 640}, (1, 640, 640)) in full and ("yolov8_cls", {}, (1, 640, 640)) in full
    quick = training_configs(BenchSettings.make(quick=True, models=("vanilla_cnn", "yolov8_cls")))
    assert quick == [("vanilla_cnn", {"input_size": 416}, (1, 416, 416)), ("yolov8_cls", {}, (1, 416, 416)),
                     ("yolov8_cls", {}, (1, 640, 640))]  # the big model skips 640² in quick mode


def test_cli_rejects_bad_options(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path), "--sections", "warp"])
    assert r.exit_code == 2 and "--sections" in r.output
    with pytest.raises(ValueError, match="unknown section"):
        BenchSettings.make(sections=("warp",))
    assert not (tmp_path / "results.json").exists()


def test_quick_leaves_the_install_section_out_unless_named():
    assert "install" in SECTIONS and "install" in BenchSettings.make().sections
    assert "install" not in BenchSettings.make(quick=True).sections
    assert BenchSettings.make(quick=True, sections=("install",)).sections == ("install",)


def test_site_packages_sizes_groups_libs_and_skips_metadata(tmp_path):
    from melgenre.bench.install import site_packages_sizes, source_root

    for name, size in (("numpy/core.so", 3_000_000), ("numpy.libs/blas.so", 2_000_000), ("tiny/x.py", 1_000),
                       ("numpy-2.0.dist-info/RECORD", 500_000), ("six.py", 100_000)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\0" * size)
    total, biggest = site_packages_sizes(tmp_path, top=2)
    assert total == pytest.approx(5.601, abs=1e-3)  # every file counts in the total ...
    assert biggest == {"numpy": 5.0, "six.py": 0.1}  # ... the largest entries, numpy with its .libs, no dist-info
    root = source_root()
    assert root is not None and (root / "pyproject.toml").is_file()  # the tests run from the checkout


@pytest.mark.slow  # builds the wheel and installs it into a fresh venv from the package index (~1-2 min)
def test_install_section(tmp_path):
    from melgenre import synth
    from melgenre.bench.install import bench_install

    clip = tmp_path / "clip.wav"
    import numpy as np
    import soundfile as sf

    sf.write(clip, synth.synth_clip(0, 3, 30.0, 22_050, np.random.default_rng(0)), 22_050)
    lines: list[str] = []
    r = bench_install(BenchSettings.make(quick=True, sections=("install",)), clip, tmp_path, lines.append)
    assert r["torch_absent"] and 50 < r["site_packages_mb"] < 400 and r["install_s"] > 0
    assert len(r["cold_predict_s"]) == 5 and all(t > 0 for t in r["cold_predict_s"])
    assert r["import_melgenre_s"] > 0 and r["import_beets_plugin_s"] > 0 and len(lines) == 3


@pytest.mark.slow  # ~1 min on 2 cores: two library jobs in their own processes
def test_songs_of_unseen_clips(tiny_card, tmp_path):
    """Songs of one artist-disjoint part's clips, scored by the fold model that held the part out (here the
    tiny model standing in for each fold), every window against the default sample, against the labels."""
    from melgenre import synth
    from melgenre.bench.songs import bench_unseen_songs, fold_packages, part_clips, plan_part_songs

    rng = __import__("numpy").random.default_rng(0)
    clips: dict[str, list[Path]] = {}
    import soundfile as sf

    # GTZAN names put the clips in the fault-filtered parts: blues 0-3 in "val", classical 30-31 in "train"
    for folder, stems, k in (("class00", [f"blues.{i:05d}" for i in range(4)], 0),
                             ("class01", ["classical.00030", "classical.00031"], 1), ("class02", ["country.00008"], 2)):
        (tmp_path / "clips" / folder).mkdir(parents=True)
        for stem in stems:
            path = tmp_path / "clips" / folder / f"{stem}.wav"
            sf.write(path, synth.synth_clip(k, 3, seconds=6.0, sr=22_050, rng=rng), 22_050)
            clips.setdefault(folder, []).append(path)
    parts = part_clips(clips)
    assert list(parts) == ["train", "val", "test"]
    assert parts["val"] == {"class00": clips["class00"]} and parts["train"] == {"class01": clips["class01"]}
    assert parts["test"] == {}  # country.00008 is in no part (left out of the split): like melgenre cv, never scored
    plan = plan_part_songs(parts["val"], clips_per_song=2)  # each clip in two songs
    assert [c for _, c in plan] == [clips["class00"][:2], clips["class00"][2:], clips["class00"][:2],
                                    clips["class00"][2:]]
    assert plan_part_songs(parts["train"], clips_per_song=2) == []  # fewer than 3 clips: no songs
    run = tiny_card.parent / "runs" / "tiny-serve"
    cv = tmp_path / "cv"
    for k in range(3):
        (cv / f"group{k}-last").parent.mkdir(exist_ok=True)
        (cv / f"group{k}-last").symlink_to(run, target_is_directory=True)
    packages = fold_packages(cv, tmp_path / "folds", str(tiny_card))
    assert list(packages) == ["train", "val", "test"] and all(p.is_file() for p in packages.values())
    settings = BenchSettings.make(songs_cv=cv, songs_model=str(tiny_card), song_clips=2, songs_dir=tmp_path / "songs")
    lines: list[str] = []
    r = bench_unseen_songs(settings, clips, tmp_path, lines.append)
    assert r["n_songs"] == 4 and list(r["parts"]) == ["val"] and r["parts"]["val"]["songs"] == 4
    assert r["every_window"]["predicted"] == r["sampled"]["predicted"] == 4 and r["speedup"] > 0
    lab = r["labels"]
    assert lab["songs"] == 4 and 0 <= lab["sampled"]["accuracy"] <= 1 and 0 <= lab["every_window"]["accuracy"] <= 1
    assert lab["difference"] == pytest.approx(lab["sampled"]["accuracy"] - lab["every_window"]["accuracy"])
    assert lab["interval"][0] <= lab["difference"] <= lab["interval"][1]
    assert lines and "songs of unseen clips" in lines[-1]
