"""The ``melgenre`` command line: Typer commands that parse, call the library, and print.

Every command turns a :class:`~melgenre.errors.MelgenreError` into a one-line message on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from melgenre import __version__
from melgenre.errors import MelgenreError

err_console = Console(stderr=True)
console = Console()


class _Group(typer.core.TyperGroup):
    """Root command group: melgenre and OS errors become one line on stderr and exit code 2."""

    def invoke(self, ctx):  # noqa: D102
        try:
            return super().invoke(ctx)
        except MelgenreError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # read-only or full disk, no permission, a directory where a file belongs
            where = f"{exc.filename}: " if exc.filename else ""
            err_console.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


def _no_type_on_flags(display_type_rich):
    """Typer >= 0.2x prints a value type (`<bool>`) beside on/off flags, which take no value."""
    def display(self, ctx):
        return None if self.is_flag else display_type_rich(self, ctx)
    return display


typer.core.TyperOption.display_type_rich = _no_type_on_flags(typer.core.TyperOption.display_type_rich)

app = typer.Typer(
    cls=_Group,
    name="melgenre",
    help="Music-genre classification from mel-spectrogram images (CNN and YOLO-style backbones).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def say(message: str) -> None:
    """Print one unwrapped line (log-friendly; rich markup allowed)."""
    console.print(message, soft_wrap=True, highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        say(f"melgenre {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging. Default: info."),
) -> None:
    """melgenre: mel-spectrogram images -> genre classifiers."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("melgenre")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err_console, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


# -- data preparation --------------------------------------------------------------------------

def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


_AUGMENT_HELP = ("Also store variants of every track's audio as extra training rows, comma-separated: fast, slow "
                 "(6 % faster/slower), offset (windows 1.5 s later), bright, dark (treble boost/cut). Training uses "
                 "them; validation, test and CV scores use the original audio only. Each variant costs one more "
                 "pass over the corpus. Default: none.")


def _names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option as a tuple of names (empty for None)."""
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()


@app.command()
def prepare(
    data_dir: Path = typer.Argument(..., help="Corpus folder: GTZAN (genres/ or genres_original/) or <class>/<file> folders."),
    preset: str = typer.Option("v1", "--preset", "-p", help="Feature preset: v1, v2, fast, or a YAML file."),
    out: Path = typer.Option(None, "--out", "-o", help="HDF5 file to write. Default: <data_dir name>-<preset>.h5 in the current folder."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes. Default 0 = one per CPU core; 1 = no pool."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output made from other inputs or settings. Default: refuse."),
    compression: str = typer.Option("none", "--compression", help="Image compression: none, or gzip (files ~37% smaller, prepare ~1.5x slower; done by the workers). Default: none."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar. Default: on."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Compute the tracks as Ray tasks: a bare --ray (last, or before another option) starts/attaches a local Ray; --ray ADDRESS or --ray=ADDRESS joins a cluster. Needs Ray installed. Default: off (local worker processes)."),
    augment: str = typer.Option(None, "--augment", metavar="NAME,...", help=_AUGMENT_HELP),
) -> None:
    """Compute mel images of a corpus into one HDF5 file (parallel, atomic, resumable after a kill)."""
    from melgenre import features, store

    preset_obj = features.get_preset(preset)
    out = out or Path(f"{data_dir.resolve().name}-{preset_obj.name}.h5")
    if ray is not None:
        from melgenre.scale import prepare_ray

        report = prepare_ray(data_dir, preset_obj, out, address=ray, overwrite=overwrite, progress=progress,
                             compression=compression, augment=_names(augment))
    else:
        report = _resumable(out, store.prepare, data_dir, preset_obj, out, workers=workers or None,
                            overwrite=overwrite, progress=progress, compression=compression,
                            augment=_names(augment))
    _print_prepare_report(report, out, f"{out} — preset {preset_obj.name}, images "
                                       f"{report.image_shape[0]}×{report.image_shape[1]}")


def _resumable(out: Path, run, *args, **kwargs):
    """``run(*args, **kwargs)`` (prepare or embed into ``out``); an OS error (full or read-only
    disk, no permission) becomes one line that also says what is kept for the rerun."""
    try:
        return run(*args, **kwargs)
    except OSError as exc:
        parts = out.with_name(out.name + ".parts")
        kept = (f"; the {sum(1 for _ in parts.glob('*.npz'))} finished tracks are kept in {parts}/: rerun the "
                "same command to resume") if parts.is_dir() else ""
        raise MelgenreError(f"{exc.filename or out}: {exc.strerror or exc}{kept}") from None


def _print_prepare_report(report, out: Path, title: str) -> None:
    """The per-class table and summary lines of ``prepare`` and ``embed``."""
    table = Table(title=title)
    table.add_column("class")
    table.add_column("tracks", justify="right")
    table.add_column("rows", justify="right")
    for name in report.classes:
        table.add_row(name, str(report.tracks_per_class[name]), str(report.rows_per_class[name]))
    table.add_row("[bold]total", f"[bold]{report.n_tracks}", f"[bold]{report.n_rows}")
    console.print(table)
    if report.up_to_date:
        say(f"{out} is already up to date with these inputs; nothing computed.")
    else:
        say(f"computed {report.computed} tracks in {report.seconds:.1f} s "
            f"({report.tracks_per_second:.1f} tracks/s), resumed {report.resumed} from an earlier run")
    say(f"skipped {len(report.skipped)} undecodable file(s); {len(report.silent)} silent clip(s); "
        f"{report.ignored_files} non-audio file(s) ignored")
    for item in report.skipped:
        say(f"  [yellow]skipped[/] {item['path']}: {item['reason']}")
    for name in report.dropped_classes:
        say(f"  [yellow]dropped class[/] {name}: none of its files could be decoded")
    for track_id in report.silent:
        say(f"  [yellow]silent[/] {track_id}")


@app.command()
def embed(
    data_dir: Path = typer.Argument(..., metavar="DIR|FILE", help="Corpus folder (GTZAN genres/ or genres_original/, or <class>/<file> folders) -> an HDF5 store; or one audio file -> an .npz."),
    model: str = typer.Option("musicnn", "--model", "-m", help="Pretrained tagger: musicnn or musicnn_vgg. Default: musicnn."),
    pretrained: str = typer.Option("msd", "--pretrained", help="Tagger weights: msd (Million Song Dataset tags) or mtt (MagnaTagATune). Default: msd."),
    embedding: str = typer.Option(None, "--embedding", "-e", help="Embedding per 3-s patch: musicnn: penultimate (200), mean_pool, max_pool (753), pool (1506) or pool+penultimate (1706); musicnn_vgg: pool5 (256). Default: pool+penultimate (musicnn), pool5 (vgg)."),
    out: Path = typer.Option(None, "--out", "-o", help="File to write. Default: <DIR or FILE name>-<model>-<pretrained>.h5 (.npz for a FILE) in the current folder."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes (DIR). Default 0 = one per CPU core; 1 = no pool."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output made from other inputs or settings (DIR). Default: refuse."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar. Default: on."),
    augment: str = typer.Option(None, "--augment", metavar="NAME,...", help=_AUGMENT_HELP + " (DIR only)"),
) -> None:
    """Per-patch embeddings of a pretrained tagger for every track, in one HDF5 file (atomic, resumable).

    The file is a feature store like `prepare`'s (preset musicnn, one row per 3-s patch, rows of
    shape 1 x D), so `melgenre train` / `cv` train a genre head on it directly (configs/musicnn-linear.yaml).
    For one FILE: an .npz with `embeddings` (patches x D), `starts` (seconds), `mean` (D) and `spec`.
    """
    from melgenre import store

    spec = {"model": model, "pretrained": pretrained, **({"embedding": embedding} if embedding else {})}
    if data_dir.is_file():
        import json

        import numpy as np

        from melgenre.models.musicnn import embed_file
        from melgenre.utils import atomic_path

        result = embed_file(data_dir, spec)
        out = out or Path(f"{data_dir.stem}-{model}-{pretrained}.npz")
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, embeddings=result["embeddings"], starts=result["starts"], mean=result["mean"],
                     spec=np.array(json.dumps(result["spec"])))
        say(f"wrote {out}: {len(result['starts'])} patches × {result['spec']['size']} values "
            f"({result['spec']['embedding']} of {model}, {pretrained})")
        return
    out = out or Path(f"{data_dir.resolve().name}-{model}-{pretrained}.h5")
    report = _resumable(out, store.prepare, data_dir, "musicnn", out, workers=workers or None, overwrite=overwrite,
                        progress=progress, embed=spec, augment=_names(augment))
    _print_prepare_report(report, out, f"{out} — {model} ({pretrained}) embeddings of {report.image_shape[1]} values per patch")


@app.command()
def info(path: Path = typer.Argument(..., help="A feature file written by `melgenre prepare`.")) -> None:
    """Describe a feature file: shape, dtype, per-class counts, preset, size on disk."""
    import numpy as np

    from melgenre.store import MelStore

    with MelStore(path) as s:
        x = s.x
        tracks = s.tracks()
        say(f"[bold]{path}[/]  {_human_bytes(path.stat().st_size)} on disk, "
            f"{_human_bytes(x.size * x.dtype.itemsize)} in RAM (in_memory=True)")
        say(f"x: {x.shape} {x.dtype}, {x.compression or 'uncompressed'}; {len(tracks['id'])} tracks; "
            f"melgenre {s.attrs.get('melgenre_version')}; input hash {str(s.attrs.get('input_hash'))[:16]}…")
        rows = np.bincount(s.y, minlength=len(s.classes))
        tr = np.bincount(tracks["label"], minlength=len(s.classes))
        table = Table(title="per class")
        for col in ("class", "tracks", "rows"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for i, name in enumerate(s.classes):
            table.add_row(name, str(tr[i]), str(rows[i]))
        console.print(table)
        say("preset: " + ", ".join(f"{k}={v}" for k, v in s.preset.to_dict().items()))
        say(f"skipped at prepare time: {len(s.skipped)}; silent clips: {int(np.sum(tracks['silent']))}")
        for item in s.skipped:
            say(f"  {item['path']}: {item['reason']}")


@app.command()
def show(
    audio_path: Path = typer.Argument(..., metavar="AUDIO", help="An audio file (wav, flac, ogg, mp3, au, ...)."),
    preset: str = typer.Option("v1", "--preset", "-p", help="Feature preset: v1, v2, fast, or a YAML file."),
    out: Path = typer.Option(Path("spec.png"), "--out", "-o", help="PNG file to write."),
) -> None:
    """Draw the mel image of one clip, with time and frequency axes, to a PNG."""
    from melgenre.display import save_mel_figure

    say(f"wrote {save_mel_figure(audio_path, out, preset)}")


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write <class>/<class>.NNNNN.wav into."),
    classes: int = typer.Option(4, "--classes", "-c", help="Number of classes (2-12)."),
    per_class: int = typer.Option(10, "--per-class", "-n", help="Clips per class."),
    seconds: float = typer.Option(5.0, "--seconds", "-s", help="Length of each clip in seconds."),
    sr: int = typer.Option(22_050, "--sr", help="Sample rate of the files."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
) -> None:
    """Write synthetic clips whose classes differ in tempo, timbre, pitch range and noise colour."""
    from melgenre.synth import write_corpus

    try:
        paths = write_corpus(out_dir, classes, per_class, seconds, sr, seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    say(f"wrote {len(paths)} clips ({classes} classes × {per_class}, {seconds:g} s) to {out_dir}")


# --- models: list registered models, show one model's layer summary ---------------------------

models_app = typer.Typer(
    help="List the registered models, or show one model's layers, parameters and FLOPs.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the registered models with their parameter count (10 classes, default options)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from melgenre.models import count_params_of, list_models

    table = Table("model", "description", "default input", "params")
    for spec in list_models():
        shape = "x".join(map(str, spec.default_input))
        table.add_row(spec.name, spec.description, shape, f"{count_params_of(spec.name):,}")
    console.print(table)


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Registered model name (see `melgenre models`)."),
    input_shape: str = typer.Option(
        None, "--input", help="Input shape CxHxW without the batch axis. (default: the model's default input)"
    ),
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="Model option key=value (value read as YAML); repeatable (default: none)."
    ),
    depth: int = typer.Option(2, "--depth", help="Show submodules up to this many name levels."),
) -> None:
    """Print a model's layer table, parameter count, FLOPs and output shape."""
    from rich.table import Table

    from melgenre.models import parse_options, parse_shape, summarize_by_name

    shape = parse_shape(input_shape) if input_shape else None
    summary = summarize_by_name(name, shape, classes, depth, **parse_options(option or []))
    table = Table("layer", "type", "output shape", "params")
    for layer in summary.layers:
        table.add_row(layer.name, layer.type, str(layer.output_shape), f"{layer.params:,}")
    console.print(table)
    say(f"input shape:  {summary.input_shape}")
    say(f"output shape: {summary.output_shape} (logits)")
    say(f"parameters:   {summary.total_params:,} ({summary.trainable_params:,} trainable)")
    say(f"FLOPs:        {summary.flops / 1e9:.3f} GFLOP ({summary.flops:,}; 2 x multiply-accumulates)")


# -- training and evaluation -------------------------------------------------------------------

def _quiet_lightning() -> None:
    """Hide Lightning's start-up tips and hardware lines unless --verbose (warnings still show)."""
    import logging

    import lightning  # noqa: F401  (it sets its own level on import)

    if logging.getLogger("melgenre").level > logging.DEBUG:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def _experiment(config: Path, overrides: list[str] | None, accelerator: str | None, devices: str | None,
                num_nodes: int | None, strategy: str | None):
    from melgenre.config import load_config

    _quiet_lightning()
    extra = [f"train.{k}={v}" for k, v in (("accelerator", accelerator), ("devices", devices),
                                           ("num_nodes", num_nodes), ("strategy", strategy)) if v is not None]
    return load_config(config, [*(overrides or []), *extra])


_OVERRIDE_HELP = "Change a config value, e.g. --override optim.lr=3e-4 (repeatable; value read as YAML). Default: none."


@app.command()
def train(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    override: list[str] = typer.Option(None, "--override", "-O", help=_OVERRIDE_HELP),
    data: Path = typer.Option(None, "--data", "-d", help="HDF5 file from `melgenre prepare`. Default: data.path of the config."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder of run directories; the run goes to OUT/<name>."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run of the same name first. Default: resume an unfinished run."),
    accelerator: str = typer.Option(None, "--accelerator", help="Lightning accelerator (cpu, gpu, auto). Default: train.accelerator (cpu)."),
    devices: str = typer.Option(None, "--devices", help="Devices per node, e.g. 2 or auto. Default: train.devices (1)."),
    num_nodes: int = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP. Default: train.num_nodes (1)."),
    strategy: str = typer.Option(None, "--strategy", help="Lightning strategy, e.g. ddp. Default: train.strategy (auto)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars. Default: on."),
) -> None:
    """Train an experiment config; writes checkpoints, history, metrics, plots and report.md."""
    from melgenre.train import fit

    cfg = _experiment(config, override, accelerator, devices, num_nodes, strategy)
    run_dir = fit(cfg, out, data=data, overwrite=overwrite, progress=progress)
    _print_metrics(run_dir)


def _print_metrics(run_dir: Path) -> None:
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


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `melgenre train`."),
    data: Path = typer.Option(None, "--data", "-d", help="HDF5 file to evaluate on. Default: the run's data.path."),
    split: list[str] = typer.Option(["val", "test"], "--split", "-s", help="Split(s) to evaluate (repeatable)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint file. Default: RUN_DIR/checkpoints/best.ckpt, or last.ckpt where the run kept its last epoch."),
) -> None:
    """Evaluate a run's checkpoint: metrics at chunk and track level, plots, report.md."""
    from melgenre.train import evaluate_run

    evaluate_run(run_dir, checkpoint=checkpoint, splits=tuple(split), data=data)
    _print_metrics(run_dir)


@app.command()
def cv(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    folds: int = typer.Option(
        None, "--folds", "-k",
        help="Number of folds. Default: 5; with --groups fault_filtered, its 3 parts, which --folds must then "
             "equal; with a --groups file, 5 (at most one per group)."),
    override: list[str] = typer.Option(None, "--override", "-O", help=_OVERRIDE_HELP),
    data: Path = typer.Option(None, "--data", "-d", help="HDF5 file from `melgenre prepare`. Default: data.path of the config."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder of run directories; CV goes to OUT/<name>/."),
    groups: str = typer.Option(
        None, "--groups",
        help="Artist-disjoint CV: one fold per group of tracks, the group held out and scored. fault_filtered: "
             "the three artist-disjoint parts of GTZAN's fault-filtered split (Kereliuk, Sturm & Larsen 2015); "
             "tracks outside them train in every fold and are never scored; the final retrain uses all tracks. "
             "Or a .csv/.tsv file with a header and columns track (file stem, class/stem or path) and group "
             "(or artist), e.g. each track's artist: whole groups are dealt to --folds folds, balanced by size "
             "and class. Folds go to group<k>/, results to cv-groups.json, beside a stratified CV's. Default: "
             "none = stratified k-fold (same artists on both sides: optimistic)."),
    fixed_epochs: bool = typer.Option(
        False, "--fixed-epochs",
        help="Train every fold train.max_epochs epochs and score its last epoch (no early stopping, nothing "
             "chosen on the scored tracks: an unbiased estimate of the recipe); the final retrain trains as "
             "many. Folds go to fold<k>-last/, results to cv-last.json (group<k>-last/ and cv-groups-last.json "
             "with --groups). Default: early stopping on each validation fold and a final retrain for the mean "
             "best epoch."),
    final: bool = typer.Option(True, "--final/--no-final", help="After the folds, retrain the final model (and evaluate it on test, stratified). --no-final stops after the folds: an estimate only. Default: on."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars. Default: on."),
) -> None:
    """K-fold cross-validation (stratified, or artist-disjoint with --groups), then a final retrain."""
    from melgenre.train import cross_validate

    if folds is not None and folds < 2:
        raise typer.BadParameter("--folds must be at least 2")
    cfg = _experiment(config, override, None, None, None, None)
    result = cross_validate(cfg, folds, out, data=data, progress=progress, fixed_epochs=fixed_epochs, groups=groups,
                            final_retrain=final)
    acc, prec = result["val"]["track"]["accuracy"], result["val"]["track"]["macro_precision"]
    pooled = result["pooled"]
    say(f"{result['folds']}-fold CV, {result['protocol']}")
    say(f"folds (track level, {result['selection']}): val accuracy {acc['mean']:.3f} ± {acc['std']:.3f}, "
        f"macro precision {prec['mean']:.3f} ± {prec['std']:.3f}"
        + (f"; final retrain {result['final_epochs']} epochs" if final else "; no final retrain"))
    say(f"pooled over the folds ({pooled['n']} tracks), [95 % bootstrap intervals]: " + _pooled_summary(pooled))
    _say_group_intervals(pooled)
    if result["test"]:
        t = result["test"]["track"]
        say(f"final model on test: accuracy {t['accuracy']:.3f}, macro precision {t['macro_precision']:.3f}")
    stem = "cv-groups" if groups else "cv"
    say(f"details: {out / cfg.name / (stem + ('-last' if fixed_epochs else '') + '.md')}")


def _say_group_intervals(metrics: dict) -> None:
    """Print the intervals that resample whole groups (``group_intervals``: cv or score with a grouping file), if any."""
    from melgenre.evaluate import with_interval

    if "group_intervals" in metrics:
        gi = metrics["group_intervals"]
        say(f"resampling whole groups ({gi['groups']}; the intervals to quote when they are artists): accuracy "
            f"{with_interval(metrics['accuracy'], gi['accuracy'])}, balanced accuracy "
            f"{with_interval(metrics['balanced_accuracy'], gi['balanced_accuracy'])}")


def _pooled_summary(pooled: dict) -> str:
    """One line of pooled CV metrics with their bootstrap intervals (``melgenre.evaluate.pooled_metrics``)."""
    from melgenre.evaluate import with_interval

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


@app.command()
def fuse(
    cv_dirs: list[Path] = typer.Argument(..., metavar="CV_DIR", help="Two or more cross-validation folders (RUNS/<name>) of `melgenre cv` run with the same protocol on the same tracks."),
    groups: bool = typer.Option(False, "--groups", help="Fuse the artist-disjoint CVs (cv --groups): cv-groups*.json and group<k> folds. Default: the stratified ones."),
    fixed_epochs: bool = typer.Option(False, "--fixed-epochs", help="Fuse the --fixed-epochs CVs (the *-last folds). Default: the early-stopped ones."),
    weights: str = typer.Option(None, "--weights", help="Comma-separated weight per folder, e.g. 0.7,0.3. Default: equal weights."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON to OUT. Default: print only."),
) -> None:
    """Late fusion: average the out-of-fold track probabilities of several cross-validated recipes."""
    from melgenre.train import fuse_cv

    try:
        w = [float(v) for v in weights.split(",")] if weights else None
    except ValueError:
        raise typer.BadParameter(f"--weights must be comma-separated numbers, got {weights!r}") from None
    result = fuse_cv(cv_dirs, groups=groups, fixed_epochs=fixed_epochs, weights=w)
    say(f"fusion of {', '.join(map(str, result['recipes']))} ({result['protocol']}), weights {result['weights']}")
    for name, m in [("fusion", result["pooled"]), *result["each"].items()]:
        say(f"  {name}: {m['n']} tracks, " + _pooled_summary(m))
    _write_json(result, out)


_COMPARED = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
             ("balanced_accuracy_learnable", "balanced accuracy, classes every fold trained on"),
             ("macro_precision", "macro precision"), ("macro_f1", "macro F1"))


@app.command()
def compare(
    a: Path = typer.Argument(..., metavar="A", help="A cross-validation folder (RUNS/<name>) of `melgenre cv`, or an output folder of `melgenre score`."),
    b: Path = typer.Argument(..., metavar="B", help="Another of the same kind: a CV run with the same protocol on the same tracks, or a score of the same files."),
    groups: bool = typer.Option(False, "--groups", help="CV folders: compare the artist-disjoint CVs (cv --groups). Default: the stratified ones."),
    fixed_epochs: bool = typer.Option(False, "--fixed-epochs", help="CV folders: compare the --fixed-epochs CVs (the *-last folds). Default: the early-stopped ones."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON to OUT. Default: print only."),
) -> None:
    """Is A better than B? Paired bootstrap of two recipes' out-of-fold predictions (cv folders) or of two models' predictions of the same labelled files (score folders), with 95 % intervals."""
    if (a / "scores.json").is_file() or (b / "scores.json").is_file():
        from melgenre.evaluate import compare_scores

        if groups or fixed_epochs:
            raise typer.BadParameter("--groups and --fixed-epochs are for cross-validation folders, not score folders")
        result = compare_scores(a, b)
        title = (f"{result['model_ids'][0]} (A) against {result['model_ids'][1]} (B): the {result['common']} files "
                 "both scored")
    else:
        from melgenre.train import compare_cv

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


@app.command()
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


# -- prediction and export ---------------------------------------------------------------------

_MODEL_HELP = ("Model: a run directory, a .ckpt, a package .json/.safetensors, an exported .onnx, or a shipped "
               "model by name: default (the pretrained musicnn tagger with a genre head; `melgenre models` and "
               "docs/model-card.md say which recipe) or melcnn (the fast from-scratch CNN). Default: the "
               "installed default model (melgenre/weights/default.json).")


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


_WINDOWS_HELP = ("The most windows scored per file, spread evenly over a longer recording, of which only those "
                 "stretches are decoded (WAV, FLAC, OGG, Opus, MP3, AIFF seek; M4A is decoded whole): a 3-minute song "
                 "has 30 windows of the default model. 'all' scores every window. Default: the model card's "
                 "predict_windows, else as many as a 30-s clip has, at least 3 (the default model: 5; fast models: 18).")


@app.command("predict")
def predict_cmd(
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="Audio files and/or folders (searched recursively for audio files)."),
    model: Path = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Genres (tags with --tags) to list per file. Default: 3."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output on stdout: table, json or csv. Default: table."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: auto (ONNX Runtime when installed, else torch), onnx or torch. Default: auto."),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
    windows: str = typer.Option(None, "--windows", metavar="N|all", help=_WINDOWS_HELP),
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

    from melgenre.predict import TAG_DATASETS, expand_paths, load_model, load_tagger, predict_paths

    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter("--format must be table, json or csv")
    if tags is not None:
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
                err_console.print(f"[bold red]error:[/] {escape(str(path))}: {escape(error)}", highlight=False,
                                  soft_wrap=True)
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
                out.add_row(escape(str(path)), f"[red]error: {escape(error)}", "", "")
                continue
            flags = ", ".join(pred.flags)
            top = ", ".join(f"{escape(genre)} {p:.3f}" for genre, p in pred.top)
            if "not_music" in pred.flags:  # no genre headline for what does not sound like music
                top = f"[bold]not music?[/] [dim]nearest: {top}[/]"
            scored, total = len(pred.window_starts), getattr(pred, "windows_total", 0)  # tags: every window
            out.add_row(escape(str(path)), top, f"{scored} of {total}" if scored < total else str(scored), flags)
        console.print(out)
        _say_flags(f for _, pred, _ in results if pred is not None for f in pred.flags)
    if any(error is not None for _, _, error in results):
        raise typer.Exit(1)


@app.command()
def timeline(
    path: Path = typer.Argument(..., metavar="FILE", help="An audio file of any length."),
    out: Path = typer.Option(None, "--out", "-o", help="Also draw the timeline (stacked probabilities of every genre, segments marked) to this PNG. Default: none."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output on stdout: table (one line of segments) or json (the prediction with its segments). Default: table."),
    min_segment: float = typer.Option(None, "--min-segment", min=0.0, help="Shortest segment in seconds; shorter runs of windows are merged into a neighbour. Default: 10."),
    model: Path = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
) -> None:
    """Where the genre changes: per-window probabilities (smoothed over 3 windows) and segments such as 0:00-1:12 rock, 1:12-2:40 metal."""
    import dataclasses
    import json

    from melgenre import timeline as tl
    from melgenre.predict import load_model

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


@app.command()
def explain(
    path: Path = typer.Argument(..., metavar="FILE", help="An audio file; its first 30 s (the preset's duration) are explained, as `show` draws them."),
    genre: str = typer.Option(None, "--genre", "-g", help="The genre whose evidence is shown. Default: the most probable one."),
    method: str = typer.Option("gradcam", "--method", help="gradcam (Grad-CAM on the last conv stage; musicnn: its front end) or occlusion (model-agnostic: the probability drop when a patch is covered; one forward pass per patch, slower). Default: gradcam."),
    out: Path = typer.Option(Path("explain.png"), "--out", "-o", help="PNG to write: the mel image with the saliency overlaid. Default: explain.png."),
    model: Path = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
) -> None:
    """Saliency: where on the mel image the evidence for a genre lies (Grad-CAM or occlusion), drawn over the image."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from melgenre.explain import METHODS, explain_file, save_saliency_figure
    from melgenre.predict import load_model

    if method not in METHODS:
        raise typer.BadParameter(f"--method must be {' or '.join(METHODS)}")
    genre_model = load_model(model)  # torch: Grad-CAM and the evidence in words need the module
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
    """Each distinct prediction flag (``melgenre.predict.FLAGS``), in words, one line each."""
    from melgenre.predict import FLAGS

    for flag in dict.fromkeys(flags):
        console.print(f"{flag}: {FLAGS.get(flag, '')}", markup=False, highlight=False)


@app.command()
def score(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="Labelled audio: <class>/<file> folders (or GTZAN's genres/); every class must be one of the model's genres."),
    model: Path = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    out: Path = typer.Option(Path("score"), "--out", "-o", help="Folder for predictions.sqlite (resumable), scores.json, report.md and plots. Default: score/."),
    include_training: bool = typer.Option(False, "--include-training", help="Also score files named like tracks the model trained on (its card lists them), which flatters the figures. Default: leave them out."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: auto (ONNX Runtime when installed, else torch), onnx or torch. Default: auto."),
    workers: int = typer.Option(None, "--workers", "-w", min=0, help="Decoding processes (0: in this process). Default: the cores less one (0 on 2 cores)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr. Default: on."),
    groups: Path = typer.Option(None, "--groups", help="A .csv/.tsv file with columns track and group (or artist), e.g. each file's artist: also give intervals that resample whole artists, whose songs tend to be right or wrong together. Default: none."),
) -> None:
    """How right is a model on your labelled music? Accuracy, balanced accuracy with 95 % intervals, per-genre recall; files that fail are reported (exit code 1)."""
    from melgenre.evaluate import score_corpus, with_interval

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
    _say_group_intervals(t)
    if result["training_files"]:
        say(f"{result['training_files']} file(s) named like tracks the model trained on: "
            + ("scored too (--include-training): optimistic" if include_training else "left out"))
    for flag, f in result["flags"].items():
        say(f"flag {flag}: {f['files']} file(s), right on {f['right']}")
    from rich.markup import escape

    for path, reason in result["failed"]:
        err_console.print(f"[bold red]error:[/] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
    say(f"details: {out / 'report.md'}")
    if result["failed"]:
        raise typer.Exit(1)


def _library_summary(report) -> None:
    """Print what ``predict --out`` did: failures on stderr, counts per genre and timing on stdout."""
    from rich.markup import escape

    for path, reason in report.failed:
        err_console.print(f"[bold red]error:[/] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
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


@app.command("export")
def export_cmd(
    source: Path = typer.Argument(..., help="A run directory, a .ckpt inside one, a model package .json, or a shipped package's name."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (one file, card in its metadata) or package (.safetensors + .json card). Default: onnx."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: model.onnx, or the package path/stem. Required (no default)."),
    estimate: list[Path] = typer.Option(None, "--estimate", help="A cross-validation result of the model's recipe (cv-groups-last.json, cv-last.json, ...) to summarise in the package's card (protocol, pooled metrics, per-genre recall); repeatable; package only. Default: none."),
    hop: float = typer.Option(None, "--hop", help="Default seconds between prediction windows, stored in the package's card (predict --hop overrides it); package only. Default: the preset's hop."),
    windows: str = typer.Option(None, "--windows", metavar="N|all", help="The most windows a prediction scores per file, stored in the package's card as predict_windows (predict --windows overrides it); package only. Default: the source's, else as many as a 30-s clip has, at least 3."),
    int8: list[Path] = typer.Option(None, "--int8", metavar="CALIBRATION", help="Quantize to int8 (ONNX only; weights in the reduced range [-64, 64], right with or without VNNI; melcnn 1.5x faster on an AVX2-only CPU, more with VNNI; check agreement with the float model), activation ranges from every window of up to --calibration-files of these audio files/folders (real music like the model's); repeatable. Default: off (float32)."),
    calibration_files: int = typer.Option(32, "--calibration-files", min=1, help="The most --int8 files read (evenly spread over the sorted list). Default: 32."),
) -> None:
    """Export a trained model as an ONNX file (float, or int8 with --int8) or a model package.

    SOURCE may also name a shipped package (default, melcnn)."""
    from melgenre.predict import export_onnx_file, save_package

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


# -- similar tracks ------------------------------------------------------------------------------

@app.command("index")
def index_cmd(
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="Audio files and/or folders (searched recursively for audio files)."),
    out: Path = typer.Option(Path("library.h5"), "--out", "-o", help="Index file to create or update. Default: library.h5."),
    model: Path = typer.Option(None, "--model", "-m", help=_MODEL_HELP.replace("Default: the installed", "Default: the model OUT was built with, else the installed") + " An index holds one model's embeddings: another model is refused."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes. Default 0 = one per CPU core; 1 = no pool."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar. Default: on."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Embed the files as Ray tasks: a bare --ray (last, or before another option) starts/attaches a local Ray; --ray ADDRESS or --ray=ADDRESS joins a cluster (files and model readable at the same path on every node). Default: off (local worker processes)."),
) -> None:
    """Index a music library for `melgenre similar`: one embedding per track (incremental: a rerun embeds
    new and changed files only and drops files gone from the folders; resumable after a kill; atomic)."""
    from rich.markup import escape

    from melgenre.similar import build_index

    report = _resumable(out, build_index, paths, out, model=model, workers=workers or None, progress=progress, ray=ray)
    if report.up_to_date:
        say(f"{escape(str(out))} is up to date: {report.n_tracks} tracks, nothing to embed.")
    else:
        say(f"{escape(str(out))}: {report.n_tracks} tracks ({report.dim}-value embeddings of model {report.model_id}); "
            f"added {len(report.added)}, re-embedded {len(report.updated)} changed, removed {len(report.removed)} "
            f"gone, kept {report.unchanged}; computed {report.computed} in {report.seconds:.1f} s, "
            f"resumed {report.resumed} from an earlier run")
    for path in report.removed:
        say(f"  [yellow]removed[/] {escape(path)}: the file is gone")
    for item in report.skipped:
        say(f"  [yellow]skipped[/] {escape(item['path'])}: {escape(item['reason'])}")


@app.command()
def similar(
    file: Path = typer.Argument(..., help="An audio file (in the index or not)."),
    index: Path = typer.Option(Path("library.h5"), "--index", "-i", help="Index from `melgenre index`. Default: library.h5."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Neighbours to list. Default: 10."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output on stdout: table or json. Default: table."),
    model: Path = typer.Option(None, "--model", "-m", help="Model to embed a file that is not in the index with; it must be the index's. Default: the model the index was built with."),
    method: str = typer.Option("auto", "--method", help="Search: exact (NumPy), faiss (approximate HNSW; needs the ann extra) or auto (faiss above 1,000,000 tracks when installed). Default: auto."),
) -> None:
    """The tracks of an index most similar to FILE (cosine similarity of embeddings), best first; FILE itself is left out."""
    import json

    from rich.markup import escape

    from melgenre.similar import Index

    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    lib = Index(index)
    matches = lib.query_file(file, k=k, model=model, method=method)
    if fmt == "json":
        typer.echo(json.dumps({"query": str(file), "index": str(index), "model_id": lib.model_id,
                               "method": lib.method(method), "similar": [m.to_dict() for m in matches]}, indent=1))
        return
    out = Table(title=f"tracks like {escape(str(file))} ({len(lib)} in {escape(str(index))}, model {lib.model_id})")
    out.add_column("#", justify="right")
    out.add_column("similarity", justify="right")
    out.add_column("track", overflow="fold")
    for rank, m in enumerate(matches, start=1):
        out.add_row(str(rank), f"{m.score:.3f}", escape(m.path))
    console.print(out)


@app.command()
def calibrate(
    package: Path = typer.Argument(..., help="A model package .json (rewritten in place: its card gets 'calibration' and 'trust'; a <stem>.trust.npz is written beside it)."),
    cv_result: Path = typer.Option(..., "--cv", help="cv-groups-last.json of `melgenre cv` of the package's recipe (artist-disjoint; its fold runs are read from the same folder). Required (no default)."),
    data: Path = typer.Option(None, "--data", "-d", help="The feature file the folds and the package trained on. Default: the folds' data.path."),
    plot: Path = typer.Option(None, "--plot", help="Write a reliability diagram (PNG) there. Default: none."),
    report: Path = typer.Option(None, "--report", help="Write every figure and per-clip score (JSON) there. Default: none."),
    nonmusic_seconds: float = typer.Option(30.0, "--nonmusic-seconds", min=1.0, help="Length of the generated non-music clips (speech, noise, tones, silence, clicks) the AUROC is measured on. Default: 30 (as the GTZAN clips)."),
    false_flag_rate: float = typer.Option(0.02, "--false-flag-rate", min=0.001, max=0.5, help="Share of the out-of-fold dev clips (music) the 'not music' threshold flags: lower flags less music and catches less non-music. Default: 0.02."),
) -> None:
    """Calibrate a package's probabilities and set its "unsure" / "not music" thresholds on out-of-fold predictions."""
    from melgenre.calibrate import calibrate_package

    _quiet_lightning()
    result = calibrate_package(package, cv_result, data=data, plot=plot, report=report,
                               nonmusic_seconds=nonmusic_seconds, false_flag_rate=false_flag_rate)
    c, t, e = result["calibration"], result["trust"], result["evaluation"]
    say(f"temperature {c['temperature']:.3f} on {c['n']} out-of-fold tracks ({c['fitted_on']}): "
        f"ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f} ({c['ece_after_cross_fitted']:.3f} cross-fitted over the folds; {c['ece_bins']} bins)")
    say(f"those tracks as the package predicts them (its windows; the temperature changes no label): accuracy "
        f"{c['accuracy']:.3f}, balanced accuracy {c['balanced_accuracy']:.3f}")
    say(f"unsure below {t['unsure_below']:.3f} (flags {100 * t['unsure_rate_dev']:.0f} % of the dev clips); not music "
        f"above {t['not_music_above']:.2f} (false flags on dev clips {100 * t['false_flag_rate_dev']:.1f} %)")
    say(f"music vs generated non-music: AUROC {e['auroc_music_vs_nonmusic']:.3f}; {e['nonmusic_not_music']} of "
        f"{e['n_nonmusic']} non-music clips flagged not_music, {e['nonmusic_flagged']} not_music or unsure"
        + ("" if e["speech"] else " (no espeak-ng: no speech clips)"))
    written = [result["package"], Path(result["package"]).with_name(result["trust"]["reference"]["file"]), plot, report]
    say("wrote " + ", ".join(str(p) for p in written if p is not None))


@app.command()
def learn(
    source: Path = typer.Argument(..., metavar="SOURCE", help="<genre>/<file> folders, or a music folder whose files carry genre tags."),
    out: Path = typer.Option(..., "--out", "-o", help="The model package to write: OUT.json (card), OUT.safetensors, OUT.trust.npz. Required."),
    genres_from: str = typer.Option("auto", "--genres-from", help="Where the genres come from: tags (the first value of each file's genre tag; untagged files are left out), folders (<genre>/<file>), or auto: tags when any file has a genre tag, else folders. Default: auto."),
    mapping: Path = typer.Option(None, "--map", help="A from,to CSV/TSV (or YAML from: to) merging or renaming genres, e.g. Rap,Hip-Hop; an empty 'to' leaves that genre out. Spellings that differ only in case, spaces, hyphens or &/and (Hip-Hop, hip hop, HipHop) are merged without it. Default: none."),
    min_per_genre: int = typer.Option(5, "--min-per-genre", min=1, help="Leave out (and list) genres with fewer tracks. Default: 5."),
    groups: str = typer.Option(None, "--groups", help="A .csv/.tsv of track,artist (or track,group) rows, as for `melgenre cv --groups`, or fault_filtered, instead of the artist tags. Default: the artist tags (album artist when missing); without them the estimate is same-artist, labelled optimistic."),
    folds: int = typer.Option(5, "--folds", "-k", min=2, help="Cross-validation folds (fewer when there are fewer artists). Default: 5."),
    augment: str = typer.Option(",".join(("fast", "slow", "offset", "bright", "dark")), "--augment", metavar="NAME,...|none", help="Audio variants added as training rows (the default model's recipe): each costs one more embedding pass; none embeds 3-5x faster (on 2 cores, 200 clips: about 10 minutes in all against 2-3). Default: fast,slow,offset,bright,dark."),
    tag_prior: bool = typer.Option(None, "--tag-prior/--no-tag-prior", help="Add musicnn's own zero-shot logits for genres named like one of its 50 MSD tags (rock, jazz, Hip-Hop, electronic, folk, soul, ...). Default: on when at least one genre is."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Training epochs of each fold and of the final model. Default: 30 (the default model's)."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Fit the temperature and the unsure / not-music thresholds on the out-of-fold predictions (needs 50 of them: fewer leave the package uncalibrated). Default: on."),
    work: Path = typer.Option(None, "--work", help="Work folder: embedding cache, feature file, cross-validation runs, learn.json. A rerun reuses it. Default: OUT.learn/ beside the package."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Embedding worker processes. Default 0 = one per CPU core; 1 = no pool."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars. Default: on."),
) -> None:
    """Learn a genre model of YOUR genres from labelled music, with an honest (artist-disjoint) estimate.

    Then `melgenre predict LIB --out r.sqlite --model OUT.json` and `melgenre tag LIB --from r.sqlite --write`
    fill in the genre of the files that have none (files with a genre keep it).
    """
    import logging

    from melgenre.evaluate import with_interval
    from melgenre.learn import learn as learn_genres

    _quiet_lightning()
    if logging.getLogger("melgenre").level > logging.DEBUG:  # a line per epoch of six trainings: only with -v
        logging.getLogger("melgenre.train").setLevel(logging.WARNING)
    names = () if augment.strip().lower() == "none" else _names(augment)
    r = learn_genres(source, out, genres_from=genres_from, mapping=mapping, min_per_genre=min_per_genre, groups=groups,
                     folds=folds, augment=names, tag_prior=tag_prior, epochs=epochs, calibrate=calibrate, work=work,
                     workers=workers or None, progress=progress)
    counts = ", ".join(f"{c} {n}" for c, n in r.counts.items())
    say(f"{len(r.classes)} genres from {r.genres_from}, {sum(r.counts.values())} tracks: {counts}")
    for genre, spellings in r.merged.items():
        say(f"  merged spellings: {genre} <- {', '.join(spellings)}")
    if r.too_small:
        say(f"  left out, fewer than {min_per_genre} tracks: " + ", ".join(f"{c} {n}" for c, n in r.too_small.items()))
    if r.few_tracks:
        say(f"  few tracks (under 10), do not trust their figures: {', '.join(r.few_tracks)}")
    skipped = [f"{r.untagged} without a genre tag"] if r.genres_from == "tags" else []
    skipped += [f"{len(r.unreadable)} with unreadable tags", f"{len(r.undecodable)} undecodable"]
    skipped += [f"{r.mapped_out} mapped out"] if r.mapped_out else []
    say(f"  files left out: {', '.join(skipped)}" + (f"; {r.several_genres} files have several genres: the first was used"
                                                      if r.several_genres else ""))
    for path, reason in r.unreadable + [(u["path"], u["reason"]) for u in r.undecodable]:
        say(f"    [yellow]skipped[/] {path}: {reason}")
    if r.tag_prior:
        say("  zero-shot prior from musicnn's tags: " + ", ".join(f"{c} = {t[0]}" for c, t in r.tag_prior.items()))
    say(f"estimate, {r.protocol}:")
    say(f"  pooled over {len(r.folds)} folds ({r.pooled['n']} tracks), [95 % intervals]: " + _pooled_summary(r.pooled))
    if r.artist_disjoint:
        _say_group_intervals(r.pooled)
    say("  recall per genre [Wilson 95 %]: " + ", ".join(
        f"{c['class']} {with_interval(c['recall'], c['recall_interval'])}" for c in r.pooled["per_class"] if c["support"]))
    if r.untrained:
        say(f"  only one artist (some fold scored them untrained): {', '.join(r.untrained)}")
    if r.calibration:
        say(f"calibrated: temperature {r.calibration['temperature']:.2f}, unsure below {r.calibration['unsure_below']:.2f}, "
            f"not music above {r.calibration['not_music_above']:.2f}")
    else:
        say(f"not calibrated ({r.not_calibrated}): no 'unsure' flags, and 'not music' only for silence")
    say(f"wrote {r.package} (+ .safetensors{', .trust.npz' if r.calibration else ''}); work folder {r.work}/ "
        f"({r.embedded} files embedded now, the rest from its cache)")
    say("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items()))


# -- HTTP service --------------------------------------------------------------------------------

@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Default: 127.0.0.1 (this machine only; 0.0.0.0 for all interfaces)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port. Default: 8000."),
    model: Path = typer.Option(None, "--model", "-m", help="A run directory, .ckpt, package .json or .onnx. Default: the packaged default model."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted upload in MB; larger ones get HTTP 413. Default: 20."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Genres listed in each response's 'top'. Default: 3."),
    hop: float = typer.Option(None, "--hop", help=_HOP_HELP),
    windows: str = typer.Option(None, "--windows", metavar="N|all", help=_WINDOWS_HELP),
    index: Path = typer.Option(None, "--index", "-i", help="A library index from `melgenre index` made with this model: the page and POST /predict also list the most similar tracks in it. Default: none."),
    similar_k: int = typer.Option(5, "--similar-k", min=1, help="Similar tracks listed with --index. Default: 5."),
) -> None:
    """Serve the model over HTTP: a web page at /, POST /predict, /health, /model, docs at /docs."""
    import uvicorn

    from melgenre.serve import create_app

    from melgenre.predict import load_model

    application = create_app(load_model(model, hop=hop, windows=windows), max_upload_mb=max_upload_mb, top_k=top_k, index=index,
                             similar_k=similar_k)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving model {application.state.model.model_id} at http://{shown}:{port}/ "
        f"(API docs at /docs; uploads up to {max_upload_mb:g} MB"
        + (f"; similar tracks from {index}, {len(application.state.index)} tracks" if index is not None else "")
        + "); Ctrl+C to stop")
    uvicorn.run(application, host=host, port=port)


# -- benchmarks ----------------------------------------------------------------------------------

@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="A reduced run (under 2 minutes on 2 idle cores). Default: the full suite (a few minutes)."),
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="Folder for results.json and results.md. Default: bench/."),
    presets: str = typer.Option("v1,v2", "--presets", help="Comma-separated presets for preprocessing and features. Default: v1,v2."),
    data: Path = typer.Option(None, "--data", "-d", help="Corpus folder to take the audio files from. Default: synthetic 30-s clips."),
    n_files: int = typer.Option(None, "--files", "-n", min=1, help="Files of the preprocessing benchmark. Default: 200 (quick: 8)."),
    models: str = typer.Option(None, "--models", help="Comma-separated registered models to train. Default: all."),
    sections: str = typer.Option(None, "--sections", help="Comma-separated: preprocessing,features,training,inference,memory,trust,library,songs. Default: all."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="prepare's worker processes. Default 0 = one per CPU core."),
    songs: int = typer.Option(None, "--songs", min=1, help="Full-length MP3 songs of the songs section, each made of 6 clips of one genre of --data (or synthetic clips). Default: 40 (quick: 4)."),
    songs_dir: Path = typer.Option(None, "--songs-dir", help="Keep the songs section's MP3s in this folder and reuse them in later runs (encoding takes seconds a song). Default: a temp folder."),
    note: str = typer.Option("", "--note", help="Free text stored with the results (e.g. 'under load'). Default: none."),
) -> None:
    """Benchmark preprocessing, mel features, training, inference and memory on this machine."""
    import shlex
    import sys

    from melgenre.bench import SECTIONS, BenchSettings, run_bench

    def split(text: str | None) -> tuple[str, ...] | None:  # None: not given, the bench's default
        return _names(text) if text else None

    overrides = {k: v for k, v in (("presets", split(presets)), ("data", data), ("n_files", n_files),
                                   ("models", split(models)), ("sections", split(sections)),
                                   ("workers", workers or None), ("note", note), ("songs", songs),
                                   ("songs_dir", songs_dir)) if v is not None}
    if "sections" in overrides and set(overrides["sections"]) - set(SECTIONS):
        raise typer.BadParameter(f"--sections: choose from {', '.join(SECTIONS)}")
    if data is not None and not data.is_dir():
        raise typer.BadParameter(f"--data: {data} is not a folder")
    settings = BenchSettings.make(quick=quick, **overrides)
    command = shlex.join(["melgenre", *sys.argv[1:]]) if sys.argv and "melgenre" in sys.argv[0] else None
    run_bench(out, settings, log=say, command=command or f"melgenre bench{' --quick' if quick else ''}")
    say(f"wrote {out / 'results.json'} and {out / 'results.md'}")


@app.command("tag")
def tag_cmd(
    folder: Path = typer.Argument(None, metavar="DIR", help="Folder of audio files to tag (searched recursively). Not with --undo."),
    results: Path = typer.Option(None, "--from", help="Results database from `melgenre predict DIR --out results.sqlite`. Required unless --undo."),
    write: bool = typer.Option(False, "--write", help="Write the tags. Default: dry run, print what would change and write nothing."),
    min_confidence: float = typer.Option(0.5, "--min-confidence", min=0.0, max=1.0, help="Tag only files whose predicted genre has at least this probability. Default: 0.5 (more likely than all other genres together)."),
    keep_existing: bool = typer.Option(True, "--keep-existing/--replace", help="Leave files that already have a genre tag alone, or replace their genre. Default: --keep-existing."),
    log: Path = typer.Option(None, "--log", help="JSON-lines change log for --undo (appended to if it exists). Default: melgenre-tag-<date>-<time>.jsonl in the current folder."),
    undo_log: Path = typer.Option(None, "--undo", metavar="LOG", help="Restore the genre tags a --write run replaced, from its LOG; files changed since are refused and left alone. Default: off."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Decode each file before and after and keep the new one only if the samples are identical. Default: on."),
    keep_mtime: bool = typer.Option(False, "--keep-mtime", help="Keep each file's modification time. Default: off (the time of tagging, so library managers notice)."),
) -> None:
    """Write predicted genres into the files' own tags (ID3 TCON, Vorbis GENRE, MP4 ©gen), safely and reversibly.

    Never tags error rows, files flagged unsure, not_music or silent, files below --min-confidence, or files changed since the prediction. Exit code 1 when a file could not be written or restored.
    """
    import time

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from melgenre import tagging

    if undo_log is not None:
        if folder is not None or results is not None or write:
            raise typer.BadParameter("--undo LOG takes no DIR, --from or --write")
        undone = tagging.undo(undo_log, verify=verify, keep_mtime=keep_mtime)
        out = Table(title=f"undo {undo_log}")
        for column in ("file", "result"):
            out.add_column(column, overflow="fold")
        for u in undone:
            out.add_row(escape(str(u.path)), u.action if u.action != "refused" else f"[red]refused: {escape(u.reason)}")
        console.print(out)
        counts = {a: sum(u.action == a for u in undone) for a in ("restored", "already", "refused")}
        say(f"{counts['restored']} restored, {counts['already']} already as before, {counts['refused']} refused")
        if counts["refused"]:
            raise typer.Exit(1)
        return
    if folder is None or results is None:
        raise typer.BadParameter("give DIR and --from results.sqlite (or --undo LOG)")
    changes = tagging.plan(folder, results, min_confidence=min_confidence, replace=not keep_existing)
    planned = sum(c.action == "write" for c in changes)
    if write and planned:
        log = log or Path(f"melgenre-tag-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        bar = Progress(TextColumn("tag"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=err_console, transient=True, disable=planned < 2)
        with bar:
            task = bar.add_task("tag", total=len(changes))
            tagging.apply(changes, log, verify=verify, keep_mtime=keep_mtime, on_done=lambda _: bar.advance(task))
    out = Table(title=f"tag {folder}" + ("" if write else " (dry run: nothing written)"))
    for column in ("file", "genre now", "new genre", "action"):
        out.add_column(column, overflow="fold")
    for c in changes:
        action = {"write": "written" if write else "would write", "skip": f"skip: {escape(c.reason)}",
                  "failed": f"[red]not written: {escape(c.reason)}"}[c.action]
        name = c.path.relative_to(folder.resolve()) if c.path.is_relative_to(folder.resolve()) else c.path
        out.add_row(escape(str(name)), escape(c.old), escape(c.new), action)
    console.print(out)
    written, failed = (sum(c.action == a for c in changes) for a in ("write", "failed"))
    if write:
        say(f"{written} written, {len(changes) - written - failed} skipped, {failed} failed"
            + (f"; undo with: melgenre tag --undo {log}" if written else ""))
    else:
        say(f"dry run: {planned} of {len(changes)} files would be tagged; add --write to tag them")
    if failed:
        raise typer.Exit(1)


# -- `--ray [ADDRESS]`: an option whose value may be omitted ------------------------------------------

class _OptionalRayValueCommand(typer.core.TyperCommand):
    """Lets ``--ray`` stand without a value: a bare ``--ray`` (last, or followed by another option)
    is read as ``--ray=`` (empty address = local Ray). Typer's parser has no optional-value options."""

    def parse_args(self, ctx, args):
        """Rewrite a bare ``--ray`` to ``--ray=`` before Typer parses the arguments."""
        fixed, positional_only = [], False
        for i, arg in enumerate(args):
            if arg == "--":
                positional_only = True
            elif arg == "--ray" and not positional_only and (i + 1 == len(args) or args[i + 1].startswith("-")):
                arg = "--ray="
            fixed.append(arg)
        return super().parse_args(ctx, fixed)


for _info in app.registered_commands:
    if _info.callback in (prepare, predict_cmd, index_cmd):
        _info.cls = _OptionalRayValueCommand
