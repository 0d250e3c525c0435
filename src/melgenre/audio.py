"""Audio decoding: any file soundfile reads -> mono float32 at the preset sample rate.

Pure functions over arrays (librosa style). Decoding goes through libsndfile (``soundfile``),
which reads WAV, FLAC, OGG/Vorbis, Opus, MP3 and the Sun/NeXT ``.au`` files GTZAN ships;
formats libsndfile lacks (M4A/AAC/ALAC in MP4 containers) go through the ``ffmpeg`` program when it
is installed. Resampling uses soxr's high-quality mode. Every failure is an
:class:`~melgenre.errors.AudioDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from melgenre.errors import AudioDecodeError
from melgenre.utils import private_tempdir

#: File suffixes melgenre looks for when it scans folders (lower case).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".au", ".snd", ".aif", ".aiff", ".m4a")

#: Suffixes libsndfile does not read, decoded by the ``ffmpeg`` program instead (lower case).
FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".m4b")

#: Peak amplitude under which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

log = logging.getLogger(__name__)


#: A line that libmpg123, libsndfile's MP3 decoder, prints on file descriptor 2 ("Note: Trying to resync...",
#: "[src/libmpg123/layer3.c:...] error: part2_3_length ... too large"), and the prefix that is not its message.
_DECODER_LINE = re.compile(rb"(?:Note|Warning|Error): |\[[^\]\n]*libmpg123[^\]\n]*\] ")
_DECODER_PREFIX = re.compile(r"(?:Note|Warning|Error): |\[[^\]]*\] (?:error|warning|note): ")


class _BorrowedStderr:
    """File descriptor 2 pointed at an unnamed temp file while C decoders run; shared by nested and
    concurrent uses (threads), given back when the last one ends."""

    lock = threading.Lock()
    users = 0
    saved: int | None = None
    capture: Any = None

    @classmethod
    def borrow(cls) -> int | None:
        """Point fd 2 at the capture file (if not already); the offset this use's output starts at, or
        None when there is no fd 2 to borrow."""
        with cls.lock:
            if cls.users == 0:
                try:
                    cls.saved = os.dup(2)
                except OSError:
                    return None
                if cls.capture is None:
                    cls.capture = tempfile.TemporaryFile()
                if sys.stderr is not None:  # what Python has buffered goes out before fd 2 is borrowed
                    sys.stderr.flush()
                os.dup2(cls.capture.fileno(), 2)
            cls.users += 1
            return os.lseek(cls.capture.fileno(), 0, os.SEEK_CUR)

    @classmethod
    def give_back(cls, start: int) -> bytes:
        """What fd 2 got since ``start``; the last user restores fd 2 and passes on to it every line
        there that is not the decoder's (another thread's output is late, never lost)."""
        with cls.lock:
            fd = cls.capture.fileno()
            end = os.lseek(fd, 0, os.SEEK_CUR)
            mine = os.pread(fd, end - start, start)
            cls.users -= 1
            if cls.users == 0:
                os.dup2(cls.saved, 2)
                os.close(cls.saved)
                others = b"".join(line for line in os.pread(fd, end, 0).splitlines(keepends=True)
                                  if not _DECODER_LINE.match(line))
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                if others:
                    os.write(2, others)
            return mine


@contextmanager
def decoder_notes(name: str) -> Iterator[list[str]]:
    """Keep what the C decoders print while the block runs off stderr: the yielded list gets their
    lines (each logged at debug level, prefixed with ``name``) when the block ends.

    libmpg123 prints "Illegal Audio-MPEG-Header ... Trying to resync", "Xing stream size off" and, on
    a seek, "part2_3_length too large" straight to file descriptor 2, which no redirection of
    ``sys.stderr`` catches: fd 2 is pointed at a temp file meanwhile (see :class:`_BorrowedStderr`).
    """
    notes: list[str] = []
    start = _BorrowedStderr.borrow()
    try:
        yield notes
    finally:
        if start is not None:
            for line in _BorrowedStderr.give_back(start).decode(errors="replace").splitlines():
                if _DECODER_LINE.match(line.encode()):
                    notes.append(_DECODER_PREFIX.sub("", line, count=1).strip().rstrip("."))
                    log.debug("%s: decoder: %s", name, notes[-1])


def _said(notes: list[str]) -> str:
    """The first three things the decoder said, to end a failure's reason with ("" when it said nothing)."""
    return f"; the decoder said: {' / '.join(list(dict.fromkeys(notes))[:3])}" if notes else ""


@dataclass(frozen=True)
class Audio:
    """A decoded clip: mono samples at ``sr`` plus what the source file was."""

    samples: np.ndarray  # (T,) float32
    sr: int
    source_sr: int
    source_channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sr

    @property
    def silent(self) -> bool:
        """True when the clip's peak is below :data:`SILENCE_PEAK` (valid audio, counted in reports)."""
        return is_silent(self.samples)


def is_silent(y: np.ndarray, threshold: float = SILENCE_PEAK) -> bool:
    """Return True when ``max(|y|) < threshold`` (an all-zero or near-silent clip)."""
    return y.size == 0 or float(np.max(np.abs(y))) < threshold


def decode(source: str | Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a file (path or raw bytes) into ``(samples (T, C) float32, sample_rate)``.

    Parameters
    ----------
    source : path or bytes
        The file to read. Bytes are decoded from memory (used by workers that hash the file
        while reading it, and by the HTTP service).
    name : str, optional
        The name used in error messages (defaults to the path).

    Raises
    ------
    AudioDecodeError
        Missing or empty file, a header libsndfile does not recognise (corrupt, truncated, or
        not audio at all, e.g. a text file renamed ``.wav``), no samples, or non-finite samples;
        an ``.m4a`` that ffmpeg cannot decode, or ffmpeg not installed.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(label, "no such file")
        data = path.read_bytes()
    if len(data) == 0:
        raise AudioDecodeError(label, "empty file (0 bytes)")
    if Path(label).suffix.lower() in FFMPEG_EXTENSIONS:
        samples, sr = _decode_ffmpeg(data, label)
    else:
        samples, sr = _read_sndfile(data, label)
    if samples.shape[0] == 0:
        raise AudioDecodeError(label, "zero-length audio (no samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError(label, "audio contains NaN or infinite samples")
    return samples, int(sr)


def _read_sndfile(data: bytes, label: str) -> tuple[np.ndarray, int]:
    """Decode a whole file held in memory with libsndfile into ``(samples (T, C) float32, rate)``."""
    try:
        with decoder_notes(label) as notes:
            samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(label, f"not a decodable audio file ({_sndfile_reason(exc)}{_said(notes)})") from None
    return samples, int(sr)


def _sndfile_reason(exc: Exception) -> str:
    """libsndfile's reason for a failure, without the file name it starts with."""
    return str(exc).split(": ", 1)[-1].rstrip(".") if str(exc) else type(exc).__name__


def _ffmpeg(label: str) -> str:
    """The ``ffmpeg`` program, or the error that it is needed and not installed."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioDecodeError(label, "decoding this format needs the ffmpeg program, which is not installed "
                                      "(e.g. apt-get install ffmpeg)")
    return exe


def _decode_ffmpeg(data: bytes, label: str) -> tuple[np.ndarray, int]:
    """Decode an MP4-family file (M4A: AAC or ALAC) with ``ffmpeg`` at its own rate and channels.

    ffmpeg reads a temp copy (an MP4 whose index sits at the end cannot be read from a pipe) and
    writes 32-bit float Sun ``.au`` to stdout, a header libsndfile reads without a known length.
    """
    exe = _ffmpeg(label)
    with private_tempdir("melgenre-ffmpeg-") as folder:  # a killed run's copy is removed by the next one
        src = folder / f"input{Path(label).suffix}"
        src.write_bytes(data)
        done = subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(src), "-map", "0:a:0", "-f", "au",
                               "-c:a", "pcm_f32be", "-"], capture_output=True, timeout=600)
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise AudioDecodeError(label, f"not a decodable audio file (ffmpeg: {reason[0].replace(f'{src}: ', '')})")
    return _read_sndfile(done.stdout, label)


def sample_digest(path: str | Path, name: str | None = None) -> str:
    """SHA-256 (hex) of a file's decoded samples, with its sample rate and channels, decoded block by block.

    Two files digest alike exactly when they decode to the same samples, and memory stays bounded
    whatever the length (a 3-hour mix decodes to about 10 GB): ``melgenre tag`` checks so that
    rewriting the tags left the audio alone. M4A goes through ``ffmpeg``, as in :func:`decode`.

    Raises
    ------
    AudioDecodeError
        The file cannot be decoded (as :func:`decode` says), or ffmpeg is needed and not installed.
    """
    label = name or str(path)
    h = hashlib.sha256()
    if Path(label).suffix.lower() in FFMPEG_EXTENSIONS:
        exe = _ffmpeg(label)
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg never blocks on what it says
            proc = subprocess.Popen([exe, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                                     "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "au", "-c:a", "pcm_f32be",
                                     "-"], stdout=subprocess.PIPE, stderr=err)
            with proc.stdout:
                for block in iter(lambda: proc.stdout.read(1 << 20), b""):
                    h.update(block)
            if proc.wait() != 0:
                err.seek(0)
                reason = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
                raise AudioDecodeError(label, f"not a decodable audio file (ffmpeg: {reason[0].replace(f'{path}: ', '')})")
        return h.hexdigest()
    try:
        with decoder_notes(label) as notes, sf.SoundFile(str(path)) as f:
            h.update(f"{f.samplerate} {f.channels}\n".encode())
            for block in f.blocks(1 << 16, dtype="float32", always_2d=True):
                h.update(block.tobytes())
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(label, f"not a decodable audio file ({_sndfile_reason(exc)}{_said(notes)})") from None
    return h.hexdigest()


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``(T, C)`` or ``(T,)`` samples to ``(T,)`` by averaging the channels."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 2:  # the common case, about 10x faster than mean(axis=1)
        return (samples[:, 0] + samples[:, 1]) * np.float32(0.5)
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample mono ``y`` from ``sr_in`` to ``sr_out`` with soxr (high quality)."""
    if sr_in == sr_out:
        return y
    return soxr.resample(y, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def resampled_length(n: int, sr_in: int, sr_out: int) -> int:
    """Samples :func:`resample` returns for ``n`` input samples (soxr rounds half up)."""
    return n if sr_in == sr_out else (2 * n * sr_out + sr_in) // (2 * sr_in)


class Stretches:
    """An audio file opened to read stretches of it without decoding the rest.

    libsndfile seeks to a sample in WAV, FLAC, OGG/Vorbis, Opus, MP3, AU and AIFF files, so reading
    ten 3-s stretches of a 3-minute MP3 decodes about a sixth of it. :meth:`read` returns what
    :func:`load` gives for the same samples (mono, resampled with soxr) up to float rounding: each
    stretch is read with :data:`CONTEXT_SECONDS` of neighbouring audio on both sides, which
    :func:`resample`'s filter needs, starting on a sample where the source and target rates'
    sample grids meet. Use :func:`open_stretches`, which returns None for files that cannot seek.
    """

    #: Audio read beyond each end of a stretch, for the resampler's filter (it reaches about 5 ms).
    CONTEXT_SECONDS = 0.05

    def __init__(self, handle: sf.SoundFile, sr: int, name: str):
        self._file = handle
        self.name = name
        self.sr = sr
        self.source_sr = int(handle.samplerate)
        self.source_channels = int(handle.channels)
        #: Length in samples at ``sr``, as :func:`load` would return it.
        self.n_samples = resampled_length(int(handle.frames), self.source_sr, sr)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Mono float32 samples ``start`` to ``stop`` (at ``sr``) of the file; zero past its end.

        Raises
        ------
        AudioDecodeError
            The stretch cannot be decoded (a file damaged in the middle), or holds NaN/infinite samples.
        """
        g = math.gcd(self.source_sr, self.sr)
        step_in, step_out = self.source_sr // g, self.sr // g  # the rates' sample grids meet every step
        context = math.ceil(self.CONTEXT_SECONDS * self.sr / step_out)
        first = max(0, start // step_out - context)
        last = -(-stop // step_out) + context
        try:
            with decoder_notes(self.name) as notes:
                self._file.seek(first * step_in)
                samples = self._file.read((last - first) * step_in, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioDecodeError(self.name, f"cannot decode {start / self.sr:.1f}-{stop / self.sr:.1f} s "
                                              f"({str(exc) or type(exc).__name__}{_said(notes)})") from None
        if not np.all(np.isfinite(samples)):
            raise AudioDecodeError(self.name, "audio contains NaN or infinite samples")
        y = resample(to_mono(samples), self.source_sr, self.sr)
        offset = start - first * step_out
        return np.ascontiguousarray(fix_length(y[offset:offset + stop - start], stop - start), dtype=np.float32)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Stretches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stretches(source: str | Path | bytes, sr: int, name: str | None = None) -> Stretches | None:
    """Open a file (path or bytes) to read stretches of it at ``sr`` (:class:`Stretches`).

    Returns None when it must be decoded whole instead (:func:`load`): a format libsndfile does
    not read (M4A goes through ffmpeg), a stream that cannot seek, or a header libsndfile rejects
    (:func:`load` then gives the error).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if Path(label).suffix.lower() in FFMPEG_EXTENSIONS:
        return None
    try:
        with decoder_notes(label):  # what it says of a file it rejects, load says again in its error
            handle = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return None
    if not handle.seekable() or handle.frames <= 0:
        handle.close()
        return None
    return Stretches(handle, sr, label)


def head(source: str | Path | bytes, sr: int, seconds: float, name: str | None = None) -> np.ndarray:
    """The first ``seconds`` of a file as mono float32 at ``sr`` (shorter when the file is), reading only
    that stretch where the format seeks (:func:`open_stretches`); other files are decoded whole first.

    Raises
    ------
    AudioDecodeError
        The file cannot be decoded.
    """
    stretches = open_stretches(source, sr, name=name)
    if stretches is None:
        return load(source, sr=sr, name=name).samples[: round(seconds * sr)]
    with stretches:
        return stretches.read(0, min(stretches.n_samples, round(seconds * sr)))


def duration_of(source: str | Path, name: str | None = None) -> float:
    """Length in seconds of an audio file from its header, without decoding it (libsndfile, or mutagen
    for the formats ffmpeg decodes).

    Raises
    ------
    AudioDecodeError
        Neither can read the header.
    """
    label = name or str(source)
    stretches = open_stretches(source, 8_000, name=label)
    if stretches is not None:
        with stretches:
            return stretches.n_samples / 8_000
    import mutagen

    try:
        info = mutagen.File(source)
    except Exception:  # noqa: BLE001  (mutagen raises many types for foreign files)
        info = None
    if info is None or not getattr(info.info, "length", None):
        raise AudioDecodeError(label, "not a decodable audio file (no readable header)")
    return float(info.info.length)


def fix_length(y: np.ndarray, n: int) -> np.ndarray:
    """Trim ``y`` to ``n`` samples or zero-pad it at the end."""
    if len(y) >= n:
        return y[:n]
    return np.pad(y, (0, n - len(y)))


def load(
    source: str | Path | bytes,
    sr: int = 22_050,
    duration: float | None = None,
    name: str | None = None,
) -> Audio:
    """Decode, downmix to mono and resample a file; optionally pad/trim to ``duration`` seconds.

    Parameters
    ----------
    source : path or bytes
        Any file libsndfile reads (wav, flac, ogg, mp3, au, aiff ...), or m4a with ffmpeg installed;
        any rate or channel count.
    sr : int
        Target sample rate (default 22 050 Hz, GTZAN's).
    duration : float, optional
        If given, the result is exactly ``round(duration * sr)`` samples (trimmed at the end or
        zero-padded). ``None`` keeps the whole clip.
    name : str, optional
        The name to use in error messages.

    Examples
    --------
    >>> clip = load("blues.00000.au", sr=22050, duration=30.0)  # doctest: +SKIP
    >>> clip.samples.shape
    (661500,)
    """
    samples, source_sr = decode(source, name=name)
    y = resample(to_mono(samples), source_sr, sr)
    if duration is not None:
        y = fix_length(y, int(round(duration * sr)))
    return Audio(samples=np.ascontiguousarray(y, dtype=np.float32), sr=sr, source_sr=source_sr,
                 source_channels=samples.shape[1])


#: Audio variants that ``prepare`` / ``embed --augment`` add as extra training rows of a track
#: (validation and test rows stay the original): name -> what it does.
AUGMENTATIONS = {
    "fast": "6 % faster (tempo and pitch up about one semitone, by resampling)",
    "slow": "6 % slower (tempo and pitch down about one semitone)",
    "offset": "starts 1.5 s later (windows fall between the original ones)",
    "bright": "treble boost (first-order high-pass mixed in), loudness kept",
    "dark": "treble cut (one-pole low-pass), loudness kept",
}


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) + 1e-12


def augment(y: np.ndarray, sr: int, name: str) -> np.ndarray:
    """One of :data:`AUGMENTATIONS` of mono float32 ``y`` at ``sr`` (deterministic).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    from scipy.signal import lfilter

    if name in ("fast", "slow"):  # play at another speed: treat the samples as recorded at sr * r
        r = 1.06 if name == "fast" else 1 / 1.06
        out = soxr.resample(y, sr * r, sr, quality="HQ")
    elif name == "offset":
        out = y[int(round(1.5 * sr)):]
    elif name in ("bright", "dark"):
        out = y + lfilter([1.0, -0.95], [1.0], y) if name == "bright" else lfilter([0.3], [1.0, -0.7], y)
        out = out * (_rms(y) / _rms(out))
    else:
        raise ValueError(f"unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)}")
    return np.ascontiguousarray(out, dtype=np.float32)


def window_starts(n_samples: int, win: int, hop: int) -> list[int]:
    """Start offsets of fixed-length windows over ``n_samples``.

    Windows step by ``hop``; the last window is kept only when it is full, except that a clip
    shorter than one window still yields a single window (to be zero-padded by the caller).
    """
    if win <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got win={win}, hop={hop}")
    if n_samples <= win:
        return [0]
    return list(range(0, n_samples - win + 1, hop))


def frame_windows(y: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Cut ``y`` into ``(n_windows, win)`` windows stepping by ``hop`` (a short clip is zero-padded)."""
    starts = window_starts(len(y), win, hop)
    return np.stack([fix_length(y[s:s + win], win) for s in starts])


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files to predict: files as given, and audio files under directories (recursive, sorted).

    Directory scans keep files whose suffix is in :data:`AUDIO_EXTENSIONS` and skip hidden names,
    files or folders below the one given (temp files being written, ``.Trash``, sync tools' old
    versions). Duplicates are dropped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return list(dict.fromkeys(out))
