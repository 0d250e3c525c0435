"""One exception hierarchy for the whole package.

Library code raises these with a message that names the file (or key) and the problem;
the CLI turns them into one-line messages instead of tracebacks.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: object) -> str:
    """``str(text)`` on one line: control characters (a newline or an escape sequence in a file name) and
    undecodable bytes are written as Python escapes (``\\n``, ``\\x1b``, ``\\udcff``), so a message naming a file
    stays one line, whatever the name."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class MelgenreError(Exception):
    """Base class of every error melgenre raises on purpose."""


class AudioDecodeError(MelgenreError):
    """An audio file could not be read: empty, corrupt, not audio, or without samples."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{Path(path).name}: {reason}")


class ConfigError(MelgenreError):
    """A preset, model or experiment configuration is invalid (names the key and the problem)."""


class DatasetError(MelgenreError):
    """A corpus folder cannot be used (missing, no class folders, ambiguous track names)."""


class StoreError(MelgenreError):
    """An HDF5 feature store is missing, incompatible or malformed."""
