"""ONNX export of a model (package, run or checkpoint), float or int8, with its card in the metadata.

The graph-level work (``torch.onnx`` export, int8 quantization, the CPU's int8 features) is in
:mod:`melgenre.models.export`; this module adds the card, the "not music" centres and the int8
calibration windows from audio files, so that :func:`melgenre.inference.load_model` can predict with
the ``.onnx`` file alone.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from melgenre import audio
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.features import Preset
from melgenre.models.embedding import WithEmbedding
from melgenre.package import load_torch, resolve_shipped, stored_trust_centres
from melgenre.utils import atomic_path
from melgenre.windows import window_images


def write_onnx(module: nn.Module, card: dict[str, Any], path: Path, centres: np.ndarray | None = None) -> None:
    """Export ``module`` to ``path`` with the card (and the "not music" ``centres`` (K, D), if any) in the
    ONNX metadata; the graph outputs ``logits`` and ``embedding`` (the last linear layer's input)."""
    import base64

    import onnx

    from melgenre.models import export_onnx

    h, w = Preset.from_dict(card["preset"]).image_shape()
    export_onnx(WithEmbedding(module), path, input_shape=(1, h, w), opset=17, output_names=("logits", "embedding"))
    proto = onnx.load(str(path))
    card = dict(card)  # a ModelCard (melgenre.card) reads as the JSON object it stores
    props = {"melgenre_card": json.dumps(card), "classes": json.dumps(card["classes"]),
             "preset": json.dumps(card["preset"])}
    if centres is not None:
        centres = np.atleast_2d(np.asarray(centres, dtype="<f4"))
        props["melgenre_trust_centres"] = base64.b64encode(centres.tobytes()).decode()
        props["melgenre_trust_dim"] = str(centres.shape[1])
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_onnx_file(source: str | Path, out: str | Path, int8_calibration: Sequence[str | Path] = (),
                     calibration_files: int = 32) -> Path:
    """Export a model to ONNX (opset 17, dynamic batch) with its card in the metadata.

    The graph's input is ``mel`` ``(batch, 1, H, W)`` and its output ``logits``
    ``(batch, C)``; ``metadata_props`` hold ``melgenre_card`` (the card as JSON), ``classes``
    and ``preset``, so :func:`load_model` can predict with the file alone.

    Parameters
    ----------
    source : path or str
        A run directory, a ``.ckpt`` inside one, a package ``.json``/``.safetensors``, or the
        name of a shipped package.
    out : path
        The ``.onnx`` file to write (atomically).
    int8_calibration : sequence of paths, optional
        Audio files and/or folders: when given, the model is quantized to int8
        (:func:`melgenre.models.quantize_int8`), its activation ranges taken from every window of
        up to ``calibration_files`` of these files (evenly spread over the sorted list). The card
        gets ``quantization`` and the model id ``-int8``.
    calibration_files : int
        The most files read for calibration.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    MelgenreError
        No calibration file could be decoded.
    """
    path = resolve_shipped(source)
    module, card = load_torch(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    centres = stored_trust_centres(path, card)
    if not int8_calibration:
        with atomic_path(out) as tmp:
            write_onnx(module, card, tmp, centres=centres)
        return out
    from melgenre.models import quantize_int8
    from melgenre.models.export import INT8_METHOD

    windows = _calibration_windows(int8_calibration, Preset.from_dict(card["preset"]), calibration_files)
    card = {**dict(card), "model_id": f"{card['model_id']}-int8",
            "quantization": {"method": INT8_METHOD, "of": card["model_id"], "calibration_files": len(windows),
                             "calibration_windows": sum(len(w) for w in windows)}}
    with tempfile.TemporaryDirectory(prefix="melgenre-onnx-") as tmp, atomic_path(out) as part:
        float_path = Path(tmp) / "model.onnx"
        write_onnx(module, card, float_path, centres=centres)
        quantize_int8(float_path, part, (w[:, None] for w in windows))
    return out


def _calibration_windows(sources: Sequence[str | Path], preset: Preset, most: int) -> list[np.ndarray]:
    """The window images ``(W, H, W_img)`` of up to ``most`` decodable files of ``sources``."""
    files = audio.expand_paths(sources)
    if len(files) > most:
        files = [files[i * len(files) // most] for i in range(most)]
    out = []
    for f in files:
        try:
            out.append(window_images(audio.load(f, sr=preset.sr).samples, preset)[0])
        except AudioDecodeError:
            continue  # a calibration set is a sample: an undecodable file is left out
    if not out:
        raise MelgenreError(f"int8 calibration: none of the {len(files)} files could be decoded "
                            f"({', '.join(map(str, sources))})")
    return out
