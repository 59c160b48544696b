// neocloud console: live regions, charts (uPlot), logs, actions and the playground.
// No build step: plain browser JavaScript, loaded after the page (defer).
"use strict";

const HDR = {"X-Neocloud-Console": "1", "Content-Type": "application/json"};

async function getText(url) {
  const r = await fetch(url, {credentials: "same-origin"});
  if (r.redirected && r.url.includes("/ui/login")) { location.href = r.url; return null; }
  return r.ok ? r.text() : null;
}

// <div data-refresh="URL" data-every="S">: replaced by a fresh fragment every S seconds.
function liveRegions() {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const every = 1000 * Number(el.dataset.every || 5);
    setInterval(async () => {
      const html = await getText(el.dataset.refresh);
      if (html !== null) { el.innerHTML = html; el.dataset.updated = String(Date.now()); }
    }, every);
  }
}

// <div data-chart="URL" data-series="a,b" data-label="...">: a uPlot chart of
// {t: [...], a: [...], b: [...]} refreshed every 5 s.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];
function charts() {
  for (const el of document.querySelectorAll("[data-chart]")) {
    const names = el.dataset.series.split(",");
    const bars = el.dataset.bars === "1";
    let plot = null;
    const draw = async () => {
      const text = await getText(el.dataset.chart);
      if (text === null) return;
      const d = JSON.parse(text);
      const data = [d.t, ...names.map((n) => d[n])];
      el.dataset.points = String(d.t.length);
      el.dataset.last = d.t.length ? String(names.map((n) => d[n][d[n].length - 1]).join(",")) : "";
      if (plot === null) {
        const opts = {
          title: el.dataset.label, width: el.clientWidth || 420, height: 180,
          series: [{}, ...names.map((n, i) => ({
            label: n, stroke: COLORS[i % COLORS.length], width: 2,
            fill: bars ? COLORS[i % COLORS.length] + "55" : undefined,
            paths: bars && uPlot.paths.bars ? uPlot.paths.bars({size: [0.6, 40]}) : undefined,
            spanGaps: false,
          }))],
          axes: [{}, {size: 50}],
        };
        el.innerHTML = "";
        plot = new uPlot(opts, data, el);
      } else {
        plot.setData(data);
      }
    };
    draw();
    setInterval(draw, 5000);
  }
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
