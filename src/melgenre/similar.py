"""Similar tracks: a library index of one embedding per track, and nearest-neighbour search.

A track's embedding is the mean, over the windows a prediction scores (at most the model's
``windows``, spread over a long recording, and only those stretches decoded: :mod:`melgenre.windows`),
of :meth:`melgenre.inference.GenreModel.embed_images` (the input of the model's last linear layer;
for the shipped musicnn default, its pooled musicnn embedding after the head's fixed
standardisation), L2-normalised, so the dot product of two embeddings is their cosine similarity.

Layout of an index file (``format_version`` 1, HDF5)::

    embeddings  (N, D) float32   L2-normalised, one row per track
    path        (N,)   str       absolute path of the audio file
    size        (N,)   int64     file size in bytes   } what a rerun compares to find
    mtime_ns    (N,)   int64     modification time    } changed files
    duration    (N,)   float64   seconds
    attrs       format_version, model_id, model (what to load it with), dim, melgenre_version,
                windows (the most windows a track's embedding averages, or "all"; absent: "all"),
                root (common folder of the paths), content_id (new on every write),
                skipped (JSON list of {path, reason, size, mtime_ns})

How ``melgenre index`` stays incremental, resumable and atomic: a rerun embeds only new files
and files whose size or modification time changed; files under an indexed folder that no longer
exist are removed from the index (and reported); entries from other folders are kept;
undecodable files are reported and not retried until they change. Each embedding is written by
a worker to ``<out>.parts/<key>.npz`` (temp file + rename, the machinery of
:mod:`melgenre.store`), keyed by the file's path, size and modification time, so a killed run
loses only the files in flight and a rerun reuses the rest. The new index is then written to a
temp file and renamed onto ``<out>``: readers see the old index or the new one, never half.

Search is exact (NumPy matrix products over blocks of rows, memory bounded by
:data:`BLOCK_BYTES` whatever the library size) up to :data:`ANN_THRESHOLD` tracks. Above it,
when the optional extra is installed (``pip install 'melgenre[ann]'``), a faiss HNSW graph
(inner product) answers instead; it is built on first use and cached beside the index as
``<index>.<content_id>.faiss``. faiss-cpu rather than hnswlib: faiss ships binary wheels for
current Pythons (hnswlib has none on PyPI, so it needs a compiler), is actively maintained by
Meta, and offers exact and approximate indexes behind one API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from melgenre import __version__, audio, store
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.pipeline import Predictor, track_embedding
from melgenre.utils import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PARTS_VERSION = 1  # layout of the index part files
#: Tracks above which ``method="auto"`` searches with faiss (when installed) instead of exactly.
ANN_THRESHOLD = 1_000_000
#: Bytes of embeddings read and multiplied at once by the exact search.
BLOCK_BYTES = 64 * 2**20
#: Indexes up to this many bytes of embeddings are held in memory; larger ones are read block by block.
MEMORY_BYTES = 1 * 2**30
METHODS = ("auto", "exact", "faiss")
ANN_HINT = "faiss is not installed: pip install 'melgenre[ann]' (or pip install faiss-cpu)"
_STR = h5py.string_dtype()
_FIELDS = ("path", "size", "mtime_ns", "duration")


@dataclass
class Match:
    """One neighbour: the track's path and its cosine similarity to the query."""

    path: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "score"}`` with the score to 6 decimals."""
        return {"path": self.path, "score": round(float(self.score), 6)}


@dataclass
class IndexReport:
    """What ``melgenre index`` did; printed by the CLI."""

    out: Path
    model_id: str
    dim: int
    n_tracks: int
    added: list[str]  # new files embedded by this run (or taken from parts of an interrupted one)
    updated: list[str]  # files re-embedded because their size or modification time changed
    removed: list[str]  # entries whose file is gone
    skipped: list[dict[str, Any]]  # [{"path", "reason", ...}] undecodable files
    unchanged: int
    resumed: int  # embeddings taken from an interrupted earlier run
    computed: int  # embeddings computed by this run
    seconds: float
    up_to_date: bool = False


# -- embeddings ----------------------------------------------------------------------------------

def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def embed_samples(model, y: np.ndarray, name: str = "<array>") -> np.ndarray:
    """The track embedding ``(D,)`` of mono samples at ``model.preset.sr``: the L2-normalised mean
    of the penultimate features of the windows :meth:`~melgenre.inference.GenreModel.predict` scores
    first (at most ``model.windows``, spread over a longer recording), from the prediction pipeline
    (:func:`melgenre.pipeline.track_embedding`). Raises :class:`MelgenreError` when it is all zeros."""
    return track_embedding(_embedder(model).predict(y, sr=model.preset.sr, name=name), name)


def embed_file(model, path: str | Path, name: str | None = None) -> tuple[np.ndarray, float]:
    """``(embedding (D,), duration in seconds)`` of an audio file (see :func:`embed_samples`); a long
    file is read only where its windows are."""
    label = name or str(path)
    pred = _embedder(model).predict(path, name=label)
    return track_embedding(pred, label), pred.duration


def _embedder(model) -> Predictor:
    """The model's pipeline for embeddings: its first sample of windows only (what an index records)."""
    return Predictor(model, recheck=False, embeddings=True)


def windows_attr(model) -> str:
    """How an index records the most windows a track's embedding averages: ``"all"`` or a number."""
    return "all" if model.windows is None else str(model.windows)


def _model_spec(model: str | Path | None) -> str:
    """What workers load the model with: a shipped name, or an absolute path (the same on every node)."""
    if model is None:
        return "default"
    path = Path(model)
    return str(path.resolve()) if path.exists() else str(model)


_MODELS: dict[str, Any] = {}  # per process: workers load each model once


def _worker_model(spec: str, windows: str = ""):
    """The model ``spec`` (loaded once per process) scoring at most ``windows`` ("all", a number, or ""
    for its card's default)."""
    key = f"{spec}\0{windows}"
    if key not in _MODELS:
        from melgenre.inference import load_model

        if multiprocessing.parent_process() is not None:  # a pool worker: one core each
            import torch

            torch.set_num_threads(1)
        _MODELS[key] = load_model(None if spec == "default" else spec, backend="torch", windows=windows or None)
    return _MODELS[key]


@dataclass
class _EmbedJob:
    path: str  # absolute
    part: str
    model: str  # spec for _worker_model
    size: int
    mtime_ns: int
    windows: str = ""  # for _worker_model


def _embed_job(job: _EmbedJob) -> dict[str, Any]:
    """Embed one file and write its part file. Runs in a worker (or a Ray task)."""
    model = _worker_model(job.model, job.windows)  # a model that fails to load fails the run, not the file
    info: dict[str, Any] = {"error": "", "duration": 0.0}
    embedding = np.zeros(0, dtype=np.float32)
    try:
        embedding, info["duration"] = embed_file(model, job.path)
    except AudioDecodeError as exc:
        info["error"] = exc.reason
    except MelgenreError as exc:
        info["error"] = str(exc).removeprefix(f"{job.path}: ")
    except OSError as exc:
        info["error"] = f"cannot read file ({exc.strerror or exc})"
    store._atomic_savez(Path(job.part), embedding=embedding, info=np.array(json.dumps(info)))
    return {"error": info["error"]}


def _read_part(path: Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    """``(embedding, info)`` of a part file, or None when it is missing or cut short."""
    try:
        with np.load(path) as part:
            return part["embedding"], json.loads(str(part["info"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _part_name(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()[:24] + ".npz"


# -- building ------------------------------------------------------------------------------------

def _scan(paths: Iterable[str | Path]) -> tuple[dict[str, tuple[int, int]], list[Path]]:
    """Audio files under ``paths`` as ``{absolute path: (size, mtime_ns)}``, and the folders given."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise MelgenreError(f"{p}: no such file or directory")
    found = {}
    for f in audio.expand_paths(paths):
        st = f.stat()
        found[str(f.resolve())] = (st.st_size, st.st_mtime_ns)
    return found, [p.resolve() for p in paths if p.is_dir()]


def _under(path: str, folders: list[Path]) -> bool:
    return any(Path(path).is_relative_to(d) for d in folders)


def build_index(paths: str | Path | Iterable[str | Path], out: str | Path, model: str | Path | None = None,
                workers: int | None = None, progress: bool = False, ray: str | None = None,
                windows: int | str | None = None) -> IndexReport:
    """Create or update a library index (incremental, resumable, atomic; see the module docstring).

    Parameters
    ----------
    paths : path or paths
        Audio files and folders (searched recursively for audio files).
    out : path
        The index ``.h5`` file; an existing one is updated.
    model : path or name, optional
        The model whose penultimate features are the embeddings (see
        :func:`melgenre.inference.load_model`). Default: the model an existing ``out`` was built
        with, else the shipped default model. An existing index made with another model is refused.
    workers : int, optional
        Worker processes (default: all CPU cores; 1 embeds in this process).
    progress : bool
        Show a progress bar.
    ray : str, optional
        Embed as Ray tasks: ``""`` starts/attaches a local Ray, else a cluster address (see
        :mod:`melgenre.scale`). The files must be readable at the same path on every node.
    windows : int or "all", optional
        The most windows a track's embedding averages, spread over a longer track (only those
        stretches are decoded); ``"all"``: every window. Default: what an existing ``out`` was built
        with (``"all"`` for an index from before sampling), else the model's ``windows``
        (:func:`melgenre.inference.load_model`). Other windows than an existing index's embed every
        track again.

    Returns
    -------
    IndexReport

    Raises
    ------
    MelgenreError
        A path is missing, ``out`` is not an index, or it was made with another model.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise MelgenreError(f"{out}: is a directory; --out takes the path of the .h5 index to write")
    old = Index(out) if out.exists() else None
    spec = str(old.attrs.get("model", "default")) if model is None and old is not None else _model_spec(model)
    if windows is None and old is not None:
        windows = old.windows
    setting = "" if windows is None else str(windows)
    genre_model = _worker_model(spec, setting)  # validates the model here, before any worker starts
    if old is not None and old.model_id != genre_model.model_id:
        raise MelgenreError(f"{out}: made with model {old.model_id}, not {genre_model.model_id}; "
                            "use the same --model or another --out")
    recorded = windows_attr(genre_model)
    stale = old is not None and old.windows != recorded  # embeddings of other windows: made again
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files, folders = _scan(paths)
    gone: list[str] = []
    if stale:  # every entry is embedded again, also those from other folders (dropped when no longer there)
        others = [p for p in old.paths if p not in files]
        there = [Path(p) for p in others if Path(p).is_file()]
        files |= _scan(there)[0] if there else {}
        gone = [p for p in others if p not in files]
    if not files and old is None:
        raise MelgenreError(f"no audio files in {', '.join(map(str, paths))}")
    known = {p: i for i, p in enumerate(old.paths)} if old is not None else {}
    old_skipped = {s["path"]: s for s in (old.skipped if old is not None else [])}
    keep, todo, updated, skipped = [], [], [], []
    removed = [p for p in known if (_under(p, folders) or p in gone) and p not in files]
    for p, (size, mtime) in files.items():
        if p in known:
            i = known[p]
            if not stale and (int(old.sizes[i]), int(old.mtimes[i])) == (size, mtime):
                keep.append(i)
                continue
            updated.append(p)
        elif p in old_skipped and (old_skipped[p]["size"], old_skipped[p]["mtime_ns"]) == (size, mtime):
            skipped.append(old_skipped[p])
            continue
        todo.append((p, size, mtime))
    removed_set = set(removed) | set(updated)
    keep += [i for p, i in known.items() if p not in files and p not in removed_set]  # other folders
    skipped += [s for p, s in old_skipped.items() if p not in files and not _under(p, folders)]
    if old is not None and not todo and not removed:
        return IndexReport(out, old.model_id, old.dim, len(old), [], [], [], skipped, len(keep), 0, 0,
                           time.perf_counter() - t0, up_to_date=True)

    parts = out.with_name(out.name + ".parts")
    parts_key = f"{genre_model.model_id}\0{PARTS_VERSION}\0{recorded}"
    store._open_parts_dir(parts, hashlib.sha256(parts_key.encode()).hexdigest())
    jobs = [_EmbedJob(p, str(parts / _part_name(p, size, mtime)), spec, size, mtime, setting)
            for p, size, mtime in todo]
    pending = [j for j in jobs if _read_part(Path(j.part)) is None]
    if ray is not None:
        from melgenre.scale import run_part_tasks

        run_part_tasks(pending, len(jobs), "index (ray)", ray, progress, compute=_embed_job)
    else:
        with store._progress(progress) as bar:
            task = bar.add_task("index", total=len(jobs), completed=len(jobs) - len(pending), rate="")
            for _ in store._run_jobs(pending, workers or os.cpu_count() or 1, bar, task, compute=_embed_job):
                pass

    dim = old.dim if old is not None else _model_dim(genre_model)
    new_rows, added = [], []
    for job in jobs:
        embedding, info = _read_part(Path(job.part))
        if info["error"]:
            skipped.append({"path": job.path, "reason": info["error"], "size": job.size, "mtime_ns": job.mtime_ns})
            continue
        new_rows.append((job, embedding, info["duration"]))
        if job.path not in removed_set:
            added.append(job.path)
    _write(out, old, sorted(keep), new_rows, skipped, genre_model.model_id, spec, dim, recorded)
    shutil.rmtree(parts, ignore_errors=True)
    return IndexReport(out, genre_model.model_id, dim, len(keep) + len(new_rows), added, updated, removed, skipped,
                       len(keep), len(jobs) - len(pending), len(pending), time.perf_counter() - t0)


def _model_dim(model) -> int:
    """Width of the model's embeddings (one forward pass on a silent window)."""
    images = model.clip_images(np.zeros(model.preset.sr, dtype=np.float32))[0]  # padded to one window
    return int(model.embed_images(images[:1]).shape[1])


def _write(out: Path, old: Index | None, keep: list[int], new_rows: list, skipped: list[dict[str, Any]],
           model_id: str, spec: str, dim: int, windows: str = "all") -> None:
    """Write the index atomically: the kept rows of ``old`` (copied block by block), then the new rows."""
    n = len(keep) + len(new_rows)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            emb = f.create_dataset("embeddings", shape=(n, dim), dtype=np.float32,  # ~1 MB chunks
                                   chunks=(max(1, min(n, 2**18 // max(dim, 1))), dim) if n else None)
            cols = {"path": [], "size": [], "mtime_ns": [], "duration": []}
            step = _block_rows(dim)
            for start in range(0, len(keep), step):
                rows = keep[start:start + step]
                emb[start:start + len(rows)] = old.embeddings_at(rows)
            if keep:
                for key in cols:
                    cols[key] = list(old.columns[key][keep])
            for k, (job, embedding, duration) in enumerate(new_rows):
                if embedding.shape != (dim,):
                    raise MelgenreError(f"{job.path}: embedding of {embedding.shape} values, the index has {dim}")
                emb[len(keep) + k] = embedding
                for key, value in zip(_FIELDS, (job.path, job.size, job.mtime_ns, duration)):
                    cols[key].append(value)
            f.create_dataset("path", data=np.array(cols["path"], dtype=object), dtype=_STR)
            f.create_dataset("size", data=np.array(cols["size"], dtype=np.int64))
            f.create_dataset("mtime_ns", data=np.array(cols["mtime_ns"], dtype=np.int64))
            f.create_dataset("duration", data=np.array(cols["duration"], dtype=np.float64))
            f.attrs.update({
                "format_version": FORMAT_VERSION, "model_id": model_id, "model": spec, "dim": dim,
                "windows": windows,
                "melgenre_version": __version__, "content_id": uuid.uuid4().hex,
                "root": os.path.commonpath([str(Path(p).parent) for p in cols["path"]]) if n else "",
                "skipped": json.dumps(skipped),
            })


def _block_rows(dim: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(dim, 1)))


# -- searching -----------------------------------------------------------------------------------

class Index:
    """A library index (see the module docstring), for nearest-neighbour queries.

    Examples
    --------
    >>> index = Index("library.h5")                                  # doctest: +SKIP
    >>> index.query_file("song.mp3", k=5)                            # doctest: +SKIP
    [Match(path='/music/a.flac', score=0.93), ...]
    >>> index.add(["new-music/"])                                    # doctest: +SKIP
    """

    def __init__(self, path: str | Path, in_memory: bool | None = None):
        self.path = Path(path)
        self._load(in_memory)

    def _load(self, in_memory: bool | None) -> None:
        if not self.path.is_file():
            raise MelgenreError(f"{self.path}: no such file")
        if not h5py.is_hdf5(self.path):
            raise MelgenreError(f"{self.path}: not an HDF5 file (expected an index from `melgenre index`)")
        try:
            with h5py.File(self.path, "r") as f:
                missing = [k for k in ("embeddings", *_FIELDS) if k not in f]
                if missing or "model_id" not in f.attrs:
                    raise MelgenreError(f"{self.path}: not a melgenre index (missing "
                                        f"{', '.join(missing) or 'model_id'})")
                version = int(f.attrs.get("format_version", 0))
                if version > FORMAT_VERSION:
                    raise MelgenreError(f"{self.path}: index format {version} is newer than this melgenre reads "
                                        f"({FORMAT_VERSION}); upgrade melgenre")
                self.attrs: dict[str, Any] = dict(f.attrs)
                self.columns = {"path": f["path"].asstr()[:], "size": f["size"][:], "mtime_ns": f["mtime_ns"][:],
                                "duration": f["duration"][:]}
                shape = f["embeddings"].shape
                if in_memory is None:
                    in_memory = shape[0] * shape[1] * 4 <= MEMORY_BYTES
                self._emb = f["embeddings"][:] if in_memory else None
        except OSError as exc:
            raise MelgenreError(f"{self.path}: unreadable HDF5 file ({str(exc).splitlines()[0]})") from None
        self.model_id: str = str(self.attrs["model_id"])
        self.dim: int = int(self.attrs["dim"])
        self.paths: np.ndarray = self.columns["path"]
        self.sizes: np.ndarray = self.columns["size"]
        self.mtimes: np.ndarray = self.columns["mtime_ns"]
        self._row = {p: i for i, p in enumerate(self.paths)}
        self._ann = None

    @property
    def windows(self) -> str:
        """The most windows each track's embedding averages: ``"all"`` or a number (as text); an index
        from before sampling has no record of it and averaged every window."""
        return str(self.attrs.get("windows", "all"))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, tracks={len(self)}, model={self.model_id!r}, dim={self.dim})"

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Files the index could not embed: ``[{"path", "reason", "size", "mtime_ns"}]``."""
        return json.loads(self.attrs.get("skipped", "[]"))

    def relative(self, path: str) -> str:
        """``path`` relative to the folder common to all indexed files (what the web page shows)."""
        root = self.attrs.get("root", "")
        return os.path.relpath(path, root) if root else path

    def row(self, path: str | Path) -> int | None:
        """The row of a file in the index (by its absolute path), or None."""
        return self._row.get(str(Path(path).resolve()))

    def embeddings_at(self, rows: Sequence[int] | slice) -> np.ndarray:
        """Embeddings of some rows as float32 ``(n, D)``."""
        if self._emb is not None:
            return self._emb[rows]
        with h5py.File(self.path, "r") as f:
            if isinstance(rows, slice):
                return f["embeddings"][rows]
            rows = np.asarray(rows, dtype=np.int64)
            return f["embeddings"][rows] if np.all(np.diff(rows) > 0) else \
                np.stack([f["embeddings"][i] for i in rows]).reshape(len(rows), self.dim)

    def _blocks(self):
        step = _block_rows(self.dim)
        for start in range(0, len(self), step):
            yield start, self.embeddings_at(slice(start, start + step))

    def model(self, model: str | Path | None = None):
        """The model to embed queries with: ``model``, or the one the index was built with. Raises
        :class:`MelgenreError` when its id is not the index's (embeddings of two models do not compare)."""
        spec = _model_spec(model) if model is not None else str(self.attrs.get("model", "default"))
        m = _worker_model(spec, self.windows)  # queries averaged as the tracks were
        check_model(self, m)
        return m

    def method(self, method: str = "auto") -> str:
        """The search ``auto`` resolves to: ``faiss`` above :data:`ANN_THRESHOLD` tracks when faiss is
        installed, else ``exact``."""
        if method not in METHODS:
            raise MelgenreError(f"unknown search method {method!r}; use one of {', '.join(METHODS)}")
        if method == "auto":
            return "faiss" if len(self) > ANN_THRESHOLD and faiss_available() else "exact"
        if method == "faiss" and not faiss_available():
            raise MelgenreError(ANN_HINT)
        return method

    def query(self, embedding: np.ndarray, k: int = 10, exclude: int | None = None,
              method: str = "auto") -> list[Match]:
        """The ``k`` tracks most similar (cosine) to an embedding ``(D,)``, best first.

        ``exclude`` is a row left out of the answer (the query's own row); ``method`` is
        ``auto``, ``exact`` or ``faiss`` (see :meth:`method`).
        """
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise MelgenreError(f"{self.path}: query embedding of {q.size} values, the index has {self.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = _normalise(q)
        extra = exclude is not None
        if self.method(method) == "faiss":
            rows, scores = self._faiss_search(q, k + extra)
        else:
            rows, scores = _exact_search(self._blocks(), q, k + extra)
        return [Match(str(self.paths[r]), float(s)) for r, s in zip(rows, scores) if r != exclude and r >= 0][:k]

    def query_file(self, path: str | Path, k: int = 10, model: str | Path | None = None,
                   method: str = "auto") -> list[Match]:
        """The ``k`` tracks most similar to an audio file, the file itself left out.

        A file already in the index and unchanged since is answered from its stored embedding;
        any other is embedded with :meth:`model` (``model`` or the index's own).
        """
        path = Path(path)
        if not path.is_file():
            raise MelgenreError(f"{path}: no such file")
        row = self.row(path)
        st = path.stat()
        if row is not None and (int(self.sizes[row]), int(self.mtimes[row])) == (st.st_size, st.st_mtime_ns):
            embedding = self.embeddings_at([row])[0]
        else:
            embedding = embed_file(self.model(model), path, name=str(path))[0]
        return self.query(embedding, k, exclude=row, method=method)

    def add(self, paths: str | Path | Iterable[str | Path], model: str | Path | None = None,
            workers: int | None = 1, progress: bool = False) -> IndexReport:
        """Add new and changed files to this index (see :func:`build_index`) and reload it."""
        report = build_index(paths, self.path, model, workers=workers, progress=progress)
        self._load(None)
        return report

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._ann is None:
            self._ann = _faiss_index(self)
        self._ann.hnsw.efSearch = max(64, 2 * k)
        scores, rows = self._ann.search(q[None], k)
        return rows[0], scores[0]


def check_model(index: Index, model) -> None:
    """Raise a one-line :class:`MelgenreError` unless ``model`` made ``index``'s embeddings."""
    if model.model_id != index.model_id:
        raise MelgenreError(f"{index.path}: made with model {index.model_id}, not {model.model_id}; "
                            "query it with the same --model")


def _exact_search(blocks, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by dot product over ``(start, block)`` pairs; keeps only ``k`` candidates between blocks."""
    best_rows = np.zeros(0, dtype=np.int64)
    best = np.zeros(0, dtype=np.float32)
    for start, block in blocks:
        scores = np.concatenate([best, block @ q])
        rows = np.concatenate([best_rows, np.arange(start, start + len(block))])
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        best, best_rows = scores[top], rows[top]
    order = np.lexsort((best_rows, -best))  # best first; ties by row
    return best_rows[order], best[order]


def faiss_available() -> bool:
    """True when the optional ANN library (faiss) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_index(index: Index):
    """The HNSW graph of ``index`` (inner product), from its cache file or built and cached now."""
    import faiss

    cache = index.path.with_name(f"{index.path.name}.{index.attrs['content_id']}.faiss")
    if cache.is_file():
        return faiss.read_index(str(cache))
    log.info("building the faiss HNSW graph of %d tracks (cached in %s)", len(index), cache)
    ann = faiss.IndexHNSWFlat(index.dim, 32, faiss.METRIC_INNER_PRODUCT)
    ann.hnsw.efConstruction = 80
    for _, block in index._blocks():
        ann.add(np.ascontiguousarray(block, dtype=np.float32))
    for stale in index.path.parent.glob(f"{index.path.name}.*.faiss"):
        stale.unlink(missing_ok=True)
    try:
        with atomic_path(cache) as tmp:
            faiss.write_index(ann, str(tmp))
    except OSError as exc:  # a read-only folder: search anyway, without the cache
        log.warning("cannot cache the faiss graph in %s: %s", cache, exc.strerror or exc)
    return ann


__all__ = ["ANN_THRESHOLD", "Index", "IndexReport", "Match", "build_index", "check_model", "embed_file",
           "embed_samples", "faiss_available"]
