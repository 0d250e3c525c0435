"""Training commands of ``melgenre``: train a config, cross-validate it, calibrate a package, learn a
model of your own genres."""

from __future__ import annotations

from pathlib import Path

import typer

from melgenre.cli.common import quiet_lightning, say, split_names
from melgenre.cli.evaluation import pooled_summary, print_metrics, say_group_intervals


def _experiment(config: Path, overrides: list[str] | None, accelerator: str | None, devices: str | None,
                num_nodes: int | None, strategy: str | None):
    """The experiment config with ``--override`` values and the Lightning options given on the command line."""
    from melgenre.config import load_config

    quiet_lightning()
    extra = [f"train.{k}={v}" for k, v in (("accelerator", accelerator), ("devices", devices),
                                           ("num_nodes", num_nodes), ("strategy", strategy)) if v is not None]
    return load_config(config, [*(overrides or []), *extra])


_OVERRIDE_HELP = "Change a config value, e.g. --override optim.lr=3e-4 (repeatable; value read as YAML). Default: none."


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
    print_metrics(run_dir)


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
    from melgenre.cv import cross_validate

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
    say(f"pooled over the folds ({pooled['n']} tracks), [95 % bootstrap intervals]: " + pooled_summary(pooled))
    say_group_intervals(pooled)
    if result["test"]:
        t = result["test"]["track"]
        say(f"final model on test: accuracy {t['accuracy']:.3f}, macro precision {t['macro_precision']:.3f}")
    stem = "cv-groups" if groups else "cv"
    say(f"details: {out / cfg.name / (stem + ('-last' if fixed_epochs else '') + '.md')}")


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

    quiet_lightning()
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

    quiet_lightning()
    if logging.getLogger("melgenre").level > logging.DEBUG:  # a line per epoch of six trainings: only with -v
        logging.getLogger("melgenre.train").setLevel(logging.WARNING)
    names = () if augment.strip().lower() == "none" else split_names(augment)
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
    say(f"  pooled over {len(r.folds)} folds ({r.pooled['n']} tracks), [95 % intervals]: " + pooled_summary(r.pooled))
    if r.artist_disjoint:
        say_group_intervals(r.pooled)
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
