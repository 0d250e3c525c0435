"""Data commands of ``melgenre``: prepare and embed a corpus into a feature store, describe a store, draw
one clip's mel image, write synthetic clips."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from melgenre.cli.common import console, resumable, say, split_names


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
                             compression=compression, augment=split_names(augment))
    else:
        report = resumable(out, store.prepare, data_dir, preset_obj, out, workers=workers or None,
                           overwrite=overwrite, progress=progress, compression=compression,
                           augment=split_names(augment))
    _print_prepare_report(report, out, f"{out} — preset {preset_obj.name}, images "
                                       f"{report.image_shape[0]}×{report.image_shape[1]}")


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
    report = resumable(out, store.prepare, data_dir, "musicnn", out, workers=workers or None, overwrite=overwrite,
                       progress=progress, embed=spec, augment=split_names(augment))
    _print_prepare_report(report, out, f"{out} — {model} ({pretrained}) embeddings of {report.image_shape[1]} values per patch")


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


def show(
    audio_path: Path = typer.Argument(..., metavar="AUDIO", help="An audio file (wav, flac, ogg, mp3, au, ...)."),
    preset: str = typer.Option("v1", "--preset", "-p", help="Feature preset: v1, v2, fast, or a YAML file."),
    out: Path = typer.Option(Path("spec.png"), "--out", "-o", help="PNG file to write."),
) -> None:
    """Draw the mel image of one clip, with time and frequency axes, to a PNG."""
    from melgenre.display import save_mel_figure

    say(f"wrote {save_mel_figure(audio_path, out, preset)}")


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
