"""Inference commands of ``melgenre``: predict, timeline, explain, export and serve a model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from melgenre.cli.common import MODEL_HELP, console, err_console, error_line, say, shown, windows_option
from melgenre.errors import MelgenreError


def _predict_csv(results: list[tuple[Path, object, str | None]], top_k: int) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "label", "prob", *[f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("top", "prob")],
                     "flags", "error"])
    for path, pred, error in results:
        if pred is None:
            writer.writerow([str(path), "", "", *[""] * (2 * top_k), "", error])
            continue
        top = [*pred.top, *[("", None)] * (top_k - len(pred.top))]
        cells = [x for genre, p in top for x in (genre, "" if p is None else f"{p:.6f}")]
        writer.writerow([str(path), pred.label, f"{pred.probabilities[pred.label]:.6f}", *cells, ";".join(pred.flags), ""])
    return buf.getvalue()


_HOP_HELP = ("Seconds between prediction windows, for models on a chunked preset: 3 (the fast preset's chunk "
             "length) halves the work for a small accuracy cost. Default: the model card's predict_hop if it has one "
             "(the shipped musicnn default: 6, every other 3-s patch), else the preset's chunk_hop_seconds (1.5 for fast).")


_WINDOWS_HELP = ("The windows scored per file, spread evenly over a longer recording, of which only those "
                 "stretches are decoded (WAV, FLAC, OGG, Opus, MP3, AIFF seek; M4A is decoded whole): a 3-minute song "
                 "has 30 windows of the default model; a sample too close to call gets as many again, once. "
                 "'all' scores every window. Default: the model card's "
                 "predict_windows, else as many as a 30-s clip has, at least 3 (the default model: 5; fast models: 18).")


def predict_cmd(
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="Audio files and/or folders (searched recursively for audio files)."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Genres (tags with --tags) to list per file. Default: 3."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output on stdout: table, json or csv. Default: table."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: auto (ONNX Runtime when installed, else torch), onnx or torch. Default: auto."),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
    windows: str = typer.Option(None, "--windows", metavar="N|all", callback=windows_option, help=_WINDOWS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr when there is more than one file. Default: on."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Predict on Ray actors (the model loaded once per worker): a bare --ray (last, or before another option) starts/attaches a local Ray; --ray ADDRESS or --ray=ADDRESS joins a cluster. Needs Ray installed. Default: off."),
    tags: str = typer.Option(None, "--tags", metavar="[msd|mtt]", help="List musicnn's own 50 tags (Pons & Serra 2019) instead of genres: tags learnt from the Million Song Dataset (msd) or MagnaTagATune (mtt), not the genres of the genre model. Not with --model, --hop, --ray or --backend onnx. Default: off (genres)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write one row per file, as each finishes, to a results file: .sqlite, .csv or .jsonl (see docs/library.md); a rerun skips files unchanged since (same path, size, mtime and model) and redoes the rest. Prints a summary instead of the results. Default: none (results on stdout)."),
    workers: int = typer.Option(None, "--workers", min=0, help="With --out: processes that decode files and compute their mel images while this one runs the model on full batches across files (0: decode here). Default: 0 on 2 cores or fewer (measured faster there), else the CPU cores less one."),
) -> None:
    """Predict the genre (or, with --tags, musicnn's tags) of audio files of any length; failing files are reported and skipped (exit code 1)."""
    import json

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from melgenre.audio import expand_paths
    from melgenre.inference import load_model, predict_paths

    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter("--format must be table, json or csv")
    if tags is not None:
        from melgenre.tags import TAG_DATASETS, load_tagger  # musicnn's own tagger runs in torch (the train extra)

        if tags not in TAG_DATASETS:
            raise typer.BadParameter(f"--tags must be {' or '.join(TAG_DATASETS)}, got {tags!r}")
        clash = [opt for opt, on in (("--model", model is not None), ("--hop", hop is not None),
                                     ("--windows", windows is not None),
                                     ("--ray", ray is not None), ("--backend onnx", backend == "onnx")) if on]
        if clash:
            raise typer.BadParameter(f"--tags runs musicnn's own tagger (torch, 3-s windows) and does not take "
                                     f"{', '.join(clash)}")
    if out is not None:
        if tags is not None:
            raise typer.BadParameter("--out writes genre predictions; it does not take --tags")
        from melgenre.library import predict_library

        report = predict_library(paths, out, model=model, backend=backend, hop=hop, windows=windows, workers=workers,
                                 progress=progress, ray=ray)
        _library_summary(report)
        raise typer.Exit(1 if report.failed else 0)
    files = expand_paths(paths)
    if not files:
        raise MelgenreError(f"no audio files in {', '.join(map(str, paths))}")
    predictor = load_tagger(tags) if tags is not None else load_model(model, backend=backend, hop=hop, windows=windows)
    top_k = min(top_k, len(predictor.classes))
    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err_console, transient=True, disable=not progress or len(files) < 2)
    results = []
    with bar:
        task = bar.add_task("predict", total=len(files))
        if ray is not None:
            from melgenre.scale import predict_ray

            predictions = predict_ray(files, model, backend=backend, top_k=top_k, address=ray, hop=hop, windows=windows)
        else:
            predictions = predict_paths(files, predictor, top_k)
        for path, pred, error in predictions:
            if error is not None:
                error_line(f"{path}: {error}")
            results.append((path, pred, error))
            bar.advance(task)
    if fmt == "json":
        typer.echo(json.dumps([pred.to_dict() if pred is not None else {"source": str(path), "error": error}
                               for path, pred, error in results], indent=1))
    elif fmt == "csv":
        typer.echo(_predict_csv(results, top_k), nl=False)
    else:
        out = Table(title=f"musicnn {tags.upper()} tags ({predictor.model_id})" if tags is not None else
                    f"model {predictor.model_id} ({predictor.backend}, preset {predictor.preset.name})")
        out.add_column("file", overflow="fold")
        out.add_column(f"top {top_k}")
        out.add_column("windows", justify="right")
        out.add_column("flags")
        for path, pred, error in results:
            if pred is None:
                out.add_row(shown(path), f"[red]error: {shown(error)}", "", "")
                continue
            flags = ", ".join(pred.flags)
            top = ", ".join(f"{escape(genre)} {p:.3f}" for genre, p in pred.top)
            if "not_music" in pred.flags:  # no genre headline for what does not sound like music
                top = f"[bold]not music?[/] [dim]nearest: {top}[/]"
            scored, total = len(pred.window_starts), getattr(pred, "windows_total", 0)  # tags: every window
            out.add_row(shown(path), top, f"{scored} of {total}" if scored < total else str(scored), flags)
        console.print(out)
        _say_flags(f for _, pred, _ in results if pred is not None for f in pred.flags)
    if any(error is not None for _, _, error in results):
        raise typer.Exit(1)


def timeline(
    path: Path = typer.Argument(..., metavar="FILE", help="An audio file of any length."),
    out: Path = typer.Option(None, "--out", "-o", help="Also draw the timeline (stacked probabilities of every genre, segments marked) to this PNG. Default: none."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output on stdout: table (one line of segments) or json (the prediction with its segments). Default: table."),
    min_segment: float = typer.Option(None, "--min-segment", min=0.0, help="Shortest segment in seconds; shorter runs of windows are merged into a neighbour. Default: 10."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
) -> None:
    """Where the genre changes: per-window probabilities (smoothed over 3 windows) and segments such as 0:00-1:12 rock, 1:12-2:40 metal."""
    import dataclasses
    import json

    from melgenre import timeline as tl
    from melgenre.inference import load_model

    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    genre_model = load_model(model, hop=hop, windows="all")  # a timeline needs every window
    pred = genre_model.predict(path)
    if min_segment is not None:
        pred = dataclasses.replace(pred, segments=tl.segments(
            pred.window_probabilities, pred.window_starts, genre_model.classes, pred.window_seconds, pred.duration,
            min_segment))
    if out is not None:
        tl.save_timeline_figure(pred, out)
    if fmt == "json":
        typer.echo(json.dumps(pred.to_dict(), indent=1))
    else:
        say(tl.describe(pred.segments))
        _say_flags(pred.flags)
        if out is not None:
            say(f"wrote {out}")


def explain(
    path: Path = typer.Argument(..., metavar="FILE", help="An audio file; its first 30 s (the preset's duration) are explained, as `show` draws them."),
    genre: str = typer.Option(None, "--genre", "-g", help="The genre whose evidence is shown. Default: the most probable one."),
    method: str = typer.Option("gradcam", "--method", help="gradcam (Grad-CAM on the last conv stage; musicnn: its front end) or occlusion (model-agnostic: the probability drop when a patch is covered; one forward pass per patch, slower). Default: gradcam."),
    out: Path = typer.Option(Path("explain.png"), "--out", "-o", help="PNG to write: the mel image with the saliency overlaid. Default: explain.png."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Saliency: where on the mel image the evidence for a genre lies (Grad-CAM or occlusion), drawn over the image."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from melgenre.explain import METHODS, explain_file, save_saliency_figure
    from melgenre.inference import load_model

    if method not in METHODS:
        raise typer.BadParameter(f"--method must be {' or '.join(METHODS)}")
    genre_model = load_model(model, backend="torch")  # Grad-CAM and the evidence in words need the module
    # occlusion is many forward passes of the same model, faster with ONNX Runtime
    predict = load_model(model, backend="auto").predict_images if method == "occlusion" else None
    bar = Progress(TextColumn("occlusion"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                   TimeRemainingColumn(), console=err_console, transient=True, disable=method != "occlusion")
    with bar:
        task = bar.add_task("occlusion", total=None)
        expl, y = explain_file(genre_model, path, genre, method, predict=predict,
                               on_window=lambda done, total: bar.update(task, completed=done, total=total))
    save_saliency_figure(y, genre_model.preset, expl, out)
    probs = ", ".join(f"{p:.2f}" for p in expl.window_probabilities)
    say(f"{expl.genre} ({method}) over {len(expl.window_starts)} windows (probability per window: {probs}); wrote {out}")
    if expl.evidence is not None:
        say(expl.evidence.describe())
    _say_flags(genre_model.predict(y, sr=genre_model.preset.sr, name=str(path)).flags)


def _say_flags(flags) -> None:
    """Each distinct prediction flag (``melgenre.inference.FLAGS``), in words, one line each."""
    from melgenre.inference import FLAGS

    for flag in dict.fromkeys(flags):
        console.print(f"{flag}: {FLAGS.get(flag, '')}", markup=False, highlight=False)


def _library_summary(report) -> None:
    """Print what ``predict --out`` did: failures on stderr, counts per genre and timing on stdout."""
    from rich.markup import escape

    for path, reason in report.failed:
        error_line(f"{path}: {reason}")
    table = Table()
    table.add_column("genre")
    table.add_column("files", justify="right")
    for genre, n in report.per_genre.items():
        table.add_row(escape(genre), str(n))
    say(f"{report.out}: model {report.model_id}, backend {report.backend}")
    console.print(table)
    if report.recalibrated:
        say(f"model {report.model_id} was recalibrated since the last run into {report.out}: its probabilities "
            "and flags changed, so every file was predicted again")
    if report.rewindowed:
        say(f"model {report.model_id} now scores other windows (--hop or --windows) than in the last run into "
            f"{report.out}, so every file was predicted again")
    say(f"{report.files} files: {report.predicted} predicted this run ({len(report.failed)} failed), "
        f"{report.skipped} unchanged since an earlier run; {report.seconds:.1f} s"
        + (f", {report.files_per_s:.1f} files/s" if report.predicted else ""))
    if report.rechecked:
        say(f"{report.rechecked} files were too close to call on a sample of their windows and were scored on more")


def export_cmd(
    source: Path = typer.Argument(..., help="A run directory, a .ckpt inside one, a model package .json, or a shipped package's name."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (one file, card in its metadata) or package (.safetensors + .json card). Default: onnx."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: model.onnx, or the package path/stem. Required (no default)."),
    estimate: list[Path] = typer.Option(None, "--estimate", help="A cross-validation result of the model's recipe (cv-groups-last.json, cv-last.json, ...) to summarise in the package's card (protocol, pooled metrics, per-genre recall); repeatable; package only. Default: none."),
    hop: float = typer.Option(None, "--hop", help="Default seconds between prediction windows, stored in the package's card (predict --hop overrides it); package only. Default: the preset's hop."),
    windows: str = typer.Option(None, "--windows", metavar="N|all", callback=windows_option, help="The most windows a prediction scores per file, stored in the package's card as predict_windows (predict --windows overrides it); package only. Default: the source's, else as many as a 30-s clip has, at least 3."),
    int8: list[Path] = typer.Option(None, "--int8", metavar="CALIBRATION", help="Quantize to int8 (ONNX only; weights in the reduced range [-64, 64], right with or without VNNI; melcnn 1.5x faster on an AVX2-only CPU, more with VNNI; check agreement with the float model), activation ranges from every window of up to --calibration-files of these audio files/folders (real music like the model's); repeatable. Default: off (float32)."),
    calibration_files: int = typer.Option(32, "--calibration-files", min=1, help="The most --int8 files read (evenly spread over the sorted list). Default: 32."),
) -> None:
    """Export a trained model as an ONNX file (float, or int8 with --int8) or a model package.

    SOURCE may also name a shipped package (default, melcnn)."""
    from melgenre.export import export_onnx_file
    from melgenre.package import save_package

    if fmt == "onnx":
        if estimate or hop is not None or windows is not None:
            raise typer.BadParameter("--estimate, --hop and --windows go with --format package")
        say(f"wrote {export_onnx_file(source, out, int8 or (), calibration_files)}")
    elif fmt == "package":
        if int8:
            raise typer.BadParameter("--int8 goes with --format onnx")
        card = save_package(source, out, estimate or (), hop=hop, windows=windows)
        say(f"wrote {card.with_suffix('.safetensors')} and {card}")
    else:
        raise typer.BadParameter("--format must be onnx or package")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Default: 127.0.0.1 (this machine only; 0.0.0.0 for all interfaces)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port. Default: 8000."),
    model: Path = typer.Option(None, "--model", "-m", help="A run directory, .ckpt, package .json or .onnx. Default: the packaged default model."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted upload in MB; larger ones get HTTP 413. Default: 20."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Genres listed in each response's 'top'. Default: 3."),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
    windows: str = typer.Option(None, "--windows", metavar="N|all", callback=windows_option, help=_WINDOWS_HELP),
    index: Path = typer.Option(None, "--index", "-i", help="A library index from `melgenre index` made with this model: the page and POST /predict also list the most similar tracks in it. Default: none."),
    similar_k: int = typer.Option(5, "--similar-k", min=1, help="Similar tracks listed with --index. Default: 5."),
    max_minutes: float = typer.Option(180.0, "--max-minutes", min=0.01, help="Longest accepted recording in minutes, read from the file's header before decoding; longer ones get HTTP 413 (only the windows a prediction scores are decoded, so a small upload of hours of audio costs what a song costs). Default: 180."),
) -> None:
    """Serve the model over HTTP: a web page at /, POST /predict, /health, /model, docs at /docs."""
    import uvicorn

    from melgenre.serve import create_app

    from melgenre.inference import load_model

    application = create_app(load_model(model, hop=hop, windows=windows), max_upload_mb=max_upload_mb, top_k=top_k,
                             index=index, similar_k=similar_k, max_minutes=max_minutes)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving model {application.state.model.model_id} at http://{shown}:{port}/ "
        f"(API docs at /docs; uploads up to {max_upload_mb:g} MB"
        + (f"; similar tracks from {index}, {len(application.state.index)} tracks" if index is not None else "")
        + "); Ctrl+C to stop")
    uvicorn.run(application, host=host, port=port)
