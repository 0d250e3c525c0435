"""Model packages: the card, the model id, reading a model from a run, checkpoint or package, and writing packages.

Where a model comes from (:func:`melgenre.inference.load_model` reads all of them):

* a **model package**: ``<stem>.safetensors`` (the model's ``state_dict``) beside ``<stem>.json``
  (the *card*: format, model config, classes, feature preset, model id, metrics, training facts),
  written by :func:`save_package`; the models shipped with melgenre are packages (or ONNX files) in
  ``melgenre/weights`` (:func:`shipped_models`), the default model ``default.json``;
* a **run directory** of ``melgenre train`` or one of its ``.ckpt`` files (the preset is read from
  the run's feature file, the metrics from its ``metrics.json``);
* an **ONNX file** written by :func:`melgenre.export.export_onnx_file` (the card is in its metadata).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from melgenre import __version__
from melgenre.card import CARD_FORMAT, ModelCard
from melgenre.errors import MelgenreError
from melgenre.features import Preset
from melgenre.trust import load_reference
from melgenre.utils import atomic_path, run_checkpoint
from melgenre.windows import parse_windows

if TYPE_CHECKING:  # torch is the train extra's: reading cards and shipped ONNX models never imports it
    import torch
    from torch import nn


#: Folder (an importlib resource) holding the default model package ``default.json`` + ``.safetensors``.
DEFAULT_MODEL_DIR = resources.files("melgenre").joinpath("weights")


# -- reading models ----------------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line :class:`MelgenreError` naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MelgenreError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise MelgenreError(f"{path}: expected a JSON object")
    return data


def weights_bytes(module: nn.Module) -> bytes:
    """The module's state_dict as safetensors bytes (deterministic: what a package stores)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def model_id(name: str, weights: bytes) -> str:
    """A model's id: its architecture ``name`` and 12 hex digits of the SHA-256 of its weights."""
    return f"{name}-{hashlib.sha256(weights).hexdigest()[:12]}"


def _build(path: Path, model_config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    from melgenre.models import build_from_config

    try:
        module = build_from_config(model_config)
        module.load_state_dict(state, strict=True)
    except (MelgenreError, RuntimeError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelgenreError(f"{path}: weights do not fit the model config ({reason})") from None
    return module.eval()


def scalars(d: dict[str, Any]) -> dict[str, Any]:
    """The numeric (non-bool) entries of ``d``."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_card(run_dir: Path, hparams: dict[str, Any]) -> dict[str, Any]:
    """Card fields a run directory knows: preset (from its feature file), metrics, training facts."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    candidates = [p for p in (metrics.get("data"), (cfg.get("data") or {}).get("path")) if p]
    data = next((Path(p) for p in candidates if Path(p).is_file()), None)
    if data is None:
        raise MelgenreError(f"{run_dir}: cannot find the run's feature file "
                            f"({', '.join(map(str, candidates)) or 'no data.path'}), which holds its preset")
    from melgenre.store import MelStore

    with MelStore(data) as store:
        preset = store.preset.to_dict()
        described = {"file": data.name, "root": str(store.attrs.get("root", "")),
                     "n_tracks": int(store.attrs.get("n_tracks", 0)),
                     "input_hash": str(store.attrs.get("input_hash", "")), "preset": store.preset.name}
        if "embedding" in store.attrs:  # trained on cached tagger embeddings (melgenre embed)
            described["embedding"] = json.loads(store.attrs["embedding"])
        if "augment" in store.attrs:  # audio variants among the training rows (prepare/embed --augment)
            described["augment"] = json.loads(store.attrs["augment"])
    splits_path = run_dir / "splits.json"
    splits = read_json(splits_path) if splits_path.exists() else {}
    if splits.get("train"):  # `melgenre score` leaves these out of an evaluation
        described["tracks"] = sorted(splits["train"])
    card_metrics = {split: {level: scalars(m) for level, m in levels.items()}
                    for split, levels in metrics.get("results", {}).items()}
    card_metrics["split_tracks"] = {k: len(v) for k, v in splits.items()}
    card_metrics |= scalars({k: metrics[k] for k in ("epochs", "best_epoch") if k in metrics})
    return {
        "preset": preset,
        "metrics": card_metrics,
        "training": {"config": cfg.get("name", run_dir.name), "run": run_dir.name, "seed": cfg.get("seed"),
                     "optim": hparams.get("optim"), "data": described},
    }


def _from_checkpoint(ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a training checkpoint inside a run directory."""
    import torch

    from melgenre.models import build_from_config

    if not ckpt.is_file():
        raise MelgenreError(f"{ckpt}: no such checkpoint")
    try:  # weights_only: a checkpoint cannot run code while loading
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        hparams, full_state = dict(raw["hyper_parameters"]), raw["state_dict"]
        classes = list(hparams["classes"])
    except Exception as exc:  # noqa: BLE001  (corrupt zip, pickle or a foreign checkpoint: anything can come out)
        raise MelgenreError(f"{ckpt}: not a readable melgenre checkpoint ({type(exc).__name__})") from None
    run_dir = ckpt.parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise MelgenreError(f"{ckpt}: not inside a run directory (no {run_dir / 'config.yaml'}); "
                            "its preset is unknown")
    state = {k[len("model."):]: v for k, v in full_state.items() if k.startswith("model.")}
    config = build_from_config(hparams["model"], classes=classes).config
    module = _build(ckpt, config, state)
    card = {"format": CARD_FORMAT, "model": config, "classes": classes,
            "model_id": model_id(config["name"], weights_bytes(module)),
            **_run_card(run_dir, hparams), "created_with": __version__}
    return module, card


def check_card(path: Path, card: dict[str, Any]) -> ModelCard:
    """``card`` as a :class:`~melgenre.card.ModelCard` when it is a melgenre model card with a valid preset;
    a one-line error naming ``path`` otherwise."""
    return ModelCard.from_dict(card, path)


def _from_package(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a package (``path`` is its .json or .safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    card_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not card_path.is_file():
        raise MelgenreError(f"{card_path}: no such file (a model package is <stem>.json + <stem>.safetensors)")
    card = check_card(card_path, read_json(card_path))
    if not weights_path.is_file():
        raise MelgenreError(f"{weights_path}: no such file (the weights of the package {card_path.name})")
    data = weights_path.read_bytes()
    if not card["model_id"].endswith(hashlib.sha256(data).hexdigest()[:12]):
        raise MelgenreError(f"{weights_path}: weights do not match the card's model_id {card['model_id']}")
    try:
        state = load(data)
    except (SafetensorError, ValueError) as exc:
        raise MelgenreError(f"{weights_path}: cannot read safetensors ({exc})") from None
    return _build(weights_path, card["model"], state), card


def package_card(source: str | Path | None = None) -> ModelCard | None:
    """The card of a model package (as :func:`load_model` finds it; None: the default model) without
    loading its weights; None for other sources (run directories, checkpoints, ONNX files).

    Raises
    ------
    MelgenreError
        The package's card is missing or not a melgenre model card.
    """
    path = default_model_path() if source is None else resolve_shipped(source)
    if path.suffix not in (".json", ".safetensors"):
        return None
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise MelgenreError(f"{card_path}: no such file (a model package is <stem>.json + <stem>.safetensors)")
    return check_card(card_path, read_json(card_path))


def load_torch(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model and card of a run directory, checkpoint or package."""
    path = Path(source)
    if path.is_dir():
        return _from_checkpoint(run_checkpoint(path))
    if path.suffix == ".ckpt":
        return _from_checkpoint(path)
    if path.suffix in (".json", ".safetensors"):
        return _from_package(path)
    if path.suffix == ".onnx":
        raise MelgenreError(f"{path}: an ONNX file cannot be turned back into a PyTorch model; "
                            "use its run directory or package")
    if not path.exists():
        raise MelgenreError(f"{path}: no such file or directory")
    raise MelgenreError(f"{path}: not a model (use a run directory, a .ckpt, a package .json/.safetensors "
                        "or an exported .onnx)")


def default_model_path() -> Path:
    """Path of the default package's card (``melgenre/weights/default.json``); it may not exist."""
    return shipped_model_path("default")


def shipped_model_path(name: str) -> Path:
    """A model shipped in ``melgenre/weights`` by name: a package's card (``default``, ``melcnn``; each
    with its :func:`onnx_twin`) or an ONNX file alone (``melcnn-int8``)."""
    card = DEFAULT_MODEL_DIR.joinpath(f"{name}.json")
    return Path(str(card if card.is_file() else DEFAULT_MODEL_DIR.joinpath(f"{name}.onnx")))


def onnx_twin(path: str | Path) -> Path | None:
    """The ONNX file of a package: ``<stem>.onnx`` beside its ``<stem>.json`` card (None when there is
    none, or ``path`` is no package). ONNX Runtime runs the package from it without torch
    (:func:`melgenre.inference.load_model`); it must hold the package's weights (the same model id).
    The shipped packages have one (``tools/export_shipped.py``)."""
    path = Path(path)
    if path.suffix not in (".json", ".safetensors"):
        return None
    twin = path.with_suffix(".onnx")
    return twin if twin.is_file() and path.with_suffix(".json").is_file() else None


def resolve_shipped(source: str | Path) -> Path:
    """``source`` as a path; the name of a shipped model (and no such file here) is its shipped file."""
    path = Path(source)
    return shipped_model_path(str(source)) if not path.exists() and str(source) in shipped_models() else path


def shipped_models() -> list[str]:
    """Names of the models shipped with melgenre (``default`` first): packages and ONNX files."""
    names = sorted({p.name.rsplit(".", 1)[0] for p in DEFAULT_MODEL_DIR.iterdir()
                    if p.name.endswith((".json", ".onnx"))})
    return sorted(names, key=lambda n: n != "default")


def stored_trust_centres(path: Path, card: dict[str, Any]) -> np.ndarray | None:
    """The "not music" class centres (K, D) stored beside a package (see :mod:`melgenre.trust`); None for other sources."""
    if path.suffix not in (".json", ".safetensors"):
        return None
    reference = load_reference(path.with_suffix(".json"), card)
    return None if reference is None else reference["centres"]


#: What a card says about pretrained weights a model starts from (by registry name).
PRETRAINED_NOTES = {
    "musicnn": {
        "weights": "musicnn 0.1.0 ({pretrained}): Pons & Serra 2019, trained on the {dataset}'s 50 most common tags",
        "licence": "ISC (melgenre/weights/MUSICNN_LICENSE.md)",
        "unknown": "whether GTZAN recordings (or other recordings of its artists) were among the tagger's "
                   "training audio; the Million Song Dataset covers many of GTZAN's artists",
    },
}
PRETRAINED_NOTES["musicnn_vgg"] = PRETRAINED_NOTES["musicnn"]
_TAG_DATASETS = {"msd": "Million Song Dataset", "mtt": "MagnaTagATune"}


def estimate_from_cv(path: str | Path) -> dict[str, Any]:
    """The card's summary of a cross-validation result (``cv*.json`` of :func:`melgenre.cv.cross_validate`):
    protocol, folds, how epochs were chosen, the pooled out-of-fold track metrics and per-class recall."""
    path = Path(path)
    cv = read_json(path)
    if "pooled" not in cv:
        raise MelgenreError(f"{path}: not a cross-validation result (no 'pooled' metrics)")
    pooled = cv["pooled"]
    recall_intervals = {c["class"]: [round(v, 3) for v in c["recall_interval"]]
                        for c in pooled.get("per_class", []) if "recall_interval" in c}
    return {
        "protocol": cv.get("protocol", "stratified k-fold (same artists on both sides: optimistic)"),
        "source": f"{cv.get('name', '')}/{path.name}", "folds": cv.get("folds"), "selection": cv.get("selection"),
        "track": scalars({k: pooled[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_precision",
                                                  "macro_recall", "macro_f1")}),
        "recall": {c["class"]: round(float(c["recall"]), 3) for c in pooled.get("per_class", [])},
        **({"recall_intervals": recall_intervals} if recall_intervals else {}),
        "balanced": scalars(pooled.get("balanced", {})),
        "untrained_classes": cv.get("untrained_classes"),
        **({"intervals": pooled["intervals"]} if "intervals" in pooled else {}),
        **({"learnable": pooled["learnable"]} if "learnable" in pooled else {}),
    }


def save_package(source: str | Path, out: str | Path, estimates: Iterable[str | Path] = (),
                 hop: float | None = None, windows: int | str | None = None) -> Path:
    """Write a model package: ``<out>.safetensors`` (weights), ``<out>.json`` (the card) and
    ``<out>.onnx``, its ONNX twin (:func:`onnx_twin`), with which the core install (no torch) predicts.

    Parameters
    ----------
    source : path
        A run directory (its best checkpoint, config, metrics and feature-file preset), a
        ``.ckpt`` inside one, or another package.
    out : path
        The package stem; any suffix is replaced. The files are written atomically, the
        weights first, the twin last.
    estimates : paths
        Cross-validation results (``cv-groups-last.json``, ``cv-last.json``, ...) of the model's
        recipe, summarised into the card's ``metrics.estimates`` (see :func:`estimate_from_cv`),
        artist-disjoint ones first.
    hop : float, optional
        Default seconds between prediction windows, stored in the card as ``predict_hop`` (chunked
        presets; ``load_model(hop=...)`` still overrides it). Default: the preset's own hop.
    windows : int or "all", optional
        The most windows one prediction scores, stored in the card as ``predict_windows``
        (``load_model(windows=...)`` still overrides it). Default: the source's, else
        :func:`~melgenre.windows.default_windows`.

    Returns
    -------
    Path
        The card (``.json``).
    """
    module, card = load_torch(resolve_shipped(source))
    out = Path(out)
    weights = weights_bytes(module)
    card = {**dict(card), "model_id": model_id(card["model"]["name"], weights)}
    if hop is not None:
        if Preset.from_dict(card["preset"]).chunk_seconds is None or not hop > 0:
            raise MelgenreError(f"hop {hop}: needs a positive number and a model on a chunked preset")
        card["predict_hop"] = float(hop)
    if windows is not None:
        most = parse_windows(windows)
        card["predict_windows"] = "all" if most is None else most
    summaries = sorted((estimate_from_cv(p) for p in estimates), key=lambda e: "artist" not in e["protocol"])
    if summaries:
        card["metrics"] = {**card.get("metrics", {}), "estimates": summaries}
    note = PRETRAINED_NOTES.get(card["model"]["name"])
    pretrained = card["model"].get("pretrained")
    if note and pretrained:
        card["pretrained"] = {**note, "weights": note["weights"].format(
            pretrained=pretrained, dataset=_TAG_DATASETS.get(pretrained, pretrained))}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".safetensors")) as tmp:
        tmp.write_bytes(weights)
    ModelCard.from_dict(card, out.with_suffix(".json")).write(out.with_suffix(".json"))
    from melgenre.export import write_onnx

    with atomic_path(out.with_suffix(".onnx")) as tmp:
        write_onnx(module, card, tmp)
    return out.with_suffix(".json")
