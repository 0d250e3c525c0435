"""The ``melgenre bench`` command: benchmark the pipeline on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from melgenre.cli.common import say, split_names


def bench(
    quick: bool = typer.Option(False, "--quick", help="A reduced run (under 2 minutes on 2 idle cores). Default: the full suite (a few minutes)."),
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="Folder for results.json and results.md. Default: bench/."),
    presets: str = typer.Option("v1,v2", "--presets", help="Comma-separated presets for preprocessing and features. Default: v1,v2."),
    data: Path = typer.Option(None, "--data", "-d", help="Corpus folder to take the audio files from. Default: synthetic 30-s clips."),
    n_files: int = typer.Option(None, "--files", "-n", min=1, help="Files of the preprocessing benchmark. Default: 200 (quick: 8)."),
    models: str = typer.Option(None, "--models", help="Comma-separated registered models to train. Default: all."),
    sections: str = typer.Option(None, "--sections", help="Comma-separated: preprocessing,features,training,inference,memory,trust,library,songs,install. Default: all."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="prepare's worker processes. Default 0 = one per CPU core."),
    songs: int = typer.Option(None, "--songs", min=1, help="Full-length MP3 songs of the songs section, each made of 6 clips of one genre of --data (or synthetic clips). Default: 40 (quick: 4)."),
    songs_dir: Path = typer.Option(None, "--songs-dir", help="Keep the songs section's MP3s in this folder and reuse them in later runs (encoding takes seconds a song). Default: a temp folder."),
    wheel: Path = typer.Option(None, "--wheel", help="The install section's melgenre wheel, installed alone into a fresh venv. Default: built from this source tree (python -m build)."),
    songs_cv: Path = typer.Option(None, "--songs-cv", help="With --data GTZAN clips: also score songs of clips the model did not hear. A folder of `melgenre cv configs/musicnn-tagprior.yaml --groups fault_filtered --fixed-epochs` (group0-last, ...): the songs of each artist-disjoint part's clips go through the fold model that held that part out. Default: songs of training clips only."),
    note: str = typer.Option("", "--note", help="Free text stored with the results (e.g. 'under load'). Default: none."),
) -> None:
    """Benchmark preprocessing, mel features, training, inference and memory on this machine."""
    import shlex
    import sys

    from melgenre.bench import SECTIONS, BenchSettings, run_bench

    def split(text: str | None) -> tuple[str, ...] | None:  # None: not given, the bench's default
        return split_names(text) if text else None

    overrides = {k: v for k, v in (("presets", split(presets)), ("data", data), ("n_files", n_files),
                                   ("models", split(models)), ("sections", split(sections)),
                                   ("workers", workers or None), ("note", note), ("songs", songs),
                                   ("songs_dir", songs_dir), ("songs_cv", songs_cv), ("wheel", wheel)) if v is not None}
    if "sections" in overrides and set(overrides["sections"]) - set(SECTIONS):
        raise typer.BadParameter(f"--sections: choose from {', '.join(SECTIONS)}")
    if data is not None and not data.is_dir():
        raise typer.BadParameter(f"--data: {data} is not a folder")
    if songs_cv is not None and not (songs_cv / "group0-last").is_dir():
        raise typer.BadParameter(f"--songs-cv: {songs_cv} has no group0-last/ (melgenre cv ... --groups fault_filtered --fixed-epochs)")
    settings = BenchSettings.make(quick=quick, **overrides)
    command = shlex.join(["melgenre", *sys.argv[1:]]) if sys.argv and "melgenre" in sys.argv[0] else None
    run_bench(out, settings, log=say, command=command or f"melgenre bench{' --quick' if quick else ''}")
    say(f"wrote {out / 'results.json'} and {out / 'results.md'}")
