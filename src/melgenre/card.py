"""The model card: what a model is, how it predicts and how good it is, typed, read and written here alone.

A card is the JSON beside a package's weights (``<stem>.json``), in an ONNX file's metadata
(``melgenre_card``) and the ``card`` of every loaded model (``GenreModel.card``). Its fields:

========================  =============================================================================
``format``                ``"melgenre-model/1"`` (:data:`CARD_FORMAT`)
``model``                 the architecture's config (``name`` and options, :mod:`melgenre.models`)
``classes``               the genres, in output order
``model_id``              architecture name and 12 hex digits of the weights' SHA-256
``preset``                the feature preset it was trained on (:class:`~melgenre.features.Preset`)
``predict_hop``           seconds between prediction windows (chunked presets), or None: the preset's
``predict_windows``       the most windows one prediction scores (:class:`~melgenre.windows.WindowCount`)
``predict_batch``         windows per forward pass, or None: the architecture's
``calibration``           the temperature and how it was fitted (:mod:`melgenre.calibrate`)
``trust``                 the ``unsure`` and ``not_music`` thresholds (:mod:`melgenre.trust`)
``metrics``, ``training`` the estimates (artist-disjoint first) and how it was trained
``pretrained``            what pretrained weights it starts from, their licence
``quantization``          for int8 models: how, and of which float model
========================  =============================================================================

Fields this version does not know are kept as they are (:attr:`ModelCard.extra`) and written back.
For one release a card also reads like the plain dict it used to be (``card["classes"]``,
``card.get("trust")``): a read-only :class:`~collections.abc.Mapping` of :meth:`ModelCard.to_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melgenre.errors import MelgenreError
from melgenre.features import Preset
from melgenre.windows import WindowCount

#: ``format`` field of a model card.
CARD_FORMAT = "melgenre-model/1"

_REQUIRED = ("model", "classes", "preset", "model_id")


@dataclass(eq=False)
class ModelCard(Mapping):
    """A model card (see the module docstring); :meth:`from_dict` and :meth:`read` check it."""

    model: dict[str, Any]
    classes: list[str]
    model_id: str
    preset: Preset
    format: str = CARD_FORMAT
    predict_hop: float | None = None
    predict_windows: WindowCount | None = None
    predict_batch: int | None = None
    calibration: dict[str, Any] | None = None
    trust: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    created_with: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept

    # -- reading and writing ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = "model card", strict: bool = True) -> ModelCard:
        """The card of a JSON object; a one-line :class:`MelgenreError` naming ``source`` when it is not one.

        ``strict=False`` (a card made in code, e.g. ``GenreModel(card)``) takes a missing ``format`` as
        :data:`CARD_FORMAT` and a missing ``model`` as ``{}``; ``classes``, ``preset`` and ``model_id``
        are always needed."""
        if isinstance(data, ModelCard):
            return data
        if not isinstance(data, Mapping):
            raise MelgenreError(f"{source}: expected a JSON object")
        if not strict:
            data = {"format": CARD_FORMAT, "model": {}, **data}
        if data.get("format") != CARD_FORMAT:
            raise MelgenreError(f"{source}: not a melgenre model card (format {data.get('format')!r}, "
                                f"expected {CARD_FORMAT!r})")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise MelgenreError(f"{source}: model card lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["preset"] = Preset.from_dict(dict(data["preset"]))
            if data.get("predict_windows") is not None:
                values["predict_windows"] = WindowCount.parse(data["predict_windows"])
        except MelgenreError as exc:
            raise MelgenreError(f"{source}: {exc}") from None
        values["classes"] = list(values["classes"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card in a JSON file; a one-line error naming the file when it is unreadable or not a card."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MelgenreError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from None
        return cls.from_dict(data, path)

    def to_dict(self) -> dict[str, Any]:
        """The card as the JSON object a package stores (unset optional fields left out)."""
        out = {name: value for name in _FIELDS if (value := self._json(name)) is not _UNSET}
        return {**out, **self.extra}

    def _json(self, name: str) -> Any:
        """Field ``name`` as the card's JSON holds it, or :data:`_UNSET` when the JSON leaves it out (an
        unset optional field, empty metrics or training)."""
        value = getattr(self, name)
        if value is None or (value == {} and name in ("metrics", "training")):
            return _UNSET
        if isinstance(value, (WindowCount, Preset)):
            return value.to_json() if isinstance(value, WindowCount) else value.to_dict()
        return list(value) if name == "classes" else value

    def write(self, path: str | Path) -> Path:
        """Write the card as JSON (atomically); returns ``path``."""
        from melgenre.utils import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` (unknown names go to :attr:`extra`)."""
        known = {f.name for f in dataclasses.fields(self)}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in known}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in known}, extra=extra)

    # -- what prediction reads -------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        """The model's registered architecture name (``musicnn``, ``melcnn``, ...)."""
        return str(self.model.get("name", ""))

    @property
    def temperature(self) -> float:
        """The calibration's temperature (1 without one)."""
        return float((self.calibration or {}).get("temperature", 1.0))

    # -- the dict it used to be (one release) ----------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        value = self._json(key) if key in _FIELDS else _UNSET
        if value is _UNSET:
            raise KeyError(key)  # as to_dict leaves it out
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


#: The card's JSON fields, in the order a card is written (``extra`` follows them).
_FIELDS = ("format", "model", "classes", "model_id", "preset",
           *(f.name for f in dataclasses.fields(ModelCard) if f.name not in _REQUIRED + ("format", "extra")))

#: What :meth:`ModelCard._json` returns for a field the JSON leaves out.
_UNSET = object()

__all__ = ["CARD_FORMAT", "ModelCard"]
