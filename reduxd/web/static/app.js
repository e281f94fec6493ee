// reduxd live page. Everything from the server (object names, filters, file
// names, reasons) is put on the page with textContent, never as HTML.
"use strict";

const S = {
  seq: 0,
  state: {},
  lights: [],          // reduced lights, commit order
  byId: new Map(),     // frame id -> light
  shown: null,         // index in lights of the light on show
  fields: new Map(),   // field id -> {label, meta, points, el, plot}
  quality: new Map(),  // metric -> {plot, el}
  source: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function num(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function utc(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) + " UTC" : "–";
}

function facts(dl, pairs) {
  clear(dl);
  for (const [k, v] of pairs) {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", v === null || v === undefined || v === "" ? "–" : v));
  }
}

// -- service state ---------------------------------------------------------------

function showState(state) {
  S.state = state || {};
  const svc = S.state.service;
  const last = S.state.last;
  const pairs = [];
  if (svc) {
    pairs.push(["running since", utc(svc.running_since) + ` (pid ${svc.pid})`]);
    pairs.push(["watching", (svc.roots || []).join(", ")]);
    pairs.push(["observer", svc.observer ? JSON.stringify(svc.observer) : "–"]);
    pairs.push(["pending calibration sets", String((svc.pending_sets || []).length) +
      ((svc.pending_sets || []).length ? ": " + svc.pending_sets.join("; ") : "")]);
  } else {
    pairs.push(["service", "read-only view of the ledger (reduxd serve)"]);
  }
  if (S.state.missing) pairs.push(["ledger", "not there yet: " + S.state.missing]);
  pairs.push(["last frame", last ? `${last.file} (${last.kind || "?"}, ${last.state})` : "none yet"]);
  pairs.push(["arrived", last ? utc(last.updated) : "–"]);
  facts($("service-facts"), pairs);
  const ago = el("span", "", "muted");
  ago.id = "last-ago";
  $("service-facts").lastChild.appendChild(document.createTextNode(" "));
  $("service-facts").lastChild.appendChild(ago);
  tickAgo();
  $("service-line").textContent = svc ? "running since " + utc(svc.running_since) : "read-only";

  const counts = S.state.counts || {};
  clear($("counts-head"));
  clear($("counts-row"));
  for (const [k, v] of Object.entries(counts)) {
    $("counts-head").appendChild(el("th", k));
    $("counts-row").appendChild(el("td", v));
  }
  const mbody = $("masters").tBodies[0];
  clear(mbody);
  for (const m of S.state.masters || []) {
    const tr = el("tr");
    const what = m.filter || (m.exptime !== null ? `${m.exptime} s` : "");
    for (const v of [m.kind, what, m.n, m.night, m.lights, m.path]) tr.appendChild(el("td", v));
    mbody.appendChild(tr);
  }
  const waiting = $("waiting");
  clear(waiting);
  for (const w of S.state.waiting || []) waiting.appendChild(el("li", `${w.file}: ${w.reason}`));
  if (!waiting.firstChild) waiting.appendChild(el("li", "none", "muted"));
  const fbody = $("failures").tBodies[0];
  clear(fbody);
  for (const f of S.state.failures || []) {
    const tr = el("tr");
    tr.appendChild(el("td", f.state));
    tr.appendChild(el("td", f.file));
    tr.appendChild(el("td", f.reason, "reason"));
    fbody.appendChild(tr);
  }
}

function tickAgo() {
  const node = $("last-ago");
  const last = S.state.last;
  if (!node || !last || !last.updated) return;
  const seconds = (Date.now() - Date.parse(last.updated)) / 1000;
  node.textContent = `(${duration(Math.max(0, seconds))} ago)`;
}

// -- the light on show -------------------------------------------------------------

function addLights(lights) {
  for (const light of lights) {
    // a light sent again (its finder chart came, or it was re-reduced) keeps its place
    const i = S.byId.has(light.id) ? S.lights.findIndex((l) => l.id === light.id) : -1;
    S.byId.set(light.id, light);
    if (i >= 0) S.lights[i] = light;
    else S.lights.push(light);
  }
  if ($("follow").checked || S.shown === null) S.shown = S.lights.length - 1;
  showLight();
  drawQuality();
}

function showLight() {
  const n = S.lights.length;
  $("prev").disabled = !n || S.shown <= 0;
  $("next").disabled = !n || S.shown >= n - 1;
  if (!n) return;
  const l = S.lights[S.shown];
  $("latest-pos").textContent = `${S.shown + 1} of ${n}`;
  $("latest-name").textContent = l.file;
  const img = $("finder");
  if (l.quicklook) {
    img.src = l.quicklook;
    img.hidden = false;
  } else {
    img.removeAttribute("src");
    img.hidden = true;
  }
  const marks = $("marks");
  clear(marks);
  if (l.marks) {
    const put = (xy, cls) => {
      const m = el("div", null, cls);
      m.style.left = `${xy[0] * 100}%`;
      m.style.top = `${xy[1] * 100}%`;
      marks.appendChild(m);
    };
    for (const c of l.marks.comparisons || []) put(c, "mark comp");
    if (l.marks.target) put(l.marks.target, "mark target");
  }
  facts($("latest-facts"), [
    ["object", l.object],
    ["filter", l.filter],
    ["exposure", l.exptime !== null ? `${l.exptime} s` : null],
    ["mid-exposure", utc(l.date_obs) + (l.mjd !== null ? `  MJD ${num(l.mjd, 5)}` : "")],
    ["FWHM", l.fwhm !== null ? `${num(l.fwhm, 2)} px` : null],
    ["sky", l.sky !== null ? `${num(l.sky, 1)} ADU/px` : null],
    ["stars", l.n_stars],
    ["airmass", l.airmass !== null ? num(l.airmass, 3) : "not in the header"],
    ["calibration", l.calib],
    ["masters", (l.masters || []).join("; ")],
    ["latency", duration(l.latency) + " (file written → done)"],
  ]);
}

// -- light curves ------------------------------------------------------------------

const COLORS = ["#e8a33d", "#4fb3ff", "#57c26a", "#c77dff", "#ff7eb6", "#7fdbda", "#f4e285"];
const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
const GRID = { stroke: "rgba(128,128,128,0.25)", width: 1 };
const TICKS = { stroke: "rgba(128,128,128,0.5)", width: 1 };
const hms = (u, splits) => splits.map((v) => new Date(v * 1e3).toISOString().slice(11, 19));
function padTime(u) {
  // the time span of the data with a margin (uPlot gives no span for a single point)
  const t = u.data[0].filter((v) => v !== null);
  if (!t.length) return [0, 1];
  const min = Math.min(...t);
  const max = Math.max(...t);
  const pad = Math.max(30, 0.03 * (max - min));
  return [min - pad, max + pad];
}
function timeAxis() {
  return { stroke: "#8a94a0", grid: GRID, ticks: TICKS, values: hms, label: "UTC" };
}
function valueAxis(extra) {
  return { stroke: "#8a94a0", grid: GRID, ticks: TICKS, ...extra };
}

function errorBars(key) {
  // uPlot plugin: vertical 1-sigma bars for series 1 from the field's points
  return {
    hooks: {
      draw: (u) => {
        const f = S.fields.get(key);
        if (!f) return;
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = COLORS[0];
        ctx.lineWidth = 1;
        ctx.beginPath();
        for (const p of f.points) {
          if (p.dmag === null || p.dmag === undefined || p.err === null || p.t === null) continue;
          const x = u.valToPos(p.t, "x", true);
          ctx.moveTo(x, u.valToPos(p.dmag - p.err, "mag", true));
          ctx.lineTo(x, u.valToPos(p.dmag + p.err, "mag", true));
        }
        ctx.stroke();
        ctx.restore();
      },
    },
  };
}

function hasTarget(f) {
  return f.meta.target_id !== null && f.meta.target_id !== undefined;
}

function median(values) {
  const v = values.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : 0;
}

function magRange(f) {
  // dmag with its error bars, and a little room
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of f.points) {
    if (p.dmag === null || p.dmag === undefined) continue;
    const e = p.err || 0;
    lo = Math.min(lo, p.dmag - e);
    hi = Math.max(hi, p.dmag + e);
  }
  if (lo === Infinity) return [0, 1];
  const pad = Math.max(0.005, 0.08 * (hi - lo));
  return [lo - pad, hi + pad];
}

function curveData(f) {
  const pts = f.points.filter((p) => p.t !== null);
  return [pts.map((p) => p.t), pts.map((p) => (p.dmag === undefined ? null : p.dmag))];
}

function checkData(f) {
  // each check star minus its median, so all of them share one axis around 0
  const pts = f.points.filter((p) => p.t !== null);
  const data = [pts.map((p) => p.t)];
  (f.meta.checks || []).forEach((_, i) => {
    const values = pts.map((p) => p.checks[i]);
    const m = median(values);
    data.push(values.map((v) => (v === null || v === undefined ? null : v - m)));
  });
  return data;
}

function makeCurve(key, f) {
  const box = el("div", null, "curve");
  box.dataset.field = key;
  const title = el("h3", f.label || "(no object)");
  const count = el("span", "", "muted curve-count");
  title.appendChild(document.createTextNode(" "));
  title.appendChild(count);
  const who = el("p", "", "muted small who");
  const readout = el("div", "", "readout");
  const chart = el("div", null, "chart");
  const checks = el("div", null, "chart checks");
  box.append(title, who, chart, readout, checks);
  $("curve-list").appendChild(box);
  Object.assign(f, { el: box, count, who, readout, chart, checksEl: checks });
}

const UTC_SERIES = { label: "UTC", value: (u, v) => (v === null ? "–" : utc(new Date(v * 1e3).toISOString())) };

function curveOptions(key, f) {
  const series = [UTC_SERIES];
  if (hasTarget(f)) {
    series.push({ label: `target (star ${f.meta.target_id}) dmag`, scale: "mag", stroke: COLORS[0],
      paths: () => null, points: { show: true, size: 6, fill: COLORS[0] } });
  }
  return {
    width: Math.max(300, f.chart.clientWidth || 520),
    height: 240,
    tzDate: utcDate,
    scales: { x: { time: true, range: padTime }, mag: { dir: -1, range: () => magRange(f) } },
    series,
    axes: [timeAxis(), valueAxis({ scale: "mag", label: "dmag (mag)" })],
    plugins: [errorBars(key)],
    hooks: { setCursor: [(u) => readout(f, u.cursor.idx)] },
  };
}

function checkOptions(f) {
  const series = [UTC_SERIES];
  (f.meta.checks || []).forEach((id, i) => {
    series.push({ label: `check ${id}`, stroke: COLORS[(i + 1) % COLORS.length],
      paths: () => null, points: { show: true, size: 4, fill: COLORS[(i + 1) % COLORS.length] } });
  });
  return {
    width: Math.max(300, f.checksEl.clientWidth || 520),
    height: 150,
    tzDate: utcDate,
    scales: { x: { time: true, range: padTime }, y: { dir: -1 } },
    series,
    axes: [timeAxis(), valueAxis({ label: "check − median" })],
  };
}

function readout(f, idx) {
  const pts = f.points.filter((p) => p.t !== null);
  const p = idx === null || idx === undefined ? null : pts[idx];
  if (!p) {
    f.readout.textContent = "";
    return;
  }
  const parts = [utc(p.date_obs), `MJD ${num(p.mjd, 6)}`];
  if (p.bjd !== null && p.bjd !== undefined) parts.push(`BJD_TDB ${num(p.bjd, 6)}`);
  if (p.dmag !== undefined) parts.push(`dmag ${num(p.dmag, 4)} ± ${num(p.err, 4)}`);
  parts.push(p.file);
  f.readout.textContent = parts.join("   ");
}

function drawCurve(key) {
  const f = S.fields.get(key);
  if (!f.el) makeCurve(key, f);
  const shape = JSON.stringify(f.meta);
  if (!f.plot || f.shape !== shape) {
    for (const p of [f.plot, f.checkPlot]) if (p) p.destroy();
    clear(f.chart);
    clear(f.checksEl);
    f.plot = hasTarget(f) ? new uPlot(curveOptions(key, f), curveData(f), f.chart) : null;
    f.checkPlot = (f.meta.checks || []).length ? new uPlot(checkOptions(f), checkData(f), f.checksEl) : null;
    f.shape = shape;
  } else {
    if (f.plot) f.plot.setData(curveData(f));
    if (f.checkPlot) f.checkPlot.setData(checkData(f));
  }
  const n = f.points.length;
  f.count.textContent = `${n} point${n === 1 ? "" : "s"}`;
  f.el.dataset.points = String(n);
  const comps = (f.meta.comparison_ids || []).join(", ") || "none";
  f.who.textContent = (hasTarget(f) ? `target star ${f.meta.target_id}; `
    : "no target in this field (check stars only); ") + `comparisons ${comps}`;
}

function onCurve(ev) {
  const placeholder = $("curve-list").querySelector("p.muted");
  if (placeholder) placeholder.remove();
  const key = String(ev.field);
  let f = S.fields.get(key);
  if (!f) {
    f = { label: ev.label, meta: ev.meta, points: [] };
    S.fields.set(key, f);
  }
  f.meta = ev.meta;
  f.points = ev.mode === "append" ? f.points.concat(ev.points) : ev.points;
  drawCurve(key);
  drawQuality();
}

// -- quality -----------------------------------------------------------------------

const METRICS = [
  ["fwhm", "FWHM (px)"],
  ["sky", "sky (ADU/px)"],
  ["n_stars", "stars measured"],
  ["zp", "ensemble zero point (mag)"],
  ["airmass", "airmass"],
];

function qualityData(metric) {
  if (metric === "zp") {
    const fields = [...S.fields.values()];
    const ts = [...new Set(fields.flatMap((f) => f.points.map((p) => p.t)))].filter((t) => t !== null);
    ts.sort((a, b) => a - b);
    const data = [ts];
    for (const f of fields) {
      const m = new Map(f.points.map((p) => [p.t, p.ens === undefined ? null : p.ens]));
      data.push(ts.map((t) => (m.has(t) ? m.get(t) : null)));
    }
    return { data, labels: fields.map((f) => f.label) };
  }
  const ls = S.lights.filter((l) => l.t !== null).slice().sort((a, b) => a.t - b.t);
  return { data: [ls.map((l) => l.t), ls.map((l) => l[metric])], labels: ["all lights"] };
}

function drawQuality() {
  for (const [metric, title] of METRICS) {
    const { data, labels } = qualityData(metric);
    const hasValues = data.slice(1).some((s) => s.some((v) => v !== null && v !== undefined));
    let q = S.quality.get(metric);
    const shape = labels.join("|");
    if (!hasValues) continue;
    if (!q) {
      const box = el("div", null, "curve");
      box.dataset.metric = metric;
      box.appendChild(el("h3", title));
      const chart = el("div", null, "chart");
      box.appendChild(chart);
      $("quality-charts").appendChild(box);
      q = { box, chart, plot: null, shape: null };
      S.quality.set(metric, q);
    }
    if (!q.plot || q.shape !== shape) {
      if (q.plot) q.plot.destroy();
      const series = [UTC_SERIES];
      labels.forEach((label, i) => series.push({ label, stroke: COLORS[i % COLORS.length], width: 1.5,
        spanGaps: true, points: { show: true, size: 4 } }));
      q.plot = new uPlot({
        width: Math.max(300, q.chart.clientWidth || 520), height: 150, tzDate: utcDate,
        scales: { x: { time: true, range: padTime }, y: { dir: metric === "zp" || metric === "airmass" ? -1 : 1 } },
        series,
        axes: [timeAxis(), valueAxis({})],
      }, data, q.chart);
      q.shape = shape;
    } else {
      q.plot.setData(data);
    }
  }
}

// -- downloads ---------------------------------------------------------------------

let downloadsTimer = null;
function refreshDownloads() {
  if (downloadsTimer) return;
  downloadsTimer = setTimeout(async () => {
    downloadsTimer = null;
    const res = await fetch("/api/files", { cache: "no-store" });
    if (!res.ok) return;
    const list = $("download-list");
    clear(list);
    for (const f of (await res.json()).files) {
      const li = el("li");
      const a = el("a", f.name);
      a.href = f.url;
      a.setAttribute("download", f.name);
      li.appendChild(a);
      li.appendChild(el("span", `  ${(f.bytes / 1024).toFixed(1)} kB`, "muted"));
      list.appendChild(li);
    }
    if (!list.firstChild) list.appendChild(el("li", "no tables yet", "muted"));
  }, 1000);
}

// -- loading and following ----------------------------------------------------------

async function load() {
  const res = await fetch("/api/snapshot", { cache: "no-store" });
  if (!res.ok) throw new Error(`snapshot: HTTP ${res.status}`);
  const snap = await res.json();
  S.seq = snap.seq;
  S.instance = snap.instance;
  S.lights = [];
  S.byId.clear();
  for (const f of S.fields.values()) if (f.el) f.el.remove();
  S.fields.clear();
  showState(snap.state);
  for (const f of snap.fields) onCurve({ field: f.id, label: f.label, meta: f.meta, points: f.points, mode: "replace" });
  S.shown = null;
  addLights(snap.lights);
  refreshDownloads();
  follow();
}

function follow() {
  if (S.source) S.source.close();
  const source = new EventSource(`/events?after=${S.seq}&instance=${encodeURIComponent(S.instance)}`);
  S.source = source;
  const conn = $("conn");
  source.onopen = () => { conn.textContent = "live"; conn.className = "conn on"; };
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn off"; };
  source.addEventListener("state", (e) => showState(JSON.parse(e.data).state));
  source.addEventListener("lights", (e) => { addLights(JSON.parse(e.data).lights); refreshDownloads(); });
  source.addEventListener("curve", (e) => onCurve(JSON.parse(e.data)));
  source.addEventListener("reload", () => { load().catch(showError); });
}

function showError(err) {
  $("conn").textContent = String(err.message || err);
  $("conn").className = "conn off";
}

document.addEventListener("DOMContentLoaded", () => {
  $("prev").addEventListener("click", () => {
    if (S.shown > 0) { S.shown -= 1; $("follow").checked = false; showLight(); }
  });
  $("next").addEventListener("click", () => {
    if (S.shown < S.lights.length - 1) { S.shown += 1; showLight(); }
    if (S.shown === S.lights.length - 1) $("follow").checked = true;
  });
  setInterval(tickAgo, 1000);
  load().catch(showError);
});
