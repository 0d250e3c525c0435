import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melgenre import audio
from melgenre.errors import AudioDecodeError, MelgenreError
from melgenre.utils import private_tempdir

from conftest import shared_path, tone


@pytest.mark.parametrize("fmt,subtype,suffix", [
    ("WAV", "PCM_16", ".wav"), ("FLAC", "PCM_16", ".flac"), ("OGG", "VORBIS", ".ogg"),
    ("MP3", "MPEG_LAYER_III", ".mp3"), ("AU", "PCM_16", ".au"), ("AIFF", "PCM_16", ".aiff"),
])
def test_reads_every_format(tmp_path, fmt, subtype, suffix):
    path = tmp_path / f"clip{suffix}"
    sf.write(path, tone(1.0, 22_050), 22_050, format=fmt, subtype=subtype)
    clip = audio.load(path, sr=22_050)
    # lossy codecs add encoder delay/padding; lossless ones are exact
    assert abs(len(clip.samples) - 22_050) <= (3000 if fmt in ("MP3", "OGG") else 0)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert 0.4 < np.max(np.abs(clip.samples)) < 0.6


def test_stereo_48k_is_downmixed_and_resampled(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(2.0, 48_000, channels=2), 48_000)
    clip = audio.load(path, sr=22_050)
    assert clip.source_sr == 48_000 and clip.source_channels == 2
    assert clip.samples.shape == (44_100,)
    # mean of channels scaled 0.5 and 1.0 -> amplitude 0.375
    assert np.max(np.abs(clip.samples[1000:-1000])) == pytest.approx(0.375, abs=0.01)
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert np.argmax(spectrum) * 22_050 / len(clip.samples) == pytest.approx(440, abs=2)


def test_duration_pads_and_trims(tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.flac"
    sf.write(short, tone(0.5, 22_050), 22_050)
    sf.write(long, tone(600.0, 8_000, amp=0.1), 8_000)  # 10 minutes at 8 kHz
    s = audio.load(short, sr=22_050, duration=3.0)
    assert s.samples.shape == (66_150,) and np.all(s.samples[11_025:] == 0)
    assert s.duration == pytest.approx(3.0)
    whole = audio.load(long, sr=22_050)
    assert whole.duration == pytest.approx(600.0, abs=1e-3)
    cut = audio.load(long, sr=22_050, duration=30.0)
    assert cut.samples.shape == (661_500,)


def test_silent_audio_loads_and_is_flagged(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(22_050, dtype=np.float32), 22_050)
    clip = audio.load(path)
    assert clip.silent and clip.samples.shape == (22_050,)
    assert not audio.Audio(tone(0.1, 22_050), 22_050, 22_050, 1).silent


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is plain text, renamed to .wav\n" * 10, "not a decodable audio file"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a decodable audio file"),  # truncated header
])
def test_bad_files_raise_one_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError) as err:
        audio.load(path)
    assert str(err.value).startswith("bad.wav: ") and reason in str(err.value)
    assert "\n" not in str(err.value) and isinstance(err.value, MelgenreError)


def test_header_without_samples_is_zero_length(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(0.2, 22_050), 22_050)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(good.read_bytes()[:44])
    with pytest.raises(AudioDecodeError, match="zero-length audio"):
        audio.load(header_only)


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        audio.load(tmp_path / "nope.flac")


def test_decode_from_bytes_matches_path(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(0.3, 16_000), 16_000)
    a, b = audio.load(path), audio.load(path.read_bytes(), name="a.flac")
    np.testing.assert_array_equal(a.samples, b.samples)


def test_windows_cover_the_clip():
    y = np.arange(10, dtype=np.float32)
    assert audio.window_starts(10, 4, 3) == [0, 3, 6]
    w = audio.frame_windows(y, 4, 3)
    assert w.shape == (3, 4) and w[2].tolist() == [6, 7, 8, 9]
    short = audio.frame_windows(y[:2], 4, 2)  # shorter than a window: one padded window
    assert short.tolist() == [[0, 1, 0, 0]]
    with pytest.raises(ValueError):
        audio.window_starts(10, 0, 1)


def test_real_gtzan_au_and_corrupt_clip():
    au = shared_path("gtzan-au", "blues", "blues.00000.au")
    clip = audio.load(au)
    assert clip.source_sr == 22_050 and 29.9 < clip.duration < 30.7
    with pytest.raises(AudioDecodeError, match="jazz.00054.wav: not a decodable audio file"):
        audio.load(shared_path("bad", "jazz.00054.wav"))


def test_reads_opus(tmp_path):
    path = tmp_path / "clip.opus"
    sf.write(path, tone(1.0, 48_000), 48_000, format="OGG", subtype="OPUS")
    clip = audio.load(path, sr=22_050)
    assert clip.source_sr == 48_000 and abs(len(clip.samples) - 22_050) <= 1000
    assert 0.4 < np.max(np.abs(clip.samples)) < 0.6


def _ffmpeg_m4a(tmp_path, seconds=1.0, sr=22_050):
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    wav, m4a = tmp_path / "src.wav", tmp_path / "clip.m4a"
    sf.write(wav, tone(seconds, sr, channels=2), sr)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    return m4a


def test_reads_m4a_through_ffmpeg(tmp_path):
    m4a = _ffmpeg_m4a(tmp_path)
    clip = audio.load(m4a, sr=16_000)
    assert clip.source_sr == 22_050 and clip.source_channels == 2
    assert abs(len(clip.samples) - 16_000) <= 1500  # AAC priming and padding
    assert 0.3 < np.max(np.abs(clip.samples)) < 0.45  # mean of the 0.25 and 0.5 channels
    assert np.array_equal(audio.load(m4a.read_bytes(), sr=16_000, name=str(m4a)).samples, clip.samples)
    assert ".m4a" in audio.AUDIO_EXTENSIONS


def test_m4a_errors_name_the_file(tmp_path, monkeypatch):
    m4a = _ffmpeg_m4a(tmp_path)
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(b"not an mp4 at all" * 20)
    with pytest.raises(AudioDecodeError, match=r"^bad\.m4a: not a decodable audio file \(ffmpeg: ") as err:
        audio.load(bad)
    assert "tmp" not in str(err.value).split("ffmpeg:")[1].split("/")[0]  # the temp copy's name is not shown
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioDecodeError, match=r"^clip\.m4a: decoding this format needs the ffmpeg program"):
        audio.load(m4a)


def test_expand_paths_finds_audio_and_skips_hidden_files_and_folders(tmp_path):
    for name in ("b.wav", "a.FLAC", "notes.txt", ".partial.wav", ".Trash/old.mp3", "sub/c.mp3", "sub/.sync/d.ogg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    hidden_root = tmp_path / ".inbox"  # a hidden folder given by name is searched
    hidden_root.mkdir()
    (hidden_root / "e.wav").write_bytes(b"")
    explicit = tmp_path / ".partial.wav"  # a file given by name is kept, whatever its name
    found = audio.expand_paths([tmp_path, hidden_root, explicit, tmp_path / "b.wav"])
    assert found == [tmp_path / "a.FLAC", tmp_path / "b.wav", tmp_path / "sub" / "c.mp3", hidden_root / "e.wav",
                     explicit]


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """utils.private_tempdir (the ffmpeg decode's copy of an M4A): a kill -9 skips the clean-up, so the
    next run removes the folders of processes that are gone, never a live one's."""
    code = ("import os, signal\nfrom melgenre.utils import private_tempdir\n"
            "with private_tempdir('melgenre-test-') as d:\n"
            "    (d / 'half.m4a').write_bytes(b'x')\n    print(d, flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    killed = Path(done.stdout.strip())
    assert killed.parent == tmp_path and (killed / "half.m4a").exists()
    live = tmp_path / f"melgenre-test-{os.getppid()}-x"  # a run still going
    live.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with private_tempdir("melgenre-test-") as folder:
        assert folder.is_dir() and folder.name.startswith(f"melgenre-test-{os.getpid()}-")
        assert not killed.exists() and live.exists()
    assert not folder.exists()


def damaged_mp3(path: Path) -> Path:
    """A real MP3 with 400 zero bytes in its middle: libmpg123 (libsndfile's MP3 decoder) prints
    "Illegal Audio-MPEG-Header ... Trying to resync" and that the Xing header's stream size is off."""
    sf.write(path, tone(4.0, 22_050), 22_050, format="MP3", subtype="MPEG_LAYER_III")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] + bytes(400) + data[len(data) // 2:])
    return path


def test_decoder_chatter_stays_off_stderr(tmp_path, capfd):
    """libmpg123 writes straight to file descriptor 2 (capfd sees it; no sys.stderr redirection would):
    decoding, seeking and failing say nothing there; a failure's reason carries what the decoder said."""
    bad = damaged_mp3(tmp_path / "resync.mp3")
    assert audio.load(bad).samples.size > 0
    with audio.open_stretches(bad, 22_050) as stretches:
        assert stretches.read(22_050, 44_100).shape == (22_050,)
    assert len(audio.sample_digest(bad)) == 64
    print("python's own stderr", file=sys.stderr)  # still shown
    assert capfd.readouterr().err == "python's own stderr\n"
    junk = tmp_path / "junk.mp3"  # an ID3 header and then nothing decodable
    junk.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2000))
    assert audio.open_stretches(junk, 22_050) is None
    with pytest.raises(AudioDecodeError, match="junk.mp3: not a decodable audio file .*Illegal Audio-MPEG-Header"):
        audio.sample_digest(junk)
    assert capfd.readouterr().err == ""


def test_decoding_in_threads_shares_one_borrowed_stderr(tmp_path, capfd):
    """Threads decoding at once (serve) borrow fd 2 together: it is given back once the last one ends, and
    what other code prints meanwhile comes out (a little later: perhaps out of order), not lost."""
    bad = damaged_mp3(tmp_path / "resync.mp3")
    before = os.fstat(2)
    lines = [f"line {i}" for i in range(50)]

    def decode():
        for _ in range(10):
            audio.load(bad)

    threads = [threading.Thread(target=decode) for _ in range(3)]
    for t in threads:
        t.start()
    for line in lines:
        os.write(2, f"{line}\n".encode())
    for t in threads:
        t.join()
    now = os.fstat(2)
    assert (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)
    assert sorted(capfd.readouterr().err.splitlines()) == sorted(lines)
