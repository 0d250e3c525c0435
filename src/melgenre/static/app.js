// melgenre web page: pick or drop an audio file -> POST /predict?spectrogram=true -> show the
// genre, a bar chart of every class's probability, the most similar tracks of the server's library
// (when it has one) and the mel spectrogram. No libraries.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const input = $("file-input");
  const zone = $("drop-zone");
  const statusLine = $("status");
  const errorBox = $("error");
  const result = $("result");
  const genre = $("result-genre");
  const confidence = $("result-confidence");
  const meta = $("result-meta");
  const notes = $("result-notes");
  const chart = $("prob-chart");
  const spectrogram = $("spectrogram");
  const similar = $("similar");
  const similarList = $("similar-list");

  let maxUploadBytes = null; // from /health; the server enforces the limit either way
  let requestSeq = 0;
  let controller = null;

  const pct = (p) => `${(100 * p).toFixed(1)}%`;

  const HTTP_TITLES = {
    400: "The upload was malformed",
    413: "The file is too large",
    415: "That is not a readable audio file",
    422: "The request was not understood",
  };

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.replaceChildren();
  }

  function showError(title, detail) {
    const strong = document.createElement("strong");
    strong.textContent = title;
    errorBox.replaceChildren(strong);
    if (detail) errorBox.append(document.createTextNode(detail));
    errorBox.hidden = false;
    setStatus("");
  }

  function detailText(body) {
    if (!body || body.detail === undefined) return "";
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(body.detail);
  }

  function setBusy(busy) {
    zone.classList.toggle("busy", busy);
    zone.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function renderChart(probabilities, label) {
    const items = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    const rows = items.map(([name, p]) => {
      const li = document.createElement("li");
      if (name === label) li.classList.add("top");
      li.setAttribute("aria-label", `${name}: ${pct(p)}`);
      const lab = document.createElement("span");
      lab.className = "bar-label";
      lab.textContent = name;
      lab.title = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.dataset.width = `${Math.max(0, Math.min(100, 100 * p)).toFixed(2)}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = pct(p);
      value.setAttribute("aria-hidden", "true");
      li.append(lab, track, value);
      return li;
    });
    chart.replaceChildren(...rows);
    // set widths on the next frame so the bars animate from zero
    requestAnimationFrame(() => {
      for (const fill of chart.querySelectorAll(".bar-fill")) fill.style.width = fill.dataset.width;
    });
  }

  function renderSimilar(items) {
    // body.similar exists only when the server was started with --index
    similar.hidden = !Array.isArray(items);
    similarList.replaceChildren(...(items || []).map((item) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "similar-path";
      name.textContent = item.path;
      const score = document.createElement("span");
      score.className = "similar-score";
      score.textContent = `${Number(item.score).toFixed(3)} similarity`;
      li.append(name, score);
      return li;
    }));
  }

  function render(body) {
    genre.textContent = body.label;
    const p = body.probabilities[body.label];
    confidence.textContent = `${pct(p)} probability`;
    const nWindows = body.windows && body.windows.starts ? body.windows.starts.length : 0;
    meta.textContent = `${body.filename} · ${Number(body.duration).toFixed(1)} s · `
      + `${nWindows} window${nWindows === 1 ? "" : "s"} averaged · model ${body.model_id}`;
    const noteItems = [];
    if (body.silent) noteItems.push("The clip is silent, so this prediction means little.");
    if (body.padded) noteItems.push("The clip is shorter than the model's input and was padded with silence.");
    const flags = body.flags || [];
    if (flags.includes("not_music")) {
      noteItems.push("This does not sound like the music the model was trained on (speech, noise, tones or "
        + "silence?), so the genre means little.");
    }
    if (flags.includes("unsure")) noteItems.push("The model is unsure: its top genre is more likely wrong than right.");
    notes.replaceChildren(...noteItems.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
    renderChart(body.probabilities, body.label);
    renderSimilar(body.similar);
    if (body.spectrogram) {
      spectrogram.alt = `Mel spectrogram of ${body.filename}`;
      spectrogram.src = body.spectrogram;
      spectrogram.hidden = false;
    } else {
      spectrogram.removeAttribute("src");
      spectrogram.hidden = true;
    }
    result.hidden = false;
    setStatus(`${body.filename}: ${body.label} (${pct(p)})`);
  }

  async function classify(file) {
    if (!file) return;
    const seq = ++requestSeq;
    if (controller) controller.abort();
    controller = new AbortController();
    clearError();
    result.hidden = true; // the previous file's result must not pass for this one's
    if (maxUploadBytes !== null && file.size > maxUploadBytes) {
      showError(HTTP_TITLES[413], `${file.name} is ${(file.size / 1048576).toFixed(1)} MB; `
        + `the limit is ${(maxUploadBytes / 1048576).toFixed(0)} MB.`);
      return;
    }
    setBusy(true);
    setStatus(`Analysing ${file.name}…`);
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const response = await fetch("/predict?spectrogram=true", {
        method: "POST", body: form, signal: controller.signal,
      });
      const body = await response.json().catch(() => null);
      if (seq !== requestSeq) return; // a newer file was chosen meanwhile
      if (!response.ok) {
        const title = HTTP_TITLES[response.status] || `The server could not classify the file (HTTP ${response.status})`;
        showError(title, detailText(body) || response.statusText);
        return;
      }
      render(body);
    } catch (err) {
      if (err.name === "AbortError" || seq !== requestSeq) return;
      showError("The upload failed", `Could not reach the server (${err.message}).`);
    } finally {
      if (seq === requestSeq) setBusy(false);
    }
  }

  input.addEventListener("change", () => {
    classify(input.files[0]);
    input.value = ""; // picking the same file again still triggers a change
  });

  zone.addEventListener("dragenter", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) classify(files[0]);
  });
  // a file dropped next to the zone must not make the browser navigate away
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  fetch("/model")
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((card) => {
      const classes = card.classes || [];
      $("model-info").textContent = `Model ${card.model_id} · ${classes.length} genres: ${classes.join(", ")}`;
    })
    .catch(() => { $("model-info").textContent = "Model information unavailable."; });

  fetch("/health")
    .then((r) => r.json())
    .then((h) => {
      if (h.max_upload_mb) {
        maxUploadBytes = h.max_upload_mb * 1048576;
        $("limit-hint").textContent = `; up to ${h.max_upload_mb} MB`;
      }
    })
    .catch(() => {});
})();
