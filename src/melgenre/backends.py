"""What runs a model's network: one small protocol, :class:`Backend`, and its two implementations.

A backend turns a batch of mel images ``(N, H, W)`` into logits ``(N, C)`` and, when asked and
able, the model's embeddings ``(N, D)`` (the input of its last linear layer) from the same forward
pass. Everything around the network (decoding, windows, calibration, flags) is the same for both:
:class:`melgenre.pipeline.Predictor` does it.

* :class:`OnnxBackend`: ONNX Runtime on CPU, the core install's (``pip install melgenre``);
* :class:`TorchBackend`: a PyTorch module, with the ``train`` extra (needed for Grad-CAM saliency
  and for models that have no ONNX file yet).

Neither module imports torch at import time.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from melgenre.errors import MelgenreError

if TYPE_CHECKING:
    from torch import nn

#: Images per forward pass, unless the card's ``predict_batch`` or :data:`PREDICT_BATCH` says otherwise.
BATCH_SIZE = 32

#: Images per forward pass of models whose activations are large: musicnn needs about 40 MB a window
#: with ONNX Runtime (1.6 GB at 32, 0.66 GB at 8, measured), for the same time per window.
PREDICT_BATCH = {"musicnn": 8}

_ONNX_PROVIDERS = ["CPUExecutionProvider"]


@runtime_checkable
class Backend(Protocol):
    """Runs a model's network on mel images."""

    #: ``"onnx"`` or ``"torch"``.
    name: str

    @property
    def has_embedding(self) -> bool:
        """Whether :meth:`run` can return embeddings."""

    def run(self, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, C)`` of images ``(N, H, W)`` in batches of ``batch`` and, with ``embeddings``
        and :attr:`has_embedding`, the embeddings ``(N, D)`` of the same pass (else None)."""


def _images(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` images as the network's contiguous float32 input ``(N, 1, H, W)``."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.float32)[:, None])


class OnnxBackend:
    """An ONNX Runtime session whose graph has the input ``mel`` and the outputs ``logits`` (and,
    when exported by melgenre since the "not music" score, ``embedding``)."""

    name = "onnx"

    def __init__(self, session: Any, num_classes: int):
        self.session = session
        self.num_classes = num_classes

    @functools.cached_property
    def has_embedding(self) -> bool:
        """The graph has an ``embedding`` output (files exported before it existed do not)."""
        return any(o.name == "embedding" for o in self.session.get_outputs())

    def run(self, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
            ) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: D102  (Backend.run)
        names = ["logits"] + (["embedding"] if embeddings and self.has_embedding else [])
        x = _images(images)
        out = [self.session.run(names, {"mel": x[i:i + batch]}) for i in range(0, len(x), batch)]
        logits = np.concatenate([o[0] for o in out]) if out else np.zeros((0, self.num_classes), np.float32)
        return logits, np.concatenate([o[1] for o in out]) if out and len(names) == 2 else None


class TorchBackend:
    """A PyTorch module (eval mode, channels-last where that is faster on CPU)."""

    name = "torch"
    has_embedding = True

    def __init__(self, module: nn.Module):
        from melgenre.models import channels_last

        self.module = channels_last(module.eval())

    def run(self, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
            ) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: D102  (Backend.run)
        return forward_outputs(self.module, images, embeddings=embeddings, batch=batch)


def forward_outputs(module: nn.Module, images: np.ndarray, embeddings: bool = False, batch: int = BATCH_SIZE
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(N, C)`` of a torch model on images ``(N, H, W)``, in batches of ``batch``, and
    with ``embeddings`` the input of its last linear layer ``(N, D)`` from the same forward pass (else None)."""
    import contextlib

    import torch

    from melgenre.models.embedding import captured_embeddings, last_linear

    last = last_linear(module)
    x = _images(images)
    logits = []
    with captured_embeddings(module) if embeddings else contextlib.nullcontext([]) as captured:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                logits.append(module(torch.from_numpy(x[i:i + batch])).float().numpy())
    out = np.concatenate(logits) if logits else np.zeros((0, last.out_features), dtype=np.float32)
    if not embeddings:
        return out, None
    emb = torch.cat(captured).float().numpy() if captured else np.zeros((0, last.in_features), dtype=np.float32)
    return out, emb


def onnx_session(model: str | Path | bytes, label: str) -> Any:
    """An ONNX Runtime CPU session of a file or its bytes; a one-line error naming ``label`` when unreadable."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=_ONNX_PROVIDERS)
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types for bad files)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelgenreError(f"{label}: not a readable ONNX model ({reason})") from None


__all__ = ["BATCH_SIZE", "PREDICT_BATCH", "Backend", "OnnxBackend", "TorchBackend", "forward_outputs",
           "onnx_session"]
