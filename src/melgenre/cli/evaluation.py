"""Evaluation commands of ``melgenre``: evaluate a run, fuse and compare cross-validations, the runs
table, score a model on labelled audio."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from melgenre.cli.common import MODEL_HELP, console, error_line, say


def print_metrics(run_dir: Path) -> None:
    import json

    path = run_dir / "metrics.json"
    if not path.exists():
        return
    metrics = json.loads(path.read_text())
    if metrics.get("best_epoch", 0) < 0:  # no validation split (a final retrain): the last epoch is kept
        say(f"no validation or test split: kept the last of {metrics.get('epochs')} epochs; training took "
            f"{metrics.get('train_seconds', 0):.0f} s; report: {run_dir / 'report.md'}")
        return
    table = Table(title=f"{run_dir} — best checkpoint")
    for col in ("split", "level", "accuracy", "macro precision", "macro recall", "macro F1", "n"):
        table.add_column(col, justify="left" if col in ("split", "level") else "right")
    for split, levels in metrics["results"].items():
        for level, m in levels.items():
            table.add_row(split, level, f"{m['accuracy']:.3f}", f"{m['macro_precision']:.3f}",
                          f"{m['macro_recall']:.3f}", f"{m['macro_f1']:.3f}", str(m["n"]))
    console.print(table)
    if "best_epoch" in metrics:
        say(f"best epoch {metrics['best_epoch']} of {metrics.get('epochs')}; "
            f"training took {metrics.get('train_seconds', 0):.0f} s; report: {run_dir / 'report.md'}")


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `melgenre train`."),
    data: Path = typer.Option(None, "--data", "-d", help="HDF5 file to evaluate on. Default: the run's data.path."),
    split: list[str] = typer.Option(["val", "test"], "--split", "-s", help="Split(s) to evaluate (repeatable)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint file. Default: RUN_DIR/checkpoints/best.ckpt, or last.ckpt where the run kept its last epoch."),
) -> None:
    """Evaluate a run's checkpoint: metrics at chunk and track level, plots, report.md."""
    from melgenre.train import evaluate_run

    evaluate_run(run_dir, checkpoint=checkpoint, splits=tuple(split), data=data)
    print_metrics(run_dir)


def say_group_intervals(metrics: dict) -> None:
    """Print the intervals that resample whole groups (``group_intervals``: cv or score with a grouping file), if any."""
    from melgenre.report import with_interval

    if "group_intervals" in metrics:
        gi = metrics["group_intervals"]
        say(f"resampling whole groups ({gi['groups']}; the intervals to quote when they are artists): accuracy "
            f"{with_interval(metrics['accuracy'], gi['accuracy'])}, balanced accuracy "
            f"{with_interval(metrics['balanced_accuracy'], gi['balanced_accuracy'])}")


def pooled_summary(pooled: dict) -> str:
    """One line of pooled CV metrics with their bootstrap intervals (``melgenre.metrics.pooled_metrics``)."""
    from melgenre.report import with_interval

    ci = pooled["intervals"]
    text = (f"accuracy {with_interval(pooled['accuracy'], ci['accuracy'])}, balanced accuracy "
            f"{with_interval(pooled['balanced_accuracy'], ci['balanced_accuracy'])}, macro precision "
            f"{with_interval(pooled['macro_precision'], ci['macro_precision'])} "
            f"({pooled['balanced']['macro_precision']:.3f} with equal class counts)")
    if "learnable" in pooled:
        lc = pooled["learnable"]
        text += (f"; balanced accuracy over the {len(lc['classes'])} classes every fold trained on "
                 f"{with_interval(lc['balanced_accuracy'], lc['interval'])}")
    return text


def fuse(
    cv_dirs: list[Path] = typer.Argument(..., metavar="CV_DIR", help="Two or more cross-validation folders (RUNS/<name>) of `melgenre cv` run with the same protocol on the same tracks."),
    groups: bool = typer.Option(False, "--groups", help="Fuse the artist-disjoint CVs (cv --groups): cv-groups*.json and group<k> folds. Default: the stratified ones."),
    fixed_epochs: bool = typer.Option(False, "--fixed-epochs", help="Fuse the --fixed-epochs CVs (the *-last folds). Default: the early-stopped ones."),
    weights: str = typer.Option(None, "--weights", help="Comma-separated weight per folder, e.g. 0.7,0.3. Default: equal weights."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON to OUT. Default: print only."),
) -> None:
    """Late fusion: average the out-of-fold track probabilities of several cross-validated recipes."""
    from melgenre.cv import fuse_cv

    try:
        w = [float(v) for v in weights.split(",")] if weights else None
    except ValueError:
        raise typer.BadParameter(f"--weights must be comma-separated numbers, got {weights!r}") from None
    result = fuse_cv(cv_dirs, groups=groups, fixed_epochs=fixed_epochs, weights=w)
    say(f"fusion of {', '.join(map(str, result['recipes']))} ({result['protocol']}), weights {result['weights']}")
    for name, m in [("fusion", result["pooled"]), *result["each"].items()]:
        say(f"  {name}: {m['n']} tracks, " + pooled_summary(m))
    _write_json(result, out)


_COMPARED = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
             ("balanced_accuracy_learnable", "balanced accuracy, classes every fold trained on"),
             ("macro_precision", "macro precision"), ("macro_f1", "macro F1"))


def compare(
    a: Path = typer.Argument(..., metavar="A", help="A cross-validation folder (RUNS/<name>) of `melgenre cv`, or an output folder of `melgenre score`."),
    b: Path = typer.Argument(..., metavar="B", help="Another of the same kind: a CV run with the same protocol on the same tracks, or a score of the same files."),
    groups: bool = typer.Option(False, "--groups", help="CV folders: compare the artist-disjoint CVs (cv --groups). Default: the stratified ones."),
    fixed_epochs: bool = typer.Option(False, "--fixed-epochs", help="CV folders: compare the --fixed-epochs CVs (the *-last folds). Default: the early-stopped ones."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON to OUT. Default: print only."),
) -> None:
    """Is A better than B? Paired bootstrap of two recipes' out-of-fold predictions (cv folders) or of two models' predictions of the same labelled files (score folders), with 95 % intervals."""
    if (a / "scores.json").is_file() or (b / "scores.json").is_file():
        from melgenre.scoring import compare_scores

        if groups or fixed_epochs:
            raise typer.BadParameter("--groups and --fixed-epochs are for cross-validation folders, not score folders")
        result = compare_scores(a, b)
        title = (f"{result['model_ids'][0]} (A) against {result['model_ids'][1]} (B): the {result['common']} files "
                 "both scored")
    else:
        from melgenre.cv import compare_cv

        result = compare_cv(a, b, groups=groups, fixed_epochs=fixed_epochs)
        title = f"{result['recipes'][0]} (A) against {result['recipes'][1]} (B): {result['n']} out-of-fold tracks, {result['protocol']}"
    table = Table(title=title)
    for column in ("metric", "A", "B", "A - B", f"{result['level']:.0%} interval", "A higher in"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label in _COMPARED:
        if key in result["metrics"]:
            m = result["metrics"][key]
            table.add_row(label, f"{m['a']:.3f}", f"{m['b']:.3f}", f"{m['difference']:+.3f}",
                          f"[{m['interval'][0]:+.3f}, {m['interval'][1]:+.3f}]", f"{m['a_better']:.0%}")
    console.print(table)
    d = result["discordant"]
    say(f"tracks only A gets right: {d['a_only']}; only B: {d['b_only']}. Intervals resample tracks within each "
        "class; songs shared by an artist make them if anything too narrow.")
    _write_json(result, out)


def _write_json(result: dict, out: Path | None) -> None:
    """Write a command's result as indented JSON (atomically), when ``--out`` asks for it."""
    if out is not None:
        import json

        from melgenre.utils import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        say(f"wrote {out}")


def table(
    runs_dir: Path = typer.Argument(Path("runs"), help="Folder of run directories."),
    level: str = typer.Option("track", "--level", help="Metrics level: track or chunk."),
    out: Path = typer.Option(None, "--out", help="Also write the table to OUT (.md) and OUT with .csv. Default: print only."),
) -> None:
    """All runs beside the report's Table 2 figures (val P, test P, test accuracy) of their row, and a
    finished row 18 beside Table 6 and Figure 4 (markdown; CSV with --out)."""
    from melgenre import evaluate as ev

    if level not in ("track", "chunk"):
        raise typer.BadParameter("--level must be track or chunk")
    if out is not None:
        ev.write_runs_table(runs_dir, out.with_suffix(".md"), out.with_suffix(".csv"), level=level)
    markdown, _ = ev.runs_table(runs_dir, level=level)
    typer.echo(markdown)


def score(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="Labelled audio: <class>/<file> folders (or GTZAN's genres/); every class must be one of the model's genres, in any letter case or spelling melgenre learn merges (rock/ or ROCK/ for Rock, hip hop/ for Hip-Hop)."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(Path("score"), "--out", "-o", help="Folder for predictions.sqlite (resumable), scores.json, report.md and plots. Default: score/."),
    include_training: bool = typer.Option(False, "--include-training", help="Also score files named like tracks the model trained on (its card lists them), which flatters the figures. Default: leave them out."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: auto (ONNX Runtime when installed, else torch), onnx or torch. Default: auto."),
    workers: int = typer.Option(None, "--workers", "-w", min=0, help="Decoding processes (0: in this process). Default: the cores less one (0 on 2 cores)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr. Default: on."),
    groups: Path = typer.Option(None, "--groups", help="A .csv/.tsv file with columns track and group (or artist), e.g. each file's artist: also give intervals that resample whole artists, whose songs tend to be right or wrong together. Default: none."),
) -> None:
    """How right is a model on your labelled music? Accuracy, balanced accuracy with 95 % intervals, per-genre recall; files that fail are reported (exit code 1)."""
    from melgenre.report import with_interval
    from melgenre.scoring import score_corpus

    result = score_corpus(data_dir, out, model=model, backend=backend, include_training=include_training,
                          workers=workers, progress=progress, groups=groups)
    t, ci = result["track"], result["track"]["intervals"]
    table = Table(title=f"{result['model_id']} on {result['n']} files of {data_dir}")
    for column in ("genre", "files", "recall [95 %]", "precision"):
        table.add_column(column, justify="left" if column == "genre" else "right")
    for c in t["per_class"]:
        if c["support"]:
            low, high = c["recall_interval"]
            table.add_row(c["class"], str(c["support"]), f"{c['recall']:.2f} [{low:.2f}, {high:.2f}]",
                          f"{c['precision']:.2f}")
    console.print(table)
    say(f"accuracy {with_interval(t['accuracy'], ci['accuracy'])}, balanced accuracy "
        f"{with_interval(t['balanced_accuracy'], ci['balanced_accuracy'])}, macro precision "
        f"{with_interval(t['macro_precision'], ci['macro_precision'])} [95 % bootstrap intervals]")
    say_group_intervals(t)
    if result["training_files"]:
        say(f"{result['training_files']} file(s) named like tracks the model trained on: "
            + ("scored too (--include-training): optimistic" if include_training else "left out"))
    for flag, f in result["flags"].items():
        say(f"flag {flag}: {f['files']} file(s), right on {f['right']}")
    for path, reason in result["failed"]:
        error_line(f"{path}: {reason}")
    if isinstance(result["plots"], str):
        say(f"no plots: {result['plots']}")
    say(f"details: {out / 'report.md'}")
    if result["failed"]:
        raise typer.Exit(1)
