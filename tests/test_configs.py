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
