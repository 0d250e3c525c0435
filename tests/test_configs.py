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
REFERENCE_KEYS = {"row", "dataset", "test_macro_precision", "test_accuracy"}
PUBLISHED = {18: {"test_macro_precision": 0.803, "test_accuracy": 0.80}}  # all the report's numbers we know


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def meta_logits(section: dict, hw: tuple[int, int]) -> torch.Size:
    """Build ``section`` on the meta device and return the logits' shape for two 1-channel images."""
    with torch.device("meta"):
        model = build_from_config(section).eval()
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
    assert meta_logits({**cfg.model, "num_classes": 10}, shape) == (2, 10)


def test_experiment_names_are_unique():  # a run directory is runs/<name>
    names = [load_config(p).name for p in EXPERIMENTS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("path", MODEL_SECTIONS, ids=_id)
def test_model_section_builds(path):
    section = yaml.safe_load(path.read_text())
    assert meta_logits(section, get_spec(section["name"]).default_input[1:]) == (2, section.get("num_classes", 10))


def test_seed_holds_table2_rows_1_to_20():
    configs = {p: load_config(p) for p in sorted(SEED.glob("*.yaml"))}
    rows = sorted(c.reference["row"] for c in configs.values())
    assert rows == list(range(1, 21))
    for path, cfg in configs.items():
        ref, row = cfg.reference, cfg.reference["row"]
        assert set(ref) == REFERENCE_KEYS, path
        assert ref["dataset"] in ("v1", "v2") and path.stem.endswith(f"-{ref['dataset']}"), path
        assert path.name.startswith(f"m{row:02d}-") and cfg.name == path.stem, path
        published = PUBLISHED.get(row, {"test_macro_precision": None, "test_accuracy": None})
        assert {k: ref[k] for k in published} == published, path
        header = path.read_text().split("\nname:")[0]
        assert header.startswith(f"# Report Table 2, row {row}:"), path
        assert f"--preset {ref['dataset']}" in header and f"configs/seed/{path.name}" in header, path
        assert (cfg.data.batch_size, cfg.train.patience, cfg.train.monitor) == (8, 100, "val_macro_precision"), path
        assert cfg.train.max_epochs > cfg.train.patience, path
        assert (cfg.data.split == "kfold") == (row >= 19), path
    # every row is its own experiment, except 19-20: two outputs of one `melgenre cv` run
    setups = {}
    for cfg in configs.values():
        setup = {k: v for k, v in cfg.to_dict().items() if k in SECTIONS}
        key = json.dumps([setup, cfg.reference["dataset"]], sort_keys=True)
        setups.setdefault(key, []).append(cfg.reference["row"])
    assert sorted(rows for rows in setups.values() if len(rows) > 1) == [[19, 20]]
    assert len(setups) == 19


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
