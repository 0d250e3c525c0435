"""The evaluate stage: metrics, plots and reports of a classifier's predictions.

One name to import for the whole stage; each concept has its own module, and this one
re-exports their public names:

- :mod:`melgenre.metrics`: metrics and their intervals, pure functions on arrays;
- :mod:`melgenre.plots`: the PNG figures of a run or a scoring;
- :mod:`melgenre.report`: ``report.md`` and its markdown tables;
- :mod:`melgenre.scoring`: a labelled corpus scored by a model, two scorings compared, a run's
  per-track predictions file;
- :mod:`melgenre.table`: every run beside the reproduced report's numbers (``melgenre table``).
"""

from __future__ import annotations

from melgenre.metrics import (
    BOOTSTRAP_SAMPLES,
    INTERVAL_LEVEL,
    INTERVAL_METRICS,
    add_intervals,
    bootstrap_intervals,
    compute_metrics,
    confusion_scores,
    evaluate_predictions,
    group_bootstrap_intervals,
    learnable_classes,
    paired_bootstrap,
    pooled_metrics,
    track_level,
    wilson_interval,
)
from melgenre.plots import (
    plot_class_distribution,
    plot_confusion,
    plot_history,
    plot_per_class,
    read_history,
    save_all_plots,
)
from melgenre.report import LEVELS, SUMMARY_METRICS, per_class_table, with_interval, write_report
from melgenre.scoring import (
    compare_scores,
    read_track_predictions,
    score_corpus,
    training_tracks,
    write_track_predictions,
)
from melgenre.table import (
    PRETRAINING_NOTE,
    REPORT_DETAIL_ROW,
    RUNS_TABLE_COLUMNS,
    report_numbers,
    runs_table,
    write_runs_table,
)

__all__ = [
    # metrics
    "BOOTSTRAP_SAMPLES", "INTERVAL_LEVEL", "INTERVAL_METRICS", "add_intervals", "bootstrap_intervals",
    "compute_metrics", "confusion_scores", "evaluate_predictions", "group_bootstrap_intervals",
    "learnable_classes", "paired_bootstrap", "pooled_metrics", "track_level", "wilson_interval",
    # plots
    "plot_class_distribution", "plot_confusion", "plot_history", "plot_per_class", "read_history",
    "save_all_plots",
    # report
    "LEVELS", "SUMMARY_METRICS", "per_class_table", "with_interval", "write_report",
    # scoring
    "compare_scores", "read_track_predictions", "score_corpus", "training_tracks", "write_track_predictions",
    # table
    "PRETRAINING_NOTE", "REPORT_DETAIL_ROW", "RUNS_TABLE_COLUMNS", "report_numbers", "runs_table",
    "write_runs_table",
]
