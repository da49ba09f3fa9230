// masklab page: upload a photo, list its instances, render overlays, download results.
// Plain browser JavaScript, no build step. All URLs are relative so the page works under a proxy prefix.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  file: null,        // the uploaded File
  record: null,      // /v1/segment answer at the model's lowest score (per-image JSON + "coco")
  shown: new Set(),  // instance ids whose checkbox is ticked
  classesOff: new Set(),
  masks: new Map(),  // id -> decoded mask (Uint8Array, row-major), decoded on first highlight
  overlayBlob: null,
  active: null,      // highlighted instance id
  rendering: false,
  renderAgain: false,
  renderSeq: 0,
};

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  el.setAttribute("role", isError ? "alert" : "status");
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail);
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// -- model card --------------------------------------------------------------------------------------
async function loadModel() {
  try {
    const resp = await fetch("v1/models");
    if (resp.status === 503) {
      $("#model").textContent = "model loading…";
      setTimeout(loadModel, 2000);
      return;
    }
    if (!resp.ok) throw new Error(await errorText(resp));
    const card = await resp.json();
    $("#model").textContent = `model: ${card.model.name} · ${card.classes.length} classes`;
    const select = $("#style");
    select.replaceChildren(...card.styles.map((s) => new Option(s, s, s === "instance", s === "instance")));
    document.body.dataset.ready = "1";
  } catch (e) {
    $("#model").textContent = "server unreachable";
    setTimeout(loadModel, 3000);
  }
}

// -- COCO compressed RLE -> mask --------------------------------------------------------------------
// The inverse of pycocotools' rleToString: 6-bit chunks (+48), 5 data bits, 0x20 = more, sign in 0x10,
// counts after the second are deltas. Runs alternate 0/1 starting with 0, in column-major order.
function decodeRle(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let pos = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (i % 2 === 1) {
      for (let j = pos; j < pos + n && j < h * w; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    pos += n;
  }
  return mask;
}

function maskOf(id) {
  if (!state.masks.has(id)) state.masks.set(id, decodeRle(state.record.instances[id].rle));
  return state.masks.get(id);
}

// -- which instances are visible ----------------------------------------------------------------------
function minScore() { return parseFloat($("#score").value); }

function isVisible(inst) {
  return state.shown.has(inst.id) && !state.classesOff.has(inst.label) && inst.score >= minScore();
}

function visibleInstances() {
  return state.record ? state.record.instances.filter(isVisible) : [];
}

// -- upload ---------------------------------------------------------------------------------------------
async function upload(file) {
  state.file = file;
  state.record = null;
  state.masks.clear();
  state.active = null;
  $("#stage").classList.add("busy");
  setStatus(`Finding objects in ${file.name}…`);
  const body = new FormData();
  body.append("file", file, file.name);
  try {
    // Score 0: fetch everything the model keeps, then filter here, so moving the slider never re-runs it.
    const resp = await fetch("v1/segment?score_thresh=0&formats=json&formats=coco", { method: "POST", body });
    if (!resp.ok) throw new Error(await errorText(resp));
    state.record = await resp.json();
  } catch (e) {
    $("#stage").classList.remove("busy");
    setStatus(`Could not segment ${file.name}: ${e.message}`, true);
    return;
  }
  state.shown = new Set(state.record.instances.map((d) => d.id));
  state.classesOff.clear();
  buildClasses();
  buildTable();
  for (const b of document.querySelectorAll(".downloads button")) b.disabled = false;
  await render();
}

// -- overlay --------------------------------------------------------------------------------------------
// One render request at a time; changes made meanwhile trigger one more render with the latest state.
async function render() {
  if (!state.record) return;
  if (state.rendering) { state.renderAgain = true; return; }
  state.rendering = true;
  $("#stage").classList.add("busy");
  try {
    do {
      state.renderAgain = false;
      const hidden = state.record.instances.filter((d) => !isVisible(d)).map((d) => d.id);
      const q = new URLSearchParams({ style: $("#style").value, score_thresh: "0" });
      if (hidden.length) q.set("hide", hidden.join(","));
      const body = new FormData();
      body.append("file", state.file, state.file.name);
      const resp = await fetch(`v1/render?${q}`, { method: "POST", body });
      if (!resp.ok) throw new Error(await errorText(resp));
      state.overlayBlob = await resp.blob();
    } while (state.renderAgain);
    const img = $("#overlay");
    const url = URL.createObjectURL(state.overlayBlob);
    await new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; img.src = url; });
    const frame = $("#frame");
    const vh = window.innerWidth <= 760 ? 60 : 70;
    frame.style.width = `min(100%, ${(vh * state.record.width) / state.record.height}vh)`;
    frame.hidden = false;
    $("#stage").classList.remove("empty");
    state.renderSeq++;
    $("#stage").dataset.render = String(state.renderSeq);
    const n = visibleInstances().length;
    setStatus(`${n} of ${state.record.instances.length} objects shown · style ${$("#style").value}`);
    drawHighlight();
  } catch (e) {
    setStatus(`Could not draw the overlay: ${e.message}`, true);
  } finally {
    state.rendering = false;
    $("#stage").classList.remove("busy");
  }
}

function drawHighlight() {
  const canvas = $("#highlight");
  const rec = state.record;
  if (!rec) return;
  if (canvas.width !== rec.width || canvas.height !== rec.height) {
    canvas.width = rec.width;
    canvas.height = rec.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.active === null) return;
  // Spotlight: dim everything outside the highlighted mask.
  const mask = maskOf(state.active);
  const img = ctx.createImageData(rec.width, rec.height);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) img.data[i * 4 + 3] = 150;
  }
  ctx.putImageData(img, 0, 0);
  const [x1, y1, x2, y2] = rec.instances[state.active].bbox_xyxy;
  ctx.strokeStyle = "#ffd400";
  ctx.lineWidth = Math.max(2, Math.round(rec.width / 300));
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

function setActive(id) {
  state.active = id;
  for (const tr of document.querySelectorAll("#instances tbody tr")) {
    tr.classList.toggle("active", tr.dataset.id === String(id));
  }
  drawHighlight();
}

// -- instance table and class filter --------------------------------------------------------------------
function buildTable() {
  const rows = state.record.instances.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.id = String(d.id);
    tr.dataset.label = d.label;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.shown.has(d.id);
    box.setAttribute("aria-label", `show ${d.label} #${d.id}`);
    box.addEventListener("change", () => {
      if (box.checked) state.shown.add(d.id); else state.shown.delete(d.id);
      refreshRows();
      render();
    });
    box.addEventListener("click", (e) => e.stopPropagation());
    const quality = d.quality == null ? "–" : d.quality.toFixed(3);
    const cells = [box, String(d.id), d.label, d.score.toFixed(3), quality, d.area_px.toLocaleString()];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i >= 3) td.className = "num";
      if (typeof c === "string") td.textContent = c; else td.append(c);
      tr.append(td);
    });
    tr.addEventListener("mouseenter", () => setActive(d.id));
    tr.addEventListener("mouseleave", () => setActive(null));
    tr.addEventListener("click", () => setActive(state.active === d.id ? null : d.id));
    tr.tabIndex = 0;
    tr.addEventListener("focus", () => setActive(d.id));
    return tr;
  });
  $("#instances tbody").replaceChildren(...rows);
  refreshRows();
}

function refreshRows() {
  let n = 0;
  for (const tr of document.querySelectorAll("#instances tbody tr")) {
    const d = state.record.instances[Number(tr.dataset.id)];
    const vis = isVisible(d);
    n += vis ? 1 : 0;
    tr.classList.toggle("hidden-row", !vis);
    tr.hidden = d.score < minScore();
  }
  updateClassCounts();
  const total = state.record.instances.length;
  $("#count").textContent = total === 0
    ? "No objects found"
    : `${n} visible of ${total} objects (score ≥ ${minScore().toFixed(2)})`;
}

// Class chips count the objects at or above the score slider, as the table and the overlay show them.
function updateClassCounts() {
  const counts = new Map();
  for (const d of state.record.instances) {
    if (d.score >= minScore()) counts.set(d.label, (counts.get(d.label) || 0) + 1);
  }
  for (const t of document.querySelectorAll("#classes .chip-text")) {
    t.textContent = `${t.dataset.label} (${counts.get(t.dataset.label) || 0})`;
  }
}

function buildClasses() {
  const fs = $("#classes");
  const counts = new Map();
  for (const d of state.record.instances) counts.set(d.label, (counts.get(d.label) || 0) + 1);
  const chips = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([label, n]) => {
    const lab = document.createElement("label");
    lab.className = "chip";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = label;
    box.addEventListener("change", () => {
      if (box.checked) state.classesOff.delete(label); else state.classesOff.add(label);
      refreshRows();
      render();
    });
    const text = document.createElement("span");
    text.className = "chip-text";
    text.dataset.label = label;
    text.textContent = `${label} (${n})`;
    lab.append(box, text);
    return lab;
  });
  const legend = document.createElement("legend");
  legend.textContent = "Classes";
  if (!chips.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No objects found.";
    chips.push(p);
  }
  fs.replaceChildren(legend, ...chips);
  fs.disabled = false;
}

// -- downloads --------------------------------------------------------------------------------------------
function stem() {
  const name = state.record ? state.record.image : "image";
  return name.replace(/\.[^.]*$/, "") || "image";
}

function save(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function downloadJson() {
  const { coco, ...record } = state.record;
  record.instances = visibleInstances();
  save(new Blob([JSON.stringify(record, null, 2)], { type: "application/json" }), `${stem()}.json`);
}

function downloadCoco() {
  const ids = new Set(visibleInstances().map((d) => d.id));
  const entries = state.record.coco.filter((_, i) => ids.has(i));
  save(new Blob([JSON.stringify(entries)], { type: "application/json" }), `${stem()}.coco.json`);
}

// -- wiring -----------------------------------------------------------------------------------------------
function onImageClick(ev) {
  if (!state.record) return;
  const img = ev.currentTarget;
  const x = Math.floor((ev.offsetX / img.clientWidth) * state.record.width);
  const y = Math.floor((ev.offsetY / img.clientHeight) * state.record.height);
  // The smallest visible instance under the pointer (the one drawn on top).
  const hits = visibleInstances().filter((d) => maskOf(d.id)[y * state.record.width + x]);
  hits.sort((a, b) => a.area_px - b.area_px);
  const id = hits.length ? hits[0].id : null;
  setActive(id);
  if (id !== null) document.querySelector(`#instances tr[data-id="${id}"]`).scrollIntoView({ block: "nearest" });
}

function init() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });
  for (const t of ["dragenter", "dragover"]) {
    drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const t of ["dragleave", "drop"]) {
    drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]); });
  const score = $("#score");
  score.addEventListener("input", () => {
    $("#score-value").textContent = minScore().toFixed(2);
    if (state.record) refreshRows();
  });
  score.addEventListener("change", () => render());
  $("#style").addEventListener("change", () => render());
  $("#overlay").addEventListener("click", onImageClick);
  $("#dl-json").addEventListener("click", downloadJson);
  $("#dl-coco").addEventListener("click", downloadCoco);
  $("#dl-png").addEventListener("click", () => save(state.overlayBlob, `${stem()}.${$("#style").value}.png`));
  loadModel();
}

init();
