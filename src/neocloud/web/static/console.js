// neocloud console: live regions, charts (uPlot), logs, actions and the playground.
// No build step: plain browser JavaScript, loaded after the page (defer).
"use strict";

const HDR = {"X-Neocloud-Console": "1", "Content-Type": "application/json"};

async function getText(url) {
  const r = await fetch(url, {credentials: "same-origin"});
  if (r.redirected && r.url.includes("/ui/login")) { location.href = r.url; return null; }
  return r.ok ? r.text() : null;
}

// <div data-refresh="URL" data-every="S">: replaced by a fresh fragment every S seconds
// (and at once after an action). An element with data-allows="a b" in it shows, outside
// it, the elements whose data-when is one of a, b and hides the others (a pod's Start
// or Stop, by its state).
const refreshers = [];
function syncAllowed() {
  const a = document.querySelector("[data-allows]");
  if (!a) return;
  const allows = a.dataset.allows.split(/\s+/);
  for (const el of document.querySelectorAll("[data-when]")) el.hidden = !allows.includes(el.dataset.when);
}
function liveRegions() {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const every = 1000 * Number(el.dataset.every || 5);
    const pull = async () => {
      const html = await getText(el.dataset.refresh);
      if (html !== null) { el.innerHTML = html; el.dataset.updated = String(Date.now()); syncAllowed(); }
    };
    refreshers.push(pull);
    setInterval(pull, every);
  }
}

// Charts. <div data-chart="URL" data-series="a,b" data-label="..."> draws the arrays a and
// b of the JSON at URL against its t; without data-series, the arrays of its "values"
// named by its "series". Charts of one URL share one fetch per refresh (every 5 s). The x
// axis spans the JSON's [start, end] (the chosen window), whatever points there are, and
// "empty": true shows "no data in this window" over the axes. <select data-chart-param=P>
// sets the query parameter P of the charts that list P in data-params (the window, or
// how spend is split). data-bars="1" draws bars; data-stacked="1" stacks the series.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
  "#ca8a04", "#db2777"];

function chartUrl(el) {
  const u = new URL(el.dataset.chart, location.origin);
  const takes = (el.dataset.params || "").split(",");
  for (const sel of document.querySelectorAll("select[data-chart-param]")) {
    if (takes.includes(sel.dataset.chartParam)) u.searchParams.set(sel.dataset.chartParam, sel.value);
  }
  return u.pathname + u.search;
}

// Y axis ticks: steps of 1, 2 or 5 times a power of ten, so that every tick is round in
// the axis unit (uPlot's own steps include 2.5, whose ticks rounded read 0.003, 0.008).
const Y_INCRS = [];
for (let e = -9; e <= 12; e++) {
  for (const m of [1, 2, 5]) Y_INCRS.push(Number((m * 10 ** e).toPrecision(1)));
}

// Decimals that show a tick step exactly: 0 for 5, 1 for 0.5, 3 for 0.002.
function stepDecimals(incr) {
  return incr > 0 ? Math.max(0, -Math.floor(Math.log10(incr) + 1e-9)) : 0;
}

// The unit a chart's label ends with in parentheses: "latency p50, p99 (ms)" -> "ms".
function labelUnit(label) {
  const m = /\(([^()]+)\)\s*$/.exec(label || "");
  return m ? m[1] : "";
}

// One y tick: milliseconds as "850 ms" below a second and "12 s" from one; other values
// with the decimals of the tick step and thousands grouped.
function yTick(v, incr, unit) {
  if (v === null || v === undefined) return "";
  if (unit === "ms") {
    if (Math.abs(v) < 1000) return `${v.toFixed(stepDecimals(incr))} ms`;
    return `${(v / 1000).toFixed(stepDecimals(incr / 1000))} s`;
  }
  const n = stepDecimals(incr);
  return v.toLocaleString("en-US", {minimumFractionDigits: n, maximumFractionDigits: n});
}

// The y axis' width in px: its longest tick label at the axis font, and the tick marks.
const measure = document.createElement("canvas").getContext("2d");
function yAxisSize(u, values) {
  if (!values) return 50;
  measure.font = "12px system-ui, -apple-system, sans-serif";
  const widest = Math.max(0, ...values.map((t) => measure.measureText(t || "").width));
  return Math.max(50, Math.ceil(widest) + 20);
}

function drawChart(st, d) {
  const el = st.el;
  const fixed = el.dataset.series ? el.dataset.series.split(",") : null;
  const labels = fixed || d.series;
  let arrays = fixed ? fixed.map((n) => d[n]) : d.values;
  el.dataset.points = String(d.t.length);
  el.dataset.last = d.t.length ? arrays.map((a) => a[a.length - 1]).join(",") : "";
  el.dataset.empty = d.empty ? "1" : "0";
  st.range = [d.start, d.end];
  const colors = labels.map((_, i) => COLORS[i % COLORS.length]);
  const bars = el.dataset.bars === "1";
  if (el.dataset.stacked === "1" && arrays.length > 1) {
    // Each series drawn as the sum of itself and those after it: the first (the biggest
    // sum) is drawn first, at the top of the stack, and each later one over it, lower,
    // so every band shows; the legend keeps the series' own order.
    const sums = new Array(arrays.length);
    for (let i = arrays.length - 1; i >= 0; i--) {
      sums[i] = arrays[i].map((v, j) => v === null ? null
        : v + (i + 1 < arrays.length ? (sums[i + 1][j] || 0) : 0));
    }
    arrays = sums;
  }
  const key = labels.join("\n") + (bars ? "|bars" : "");
  const data = [d.t, ...arrays];
  if (st.plot === null || st.key !== key) {
    if (st.plot !== null) st.plot.destroy();
    const opts = {
      title: el.dataset.label, width: el.clientWidth || 420, height: 180,
      legend: {live: false},
      scales: {x: {time: true, range: () => st.range},
               y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
      series: [{}, ...labels.map((n, i) => ({
        label: n, stroke: colors[i], width: bars ? 1 : 2,
        fill: bars ? colors[i] : undefined,
        paths: bars && uPlot.paths.bars ? uPlot.paths.bars({size: [0.6, 40]}) : undefined,
        // Dots where values are few (a burst between idle buckets, or latency that has
        // one bucket of requests), which a line alone would not show.
        points: {size: 5, show: bars ? false : (u, si) =>
          u.data[si].reduce((n, v) => n + (v === null ? 0 : 1), 0) < 60},
        spanGaps: false,
      }))],
      axes: [{}, {size: yAxisSize, incrs: Y_INCRS,
                  values: (u, splits, ai, space, incr) => splits.map(
                    (v) => yTick(v, incr, labelUnit(el.dataset.label)))}],
    };
    el.innerHTML = "";
    st.plot = new uPlot(opts, data, el);
    st.key = key;
    el.plot = st.plot;  // for the browser tests: the axis it drew
    const note = document.createElement("div");
    note.className = "nodata";
    note.textContent = "no data in this window";
    el.appendChild(note);
  } else {
    st.plot.setData(data);
  }
}

function charts() {
  const states = [...document.querySelectorAll("[data-chart]")].map(
    (el) => ({el, plot: null, key: "", range: null}));
  if (!states.length) return;
  let latest = 0;  // a refresh's answers are dropped once a later one has started
  const refresh = async () => {
    const mine = ++latest;
    const byUrl = new Map();
    for (const st of states) {
      const u = chartUrl(st.el);
      if (!byUrl.has(u)) byUrl.set(u, []);
      byUrl.get(u).push(st);
    }
    await Promise.all([...byUrl].map(async ([u, group]) => {
      const text = await getText(u);
      if (text === null || mine !== latest) return;
      const d = JSON.parse(text);
      for (const st of group) drawChart(st, d);
    }));
  };
  for (const sel of document.querySelectorAll("select[data-chart-param]")) {
    sel.addEventListener("change", refresh);
  }
  refresh();
  setInterval(refresh, 5000);
}

// <pre data-logs="URL">: the last lines, following (every 3 s).
function logs() {
  for (const el of document.querySelectorAll("[data-logs]")) {
    const pull = async () => {
      const text = await getText(el.dataset.logs);
      if (text === null) return;
      const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
      el.textContent = text || "(no output yet)";
      if (atEnd) el.scrollTop = el.scrollHeight;
    };
    pull();
    setInterval(pull, 3000);
  }
}

// <form data-action="URL">: POST the form's fields as JSON with the console header.
function actions() {
  for (const form of document.querySelectorAll("form[data-action]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
      const body = Object.fromEntries(new FormData(form).entries());
      const r = await fetch(form.dataset.action, {method: "POST", headers: HDR,
        body: JSON.stringify(body), credentials: "same-origin"});
      const out = form.parentElement.querySelector(".result");
      const j = await r.json().catch(() => ({}));
      if (out) out.textContent = r.ok ? "done" : (j.error && j.error.message) || ("HTTP " + r.status);
      for (const pull of refreshers) pull();
    });
  }
}

// <form data-playground="URL" data-kind="chat|embeddings">: one request through the gateway.
function playground() {
  for (const form of document.querySelectorAll("form[data-playground]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = form.querySelector(".answer");
      out.textContent = "…";
      delete out.dataset.done;
      const r = await fetch(form.dataset.playground, {method: "POST", headers: HDR,
        credentials: "same-origin",
        body: JSON.stringify({kind: form.elements.kind ? form.elements.kind.value : form.dataset.kind,
          input: form.elements.input.value})});
      const j = await r.json().catch(() => ({}));
      if (!r.ok) { out.textContent = "Error: " + ((j.error && j.error.message) || r.status); return; }
      out.textContent = j.text !== undefined ? j.text
        : `${j.dims} dimensions: [${j.head.map((x) => x.toFixed(4)).join(", ")}, …]`;
      out.dataset.done = "1";
    });
  }
}

liveRegions(); charts(); logs(); actions(); playground();
