"""How far to trust a prediction: the "unsure" and "not music" flags, and the non-music test set.

Two scores, both documented in docs/model-card.md:

* **unsure**: the calibrated top probability (see :mod:`melgenre.calibrate`) is below the card's
  ``trust.unsure_below``. The threshold is chosen on out-of-fold dev predictions by
  :func:`unsure_threshold`: the largest top probability below which the predictions are right less
  than half of the time (the genre shown is then more likely wrong than right).
* **not music**: :func:`novelty` of the clip's embeddings (the model's penultimate features, one per
  window): the Euclidean distance of the clip's mean embedding to the nearest **class centre**
  (the mean embedding of each genre's training tracks; Lee et al. 2018's class-conditional
  distance with the head's per-dimension standardisation), the centres stored with the package
  (``<stem>.trust.npz``, written by :func:`melgenre.calibrate.calibrate_package`). Flagged above the
  card's ``trust.not_music_above``, chosen by :func:`novelty_threshold` as the 98th percentile of the
  out-of-fold dev clips' scores (each scored by the fold model that did not train on it, against
  that fold's training tracks): a false-flag rate of about 2 % on music like the training music,
  by artists the model has not heard. A silent clip is always "not music". Packages calibrated
  before class centres had one centre of all training tracks and scored the windows' mean distance to
  it (card ``trust.novelty`` absent: :data:`LEGACY_METHOD`); they keep that score. Without stored
  centres (an old package, a run directory, or an ONNX file exported before its graph had an
  ``embedding`` output) "not music" is set for silent clips only, and "unsure" still applies. ONNX
  files carry the centres in their metadata.

The non-music evaluation set (:func:`nonmusic_clips`) is generated, never downloaded: speech from
``espeak-ng`` (when installed), white/pink/brown noise, sine tones, silence and click trains.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from melgenre.errors import MelgenreError

#: Out-of-fold false-flag rate :func:`novelty_threshold` aims at.
FALSE_FLAG_RATE = 0.02

#: The "not music" score of packages calibrated now (card ``trust.novelty``): the clip's mean
#: embedding's distance to the nearest class centre.
NOVELTY_METHOD = "nearest-class-centre"
#: The score of packages calibrated before (no ``trust.novelty`` in the card): the windows' mean
#: distance to the one centre of all training tracks.
LEGACY_METHOD = "centre"

#: Sentences spoken by espeak-ng for the speech part of :func:`nonmusic_clips` (voice, text).
SPEECH = [
    ("en", "The committee will meet on Tuesday to discuss the budget for the coming year. Please bring "
           "the reports you prepared last month, and send any questions to the secretary before noon."),
    ("en-us", "Weather today: cloudy in the morning with a chance of rain in the afternoon, highs near "
              "sixty degrees. Tomorrow will be sunny and a little warmer, with light winds from the west."),
    ("de", "Guten Abend, meine Damen und Herren. Hier sind die Nachrichten. Der Bundestag hat heute ein "
           "neues Gesetz beschlossen, das den Ausbau der Bahnstrecken im ganzen Land beschleunigen soll."),
    ("fr", "Bonjour à tous. Aujourd'hui nous allons parler de l'histoire de la ville, de ses rues anciennes "
           "et de ses marchés, qui attirent chaque année des milliers de visiteurs venus du monde entier."),
    ("es", "Buenas tardes. El tren con destino a Madrid saldrá del andén cuatro con un retraso de quince "
           "minutos. Rogamos a los señores pasajeros que disculpen las molestias."),
]


def have_espeak() -> bool:
    """Whether the ``espeak-ng`` program is on the PATH."""
    return shutil.which("espeak-ng") is not None


def speech(text: str, voice: str = "en", sr: int = 16000, seconds: float = 30.0, rate: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, repeated or cut to ``seconds``, mono float32 at ``sr``.

    Raises
    ------
    MelgenreError
        espeak-ng is not installed or fails.
    """
    from melgenre import audio

    if not have_espeak():
        raise MelgenreError("espeak-ng is not installed (Debian: apt-get install espeak-ng); it makes the speech clips")
    with tempfile.TemporaryDirectory(prefix="melgenre-speech-") as tmp:
        wav = Path(tmp) / "speech.wav"
        done = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(wav), text],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not wav.is_file():
            raise MelgenreError(f"espeak-ng -v {voice} failed: {done.stderr.strip() or done.returncode}")
        y = audio.load(wav, sr=sr).samples
    n = round(seconds * sr)
    return np.resize(y, n).astype(np.float32)  # np.resize repeats the clip to fill n samples


def _noise(n: int, colour: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum 1/f^colour (0 white, 1 pink, 2 brown), peak 0.5."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= np.maximum(np.fft.rfftfreq(n), 1.0 / n) ** (-0.5 * colour)
    y = np.fft.irfft(spectrum, n)
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def nonmusic_clips(sr: int = 16000, seconds: float = 30.0, seed: int = 0,
                   with_speech: bool | None = None) -> dict[str, np.ndarray]:
    """The generated non-music evaluation set: name → mono float32 clip at ``sr``.

    Noise (white, pink, brown; two of each), sine tones (110, 440, 1000 and 4000 Hz), silence, a
    faint hiss, and click trains (2 and 10 per second); with ``with_speech`` (default: when
    espeak-ng is installed) the :data:`SPEECH` sentences in five voices.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    clips: dict[str, np.ndarray] = {}
    for colour, name in ((0, "white"), (1, "pink"), (2, "brown")):
        for i in range(2):
            clips[f"noise-{name}-{i}"] = _noise(n, colour, rng)
    for freq in (110, 440, 1000, 4000):
        clips[f"tone-{freq}hz"] = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    clips["silence"] = np.zeros(n, dtype=np.float32)
    clips["hiss"] = (0.003 * _noise(n, 0, rng) / 0.5).astype(np.float32)
    for rate in (2, 10):
        y = np.zeros(n, dtype=np.float32)
        y[(np.arange(0, seconds, 1 / rate) * sr).astype(int)] = 0.9
        clips[f"clicks-{rate}hz"] = y
    if with_speech is None:
        with_speech = have_espeak()
    if with_speech:
        for voice, text in SPEECH:
            clips[f"speech-{voice}"] = speech(text, voice, sr=sr, seconds=seconds)
    return clips


# -- scores and thresholds -----------------------------------------------------------------------

def novelty(window_embeddings: np.ndarray, centres: np.ndarray, method: str = NOVELTY_METHOD) -> float:
    """How unlike the training tracks a clip is, from its windows' embeddings ``(W, D)``.

    ``nearest-class-centre``: the Euclidean distance of the windows' mean to the nearest row of
    ``centres`` ``(K, D)`` (:func:`class_centres`). ``centre`` (packages calibrated before it): the
    mean over the windows of the distance to ``centres``' one row (the training tracks' mean).
    A ``(D,)`` centre is read as one row.
    """
    windows = np.asarray(window_embeddings, dtype=np.float64)
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))
    if method == LEGACY_METHOD:
        return float(np.mean(np.linalg.norm(windows - centres[0], axis=1)))
    if method != NOVELTY_METHOD:
        raise MelgenreError(f"unknown novelty method {method!r} (a card from a newer melgenre?)")
    return float(np.min(np.linalg.norm(windows.mean(axis=0) - centres, axis=1)))


def class_centres(track_embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean track embedding of every class present in ``labels``, ``(K, D)`` float32 (class order)."""
    emb, labels = np.asarray(track_embeddings, dtype=np.float64), np.asarray(labels)
    if len(emb) == 0:
        raise MelgenreError("class centres: no training tracks")
    return np.stack([emb[labels == c].mean(axis=0) for c in np.unique(labels)]).astype(np.float32)


def novelty_threshold(music_scores: np.ndarray, false_flag_rate: float = FALSE_FLAG_RATE) -> float:
    """The "not music" threshold: the ``1 − false_flag_rate`` quantile of music clips' novelty
    (out-of-fold), so about that fraction of music like the training music is flagged."""
    scores = np.asarray(music_scores, dtype=np.float64)
    if len(scores) == 0:
        raise MelgenreError("novelty threshold: no music scores")
    return float(np.quantile(scores, 1.0 - false_flag_rate))


def unsure_threshold(top_probs: np.ndarray, correct: np.ndarray) -> float:
    """The "unsure" threshold: the largest top probability ``t`` (one of the observed ones) such that
    the predictions with a top probability below ``t`` are right less than half of the time; 0 when
    no such ``t`` exists (nothing is flagged)."""
    top = np.asarray(top_probs, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    order = np.argsort(top, kind="stable")
    top, right = top[order], right[order]
    best = 0.0
    for i in range(1, len(top) + 1):
        if i < len(top) and top[i] == top[i - 1]:
            continue  # a threshold sits between distinct values
        if right[:i].mean() < 0.5:
            best = float(top[i]) if i < len(top) else float(top[-1]) + 1e-9
    return best


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores where ``positive`` should score higher than ``negative``
    (the Mann-Whitney probability; ties count half)."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise MelgenreError("AUROC needs scores of both groups")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def trust_flags(card: Mapping[str, Any], top_prob: float, novelty_score: float | None, silent: bool) -> list[str]:
    """The "unsure" / "not_music" flags of one clip from the card's ``trust`` thresholds."""
    trust = card.get("trust") or {}
    flags = []
    if silent or (novelty_score is not None and "not_music_above" in trust
                  and novelty_score > trust["not_music_above"]):
        flags.append("not_music")
    if "unsure_below" in trust and top_prob < trust["unsure_below"]:
        flags.append("unsure")
    return flags


#: Suffix of the side file beside a package's card that holds the training embeddings' class centres.
REFERENCE_SUFFIX = ".trust.npz"


def reference_path(card_path: str | Path) -> Path:
    """``<stem>.trust.npz`` beside a package's ``<stem>.json``."""
    card_path = Path(card_path)
    return card_path.with_name(card_path.stem + REFERENCE_SUFFIX)


def load_reference(card_path: str | Path, card: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of a package's ``<stem>.trust.npz``: ``centres`` (K, D), the class centres of the
    training tracks' embeddings (one row, the centre of all, in a package calibrated before class
    centres), and ``music_novelty`` (T,), the out-of-fold novelty of the dev clips the thresholds
    were chosen on. None when the card has no ``trust.reference`` (an old package) or the
    file is missing (the "not music" score then falls back to silence only).

    Raises
    ------
    MelgenreError
        The file does not match the card's checksum.
    """
    import hashlib
    import io

    reference = (card.get("trust") or {}).get("reference")
    if not reference:
        return None
    path = Path(card_path).with_name(reference["file"])
    if not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != reference.get("sha256"):
        raise MelgenreError(f"{path}: does not match the card's trust.reference (sha256)")
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k].astype(np.float32) for k in npz.files}
    if "centres" not in arrays and "centre" in arrays:
        arrays["centres"] = arrays.pop("centre")[None]
    return arrays
