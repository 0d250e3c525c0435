"""Memory: peak RSS of this process and of a process tree, and the ``memory`` section (peak RSS of a
``prepare`` subprocess and its workers)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from melgenre.bench.inputs import Inputs
from melgenre.bench.settings import BenchSettings


def status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), or None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so the next peak-RSS figure starts from a low level."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB since start or the last :func:`reset_peak_rss`."""
    kb = status_kb("self", "VmHWM")
    if kb is None:  # no /proc: the lifetime peak (kB on Linux, bytes on macOS)
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb / 1024 if sys.platform == "darwin" else kb
    return kb / 1024


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    children, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class TreeMemoryMonitor(threading.Thread):
    """Samples the RSS of a process and all its descendants until :meth:`stop`.

    ``peak_kb[pid]`` is each process's own peak (VmHWM, exact); ``total_peak_kb`` the largest
    sampled sum of the tree's RSS (shared pages counted once per process, so an upper bound).
    """

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb: dict[int, int] = {}
        self.total_peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample every ``interval`` seconds until stopped."""
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        """Read the tree's RSS once."""
        total = 0
        for p in _tree(self.pid):
            rss, hwm = status_kb(p, "VmRSS"), status_kb(p, "VmHWM")
            if rss is None:
                continue
            total += rss
            self.peak_kb[p] = max(self.peak_kb.get(p, 0), hwm or rss)
        self.total_peak_kb = max(self.total_peak_kb, total)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


# -- the memory section ---------------------------------------------------------------------------

_PREPARE_SCRIPT = ("import sys; from melgenre.store import prepare; "
                   "prepare(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), progress=False)")


def prepare_peak_rss(data: Path, preset: str, out: Path, workers: int) -> dict[str, Any]:
    """Run ``prepare`` in a subprocess and sample the RSS of it and its workers."""
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE_SCRIPT, str(data), preset, str(out), str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    monitor = TreeMemoryMonitor(proc.pid)
    monitor.start()
    _, err = proc.communicate()
    monitor.stop()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"prepare subprocess failed ({proc.returncode}): {err.decode()[-2000:]}")
    others = [kb for p, kb in monitor.peak_kb.items() if p != proc.pid]
    return {"seconds": round(seconds, 2),
            "peak_rss_mb_main": round(monitor.peak_kb.get(proc.pid, 0) / 1024, 1),
            "peak_rss_mb_largest_child": round(max(others, default=0) / 1024, 1),
            "children": len(others),
            "peak_rss_mb_total": round(monitor.total_peak_kb / 1024, 1),
            "output_mb": round(out.stat().st_size / 1024 ** 2, 1)}


def bench_memory(settings: BenchSettings, inputs: Inputs, log: Callable[[str], None]) -> list[dict]:
    """Peak RSS of ``prepare`` at each of ``memory_sizes`` tracks (should not grow with N)."""
    from melgenre.datasets import discover

    preset = settings.memory_preset or settings.presets[-1]
    workers = settings.workers or os.cpu_count() or 1
    out = []
    for n in settings.memory_sizes:
        root = inputs.corpus(n)
        tracks = len(discover(root).tracks)
        row = {"n_tracks": tracks, "preset": preset, "workers": workers,
               **prepare_peak_rss(root, preset, inputs.tmp / f"mem-{n}.h5", workers)}
        (inputs.tmp / f"mem-{n}.h5").unlink(missing_ok=True)
        log(f"memory: prepare {tracks} tracks ({preset}): main {row['peak_rss_mb_main']:.0f} MB, largest child "
            f"{row['peak_rss_mb_largest_child']:.0f} MB, whole tree {row['peak_rss_mb_total']:.0f} MB")
        out.append(row)
    if len(out) >= 2 and out[0]["peak_rss_mb_total"] > 0:
        ratio = out[-1]["peak_rss_mb_total"] / out[0]["peak_rss_mb_total"]
        for row in out:
            row["growth_vs_smallest"] = round(row["peak_rss_mb_total"] / out[0]["peak_rss_mb_total"], 3)
        log(f"memory: whole-tree peak at {out[-1]['n_tracks']} vs {out[0]['n_tracks']} tracks: {ratio:.2f}x")
    return out
