// The web view: variables with live values over Server-Sent Events, a variable's history
// on click, and each optimization's value and metric per iteration as a hand-drawn SVG.
"use strict";

// The bridge may need a token (dspex-rx ui --ui-token): the page takes it from its own
// address and puts it on every request, since EventSource cannot send headers.
const TOKEN = new URLSearchParams(location.search).get("token");
function api(path) {
  return TOKEN ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : path;
}
async function getJSON(path) {
  const response = await fetch(api(path));
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response.json();
}
const $ = (selector) => document.querySelector(selector);
function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// Values arrive JSON-safe: arrays as {type: "ndarray", shape, dtype, head}, bytes as base64.
// Floats are shown to 6 significant digits: the page is for reading, the API has them all.
function number(v) { return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6))); }
function show(value) {
  if (typeof value === "number") return number(value);
  if (value && typeof value === "object" && value.type === "ndarray") {
    const head = (value.head || []).map((v) => typeof v === "number" ? number(v) : v);
    const more = value.size > head.length ? ", …" : "";
    return `${value.dtype}[${value.shape.join("×")}] [${head.join(", ")}${more}]`;
  }
  if (value && typeof value === "object" && value.type === "bytes") return `bytes(${value.base64.length * 3 / 4 | 0})`;
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 160 ? text.slice(0, 157) + "…" : text;
}
function when(iso) { return iso ? new Date(iso).toLocaleTimeString() : ""; }

// ------------------------------------------------------------------ variables
const rows = new Map();  // name -> <tr>
let selected = null;

function row(name) {
  let tr = rows.get(name);
  if (tr) return tr;
  tr = document.createElement("tr");
  tr.dataset.name = name;
  tr.append(cell(name, "name"), cell("", "type"), cell("", "version"), cell("", "value"), cell("", "updated"));
  tr.addEventListener("click", () => openHistory(name));
  const body = $("#variables tbody");
  const after = [...rows.keys()].filter((n) => n > name).sort()[0];
  body.insertBefore(tr, after ? rows.get(after) : null);
  rows.set(name, tr);
  $("#no-variables").hidden = true;
  $("#variable-count").textContent = `(${rows.size})`;
  return tr;
}

function fill(tr, entry) {
  if (entry.type !== undefined) tr.querySelector(".type").textContent = entry.type;
  // Events can overtake the snapshot: never go back to an older version.
  const shown = Number(tr.dataset.version || 0);
  if (entry.version < shown) return false;
  tr.dataset.version = entry.version;
  tr.querySelector(".version").textContent = entry.version;
  tr.querySelector(".value").textContent = show(entry.value);
  tr.querySelector(".updated").textContent = when(entry.updated_at || entry.timestamp);
  return true;
}

function onUpdate(event) {
  const update = JSON.parse(event.data);
  const tr = row(update.name);
  tr.classList.toggle("deleted", update.update_type === "deleted");
  if (fill(tr, update) && update.update_type !== "initial") {
    tr.classList.remove("flash");
    void tr.offsetWidth;  // restart the animation
    tr.classList.add("flash");
  }
  if (selected === update.name && update.update_type !== "initial") openHistory(update.name);
}

async function loadVariables() {
  for (const entry of await getJSON("variables")) fill(row(entry.name), entry);
}

function connect() {
  const source = new EventSource(api("events"));
  source.addEventListener("update", onUpdate);
  // The bridge ends a stream its session can no longer read with a "failed" event (not
  // "error": EventSource fires that name for its own connection errors).
  source.addEventListener("failed", (event) => {
    $("#connection").textContent = JSON.parse(event.data).error;
    $("#connection").className = "connection down";
  });
  source.onopen = () => { $("#connection").textContent = "live"; $("#connection").className = "connection up"; };
  source.onerror = () => { $("#connection").textContent = "reconnecting…"; $("#connection").className = "connection down"; };
}

// ------------------------------------------------------------------ history
async function openHistory(name) {
  selected = name;
  for (const [n, tr] of rows) tr.classList.toggle("selected", n === name);
  $("#history-panel").hidden = false;
  $("#history-name").textContent = name;
  const body = $("#history tbody");
  try {
    const entries = await getJSON(`variables/${encodeURIComponent(name)}/history?limit=50`);
    if (selected !== name) return;
    body.replaceChildren(...entries.map((e) => {
      const tr = document.createElement("tr");
      if (e.expired) {
        tr.append(cell(`${e.versions[0]}–${e.versions[1]}`), cell(`${e.count} older versions expired`), cell(""), cell(""));
      } else {
        tr.append(cell(e.version), cell(show(e.value), "value"), cell(when(e.updated_at)), cell(e.updated_by || ""));
      }
      return tr;
    }));
  } catch (error) {
    body.replaceChildren(Object.assign(document.createElement("tr"), { textContent: String(error) }));
  }
}
$("#history-close").addEventListener("click", () => {
  selected = null;
  $("#history-panel").hidden = true;
  for (const tr of rows.values()) tr.classList.remove("selected");
});

// ------------------------------------------------------------------ optimizations
const runs = new Map();  // variable -> {box, points, status, source}
const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
  return element;
}

// Value (left axis, blue) and metric (right axis, orange) against the iteration, each on
// its own scale: they are different quantities.
function plot(run) {
  const svg = run.box.querySelector("svg");
  const W = 400, H = 180, L = 44, R = 44, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const points = run.points;
  const xs = points.map((p) => p.iteration);
  const xmin = xs.length ? Math.min(...xs) : 0, xmax = xs.length ? Math.max(...xs, xmin + 1) : 1;
  const x = (i) => L + (W - L - R) * (i - xmin) / ((xmax - xmin) || 1);
  svg.append(svgElement("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#aab" }));
  for (const i of points.length ? [xmin, xmax] : []) {
    svg.append(Object.assign(svgElement("text", { x: x(i), y: H - B + 11, "font-size": 9, "text-anchor": "middle", fill: "#667" }), { textContent: i }));
  }
  svg.append(Object.assign(svgElement("text", { x: W / 2, y: H - 4, "font-size": 10, "text-anchor": "middle", fill: "#667" }), { textContent: "iteration" }));
  const series = [["value", "#2f6fdf", L, "end"], ["score", "#d9822b", W - R, "start"]];
  for (const [key, color, axis, anchor] of series) {
    const numeric = points.filter((p) => typeof p[key] === "number" && isFinite(p[key]));
    if (!numeric.length) continue;
    const ys = numeric.map((p) => p[key]);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (lo === hi) { lo -= 1; hi += 1; }
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    svg.append(svgElement("polyline", {
      points: numeric.map((p) => `${x(p.iteration).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.5, class: `series-${key}`,
    }));
    for (const p of numeric) svg.append(svgElement("circle", { cx: x(p.iteration), cy: y(p[key]), r: 2.2, fill: color }));
    const dx = anchor === "end" ? -4 : 4;
    for (const v of [lo, hi]) {
      svg.append(Object.assign(svgElement("text", { x: axis + dx, y: y(v) + 3, "font-size": 9, "text-anchor": anchor, fill: color }), { textContent: Number(v.toPrecision(4)) }));
    }
  }
}

function describe(run) {
  const s = run.status || {};
  const state = run.box.querySelector(".state");
  state.textContent = s.state || "";
  state.className = `state ${s.state || ""}`;
  const best = s.best_value === null || s.best_value === undefined ? "–" : show(s.best_value);
  run.box.querySelector(".summary").textContent =
    `${s.optimizer_type || ""} · iteration ${s.iteration || 0}${s.max_iterations ? " / " + s.max_iterations : ""} · best ${best}` +
    (s.best_score === null || s.best_score === undefined ? "" : ` (score ${Number(s.best_score.toPrecision ? s.best_score.toPrecision(4) : s.best_score)})`);
}

function follow(name) {
  if (runs.has(name)) return;
  const box = document.createElement("div");
  box.className = "optimization";
  box.dataset.variable = name;
  box.innerHTML = `<div><strong></strong> <span class="state"></span></div>
    <div class="summary"></div><svg role="img"></svg>
    <div class="legend"><span class="value">● value</span> &nbsp; <span class="metric">● metric</span></div>`;
  box.querySelector("strong").textContent = name;
  $("#optimizations").append(box);
  $("#no-optimizations").hidden = true;
  const run = { box, points: [], status: null, id: null };
  runs.set(name, run);
  const source = new EventSource(api(`optimizations/${encodeURIComponent(name)}/events`));
  source.addEventListener("iteration", (event) => {
    const point = JSON.parse(event.data);
    if (point.optimization_id !== run.id) { run.id = point.optimization_id; run.points = []; }
    run.points.push(point);
    plot(run);
  });
  source.addEventListener("status", (event) => {
    run.status = JSON.parse(event.data);
    if (run.status.optimization_id !== run.id) { run.id = run.status.optimization_id; run.points = []; plot(run); }
    describe(run);
  });
  plot(run);
}

async function loadOptimizations() {
  try {
    for (const status of await getJSON("optimizations")) follow(status.variable);
  } catch (error) { /* shown by the connection badge when the bridge is down */ }
}

loadVariables().catch((error) => { $("#no-variables").textContent = String(error); });
connect();
loadOptimizations();
setInterval(loadOptimizations, 3000);  // new runs; each run's progress is then pushed
