"""Scale-out: 2-process DDP training on CPU, and Ray prepare/predict equal to the local paths."""

import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from melgenre import features, store, synth
from melgenre.bench import build_untrained_package
from melgenre.cli import app
from melgenre.datasets import discover

RAY_MISSING = importlib.util.find_spec("ray") is None
needs_ray = pytest.mark.skipif(RAY_MISSING, reason="ray is not installed (pip install 'melgenre[ray]')")
runner = CliRunner()

TINY = {
    "name": "ddp", "seed": 0,
    "data": {"batch_size": 8, "fractions": [0.5, 0.25, 0.25]},
    "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 3e-3},
    "train": {"max_epochs": 3, "patience": 3},
}


# -- DDP -----------------------------------------------------------------------------------------

@pytest.mark.slow  # ~30 s: two processes each start torch and Lightning; CI runs it (`pytest -m slow`)
def test_ddp_two_processes_cpu(tmp_path):
    # 4 classes × 8 clips of 6 s (2 chunks each, preset fast): 32 training rows = 2 batches of 8 per rank.
    synth.write_corpus(tmp_path / "clips", n_classes=4, per_class=8, seconds=6.0, seed=1)
    data = tmp_path / "syn-fast.h5"
    store.prepare(tmp_path / "clips", "fast", data, workers=1, progress=False)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(TINY))
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "melgenre", "train", str(config), "--data", str(data), "--out", str(runs),
         "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # both ranks started and finished (a failing rank makes the launcher exit non-zero)
    assert "GLOBAL_RANK: 0" in log and "GLOBAL_RANK: 1" in log
    run = runs / "ddp"
    with open(run / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]  # one row per epoch, written by rank 0 only
    assert log.count("epoch 2: train loss") == 1  # the epoch line is logged once, not once per rank
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("runs/ddp/metrics.json")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["results"]["test"]["track"]["n"] == 8
    assert log.count("best epoch") == 1  # the summary is printed by rank 0 only
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and len(last["melgenre_history"]) == 3  # the resume point is the final epoch
    assert not list(run.rglob("*.tmp"))


# -- Ray -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    if RAY_MISSING:
        pytest.skip("ray is not installed (pip install 'melgenre[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 classes × 3 clips of 4.6 s, one corrupt and one silent file."""
    root = tmp_path_factory.mktemp("scale") / "corpus"
    synth.write_corpus(root, n_classes=3, per_class=3, seconds=4.6, seed=3)
    (root / "class01" / "broken.wav").write_text("this is not audio")
    sf.write(root / "class02" / "quiet.wav", np.zeros(22_050 * 3, dtype=np.float32), 22_050)
    return root


def _h5_contents(path: Path) -> dict:
    items = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: items.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = dict(f.attrs)
    return {"datasets": items, "attrs": attrs}


def _assert_same_store(a: Path, b: Path) -> None:
    ca, cb = _h5_contents(a), _h5_contents(b)
    assert sorted(ca["datasets"]) == sorted(cb["datasets"])
    for name, value in ca["datasets"].items():
        assert value.dtype == cb["datasets"][name].dtype, name
        np.testing.assert_array_equal(value, cb["datasets"][name], err_msg=name)
    assert ca["attrs"].keys() == cb["attrs"].keys()
    for key, value in ca["attrs"].items():
        assert value == cb["attrs"][key], key


@needs_ray
@pytest.mark.parametrize("preset", ["fast", "v1"])
def test_prepare_ray_equals_local(ray_local, corpus, tmp_path, preset):
    from melgenre.scale import prepare_ray

    local = store.prepare(corpus, preset, tmp_path / "local.h5", workers=1, progress=False)
    remote = prepare_ray(corpus, preset, tmp_path / "ray.h5", progress=False)
    assert (remote.n_tracks, remote.n_rows, remote.computed) == (local.n_tracks, local.n_rows, local.computed) == \
        (10, local.n_rows, 11)
    assert remote.skipped == local.skipped and [s["path"] for s in remote.skipped] == ["class01/broken.wav"]
    assert remote.silent == local.silent == ["class02/quiet"]
    _assert_same_store(tmp_path / "local.h5", tmp_path / "ray.h5")
    assert not (tmp_path / "ray.h5.parts").exists()
    # rerun: up to date, nothing computed
    again = prepare_ray(corpus, preset, tmp_path / "ray.h5", progress=False)
    assert again.up_to_date and again.computed == 0


@needs_ray
def test_prepare_ray_resumes_local_parts_and_cli(ray_local, corpus, tmp_path):
    from melgenre.scale import prepare_ray

    store.prepare(corpus, "fast", tmp_path / "local.h5", workers=1, progress=False)
    # an interrupted local run left some parts: the Ray run reuses them
    parts = tmp_path / "ray.h5.parts"
    plan = store._plan_hash(discover(corpus), features.get_preset("fast"), "none")
    store._open_parts_dir(parts, plan)
    first = store._Job(index=0, path=str(corpus / "class00" / "class00.00000.wav"),
                       name="class00/class00.00000.wav", preset=features.get_preset("fast").to_dict(),
                       part=str(parts / "000000.npz"))
    store._compute_track(first)
    report = prepare_ray(corpus, "fast", tmp_path / "ray.h5", progress=False)
    assert report.resumed == 1 and report.computed == 10
    _assert_same_store(tmp_path / "local.h5", tmp_path / "ray.h5")

    r = runner.invoke(app, ["prepare", str(corpus), "--preset", "fast", "--out", str(tmp_path / "cli.h5"),
                            "--no-progress", "--ray"])
    assert r.exit_code == 0, r.output
    assert "computed 11 tracks" in r.output and "skipped 1 undecodable" in r.output
    _assert_same_store(tmp_path / "local.h5", tmp_path / "cli.h5")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """An untrained melcnn (width 8) package for the fast preset with 3 classes."""
    return build_untrained_package(tmp_path_factory.mktemp("pkg") / "tiny", classes=["class00", "class01", "class02"],
                                   width=8, seed=3)


@pytest.mark.slow  # ~70 s on 2 cores: Ray actors load the model; CI runs it (`pytest -m slow`)
@needs_ray
def test_predict_ray_csv_equals_local(ray_local, corpus, package, tmp_path):
    from melgenre.scale import predict_ray

    args = ["predict", str(corpus), "--model", str(package), "--format", "csv", "--top-k", "2", "--no-progress"]
    local = runner.invoke(app, args)
    remote = runner.invoke(app, [*args[:2], "--ray", *args[2:]])  # a bare --ray before another option
    assert local.exit_code == remote.exit_code == 1  # broken.wav fails, the others go on
    assert remote.stdout == local.stdout
    rows = list(csv.DictReader(io.StringIO(local.stdout)))
    assert len(rows) == 11 and [r["file"] for r in rows if r["error"]] == [str(corpus / "class01" / "broken.wav")]
    assert all(r["label"] in ("class00", "class01", "class02") for r in rows if not r["error"])

    from melgenre.predict import load_model, predict_paths

    model = load_model(package)
    expected = list(predict_paths([corpus], model, 3))
    got = list(predict_ray([corpus], package, top_k=3, actors=2))
    assert [p for p, _, _ in got] == [p for p, _, _ in expected]
    for (_, pa, ea), (_, pb, eb) in zip(expected, got):
        assert ea == eb
        if pa is not None:
            assert pa.to_dict() == pb.to_dict()


def test_bare_ray_option_parsing(tmp_path):
    """``--ray`` with and without a value (no Ray needed: an unknown data folder fails first)."""
    missing = tmp_path / "none"
    for args in (["--ray"], ["--ray", "--no-progress"], ["--ray=ray://head:10001"], ["--ray", "auto"],
                 ["--ray", "--out", str(tmp_path / "out.h5")]):  # mis-parsed, --out would be the address
        r = runner.invoke(app, ["prepare", str(missing), *args])
        # parsed as meant, the command gets as far as the data folder (a usage error would name the option)
        assert r.exit_code == 2 and r.output == f"error: {missing}: no such directory\n", (args, r.output)
