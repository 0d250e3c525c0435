"""Shared fixtures: synthetic corpora and odd audio files made on the fly; the real dev clips
in ../shared/data are used only when present (tests needing them skip with a reason)."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melgenre import store, synth

SHARED_DATA = Path(os.environ.get("MELGENRE_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder, or skip the test when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (set MELGENRE_SHARED_DATA)")
    return path


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine tone, ``(T,)`` or ``(T, channels)`` float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    y = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return y if channels == 1 else np.stack([y * (c + 1) / channels for c in range(channels)], axis=1)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """4 classes × 6 clips of 4 s (session-wide, read-only by convention)."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_corpus(root, n_classes=4, per_class=6, seconds=4.0, seed=7)
    return root


@pytest.fixture()
def small_corpus(tmp_path) -> Path:
    """3 classes × 3 clips of 4.6 s (2 chunks each in preset fast) plus one corrupt and one silent file, in a private folder."""
    root = tmp_path / "corpus"
    synth.write_corpus(root, n_classes=3, per_class=3, seconds=4.6, seed=3)
    (root / "class01" / "broken.wav").write_text("this is not audio")
    sf.write(root / "class02" / "quiet.wav", np.zeros(22_050 * 3, dtype=np.float32), 22_050)
    return root


TINY_SERVE = {
    "name": "tiny-serve", "seed": 0,
    "data": {"batch_size": 8, "fractions": [0.5, 0.25, 0.25]},
    "model": {"name": "melcnn", "width": 4, "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    "train": {"max_epochs": 2, "patience": 2},
}


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    """A 2-epoch melcnn on 3 synthetic classes saved as a model package (built once per session);
    returns the card. Its clips are in ``tiny_card.parent / "clips"``."""
    from melgenre.config import config_from_dict
    from melgenre.predict import save_package
    from melgenre.train import fit

    root = tmp_path_factory.mktemp("tiny-model")
    synth.write_corpus(root / "clips", n_classes=3, per_class=4, seconds=3.5, seed=1)
    store.prepare(root / "clips", "fast", root / "syn-fast.h5", workers=1, progress=False)
    run = fit(config_from_dict(TINY_SERVE), root / "runs", data=root / "syn-fast.h5", progress=False)
    return save_package(run, root / "tiny")


@pytest.fixture(scope="session")
def library_index(tiny_card, tmp_path_factory) -> Path:
    """A `melgenre index` of the tiny model's 12 synthetic clips (built once per session)."""
    from melgenre.similar import build_index

    out = tmp_path_factory.mktemp("library") / "library.h5"
    build_index(tiny_card.parent / "clips", out, model=tiny_card, workers=1)
    return out


@contextmanager
def run_server(app):
    """Run ``app`` under a real uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def fit_tiny_cnn(images: np.ndarray, labels: np.ndarray, n_classes: int, epochs: int = 5, width: int = 8, seed: int = 0):
    """A melcnn trained in a plain loop on ``(N, H, W)`` images (Adam, batches of 16), in eval mode.

    BatchNorm statistics are recomputed on all images with the final weights: after a few dozen steps
    the running averages still lag behind, and eval-mode predictions would be off.
    """
    import torch

    from melgenre.models import build

    torch.manual_seed(seed)
    module = build("melcnn", num_classes=n_classes, width=width, dropout=0.0)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    x, y = torch.from_numpy(np.ascontiguousarray(images[:, None], dtype=np.float32)), torch.from_numpy(labels)
    module.train()
    for _epoch in range(epochs):
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        module(x)
    return module.eval()
