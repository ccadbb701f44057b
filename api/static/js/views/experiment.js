// One experiment: per-variant mean curves with confidence bands, final/best statistics, paired
// differences between variants, and every child's status; live from the experiment's events.

import { api } from "../api.js";
import { emptyChart, LineChart } from "../charts.js";
import { openStream } from "../sse.js";
import { age, badge, clear, color, h, num, pval, setLive, TERMINAL, throttle, toast } from "../util.js";
import { countsBar } from "./experiments.js";

export function mount(root, { id }) {
  const path = `/v1/experiments/${encodeURIComponent(id)}`;
  let exp = null, summary = null, metric = "val_accuracy", include = null, chart = null;
  let stream = null, stopped = false;

  const head = h("div");
  const facts = h("div", { class: "card" });
  const metricSel = h("select", { dataset: { testid: "experiment-metric" },
    onchange: (e) => { metric = e.target.value; renderSummary(); } });
  const includeSel = h("select", { onchange: (e) => { include = e.target.value; refreshSummary(); } },
    h("option", { value: "succeeded" }, "finished children"), h("option", { value: "all" }, "all children so far"));
  const chartEl = h("div", { dataset: { testid: "experiment-chart" } });
  const legendEl = h("div");
  const statsEl = h("div", { dataset: { testid: "experiment-stats" } });
  const pairsEl = h("div", { dataset: { testid: "experiment-pairs" } });
  const gridEl = h("div", { dataset: { testid: "children-grid" } });

  root.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " / ", h("span", { class: "mono" }, id.slice(0, 12))),
    head, facts,
    h("div", { class: "card" }, h("h2", {}, "Mean curves", h("span", { class: "tools" },
      h("label", { class: "inline" }, "metric", metricSel), h("label", { class: "inline" }, "over", includeSel))),
    chartEl, legendEl),
    h("div", { class: "grid2", style: { marginBottom: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Per variant"), statsEl),
      h("div", { class: "card" }, h("h2", {}, "Children", h("span", { class: "tools muted" }, "rows: variants · columns: seeds")), gridEl)),
    h("div", { class: "card" }, h("h2", {}, "Paired differences", h("span", { class: "tools muted" }, "b − a over seeds both have")), pairsEl));

  // ---------------------------------------------------------------- header
  function renderHead() {
    const c = exp.counts;
    const open = !TERMINAL.has(exp.status);
    clear(head, h("div", { class: "page-head" },
      h("h1", { dataset: { testid: "experiment-name" } }, exp.name || exp.id.slice(0, 8)), badge(exp.status),
      countsBar(c),
      h("span", { class: "muted small" }, Object.entries(c).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(" · ")),
      h("span", { class: "spacer" }),
      h("button", { onclick: () => { location.hash = `#/compare?jobs=${exp.children.map((ch) => ch.job_id).join(",")}&metric=${metric}`; } }, "Compare children"),
      c.failed ? h("button", { onclick: retry }, `Retry ${c.failed} failed`) : null,
      open && !exp.cancel_requested ? h("button", { class: "danger", onclick: cancel }, "Cancel") : null));
    const spec = exp.spec;
    clear(facts, h("dl", { class: "facts" },
      fact("Variants", exp.variants.join(", ")),
      fact("Seeds", exp.seeds.join(", ")),
      fact("Children", `${exp.children.length} in ${exp.stacks} stack${exp.stacks === 1 ? "" : "s"}`),
      fact("Thresholds", Object.entries(spec.thresholds || { val_accuracy: 0.7 }).map(([k, v]) => `${k} ≥ ${v}`).join(", ")),
      fact("Confidence", `${Math.round(100 * (spec.confidence ?? 0.95))}%`),
      fact("Created", age(exp.created_at)),
      fact("Id", h("span", { class: "mono" }, exp.id))),
    exp.warnings?.length ? h("ul", { class: "small muted", style: { margin: "8px 0 0" } }, exp.warnings.map((w) => h("li", {}, w))) : null);
  }
  function fact(k, v) { return h("div", {}, h("dt", {}, k), h("dd", { title: typeof v === "string" ? v : "" }, v)); }

  async function cancel() {
    try { exp = await api(`${path}/cancel`, { method: "POST" }); renderAll(); toast("Cancelling the unfinished children"); }
    catch (err) { toast(err.message, true); }
  }
  async function retry() {
    try {
      const r = await api(`${path}/retry`, { method: "POST" });
      exp = r.experiment; renderAll();
      toast(`Queued ${r.retried.length} failed children again`);
      if (!stream) listen();
    } catch (err) { toast(err.message, true); }
  }

  // ---------------------------------------------------------------- children grid
  function renderGrid() {
    const bySlot = new Map(exp.children.map((c) => [`${c.variant}\u0000${c.seed}`, c]));
    clear(gridEl, h("div", { class: "table-wrap" }, h("table", { class: "cgrid" },
      h("thead", {}, h("tr", {}, h("th", {}), exp.seeds.map((s) => h("th", { class: "small muted" }, `seed ${s}`)))),
      h("tbody", {}, exp.variants.map((v, vi) => h("tr", {},
        h("th", {}, h("span", { class: "swatch", style: { background: color(vi) } }), v),
        exp.seeds.map((s) => {
          const c = bySlot.get(`${v}\u0000${s}`);
          if (!c) return h("td", {});
          const acc = c.final_metrics?.val_accuracy;
          const label = c.status === "succeeded" && acc !== undefined ? num(acc, 2)
            : c.status === "queued" ? "·" : `${c.epoch}/${c.epochs}`;
          return h("td", {}, h("a", { class: `cell ${c.status}`, href: `#/jobs/${c.job_id}`,
            title: `${v} · seed ${s}: ${c.status}, epoch ${c.epoch}/${c.epochs}${acc !== undefined ? `, final val_accuracy ${num(acc)}` : ""}${c.error ? `\n${c.error}` : ""}`,
            dataset: { testid: "child-cell", status: c.status } },
          label, h("span", { style: { width: `${(100 * c.epoch) / (c.epochs || 1)}%` } })));
        })))))),
    h("p", { class: "small muted" }, "Cells show the epoch while running and the final val_accuracy when done; click one for its job page."));
  }

  // ---------------------------------------------------------------- statistics
  async function refreshSummaryNow() {
    try {
      const inc = include || (TERMINAL.has(exp.status) ? "succeeded" : "all");
      summary = await api(`${path}/summary?include=${inc}`);
      if (stopped) return;
      includeSel.value = inc;
      renderSummary();
    } catch (err) { clear(statsEl, h("p", { class: "error" }, err.message)); }
  }
  const refreshSummary = throttle(refreshSummaryNow, 2500);

  function renderSummary() {
    if (!summary) return;
    const metrics = summary.metrics || [];
    if (!metrics.includes(metric)) metric = metrics.includes("val_accuracy") ? "val_accuracy" : metrics[0];
    clear(metricSel, metrics.map((m) => h("option", { value: m, selected: m === metric }, m)));
    const variants = summary.variants || exp.variants;

    // curves: mean line + CI band per variant, on the union of epochs
    chart?.destroy(); chart = null;
    const per = variants.map((v) => summary.per_variant?.[v]?.metrics?.[metric]).map((m) => m || null);
    const epochs = [...new Set(per.flatMap((m) => m?.epochs || []))].sort((a, b) => a - b);
    if (!epochs.length) {
      clear(chartEl, emptyChart(summary.include === "succeeded" ? "No child has finished yet: show “all children so far” to see the runs in progress." : "No epochs yet."));
      chartEl.dataset.series = "0";
      clear(legendEl);
    } else {
      clear(chartEl);
      const series = [], ys = [];
      per.forEach((m, vi) => {
        const at = (key) => { const map = new Map((m?.epochs || []).map((e, i) => [e, m[key][i]])); return epochs.map((e) => map.get(e) ?? null); };
        const base = series.length;
        const n = m ? Math.max(0, ...m.n) : 0;
        series.push({ label: `${variants[vi]} (n=${n})`, color: color(vi), width: 2 },
          { label: `${variants[vi]} low`, color: color(vi), hidden: true },
          { label: `${variants[vi]} high`, color: color(vi), hidden: true, band: [base + 1, base + 2] });
        ys.push(at("mean"), at("ci_low"), at("ci_high"));
      });
      chart = new LineChart(chartEl, { yLabel: metric, height: 340, series });
      chart.setData(epochs, ys);
      chartEl.dataset.series = String(variants.length);
      const conf = Math.round(100 * (summary.confidence ?? 0.95));
      clear(legendEl, h("p", { class: "small muted" }, `Lines: mean over seeds (n = seeds); bands: ${conf}% Student-t interval of the mean per epoch.`));
    }

    // per-variant table
    const th = summary.thresholds?.[metric];
    clear(statsEl, h("table", { class: "small", dataset: { testid: "variant-table" } },
      h("thead", {}, h("tr", {}, h("th", {}, "Variant"), h("th", { class: "num" }, "n"),
        h("th", { class: "num" }, `final ${metric}`), h("th", { class: "num" }, "CI"),
        h("th", { class: "num" }, "best"), th !== undefined ? h("th", { class: "num" }, `reached ${th}`) : null)),
      h("tbody", {}, variants.map((v, vi) => {
        const m = summary.per_variant?.[v]?.metrics?.[metric];
        const f = m?.final || {}, b = m?.best || {}, t = m?.threshold;
        return h("tr", {}, h("td", {}, h("span", { class: "swatch", style: { background: color(vi) } }), v),
          h("td", { class: "num" }, f.n ?? 0),
          h("td", { class: "num" }, !f.n ? "–" : f.std === null || f.std === undefined ? num(f.mean) : `${num(f.mean)} ± ${num(f.std)}`),
          h("td", { class: "num" }, f.ci_low === null || f.ci_low === undefined ? "–" : `${num(f.ci_low)} … ${num(f.ci_high)}`),
          h("td", { class: "num" }, num(b.mean)),
          th !== undefined ? h("td", { class: "num" }, t ? `${t.reached}/${t.of}${t.epochs?.mean ? ` · ep ${num(t.epochs.mean, 1)}` : ""}` : "–") : null);
      }))),
    h("p", { class: "small muted" }, "final: mean ± std over seeds of the last epoch's value; best: mean of each seed's best epoch."));

    // paired comparisons for this metric
    const pairs = (summary.comparisons || []).filter((c) => c.metric === metric);
    clear(pairsEl, pairs.length ? h("table", { class: "small", dataset: { testid: "pairs-table" } },
      h("thead", {}, h("tr", {}, h("th", {}, "a"), h("th", {}, "b"), h("th", { class: "num" }, "pairs"),
        h("th", { class: "num" }, "Δ final (b − a)"), h("th", { class: "num" }, "CI"),
        h("th", { class: "num" }, "p (paired t)"), h("th", { class: "num" }, "p (Wilcoxon)"),
        h("th", { class: "num" }, "Δ best"), h("th", {}, "note"))),
      h("tbody", {}, pairs.map((c) => {
        const f = c.final || {}, b = c.best || {};
        const sig = f.p_value !== null && f.p_value !== undefined && f.p_value < 0.05;
        return h("tr", {}, h("td", {}, c.a), h("td", {}, c.b), h("td", { class: "num" }, f.n ?? c.n_pairs),
          h("td", { class: "num", style: sig ? { fontWeight: 600 } : {} }, num(f.mean_diff, 4)),
          h("td", { class: "num" }, f.ci_low === null || f.ci_low === undefined ? "–" : `${num(f.ci_low, 4)} … ${num(f.ci_high, 4)}`),
          h("td", { class: "num" }, pval(f.p_value)), h("td", { class: "num" }, pval(f.wilcoxon_p)),
          h("td", { class: "num" }, num(b.mean_diff, 4)), h("td", { class: "small muted" }, f.note || ""));
      })))
      : h("p", { class: "muted" }, variants.length < 2 ? "One variant: nothing to compare." : "No finished pairs yet."));
  }

  function renderAll() { renderHead(); renderGrid(); }

  // ---------------------------------------------------------------- live
  const renderGridSoon = throttle(renderGrid, 400);
  const refreshExpSoon = throttle(async () => {
    try { exp = await api(path); if (!stopped) renderHead(); } catch { /* next event retries */ }
  }, 1500);

  function onEvent({ event, data }) {
    if (stopped) return;
    const child = data && exp.children.find((c) => c.job_id === data.job_id);
    if (event === "epoch" && child) {
      if (data.epoch > child.epoch) child.epoch = data.epoch;
      renderGridSoon();
      refreshSummary();
    } else if (event === "status" && child) {
      Object.assign(child, { status: data.status, epoch: data.epoch, error: data.error });
      renderGridSoon();
      refreshExpSoon();  // counts, final metrics
      refreshSummary();
    } else if (event === "done") {
      exp = data;
      renderAll();
      refreshSummary();
      setLive(false);
      stream = null;
    } else if (event === "error") {
      toast(data.detail || "the event stream failed", true);
      setLive(false);
    }
  }

  function listen() {
    stream = openStream(`${path}/events`, { onEvent,
      onState: (s) => setLive(s === "open" && !TERMINAL.has(exp.status)) });
  }

  (async () => {
    try { exp = await api(path); }
    catch (err) {
      clear(root, h("div", { class: "card" }, h("h2", {}, "Experiment not found"), h("p", { class: "error" }, err.message),
        h("a", { href: "#/experiments" }, "← all experiments")));
      return;
    }
    if (stopped) return;
    renderAll();
    await refreshSummaryNow();
    if (!stopped && !TERMINAL.has(exp.status)) listen();
  })().catch((err) => toast(err.message, true));

  return () => {
    stopped = true;
    stream?.close();
    [refreshSummary, renderGridSoon, refreshExpSoon].forEach((t) => t.cancel());
    chart?.destroy();
    setLive(false);
  };
}
