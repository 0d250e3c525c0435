// melgenre web page: pick or drop an audio file -> POST /predict?spectrogram=true -> show the genre,
// a bar chart of every class's probability, the genre timeline (stacked areas, SVG), the most similar
// tracks of the server's library (when it has one) and the mel spectrogram. Its saliency overlay costs
// several seconds of CPU, so it is asked for only when the toggle is first switched on (the same file
// again, POST /predict?saliency=true). No libraries.
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
  const timeline = $("timeline");
  const timelineTip = $("timeline-tip");
  const saliencyControl = $("saliency-control");
  const saliencyToggle = $("saliency-toggle");
  const SVG_NS = timeline.namespaceURI; // the SVG namespace, from the <svg> element itself
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];
  let images = { plain: null, saliency: null, filename: "", file: null, label: "" };

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

  const colour = (i) => PALETTE[i] || `hsl(${(i * 47) % 360} 60% 55%)`;
  const clock = (t) => `${Math.floor(t / 60)}:${String(Math.floor(t % 60)).padStart(2, "0")}`;

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (parent) parent.append(el);
    return el;
  }

  // Stacked areas of every genre's smoothed probability over time, segment boundaries as lines,
  // and the values under the pointer in #timeline-tip.
  function renderTimeline(body) {
    const tl = body.timeline;
    const W = 720, H = 200, left = 34, right = 8, top = 22, bottom = 22;
    const w = W - left - right, h = H - top - bottom;
    const duration = Math.max(Number(body.duration), tl.times.length ? tl.times[tl.times.length - 1] : 0) || 1;
    // each window's values held flat out to the clip's ends, as the segments tile the whole clip
    const times = [0, ...tl.times, duration];
    const probs = [tl.probabilities[0], ...tl.probabilities, tl.probabilities[tl.probabilities.length - 1]];
    const x = (t) => left + (w * t) / duration;
    const y = (p) => top + h * (1 - p);
    timeline.setAttribute("viewBox", `0 0 ${W} ${H}`);
    timeline.replaceChildren();
    const base = times.map(() => 0);
    tl.classes.forEach((name, c) => {
      const upper = times.map((t, i) => `${x(t).toFixed(1)},${y(base[i] + probs[i][c]).toFixed(1)}`);
      const lower = times.map((t, i) => `${x(t).toFixed(1)},${y(base[i]).toFixed(1)}`).reverse();
      times.forEach((_, i) => { base[i] += probs[i][c]; });
      const area = svg("polygon", { points: [...upper, ...lower].join(" "), fill: colour(c), class: "area" }, timeline);
      svg("title", {}, area).textContent = name;
    });
    svg("line", { x1: left, x2: left + w, y1: y(0), y2: y(0), class: "axis" }, timeline);
    for (const p of [0, 0.5, 1]) svg("text", { x: left - 4, y: y(p) + 4, "text-anchor": "end" }, timeline).textContent = `${p * 100}%`;
    for (const t of [0, duration / 2, duration]) {
      svg("text", { x: x(t), y: H - 6, "text-anchor": t === 0 ? "start" : t === duration ? "end" : "middle" }, timeline).textContent = clock(t);
    }
    body.segments.forEach((seg, i) => {
      if (i > 0) svg("line", { x1: x(seg.start), x2: x(seg.start), y1: top, y2: y(0), class: "boundary" }, timeline);
      svg("text", { x: x((seg.start + seg.end) / 2), y: top - 7, "text-anchor": "middle", class: "segment" }, timeline)
        .textContent = seg.genre;
    });
    const cursor = svg("line", { x1: 0, x2: 0, y1: top, y2: y(0), class: "cursor", visibility: "hidden" }, timeline);
    const hit = svg("rect", { x: left, y: top, width: w, height: h, fill: "transparent", id: "timeline-hit" }, timeline);
    const show = (clientX) => {
      const box = timeline.getBoundingClientRect();
      const t = Math.min(duration, Math.max(0, (((clientX - box.left) * W) / box.width - left) * duration / w));
      let i = 0;
      tl.times.forEach((c, k) => { if (Math.abs(c - t) < Math.abs(tl.times[i] - t)) i = k; });
      const row = tl.probabilities[i].map((p, c) => [tl.classes[c], p]).sort((a, b) => b[1] - a[1]);
      cursor.setAttribute("x1", x(tl.times[i]));
      cursor.setAttribute("x2", x(tl.times[i]));
      cursor.setAttribute("visibility", "visible");
      timelineTip.textContent = `${clock(tl.times[i])}: ` + row.slice(0, 3).map(([n, p]) => `${n} ${pct(p)}`).join(", ");
    };
    hit.addEventListener("mousemove", (e) => show(e.clientX));
    hit.addEventListener("mouseleave", () => cursor.setAttribute("visibility", "hidden"));
    $("timeline-segments").textContent = "Segments: " + body.segments
      .map((s) => `${clock(s.start)}–${clock(s.end)} ${s.genre} (${pct(s.probability)})`).join(", ");
    timeline.setAttribute("aria-label", `Genre over time: ${body.segments.map((s) => s.genre).join(", then ")}`);
    $("timeline-legend").replaceChildren(...tl.classes.map((name, c) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour(c);
      li.append(sw, document.createTextNode(name));
      return li;
    }));
  }

  async function fetchSaliency() {
    const wanted = images;
    saliencyToggle.disabled = true;
    setStatus(`Finding the evidence for ${wanted.label} in ${wanted.filename}…`);
    const form = new FormData();
    form.append("file", wanted.file, wanted.filename);
    try {
      const response = await fetch("/predict?saliency=true", { method: "POST", body: form });
      const body = await response.json().catch(() => null);
      if (wanted !== images) return; // another file was chosen meanwhile
      if (!response.ok || !body || !body.saliency) {
        saliencyToggle.checked = false;
        showError("The saliency could not be computed", detailText(body) || response.statusText);
        return;
      }
      images.saliency = body.saliency.image;
      setStatus(`${wanted.filename}: evidence for ${body.saliency.genre} (${body.saliency.method})`
        + (body.saliency.evidence ? `; ${body.saliency.evidence}` : ""));
      showSpectrogram();
    } catch (err) {
      if (wanted === images) showError("The upload failed", `Could not reach the server (${err.message}).`);
    } finally {
      if (wanted === images) saliencyToggle.disabled = false;
    }
  }

  function showSpectrogram() {
    if (saliencyToggle.checked && !images.saliency) {
      fetchSaliency();
      return;
    }
    const overlay = saliencyToggle.checked && images.saliency;
    spectrogram.src = overlay ? images.saliency : images.plain;
    spectrogram.alt = `Mel spectrogram of ${images.filename}`
      + (overlay ? `, with the evidence for ${images.label} highlighted` : "");
  }

  function render(body, file) {
    // a clip flagged "not music" gets no genre headline: its nearest genre is shown as such
    const notMusic = (body.flags || []).includes("not_music");
    const p = body.probabilities[body.label];
    genre.textContent = notMusic ? "Not music?" : body.label;
    confidence.textContent = notMusic ? `nearest genre: ${body.label}, ${pct(p)} probability` : `${pct(p)} probability`;
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
    renderTimeline(body);
    images = { plain: body.spectrogram || null, saliency: null, filename: body.filename, file, label: body.label };
    saliencyToggle.checked = false;
    saliencyToggle.disabled = false;
    saliencyControl.hidden = !images.plain;
    $("saliency-label").textContent = `Show where the evidence for ${body.label} lies`;
    if (body.spectrogram) {
      showSpectrogram();
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
      render(body, file);
    } catch (err) {
      if (err.name === "AbortError" || seq !== requestSeq) return;
      showError("The upload failed", `Could not reach the server (${err.message}).`);
    } finally {
      if (seq === requestSeq) setBusy(false);
    }
  }

  saliencyToggle.addEventListener("change", showSpectrogram);

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

  // How right the model is expected to be: the card's first cross-validation estimate (artist-disjoint
  // ones come first), with its 95 % bootstrap intervals when the card has them.
  function estimateLine(card) {
    const estimate = ((card.metrics || {}).estimates || [])[0];
    if (!estimate || !estimate.track) return "";
    const ci = estimate.intervals || {};
    const figure = (key, label) => {
      const value = estimate.track[key];
      if (typeof value !== "number") return "";
      const range = ci[key] ? ` (95 % interval ${ci[key][0].toFixed(2)}–${ci[key][1].toFixed(2)})` : "";
      return `${label} ${value.toFixed(2)}${range}`;
    };
    const figures = [figure("accuracy", "accuracy"), figure("balanced_accuracy", "balanced accuracy")].filter(Boolean);
    if (!figures.length) return "";
    const where = /artist-disjoint/.test(estimate.protocol || "")
      ? "on artists it never heard" : `same artists in training and test, optimistic (${estimate.protocol || "cross-validation"})`;
    return `Expected ${where}, from ${estimate.track.n} cross-validated clips: ${figures.join(", ")}.`;
  }

  fetch("/model")
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((card) => {
      const classes = card.classes || [];
      $("model-info").textContent = `Model ${card.model_id} · ${classes.length} genres: ${classes.join(", ")}`;
      const line = estimateLine(card);
      if (line) {
        $("model-estimate").textContent = line;
        $("model-estimate").hidden = false;
      }
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
