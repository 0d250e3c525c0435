"""HTTP service: every route and error code, temp-file hygiene, concurrency, a load test against a
real uvicorn server on 127.0.0.1, and the `melgenre serve` command.

The model is a tiny melcnn trained for 2 epochs on synthetic clips (built once per session)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import stat
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from conftest import run_server
from PIL import Image
from starlette.requests import Request
from typer.testing import CliRunner

from melgenre import synth
from melgenre.cli import app as cli_app
from melgenre.errors import MelgenreError
from melgenre.serve import create_app, display_name, receive_upload

with warnings.catch_warnings():  # starlette's note about httpx2; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="session")
def tiny_model(tiny_card):
    from melgenre.predict import load_model

    return load_model(tiny_card, backend="torch")  # Grad-CAM saliency needs the torch module


@pytest.fixture(scope="session")
def clips(tiny_card) -> list[Path]:
    """One synthetic clip per class (3.5 s, 22.05 kHz mono WAV)."""
    return sorted((tiny_card.parent / "clips").glob("*/*.00000.wav"))


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(model=tiny_model)) as c:
        yield c


def _post(client, path: Path | str, data: bytes | None = None, name: str | None = None, query: str = "",
          field: str = "file", content_type: str = "audio/wav"):
    body = Path(path).read_bytes() if data is None else data
    return client.post(f"/predict{query}", files={field: (name or Path(path).name, body, content_type)})


def _tmp_files(app) -> list[str]:
    folder = app.state.tmpdir
    return sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []


# -- routes ------------------------------------------------------------------------------------

def test_health(client, tiny_model):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["model_id"] == tiny_model.model_id


def test_model_card(client, tiny_model):
    r = client.get("/model")
    assert r.status_code == 200
    card = r.json()
    assert card["classes"] == tiny_model.classes
    assert card["model_id"] == tiny_model.model_id
    assert card["preset"]["name"] == "fast" and card["preset"]["sr"] == 22_050
    assert "metrics" in card


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for element_id in ("file-input", "drop-zone", "result-genre", "prob-chart", "spectrogram", "error"):
        assert f'id="{element_id}"' in html, element_id
    assert "http://" not in html and "https://" not in html  # no CDN: everything from this server
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.head("/").status_code == 200
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
        assert "http://" not in r.text and "https://" not in r.text
    assert 'fetch("/predict?spectrogram=true"' in client.get("/static/app.js").text


def test_docs_and_openapi(client):
    r = client.get("/docs")  # works offline: no scripts, no outside assets
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script" not in r.text and "http://cdn" not in r.text and "https://" not in r.text
    for text in ("POST /predict", "GET /health", "GET /model", "<code>spectrogram</code>", "<code>file</code>",
                 "<code>413</code>", "/openapi.json"):
        assert text in r.text, text
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/model"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    schema = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert {"413", "415", "422"} <= set(predict["responses"])
    assert any(p["name"] == "spectrogram" for p in predict["parameters"])


def test_predict(client, tiny_model, clips):
    path = clips[1]
    r = _post(client, path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"filename", "label", "top", "probabilities", "windows", "duration", "padded",
                         "silent", "flags", "model_id", "segments", "timeline"}
    assert body["filename"] == path.name and body["model_id"] == tiny_model.model_id
    assert list(body["probabilities"]) == tiny_model.classes
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert len(body["top"]) == 3 and body["top"][0]["genre"] == body["label"]
    assert [t["probability"] for t in body["top"]] == sorted((t["probability"] for t in body["top"]), reverse=True)
    assert body["label"] in tiny_model.classes
    assert body["duration"] == pytest.approx(3.5, abs=1e-3) and body["padded"] is False and body["silent"] is False
    windows = body["windows"]
    assert len(windows["starts"]) == len(windows["probabilities"]) >= 1
    assert all(len(row) == len(tiny_model.classes) for row in windows["probabilities"])
    # the same answer as the library
    pred = tiny_model.predict(path)
    assert body["label"] == pred.label
    for genre, p in pred.probabilities.items():
        assert body["probabilities"][genre] == pytest.approx(p, abs=1e-5)


def test_predict_with_spectrogram(client, clips, tiny_model):
    r = _post(client, clips[0], query="?spectrogram=true")
    assert r.status_code == 200, r.text
    url = r.json()["spectrogram"]
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "PNG" and image.size == (720, 324)
    assert np.asarray(image.convert("L")).std() > 10  # a picture, not a blank canvas
    assert "spectrogram" not in _post(client, clips[0], query="?spectrogram=false").json()


def test_predict_segments_timeline_and_saliency(client, clips, tiny_model):
    from melgenre.timeline import smooth

    body = _post(client, clips[0], query="?spectrogram=true&saliency=true").json()
    pred = tiny_model.predict(clips[0])
    assert [(s["start"], s["end"], s["genre"]) for s in body["segments"]] == [
        (s.start, s.end, s.genre) for s in pred.segments]
    assert body["segments"][0]["start"] == 0.0 and body["segments"][-1]["end"] == pytest.approx(3.5, abs=1e-3)
    tl = body["timeline"]
    assert tl["classes"] == tiny_model.classes and tl["window_seconds"] == 3.0
    assert tl["times"] == pytest.approx([s + 1.5 for s in pred.window_starts])
    np.testing.assert_allclose(tl["probabilities"], smooth(pred.window_probabilities), atol=1e-5)
    sal = body["saliency"]
    assert sal["genre"] == body["label"] and sal["method"] == "gradcam"
    assert sal["evidence"] is None  # melcnn has no tag prior: the map alone (tag-prior models: test_transfer)
    image = Image.open(io.BytesIO(base64.b64decode(sal["image"].split(",", 1)[1])))
    assert image.format == "PNG" and image.size == (720, 324) and sal["image"] != body["spectrogram"]
    assert "saliency" not in _post(client, clips[0]).json()


def test_predict_other_formats_and_silence(client, tmp_path, tiny_model):
    """A stereo 44.1 kHz FLAC is downmixed/resampled; a silent clip is flagged, a short one padded."""
    t = np.arange(int(44_100 * 4.0)) / 44_100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 330 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo.astype(np.float32), 44_100)
    body = _post(client, tmp_path / "stereo.flac", content_type="audio/flac").json()
    assert body["label"] in tiny_model.classes and body["duration"] == pytest.approx(4.0, abs=1e-3)
    sf.write(tmp_path / "quiet.wav", np.zeros(22_050, dtype=np.float32), 22_050)
    body = _post(client, tmp_path / "quiet.wav", query="?spectrogram=true").json()
    assert body["silent"] is True and body["padded"] is True and body["flags"] == ["silent", "padded", "not_music"] and body["spectrogram"].startswith("data:image/png")


def test_predict_m4a_and_opus_uploads(client, tmp_path, tiny_model):
    """The page offers M4A and Opus: an M4A upload goes through ffmpeg (by its name), an Opus one through libsndfile."""
    import shutil
    import subprocess

    t = np.arange(int(48_000 * 3.0)) / 48_000
    y = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    sf.write(tmp_path / "song.opus", y, 48_000, format="OGG", subtype="OPUS")
    body = _post(client, tmp_path / "song.opus", content_type="audio/ogg").json()
    assert body["label"] in tiny_model.classes and body["duration"] == pytest.approx(3.0, abs=0.05)
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    sf.write(tmp_path / "song.wav", y, 48_000)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac",
                    str(tmp_path / "song.m4a")], check=True)
    body = _post(client, tmp_path / "song.m4a", content_type="audio/mp4").json()
    assert body["filename"] == "song.m4a" and body["label"] in tiny_model.classes
    assert body["duration"] == pytest.approx(3.0, abs=0.05)


def test_client_filename_is_only_a_label(tiny_model, clips, tmp_path):
    with TestClient(create_app(model=tiny_model)) as c:
        r = _post(c, clips[0], name="../../../../etc/evil name.wav")
        assert r.status_code == 200
        assert r.json()["filename"] == "evil name.wav"
        assert _tmp_files(c.app) == []
        r = _post(c, clips[0], data=b"not audio", name="..\\..\\x\\bad.wav")
        assert r.status_code == 415 and r.json()["detail"].startswith("bad.wav: ")
        assert _tmp_files(c.app) == []
    assert not Path("/etc/evil name.wav").exists()
    assert display_name("") == display_name("..") == display_name(None) == "upload"
    assert display_name(b"C:\\Users\\me\\a\x00b\x1b[31m.wav") == "ab[31m.wav"
    assert display_name('say %22hi%22.wav') == 'say "hi".wav'  # browsers escape " in multipart names
    assert len(display_name("a" * 500 + ".wav")) <= 120


# -- errors ------------------------------------------------------------------------------------

def test_415_text_file_renamed_wav(client, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are my notes, not a song\n" * 20)
    r = _post(client, fake)
    assert r.status_code == 415
    detail = r.json()["detail"]
    assert detail.startswith("notes.wav: ") and "not a decodable audio file" in detail
    assert _tmp_files(client.app) == []


def test_415_empty_file(client):
    r = _post(client, "empty.wav", data=b"")
    assert r.status_code == 415
    assert r.json()["detail"] == "empty.wav: empty file (0 bytes), not audio"


def test_415_truncated_wav(client, clips):
    r = _post(client, clips[0], data=clips[0].read_bytes()[:30], name="cut.wav")
    assert r.status_code == 415 and r.json()["detail"].startswith("cut.wav: ")


def test_422_missing_file_field(client, clips):
    r = _post(client, clips[0], field="audio")
    assert r.status_code == 422
    assert "missing multipart field 'file'" in r.json()["detail"]
    r = client.post("/predict", json={"file": "song.wav"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/predict")
    assert r.status_code == 422


def test_400_malformed_multipart(client, clips):
    boundary = "XyZ123"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + clips[0].read_bytes()[:1000]  # no closing boundary
    r = client.post("/predict", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and "malformed" in r.json()["detail"]
    assert _tmp_files(client.app) == []


def _multipart(name: str, payload_chunks, boundary: str = "limitboundary"):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
           f"Content-Type: audio/wav\r\n\r\n").encode()
    yield from payload_chunks
    yield f"\r\n--{boundary}--\r\n".encode()


def test_413_too_large(tiny_model, clips, tmp_path):
    app = create_app(model=tiny_model, max_upload_mb=1)
    with TestClient(app) as c:
        # judged by Content-Length, before reading the body
        r = _post(c, "big.wav", data=os.urandom(1_500_000))
        assert r.status_code == 413
        assert "larger than the 1 MB limit" in r.json()["detail"]
        assert _tmp_files(app) == []
        # no Content-Length (chunked): judged while streaming, the file is named
        chunks = (b"\0" * 65_536 for _ in range(24))  # 1.5 MB
        r = c.post("/predict", content=_multipart("stream.wav", chunks),
                   headers={"content-type": "multipart/form-data; boundary=limitboundary"})
        assert r.status_code == 413
        assert r.json()["detail"] == "stream.wav: upload is larger than the 1 MB limit"
        assert _tmp_files(app) == []
        # just under the limit is fine: 20 s of 16-bit mono at 22.05 kHz = 882 kB
        y = synth.synth_clip(0, 3, seconds=20.0, rng=np.random.default_rng(0))
        sf.write(tmp_path / "long.wav", y, 22_050, subtype="PCM_16")
        assert (tmp_path / "long.wav").stat().st_size < 1024 * 1024
        r = _post(c, tmp_path / "long.wav")
        assert r.status_code == 200 and r.json()["duration"] == pytest.approx(20.0, abs=1e-3)
        assert _tmp_files(app) == []


def test_upload_stream_stops_at_the_limit(tmp_path):
    """The body is consumed only up to the limit: a 100 MB upload is abandoned after ~1 MB."""
    sent = []

    async def receive():
        if len(sent) == 0:
            sent.append(0)
            head = b"".join(_multipart("huge.wav", []))[:-len(b"\r\n--limitboundary--\r\n")]
            return {"type": "http.request", "body": head, "more_body": True}
        sent.append(65_536)
        return {"type": "http.request", "body": b"\1" * 65_536, "more_body": sum(sent) < 100 * 2**20}

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=limitboundary")]}
    import anyio
    from fastapi import HTTPException

    async def run():
        with pytest.raises(HTTPException) as info:
            await receive_upload(Request(scope, receive), str(tmp_path), 2**20)
        return info.value

    exc = anyio.run(run)
    assert exc.status_code == 413 and exc.detail.startswith("huge.wav: ")
    assert sum(sent) < 2**20 + 2 * 65_536  # stopped right after passing 1 MB, not after 100 MB
    assert list(tmp_path.iterdir()) == []


def test_temp_dir_private_and_removed_at_shutdown(tiny_model, clips):
    app = create_app(model=tiny_model)
    with TestClient(app) as c:
        folder = app.state.tmpdir
        assert Path(folder).name.startswith("melgenre-") and Path(folder).is_dir()
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert _post(c, clips[0]).status_code == 200
        assert os.listdir(folder) == []
    assert not os.path.exists(folder)


def test_create_app_loads_model_from_path(tiny_card, clips):
    with TestClient(create_app(model_path=tiny_card, top_k=1)) as c:
        body = _post(c, clips[0]).json()
        assert len(body["top"]) == 1 and len(body["probabilities"]) == 3
    with pytest.raises(MelgenreError, match="missing.json"):
        create_app(model_path=tiny_card.parent / "missing.json")
    with pytest.raises(ValueError):
        create_app(model=object(), max_upload_mb=0)


# -- concurrency and load ----------------------------------------------------------------------

def test_concurrent_requests(client, clips):
    expected = {p.name: _post(client, p).json()["label"] for p in clips}

    def work(i: int) -> list[tuple[str, int, str]]:
        out = []
        for j in range(3):
            path = clips[(i + j) % len(clips)]
            r = _post(client, path, query="?spectrogram=true" if (i + j) % 4 == 0 else "")
            out.append((path.name, r.status_code, r.json().get("label")))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [item for chunk in pool.map(work, range(8)) for item in chunk]
    assert len(results) == 24
    assert all(code == 200 for _, code, _ in results), results
    assert all(label == expected[name] for name, _, label in results)
    assert _tmp_files(client.app) == []


@pytest.fixture(scope="module")
def live_server(tiny_model):
    """A real uvicorn server on 127.0.0.1:<free port>, in a thread; yields (base url, app)."""
    app = create_app(model=tiny_model, max_upload_mb=2)
    with run_server(app) as url:
        yield url, app


def test_load_against_real_server(live_server, clips, tmp_path):
    """200 requests, 8 at a time (1 in 10 a bad file): no 5xx, no failures, temp folder empty."""
    url, app = live_server
    payloads = [(p.name, p.read_bytes()) for p in clips]
    bad = ("broken.wav", b"RIFF but not really a wav file")
    expected = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, data in payloads:
            expected[name] = c.post("/predict", files={"file": (name, data)}).json()["label"]

    def one(i: int) -> tuple[int, str, str | None]:
        name, data = bad if i % 10 == 9 else payloads[i % len(payloads)]
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/predict", files={"file": (name, data, "audio/wav")})
        return r.status_code, name, r.json().get("label")

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    seconds = time.perf_counter() - started
    codes = Counter(code for code, _, _ in results)
    assert not any(code >= 500 for code in codes), codes
    assert codes == {200: 180, 415: 20}, codes
    assert all(label == expected[name] for code, name, label in results if code == 200)
    with httpx.Client(base_url=url) as c:
        assert c.get("/health").json()["status"] == "ok"
    assert _tmp_files(app) == []
    print(f"load test: 200 requests, 8 concurrent, {seconds:.1f} s ({200 / seconds:.0f} req/s)")


def test_real_server_routes(live_server, clips):
    url, _ = live_server
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/").status_code == 200
        assert c.get("/docs").status_code == 200
        assert c.get("/openapi.json").json()["info"]["title"] == "melgenre"
        r = c.post("/predict?spectrogram=true", files={"file": (clips[2].name, clips[2].read_bytes())})
        assert r.status_code == 200 and r.json()["spectrogram"].startswith("data:image/png;base64,")
        assert c.post("/predict", files={"file": ("e.wav", b"")}).status_code == 415


# -- similar tracks ------------------------------------------------------------------------------

def test_predict_lists_similar_tracks_with_an_index(tiny_model, clips, library_index):
    from melgenre.similar import Index, embed_file

    with TestClient(create_app(model=tiny_model, index=library_index, similar_k=4)) as c:
        assert c.get("/health").json()["index_tracks"] == 12
        r = _post(c, clips[1], name="upload.wav")
        assert r.status_code == 200, r.text
        similar = r.json()["similar"]
    assert len(similar) == 4 and all(set(m) == {"path", "score"} for m in similar)
    # the uploaded clip is in the library: it is its own nearest track; paths are relative to the library
    assert similar[0]["path"] == f"{clips[1].parent.name}/{clips[1].name}"
    assert similar[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [m["score"] for m in similar] == sorted((m["score"] for m in similar), reverse=True)
    index = Index(library_index)
    expected = index.query(embed_file(tiny_model, clips[1])[0], k=4)
    assert [m["path"] for m in similar] == [index.relative(m.path) for m in expected]
    assert not any(m["path"].startswith("/") for m in similar)


def test_uploads_are_embedded_over_the_indexs_windows(tiny_card, clips, tmp_path):
    """An index keeps its own windows (here every window) while the served model samples 4: a long upload is
    embedded as the index's tracks were, so a track in the library is its own nearest match at score 1."""
    from melgenre.predict import load_model
    from melgenre.similar import build_index

    parts = [sf.read(f, dtype="float32") for f in clips]
    song = tmp_path / "music" / "song.wav"
    song.parent.mkdir()
    sf.write(song, np.concatenate([y for y, _ in parts * 2]), parts[0][1])  # 21 s: 12 windows
    for clip in clips:
        shutil.copy2(clip, song.parent / clip.name)
    out = tmp_path / "all.h5"
    build_index(song.parent, out, model=tiny_card, workers=1, windows="all")
    model = load_model(tiny_card, windows=4)
    assert model.windows_of(song)[0].sampled
    with TestClient(create_app(model=model, index=out, similar_k=2)) as c:
        r = _post(c, song, name="upload.wav")
    assert r.status_code == 200, r.text
    best = r.json()["similar"][0]
    assert best["path"] == "song.wav"
    # the tiny model's embeddings are nearly parallel: a 4-window query would score 1 - 8e-6 or so
    from melgenre.similar import embed_samples

    y = np.concatenate([y for y, _ in parts * 2])
    every = load_model(tiny_card, windows="all")
    sampled_score = float(embed_samples(model, y, "song") @ embed_samples(every, y, "song"))
    assert sampled_score < 1 - 2e-6 and abs(best["score"] - 1.0) < (1.0 - sampled_score) / 4


def test_cli_serve_with_an_index(monkeypatch, tiny_card, library_index, tmp_path):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: calls.append(app))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_card), "--index", str(library_index),
                                     "--similar-k", "3"])
    assert result.exit_code == 0, result.output
    assert len(calls[0].state.index) == 12 and "similar tracks from" in result.output
    not_index = tmp_path / "x.h5"
    not_index.write_text("no")
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_card), "--index", str(not_index)])
    assert result.exit_code == 2 and "x.h5: not an HDF5 file" in result.output and not calls[1:]


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_serve(monkeypatch, tiny_card):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: calls.append((app, host, port)))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_card), "--port", "8123", "--max-upload-mb", "5",
                                     "--top-k", "2"])
    assert result.exit_code == 0, result.output
    app, host, port = calls[0]
    assert (host, port) == ("127.0.0.1", 8123)
    assert app.state.max_upload_bytes == 5 * 2**20 and app.state.top_k == 2
    assert "serving model melcnn-" in result.output


def test_cli_serve_help_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for text in ("--host", "127.0.0.1", "--port", "8000", "--model", "--max-upload-mb", "20", "--top-k"):
        assert text in result.output, text
    result = runner.invoke(cli_app, ["serve", "--model", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "nope.json" in result.output and "Traceback" not in result.output
