"""Tests for configs/: every experiment validates and its model builds (on the meta device, so
shapes only: no memory, no init cost) and takes its preset's images; seed/ holds Table 2 rows 1-20."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from melgenre.config import load_config
from melgenre.errors import ConfigError
from melgenre.features import get_preset
from melgenre.models import build_from_config, get_spec
from melgenre.models.blocks import as_hw

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = CONFIGS / "models"
SEED = CONFIGS / "seed"
EXPERIMENTS = sorted(p for p in CONFIGS.rglob("*.yaml") if MODELS not in p.parents)
MODEL_SECTIONS = sorted(MODELS.glob("*.yaml"))
SECTIONS = ("data", "model", "optim", "train")
REFERENCE_KEYS = {"row", "dataset", "val_macro_precision", "test_macro_precision", "test_accuracy"}
FIGURES = ("val_macro_precision", "test_macro_precision", "test_accuracy")
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def meta_logits(section: dict, hw: tuple[int, int], classes: list[str] | None = None) -> torch.Size:
    """Build ``section`` (for ``classes``, as training does) on the meta device and return the logits'
    shape for two 1-channel images."""
    with torch.device("meta"):
        model = build_from_config(section, classes=classes).eval()
        return model(torch.empty(2, 1, *hw)).shape


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_experiment_validates_builds_and_fits_its_preset(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and set(raw) & set(SECTIONS), f"{path}: not an experiment config"
    cfg = load_config(path)
    dataset = cfg.reference.get("dataset")
    shape = get_preset(dataset).image_shape() if dataset else get_spec(cfg.model["name"]).default_input[1:]
    size = {**get_spec(cfg.model["name"]).options, **cfg.model}.get("input_size")
    if size is not None and dataset:
        assert as_hw(size) == shape, f"{path}: model.input_size {size} but preset {dataset} makes {shape} images"
    assert meta_logits(cfg.model, shape, GTZAN_GENRES) == (2, 10)


def test_experiment_names_are_unique():  # a run directory is runs/<name>
    names = [load_config(p).name for p in EXPERIMENTS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("path", MODEL_SECTIONS, ids=_id)
def test_model_section_builds(path):
    section = yaml.safe_load(path.read_text())
    assert meta_logits(section, get_spec(section["name"]).default_input[1:]) == (2, section.get("num_classes", 10))


def test_seed_holds_table2_rows_1_to_20():
    from melgenre.evaluate import report_numbers

    published = report_numbers()["rows"]
    configs = {p: load_config(p) for p in sorted(SEED.glob("*.yaml"))}
    rows = sorted(c.reference["row"] for c in configs.values())
    assert rows == list(range(1, 21))
    for path, cfg in configs.items():
        ref, row = cfg.reference, cfg.reference["row"]
        assert set(ref) == REFERENCE_KEYS, path
        assert {k: ref[k] for k in FIGURES} == {k: published[row][k] for k in FIGURES}, path  # all three figures
        assert ref["dataset"] in ("v1", "v2") and path.stem.endswith(f"-{ref['dataset']}"), path
        assert path.name.startswith(f"m{row:02d}-") and cfg.name == path.stem, path
        header = path.read_text().split("\nname:")[0]
        assert header.startswith(f'# Report Table 2, row {row}: "{published[row]["text"]}"'), path  # quotes the row
        assert f"--preset {ref['dataset']}" in header and f"configs/seed/{path.name}" in header, path
        assert (cfg.data.batch_size, cfg.train.monitor) == (8, "val_macro_precision"), path
        assert cfg.train.max_epochs > cfg.train.patience, path
        assert (cfg.data.split == "kfold") == (row >= 19), path
    # every row is its own experiment
    setups = {json.dumps([{k: v for k, v in c.to_dict().items() if k in SECTIONS}, c.reference["dataset"]],
                         sort_keys=True) for c in configs.values()}
    assert len(setups) == 20


def test_seed_rows_fixed_by_tables_3_to_5():
    """Rows 1, 7 and 18: optimiser, lr, batch, patience, split and dataset as Tables 3, 4 and 5."""
    by_row = {load_config(p).reference["row"]: load_config(p) for p in SEED.glob("*.yaml")}
    tables = {1: ("adam", 1e-4, 0.0, 100, [0.7, 0.1, 0.2], "v1", False),
              7: ("adamw", 1e-4, 1e-4, 30, [0.8, 0.1, 0.1], "v1", False),
              18: ("adamw", 1e-5, 1e-4, 100, [0.8, 0.1, 0.1], "v2", True)}
    for row, (opt, lr, wd, patience, fractions, dataset, weights) in tables.items():
        cfg = by_row[row]
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.train.patience, cfg.data.fractions,
                cfg.reference["dataset"], cfg.train.class_weights, cfg.data.batch_size, cfg.train.max_epochs) == (
            opt, lr, wd, patience, fractions, dataset, weights, 8, 2000), row
    # the chain of changes the report states
    m = {row: cfg.model for row, cfg in by_row.items()}
    assert m[5] == {**m[4], "dropout": m[5]["dropout"], "dropout_before_output": False} and m[5]["dropout"] < m[4]["dropout"]
    assert m[6] == {**m[4], "dense": [256, 128, 64]} and m[7] == m[6] and by_row[7].data.fractions == [0.8, 0.1, 0.1]
    assert m[8]["head"] == "flatten" and m[8]["head_norm"] == "batch" and m[8]["dense"] == [256, 128, 64]
    assert m[9] == {**m[8], "dense": [128, 64]} and m[10] == {**m[8], "dense": [256, 128, 128, 64]}
    assert m[11] == {**m[7], "dropout": m[11]["dropout"]} and m[11]["dropout"] < m[7]["dropout"]
    assert by_row[11].train.patience > by_row[7].train.patience
    assert m[14] == {**m[11], "head_norm": "batch"} and m[15] == {**m[11], "head_norm": "layer"} and m[16] == m[15]
    assert (by_row[15].reference["dataset"], by_row[16].reference["dataset"]) == ("v1", "v2")
    assert m[18]["dropout"] > m[16]["dropout"] and m[18]["pool_dropout"] > 0 and not m[18]["dropout_before_output"]
    assert by_row[18].optim.lr < by_row[16].optim.lr and by_row[18].train.class_weights
    for row, patience in ((19, 0), (20, 30)):
        assert m[row] == m[18] and by_row[row].train.patience == patience and by_row[row].data.split == "kfold"


def test_misspelt_keys_are_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nmodel: {name: melcnn}\ntrain: {patiense: 100}\n")
    with pytest.raises(ConfigError, match=r"train\.patiense: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="dropuot"):
        build_from_config({"name": "melcnn", "dropuot": 0.3})


def _numeric_keys(cls, prefix=""):
    import dataclasses
    import typing

    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += _numeric_keys(tp, key + ".")
        elif tp in (int, float) or tp in (float | None, int | None):
            out.append(key)
    return out


def test_every_numeric_config_value_has_a_range():
    from melgenre.config import RANGES, ExperimentConfig

    assert sorted(_numeric_keys(ExperimentConfig)) == sorted(RANGES)


@pytest.mark.parametrize("override,message", [
    ("optim.lr=-0.01", "optim.lr: must be a finite number > 0, got -0.01"),
    ("optim.lr=.nan", "optim.lr: must be a finite number > 0, got nan"),
    ("optim.weight_decay=-1", "optim.weight_decay: must be a finite number >= 0"),
    ("train.label_smoothing=1.0", "train.label_smoothing: must be a finite number >= 0 and <= 0.999"),
    ("data.augment.time_shift=2", "data.augment.time_shift: must be a finite number >= 0 and <= 1"),
    ("data.num_workers=-1", "data.num_workers: must be a finite number >= 0"),
    ("train.patience=-5", "train.patience: must be a finite number >= 0"),
    ("data.batch_size=0", "data.batch_size: must be a finite number >= 1"),
    ("seed=-1", "seed: must be a finite number >= 0"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),  # wrong type at every level
    ("data.augment.freq_masks=[1]", "data.augment.freq_masks: expected int, got [1]"),
    ("train=3", "train: expected a mapping, got 3"),
    ("name=[1]", "name: expected str, got [1]"),
    ("model=[musicnn]", "model: expected a mapping, got ['musicnn']"),
    ("data.augment=flat", "data.augment: expected a mapping, got 'flat'"),
])
def test_bad_values_are_one_line_errors_through_the_cli(tmp_path, override, message):
    from typer.testing import CliRunner

    from melgenre.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c"}))
    r = CliRunner().invoke(app, ["train", str(cfg), "--override", override, "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "runs").exists()  # nothing left that could block the corrected rerun


def test_a_config_that_is_not_text_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from melgenre.cli import app

    png = tmp_path / "c.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    r = CliRunner().invoke(app, ["train", str(png)])
    assert r.exit_code == 2 and "c.yaml: not a UTF-8 text file" in r.output and "Traceback" not in r.output
