// The search page: one query, searched at several nesting dims side by side.
// Read-only: it calls GET /v1/model, /v1/dims, /v1/items..., POST /v1/embed and /v1/search.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { model: null, query: null, run: 0 };

class ApiError extends Error {}

// ---- API ---------------------------------------------------------------------------

function serverMs(res) {
  const m = /(?:^|,)\s*app;dur=([\d.]+)/.exec(res.headers.get("server-timing") || "");
  return m ? parseFloat(m[1]) : null;
}

function explain(status, code, detail) {
  if (status === 413) return `Too large: ${detail}.`;
  if (status === 415) return `Unsupported format: ${detail}.`;
  if (code === "invalid_input" && /not an image|could not be (decoded|converted)|empty/.test(detail)) {
    return `Unsupported file: ${detail}. Use an image file (PNG, JPEG, WebP, GIF, BMP).`;
  }
  if (status === 409) return `No index: ${detail}.`;
  if (status === 503) return `The server is busy (${detail}); try again in a moment.`;
  return `${detail} (HTTP ${status}).`;
}

async function api(path, options) {
  let res;
  try {
    res = await fetch(path, options);
  } catch (e) {
    throw new ApiError(`Cannot reach the server (${e.message}).`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    body = null;
  }
  if (!res.ok) {
    const detail = body && body.detail ? body.detail : res.statusText || "request failed";
    throw new ApiError(explain(res.status, body && body.error, detail));
  }
  return { body, ms: serverMs(res) };
}

const postJson = (path, payload) =>
  api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });

const thumbUrl = (id) => `/v1/items/${encodeURIComponent(id)}/thumbnail`;

// ---- messages ----------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

window.addEventListener("error", (e) => showError(`Page error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) =>
  showError(e.reason instanceof ApiError ? e.reason.message : `Page error: ${e.reason}`));

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- columns -----------------------------------------------------------------------

function selectedColumns() {
  const columns = [];
  for (const box of document.querySelectorAll("#dims input:checked")) {
    const dim = Number(box.value);
    columns.push({ title: `dim ${dim}`, dim, rerank: null });
  }
  if ($("adaptive-on").checked) {
    const from = Number($("adaptive-from").value);
    const to = Number($("adaptive-to").value);
    if (to > from) columns.push({ title: `adaptive ${from} → ${to}`, dim: from, rerank: to });
  }
  return columns;
}

function describe(hit) {
  const cls = hit.metadata && typeof hit.metadata.class === "string" ? hit.metadata.class : null;
  if (cls) return cls;
  return hit.label === null || hit.label === undefined ? hit.id : `label ${hit.label}`;
}

// The item's file: its path in the indexed folder when the index has one, else its id.
function fileName(item) {
  const path = item.metadata && typeof item.metadata.path === "string" ? item.metadata.path : null;
  return path || item.id;
}

// Below this percentile a hit scores lower than 95% of the index's own nearest neighbours.
const WEAK_PERCENTILE = 5;

function scoreLine(hit) {
  const score = hit.score.toFixed(4);
  if (typeof hit.percentile !== "number") return score;
  const weak = hit.percentile < WEAK_PERCENTILE ? " · weak match" : "";
  return `${score} · p${Math.round(hit.percentile)}${weak}`;
}

function thumbnail(id, alt) {
  const img = el("img");
  img.alt = alt;
  img.loading = "lazy";
  img.src = thumbUrl(id);
  img.addEventListener("error", () => img.replaceWith(el("div", "noimg")));
  return img;
}

function renderHits(list, hits, reference) {
  for (const hit of hits) {
    const li = el("li", "hit");
    li.dataset.id = hit.id;
    li.title = `${fileName(hit)}: click to search with it`;
    if (reference && reference.has(hit.id)) li.classList.add("agree");
    if (typeof hit.percentile === "number" && hit.percentile < WEAK_PERCENTILE) li.classList.add("weak");
    const text = el("div");
    text.append(
      el("div", "file", fileName(hit)),
      el("div", "label", describe(hit)),
      el("div", "meta", scoreLine(hit)),
    );
    li.append(thumbnail(hit.id, fileName(hit)), text);
    li.addEventListener("click", () => searchByItem(hit.id));
    list.append(li);
  }
}

// The filter box: empty means no filter; anything else must be JSON (the server checks it).
function currentFilter() {
  const text = $("filter").value.trim();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`The filter is not valid JSON (${e.message}); see docs/SEARCH.md, Filters.`);
  }
}

function routeText(info) {
  if (!info) return null;
  let text = info.route.replace("_", " ");
  if (info.matched !== null && info.matched !== undefined) text += `, ${info.matched} match`;
  if (info.calibrated_recall !== null && info.calibrated_recall !== undefined) {
    text += `, calibrated ${info.calibrated_recall.toFixed(3)}`;
  }
  return text;
}

function statsLine(node, ms, recall, k, full, info) {
  node.replaceChildren();
  const parts = [["server ", ms === null ? "n/a" : `${ms.toFixed(1)} ms`]];
  if (recall !== null) parts.push([`recall@${k} vs ${full}: `, recall.toFixed(2)]);
  const route = routeText(info);
  if (route) parts.push(["", route]);
  parts.forEach(([label, value], i) => {
    if (i) node.append(" · ");
    node.append(label, el("b", "", value));
  });
}

async function runSearches(vector) {
  const run = ++state.run;
  const k = Number($("k").value);
  const full = state.model.full_dim;
  const filter = currentFilter();
  const columns = selectedColumns();
  const target = $("recall-target").value;
  if (target) columns.push({ title: `recall target ${target}`, dim: null, target: Number(target) });
  const box = $("columns");
  box.replaceChildren();
  const nodes = columns.map((col) => {
    const node = el("section", "column busy");
    if (col.dim) node.dataset.dim = col.dim;
    if (col.rerank) node.dataset.rerank = col.rerank;
    const stats = el("div", "stats", "searching…");
    const list = el("ol", "hits");
    node.append(el("h2", "", col.title), stats, list);
    box.append(node);
    return { col, node, stats, list };
  });
  // The full-dim answer is the reference every column is compared with.
  const extra = filter === null ? {} : { filter };
  const search = (dim, rerank) =>
    postJson("/v1/search", {
      vectors: [vector], dim, k, ...extra, ...(rerank ? { rerank_dim: rerank } : {}),
    });
  const searchTarget = (recall_target) =>
    postJson("/v1/search", { vectors: [vector], k, recall_target, ...extra });
  let reference;
  try {
    reference = await search(full, null);
  } catch (e) {
    for (const { node, stats } of nodes) {
      node.classList.remove("busy");
      stats.replaceChildren(el("span", "message", "not searched"));
    }
    throw e;
  }
  if (run !== state.run) return;
  const refIds = new Set(reference.body.results[0].map((h) => h.id));
  for (const { col, node, stats, list } of nodes) {
    let answer = reference;
    if (col.target || col.dim !== full || col.rerank) {
      try {
        answer = col.target ? await searchTarget(col.target) : await search(col.dim, col.rerank);
      } catch (e) {
        node.classList.remove("busy");
        stats.replaceChildren(el("span", "message", e.message));
        continue;
      }
    }
    if (run !== state.run) return;
    const hits = answer.body.results[0];
    const overlap = hits.filter((h) => refIds.has(h.id)).length;
    const recall = refIds.size ? overlap / refIds.size : null;
    statsLine(stats, answer.ms, recall, k, full, answer.body.search);
    renderHits(list, hits, refIds);
    node.classList.remove("busy");
  }
}

// ---- queries -----------------------------------------------------------------------

function setQuery(src, caption) {
  const img = $("query-image");
  img.hidden = !src;
  if (src) img.src = src;
  $("query-caption").textContent = caption;
}

async function guarded(work) {
  try {
    await work();
  } catch (e) {
    showError(e instanceof ApiError ? e.message : `Page error: ${e.message}`);
  }
}

function searchByFile(file) {
  return guarded(async () => {
    clearError();
    const form = new FormData();
    form.append("files", file, file.name || "pasted image");
    form.append("dim", String(state.model.full_dim));
    const { body } = await api("/v1/embed/files", { method: "POST", body: form });
    const src = URL.createObjectURL(file);
    state.query = { vector: body.embeddings[0] };
    setQuery(src, `${file.name || "pasted image"} (${Math.round(file.size / 1024)} KiB)`);
    await runSearches(state.query.vector);
  });
}

function searchByItem(id) {
  return guarded(async () => {
    clearError();
    const { body } = await api(`/v1/items/${encodeURIComponent(id)}`);
    state.query = { vector: body.vector };
    setQuery(thumbUrl(id), `item ${fileName(body)} (${describe(body)})`);
    await runSearches(state.query.vector);
  });
}

function randomItem() {
  return guarded(async () => {
    const { body } = await api("/v1/items?sample=1");
    if (!body.items.length) throw new ApiError("The index is empty: there is no item to pick.");
    await searchByItem(body.items[0].id);
  });
}

function firstImage(items) {
  for (const item of items || []) {
    if (item.kind === "file") return item.getAsFile();
  }
  return null;
}

function wireInputs() {
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") file.click();
  });
  file.addEventListener("change", () => {
    if (file.files.length) searchByFile(file.files[0]);
    file.value = "";
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) searchByFile(f);
    else showError("Nothing to search with: drop an image file.");
  });
  document.addEventListener("paste", (e) => {
    const f = firstImage(e.clipboardData && e.clipboardData.items);
    if (f) searchByFile(f);
  });
  $("random").addEventListener("click", randomItem);
  const rerun = () => state.query && guarded(() => runSearches(state.query.vector));
  for (const id of ["k", "adaptive-on", "adaptive-from", "adaptive-to", "filter", "recall-target"]) {
    $(id).addEventListener("change", rerun);
  }
  $("dims").addEventListener("change", rerun);
}

// ---- model, dims and the quality chart ---------------------------------------------

function buildDimControls(nesting) {
  const n = nesting.length;
  const defaults = new Set([nesting[0], nesting[Math.floor((n - 1) / 2)], nesting[n - 1]]);
  const dims = $("dims");
  for (const d of nesting) {
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.value = d;
    box.checked = defaults.has(d);
    label.append(box, ` ${d}`);
    dims.append(label);
  }
  for (const [id, pick] of [["adaptive-from", nesting[0]], ["adaptive-to", nesting[n - 1]]]) {
    const select = $(id);
    for (const d of nesting) select.append(new Option(String(d), String(d), false, d === pick));
  }
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(rows) {
  const chart = $("chart");
  chart.replaceChildren();
  const W = 320, H = 170, left = 30, right = 34, top = 10, bottom = 28;
  const x = (i) => left + (rows.length < 2 ? 0 : (i * (W - left - right)) / (rows.length - 1));
  const y = (v) => top + (1 - v) * (H - top - bottom);
  chart.append(svg("line", { class: "axis", x1: left, y1: y(0), x2: W - right, y2: y(0) }));
  for (const v of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "axis", x1: left, y1: y(v), x2: W - right, y2: y(v) }));
    chart.append(svg("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end" }, v.toFixed(1)));
  }
  rows.forEach((r, i) => chart.append(svg("text", { x: x(i), y: H - 14, "text-anchor": "middle" }, r.dim)));
  chart.append(svg("text", { x: (W - right + left) / 2, y: H - 3, "text-anchor": "middle" }, "dim"));
  const line = (cls, values) =>
    svg("polyline", { class: cls, points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ") });
  const series = [["knn", "kNN top-1", rows.map((r) => r.knn_top1)], ["map", "mAP@k", rows.map((r) => r.map_at_k)]];
  const latencies = rows.map((r) => r.latency_ms);
  if (latencies.every((v) => typeof v === "number")) {
    const top = Math.max(...latencies) || 1;
    series.push(["lat", `latency (max ${top.toFixed(2)} ms)`, latencies.map((v) => v / top)]);
  }
  series.forEach(([cls, name, values], i) => {
    if (values.some((v) => typeof v !== "number")) return;
    chart.append(line(cls, values));
    chart.append(svg("line", { class: cls, x1: left + 6, y1: top + 6 + i * 11, x2: left + 20, y2: top + 6 + i * 11 }));
    chart.append(svg("text", { x: left + 24, y: top + 9 + i * 11 }, name));
  });
}

// output types drawn (uint8 and ubinary score as int8 and binary: the same decoded vectors)
const DTYPE_LINES = [
  ["float", "dt-float", "float"],
  ["float16", "dt-float16", "float16"],
  ["int8", "dt-int8", "int8 / uint8"],
  ["binary", "dt-binary", "binary / ubinary"],
  ["binary+rerank", "dt-rerank", "binary + float rerank"],
];

function drawDtypeChart(rows) {
  const chart = $("chart-dtypes");
  chart.replaceChildren();
  const known = rows.filter((r) => typeof r.map_at_k === "number" && r.bytes > 0);
  if (!known.length) return false;
  const W = 320, H = 170, left = 30, right = 10, top = 10, bottom = 28;
  const logs = known.map((r) => Math.log2(r.bytes));
  const lo = Math.min(...logs), hi = Math.max(...logs);
  const x = (b) => left + ((Math.log2(b) - lo) / (hi - lo || 1)) * (W - left - right);
  const y = (v) => top + (1 - v) * (H - top - bottom);
  for (const v of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "axis", x1: left, y1: y(v), x2: W - right, y2: y(v) }));
    chart.append(svg("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end" }, v.toFixed(1)));
  }
  for (let p = Math.ceil(lo); p <= hi; p += Math.max(1, Math.ceil((hi - lo) / 6))) {
    const b = 2 ** p;
    chart.append(svg("text", { x: x(b), y: H - 14, "text-anchor": "middle" }, b >= 1024 ? `${b / 1024}K` : b));
  }
  chart.append(svg("text", { x: (W - right + left) / 2, y: H - 3, "text-anchor": "middle" }, "bytes per vector (log scale)"));
  let shown = 0;
  for (const [key, cls, name] of DTYPE_LINES) {
    const pts = known.filter((r) => r.dtype === key).sort((a, b) => a.bytes - b.bytes);
    if (!pts.length) continue;
    const line = svg("polyline", { class: cls, points: pts.map((r) => `${x(r.bytes)},${y(r.map_at_k)}`).join(" ") });
    line.dataset.dtype = key;
    const tip = svg("title", {}, pts.map((r) => `${name} @ ${r.dim}: mAP ${r.map_at_k.toFixed(3)}, ${r.bytes} B`).join("\n"));
    line.append(tip);
    chart.append(line);
    const ly = y(0) - 6 - shown * 11;
    chart.append(svg("line", { class: cls, x1: W - right - 100, y1: ly - 3, x2: W - right - 86, y2: ly - 3 }));
    chart.append(svg("text", { x: W - right - 82, y: ly }, name));
    shown += 1;
  }
  return shown > 0;
}

async function loadDims(path) {
  const note = $("chart-note");
  if (!path) {
    note.textContent = "This server does not report quality per dim (no GET /v1/dims).";
    return;
  }
  try {
    const { body } = await api(path);
    const rows = body.dims.map((d) => ({
      dim: d.dim, knn_top1: d.knn_top1, map_at_k: d.map_at_k, latency_ms: d.exact_ms,
    }));
    if (rows.some((r) => typeof r.knn_top1 !== "number")) {
      note.textContent = "No evaluation stored with this index (make eval before building it): " +
        "quality per dim unknown.";
    } else {
      note.textContent = `From ${body.eval_source || "the checkpoint's evaluation"}; latency: ` +
        "exact search, one query, measured when the index was built.";
    }
    drawChart(rows);
    showCalibration(body.calibration);
    const drawn = drawDtypeChart(body.dtypes || []);
    $("chart-dtypes-note").textContent = drawn
      ? "Each line: one output_dtype at every nesting dim (GET /v1/dims, dtypes); " +
        "binary + float rerank shortlists by Hamming distance and reranks at the full dim."
      : "No per-type evaluation stored with this index (make eval, then build it).";
  } catch (e) {
    note.textContent = `Quality per dim unavailable: ${e.message}`;
  }
}

function showCalibration(table) {
  const box = $("calibration");
  if (!table) {
    box.hidden = true;
    return;
  }
  $("calibration-note").textContent =
    `${table.queries} held-out items of ${table.rows.toLocaleString()}, measured ${table.measured} ` +
    `in ${table.cost_s.toFixed(1)} s; exact search at the full dim is the last row.`;
  const body = $("calibration-table").querySelector("tbody");
  body.replaceChildren();
  for (const s of table.settings) {
    const tr = document.createElement("tr");
    const knob = s.nprobe ?? s.ef_search ?? "";
    for (const v of [s.dim, s.rerank_dim ?? "", s.shortlist ?? "", knob, s.recall.toFixed(3), s.ms.toFixed(2)]) {
      tr.append(el("td", "", String(v)));
    }
    body.append(tr);
  }
  box.hidden = false;
}

async function init() {
  wireInputs();
  try {
    state.model = (await api("/v1/model")).body;
  } catch (e) {
    $("model-info").textContent = "model not loaded";
    showError(`The server's model is not available: ${e.message}`);
    return;
  }
  const m = state.model;
  const size = m.index_size === null ? "no index" : `${m.index_size.toLocaleString()} items`;
  $("model-info").textContent =
    `${m.arch}, nesting dims ${m.nesting_list.join(", ")} · step ${m.step} · ${size}`;
  buildDimControls(m.nesting_list);
  if (m.index_size === null) {
    showError("No index: this server was started without --index-dir, so it can embed but not search.");
    $("random").disabled = true;
    return;
  }
  await loadDims(m.links && m.links.dims);
}

init();
