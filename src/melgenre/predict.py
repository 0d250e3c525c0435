"""The prediction stage, as users import it: one namespace over the modules that do the work.

* :mod:`melgenre.inference`: :class:`GenreModel`, :class:`Prediction`, :func:`load_model`,
  :func:`predict_paths` (a clip of any length -> its genre, with PyTorch or ONNX Runtime);
* :mod:`melgenre.package`: model cards and packages, the shipped models, :func:`save_package`;
* :mod:`melgenre.export`: :func:`export_onnx_file` (float or int8);
* :mod:`melgenre.tags`: musicnn's own tags, :func:`predict_tags`;
* :mod:`melgenre.windows`: which windows of a recording are scored (:func:`window_images`).

>>> from melgenre.predict import load_model
>>> load_model().predict("song.mp3").top  # doctest: +SKIP
[('rock', 0.81), ('metal', 0.11), ('blues', 0.03)]
"""

from melgenre.audio import expand_paths
from melgenre.export import export_onnx_file
from melgenre.inference import (BACKENDS, BATCH_SIZE, FLAGS, PREDICT_BATCH, GenreModel, Prediction, auto_backend,
                                forward_outputs, load_model, predict_paths, resolve_backend, softmax, tempered,
                                windows_setting)
from melgenre.package import (CARD_FORMAT, DEFAULT_MODEL_DIR, PRETRAINED_NOTES, default_model_path,
                              estimate_from_cv, package_card, save_package, shipped_model_path, shipped_models)
from melgenre.tags import TAG_DATASETS, MusicnnTagger, TagPrediction, load_tagger, predict_tags
from melgenre.windows import window_images

__all__ = [
    "BACKENDS", "BATCH_SIZE", "CARD_FORMAT", "DEFAULT_MODEL_DIR", "FLAGS", "PREDICT_BATCH", "PRETRAINED_NOTES",
    "TAG_DATASETS", "GenreModel", "MusicnnTagger", "Prediction", "TagPrediction", "auto_backend",
    "default_model_path", "estimate_from_cv", "expand_paths", "export_onnx_file", "forward_outputs",
    "load_model", "load_tagger", "package_card", "predict_paths", "predict_tags", "resolve_backend",
    "save_package", "shipped_model_path", "shipped_models", "softmax", "tempered", "window_images",
    "windows_setting",
]
