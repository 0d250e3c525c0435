"""The core install as a tagger user gets it (``melgenre bench --sections install``).

Builds melgenre's wheel from this source tree (or takes ``--wheel``), installs it alone into a fresh
virtual environment, and measures there: the install's wall time and its size in site-packages
(largest packages listed), the cold wall time of ``melgenre predict one.mp3`` (a new process each
time, the shipped default model, one 30-s clip as a 192-kbps MP3), and the import time of
``melgenre`` and of the beets plugin (after installing the ``beets`` extra, which is not counted in the
core's size). The issue-31 goals: at most 300 MB and at most 1.0 s on 2 cores.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from melgenre.bench.settings import BenchSettings

#: Goals of the core install (issue 31).
TARGET_SIZE_MB = 300.0
TARGET_COLD_PREDICT_S = 1.0

#: Cold runs of ``melgenre predict`` and of each import, a new process each (the median is reported).
COLD_RUNS = 5


def source_root() -> Path | None:
    """The source tree melgenre runs from (a folder with ``pyproject.toml`` above the package), or None
    when it is installed from a wheel."""
    import melgenre

    root = Path(melgenre.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "melgenre").is_dir() else None


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(map(str, args[:3]))} ... exited {done.returncode}: {' | '.join(tail)}")
    return done


def build_wheel(out: Path) -> Path:
    """Build melgenre's wheel from :func:`source_root` into ``out`` (``python -m build --wheel``)."""
    root = source_root()
    if root is None:
        raise RuntimeError("melgenre is not installed from a source tree: pass --wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(root)])
    return next(out.glob("melgenre-*.whl"))


def _tree_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def site_packages_sizes(site: Path, top: int = 8) -> tuple[float, dict[str, float]]:
    """Total MB of ``site`` and the ``top`` largest entries (packages with their ``.libs`` folders), MB."""
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", "__pycache__")) or entry.name.endswith(".pth"):
            continue
        name = entry.name.removesuffix(".libs")
        sizes[name] = sizes.get(name, 0.0) + (_tree_mb(entry) if entry.is_dir() else entry.stat().st_size / 1e6)
    biggest = dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top])
    return _tree_mb(site), {k: round(v, 1) for k, v in biggest.items()}


def _timed(args: list[str], runs: int, **kwargs: Any) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _run(args, **kwargs)
        times.append(time.perf_counter() - t0)
    return times


def one_mp3(clip: Path, out: Path) -> Path:
    """One clip as a 44.1-kHz stereo 192-kbps MP3 (as the songs section writes songs)."""
    from melgenre.bench.songs import write_song

    return write_song([clip], out)


def bench_install(settings: BenchSettings, clip: Path, tmp: Path, log: Callable[[str], None] = print,
                  wheel: Path | None = None) -> dict[str, Any]:
    """Install the core into a fresh venv under ``tmp`` and measure it (see the module docstring).

    ``clip`` is the audio of ``one.mp3``; ``wheel`` the wheel to install (default: built from the source tree).
    """
    import venv

    wheel = wheel or build_wheel(tmp / "dist")
    env_dir = tmp / "core-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    t0 = time.perf_counter()
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)])
    install_s = time.perf_counter() - t0
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    size_mb, biggest = site_packages_sizes(site)
    torch_absent = _run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"]
                        ).stdout.strip() == "True"
    log(f"core install: {install_s:.1f} s, {size_mb:.0f} MB in site-packages (goal <= {TARGET_SIZE_MB:.0f}); "
        f"largest {', '.join(f'{k} {v:.0f}' for k, v in list(biggest.items())[:4])}; torch absent: {torch_absent}")
    mp3 = one_mp3(clip, tmp / "one.mp3")
    melgenre = str(env_dir / "bin" / "melgenre")
    predict = _timed([melgenre, "predict", str(mp3), "--no-progress"], COLD_RUNS + 1, cwd=tmp)[1:]  # 1st: page cache
    base = _timed([str(python), "-c", "pass"], COLD_RUNS)
    import_melgenre = _timed([str(python), "-c", "import melgenre"], COLD_RUNS)
    log(f"cold `melgenre predict one.mp3`: median {statistics.median(predict):.2f} s of {COLD_RUNS} "
        f"(goal <= {TARGET_COLD_PREDICT_S:.1f}); `import melgenre` {statistics.median(import_melgenre):.3f} s "
        f"(a bare interpreter {statistics.median(base):.3f} s)")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{wheel}[beets]"])
    import_plugin = _timed([str(python), "-c", "import beetsplug.melgenre"], COLD_RUNS)
    log(f"`import beetsplug.melgenre` (beets extra): {statistics.median(import_plugin):.3f} s")
    return {
        "wheel": wheel.name, "wheel_mb": round(wheel.stat().st_size / 1e6, 1),
        "install_s": round(install_s, 1), "site_packages_mb": round(size_mb, 1), "largest_mb": biggest,
        "torch_absent": torch_absent, "target_size_mb": TARGET_SIZE_MB,
        "cold_predict_s": [round(t, 3) for t in predict], "cold_predict_median_s": round(statistics.median(predict), 3),
        "target_cold_predict_s": TARGET_COLD_PREDICT_S,
        "python_startup_s": round(statistics.median(base), 3),
        "import_melgenre_s": round(statistics.median(import_melgenre), 3),
        "import_beets_plugin_s": round(statistics.median(import_plugin), 3),
        "met": size_mb <= TARGET_SIZE_MB and statistics.median(predict) <= TARGET_COLD_PREDICT_S and torch_absent,
    }


__all__ = ["COLD_RUNS", "TARGET_COLD_PREDICT_S", "TARGET_SIZE_MB", "bench_install", "build_wheel",
           "site_packages_sizes", "source_root"]
