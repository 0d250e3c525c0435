"""Small helpers shared by several stages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
