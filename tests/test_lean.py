"""The core install (``pip install melgenre``): predict, tag, score and the beets plugin without torch.

Every command runs in a subprocess whose ``sitecustomize`` makes the research stacks unimportable
(:data:`BLOCKED`), so the default test run checks the core on the full install too. CI also runs this
file with ``--noconftest`` in a fresh venv holding only the built wheel (with the beets extra), outside
the checkout; there ``MELGENRE_LEAN=1`` and the modules must be truly absent.

Only numpy, soundfile and mutagen are used here (no conftest fixtures), so the file runs in that venv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

#: Modules the core never imports: the train, serve and ray extras' (and what they pull in).
BLOCKED = ("torch", "lightning", "torchmetrics", "scipy", "librosa", "h5py", "matplotlib", "sklearn", "onnx",
           "safetensors", "pandas", "fastapi", "starlette", "ray", "numba", "PIL")

#: Largest difference allowed between the probabilities of the core (the shipped ONNX twin) and of the
#: torch module the package holds; measured on all 202 dev clips: 8.9e-7, every label and flag equal
#: (test_core_equals_torch_on_dev_clips; docs/benchmarks/install.md).
PROB_TOLERANCE = 1e-4

LEAN = os.environ.get("MELGENRE_LEAN") == "1"
SHARED_DATA = Path(os.environ.get("MELGENRE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

GUARD = textwrap.dedent(f"""
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: the core install)", name=name)
            return None

    sys.meta_path.insert(0, _Blocked())
""")


@pytest.fixture(scope="module")
def lean_env(tmp_path_factory) -> dict[str, str]:
    """Environment for subprocesses in which :data:`BLOCKED` cannot be imported (a ``sitecustomize``)."""
    site = tmp_path_factory.mktemp("lean-site")
    (site / "sitecustomize.py").write_text(GUARD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("MELGENRE_SHARED_DATA", None)
    return env


def _melgenre(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "melgenre", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _clip(path: Path, freq: float, seconds: float = 8.0, sr: int = 22_050) -> Path:
    """A few seconds of a tone with a pulse and noise (music-like enough to get a genre), as ``path``."""
    rng = np.random.default_rng(int(freq))
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t))) / 2
    y += 0.05 * rng.standard_normal(len(t))
    sf.write(path, y.astype(np.float32), sr)
    return path


def _audio_md5(path: Path) -> str:
    data, _ = sf.read(path, dtype="int16")
    return hashlib.md5(data.tobytes()).hexdigest()


def test_guard_blocks_the_research_stacks(lean_env):
    out = subprocess.run([sys.executable, "-c", "import torch"], env=lean_env, capture_output=True, text=True)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr
    if LEAN:  # the venv of the wheel alone: not merely blocked, not installed
        assert [m for m in BLOCKED if importlib.util.find_spec(m) is not None] == []


def test_predict_without_torch(lean_env, tmp_path):
    clip = _clip(tmp_path / "song.wav", 220.0)
    out = _melgenre(lean_env, "predict", str(clip), "--format", "json")
    assert out.returncode == 0, out.stderr
    [pred] = json.loads(out.stdout)
    assert pred["model_id"].startswith("musicnn-") and pred["label"] in pred["probabilities"]
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4
    fast = _melgenre(lean_env, "predict", str(clip), "--model", "melcnn", "--format", "json")
    assert fast.returncode == 0, fast.stderr
    assert json.loads(fast.stdout)[0]["model_id"].startswith("melcnn-")


def _lax_model(folder: Path) -> Path:
    """The shipped default package run from its ONNX twin, under another name and with no trust thresholds,
    so that synthetic clips get genres (no "unsure" or "not_music" flag keeps them from being tagged)."""
    from importlib import resources

    weights = resources.files("melgenre").joinpath("weights")
    folder.mkdir()
    for suffix in (".onnx", ".trust.npz"):
        (folder / f"lax{suffix}").write_bytes(weights.joinpath(f"default{suffix}").read_bytes())
    card = json.loads(weights.joinpath("default.json").read_text())
    (folder / "lax.json").write_text(json.dumps({**card, "trust": {}}))
    return folder / "lax.json"


def test_library_job_and_tag_without_torch(lean_env, tmp_path):
    model = str(_lax_model(tmp_path / "model"))  # a package without its .safetensors: the ONNX twin alone
    music = tmp_path / "music"
    music.mkdir()
    clips = [_clip(music / f"t{i}.flac", f) for i, f in enumerate((110.0, 330.0, 550.0))]
    before = {c.name: _audio_md5(c) for c in clips}
    db = tmp_path / "genres.sqlite"
    out = _melgenre(lean_env, "predict", str(music), "--out", str(db), "--no-progress", "--model", model)
    assert out.returncode == 0, out.stderr
    again = _melgenre(lean_env, "predict", str(music), "--out", str(db), "--no-progress", "--model", model)
    assert "0 predicted this run" in again.stdout and "3 unchanged" in again.stdout
    tag = _melgenre(lean_env, "tag", str(music), "--from", str(db), "--write", "--min-confidence", "0",
                    cwd=tmp_path)
    assert tag.returncode == 0, tag.stderr
    import mutagen

    tagged = {c.name: (mutagen.File(c, easy=True).get("genre") or [None])[0] for c in clips}
    assert all(tagged.values()), (tagged, tag.stdout)
    assert {c.name: _audio_md5(c) for c in clips} == before  # the audio never changes


def test_score_without_torch(lean_env, tmp_path):
    for genre, freq in (("rock", 200.0), ("jazz", 400.0)):
        (tmp_path / "corpus" / genre).mkdir(parents=True)
        for i in range(2):
            _clip(tmp_path / "corpus" / genre / f"{genre}-{i}.wav", freq * (i + 1))
    out = _melgenre(lean_env, "score", str(tmp_path / "corpus"), "--out", str(tmp_path / "scores"),
                    "--no-progress")
    assert out.returncode == 0, out.stderr
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert scores["n"] == 4 and 0 <= scores["track"]["balanced_accuracy"] <= 1
    assert "matplotlib" in scores["plots"] and "no plots" in out.stdout  # said, not silently skipped


def test_a_research_command_names_its_extra(lean_env, tmp_path):
    out = _melgenre(lean_env, "train", "configs-that-do-not-matter.yaml")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert 'melgenre[train]' in line and "Traceback" not in out.stderr


def test_beets_plugin_without_torch(lean_env, tmp_path):
    pytest.importorskip("beets", reason="beets is not installed (pip install 'melgenre[beets]')")
    music, config = tmp_path / "music", tmp_path / "config"
    music.mkdir()
    config.mkdir()
    _clip(music / "a.flac", 220.0)
    settings = {"directory": str(music), "library": str(tmp_path / "library.db"), "plugins": "melgenre",
                "import": {"copy": False, "write": False, "autotag": False, "quiet": True},
                "melgenre": {"database": str(tmp_path / "melgenre.sqlite"), "min_confidence": 0}}
    (config / "config.yaml").write_text(json.dumps(settings))  # JSON is YAML
    env = {**lean_env, "BEETSDIR": str(config)}

    def beet(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "beets", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"beet {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    beet("import", str(music))
    beet("melgenre")
    assert (tmp_path / "melgenre.sqlite").is_file()
    assert beet("ls", "-f", "$melgenre_model").strip().startswith("musicnn-")


def _dev_clips(every: int) -> list[Path]:
    root = SHARED_DATA / "gtzan-dev"
    if not root.is_dir():
        pytest.skip(f"shared data not available: {root} (set MELGENRE_SHARED_DATA)")
    return sorted(root.glob("*/*.flac"))[::every]


def _core_against_torch(clips: list[Path]) -> float:
    """Compare the default model's core path (ONNX twin) with its torch module on ``clips``: every label
    equal; returns the largest probability difference."""
    pytest.importorskip("torch", reason="the comparison needs the torch backend (the train extra)")
    from melgenre.inference import load_model

    core, reference = load_model(), load_model(backend="torch")
    assert core.backend == "onnx" and reference.backend == "torch" and core.model_id == reference.model_id
    worst = 0.0
    for clip in clips:
        a, b = core.predict(clip), reference.predict(clip)
        assert a.label == b.label and a.flags == b.flags, clip
        worst = max(worst, max(abs(a.probabilities[c] - b.probabilities[c]) for c in core.classes))
    assert worst <= PROB_TOLERANCE
    return worst


def test_core_equals_torch_on_some_dev_clips():
    _core_against_torch(_dev_clips(every=20))


@pytest.mark.slow
def test_core_equals_torch_on_dev_clips():
    clips = _dev_clips(every=1)
    assert len(clips) == 202
    _core_against_torch(clips)


def test_every_shipped_twin_holds_its_packages_weights():
    """A shipped package's ONNX twin must be re-exported (tools/export_shipped.py) whenever the package changes."""
    import onnxruntime as ort
    from importlib import resources

    weights = resources.files("melgenre").joinpath("weights")
    cards = sorted(p.name for p in weights.iterdir() if p.name.endswith(".json"))
    assert "default.json" in cards and "melcnn.json" in cards
    for name in cards:
        twin = weights.joinpath(name.replace(".json", ".onnx"))
        assert twin.is_file(), f"{name} has no ONNX twin: run python tools/export_shipped.py"
        meta = ort.InferenceSession(str(twin), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        card = json.loads(weights.joinpath(name).read_text())
        assert json.loads(meta["melgenre_card"])["model_id"] == card["model_id"], f"{twin} is stale"


def test_shipped_twins_predict_as_their_torch_modules(tmp_path):
    pytest.importorskip("torch", reason="the comparison needs the torch backend (the train extra)")
    from melgenre.inference import load_model

    clip = _clip(tmp_path / "c.wav", 330.0, seconds=12.0)
    for name in ("default", "melcnn"):
        core, reference = load_model(name), load_model(name, backend="torch")
        assert core.backend == "onnx" and reference.backend == "torch"
        a, b = core.predict(clip), reference.predict(clip)
        assert a.label == b.label and a.flags == b.flags
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in core.classes) <= PROB_TOLERANCE
