// Compare: overlay one metric of several jobs (the notebook's plain vs BN val_accuracy plot).
// The selection lives in the URL (#/compare?jobs=a,b&metric=val_accuracy), so it can be shared.

import { api, getFresh } from "../api.js";
import { LineChart, emptyChart } from "../charts.js";
import { badge, clear, color, every, h, jobLabel, num, setLive, TERMINAL } from "../util.js";

const METRICS = ["val_accuracy", "accuracy", "val_loss", "loss", "lr"];

export function mount(root, { query }) {
  let selected = (query.get("jobs") || "").split(",").filter(Boolean);
  let metric = METRICS.includes(query.get("metric")) ? query.get("metric") : "val_accuracy";
  let recent = [], filter = "", chart = null, stopped = false;
  const jobs = new Map();  // id -> job
  const histories = new Map();  // id -> history

  const metricSel = h("select", { dataset: { testid: "compare-metric" },
    onchange: (e) => { metric = e.target.value; syncUrl(); draw(); } },
  METRICS.map((m) => h("option", { value: m, selected: m === metric }, m)));
  const search = h("input", { type: "text", placeholder: "filter by name or id",
    oninput: (e) => { filter = e.target.value.toLowerCase(); renderPicker(); } });
  const picker = h("div", { class: "picker", dataset: { testid: "compare-picker" } });
  const chartEl = h("div", { dataset: { testid: "compare-chart" } });
  const table = h("div");

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Compare"),
      h("label", { class: "inline" }, "metric", metricSel)),
    h("div", { class: "grid2", style: { gridTemplateColumns: "minmax(0, 1fr) minmax(0, 2.4fr)" } },
      h("div", { class: "card" }, h("h2", {}, "Jobs"), search, h("div", { style: { height: "8px" } }), picker),
      h("div", { class: "card" }, h("h2", { dataset: { testid: "compare-title" } }, "Overlay"), chartEl, table)));

  function syncUrl() {
    const hash = `#/compare?jobs=${selected.join(",")}&metric=${metric}`;
    // replaceState fires no hashchange: the view stays mounted while the URL follows it
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  function renderPicker() {
    const byId = new Map(recent.map((j) => [j.id, j]));
    for (const id of selected) if (!byId.has(id) && jobs.has(id)) byId.set(id, jobs.get(id));
    const list = [...byId.values()].filter((j) => !filter ||
      jobLabel(j).toLowerCase().includes(filter) || j.id.includes(filter));
    // selected first, then newest
    list.sort((a, b) => (selected.includes(b.id) - selected.includes(a.id)) ||
      b.created_at.localeCompare(a.created_at));
    clear(picker, list.length ? list.map((j) => h("label", { dataset: { testid: "compare-option", jobId: j.id } },
      h("input", { type: "checkbox", checked: selected.includes(j.id), onchange: (e) => toggle(j.id, e.target.checked) }),
      h("span", { class: "name", title: j.id }, jobLabel(j)), badge(j.status)))
      : h("div", { class: "empty" }, "No jobs."));
  }

  function toggle(id, on) {
    selected = on ? [...new Set([...selected, id])] : selected.filter((x) => x !== id);
    syncUrl();
    renderPicker();
    refresh();
  }

  function draw() {
    chart?.destroy();
    chart = null;
    const ids = selected.filter((id) => histories.has(id));
    if (!ids.length) {
      clear(chartEl, emptyChart(selected.length ? "Loading…" : "Pick jobs on the left to overlay their curves."));
      clear(table);
      chartEl.dataset.series = "0";
      return;
    }
    clear(chartEl);
    // align on the union of epochs: jobs may have run different lengths
    const epochs = [...new Set(ids.flatMap((id) => histories.get(id).epoch))].sort((a, b) => a - b);
    const ys = ids.map((id) => {
      const hst = histories.get(id);
      const at = new Map(hst.epoch.map((e, i) => [e, hst[metric]?.[i] ?? null]));
      return epochs.map((e) => at.get(e) ?? null);
    });
    chart = new LineChart(chartEl, { yLabel: metric, height: 380, series: ids.map((id, i) => ({
      label: jobLabel(jobs.get(id) || { id }), color: color(i) })) });
    chart.setData(epochs, ys);
    chartEl.dataset.series = String(ids.length);
    const mode = metric.endsWith("loss") ? Math.min : Math.max;
    clear(table, h("table", { class: "small", style: { marginTop: "10px" } },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Job"), h("th", {}, "Status"),
        h("th", { class: "num" }, "Epochs"), h("th", { class: "num" }, `final ${metric}`),
        h("th", { class: "num" }, `best ${metric}`))),
      h("tbody", {}, ids.map((id, i) => {
        const hst = histories.get(id), j = jobs.get(id);
        const vals = (hst[metric] || []).filter((v) => v !== null);
        return h("tr", {}, h("td", {}, h("span", { class: "swatch", style: { background: color(i) } })),
          h("td", {}, h("a", { href: `#/jobs/${id}` }, jobLabel(j || { id }))),
          h("td", {}, j ? badge(j.status) : "–"), h("td", { class: "num" }, hst.epoch.length),
          h("td", { class: "num" }, num(vals[vals.length - 1])),
          h("td", { class: "num" }, vals.length ? num(mode(...vals)) : "–"));
      }))));
  }

  async function refresh() {
    let changed = false;
    await Promise.all(selected.map(async (id) => {
      const j = jobs.get(id);
      if (j && TERMINAL.has(j.status) && histories.has(id)) return;  // finished: nothing moves
      try {
        const [job, hist] = await Promise.all([api(`/v1/jobs/${id}`), getFresh(`/v1/jobs/${id}/history`)]);
        jobs.set(id, job);
        if (hist.changed || !histories.has(id)) { histories.set(id, hist.data); changed = true; }
      } catch {
        selected = selected.filter((x) => x !== id);  // deleted or mistyped id
        changed = true;
      }
    }));
    if (stopped) return;
    setLive(selected.some((id) => !TERMINAL.has(jobs.get(id)?.status)));
    if (changed || !chart) draw();
  }

  async function loadRecent() {
    try {
      recent = (await api("/v1/jobs?limit=100")).items;
      recent.forEach((j) => { if (!jobs.has(j.id)) jobs.set(j.id, j); });
      if (!stopped) renderPicker();
    } catch { /* the picker keeps what it has */ }
  }

  draw();
  loadRecent().then(refresh);
  const stops = [every(2500, refresh), every(10000, loadRecent)];
  return () => { stopped = true; stops.forEach((f) => f()); chart?.destroy(); setLive(false); };
}
