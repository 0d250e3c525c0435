"""The audio files the benchmarks use: ``--data`` or synthetic 30-s clips."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from melgenre.bench.settings import BenchSettings


def _link_subset(tracks: Sequence, root: Path, n: int, dest: Path) -> Path:
    """``dest/<class>/<file>`` hard links (copies across devices) to ``n`` tracks, spread over classes."""
    from melgenre.datasets import discover

    by_class: dict[int, list] = {}
    for t in tracks:
        by_class.setdefault(t.label, []).append(t)
    picked, k = [], 0
    while len(picked) < n and any(k < len(v) for v in by_class.values()):
        picked += [v[k] for v in by_class.values() if k < len(v)][: n - len(picked)]
        k += 1
    for t in picked:
        target = dest / t.path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(t.path, target)
            except OSError:
                shutil.copy2(t.path, target)
    discover(dest)  # fail early on an unusable subset
    return dest


class Inputs:
    """The audio files the benchmarks use: ``--data`` or synthetic 30-s clips, made once."""

    def __init__(self, settings: BenchSettings, tmp: Path):
        from melgenre import synth
        from melgenre.datasets import discover

        self.tmp = tmp
        if settings.data is not None:
            self.pool = discover(settings.data)
            if not self.pool.tracks:
                raise ValueError(f"{settings.data}: no audio files")
            self.synthetic = False
        else:
            need = max([settings.n_files, settings.infer_files, 1]
                       + ([settings.library_files] if "library" in settings.sections else [])
                       + list(settings.memory_sizes if "memory" in settings.sections else []))
            n_classes = 4
            synth.write_corpus(tmp / "pool", n_classes=n_classes, per_class=math.ceil(need / n_classes),
                               seconds=settings.seconds, seed=0)
            self.pool = discover(tmp / "pool")
            self.synthetic = True

    def corpus(self, n: int) -> Path:
        """A folder of ``n`` files (fewer when the pool is smaller), as links into the pool."""
        dest = self.tmp / f"subset-{n}"
        if not dest.exists():
            _link_subset(self.pool.tracks, self.pool.root, n, dest)
        return dest

    def by_class(self) -> dict[str, list[Path]]:
        """Every file of the pool by class name."""
        out: dict[str, list[Path]] = {}
        for t in self.pool.tracks:
            out.setdefault(self.pool.classes[t.label], []).append(t.path)
        return out

    def files(self, n: int) -> list[Path]:
        """``n`` audio files (the first of each class in turn)."""
        from melgenre.datasets import discover

        return [t.path for t in discover(self.corpus(n)).tracks]
