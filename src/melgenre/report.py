"""Markdown of a run or a scoring: ``report.md`` (summary, per-class table, plots, configuration)
and the tables and figures-with-intervals it is made of."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from melgenre.metrics import wilson_interval
from melgenre.utils import atomic_path

SUMMARY_METRICS = (
    ("accuracy", "accuracy"), ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
)
LEVELS = ("chunk", "track")


def with_interval(value: float, interval: Sequence[float] | None) -> str:
    """``0.718 [0.652, 0.781]``: a figure with its interval, when there is one."""
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def per_class_table(metrics: Mapping[str, Any]) -> str:
    """A markdown table ``class | precision | recall | recall, 95 % | F1 | support`` with 3 decimals
    (the recall's Wilson interval, :func:`melgenre.metrics.wilson_interval`; blank for a class
    without rows).

    Parameters
    ----------
    metrics : mapping
        A :func:`melgenre.metrics.compute_metrics` dict.

    Returns
    -------
    str
        The table, one line per class, without a trailing newline.
    """
    def interval(row: Mapping[str, Any]) -> str:
        if not row["support"]:
            return ""
        low, high = wilson_interval(round(row["recall"] * row["support"]), row["support"])
        return f"{low:.3f}-{high:.3f}"

    return markdown_table(
        ("class", "precision", "recall", "recall, 95 %", "F1", "support"),
        ([row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", interval(row), f"{row['f1']:.3f}",
          str(row["support"])] for row in metrics["per_class"]),
    )


def write_report(
    run_dir: str | Path, title: str, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
    extra_lines: Iterable[str] = (),
) -> Path:
    """Write ``run_dir/report.md``: summary table, per-class table, plot links and config.

    Parameters
    ----------
    run_dir : path
        The run folder; PNGs already there (``history.png``, ``class_distribution.png``,
        ``confusion_*.png``, ``per_class_*.png``) are linked.
    title : str
        The report's heading.
    config : mapping
        The resolved configuration, written as a YAML block (paths become strings).
    results : mapping
        Split name (``"val"``, ``"test"``) -> :func:`melgenre.metrics.evaluate_predictions` dict.
    extra_lines : iterable of str
        Markdown lines added after the summary table (notes, timings).

    Returns
    -------
    Path
        The report's path.
    """
    run_dir = Path(run_dir)
    lines = [f"# {title}", "", "## Summary", ""]
    lines.append(markdown_table(
        ("split", "level", "n", *(label for _, label in SUMMARY_METRICS)),
        ([split, level, str(levels[level]["n"]), *(f"{levels[level][key]:.3f}" for key, _ in SUMMARY_METRICS)]
         for split, levels in results.items() for level in LEVELS if level in levels),
    ))
    lines += ["", ("Macro averages are over the classes present in the true labels or the predictions "
                   '(scikit-learn\'s `average="macro", zero_division=0`); macro precision is the report\'s "mAP".')]
    for split, levels in results.items():
        ci = levels["track"].get("intervals")
        if ci:
            lines += ["", f"{ci['level']:.0%} bootstrap intervals, {split}, track level ({ci['method']}; "
                      f"{levels['track']['n']} tracks): "
                      + ", ".join(f"{label} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" for key, label in SUMMARY_METRICS)
                      + "."]
    extra = list(extra_lines)
    if extra:
        lines += ["", *extra]
    if results:
        split = "test" if "test" in results else next(iter(results))
        lines += ["", f"## Per class ({split}, track level)", "", per_class_table(results[split]["track"])]
    plots = [p for p in (run_dir / "history.png", run_dir / "class_distribution.png") if p.exists()]
    plots += sorted(run_dir.glob("confusion_*.png")) + sorted(run_dir.glob("per_class_*.png"))
    if plots:
        lines += ["", "## Plots"] + [line for p in plots for line in ("", f"![{p.stem}]({p.name})")]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    out = run_dir / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return out


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table from a header and string cells: the header, its ``|---|`` rule, one line per row,
    no trailing newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, for ``yaml.safe_dump``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
