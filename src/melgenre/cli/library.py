"""Music-library commands of ``melgenre``: index a library, find similar tracks, write predicted genres
into the files' tags."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from melgenre.cli.common import MODEL_HELP, console, err_console, resumable, say, shown, windows_option


def index_cmd(
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="Audio files and/or folders (searched recursively for audio files)."),
    out: Path = typer.Option(Path("library.h5"), "--out", "-o", help="Index file to create or update. Default: library.h5."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP.replace("Default: the installed", "Default: the model OUT was built with, else the installed") + " An index holds one model's embeddings: another model is refused."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes. Default 0 = one per CPU core; 1 = no pool."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar. Default: on."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Embed the files as Ray tasks: a bare --ray (last, or before another option) starts/attaches a local Ray; --ray ADDRESS or --ray=ADDRESS joins a cluster (files and model readable at the same path on every node). Default: off (local worker processes)."),
    windows: str = typer.Option(None, "--windows", metavar="N|all", callback=windows_option, help="The most windows a track's embedding averages, spread over a longer track (only those stretches are decoded); all: every window. Another setting than OUT's embeds every track again. Default: what OUT was built with (all for an index from before sampling), else the model's (the default model: 5)."),
) -> None:
    """Index a music library for `melgenre similar`: one embedding per track (incremental: a rerun embeds
    new and changed files only and drops files gone from the folders; resumable after a kill; atomic)."""
    from melgenre.similar import build_index

    report = resumable(out, build_index, paths, out, model=model, workers=workers or None, progress=progress, ray=ray,
                       windows=windows)
    if report.up_to_date:
        say(f"{shown(out)} is up to date: {report.n_tracks} tracks, nothing to embed.")
    else:
        say(f"{shown(out)}: {report.n_tracks} tracks ({report.dim}-value embeddings of model {report.model_id}); "
            f"added {len(report.added)}, re-embedded {len(report.updated)} changed, removed {len(report.removed)} "
            f"gone, kept {report.unchanged}; computed {report.computed} in {report.seconds:.1f} s, "
            f"resumed {report.resumed} from an earlier run")
    for path in report.removed:
        say(f"  [yellow]removed[/] {shown(path)}: the file is gone")
    for item in report.skipped:
        say(f"  [yellow]skipped[/] {shown(item['path'])}: {shown(item['reason'])}")


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

    from melgenre.similar import Index

    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    lib = Index(index)
    matches = lib.query_file(file, k=k, model=model, method=method)
    if fmt == "json":
        typer.echo(json.dumps({"query": str(file), "index": str(index), "model_id": lib.model_id,
                               "method": lib.method(method), "similar": [m.to_dict() for m in matches]}, indent=1))
        return
    out = Table(title=f"tracks like {shown(file)} ({len(lib)} in {shown(index)}, model {lib.model_id})")
    out.add_column("#", justify="right")
    out.add_column("similarity", justify="right")
    out.add_column("track", overflow="fold")
    for rank, m in enumerate(matches, start=1):
        out.add_row(str(rank), f"{m.score:.3f}", shown(m.path))
    console.print(out)


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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from melgenre import tagging

    if undo_log is not None:
        if folder is not None or results is not None or write:
            raise typer.BadParameter("--undo LOG takes no DIR, --from or --write")
        undone = tagging.undo(undo_log, verify=verify, keep_mtime=keep_mtime)
        out = Table(title=f"undo {shown(undo_log)}")
        for column in ("file", "result"):
            out.add_column(column, overflow="fold")
        for u in undone:
            out.add_row(shown(u.path), u.action if u.action != "refused" else f"[red]refused: {shown(u.reason)}")
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
    out = Table(title=f"tag {shown(folder)}" + ("" if write else " (dry run: nothing written)"))
    for column in ("file", "genre now", "new genre", "action"):
        out.add_column(column, overflow="fold")
    for c in changes:
        action = {"write": "written" if write else "would write", "skip": f"skip: {shown(c.reason)}",
                  "failed": f"[red]not written: {shown(c.reason)}"}[c.action]
        name = c.path.relative_to(folder.resolve()) if c.path.is_relative_to(folder.resolve()) else c.path
        out.add_row(shown(name), shown(c.old), shown(c.new), action)
    console.print(out)
    for p in tagging.leftovers(folder, remove=write):
        say(f"{'removed' if write else 'left over'} {shown(p)}: the temp copy of a killed melgenre tag run"
            + ("" if write else " (--write removes it)"))
    written, failed = (sum(c.action == a for c in changes) for a in ("write", "failed"))
    if write:
        say(f"{written} written, {len(changes) - written - failed} skipped, {failed} failed"
            + (f"; undo with: melgenre tag --undo {log}" if written else ""))
    else:
        say(f"dry run: {planned} of {len(changes)} files would be tagged; add --write to tag them")
    if failed:
        raise typer.Exit(1)
