import numpy as np
import pytest
import soundfile as sf

from melgenre.datasets import discover
from melgenre.errors import DatasetError

from conftest import shared_path


def _touch_audio(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(100, dtype=np.float32), 22_050, format=path.suffix[1:].upper())


def test_class_folders_sorted_and_recursive(tmp_path):
    for rel in ("rock/a.wav", "blues/x/b.flac", "blues/c.au", "jazz/.hidden.wav"):
        _touch_audio(tmp_path / rel)
    (tmp_path / "jazz" / "notes.txt").write_text("hi")
    (tmp_path / "toplevel.wav").write_bytes(b"")  # not inside a class folder: not a track
    corpus = discover(tmp_path)
    assert corpus.layout == "folders" and corpus.classes == ["blues", "rock"]
    assert [t.track_id for t in corpus.tracks] == ["blues/c", "blues/x/b", "rock/a"]
    assert [t.label for t in corpus.tracks] == [0, 0, 1]
    assert corpus.counts() == {"blues": 2, "rock": 1}
    assert [p.name for p in corpus.ignored] == ["notes.txt"]


@pytest.mark.parametrize("sub,layout,suffix", [("genres", "gtzan", ".au"),
                                               ("genres_original", "gtzan-original", ".wav"),
                                               ("Data/genres_original", "gtzan-original", ".wav")])
def test_gtzan_layouts(tmp_path, sub, layout, suffix):
    for genre in ("jazz", "blues"):
        for i in range(2):
            _touch_audio(tmp_path / sub / genre / f"{genre}.{i:05d}{suffix}")
    (tmp_path / "features_30_sec.csv").write_text("a,b\n")
    corpus = discover(tmp_path)
    assert corpus.layout == layout and corpus.classes == ["blues", "jazz"]
    assert corpus.tracks[-1].track_id == "jazz/jazz.00001" and len(corpus) == 4


def test_explicit_class_order(tmp_path):
    _touch_audio(tmp_path / "b" / "1.wav")
    corpus = discover(tmp_path, classes=["c", "b", "a"])
    assert corpus.classes == ["c", "b", "a"] and corpus.tracks[0].label == 1
    with pytest.raises(DatasetError, match="not in the given classes"):
        discover(tmp_path, classes=["a"])


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        discover(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="no class folders with audio"):
        discover(tmp_path)
    _touch_audio(tmp_path / "a" / "x.wav")
    _touch_audio(tmp_path / "a" / "x.flac")
    with pytest.raises(DatasetError, match="same track id 'a/x'"):
        discover(tmp_path)


def test_real_dev_corpus():
    corpus = discover(shared_path("gtzan-dev"))
    assert len(corpus.classes) == 10 and corpus.classes[0] == "blues" and corpus.classes[-1] == "rock"
    assert corpus.counts()["jazz"] == 40 and corpus.counts()["pop"] == 7 and len(corpus) == 202
