"""Optional dependencies: which extra of ``pip install melgenre[...]`` brings which module.

The core install (``pip install melgenre``: NumPy, soundfile, soxr, ONNX Runtime, mutagen, Typer,
rich, PyYAML) predicts, tags, scores and runs the beets plugin with the shipped models. Everything
else is an extra (``pyproject.toml``): ``train`` (PyTorch, Lightning, HDF5 stores, plots, librosa:
training, YOLO models, ``prepare``, ``explain``, ``export``), ``serve`` (FastAPI), ``ray``, ``beets``,
``ann`` (faiss), ``docs``, and ``all``. A command that needs a missing one says which in one line
(:func:`missing_extra`, used by the CLI for any command).
"""

from __future__ import annotations

import importlib.util

from melgenre.errors import MelgenreError

#: Top-level module -> the extra that installs it.
EXTRAS = {
    "torch": "train", "lightning": "train", "torchmetrics": "train", "tensorboardX": "train",
    "h5py": "train", "matplotlib": "train", "librosa": "train", "scipy": "train", "sklearn": "train",
    "safetensors": "train", "onnx": "train", "PIL": "train", "pandas": "train",
    "fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve", "starlette": "serve",
    "ray": "ray", "beets": "beets", "faiss": "ann", "mkdocs": "docs",
}

#: How each extra is installed (torch pinned: a bare ``torch`` from PyPI is a multi-GB CUDA build).
INSTALL = {"train": 'pip install torch==2.13.0 "melgenre[train]"'}


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return INSTALL.get(extra, f'pip install "melgenre[{extra}]"')


def missing_extra(exc: ImportError) -> str | None:
    """One line naming the extra to install for a module that failed to import (None: not an extra's)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return f"this needs {name}, which the core install leaves out: {install_hint(extra)}"


def require(module: str, what: str) -> None:
    """Raise a one-line :class:`MelgenreError` saying which extra to install when ``module`` cannot be
    imported; ``what`` names what needs it."""
    if importlib.util.find_spec(module) is None:
        raise MelgenreError(f"{what} needs {module}, which the core install leaves out: "
                            f"{install_hint(EXTRAS.get(module, 'all'))}")


__all__ = ["EXTRAS", "INSTALL", "install_hint", "missing_extra", "require"]
