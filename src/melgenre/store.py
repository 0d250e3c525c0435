"""The HDF5 feature store: one file per (corpus, preset), written atomically and resumably.

Layout of a store (``format_version`` 1)::

    x            (N, H, W) float16   mel images in [0, 1]; one HDF5 chunk per row, uncompressed
                                     (default) or gzip + shuffle (``compression="gzip"``)
    y            (N,)      int16     class index
    track_id     (N,)      str       "<class>/<file stem>": rows of one track share it
    chunk_index  (N,)      int16     position of the row inside its track's variant (0 when unchunked)
    variant      (N,)      int8      0 = the original audio, k = the k-th name of attrs["augment"]
                                     (stores written before augmentation lack it: all originals)
    path         (N,)      str       source file, relative to the corpus root
    tracks/      one entry per decoded track: id, path, label, sha256, duration, source_sr,
                 channels, silent, first_row, n_rows
    attrs        format_version, classes (JSON), preset (JSON), melgenre_version,
                 input_hash, root, layout, n_tracks, skipped (JSON list of {path, reason}),
                 embedding (JSON, stores of `melgenre embed`), augment (JSON list, when used)

Why float16: images are in [0, 1], where float16 keeps ~3 significant digits (steps of at
most 2^-11 ≈ 0.0005, i.e. 0.04 dB of an 80 dB range), at half the size of float32. Memory
(uncompressed, = RAM when loaded with ``in_memory=True``): v1 346 KB per row (full GTZAN: 0.35
GB), v2 819 KB per row (0.82 GB), fast 33 KB per chunk × 18 chunks per track (0.60 GB).

How ``prepare`` stays resumable and atomic: each track is computed by a worker process that
writes its rows to ``<out>.parts/NNNNNN.npz`` (temp file + rename, so a part is either whole or
absent). Killing the job loses at most the tracks in flight; rerunning the same command reuses
every finished part (checked against a manifest of the inputs and the preset). When all parts
exist they are streamed, in corpus order, into ``<out>.tmp`` which is renamed to ``<out>``,
and the parts are deleted. Memory stays bounded: at most ``2 × workers`` tracks are in flight
and rows are streamed to disk one track at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from threadpoolctl import threadpool_limits

from melgenre import __version__, audio, features
from melgenre.datasets import Corpus, discover
from melgenre.errors import AudioDecodeError, StoreError
from melgenre.features import Preset
from melgenre.utils import atomic_path, imap_bounded, worker_pool

FORMAT_VERSION = 1
ROW_DTYPE = np.float16
COMPRESSIONS = ("none", "gzip")  # of ``x``; gzip = HDF5's byte shuffle + deflate
GZIP_LEVEL = 4
PARTS_VERSION = 2  # layout of the part files: bump to make a resumed run recompute old parts
_STR = h5py.string_dtype()
_TRACK_FIELDS = ("id", "path", "label", "sha256", "duration", "source_sr", "channels", "silent",
                 "first_row", "n_rows")


@dataclass
class PrepareReport:
    """What ``prepare`` did; printed by the CLI."""

    out: Path
    classes: list[str]
    tracks_per_class: dict[str, int]
    rows_per_class: dict[str, int]
    n_tracks: int
    n_rows: int
    image_shape: tuple[int, int]
    skipped: list[dict[str, str]]  # [{"path", "reason"}]
    silent: list[str]  # track ids of valid but silent clips
    ignored_files: int  # files without an audio suffix in the corpus folders
    resumed: int  # tracks taken from an interrupted earlier run
    computed: int  # tracks computed by this run
    seconds: float
    up_to_date: bool = False  # the output already existed with the same inputs
    dropped_classes: list[str] = field(default_factory=list)  # class folders without one decodable file

    @property
    def tracks_per_second(self) -> float:
        """Tracks computed per second of wall time (0 when nothing was computed)."""
        return self.computed / self.seconds if self.computed and self.seconds > 0 else 0.0


# -- worker side -------------------------------------------------------------------------------

@dataclass
class _Job:
    index: int
    path: str
    name: str  # for messages: the path relative to the corpus root
    preset: dict[str, Any]
    part: str
    compression: str = "none"
    embed: dict[str, Any] | None = None  # rows are a tagger's embeddings (see melgenre embed)
    augment: tuple[str, ...] = ()  # extra variants of the audio (melgenre.audio.AUGMENTATIONS)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _chunk_bytes(row: np.ndarray, compression: str) -> bytes:
    """One row of ``x`` as HDF5 stores its chunk, so the parent writes it as it is: the raw
    bytes, or for gzip a byte shuffle then deflate (what h5py's ``shuffle=True,
    compression="gzip"`` would do)."""
    if compression == "none":
        return np.ascontiguousarray(row).tobytes()
    shuffled = np.ascontiguousarray(row).view(np.uint8).reshape(-1, row.itemsize).T.tobytes()
    return zlib.compress(shuffled, GZIP_LEVEL)


def _compute_track(job: _Job) -> dict[str, Any]:
    """Decode one file, compute and compress its rows, write its part file. Runs in a worker."""
    preset = features.get_preset(job.preset)
    info: dict[str, Any] = {"sha256": "", "error": "", "duration": 0.0, "source_sr": 0, "channels": 0,
                            "silent": False}
    rows: list[bytes] = []
    variants = np.zeros(0, dtype=np.int8)
    try:
        data = Path(job.path).read_bytes()
        info["sha256"] = hashlib.sha256(data).hexdigest()
        clip = audio.load(data, sr=preset.sr, name=job.name)
        info.update(duration=clip.duration, source_sr=clip.source_sr, channels=clip.source_channels,
                    silent=clip.silent)
        blocks = []
        for name in ("", *job.augment):  # the original first, then each variant
            y = audio.augment(clip.samples, preset.sr, name) if name else clip.samples
            images = features.mel_images(features.fit_to_preset(y, preset), preset)
            if job.embed is not None:
                from melgenre.models.musicnn import embed_images

                images = embed_images(images, job.embed)[:, None, :]  # (chunks, 1, D)
            blocks.append(images)
        variants = np.concatenate([np.full(len(b), v, dtype=np.int8) for v, b in enumerate(blocks)])
        rows = [_chunk_bytes(img, job.compression) for b in blocks for img in b.astype(ROW_DTYPE)]
    except AudioDecodeError as exc:
        info["error"] = exc.reason
    except OSError as exc:
        info["error"] = f"cannot read file ({exc.strerror or exc})"
    _atomic_savez(Path(job.part), rows=np.frombuffer(b"".join(rows), dtype=np.uint8),
                  sizes=np.array([len(r) for r in rows], dtype=np.int64), info=np.array(json.dumps(info)),
                  variants=variants)
    return {"index": job.index, "error": info["error"]}


def _read_part(path: Path) -> tuple[list[bytes], dict[str, Any]]:
    """The compressed rows and the info of a part file (``info["variants"]``: each row's variant)."""
    with np.load(path) as part:
        data, ends = part["rows"].tobytes(), np.cumsum(part["sizes"])
        rows = [data[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
        info = json.loads(str(part["info"]))
        info["variants"] = part["variants"] if "variants" in part.files else np.zeros(len(rows), dtype=np.int8)
        return rows, info


# -- parent side -------------------------------------------------------------------------------

def _plan_hash(corpus: Corpus, preset: Preset, compression: str, embed: dict[str, Any] | None = None,
               augment: tuple[str, ...] = ()) -> str:
    """Cheap identity of a prepare job (file names, sizes, mtimes, preset, compression, embedder,
    augmentations) for resuming."""
    h = hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True).encode())
    h.update(json.dumps([corpus.classes, compression] + ([embed] if embed else [])
                        + ([{"augment": list(augment)}] if augment else [])).encode())
    for t in corpus.tracks:
        st = t.path.stat()
        h.update(f"{t.track_id}\0{t.label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _input_hash(preset: Preset, classes: list[str], entries: list[tuple[str, str]]) -> str:
    """Content identity of a store: preset, classes and every (track id, file sha256)."""
    h = hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    for track_id, sha in entries:
        h.update(f"{track_id}\0{sha}\n".encode())
    return h.hexdigest()


def _open_parts_dir(parts: Path, plan: str) -> None:
    manifest = parts / "manifest.json"
    if parts.is_dir():
        try:
            old = json.loads(manifest.read_text())
            same = old.get("plan") == plan and old.get("parts_version") == PARTS_VERSION
        except (OSError, ValueError):
            same = False
        if same:
            return
        shutil.rmtree(parts)  # parts of a different corpus or preset: start over
    parts.mkdir(parents=True)
    manifest.write_text(json.dumps({"plan": plan, "parts_version": PARTS_VERSION, "melgenre_version": __version__}))


def _part_ok(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        _read_part(path)
        return True
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # BadZipFile: cut short
        return False


def _run_jobs(jobs: list, workers: int, progress: Progress | None, task, compute=None) -> Iterator[dict]:
    """Run ``compute(job)`` (default :func:`_compute_track`; a module-level function that writes
    ``job.part``) for every job in a process pool with at most ``2 × workers`` in flight (bounded memory)."""
    compute = compute or _compute_track
    if workers <= 1:
        with threadpool_limits(1, user_api="blas"):
            for job in jobs:
                yield compute(job)
                if progress is not None:
                    progress.advance(task)
        return
    with worker_pool(workers, list(dict.fromkeys(["melgenre.store", compute.__module__]))) as pool:
        for result in imap_bounded(pool, compute, jobs, 2 * workers):
            yield result
            if progress is not None:
                progress.advance(task)


def _take(it: Iterator, n: int) -> list:
    return [job for _, job in zip(range(n), it)]


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def prepare(
    data: str | Path | Corpus,
    preset: str | Path | Preset,
    out: str | Path,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    compression: str = "none",
    embed: dict[str, Any] | None = None,
    augment: Sequence[str] = (),
    cache: str | Path | None = None,
) -> PrepareReport:
    """Compute the mel images of a corpus into one HDF5 store (atomic, resumable, parallel).

    Parameters
    ----------
    data : path or Corpus
        A corpus folder (see :func:`melgenre.datasets.discover`) or a discovered corpus.
    preset : name, YAML path or Preset
        Feature preset (``v1``, ``v2``, ``fast`` or your own).
    out : path
        The ``.h5`` file to write.
    workers : int, optional
        Worker processes (default: all CPU cores; 1 computes in this process).
    overwrite : bool
        Replace an existing ``out`` made from other inputs (default: refuse).
    progress : bool
        Show a progress bar.
    compression : {"none", "gzip"}
        Compression of the images. ``gzip`` (shuffle + deflate level 4, done by the workers)
        makes files ~37 % smaller but costs about as much CPU as the mel spectrogram itself;
        float16 images in [0, 1] compress poorly, so the default is ``none``.
    embed : dict, optional
        Store a pretrained tagger's embedding of each chunk instead of its image:
        ``{"model": "musicnn", "pretrained": "msd", "embedding": "pool+penultimate"}`` (see
        :func:`melgenre.models.musicnn.embed_images`); rows are then ``(1, D)``.
    augment : sequence of str
        Names of :data:`melgenre.audio.AUGMENTATIONS`: each adds a variant of every track's audio
        as extra rows (column ``variant``: 0 = original, ``k`` = the k-th name). Training uses
        every variant of its tracks; validation, test and cross-validation scores use the
        originals only (:class:`melgenre.data.MelDataModule`).
    cache : path, optional
        Keep each track's rows in this folder as a part file named by the file's path, size and
        modification time and the settings, and reuse them in any later run, whatever its classes,
        labels or other files (``melgenre learn``: a new mapping of genres embeds nothing again).
        Default: parts live in ``<out>.parts/`` only until the file is assembled.

    Returns
    -------
    PrepareReport
        Counts per class, skipped (corrupt) files with reasons, silent clips, timing.
    """
    t0 = time.perf_counter()
    job = start_prepare(data, preset, out, overwrite, t0, compression, embed, augment, cache)
    if isinstance(job, PrepareReport):
        return job
    with _progress(progress) as bar:
        what = f"embed {embed['model']}" if embed else f"prepare {job.preset.name}"
        task = bar.add_task(what, total=len(job.jobs), completed=job.resumed, rate="")
        started = time.perf_counter()
        for n, _ in enumerate(_run_jobs(job.todo, workers or os.cpu_count() or 1, bar, task), start=1):
            bar.update(task, rate=f"{n / (time.perf_counter() - started):.1f} tracks/s")
    return finish_prepare(job, t0)


@dataclass
class PrepareJob:
    """A prepare run between planning and assembly: what to compute and where parts go."""

    corpus: Corpus
    preset: Preset
    out: Path
    plan: str
    parts: Path
    jobs: list[_Job]
    todo: list[_Job]  # jobs whose part file is not there yet
    compression: str
    embed: dict[str, Any] | None = None
    augment: tuple[str, ...] = ()
    cached: bool = False  # parts live in a cache folder that outlives the run (see prepare's cache)

    @property
    def resumed(self) -> int:
        """Tracks whose parts an earlier, interrupted run left."""
        return len(self.jobs) - len(self.todo)


def start_prepare(data: str | Path | Corpus, preset: str | Path | Preset, out: str | Path, overwrite: bool,
                  t0: float, compression: str = "none",
                  embed: dict[str, Any] | None = None, augment: Sequence[str] = (),
                  cache: str | Path | None = None) -> PrepareReport | PrepareJob:
    """Plan a prepare run (shared by the local and the Ray paths).

    Returns the report at once when ``out`` is already up to date; otherwise opens the parts
    folder and lists the jobs still to compute. Raises :class:`StoreError` for an existing
    ``out`` made from other inputs or settings unless ``overwrite``.
    """
    if compression not in COMPRESSIONS:
        raise StoreError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    corpus = data if isinstance(data, Corpus) else discover(data)
    preset = features.get_preset(preset)
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"{out}: is a directory; --out takes the path of the .h5 file to write")
    if embed is not None:
        from melgenre.models.musicnn import embedding_spec

        embed = embedding_spec(embed, preset)
    augment = tuple(augment)
    unknown = [a for a in augment if a not in audio.AUGMENTATIONS]
    if unknown or len(set(augment)) < len(augment):
        raise StoreError(f"augment: {', '.join(unknown) or 'a name given twice'}; use distinct names of "
                         f"{', '.join(audio.AUGMENTATIONS)}")
    plan = _plan_hash(corpus, preset, compression, embed, augment)
    preset.image_shape()  # every row must have one shape: raises ConfigError when it cannot
    if out.exists():
        try:
            with MelStore(out) as existing:
                if existing.attrs.get("plan_hash") == plan:
                    return _report_from_store(existing, out, corpus, time.perf_counter() - t0)
        except StoreError:
            pass
        if not overwrite:
            raise StoreError(f"{out}: already exists and was made from other inputs or settings (use --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if cache is None:
        parts = out.with_name(out.name + ".parts")
        _open_parts_dir(parts, plan)
    else:
        parts = Path(cache)
        parts.mkdir(parents=True, exist_ok=True)
    settings = json.dumps([preset.to_dict(), compression, embed, augment, PARTS_VERSION], sort_keys=True)
    jobs = [_Job(index=i, path=str(t.path.resolve()), name=str(t.path.relative_to(corpus.root)),
                 preset=preset.to_dict(), part=str(parts / (f"{i:06d}.npz" if cache is None
                                                            else f"{_file_key(t.path, settings)}.npz")),
                 compression=compression, embed=embed, augment=augment)
            for i, t in enumerate(corpus.tracks)]
    todo = [j for j in jobs if not _part_ok(Path(j.part))]
    return PrepareJob(corpus, preset, out, plan, parts, jobs, todo, compression, embed, augment, cache is not None)


def _file_key(path: Path, settings: str) -> str:
    """Name of a file's part in a cache folder: its resolved path, size and mtime, and the settings."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{settings}".encode()).hexdigest()[:32]


def finish_prepare(job: PrepareJob, t0: float) -> PrepareReport:
    """Assemble the parts of a finished job into the HDF5 file, remove them, and report."""
    _assemble(job)
    if not job.cached:
        shutil.rmtree(job.parts, ignore_errors=True)
    with MelStore(job.out) as store:
        report = _report_from_store(store, job.out, job.corpus, time.perf_counter() - t0)
    report.resumed, report.computed, report.up_to_date = job.resumed, len(job.todo), False
    return report


def _report_from_store(store: MelStore, out: Path, corpus: Corpus, seconds: float) -> PrepareReport:
    tracks = store.tracks()
    per_class = {name: 0 for name in store.classes}
    for label in tracks["label"]:
        per_class[store.classes[label]] += 1
    rows = np.bincount(store.y, minlength=len(store.classes))
    return PrepareReport(
        out=out, classes=store.classes, tracks_per_class=per_class,
        rows_per_class={name: int(rows[i]) for i, name in enumerate(store.classes)},
        n_tracks=len(tracks["id"]), n_rows=len(store), image_shape=store.image_shape,
        skipped=store.skipped, silent=[t for t, s in zip(tracks["id"], tracks["silent"]) if s],
        ignored_files=len(corpus.ignored), resumed=0, computed=0, seconds=seconds, up_to_date=True,
        dropped_classes=json.loads(store.attrs.get("dropped_classes", "[]")),
    )


def _assemble(job: PrepareJob) -> None:
    """Stream the part files, in corpus order, into ``job.out`` atomically."""
    corpus, preset, jobs, out, plan = job.corpus, job.preset, job.jobs, job.out, job.plan
    h, w = (1, job.embed["size"]) if job.embed else preset.image_shape()
    filters = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True} \
        if job.compression == "gzip" else {}
    skipped: list[dict[str, str]] = []
    track_rows: dict[str, list] = {k: [] for k in _TRACK_FIELDS}
    hashes: list[tuple[str, str]] = []
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            x = f.create_dataset("x", shape=(0, h, w), maxshape=(None, h, w), dtype=ROW_DTYPE,
                                 chunks=(1, h, w), **filters)
            cols = {
                "y": f.create_dataset("y", shape=(0,), maxshape=(None,), dtype=np.int16, chunks=(4096,)),
                "track_id": f.create_dataset("track_id", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(4096,)),
                "chunk_index": f.create_dataset("chunk_index", shape=(0,), maxshape=(None,), dtype=np.int16,
                                                chunks=(4096,)),
                "variant": f.create_dataset("variant", shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(4096,)),
                "path": f.create_dataset("path", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(4096,)),
            }
            n = 0
            for part, track in zip(jobs, corpus.tracks):
                rows, info = _read_part(Path(part.part))
                if info["error"]:
                    skipped.append({"path": part.name, "reason": info["error"]})
                    continue
                k = len(rows)
                for ds in (x, *cols.values()):
                    ds.resize(n + k, axis=0)
                for i, row in enumerate(rows):  # chunks made by the workers (see _chunk_bytes)
                    x.id.write_direct_chunk((n + i, 0, 0), row)
                cols["y"][n:n + k] = track.label
                cols["track_id"][n:n + k] = track.track_id
                variant = np.asarray(info["variants"])
                cols["variant"][n:n + k] = variant
                cols["chunk_index"][n:n + k] = np.arange(k) - np.searchsorted(variant, variant)  # per variant
                cols["path"][n:n + k] = part.name
                for key, value in (("id", track.track_id), ("path", part.name), ("label", track.label),
                                   ("first_row", n), ("n_rows", k)):
                    track_rows[key].append(value)
                for key in ("sha256", "duration", "source_sr", "channels", "silent"):
                    track_rows[key].append(info[key])
                hashes.append((track.track_id, info["sha256"]))
                n += k
            # Classes whose every file failed to decode are dropped (labels renumbered), so no model
            # gets an output for a class without data; the report and the `dropped_classes` attribute say so.
            counts = np.bincount(np.asarray(track_rows["label"], dtype=np.int64), minlength=len(corpus.classes))
            classes = [c for c, n in zip(corpus.classes, counts) if n > 0]
            dropped = [c for c, n in zip(corpus.classes, counts) if n == 0]
            if dropped and classes:
                renumber = np.cumsum(counts > 0) - 1
                track_rows["label"] = renumber[np.asarray(track_rows["label"], dtype=np.int64)].tolist()
                cols["y"][:] = renumber[cols["y"][:]]
            g = f.create_group("tracks")
            for key, values in track_rows.items():
                dtype = _STR if key in ("id", "path", "sha256") else None
                g.create_dataset(key, data=np.array(values, dtype=object if dtype else None), dtype=dtype)
            f.attrs.update({
                "format_version": FORMAT_VERSION,
                "classes": json.dumps(classes or corpus.classes),
                "dropped_classes": json.dumps(dropped if classes else []),
                "preset": json.dumps(preset.to_dict()),
                "melgenre_version": __version__,
                "input_hash": _input_hash(preset, classes or corpus.classes, hashes),
                "plan_hash": plan,
                "root": str(corpus.root),
                "layout": corpus.layout,
                "n_tracks": len(hashes),
                "skipped": json.dumps(skipped),
                **({"embedding": json.dumps(job.embed)} if job.embed else {}),
                **({"augment": json.dumps(list(job.augment))} if job.augment else {}),
            })


# -- reading -----------------------------------------------------------------------------------

class MelStore:
    """Read a store lazily, row by row (the default), or from RAM with ``in_memory=True``.

    Safe to hand to DataLoader workers: the HDF5 handle is opened on first use in each process
    and never pickled.

    Examples
    --------
    >>> with MelStore("gtzan-v1.h5") as store:  # doctest: +SKIP
    ...     image, label = store[0]          # (416, 416) float32, int
    ...     store.classes[label]
    """

    def __init__(self, path: str | Path, in_memory: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such file")
        if not h5py.is_hdf5(self.path):
            raise StoreError(f"{self.path}: not an HDF5 file")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            f = self._h5()
        except OSError as exc:  # e.g. truncated mid-write by something other than melgenre
            raise StoreError(f"{self.path}: unreadable HDF5 file ({str(exc).splitlines()[0]})") from None
        missing = [k for k in ("x", "y", "track_id", "chunk_index", "path", "tracks") if k not in f]
        if missing or "classes" not in f.attrs:
            raise StoreError(f"{self.path}: not a melgenre store (missing {', '.join(missing) or 'attrs'})")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {version} is newer than this melgenre reads "
                             f"({FORMAT_VERSION}); upgrade melgenre or re-run prepare")
        self.attrs: dict[str, Any] = dict(f.attrs)
        self.classes: list[str] = json.loads(self.attrs["classes"])
        self.preset = Preset.from_dict(json.loads(self.attrs["preset"]))
        self.y: np.ndarray = f["y"][:].astype(np.int64)
        self.track_id: np.ndarray = f["track_id"].asstr()[:]
        self.chunk_index: np.ndarray = f["chunk_index"][:].astype(np.int64)
        # 0 = the original audio, k = the k-th of attrs["augment"] (stores from before it: all 0)
        self.variant: np.ndarray = f["variant"][:].astype(np.int64) if "variant" in f else np.zeros_like(self.y)
        self._x: np.ndarray | None = f["x"][:] if in_memory else None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """Row ``i`` as ``(image (H, W) float32, label)``."""
        row = self._x[i] if self._x is not None else self.x[i]
        return row.astype(np.float32), int(self.y[i])

    @property
    def x(self) -> h5py.Dataset:
        """The on-disk image dataset ``(N, H, W)`` (lazy; index it to read rows)."""
        return self._h5()["x"]

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of every row."""
        return tuple(self.x.shape[1:])

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files the prepare step could not decode: ``[{"path", "reason"}]``."""
        return json.loads(self.attrs.get("skipped", "[]"))

    def images(self, indices: np.ndarray | list[int] | slice) -> np.ndarray:
        """Several rows as one float32 array ``(n, H, W)``."""
        if self._x is not None:
            return self._x[indices].astype(np.float32)
        if isinstance(indices, slice):
            return self.x[indices].astype(np.float32)
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.image_shape), dtype=np.float32)
        for k, i in enumerate(idx):  # row by row: h5py fancy indexing needs sorted unique indices
            out[k] = self.x[i]
        return out

    def tracks(self) -> dict[str, np.ndarray]:
        """The per-track table (see the module docstring) as arrays."""
        g = self._h5()["tracks"]
        return {k: (g[k].asstr()[:] if g[k].dtype == object else g[k][:]) for k in _TRACK_FIELDS}

    def close(self) -> None:
        """Close the HDF5 handle (reopened on next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
