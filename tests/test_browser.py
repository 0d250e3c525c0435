"""The web page in a real headless browser (Debian's chromium + chromedriver through Selenium).

The server is a real uvicorn on 127.0.0.1:<free port> with a tiny model and a library index of
its synthetic clips; the browser picks a generated WAV through ``#file-input`` and must show the
genre, the bars, the genre timeline (with values on hover), the similar tracks of the library and
the spectrogram with its saliency toggle.
Skipped (with the reason) when chromium, chromedriver or selenium is not installed; CI installs
them with ``apt-get install -y chromium chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_server
from PIL import Image

from melgenre import synth

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser test needs selenium (pip install selenium)")

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from melgenre.serve import create_app


@pytest.fixture(scope="module")
def tiny_model(tiny_card):
    from melgenre.predict import load_model

    model = load_model(tiny_card)
    model.card.metrics["estimates"] = [  # what `export --estimate` writes; the page shows it
        {"protocol": "artist-disjoint (fault-filtered groups)", "track": {"n": 191, "accuracy": 0.806,
                                                                         "balanced_accuracy": 0.718},
         "intervals": {"accuracy": [0.754, 0.853], "balanced_accuracy": [0.640, 0.788]}}]
    return model


@pytest.fixture(scope="module")
def server_url(tiny_model, library_index):
    with run_server(create_app(model=tiny_model, max_upload_mb=2, index=library_index, similar_k=5)) as url:
        yield url


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never go online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chrome-profile"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--window-size=1000,1400",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, what: str, timeout: float = 60):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        error = driver.find_element(By.ID, "error").text
        raise AssertionError(f"timed out waiting for {what}; #error says {error!r}; "
                             f"#status says {driver.find_element(By.ID, 'status').text!r}") from None


def test_page_predicts_a_dropped_file(browser, server_url, tiny_model, library_index, tmp_path):
    from melgenre.similar import Index, embed_file

    y = synth.synth_clip(1, 3, seconds=5.0, rng=np.random.default_rng(5))
    clip = tmp_path / "my song.wav"
    sf.write(clip, y, 22_050, subtype="PCM_16")
    expected = tiny_model.predict(clip)
    index = Index(library_index)
    neighbours = index.query(embed_file(tiny_model, clip)[0], k=5)

    browser.get(server_url + "/")
    assert browser.title.startswith("melgenre")
    _wait(browser, lambda d: tiny_model.model_id in d.find_element(By.ID, "model-info").text, "the model line")
    assert browser.find_element(By.ID, "model-estimate").text == (
        "Expected on artists it never heard, from 191 cross-validated clips: accuracy 0.81 (95 % interval "
        "0.75–0.85), balanced accuracy 0.72 (95 % interval 0.64–0.79).")
    browser.find_element(By.ID, "file-input").send_keys(str(clip))

    genre = _wait(browser, lambda d: d.find_element(By.ID, "result-genre").text.strip() or None, "a genre")
    assert genre in tiny_model.classes and genre == expected.label
    _wait(browser, lambda d: d.execute_script(
        "const img = document.getElementById('spectrogram'); return img.complete && img.naturalWidth > 0;"),
        "the spectrogram image")
    assert browser.execute_script("return document.getElementById('spectrogram').naturalWidth") == 720
    assert "my song.wav" in browser.find_element(By.ID, "spectrogram").get_attribute("alt")

    rows = browser.find_elements(By.CSS_SELECTOR, "#prob-chart li")
    assert len(rows) == len(tiny_model.classes)
    assert rows[0].find_element(By.CLASS_NAME, "bar-label").text == genre  # sorted, winner first
    shown = {r.find_element(By.CLASS_NAME, "bar-label").text: r.find_element(By.CLASS_NAME, "bar-value").text
             for r in rows}
    assert shown == {c: f"{100 * p:.1f}%" for c, p in expected.probabilities.items()}
    _wait(browser, lambda d: d.execute_script(  # the bars have been drawn at their width
        "const f = document.querySelector('#prob-chart .bar-fill'); return f.getBoundingClientRect().width > 10;"),
        "bar widths")
    assert not browser.find_element(By.ID, "error").is_displayed()

    # "similar in your library": the index's nearest tracks, best first, with their similarity
    assert browser.find_element(By.ID, "similar").is_displayed()
    items = browser.find_elements(By.CSS_SELECTOR, "#similar-list li")
    assert [li.find_element(By.CLASS_NAME, "similar-path").text for li in items] == \
        [index.relative(m.path) for m in neighbours]
    assert [li.find_element(By.CLASS_NAME, "similar-score").text for li in items] == \
        [f"{m.score:.3f} similarity" for m in neighbours]

    # the genre timeline: one stacked area per genre, the segments listed, values under the pointer
    areas = browser.find_elements(By.CSS_SELECTOR, "#timeline polygon.area")
    assert len(areas) == len(tiny_model.classes)
    assert browser.find_element(By.ID, "timeline-segments").text.startswith(f"Segments: 0:00–0:05 {expected.segments[0].genre}")
    hit = browser.find_element(By.ID, "timeline-hit")
    webdriver.ActionChains(browser).move_to_element_with_offset(hit, 5, 0).perform()  # right of the centre
    tip = _wait(browser, lambda d: d.find_element(By.ID, "timeline-tip").text if ":" in d.find_element(
        By.ID, "timeline-tip").text[:5] else None, "the hover values")
    last = expected.window_probabilities.shape[0] - 1
    centre = expected.window_starts[last] + expected.window_seconds / 2
    top = max(zip(tiny_model.classes, expected.window_probabilities[last - 1:].mean(0)), key=lambda cp: cp[1])
    assert tip.startswith(f"0:0{int(centre)}: {top[0]} ") and tip.count("%") == 3, tip

    # the saliency toggle swaps the spectrogram for the overlaid picture and back
    toggle = browser.find_element(By.ID, "saliency-toggle")
    assert browser.find_element(By.ID, "saliency-control").is_displayed() and not toggle.is_selected()
    plain = browser.find_element(By.ID, "spectrogram").get_attribute("src")
    assert genre in browser.find_element(By.ID, "saliency-label").text
    toggle.click()  # the first time asks the server for the saliency of the same file
    overlaid = _wait(browser, lambda d: (lambda src: src if src != plain else None)(
        d.find_element(By.ID, "spectrogram").get_attribute("src")), "the saliency overlay")
    assert overlaid.startswith("data:image/png") and "evidence for" in browser.find_element(By.ID, "status").text
    assert "evidence for" in browser.find_element(By.ID, "spectrogram").get_attribute("alt")
    _wait(browser, lambda d: d.execute_script(
        "const img = document.getElementById('spectrogram'); return img.complete && img.naturalWidth === 720;"),
        "the saliency image")
    posts = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/predict')).length"
    assert browser.execute_script(posts) == 2
    toggle.click()
    assert browser.find_element(By.ID, "spectrogram").get_attribute("src") == plain
    toggle.click()  # kept from the first time: no third request
    assert browser.find_element(By.ID, "spectrogram").get_attribute("src") == overlaid
    assert browser.execute_script(posts) == 2

    # nothing but this server was contacted; no console errors
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith((server_url, "data:")) for u in urls), urls
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe

    time.sleep(0.5)  # let the bar animation finish
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1000, min(height + 120, 4000))
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.width >= 900 and image.height >= 900
    pixels = np.asarray(image)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text, bars, a picture

    # a silent clip: the flags are notes in plain words
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(22_050 * 4, dtype=np.float32), 22_050, subtype="PCM_16")
    browser.find_element(By.ID, "file-input").send_keys(str(quiet))
    notes = _wait(browser, lambda d: d.find_element(By.ID, "result-notes").text or None, "the notes")
    assert "The clip is silent" in notes and "does not sound like the music the model was trained on" in notes
    # flagged not music: no genre headline, the nearest genre named as such
    assert browser.find_element(By.ID, "result-genre").text == "Not music?"
    assert browser.find_element(By.ID, "result-confidence").text.startswith("nearest genre: ")


def test_page_shows_readable_errors(browser, server_url, tmp_path):
    browser.get(server_url + "/")
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed()

    fake = tmp_path / "notes.wav"
    fake.write_text("not music at all\n" * 50)
    browser.find_element(By.ID, "file-input").send_keys(str(fake))
    _wait(browser, lambda d: error.is_displayed(), "the 415 error")
    assert "not a readable audio file" in error.text and "notes.wav" in error.text
    assert error.get_attribute("role") == "alert"

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    browser.find_element(By.ID, "file-input").send_keys(str(empty))
    _wait(browser, lambda d: "empty.wav" in error.text, "the empty-file error")
    assert "empty file" in error.text

    big = tmp_path / "huge.wav"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # the server was started with a 2 MB limit
    browser.find_element(By.ID, "file-input").send_keys(str(big))
    _wait(browser, lambda d: "too large" in error.text, "the 413 error")
    assert "huge.wav" in error.text and "2 MB" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
