"""HTTP service: upload an audio file, get its genre (JSON API plus a one-page web UI).

``create_app`` builds a FastAPI application around one :class:`~melgenre.inference.GenreModel`
that is loaded once and shared by all requests:

``POST /predict``  multipart field ``file`` -> label, top-k, all class probabilities, per-window
                   probabilities, duration, padded/silent and the ``flags`` list, model id; with
                   ``?spectrogram=true`` also the clip's mel image as a ``data:image/png`` URL;
                   the genre ``segments`` and the smoothed ``timeline`` (see
                   :mod:`melgenre.timeline`); with ``?saliency=true`` the mel image with the
                   evidence for the predicted genre overlaid (:mod:`melgenre.explain`) and, for
                   tag-prior models on torch, that evidence in words (else null);
                   with a library index loaded (``index=``), ``similar``: the most similar tracks
                   as ``[{"path", "score"}]`` (paths relative to the library's folder).
``GET /health``    ``{"status": "ok", "model_id": ...}``
``GET /model``     the model card (classes, preset, metrics ...)
``GET /``          the web page (``melgenre/static/index.html``; assets under ``/static``)
``GET /docs``      API reference, rendered from the OpenAPI schema (``/openapi.json``) into
                   one self-contained page: FastAPI's Swagger UI loads its assets from a CDN
                   and stays blank offline

Uploads are never held in memory as a whole: the multipart body is parsed as it streams in and
the file part is written in chunks to a private temporary file (in a ``melgenre-*`` folder made
with mode 0700 at start-up and removed at shutdown); the request is refused with 413 as soon as
``Content-Length`` or the bytes received pass the limit. Temporary files are always deleted,
and the client's file name is used only in messages, never in paths.

Status codes: 413 too large; 415 empty, corrupt or not audio (the message names the file);
422 no ``file`` field or not a multipart request; 400 malformed multipart body.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import html
import io
import logging
import os
import re
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from melgenre import audio
from melgenre.errors import AudioDecodeError, MelgenreError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Bytes of multipart framing (boundaries, part headers, small extra fields) allowed on top of
#: the file-size limit when judging a request by its ``Content-Length``.
FRAMING_ALLOWANCE = 64 * 1024

#: Width/height of the spectrogram PNG come from :func:`melgenre.display.mel_figure`
#: (10 x 4.5 inches) at this resolution: 720 x 324 pixels.
SPECTROGRAM_DPI = 72

#: Content-Security-Policy of the web page: nothing from outside this server.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

_MB = 1024 * 1024

# pyplot keeps global state (current figure, figure manager): one figure at a time.
_PLOT_LOCK = threading.Lock()

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed multipart body."},
    413: {"description": "Upload larger than the server's limit."},
    415: {"description": "Empty, corrupt or not an audio file (the message names the file)."},
    422: {"description": "No multipart `file` field."},
}

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "An audio file (wav, flac, ogg, mp3, au ...)."}},
        }}},
    }
}


class _TooLarge(Exception):
    pass


#: Longest recording ``POST /predict`` accepts by default, in minutes (a 3-hour mix; see create_app).
MAX_MINUTES = 180.0


def display_name(filename: str | bytes | None) -> str:
    """A client-supplied file name made safe for messages: base name only, printable, <= 120 chars.

    It is never used to build a path.
    """
    if isinstance(filename, bytes):
        filename = filename.decode("utf-8", "replace")
    # browsers escape " CR LF in multipart file names as %22 %0D %0A (HTML standard)
    name = (filename or "").replace("%22", '"').replace("%0D", "").replace("%0A", "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if len(name) > 120:
        name = name[:60] + "…" + name[-59:]
    return name if name not in ("", ".", "..") else "upload"


def _limit_text(max_bytes: int) -> str:
    mb = max_bytes / _MB
    return f"{mb:g} MB" if mb >= 0.1 else f"{max_bytes} bytes"


class _Upload:
    """Receives one multipart body; writes the ``file`` part to a private temp file in chunks."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.path: str | None = None
        self.filename: str | None = None
        self.size = 0
        self.complete = False
        self._fh = None
        self._in_file = False
        self._done_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    # -- python-multipart callbacks ---------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._header_field = self._header_value = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and not self._done_file:
            self.filename = display_name(options.get(b"filename"))
            fd, self.path = tempfile.mkstemp(prefix="upload-", suffix=".bin", dir=self.folder)
            self._fh = os.fdopen(fd, "wb")
            self._in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._in_file:
            self.size += n
            if self.size > self.max_bytes:
                raise _TooLarge
            self._fh.write(data[start:end])
        # other fields (and any second file) are ignored; the whole body is capped by the caller

    def on_part_end(self) -> None:
        if self._in_file:
            self._fh.close()
            self._fh = None
            self._in_file = False
            self._done_file = True

    def on_end(self) -> None:
        self.complete = True

    # -- helpers ---------------------------------------------------------------------------------
    def callbacks(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end", "on_end")}

    def discard(self) -> None:
        """Close and delete the temp file (safe to call more than once)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


async def receive_upload(request: Request, folder: str, max_bytes: int) -> _Upload:
    """Stream the multipart body of ``request`` into a temp file under ``folder``.

    Raises HTTPException 413/422/400; on any error nothing is left on disk.
    """
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise HTTPException(422, "expected a multipart/form-data request with an audio file in the field 'file'")
    upload = _Upload(folder, max_bytes)
    parser = MultipartParser(boundary, upload.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            parser.write(chunk)  # the file part raises _TooLarge itself, before writing past the limit
            received += len(chunk)
            if received > max_bytes + FRAMING_ALLOWANCE:  # everything else: a cap on the whole body
                raise _TooLarge
        parser.finalize()
    except _TooLarge:
        upload.discard()
        who = f"{upload.filename}: " if upload.filename else ""
        raise HTTPException(413, f"{who}upload is larger than the {_limit_text(max_bytes)} limit") from None
    except MultipartParseError as exc:
        upload.discard()
        raise HTTPException(400, f"malformed multipart body ({exc})") from None
    except ClientDisconnect:
        upload.discard()
        raise HTTPException(400, "the client disconnected before the upload finished") from None
    except BaseException:
        upload.discard()
        raise
    if upload.path is None:
        raise HTTPException(422, "missing multipart field 'file' (the audio file to classify)")
    if upload._fh is not None or not upload.complete:  # file part never ended: truncated body
        upload.discard()
        raise HTTPException(400, "malformed multipart body (truncated before the end of the 'file' part)")
    return upload


def spectrogram_png(y, preset, title: str = "") -> bytes:
    """The clip's mel image with axes (``display.mel_figure``) as PNG bytes (720 x 324 px)."""
    import matplotlib.pyplot as plt

    from melgenre.display import mel_figure

    with _PLOT_LOCK:
        fig = mel_figure(y, preset, title)
        try:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=SPECTROGRAM_DPI)
        finally:
            plt.close(fig)
    return buf.getvalue()


def prediction_json(pred, filename: str) -> dict[str, Any]:
    """The ``POST /predict`` response body for a :class:`~melgenre.inference.Prediction`."""
    windows = pred.window_probabilities
    return {
        "filename": filename,
        "label": pred.label,
        "top": [{"genre": genre, "probability": float(p)} for genre, p in pred.top],
        "probabilities": {genre: float(p) for genre, p in pred.probabilities.items()},
        "windows": {
            "starts": [float(s) for s in pred.window_starts],
            "probabilities": [[round(float(p), 6) for p in row] for row in windows],
        },
        "duration": float(pred.duration),
        "padded": bool(pred.padded),
        "silent": bool(pred.silent),
        "flags": list(pred.flags),
        "model_id": pred.model_id,
        "segments": [dataclasses.asdict(seg) for seg in pred.segments],
        "timeline": timeline_json(pred),
    }


def timeline_json(pred) -> dict[str, Any]:
    """The smoothed timeline the page draws: window centres (s) and each window's smoothed probabilities."""
    from melgenre.timeline import smooth

    centres = [float(s) + pred.window_seconds / 2 for s in pred.window_starts]
    probs = smooth(pred.window_probabilities) if len(centres) else []
    return {"classes": list(pred.probabilities), "times": centres, "window_seconds": float(pred.window_seconds),
            "probabilities": [[round(float(p), 6) for p in row] for row in probs]}


def saliency_png(y, model, genre: str, title: str = "") -> tuple[bytes, str, str | None]:
    """The spectrogram figure with the saliency of ``genre`` overlaid, as PNG bytes; the method
    (Grad-CAM with the torch backend, occlusion with ONNX); and the evidence in words where the
    model can give it (:class:`melgenre.explain.TagEvidence`: tag-prior models on torch), else None."""
    import matplotlib.pyplot as plt

    from melgenre.explain import explain, saliency_figure

    method = "gradcam" if model.backend == "torch" else "occlusion"
    expl = explain(model, y, genre, method, source=title)
    with _PLOT_LOCK:
        fig = saliency_figure(y, model.preset, expl, title=f"{title}: evidence for {genre}")
        try:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=SPECTROGRAM_DPI)
        finally:
            plt.close(fig)
    return buf.getvalue(), method, None if expl.evidence is None else expl.evidence.describe()


def create_app(model=None, model_path: str | Path | None = None, max_upload_mb: float = 20,
               top_k: int = 3, index: Any = None, similar_k: int = 5,
               max_minutes: float = MAX_MINUTES) -> FastAPI:
    """Build the service around one model.

    Parameters
    ----------
    model : GenreModel, optional
        An already loaded model. Default: ``load_model(model_path)``, loaded once, now.
    model_path : path, optional
        A run dir / ``.ckpt`` / package ``.json`` / ``.onnx``; ``None`` means the packaged
        default model. Ignored when ``model`` is given.
    max_upload_mb : float
        Largest accepted upload in MB (2**20 bytes); bigger requests get 413.
    top_k : int
        Number of entries in the response's ``top`` list.
    index : path or melgenre.similar.Index, optional
        A library index (``melgenre index``) made with this model: responses then list the
        ``similar_k`` most similar tracks in ``similar``.
    similar_k : int
        Length of the ``similar`` list.
    max_minutes : float
        Longest accepted recording, read from the file's header before anything is decoded; longer
        ones get 413. Only the windows a prediction scores (and, for the images, the first 30 s) are
        decoded, so a small upload of a long recording (a decompression bomb) costs what a song costs.

    Raises
    ------
    MelgenreError
        The model or the index cannot be loaded, or the index was made with another model
        (one line, names the file).
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if model is None:
        from melgenre.inference import load_model

        model = load_model(model_path)
    if index is not None:
        from melgenre.similar import Index, check_model, windows_attr

        index = index if isinstance(index, Index) else Index(index)
        check_model(index, model)
        # uploads are embedded as the index's tracks were: over the same most windows
        embedder = model if windows_attr(model) == index.windows else index.model()
    max_bytes = int(max_upload_mb * _MB)
    top_k = min(top_k, len(model.classes))
    # Inference is CPU-bound: let at most one request per core compute at a time; the rest wait
    # in the thread pool instead of oversubscribing the cores.
    compute = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
    tmp_lock = threading.Lock()

    def tmpdir() -> str:
        """The private upload folder (made at start-up; made here if the app runs without lifespan)."""
        with tmp_lock:
            path = app.state.tmpdir
            if path is None or not os.path.isdir(path):
                path = app.state.tmpdir = tempfile.mkdtemp(prefix="melgenre-")
                atexit.register(shutil.rmtree, path, True)
            return path

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tmpdir()
        log.info("melgenre service: model %s, uploads up to %s, temp folder %s",
                 model.model_id, _limit_text(max_bytes), app.state.tmpdir)
        try:
            yield
        finally:
            with tmp_lock:
                if app.state.tmpdir is not None:
                    shutil.rmtree(app.state.tmpdir, ignore_errors=True)
                    app.state.tmpdir = None

    app = FastAPI(
        title="melgenre",
        description="Music-genre classification from mel-spectrogram images. "
                    "Upload an audio file to `POST /predict`; the web page is at `/`.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.model = model
    app.state.index = index
    app.state.tmpdir = None
    app.state.max_upload_bytes = max_bytes
    app.state.top_k = top_k
    app.state.tmpdir_for_uploads = tmpdir
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    from melgenre.pipeline import Predictor, track_embedding

    # the upload's embedding comes from the prediction's own forward pass when the index holds this
    # model's embeddings of the same windows (else `embedder` embeds it again)
    same_embedder = index is not None and embedder is model
    predictor = Predictor(model, embeddings=same_embedder)

    def infer(path: str, filename: str, spectrogram: bool, saliency: bool) -> dict[str, Any]:
        with compute:
            seconds = audio.duration_of(path, name=filename)
            if seconds > max_minutes * 60:
                raise HTTPException(413, f"{filename}: {seconds / 60:.0f} minutes of audio is longer than the "
                                         f"{max_minutes:g}-minute limit")
            pred = predictor.predict(path, top_k=top_k, name=filename)  # decodes only the windows it scores
            body = prediction_json(pred, filename)
            if index is not None:
                from melgenre.similar import embed_file

                first_sample = len(pred.window_starts) == min(pred.windows_total, model.windows or pred.windows_total)
                vector = (track_embedding(pred, filename) if same_embedder and first_sample
                          else embed_file(embedder, path, name=filename)[0])
                matches = index.query(vector, k=similar_k)
                body["similar"] = [{"path": index.relative(m.path), "score": round(m.score, 6)} for m in matches]
            if spectrogram or saliency:
                window = model.preset.duration or 30.0
                y = audio.head(path, model.preset.sr, window, name=filename)  # the first window alone
                title = filename + (f" (first {window:g} s)" if pred.duration > window + 0.05 else "")
            if spectrogram:
                png = spectrogram_png(y, model.preset, title=title)
                body["spectrogram"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            if saliency:
                png, method, evidence = saliency_png(y, model, pred.label, title=filename)
                body["saliency"] = {"genre": pred.label, "method": method, "evidence": evidence,
                                    "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}
        return body

    @app.post("/predict", summary="Predict the genre of an uploaded audio file",
              responses=_PREDICT_RESPONSES, openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request,
        spectrogram: bool = Query(False, description="Also return the mel image as a data:image/png URL."),
        saliency: bool = Query(False, description="Also return the mel image with the saliency of the predicted "
                                                  "genre overlaid (Grad-CAM; occlusion for ONNX models) as "
                                                  "saliency.image, a data:image/png URL."),
    ) -> dict[str, Any]:
        """Classify the audio file in the multipart field `file`.

        Returns the label, the top-k genres, every class's probability, per-window probabilities
        (window start times in seconds), the clip duration, whether it was padded or silent, and
        the model id.
        """
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes + FRAMING_ALLOWANCE:
            raise HTTPException(413, f"upload of {int(declared) / _MB:.1f} MB is larger than the "
                                     f"{_limit_text(max_bytes)} limit")
        upload = await receive_upload(request, tmpdir(), max_bytes)
        try:
            if upload.size == 0:
                raise HTTPException(415, f"{upload.filename}: empty file (0 bytes), not audio")
            return await run_in_threadpool(infer, upload.path, upload.filename, spectrogram, saliency)
        except AudioDecodeError as exc:
            raise HTTPException(415, str(exc)) from None
        except MelgenreError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            upload.discard()

    @app.get("/health", summary="Liveness, the loaded model's id and the upload limit")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": model.model_id, "max_upload_mb": max_upload_mb,
                "index_tracks": len(index) if index is not None else None}

    @app.get("/model", summary="The model card: classes, preset, metrics ...")
    def model_card() -> dict[str, Any]:
        card = dict(model.card or {})
        card.setdefault("model_id", model.model_id)
        card.setdefault("classes", list(model.classes))
        card.setdefault("preset", model.preset.to_dict())
        return jsonable_encoder(card)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(api_reference_html(app.openapi()),
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    return app


def api_reference_html(schema: dict[str, Any]) -> str:
    """One self-contained HTML page (no scripts, no outside assets) describing an OpenAPI schema."""
    e = html.escape
    info = schema.get("info", {})
    parts = [f"<h1>{e(info.get('title', 'API'))} {e(str(info.get('version', '')))}</h1>",
             f"<p>{e(info.get('description', ''))}</p>",
             "<p>Example: <code>curl -F file=@song.mp3 'http://127.0.0.1:8000/predict?spectrogram=false'</code>. "
             "Machine-readable schema: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2><p><b>{e(op.get('summary', ''))}</b></p>")
            if op.get("description"):
                parts.append(f"<p class='d'>{e(op['description'])}</p>")
            params = [(p["name"], p["in"], p.get("required", False), p.get("description", ""))
                      for p in op.get("parameters", [])]
            for ctype, body in op.get("requestBody", {}).get("content", {}).items():
                fields = body.get("schema", {}).get("properties", {})
                required = body.get("schema", {}).get("required", [])
                params += [(name, f"body ({ctype})", name in required, f.get("description", ""))
                           for name, f in fields.items()]
            if params:
                rows = "".join(f"<tr><td><code>{e(n)}</code></td><td>{e(w)}</td><td>{'yes' if r else 'no'}</td>"
                               f"<td>{e(d)}</td></tr>" for n, w, r, d in params)
                parts.append(f"<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>"
                             f"{rows}</table>")
            codes = "".join(f"<li><code>{e(code)}</code> {e(r.get('description', ''))}</li>"
                            for code, r in op.get("responses", {}).items())
            parts.append(f"<p>Responses:</p><ul>{codes}</ul>")
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"
             ".d{white-space:pre-wrap}code{background:#f4f4f4}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(info.get('title', 'API'))} API"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _version() -> str:
    from melgenre import __version__

    return __version__
