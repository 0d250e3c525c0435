"""Small helpers shared by several stages."""

from __future__ import annotations

import functools
import glob
import hashlib
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from melgenre.errors import MelgenreError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, else delete it.

    Readers never see a half-written file: either the old file or the complete new one.
    The temp name starts with a dot, so folder scans skip it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: The name of :func:`atomic_path`'s temp file: ``.NAME.PID.tmp``.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp")


def stale_temp_target(path: str | Path) -> Path | None:
    """The file that ``path``, a temp file of :func:`atomic_path` (``.NAME.PID.tmp``), was to replace,
    when the process that made it is gone (a ``kill -9`` skips the clean-up): then ``path`` is litter,
    safe to remove, since the rename that would have used it never happened. None for any other
    file, and for the temp file of a live process."""
    path = Path(path)
    m = _TEMP_NAME.fullmatch(path.name)
    return path.with_name(m["name"]) if m is not None and not _alive(int(m["pid"]), None) else None


@contextmanager
def private_tempdir(prefix: str) -> Iterator[Path]:
    """A temp folder ``PREFIX<pid>-<random>`` in the system's temp folder, removed on exit (as
    :class:`tempfile.TemporaryDirectory`). Folders of the same prefix whose process is gone (killed
    before its clean-up) are removed first, so a ``kill -9`` leaves litter only until the next run."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{glob.escape(prefix)}*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and old.is_dir() and not _alive(int(pid), None):
            shutil.rmtree(old, ignore_errors=True)  # another user's is not ours to remove: left alone
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield Path(folder)


def save_png(fig, out: str | Path) -> Path:
    """Write a matplotlib figure as a PNG to ``out`` (atomically, folders made) and close it; returns ``out``."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run is evaluated and predicted with: ``best.ckpt`` (best validation
    epoch), or ``last.ckpt`` where the run kept its last epoch (no validation split, or
    ``cv --fixed-epochs``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MelgenreError(f"{run_dir}: not a run directory (no config.yaml)")
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise MelgenreError(f"{run_dir}: no checkpoints/best.ckpt or last.ckpt")


# -- worker processes ----------------------------------------------------------------------------

#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_CHECK_S = 0.5


def file_sha256(path: str | Path, copy_to: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1-MB blocks (never whole into memory); with ``copy_to``,
    the bytes are also written there (a copy and its hash in one read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f, open(copy_to, "wb") if copy_to is not None else nullcontext() as out:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if out is not None:
                out.write(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def blas_controller() -> Any:
    """NumPy's BLAS thread pool. The mel's matrix products are small: on more than one BLAS thread
    they gain nothing, and the idle threads keep spinning against the model's own thread pool
    (about 1.5x the latency of a whole prediction on 2 cores)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _start_time(pid: int) -> str | None:
    """Start time of a live process (field 22 of ``/proc/PID/stat``); None when it is gone, a
    zombie, or there is no ``/proc`` (then :func:`_alive` falls back to signal 0)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    if start is not None:  # the start time tells a reused pid from the original process
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(pid: int, start: str | None) -> None:
    while _alive(pid, start):
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _worker_init(pid: int, start: str | None) -> None:
    """Initializer of :func:`worker_pool`'s processes: one BLAS thread, and exit once ``pid`` is gone.

    A worker is a child of the forkserver, not of the process that asked for it, so it never
    sees its real parent die (nor does ``PR_SET_PDEATHSIG`` fire): after a ``kill -9`` of that
    process, the workers, and through the pipes they hold the forkserver and the resource
    tracker, would run on. A daemon thread polls the parent and ends the worker instead.
    """
    from threadpoolctl import threadpool_limits

    # One process per core: BLAS threads on top only fight over the cores (2-3x slower under load).
    threadpool_limits(1, user_api="blas")
    threading.Thread(target=_watch_parent, args=(pid, start), daemon=True, name="melgenre-parent-watch").start()


def worker_pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    """A process pool (forkserver, ``preload`` imported once) whose workers use one BLAS thread
    and exit within about :data:`PARENT_CHECK_S` seconds when this process dies, even by ``kill -9``."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    pid = os.getpid()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(pid, _start_time(pid)))


def imap_bounded(pool: Executor, fn: Callable[..., Any], items: Iterable[Any], limit: int) -> Iterator[Any]:
    """``fn(item)`` of every item on ``pool``, yielded as they finish, with at most ``limit``
    submitted at once (so memory stays bounded whatever the number of items)."""
    pending = iter(items)

    def submit(n: int) -> set:
        return {pool.submit(fn, item) for _, item in zip(range(n), pending)}

    in_flight = submit(limit)
    while in_flight:
        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
        for fut in done:
            yield fut.result()
        in_flight |= submit(len(done))
