"""Predict a whole music library into a results file: streamed, resumable, batched across files.

:func:`predict_library` (``melgenre predict DIR --out results.sqlite``) writes one row per file as
it finishes, into SQLite, CSV or JSON Lines (chosen by the suffix of ``out``):

* **Resumable.** A rerun skips every file whose absolute path, size and mtime match a row made
  by the same model id without an error; changed files, files of another model and failed files
  are done again (their row is replaced). SQLite commits after every model batch (a few files);
  CSV and JSON Lines append and ``fsync`` each row, and a rerun drops a torn last line. So a
  ``kill -9`` at any point loses at most the files in flight.
* **Fast.** Worker processes (:func:`melgenre.utils.worker_pool`) read, hash, decode and turn each
  file into mel images; this process runs the model on the windows of many files at once, in
  full batches of the model's ``batch_size`` windows, and builds each file's result with
  :meth:`GenreModel.prediction`, so a row holds what :meth:`GenreModel.predict` gives for that
  file. At most ``in_flight`` files are decoded or waiting at once: memory does not grow with
  the library. Workers exit when this process dies.

The SQLite schema (version 1; see docs/library.md) is a contract other commands read
(``melgenre tag``): columns may be added at the end, never renamed. :func:`read_results` reads
any of the three formats into a pandas DataFrame.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import glob
import io
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from melgenre import __version__
from melgenre.audio import expand_paths
from melgenre.errors import MelgenreError
from melgenre.inference import GenreModel, Prediction, load_model, resolve_backend
from melgenre.package import package_card
from melgenre.utils import atomic_path, file_sha256, stale_temp_target
from melgenre.pipeline import Predictor, decode_path

SCHEMA_VERSION = "1"

#: Columns of a results file, in order (the SQLite ``results`` table; CSV header; JSON Lines keys).
COLUMNS = ("path", "size", "mtime", "sha256", "model_id", "label", "confidence", "probabilities", "flags",
           "duration", "error", "finished_at")

#: The SQLite schema (``meta`` holds schema_version, model_id, calibration_id, windows (the hop and
#: number of windows scored, JSON), classes (JSON list), melgenre_version).
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS results (
  path TEXT PRIMARY KEY,
  size INTEGER, mtime REAL,
  sha256 TEXT,
  model_id TEXT,
  label TEXT,
  confidence REAL,
  probabilities TEXT,
  flags TEXT,
  duration REAL,
  error TEXT,
  finished_at TEXT
);
"""

#: Output formats by suffix.
FORMATS = {".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite", ".csv": "csv", ".jsonl": "jsonl"}

_JSON_COLUMNS = ("probabilities", "flags")


# -- rows ----------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def make_row(path: str, size: int | None, mtime: float | None, sha256: str | None, model_id: str,
             pred: Prediction | None, error: str | None) -> dict[str, Any]:
    """One results row (probabilities as a dict, flags as a list) of a prediction or a failure."""
    row: dict[str, Any] = {"path": path, "size": size, "mtime": mtime, "sha256": sha256, "model_id": model_id,
                           "label": None, "confidence": None, "probabilities": None, "flags": [],
                           "duration": None, "error": error, "finished_at": _now()}
    if pred is not None:
        d = pred.to_dict()
        row.update(label=d["label"], confidence=d["probabilities"][d["label"]], probabilities=d["probabilities"],
                   flags=d["flags"], duration=d["duration"])
    return row


def _stored(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns as text (SQLite, CSV)."""
    return {**row, **{k: json.dumps(row[k]) if row[k] is not None else None for k in _JSON_COLUMNS}}


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (JSON columns as text) with its JSON columns parsed."""
    return {**row, **{k: json.loads(row[k]) if isinstance(row[k], str) and row[k] else None for k in _JSON_COLUMNS}}


def _csv_typed(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row with SQLite's types: empty cells are None, numbers are numbers."""
    out: dict[str, Any] = {k: (row.get(k) or None) for k in COLUMNS}
    for key, kind in (("size", int), ("mtime", float), ("confidence", float), ("duration", float)):
        if out[key] is not None:
            out[key] = kind(out[key])
    return out


# -- outputs -------------------------------------------------------------------------------------

def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MelgenreError(f"{path}: unknown results format {path.suffix or '(no suffix)'!r}; use "
                            f"{', '.join(FORMATS)}")
    return fmt


class _SqliteSink:
    """Rows in an SQLite database: one upsert per file, committed per batch."""

    def __init__(self, path: Path, model: GenreModel | None = None):
        """Open ``path`` to write the rows of ``model``, or read-only without one."""
        self.path = path
        try:  # readers (read_results, melgenre tag) open read-only: they never create or change it
            self.db = sqlite3.connect(path) if model is not None else sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise MelgenreError(f"{path}: not an SQLite database ({exc})") from None
        if (tables or model is None) and not {"meta", "results"} <= tables:
            self.db.close()
            raise MelgenreError(f"{path}: not a melgenre results database (an SQLite database without "
                                f"its meta and results tables)")
        #: The previous run's ``meta`` (model_id, calibration_id, ...); empty for a new database.
        self.previous: dict[str, str] = {}
        if "meta" in tables:
            self.previous = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            version = self.previous.get("schema_version")
            if version != SCHEMA_VERSION:
                self.db.close()
                raise MelgenreError(f"{path}: results schema version {version or '?'}, "
                                    f"this melgenre reads version {SCHEMA_VERSION}")
        if model is not None:
            self.db.execute("PRAGMA journal_mode=WAL")  # readers (melgenre tag) do not block the job
            with self.db:
                self.db.executescript(SCHEMA)
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("schema_version", SCHEMA_VERSION), ("model_id", model.model_id),
                    ("calibration_id", model.calibration_id), ("windows", _windows_policy(model)),
                    ("classes", json.dumps(model.classes)), ("melgenre_version", __version__)])

    def recalibrated(self, model: GenreModel) -> bool:
        """Whether the previous run used the same weights with another calibration (its rows' probabilities and flags are stale)."""
        return (self.previous.get("model_id") == model.model_id
                and self.previous.get("calibration_id", "") != model.calibration_id)

    def rewindowed(self, model: GenreModel) -> bool:
        """Whether the previous run used the same weights on other windows (another hop or number of
        windows, :func:`_windows_policy`): its rows are stale. Databases from before the key count as the same."""
        return (self.previous.get("model_id") == model.model_id
                and self.previous.get("windows", _windows_policy(model)) != _windows_policy(model))

    def rows(self) -> list[dict[str, Any]]:
        try:
            if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='results'").fetchone():
                return []
            cur = self.db.execute("SELECT * FROM results ORDER BY path")
            names = [d[0] for d in cur.description]
            return [_parsed(dict(zip(names, r))) for r in cur]
        except sqlite3.DatabaseError as exc:
            raise MelgenreError(f"{self.path}: unreadable results database ({exc})") from None

    def write(self, rows: list[dict[str, Any]]) -> None:
        try:
            with self.db:  # one transaction per batch
                self.db.executemany(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) "
                                    f"VALUES ({', '.join('?' * len(COLUMNS))})",
                                    [tuple(_stored(r)[c] for c in COLUMNS) for r in rows])
        except sqlite3.Error as exc:  # a full disk, a locked or read-only database
            raise MelgenreError(f"{self.path}: cannot write results ({exc})") from None

    def close(self) -> None:
        self.db.close()


class _LineSink:
    """Rows appended to a CSV or JSON Lines file, each flushed and fsync'd; the last row per path counts."""

    def __init__(self, path: Path, fmt: str, create: bool = False):
        self.path, self.fmt = path, fmt
        text = path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else ""
        complete = text[:text.rfind("\n") + 1]  # a torn last line (killed mid-write) is dropped
        self._rows = self._read(complete)
        self.fh = None
        if create:
            if complete != text or (fmt == "csv" and not complete):
                self._rewrite(self._rows)
            self.fh = open(path, "a", encoding="utf-8", newline="")

    def _read(self, text: str) -> list[dict[str, Any]]:
        if self.fmt == "jsonl":
            return [self._jsonl_row(line, n) for n, line in enumerate(text.splitlines(), start=1)]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if text and tuple(reader.fieldnames or ())[:len(COLUMNS)] != COLUMNS:
            raise MelgenreError(f"{self.path}: not a melgenre results CSV (its header is not {','.join(COLUMNS)})")
        return [_parsed(_csv_typed(r)) for r in reader]

    def _jsonl_row(self, line: str, n: int) -> dict[str, Any]:
        """Line ``n`` of a JSON Lines results file as a row; anything else (someone else's JSON lines) is refused,
        so that ``--out`` never appends to, nor rewrites, a file that is not melgenre's."""
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not set(COLUMNS) <= row.keys() or not isinstance(row["path"], str):
            raise MelgenreError(f"{self.path}, line {n}: not a melgenre results row (a JSON object of "
                                f"{', '.join(COLUMNS)}; path a text): not a results file of melgenre predict --out")
        return {k: row[k] for k in COLUMNS}

    def _line(self, row: dict[str, Any]) -> str:
        if self.fmt == "jsonl":
            return json.dumps({k: row[k] for k in COLUMNS}) + "\n"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_stored(row)[k] for k in COLUMNS])
        return buf.getvalue()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.path) as tmp:
            header = ",".join(COLUMNS) + "\n" if self.fmt == "csv" else ""
            tmp.write_text(header + "".join(self._line(r) for r in rows), encoding="utf-8")

    def rows(self) -> list[dict[str, Any]]:
        return list({r["path"]: r for r in self._rows}.values())

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.fh.write("".join(self._line(r) for r in rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self._rows += rows

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            latest = self.rows()
            if len(latest) < len(self._rows):  # a redone file left an older row above: keep one per path
                self._rewrite(latest)


def _windows_policy(model: GenreModel) -> str:
    """Which windows of a file the model scores, as stored in the ``meta`` table."""
    return json.dumps({"hop": model.hop, "windows": model.windows})


def _open(path: Path, model: GenreModel | None = None) -> _SqliteSink | _LineSink:
    fmt = _format(path)
    if path.is_dir():
        raise MelgenreError(f"{path}: is a directory; --out takes the results file to write")
    if model is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # every format writes beside the file (SQLite's -wal and -shm files; the line formats' atomic rewrites)
        if not os.access(path.parent, os.W_OK):
            raise MelgenreError(f"{path.parent}: folder is not writable (cannot write {path.name} in it)")
        if path.exists() and not os.access(path, os.W_OK):
            raise MelgenreError(f"{path}: results file is not writable")
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # a killed run's rewrite
            if stale_temp_target(tmp) == path:
                tmp.unlink(missing_ok=True)
    elif not path.is_file():
        raise MelgenreError(f"{path}: no such results file")
    return _SqliteSink(path, model) if fmt == "sqlite" else _LineSink(path, fmt, create=model is not None)


def result_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file (SQLite, CSV or JSON Lines) as dicts of :data:`COLUMNS`, sorted by path.

    The latest row per file counts; ``probabilities`` and ``flags`` are parsed from JSON.

    Raises
    ------
    MelgenreError
        The file is missing, of an unknown suffix, or not a melgenre results file.
    """
    sink = _open(Path(path))
    try:
        return sorted(sink.rows(), key=lambda r: r["path"])
    finally:
        sink.close()


def read_results(path: str | Path) -> Any:
    """A results file (SQLite, CSV or JSON Lines) as a pandas DataFrame.

    One row per file, sorted by path (the latest, for CSV/JSON Lines files a rerun appended to), columns
    :data:`COLUMNS` in order; ``probabilities`` holds dicts ``{genre: probability}`` and
    ``flags`` lists of str, whatever the format. Missing text (``label``, ``error``, ...) is
    None, missing numbers NaN (``size``: pandas' nullable ``Int64``).

    Raises
    ------
    MelgenreError
        The file is missing, of an unknown suffix, or not a melgenre results file.
    """
    import pandas as pd

    frame = pd.DataFrame(result_rows(path), columns=list(COLUMNS), dtype=object)  # text columns keep None, not NaN
    return frame.astype({"size": "Int64", "mtime": "float64", "confidence": "float64", "duration": "float64"})


# -- workers -------------------------------------------------------------------------------------

def decode_file(path: str, preset_json: str, most: int | None = None) -> dict[str, Any]:
    """Deprecated, kept for one release: :func:`melgenre.pipeline.decode_path` with ``facts``, as a dict
    (``path``, ``size``, ``mtime``, ``sha256``, ``error``, ``windows``)."""
    item = decode_path(path, preset_json, most, facts=True)
    return {"path": item.key, "size": item.info.get("size"), "mtime": item.info.get("mtime"),
            "sha256": item.info.get("sha256"), "error": item.error, "windows": item.windows}


def _rows(model: GenreModel, files: list[str], workers: int | None, in_flight: int | None, batch: int | None,
          report: LibraryReport) -> Iterator[list[dict]]:
    """Rows of the files through the model's :class:`~melgenre.pipeline.Predictor` (decoded here, or by
    ``workers`` processes), one list as each file is done; ``report.rechecked`` counts the files whose
    sample was too close to call."""
    predictor = Predictor(model, batch=batch)
    workers = default_workers() if workers is None else workers
    for item, pred in predictor.predict_paths(files, executor="process" if workers > 0 else "local",
                                              workers=workers, in_flight=in_flight, facts=True):
        report.rechecked, report.windows = predictor.rechecked, predictor.windows_scored
        info = item.info
        yield [make_row(item.key, info.get("size"), info.get("mtime"), info.get("sha256"), model.model_id, pred,
                        item.error)]


def _ray_rows(files: list[str], model_source: str | Path | None, backend: str | None, hop: float | None,
              windows: int | None, address: str, model_id: str,
              stats: dict[str, os.stat_result]) -> Iterator[list[dict]]:
    """Rows of :func:`melgenre.scale.predict_ray`'s predictions; the file is hashed here, as it finishes."""
    from melgenre.scale import predict_ray

    for path, pred, error in predict_ray(files, model_source, backend=backend, address=address, hop=hop,
                                         windows="all" if windows is None else windows):
        key = str(path)
        st = stats.get(key)
        try:
            sha = file_sha256(key)
        except OSError:
            sha = None
        yield [make_row(key, st.st_size if st else None, st.st_mtime if st else None, sha, model_id, pred, error)]


# -- the job -------------------------------------------------------------------------------------

@dataclass
class LibraryReport:
    """What :func:`predict_library` did; printed by the CLI."""

    out: Path
    model_id: str
    backend: str
    files: int  # audio files given (after expanding folders)
    skipped: int  # unchanged files already in ``out`` for this model
    predicted: int  # files done by this run (failures included)
    failed: list[tuple[str, str]]  # (path, reason) of this run's failures
    per_genre: dict[str, int]  # labels of every given file now in ``out``, most common first
    seconds: float
    superseded: int = 0  # rows of changed, failed or other-model files that this run replaced
    load_seconds: float = 0.0  # of ``seconds``: loading the model (and exporting it to ONNX)
    recalibrated: bool = False  # the database's rows came from the same weights with another calibration
    rewindowed: bool = False  # the database's rows came from the same weights on other windows (hop, number)
    rechecked: int = 0  # files whose sample of windows was too close to call: more windows were scored
    windows: int = 0  # windows scored by this run (on one machine; rechecks included)

    @property
    def files_per_s(self) -> float:
        """Files this run predicted per second of wall time (0 when it predicted none)."""
        return self.predicted / self.seconds if self.predicted and self.seconds > 0 else 0.0


def _bar(progress: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not progress)


def predict_library(paths: Iterable[str | Path], out: str | Path, model: str | Path | None = None,
                    backend: str | None = "auto", hop: float | None = None, windows: int | str | None = None,
                    workers: int | None = None,
                    in_flight: int | None = None, batch: int | None = None, progress: bool = True,
                    ray: str | None = None, on_rows: Callable[[list[dict]], None] | None = None) -> LibraryReport:
    """Predict every audio file under ``paths`` into the results file ``out``, resuming an earlier run.

    Parameters
    ----------
    paths : iterable of path
        Files and folders (searched recursively, see :func:`melgenre.audio.expand_paths`).
    out : path
        ``.sqlite`` (also ``.sqlite3``, ``.db``), ``.csv`` or ``.jsonl``; created, or resumed.
    model : path, optional
        For :func:`melgenre.inference.load_model` (default: the installed default model).
    backend : {"auto", "onnx", "torch"}
        Inference backend; ``"auto"``: ONNX Runtime when installed, else torch.
    hop : float, optional
        Seconds between prediction windows (see :func:`melgenre.inference.load_model`).
    windows : int or "all", optional
        The most windows scored per file, spread over it (see :func:`melgenre.inference.load_model`;
        default: the model's). A rerun with another hop or number of windows redoes every file.
    workers : int, optional
        Decoding processes (default: :func:`default_workers`); 0 decodes in this process.
    in_flight : int, optional
        Files submitted to the workers at once (default ``2 × workers + 2``): bounds memory.
    batch : int, optional
        Windows per model call, across files (default: the model's ``batch_size``; memory grows with it).
    progress : bool
        Progress bar (with rate and ETA) on stderr.
    ray : str, optional
        Predict on Ray actors instead (``""``: local Ray; else an address); same rows.
    on_rows : callable, optional
        Called with each list of rows just written.

    Returns
    -------
    LibraryReport

    Raises
    ------
    MelgenreError
        No audio files, a model that cannot be loaded, or ``out`` of an unknown suffix or not a
        melgenre results file.
    """
    t0 = time.perf_counter()
    files = [str(p.resolve()) for p in expand_paths(paths)]
    if not files:
        raise MelgenreError(f"no audio files in {', '.join(map(str, paths))}")
    # a package's card names its weights, calibration and windows: a rerun with nothing to do loads no weights
    card = package_card(model)
    genre_model = load_model(model, backend=backend, hop=hop, windows=windows) if card is None else \
        GenreModel(card, hop=hop, windows=windows)
    load_seconds = time.perf_counter() - t0
    out = Path(out)
    sink = _open(out, genre_model)
    try:
        previous = {r["path"]: r for r in sink.rows()}
        # the same weights recalibrated, or on other windows: other probabilities and flags, so no row is current
        recalibrated = isinstance(sink, _SqliteSink) and sink.recalibrated(genre_model)
        rewindowed = isinstance(sink, _SqliteSink) and sink.rewindowed(genre_model)
        stats: dict[str, os.stat_result] = {}
        for f in files:
            try:
                stats[f] = os.stat(f)
            except OSError:
                pass
        todo = [f for f in files
                if recalibrated or rewindowed or not _unchanged(previous.get(f), stats.get(f), genre_model.model_id)]
        if todo and card is not None and ray is None:
            genre_model = load_model(model, backend=backend, hop=hop, windows=windows)
            load_seconds = time.perf_counter() - t0
        # a package is never an .onnx file: its backend as load_model would resolve it
        backend_name = genre_model.backend if genre_model.loaded else resolve_backend(model or "", backend)
        report = LibraryReport(out=out, model_id=genre_model.model_id, backend=backend_name, files=len(files),
                               skipped=len(files) - len(todo), predicted=0, failed=[], per_genre={}, seconds=0.0,
                               superseded=sum(f in previous for f in todo), load_seconds=load_seconds,
                               recalibrated=recalibrated, rewindowed=rewindowed)
        labels = {f: previous[f]["label"] for f in files if f not in todo}
        if todo:
            if ray is not None:
                batches = _ray_rows(todo, model, backend, hop, genre_model.windows, ray, genre_model.model_id, stats)
            else:
                batches = _rows(genre_model, todo, workers, in_flight, batch, report)
            with _bar(progress) as bar:
                task = bar.add_task("predict", total=len(files), completed=report.skipped, rate="")
                started = time.perf_counter()
                for rows in batches:
                    sink.write(rows)
                    if on_rows is not None:
                        on_rows(rows)
                    for r in rows:
                        labels[r["path"]] = r["label"]
                        if r["error"] is not None:
                            report.failed.append((r["path"], r["error"]))
                    report.predicted += len(rows)
                    bar.update(task, advance=len(rows),
                               rate=f"{report.predicted / (time.perf_counter() - started):.1f} files/s")
    finally:
        sink.close()
    report.per_genre = dict(Counter(v for v in labels.values() if v is not None).most_common())
    report.seconds = time.perf_counter() - t0
    return report


def refresh_rows(out: str | Path, paths: Iterable[str]) -> None:
    """Give the rows of ``paths`` in the SQLite results database ``out`` the files' size, mtime and SHA-256
    now, after their tags (never their audio) were rewritten, so a rerun does not predict them again
    (:func:`predict_library` redoes a file whose size or mtime differs from its row).

    Raises
    ------
    MelgenreError
        ``out`` is not a melgenre results database, or cannot be written.
    OSError
        A file cannot be read.
    """
    fresh = []
    for path in paths:
        st = os.stat(path)
        fresh.append((st.st_size, st.st_mtime, file_sha256(path), path))
    _SqliteSink(Path(out)).close()  # read-only: fails on anything but a melgenre results database
    try:
        with contextlib.closing(sqlite3.connect(out)) as db, db:
            db.executemany("UPDATE results SET size = ?, mtime = ?, sha256 = ? WHERE path = ?", fresh)
    except sqlite3.Error as exc:
        raise MelgenreError(f"{out}: cannot write results ({exc})") from None


def _unchanged(row: dict[str, Any] | None, st: os.stat_result | None, model_id: str) -> bool:
    return (row is not None and st is not None and row["error"] is None and row["model_id"] == model_id
            and row["size"] == st.st_size and row["mtime"] == st.st_mtime)


def default_workers() -> int:
    """Decoding workers of a library job: none on 2 cores or fewer, else one per CPU core but one.

    On 2 cores the model's threads are most of the work and a decoding process only competes with
    them: decoding in this process measured 26-28 files/s with melcnn-int8 against 20-25 with one
    worker, 17 against 15 with melcnn, the same with the default model."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else cores - 1


__all__ = ["COLUMNS", "FORMATS", "SCHEMA", "SCHEMA_VERSION", "LibraryReport", "decode_file", "default_workers",
           "make_row", "predict_library", "read_results", "refresh_rows"]
