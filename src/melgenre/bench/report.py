"""Writing the results: ``results.json`` (everything) and ``results.md`` (tables of medians)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from melgenre.bench.songs import songs_markdown


def write_results(results: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json`` and ``results.md`` into ``out`` (each atomically)."""
    from melgenre.utils import atomic_path

    out = Path(out)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(results_markdown(results))


def _m(figure: dict[str, Any], digits: int = 1) -> str:
    return f"{figure['median']:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (medians; repeats are in results.json)."""
    m = results["machine"]
    lines = [f"# melgenre benchmarks{' (quick)' if results.get('quick') else ''}", "",
             f"- command: `{results.get('command', '')}`",
             f"- date: {results['created']}; total {results.get('seconds', 0):.0f} s",
             (f"- machine: {m['cores']} cores ({m.get('int8_cpu', m['cpu_model'])}), {m['memory_gb']} GB RAM, torch "
              f"{m['versions']['torch']} ({m['torch_threads']} threads), GPU: {', '.join(m['gpus']) or 'none'}"),
             (f"- load average at start {m['loadavg']}, at end {m.get('loadavg_end', '?')}"
              " (1, 5, 15 min; a value above the core count means other work shared the CPU)"),
             f"- inputs: {results.get('inputs', '')}"]
    if results.get("note"):
        lines.append(f"- note: {results['note']}")
    lines.append("- every figure is the median of its repeats (all repeats are in results.json)")
    if results.get("preprocessing"):
        lines += ["", "## 1. Preprocessing throughput (tracks/s, higher is better)", "",
                  ("| preset | files | naive loop (1 process) | prepare, 1 worker | prepare, workers (end to end) | "
                   "prepare, workers (steady state) | prepare / naive | target |"),
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["preprocessing"]:
            steady = r.get("prepare_steady_tracks_per_s")
            steady_txt = (f"{steady:.1f} (start-up {r['prepare_startup_s']:.1f} s)"
                          if steady and r.get("prepare_startup_s") is not None else "—")
            ratio = f"**{r['speedup']:.2f}×** end to end"
            if r.get("speedup_steady"):
                ratio += f", **{r['speedup_steady']:.2f}×** steady"
            lines.append(f"| {r['preset']} | {r['n_files']} | {_m(r['naive'])} | {_m(r['prepare_1_worker'])} | "
                         f"{_m(r['prepare'])} ({r['workers']} workers) | {steady_txt} | {ratio} | "
                         f"≥ {r['target_speedup']:g}× {'met' if r['meets_target'] else 'not met'} |")
    if results.get("features"):
        lines += ["", "## 2. Mel images of one 30-s track (ms per track, lower is better)", "",
                  "| preset | path | device | batch | ms / track | max abs diff vs numpy path |",
                  "|---|---|---|---|---|---|"]
        for r in results["features"]:
            diff = f"{r['max_abs_diff_vs_numpy']:.1e}" if r["path"] != "numpy" else "—"
            lines.append(f"| {r['preset']} | {r['path']} | {r['device']} | {r['batch']} | "
                         f"{_m(r['ms_per_track'])} | {diff} |")
    if results.get("training"):
        lines += ["", "## 3. Training throughput (forward + backward + Adam, random data)", "",
                  ("| model | options | input | batch | params | steps | s / step | samples / s | "
                   "peak RSS, MB (RSS before) |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["training"]:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
            steps = f"{r['steps']}{' (incl. warm-up)' if r['includes_warmup'] else ''}"
            lines.append(f"| {r['model']} | {opts} | {'×'.join(map(str, r['input']))} | {r['batch']} | "
                         f"{r['params']:,} | {steps} | {_m(r['step_s'], 2)} | {_m(r['samples_per_s'], 2)} | "
                         f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |")
    if results.get("inference"):
        inf = results["inference"]
        lines += ["", "## 4. Inference: one 30-s file end to end, per model", "",
                  (f"| model | backend | preset | hop (s) | windows | ms / file | decode | mel | model | target | "
                   f"batch of {inf['n_batch_files']} files (files/s) |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for entry in inf["models"]:
            for r in entry["backends"]:
                s = r["stages_ms"]
                lines.append(f"| {r['model_id']} | {r['backend']} | {r['preset']} | {r.get('hop_s') or '—'} | "
                             f"{r['windows_per_file']} | **{_m(r['latency_ms'])}** | {_m(s['decode'])} | "
                             f"{_m(s['mel'])} | {_m(s['model'])} | ≤ {entry['target_ms']:g} ms "
                             f"{'met' if r['meets_target'] else 'not met'} | {_m(r['batch_files_per_s'])} |")
    if results.get("memory"):
        lines += ["", "## 5. Memory of `prepare` (peak RSS, MB)", "",
                  ("| tracks | preset | workers | main process | largest child | whole process tree | "
                   "vs smallest N | seconds |"), "|---|---|---|---|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['n_tracks']} | {r['preset']} | {r['workers']} | {r['peak_rss_mb_main']:.0f} | "
                         f"{r['peak_rss_mb_largest_child']:.0f} | {r['peak_rss_mb_total']:.0f} | "
                         f"{r.get('growth_vs_smallest', 1.0):.2f}× | {r['seconds']:.1f} |")
    trust = results.get("trust")
    if trust and "skipped" not in trust:
        lines += ["", "## 6. Not music: the default model's novelty score", "",
                  f"- AUROC, out-of-fold dev clips ({trust['n_music']}) against generated non-music "
                  f"({trust['n_nonmusic']} clips of {trust['seconds']:g} s{'' if trust['speech'] else ', no speech'}): "
                  f"**{trust['auroc_music_vs_nonmusic']:.3f}** (target ≥ 0.95)",
                  f"- false-flag rate on the dev clips: {100 * trust['false_flag_rate_dev']:.1f} %",
                  f"- non-music flagged not_music: {trust['nonmusic_not_music']} of {trust['n_nonmusic']}; "
                  f"not_music or unsure: {trust['nonmusic_flagged']}"]
    if results.get("library"):
        lib = results["library"]
        lines += ["", f"## 7. Library job: {lib['n_files']} files (files/s, higher is better)", "",
                  ("| model | per file, torch | per file, onnx | library job (backend, workers) | vs per file torch | "
                   "vs per file, same backend | library job, int8 | target |"), "|---|---|---|---|---|---|---|---|"]
        for r in lib["models"]:
            floor = r["target"]["files_per_s"]
            target = f"≥ {r['target']['speedup']:g}×" + (f" and ≥ {floor:g} files/s" if floor else "")
            lines.append(f"| {r['model_id']} | {r['per_file']['torch']:.1f} | {r['per_file']['onnx']:.1f} | "
                         f"**{r['library']:.1f}** ({r['backend']}, {lib['workers']}) | {r['speedup_vs_torch']:.2f}× | "
                         f"{r['speedup_vs_same_backend']:.2f}× | "
                         f"{'**%.1f**' % r['library_int8'] if 'library_int8' in r else '—'} | "
                         f"{target} {'met' if r['meets_target'] else 'not met'} |")
    if results.get("songs"):
        lines += songs_markdown(results["songs"])
    if results.get("install"):
        r = results["install"]
        lines += ["", "## 9. The core install (`pip install melgenre`, a fresh venv)", "",
                  "| figure | value | goal |", "|---|---|---|",
                  f"| wheel | {r['wheel']} ({r['wheel_mb']:.1f} MB) | |",
                  f"| install time | {r['install_s']:.1f} s | |",
                  f"| site-packages | **{r['site_packages_mb']:.0f} MB** (torch absent: {r['torch_absent']}) | "
                  f"≤ {r['target_size_mb']:.0f} MB |",
                  f"| largest | {', '.join(f'{k} {v:.0f} MB' for k, v in r['largest_mb'].items())} | |",
                  f"| cold `melgenre predict one.mp3` | **{r['cold_predict_median_s']:.2f} s** (median; runs "
                  f"{', '.join(f'{t:.2f}' for t in r['cold_predict_s'])}) | ≤ {r['target_cold_predict_s']:.1f} s |",
                  f"| `import melgenre` | {r['import_melgenre_s']:.3f} s (bare interpreter {r['python_startup_s']:.3f} s) | |",
                  f"| `import beetsplug.melgenre` | {r['import_beets_plugin_s']:.3f} s | |"]
    return "\n".join(lines) + "\n"
