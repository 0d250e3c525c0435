"""melgenre: music-genre classification from mel-spectrogram images.

The package follows the data flow, one module per stage::

    audio -> features -> datasets -> store -> data -> models -> train -> evaluate -> predict -> serve

``melgenre.cli`` is a thin Typer layer on top.
"""

from melgenre.errors import AudioDecodeError, ConfigError, DatasetError, MelgenreError, StoreError

__version__ = "0.1.0"

__all__ = [
    "AudioDecodeError", "ConfigError", "DatasetError", "MelgenreError", "StoreError", "__version__",
]
