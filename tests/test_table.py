"""Tests for melgenre.evaluate.runs_table / write_runs_table on hand-made run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from melgenre.errors import MelgenreError
from melgenre.evaluate import PRETRAINING_NOTE, RUNS_TABLE_COLUMNS, runs_table, wilson_interval, write_runs_table


def scores(accuracy: float, macro_precision: float) -> dict[str, float]:
    """One ``results.<split>.<level>`` entry of metrics.json (the keys runs_table reads, plus others)."""
    return {"n": 100, "accuracy": accuracy, "macro_precision": macro_precision, "macro_recall": 0.5, "macro_f1": 0.5}


def make_run(runs: Path, name: str, row: int, dataset: str, model: dict, published: tuple = (None, None),
             results: dict | None = None, splits: dict | None = None, groups: str | None = None, **facts) -> Path:
    """A run directory as melgenre.train.fit leaves it: config.yaml, then splits.json / metrics.json."""
    run = runs / name
    run.mkdir(parents=True)
    config = {"name": run.name, "reference": {"row": row, "dataset": dataset, "test_macro_precision": published[0],
                                              "test_accuracy": published[1]},
              "data": {"split": "stratified", "fractions": [0.8, 0.1, 0.1], "groups": groups}, "model": model}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if splits:
        (run / "splits.json").write_text(json.dumps({k: [f"t{i}" for i in range(n)] for k, n in splits.items()}))
    if results is not None:
        (run / "metrics.json").write_text(json.dumps({"name": run.name, **facts, "results": results}))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    make_run(runs, "best", 18, "v2", {"name": "yolov8_cls", "scale": "n", "head": "gap"}, (0.803, 0.80),
             {"val": {"chunk": scores(0.7, 0.71), "track": scores(0.75, 0.7649)},
              "test": {"chunk": scores(0.6, 0.61), "track": scores(0.8124, 0.79)}},
             {"train": 800, "val": 100, "test": 100}, epochs=212, best_epoch=111, train_seconds=3599.6)
    make_run(runs, "base", 4, "v1", {"name": "yolov8_cls"},
             results={"val": {"chunk": scores(0.5, 0.5), "track": scores(0.55, 0.56)},
                      "test": {"chunk": scores(0.4, 0.4), "track": scores(0.45, 0.4567)}},
             epochs=150, best_epoch=49, train_seconds=10.2)
    make_run(runs, "cnn", 1, "v1", {"name": "vanilla_cnn"})  # unfinished: no metrics.json yet
    return runs


def test_runs_table_lists_runs_with_metrics_and_published_numbers(runs):
    markdown, rows = runs_table(runs)
    assert [r["run"] for r in rows] == ["cnn", "base", "best"]  # by reference row
    cnn, base, best = rows
    assert cnn["status"] == "unfinished" and cnn["test_accuracy"] is None and cnn["epochs"] is None
    assert best == {
        "row": 18, "run": "best", "status": "finished", "model": "yolov8_cls (n, gap)", "dataset": "v2",
        "split": "stratified 800/100/100", "epochs": 212, "best_epoch": 111, "train_seconds": 3600,
        "val_accuracy": 0.75, "val_macro_precision": 0.765, "test_accuracy": 0.812, "test_macro_precision": 0.79,
        "test_accuracy_interval": "{:.3f}-{:.3f}".format(*wilson_interval(81, 100)),  # 81 of 100 test tracks
        "ref_val_macro_precision": 0.864, "ref_test_macro_precision": 0.803, "ref_test_accuracy": 0.8,
    }
    assert (base["model"], base["split"], base["test_macro_precision"]) == ("yolov8_cls", "stratified 0.8/0.1/0.1", 0.457)
    # the published figures come from resources/report_table2.yaml by row, not from the run's config
    assert (base["ref_val_macro_precision"], base["ref_test_macro_precision"], base["ref_test_accuracy"]) == (
        0.651, 0.568, 0.51)
    assert (cnn["ref_val_macro_precision"], cnn["ref_test_macro_precision"], cnn["ref_test_accuracy"]) == (
        0.544, 0.554, 0.535)
    lines = markdown.splitlines()
    assert "report val macro P" in lines[0] and "report test macro P" in lines[0] and "test acc (track)" in lines[0]
    assert lines[2].startswith("| 1 | cnn | unfinished | vanilla_cnn | v1 | stratified 0.8/0.1/0.1 |  |")
    assert lines[2].endswith("| 0.544 | 0.554 | 0.535 |")
    assert lines[4] == ("| 18 | best | finished | yolov8_cls (n, gap) | v2 | stratified 800/100/100 | 212 | 111 | 3600 "
                        "| 0.750 | 0.765 | 0.812 | 0.722-0.875 | 0.790 | 0.864 | 0.803 | 0.800 |")
    assert lines[3].endswith("| 0.450 | 0.356-0.548 | 0.457 | 0.651 | 0.568 | 0.510 |")
    assert lines[5] == "" and lines[6] == PRETRAINING_NOTE and "COCO" in PRETRAINING_NOTE  # YOLOv8 runs listed
    # row 18 finished: Table 6 and Figure 4 follow, ours empty (no per_class here)
    assert "| blues |  | 0.692 |" in lines and "| pop |  | 0.250 |" in lines
    assert any(line.startswith("| blues |  / 9 |  / 0 |  / 1 |") for line in lines)


def test_runs_table_chunk_level_and_cv_runs(runs):
    cv = runs / "m19-cv"  # `melgenre cv` writes runs/<name>/fold<k>/ and runs/<name>/final/, no config at the top
    cv.mkdir()
    (cv / "cv.json").write_text("{}")
    make_run(cv, "final", 19, "v2", {"name": "yolov8_cls"}, results={"test": {"chunk": scores(0.9, 0.91),
                                                                              "track": scores(0.95, 0.96)}})
    make_run(cv, "group0", 19, "v2", {"name": "yolov8_cls"}, splits={"train": 131, "val": 71},
             groups="fault_filtered")  # a fold of `cv --groups`: labelled by its protocol, not its base split
    markdown, rows = runs_table(runs, level="chunk")
    assert [r["run"] for r in rows] == ["cnn", "base", "best", "m19-cv/final", "m19-cv/group0"]
    assert rows[4]["split"] == "artist-disjoint (fault_filtered groups) 131/71/0"
    assert (rows[2]["test_accuracy"], rows[3]["test_macro_precision"], rows[3]["val_accuracy"]) == (0.6, 0.91, None)
    assert "test acc (chunk)" in markdown
    assert all(r["test_accuracy_interval"] is None for r in rows)  # chunks of a track are not independent draws
    with pytest.raises(MelgenreError, match="level"):
        runs_table(runs, level="clip")
    with pytest.raises(MelgenreError, match="no such folder"):
        runs_table(runs / "missing")


def test_write_runs_table_csv_parses_back(runs, tmp_path):
    out = tmp_path / "out"
    rows = write_runs_table(runs, out / "table.md", out / "table.csv")
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]  # no temp files left
    assert runs_table(runs)[0] in (out / "table.md").read_text()
    with (out / "table.csv").open(newline="") as f:
        parsed = list(csv.DictReader(f))
    assert [list(r) for r in parsed] == [list(RUNS_TABLE_COLUMNS)] * len(rows)
    for row, back in zip(rows, parsed):
        assert back == {k: "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in row.items()}
        for key, value in row.items():
            if isinstance(value, float):
                assert float(back[key]) == value
    assert parsed[2]["ref_test_macro_precision"] == "0.803" and parsed[2]["test_accuracy"] == "0.812"
    assert parsed[2]["ref_val_macro_precision"] == "0.864" and parsed[0]["ref_test_accuracy"] == "0.535"


def test_row18_per_class_and_confusion_beside_the_report(tmp_path):
    from melgenre.evaluate import report_numbers

    published = report_numbers()
    classes = published["classes"]
    ours_order = sorted(classes, reverse=True)  # metrics.json in another class order: mapped by name
    confusion = [[10 if t == p else 0 for p in range(10)] for t in range(10)]
    confusion[ours_order.index("pop")][ours_order.index("rock")] = 3  # 3 pop tracks predicted rock
    per_class = [{"class": c, "precision": 10 / 13 if c == "rock" else 1.0, "recall": 1.0, "f1": 1.0, "support": 10}
                 for c in ours_order]
    test = {"track": {**scores(0.97, 0.977), "per_class": per_class, "confusion": confusion}}
    runs = tmp_path / "runs"
    make_run(runs, "m18", 18, "v2", {"name": "yolov8_cls"}, results={"test": test}, classes=ours_order)
    markdown, rows = runs_table(runs)
    lines = markdown.splitlines()
    assert "| rock | 0.769 | 0.889 |" in lines and "| blues | 1.000 | 0.692 |" in lines
    header = next(line for line in lines if line.startswith("| true"))
    assert header.split("|")[2:-1] == [f" {c} " for c in classes]
    pop = [line for line in lines if line.startswith("| pop |")][-1].split("|")[2:-1]  # the matrix's pop row
    assert pop[classes.index("rock")].strip() == "3 / 1" and pop[classes.index("pop")].strip() == "10 / 2"
    assert "Table 6" in markdown and "Figure 4" in markdown
    # a cv final run takes its val figures from the fold means in cv.json
    cv = runs / "m20-cv"
    cv.mkdir()
    (cv / "cv.json").write_text(json.dumps({"val": {"track": {"accuracy": {"mean": 0.71},
                                                              "macro_precision": {"mean": 0.7249}}}}))
    make_run(cv, "final", 20, "v2", {"name": "yolov8_cls"}, results={"test": {"track": scores(0.8, 0.81)}})
    final = runs_table(runs)[1][-1]
    assert (final["run"], final["val_macro_precision"], final["val_accuracy"], final["ref_val_macro_precision"]) == (
        "m20-cv/final", 0.725, 0.71, 0.748)

