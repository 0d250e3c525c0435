"""The runs table (``melgenre table``): every run beside the reproduced report's published numbers."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from melgenre.errors import MelgenreError
from melgenre.metrics import wilson_interval
from melgenre.report import markdown_table
from melgenre.utils import atomic_path

RUNS_TABLE_COLUMNS: dict[str, str] = {  # row-dict key (and CSV column) -> markdown header
    "row": "row",
    "run": "run",
    "status": "status",
    "model": "model",
    "dataset": "dataset",
    "split": "split",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "train_seconds": "train s",
    "val_accuracy": "val acc",
    "val_macro_precision": "val macro P",
    "test_accuracy": "test acc",
    "test_accuracy_interval": "test acc, 95 %",
    "test_macro_precision": "test macro P",
    "ref_val_macro_precision": "report val macro P",
    "ref_test_macro_precision": "report test macro P",
    "ref_test_accuracy": "report test acc",
}

#: Printed under the table when it lists YOLOv8 runs: how their start differs from the report's.
PRETRAINING_NOTE = (
    "Note: the report's YOLOv8 rows start from keras_cv's COCO-pretrained weights (used as initialisation; "
    "section 4 of the report). melgenre cannot download them, so its YOLOv8 runs train from scratch and "
    "are not expected to reach the published figures at the same budget. The closest analogue here is "
    "music pretraining: the shipped musicnn models (docs/results.md). Runs on the dev clips are not the "
    "report's 1000-track data; `artist-disjoint` splits keep each artist on one side.")

#: Table 2 row whose per-class precision (Table 6) and confusion matrix (Figure 4) are published.
REPORT_DETAIL_ROW = 18


def report_numbers() -> dict[str, Any]:
    """The reproduced report's published numbers, from ``resources/report_table2.yaml``.

    Returns
    -------
    dict
        ``classes`` (the 10 genres in Figure 4's order), ``rows`` (Table 2: ``{row: {text,
        val_macro_precision, test_macro_precision, test_accuracy}}``, row an int 1-20) and
        ``row18`` (``per_class_precision`` {class: value}, Table 6; ``confusion``, Figure 4,
        rows = true, columns = predicted). See the file's header for how they were transcribed.
    """
    from importlib import resources

    text = resources.files("melgenre.resources").joinpath("report_table2.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def runs_table(runs_dir: str | Path, level: str = "track") -> tuple[str, list[dict[str, Any]]]:
    """All runs under ``runs_dir`` side by side with the report's numbers, as markdown and as rows.

    A run is a folder ``runs_dir/<name>/`` holding ``config.yaml`` or ``metrics.json`` (as
    written by :func:`melgenre.train.fit`); a folder holding neither is searched one level
    deeper, which finds ``melgenre cv``'s ``<name>/fold<k>/`` and ``<name>/final/`` runs. A run
    without ``metrics.json`` is listed as ``unfinished`` with empty metrics.

    Parameters
    ----------
    runs_dir : path
        Folder of run directories.
    level : {"track", "chunk"}
        Which metrics of ``metrics.json``'s ``results.{val,test}`` to show.

    Returns
    -------
    markdown : str
        A markdown table (scores with 3 decimals, empty cells for missing values).
    rows : list of dict
        One dict per run, keys as :data:`RUNS_TABLE_COLUMNS`: ``row`` (``reference.row`` of the
        config), ``run`` (path under ``runs_dir``), ``status`` (finished / unfinished /
        unreadable), ``model`` (name plus scale and head if set), ``dataset``
        (``reference.dataset``, else ``"?"``), ``split`` (kind and train/val/test track counts
        from ``splits.json``, else the fractions), ``epochs``, ``best_epoch`` (0-based, as in
        ``metrics.json``), ``train_seconds`` (whole seconds), ``{val,test}_{accuracy,
        macro_precision}`` (rounded to 3 decimals; for ``melgenre cv``'s ``<name>/final`` run,
        which has no validation part, the val scores are the fold means from ``<name>/cv.json``),
        ``test_accuracy_interval`` (track level: the Wilson interval of the test accuracy over the
        test tracks, ``"low-high"``; the report's figures rest on 100-200 test tracks, the dev clips'
        on a few dozen)
        and the report's three figures for the row, ``ref_val_macro_precision``,
        ``ref_test_macro_precision``, ``ref_test_accuracy``, from :func:`report_numbers` (by
        ``reference.row``); missing values are ``None``. Sorted by reference row (runs without
        one last), then run.

        When a run of row 18 has finished, the markdown continues with, per such run, its
        per-class test precision beside the report's Table 6 and its test confusion matrix
        beside the report's Figure 4.

    Raises
    ------
    MelgenreError
        If ``runs_dir`` is not a folder or ``level`` is unknown.
    """
    runs_dir = Path(runs_dir)
    if level not in ("track", "chunk"):
        raise MelgenreError(f"level must be 'track' or 'chunk', got {level!r}")
    if not runs_dir.is_dir():
        raise MelgenreError(f"{runs_dir}: no such folder of runs")
    rows = [_run_row(run, runs_dir, level) for run in _run_dirs(runs_dir)]
    rows.sort(key=lambda r: (not isinstance(r["row"], int), r["row"] if isinstance(r["row"], int) else 0, r["run"]))
    header = [label + (f" ({level})" if key.startswith(("val_", "test_")) else "")
              for key, label in RUNS_TABLE_COLUMNS.items()]
    cells = ([_table_cell(row[key]).replace("|", "\\|") for key in RUNS_TABLE_COLUMNS] for row in rows)
    markdown = markdown_table(header, cells)
    notes = [PRETRAINING_NOTE] if any(str(r["model"]).startswith("yolov8") for r in rows) else []
    details = [_detail_section(runs_dir / row["run"], row["run"], level) for row in rows
               if row["row"] == REPORT_DETAIL_ROW and row["status"] == "finished"]
    return "\n\n".join([markdown, *notes, *details]), rows


def _detail_section(run_dir: Path, run: str, level: str) -> str:
    """Row 18: our per-class test precision beside Table 6, our confusion matrix beside Figure 4."""

    published = report_numbers()
    classes, ref = published["classes"], published["row18"]
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        test = metrics["results"]["test"][level]
    except (OSError, ValueError, KeyError, TypeError):
        metrics, test = {}, {}
    ours = {str(c.get("class")).lower(): c.get("precision") for c in test.get("per_class") or []
            if isinstance(c, Mapping)}
    rows = [[name, _table_cell(_round3(ours.get(name))), f"{ref['per_class_precision'][name]:.3f}"]
            for name in classes]
    lines = [f"### {run}: per-class test precision ({level}) beside the report's Table 6", "",
             markdown_table(["class", "ours", "report (Table 6)"], rows), ""]
    confusion = test.get("confusion")
    our_classes = [str(c).lower() for c in metrics.get("classes") or []]
    lines += [f"### {run}: test confusion matrix ({level}), rows = true, columns = predicted; "
              "ours / report (Figure 4)", ""]
    if confusion and sorted(our_classes) == sorted(classes):
        index = [our_classes.index(name) for name in classes]  # ours in the report's class order
        cell = lambda t, p: f"{confusion[index[t]][index[p]]} / {ref['confusion'][t][p]}"  # noqa: E731
    else:  # no matrix of ours (or other classes): the report's alone
        cell = lambda t, p: f" / {ref['confusion'][t][p]}"  # noqa: E731
    lines.append(markdown_table(["true \\ predicted", *classes],
                                 ([name, *(cell(t, p) for p in range(len(classes)))]
                                  for t, name in enumerate(classes))))
    return "\n".join(lines)


def write_runs_table(runs_dir: str | Path, out_md: str | Path, out_csv: str | Path,
                     level: str = "track") -> list[dict[str, Any]]:
    """Write :func:`runs_table` as markdown (``out_md``) and CSV (``out_csv``, columns
    :data:`RUNS_TABLE_COLUMNS`, cells as in the markdown), each atomically; return the rows."""
    markdown, rows = runs_table(runs_dir, level)
    out_md, out_csv = Path(out_md), Path(out_csv)
    for out in (out_md, out_csv):
        out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_md) as tmp:
        tmp.write_text(f"# Runs in {runs_dir} ({level} level)\n\n{markdown}\n")
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUNS_TABLE_COLUMNS)
        writer.writerows([_table_cell(row[key]) for key in RUNS_TABLE_COLUMNS] for row in rows)
    return rows


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "metrics.json").is_file()


def _run_dirs(runs_dir: Path) -> list[Path]:
    """``runs_dir/*`` runs, and ``runs_dir/*/*`` runs under folders that are not runs themselves."""
    found = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_run(folder):
            found.append(folder)
        else:
            found += [p for p in sorted(folder.iterdir()) if p.is_dir() and _is_run(p)]
    return found


def _run_row(run_dir: Path, runs_dir: Path, level: str) -> dict[str, Any]:
    """One row of :func:`runs_table`."""

    def read(name: str, parse) -> tuple[Any, bool]:  # (content or None, readable)
        path = run_dir / name
        if not path.is_file():
            return None, True
        try:
            return parse(path.read_text()), True
        except (OSError, ValueError, yaml.YAMLError):
            return None, False

    config, config_ok = read("config.yaml", yaml.safe_load)
    metrics, metrics_ok = read("metrics.json", json.loads)
    splits, _ = read("splits.json", json.loads)
    config = config if isinstance(config, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    ref = config.get("reference") or {}
    results = metrics.get("results") or {}
    status = "unreadable" if not (config_ok and metrics_ok) else "finished" if metrics else "unfinished"
    train_seconds = metrics.get("train_seconds")
    row = {
        "row": ref.get("row"),
        "run": run_dir.relative_to(runs_dir).as_posix(),
        "status": status,
        "model": _model_label(config.get("model") or {}),
        "dataset": ref.get("dataset") or "?",
        "split": _split_label(config.get("data") or {}, splits),
        "epochs": metrics.get("epochs"),
        "best_epoch": metrics.get("best_epoch"),
        "train_seconds": None if train_seconds is None else int(round(train_seconds)),
    }
    cv_val = _cv_fold_means(run_dir, runs_dir, level) if "val" not in results else {}
    for split in ("val", "test"):
        scores = (results.get(split) or {}).get(level) or {}
        for key in ("accuracy", "macro_precision"):
            value = scores.get(key) if split == "test" or "val" in results else cv_val.get(key)
            row[f"{split}_{key}"] = _round3(value)
    test = (results.get("test") or {}).get(level) or {}
    row["test_accuracy_interval"] = None  # tracks are independent draws, a track-level run's chunks are not
    if level == "track" and test.get("n") and test.get("accuracy") is not None:
        low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
        row["test_accuracy_interval"] = f"{low:.3f}-{high:.3f}"
    published = report_numbers()["rows"].get(row["row"]) or {} if isinstance(row["row"], int) else {}
    for key in ("val_macro_precision", "test_macro_precision", "test_accuracy"):
        row[f"ref_{key}"] = _round3(published.get(key))
    return row


def _cv_fold_means(run_dir: Path, runs_dir: Path, level: str) -> dict[str, Any]:
    """``{accuracy, macro_precision}``: fold means of ``melgenre cv``'s ``cv.json`` beside a
    ``<name>/final`` run (which has no validation part); empty for any other run."""

    cv_json = run_dir.parent / "cv.json"
    if run_dir.parent == runs_dir or not cv_json.is_file():
        return {}
    try:
        val = json.loads(cv_json.read_text())["val"][level]
        return {key: val[key]["mean"] for key in ("accuracy", "macro_precision")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _model_label(model: Mapping[str, Any]) -> str:
    """``yolov8_cls (n, gap)``: the registry name plus scale and head when the config sets them."""
    extras = [str(model[k]) for k in ("scale", "head") if model.get(k) is not None]
    name = str(model.get("name", "?"))
    return f"{name} ({', '.join(extras)})" if extras else name


def _split_label(data: Mapping[str, Any], splits: Mapping[str, Any] | None) -> str:
    """``stratified 700/100/200`` from the run's track counts, else from its fractions; a fold of
    ``cv --groups`` reads ``artist-disjoint (fault_filtered groups) 131/71/0``."""
    groups = data.get("groups")
    if not groups:
        kind = str(data.get("split", "?"))
    elif groups == "fault_filtered":
        kind = "artist-disjoint (fault_filtered groups)"
    else:  # a grouping file of melgenre.data.read_grouping
        kind = f"group-disjoint ({Path(groups).name} groups)"
    if isinstance(splits, Mapping):
        return f"{kind} " + "/".join(str(len(splits.get(s) or [])) for s in ("train", "val", "test"))
    fractions = data.get("fractions")
    return f"{kind} " + "/".join(f"{f:g}" for f in fractions) if fractions else kind


def _round3(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _table_cell(value: Any) -> str:
    """3 decimals for scores, nothing for missing values."""
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
