"""The library job (predict --out): streamed rows, resume, failures, kill -9, formats, batching;
and worker processes that exit when their parent dies."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from melgenre import library, synth
from melgenre.cli import app
from melgenre.errors import MelgenreError
from melgenre.library import COLUMNS, predict_library, read_results
from melgenre.predict import load_model

runner = CliRunner()
SRC = str(Path(library.__file__).parents[1])


@pytest.fixture()
def songs(tmp_path) -> Path:
    """9 clips of 4-8 s (2-4 windows each, so batches of 5 windows straddle files), a 1-s clip
    (padded), a silent one and a corrupt one, in nested folders."""
    root = tmp_path / "songs"
    synth.write_corpus(root, n_classes=3, per_class=3, seconds=4.0, seed=5)
    for i, f in enumerate(sorted(root.rglob("*.wav"))):
        y, sr = sf.read(f, dtype="float32")
        sf.write(f, np.tile(y, 2)[: int(sr * (4 + i % 3 * 2))], sr)
    sf.write(root / "class00" / "short.wav", synth.synth_clip(0, 3, seconds=1.0, rng=np.random.default_rng(1)), 22_050)
    sf.write(root / "class01" / "quiet.wav", np.zeros(22_050 * 3, dtype=np.float32), 22_050)
    (root / "class02" / "broken.wav").write_text("this is not audio")
    return root


def _db_rows(path: Path) -> list[tuple]:
    """(path, label, error) of every row of a results database (none while it is being created)."""
    with closing(sqlite3.connect(path)) as db:
        try:
            return db.execute("SELECT path, label, error FROM results ORDER BY path").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(p)
        except (OSError, IndexError):
            pass
    return alive


def test_rows_equal_per_file_predictions_whatever_the_batching(tiny_card, songs, tmp_path):
    model = load_model(tiny_card, backend="torch")
    streamed: list[list[dict]] = []
    out = tmp_path / "r.sqlite"
    report = predict_library([songs], out, model=tiny_card, backend="torch", workers=0, batch=5, progress=False,
                             on_rows=lambda rows: streamed.append([*rows, len(_db_rows(out))]))
    files = sorted(str(p.resolve()) for p in songs.rglob("*.wav"))
    assert (report.files, report.predicted, report.skipped) == (12, 12, 0)
    assert [p for p, _ in report.failed] == [str((songs / "class02" / "broken.wav").resolve())]
    # streamed: rows arrive in several groups, each already committed when the callback runs
    assert len(streamed) > 3
    assert all(group[-1] == sum(len(g) - 1 for g in streamed[:i + 1]) for i, group in enumerate(streamed))

    frame = read_results(out)
    assert list(frame.columns) == list(COLUMNS) and sorted(frame["path"]) == files
    for row in frame.to_dict("records"):
        if row["error"] is not None:
            assert row["label"] is None and row["probabilities"] is None and row["flags"] == []
            assert "not a decodable audio file" in row["error"] and row["sha256"]
            continue
        expected = model.predict(row["path"]).to_dict()
        assert row["label"] == expected["label"] and row["flags"] == expected["flags"]
        assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=2e-6)
        assert row["confidence"] == row["probabilities"][row["label"]]
        assert row["duration"] == pytest.approx(expected["duration"]) and row["model_id"] == model.model_id
        st = os.stat(row["path"])
        assert (row["size"], row["mtime"]) == (st.st_size, st.st_mtime)
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
    flags = dict(zip(frame["path"].map(lambda p: Path(p).name), frame["flags"]))
    assert flags["quiet.wav"] == ["silent", "not_music"] and "padded" in flags["short.wav"]

    # worker processes and another batch size give the same rows
    other = tmp_path / "w.sqlite"
    predict_library([songs], other, model=tiny_card, backend="torch", workers=2, batch=64, progress=False)
    a, b = read_results(out), read_results(other)
    assert list(a["label"]) == list(b["label"]) and list(a["sha256"]) == list(b["sha256"])
    for pa, pb in zip(a["probabilities"], b["probabilities"]):
        assert pa == pb or pa == pytest.approx(pb, abs=2e-6)
    with closing(sqlite3.connect(out)) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "1" and meta["model_id"] == model.model_id
    assert json.loads(meta["classes"]) == model.classes


def test_library_rows_carry_the_default_models_not_music_flag(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "noise.wav", (0.3 * rng.standard_normal(16000 * 7)).astype(np.float32), 16000)
    sf.write(folder / "silence.wav", np.zeros(16000 * 4, dtype=np.float32), 16000)
    out = tmp_path / "d.sqlite"
    predict_library([folder], out, model=None, backend="torch", workers=0, batch=3, progress=False)
    model = load_model(None, backend="torch")
    for row in read_results(out).to_dict("records"):
        expected = model.predict(row["path"])
        assert "not_music" in row["flags"] and row["flags"] == expected.flags
        assert row["probabilities"] == pytest.approx(expected.to_dict()["probabilities"], abs=2e-6)


def test_resume_skips_unchanged_and_redoes_changed_failed_and_other_model(tiny_card, songs, tmp_path):
    out = tmp_path / "r.sqlite"
    first = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    assert first.predicted == 12 and first.backend == "onnx"  # auto: ONNX Runtime is installed
    again = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    assert (again.skipped, again.predicted, len(again.failed)) == (11, 1, 1)  # only the broken file is retried
    assert again.per_genre == first.per_genre and sum(again.per_genre.values()) == 11

    changed = songs / "class01" / "class01.00001.wav"
    y, sr = sf.read(changed, dtype="float32")
    sf.write(changed, y[: sr * 3], sr)
    (songs / "class02" / "broken.wav").unlink()
    sf.write(songs / "class02" / "broken.wav", y[: sr * 2], sr)  # repaired
    before = read_results(out).set_index("path")
    third = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    assert (third.skipped, third.predicted, third.failed, third.superseded) == (10, 2, [], 2)
    after = read_results(out).set_index("path")
    assert len(after) == 12 and after["error"].isna().all()
    key = str(changed.resolve())
    assert after.loc[key, "duration"] == pytest.approx(3.0) and after.loc[key, "sha256"] != before.loc[key, "sha256"]

    # another model: every file is done again, and the rows and meta say which model
    from melgenre.bench import build_untrained_package

    pkg = build_untrained_package(tmp_path / "pkg" / "other", classes=["class00", "class01", "class02"], width=4)
    fourth = predict_library([songs], out, model=pkg, workers=0, progress=False)
    assert fourth.predicted == 12 and fourth.skipped == 0
    assert set(read_results(out)["model_id"]) == {fourth.model_id}


def test_resume_redoes_a_file_whose_mtime_alone_changed(tiny_card, tmp_path):
    """A file rewritten with the same size (here: only its mtime moved) is predicted again."""
    root = tmp_path / "songs"
    synth.write_corpus(root, n_classes=3, per_class=1, seconds=3.0, seed=2)
    out = tmp_path / "r.sqlite"
    assert predict_library([root], out, model=tiny_card, workers=0, progress=False).predicted == 3
    touched = root / "class01" / "class01.00000.wav"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert touched.stat().st_size == st.st_size
    again = predict_library([root], out, model=tiny_card, workers=0, progress=False)
    assert (again.skipped, again.predicted) == (2, 1)
    rows = read_results(out).set_index("path")
    assert rows.loc[str(touched.resolve()), "mtime"] == touched.stat().st_mtime


def test_a_recalibrated_model_redoes_every_file(tiny_card, songs, tmp_path):
    """The same weights (model id) with another calibration give other probabilities and flags:
    the database's meta notices it and every file is predicted again, once."""
    import shutil

    out = tmp_path / "r.sqlite"
    first = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    other = tmp_path / "recal"
    shutil.copytree(tiny_card.parent, other, ignore=shutil.ignore_patterns("clips", "runs", "*.h5"))
    card = json.loads((other / tiny_card.name).read_text())
    card["calibration"] = {"temperature": 3.0}
    (other / tiny_card.name).write_text(json.dumps(card))
    recal = load_model(other / tiny_card.name)
    assert recal.model_id == first.model_id and recal.calibration_id != load_model(tiny_card).calibration_id
    second = predict_library([songs], out, model=other / tiny_card.name, workers=0, progress=False)
    assert second.recalibrated and (second.skipped, second.predicted) == (0, 12) and not first.recalibrated
    rows = read_results(out).set_index("path")
    key = str((songs / "class00" / "class00.00000.wav").resolve())
    assert rows.loc[key, "confidence"] == pytest.approx(recal.predict(key).top[0][1], abs=1e-5)
    with closing(sqlite3.connect(out)) as db:
        assert dict(db.execute("SELECT key, value FROM meta").fetchall())["calibration_id"] == recal.calibration_id
    third = predict_library([songs], out, model=other / tiny_card.name, workers=0, progress=False)
    assert not third.recalibrated and third.skipped == 11  # (the broken file is retried)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_line_formats_resume_and_tolerate_a_torn_last_line(tiny_card, songs, tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    db = tmp_path / "r.sqlite"
    predict_library([songs], db, model=tiny_card, workers=0, progress=False)
    report = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    assert report.predicted == 12
    a, b = read_results(db), read_results(out)
    assert list(a.columns) == list(b.columns) == list(COLUMNS)
    for col in ("path", "size", "sha256", "label", "flags", "error", "model_id"):
        assert list(a[col]) == list(b[col]), col
    assert list(a["mtime"]) == pytest.approx(list(b["mtime"]))
    assert [p for p in a["probabilities"]] == [p for p in b["probabilities"]]

    lines = out.read_text().splitlines(keepends=True)
    with open(out, "a") as fh:  # a kill -9 in the middle of a row
        fh.write(lines[-1][: len(lines[-1]) // 2])
    changed = songs / "class00" / "class00.00000.wav"
    y, sr = sf.read(changed, dtype="float32")
    sf.write(changed, y[: sr * 3], sr)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    litter = out.with_name(f".{out.name}.{int(dead.stdout)}.tmp")  # the rewrite of a run killed meanwhile
    litter.write_text(out.read_text()[:100])
    again = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    assert not litter.exists()
    assert again.predicted == 2  # the changed file and the broken one
    text = out.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 12 + (suffix == ".csv")  # one row per file
    assert len(read_results(out)) == 12


def test_bad_results_files_are_one_line_errors(tiny_card, songs, tmp_path):
    for name, content in (("x.sqlite", "not a database at all, just some text " * 50), ("x.csv", "a,b\n1,2\n"),
                          ("x.jsonl", "[1, 2]\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(MelgenreError, match=name):
            predict_library([songs], tmp_path / name, model=tiny_card, workers=0, progress=False)
    with pytest.raises(MelgenreError, match="unknown results format"):
        predict_library([songs], tmp_path / "r.txt", model=tiny_card, workers=0, progress=False)
    with pytest.raises(MelgenreError, match="no such results file"):
        read_results(tmp_path / "missing.sqlite")
    assert not (tmp_path / "r.txt").exists()
    (tmp_path / "empty.db").write_bytes(b"")  # the reader opens read-only: it never makes a database
    with pytest.raises(MelgenreError, match="empty.db: not a melgenre results database"):
        read_results(tmp_path / "empty.db")
    assert (tmp_path / "empty.db").stat().st_size == 0


def test_a_foreign_jsonl_is_refused_and_left_as_it_was(tiny_card, songs, tmp_path):
    """--out other.jsonl of someone else's JSON lines: refused in one line, never appended to or rewritten."""
    other = tmp_path / "other.jsonl"
    other.write_text('{"x": 1}\n')
    with pytest.raises(MelgenreError, match="other.jsonl, line 1: not a melgenre results row"):
        predict_library([songs], other, model=tiny_card, workers=0, progress=False)
    r = runner.invoke(app, ["predict", str(songs), "--model", str(tiny_card), "--out", str(other), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert other.read_text() == '{"x": 1}\n'
    # a results file with a row whose path is not text (hand-edited): one line, not a TypeError traceback
    row = library.make_row(str(songs / "a.wav"), 1, 1.0, None, "m", None, "failed")
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "path": None}) + "\n")
    with pytest.raises(MelgenreError, match="r.jsonl, line 2: not a melgenre results row"):
        read_results(tmp_path / "r.jsonl")


_WRITE_EACH = """
import sys
from melgenre.errors import MelgenreError
from melgenre.library import predict_library
for out in sys.argv[3:]:
    try:
        predict_library([sys.argv[1]], out, model=sys.argv[2], workers=0, progress=False)
        print("written", out)
    except MelgenreError as exc:
        print(exc)
"""


def test_a_folder_or_file_that_may_not_be_written_is_named_as_such(tiny_card, tmp_path):
    """--out where this user may not write: one line that says so (not "not an SQLite database", no traceback).
    As root, the job runs without the capability to override file permissions (setpriv)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("root ignores file permissions and setpriv (util-linux) is not installed to drop that power")
    clip = tmp_path / "a.wav"
    sf.write(clip, synth.synth_clip(0, 3, seconds=3.0, rng=np.random.default_rng(0)), 22_050)
    locked, ro = tmp_path / "locked.sqlite", tmp_path / "ro"
    predict_library([clip], locked, model=tiny_card, workers=0, progress=False)
    ro.mkdir()
    locked.chmod(0o444)
    ro.chmod(0o555)
    outs = [ro / "r.sqlite", ro / "r.jsonl", ro / "r.csv", locked]
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run([*drop, sys.executable, "-c", _WRITE_EACH, str(clip), str(tiny_card), *map(str, outs)],
                          env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=300)
    ro.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{ro}: folder is not writable (cannot write {out.name} in it)"
                                        for out in outs[:3]] + [f"{locked}: results file is not writable"]
    assert sorted(ro.iterdir()) == []


def test_cli_predict_out_prints_a_summary_and_exits_1_on_failures(tiny_card, songs, tmp_path):
    out = tmp_path / "cli.csv"
    r = runner.invoke(app, ["predict", str(songs), "--model", str(tiny_card), "--out", str(out), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "12 files: 12 predicted this run (1 failed)" in r.output and "broken.wav" in r.output
    assert f"{out}: model {load_model(tiny_card).model_id}, backend " in r.output  # one line, not a wrapped title
    assert len(read_results(out)) == 12
    r = runner.invoke(app, ["predict", str(songs), "--out", str(out), "--no-progress", "--tags", "msd"])
    assert r.exit_code == 2 and "does not take --tags" in " ".join(r.output.split())


_JOB = """
import sys, time
from melgenre.library import predict_library
predict_library([sys.argv[1]], sys.argv[2], model=sys.argv[3], workers=2, batch=4, progress=False,
                on_rows=lambda rows: time.sleep(1.0))
"""


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> set[int]:
    """Wait until ``ready()``, then ``kill -9`` the process; return its descendants at that moment."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.05)
    tree = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    return tree


def _assert_gone(tree: set[int], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(tree), f"still running after the parent was killed: {sorted(_alive(tree))}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_loses_only_files_in_flight_and_workers_exit(tiny_card, songs, tmp_path):
    out = tmp_path / "r.sqlite"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", _JOB, str(songs), str(out), str(tiny_card)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tree = _kill_when(proc, lambda: out.exists() and len(_db_rows(out)) >= 2 and len(_descendants(proc.pid)) >= 3)
        _assert_gone(tree)  # while the killed job is still an unreaped zombie
    finally:
        proc.kill()
        proc.wait()
    done = len(_db_rows(out))
    assert 2 <= done < 12
    report = predict_library([songs], out, model=tiny_card, workers=0, progress=False)
    rows = _db_rows(out)
    assert len(rows) == len({p for p, _, _ in rows}) == 12
    assert report.skipped >= done - 1 and report.predicted == 12 - report.skipped  # the broken file is redone


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_prepare_workers_exit_when_prepare_is_killed(tmp_path):
    synth.write_corpus(tmp_path / "c", n_classes=2, per_class=20, seconds=30.0, seed=0)
    code = ("import sys; from melgenre.store import prepare; "
            "prepare(sys.argv[1], 'fast', sys.argv[2], workers=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "c"), str(tmp_path / "o.h5")],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # forkserver, resource tracker and both workers
        tree = _kill_when(proc, lambda: len(_descendants(proc.pid)) >= 4)
        _assert_gone(tree)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # ~60 s on 2 cores: Ray starts and its actors load the model; CI runs it (`pytest -m slow`)
def test_ray_writes_the_same_database(tiny_card, songs, tmp_path):
    pytest.importorskip("ray")
    import pandas as pd
    import ray

    local = tmp_path / "local.sqlite"
    predict_library([songs], local, model=tiny_card, workers=0, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = predict_library([songs], tmp_path / "ray.sqlite", model=tiny_card, progress=False, ray="")
    finally:
        ray.shutdown()
    assert report.predicted == 12 and len(report.failed) == 1
    a, b = read_results(local), read_results(tmp_path / "ray.sqlite")
    cols = ["path", "size", "mtime", "sha256", "model_id", "label", "flags", "error", "duration"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    for pa, pb in zip(a["probabilities"], b["probabilities"]):
        assert pa == pb or pa == pytest.approx(pb, abs=2e-6)
