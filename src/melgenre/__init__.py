"""melgenre: music-genre classification from mel-spectrogram images.

The package follows the data flow, one module per stage::

    audio -> features -> datasets -> store -> data -> models -> train -> evaluate -> predict -> serve

``melgenre.cli`` is a thin Typer layer on top.
"""

from melgenre.errors import AudioDecodeError, ConfigError, DatasetError, MelgenreError, StoreError

__version__ = "0.1.0"

__all__ = [
    "AudioDecodeError", "ConfigError", "DatasetError", "MelgenreError", "StoreError", "__version__", "load_model",
]


def __getattr__(name: str):
    """Lazy ``melgenre.load_model``: torch is imported on first use, not by ``import melgenre``."""
    if name == "load_model":
        from melgenre.inference import load_model

        return load_model
    raise AttributeError(f"module 'melgenre' has no attribute {name!r}")
