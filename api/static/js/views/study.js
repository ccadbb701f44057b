// One study: a card per claim with its verdict (supported / contradicted / inconclusive, marked
// partial while runs are still going), the effect with its CI, the Holm-adjusted p, n, the
// reason, what would firm it up, a small chart, and a link to the claim's experiment.
// Polled every 2 s while the study runs; the report is fetched again whenever a child finishes.
//
// Charts: sweeps (learning rates, init scales, batch sizes) and the train/inference gap come
// from the report's details; the other claims draw their experiment's mean curves
// (/v1/experiments/<id>/summary), the same numbers as report.html's figures.

import { api, apiKey, download, request, ApiError } from "../api.js";
import { emptyChart, LineChart } from "../charts.js";
import { age, badge, clear, color, duration, every, h, num, pval, setLive, TERMINAL, toast } from "../util.js";
import { countsBar } from "./experiments.js";

const SWEEPS = [
  ["learning_rates", "learning rate"],
  ["init_scales", "init scale"],
  ["batch_sizes", "batch size"],
];

function total(counts) { return Object.values(counts || {}).reduce((s, n) => s + (n || 0), 0); }

function verdictBadge(verdict) {
  const v = verdict || "pending";
  return h("span", { class: `verdict ${v}`, dataset: { testid: "verdict", verdict: v },
    title: verdict ? `verdict: ${verdict}` : "no verdict yet: no run of this claim has finished" }, v);
}

function ci(test) {
  if (!test || test.ci_low === null || test.ci_low === undefined) return "";
  return ` [${num(test.ci_low)}, ${num(test.ci_high)}]`;
}

export function mount(root, { id }) {
  const path = `/v1/studies/${encodeURIComponent(id)}`;
  let study = null, report = null, reportError = null, stopped = false, stopPoll = null;
  let reportSig = null;
  const cards = new Map();  // claim -> {el, sig, chart, chartSig, summary, summarySig}

  const head = h("div");
  const facts = h("div", { class: "card" });
  const note = h("p", { class: "small muted", dataset: { testid: "report-note" } });
  const grid = h("div", { class: "claims-grid", dataset: { testid: "claims-grid" } });

  root.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/studies" }, "Studies"), " / ", h("span", { class: "mono" }, id.slice(0, 12))),
    head, facts, note, grid);

  // ---------------------------------------------------------------- report files
  function reportLink(ext, label) {
    const url = `${path}/report.${ext}`;
    return h("a", { href: url, target: "_blank", rel: "noopener", dataset: { testid: `report-${ext}` },
      onclick: async (e) => {
        if (!apiKey()) return;  // no key on this server: a plain link works
        e.preventDefault();     // a link cannot send the Authorization header
        try {
          if (ext === "md") { await download(url, `study-${id.slice(0, 8)}.md`); return; }
          const w = window.open("", "_blank");
          const res = await request(url, { headers: { Accept: "text/html" } });
          if (!res.ok) { w?.close(); throw new ApiError(res.status, await res.json().catch(() => null)); }
          const blob = new Blob([await res.text()], { type: "text/html" });
          const href = URL.createObjectURL(blob);
          if (w) w.location.href = href; else location.href = href;
          setTimeout(() => URL.revokeObjectURL(href), 60_000);
        } catch (err) { toast(err.message, true); }
      } }, label);
  }

  // ---------------------------------------------------------------- header
  function renderHead() {
    const counts = study.counts || study.claims.reduce((acc, c) => {
      for (const [k, n] of Object.entries(c.counts || {})) acc[k] = (acc[k] || 0) + n;
      return acc;
    }, {});
    clear(head, h("div", { class: "page-head" },
      h("h1", { dataset: { testid: "study-name" } }, study.name || study.id.slice(0, 8)),
      h("span", { dataset: { testid: "study-status" } }, badge(study.status)),
      countsBar(counts),
      h("span", { class: "muted small" }, Object.entries(counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(" · ")),
      h("span", { class: "spacer" }),
      h("span", { class: "small" }, "report: ", reportLink("html", "HTML"), " · ", reportLink("md", "Markdown"))));
    const spec = study.spec || {}, cost = study.cost || {};
    const base = spec.base || {};
    clear(facts, h("dl", { class: "facts" },
      fact("Claims", String(study.claims.length)),
      fact("Seeds", String(spec.seeds ?? "–")),
      fact("Alpha (Holm)", String(report?.alpha ?? spec.alpha ?? "–")),
      fact("Runs", String(cost.children ?? total(counts))),
      fact("Estimated time", cost.estimated_seconds === null || cost.estimated_seconds === undefined ? "–" : `≤ ${duration(cost.estimated_seconds)}`),
      fact("Dataset", base.dataset?.name || "–"),
      fact("Network", base.network ? `${(base.network.hidden || []).join("-") || "layers"} · ${base.network.batchnorm || "bn"}` : "–"),
      fact("Created", age(study.created_at)),
      fact("Id", h("span", { class: "mono" }, study.id))),
    cost.note ? h("p", { class: "small muted", style: { margin: "8px 0 0" } }, cost.note) : null);
  }
  function fact(k, v) { return h("div", {}, h("dt", {}, k), h("dd", { title: typeof v === "string" ? v : "" }, v)); }

  // ---------------------------------------------------------------- claim cards
  function renderCards() {
    const byClaim = new Map((report?.claims || []).map((c) => [c.claim, c]));
    const seen = new Set();
    for (const sc of study.claims) {
      seen.add(sc.claim);
      const rc = byClaim.get(sc.claim) || null;
      let card = cards.get(sc.claim);
      if (!card) {
        card = { el: h("div", { class: "card claim-card", dataset: { testid: "claim-card", claim: sc.claim } }),
          chartEl: h("div", { dataset: { testid: "claim-chart" } }), chart: null, chartSig: null,
          body: h("div"), summary: null, summarySig: null };
        card.el.append(card.body, card.chartEl, card.foot = h("div", { class: "foot small" }));
        cards.set(sc.claim, card);
      }
      const sig = JSON.stringify([sc, rc, report?.partial]);
      if (sig !== card.sig) {
        card.sig = sig;
        renderCard(card, sc, rc);
      }
    }
    for (const [claim, card] of cards) {
      if (!seen.has(claim)) { card.chart?.destroy(); card.el.remove(); cards.delete(claim); }
    }
    // keep the study's claim order
    const want = study.claims.map((c) => cards.get(c.claim).el);
    if (want.some((el, i) => grid.children[i] !== el)) grid.replaceChildren(...want);
    // charts last: a card in the page has its width
    for (const sc of study.claims) updateChart(cards.get(sc.claim), sc, byClaim.get(sc.claim) || null);
  }

  function renderCard(card, sc, rc) {
    const verdict = rc?.verdict || null;
    card.el.className = `card claim-card ${verdict || "pending"}`;
    card.el.dataset.verdict = verdict || "pending";
    const partial = rc ? Boolean(rc.partial) : !TERMINAL.has(sc.status);
    const t = rc?.test || {};
    clear(card.body,
      h("div", { class: "claim-head" },
        h("div", { style: { flex: 1, minWidth: 0 } },
          h("h3", { dataset: { testid: "claim-text" } }, sc.text || rc?.text || sc.claim),
          h("span", { class: "claim-id" }, sc.claim)),
        h("div", { class: "row", style: { gap: "6px" } },
          verdictBadge(verdict),
          partial && verdict ? h("span", { class: "verdict partial", dataset: { testid: "partial" },
            title: "not every run has finished: the verdict may change" }, "partial") : null)),
      h("div", { class: "row small" }, badge(sc.status), countsBar(sc.counts || {}),
        h("span", { class: "muted" }, `${sc.counts?.succeeded || 0}/${total(sc.counts)} runs done`)),
      rc ? [
        h("dl", { class: "facts", dataset: { testid: "claim-numbers" } },
          fact("Effect", h("span", { dataset: { testid: "claim-effect" } }, `${num(t.estimate ?? t.mean)}${ci(t)}`)),
          fact("Adjusted p", h("span", { dataset: { testid: "claim-p" } }, pval(rc.adjusted_p))),
          fact("n", h("span", { dataset: { testid: "claim-n" } }, String(t.n ?? "–"))),
          fact("Effect size", num(t.effect_size, 2)),
          fact("Raw p", pval(t.p_two_sided))),
        h("p", { class: "reason small", dataset: { testid: "claim-reason" } }, rc.reason || ""),
        rc.firm_up?.text ? h("p", { class: "firm-up small", dataset: { testid: "claim-firm-up" } },
          h("strong", {}, "To firm it up: "), rc.firm_up.text) : null,
        h("details", {}, h("summary", {}, "how it is measured"),
          h("dl", { class: "facts", style: { gridTemplateColumns: "1fr" } },
            fact("Measure", rc.measure || "–"), fact("Comparison", rc.comparison || "–"),
            fact("Rule", rc.rule || "–")))]
        : h("p", { class: "small muted", dataset: { testid: "claim-reason" } },
          reportError ? `No report yet: ${reportError}` : "No verdict yet: waiting for the first runs to finish."));
    clear(card.foot,
      h("a", { href: `#/experiments/${sc.experiment_id}`, dataset: { testid: "claim-experiment" } }, "Experiment →"),
      h("span", { class: "muted mono" }, sc.experiment_id.slice(0, 8)));
  }

  // ---------------------------------------------------------------- charts
  function chartSpec(card, sc, rc) {
    const d = rc?.details || {};
    for (const [key, label] of SWEEPS) {
      if (Array.isArray(d[key]) && d.mean_final_val_accuracy) {
        const curves = d.mean_final_val_accuracy;
        const roles = Object.keys(curves);
        return { kind: "sweep", xLabel: label, xTicks: d[key].map((v) => `${v}`),
          x: d[key].map((_, i) => i), yLabel: "mean final val_accuracy",
          series: roles.map((r, i) => ({ label: r, color: color(i), width: 2 })),
          ys: roles.map((r) => (curves[r] || []).map((v) => (v === undefined ? null : v))) };
      }
    }
    if (Array.isArray(d.mean_gap_per_epoch)) {
      const g = d.mean_gap_per_epoch;
      return { kind: "gap", yLabel: "|train − eval val_accuracy|", x: g.map((_, i) => i + 1),
        series: [{ label: "mean gap", color: color(0), width: 2 }, { label: "0.01", color: "#888", dash: [4, 4], width: 1 }],
        ys: [g, g.map(() => 0.01)] };
    }
    const s = card.summary;
    if (!s) return null;
    const variants = s.variants || Object.keys(s.per_variant || {});
    const metric = (v, m) => s.per_variant?.[v]?.metrics?.[m];
    const epochs = [...new Set(variants.flatMap((v) => metric(v, "val_accuracy")?.epochs || []))].sort((a, b) => a - b);
    if (!epochs.length) return null;
    const at = (m, key) => { const map = new Map((m?.epochs || []).map((e, i) => [e, m[key]?.[i]])); return epochs.map((e) => map.get(e) ?? null); };
    if (sc.claim === "regularization" && variants.every((v) => metric(v, "accuracy"))) {
      return { kind: "gap-curves", yLabel: "train − val accuracy", x: epochs,
        series: variants.map((v, i) => ({ label: v, color: color(i), width: 2 })),
        ys: variants.map((v) => {
          const a = at(metric(v, "accuracy"), "mean"), b = at(metric(v, "val_accuracy"), "mean");
          return a.map((x, i) => (x === null || b[i] === null ? null : x - b[i]));
        }) };
    }
    const series = [], ys = [];
    variants.forEach((v, vi) => {
      const m = metric(v, "val_accuracy"), base = series.length;
      series.push({ label: v, color: color(vi), width: 2 },
        { label: `${v} low`, color: color(vi), hidden: true },
        { label: `${v} high`, color: color(vi), hidden: true, band: [base + 1, base + 2] });
      // an accuracy's interval beyond [0, 1] (n = 2 gives wide ones) says nothing more
      const clip = (ys) => ys.map((y) => (y === null ? null : Math.min(1, Math.max(0, y))));
      ys.push(at(m, "mean"), clip(at(m, "ci_low")), clip(at(m, "ci_high")));
    });
    if (sc.claim === "faster_convergence" && d.threshold !== undefined && d.threshold !== null) {
      series.push({ label: "threshold", color: "#888", dash: [4, 4], width: 1 });
      ys.push(epochs.map(() => d.threshold));
    }
    return { kind: "curves", yLabel: "val_accuracy", x: epochs, series, ys };
  }

  function needsSummary(rc) {
    const d = rc?.details || {};
    return !SWEEPS.some(([k]) => Array.isArray(d[k])) && !Array.isArray(d.mean_gap_per_epoch);
  }

  async function fetchSummary(card, sc) {
    const sig = JSON.stringify([sc.status, sc.counts, sc.epochs_done]);
    if (card.summarySig === sig || card.loading) return;
    card.loading = true;
    try {
      const include = TERMINAL.has(sc.status) ? "succeeded" : "all";
      card.summary = await api(`/v1/experiments/${encodeURIComponent(sc.experiment_id)}/summary?include=${include}`);
      card.summarySig = sig;
    } catch { /* the next poll tries again */ } finally { card.loading = false; }
    if (!stopped) updateChart(card, sc, (report?.claims || []).find((c) => c.claim === sc.claim) || null);
  }

  function updateChart(card, sc, rc) {
    if (needsSummary(rc)) fetchSummary(card, sc);
    const spec = chartSpec(card, sc, rc);
    const sig = JSON.stringify(spec);
    if (sig === card.chartSig) return;
    card.chartSig = sig;
    card.chart?.destroy(); card.chart = null;
    if (!spec) {
      clear(card.chartEl, emptyChart(TERMINAL.has(sc.status) ? "Nothing to draw." : "No finished runs yet."));
      card.chartEl.dataset.points = "0";
      card.chartEl.dataset.kind = "none";
      return;
    }
    clear(card.chartEl);
    card.chart = new LineChart(card.chartEl, { series: spec.series, yLabel: spec.yLabel, height: 220,
      xLabel: spec.xLabel || "epoch", xTicks: spec.xTicks || null });
    card.chart.setData(spec.x, spec.ys);
    card.chartEl.dataset.kind = spec.kind;
  }

  // ---------------------------------------------------------------- polling
  async function refreshReport() {
    try {
      report = await api(`${path}/report`);
      reportError = null;
    } catch (err) {
      reportError = err.message;
    }
  }

  function renderNote() {
    const partial = report?.partial ?? !TERMINAL.has(study.status);
    note.textContent = report
      ? `${partial ? "Partial report: not every run has finished, so every verdict is provisional (and counts as inconclusive). " : ""}`
        + `Verdicts use the Holm-adjusted p-value at alpha ${report.alpha ?? study.spec?.alpha ?? 0.05} across the study's claims; effects are oriented so that positive is the claim's direction.`
      : reportError ? `No report yet: ${reportError}` : "";
  }

  async function tick() {
    try {
      const s = await api(path);
      if (stopped) return;
      study = s;
    } catch (err) {
      if (!study) {
        clear(root, h("div", { class: "card" }, h("h2", {}, "Study not found"), h("p", { class: "error" }, err.message),
          h("a", { href: "#/studies" }, "← all studies")));
        stop();
      }
      return;
    }
    const done = TERMINAL.has(study.status);
    // the report changes when a child finishes: fetch it again only then (and once at the end)
    const sig = JSON.stringify([study.status, study.claims.map((c) => [c.status, c.counts?.succeeded, c.counts?.failed, c.counts?.cancelled])]);
    if (sig !== reportSig) {
      await refreshReport();
      if (stopped) return;
      if (!reportError || done) reportSig = sig;
    }
    renderHead();
    renderNote();
    renderCards();
    root.dataset.status = study.status;
    setLive(!done);
    if (done && reportSig === sig) stop();
  }

  let busy = false;
  async function guarded() {
    if (busy || stopped) return;
    busy = true;
    try { await tick(); } catch (err) { toast(err.message, true); } finally { busy = false; }
  }
  function stop() { stopPoll?.(); stopPoll = null; setLive(false); }

  guarded();
  stopPoll = every(2000, guarded);

  return () => {
    stopped = true;
    stop();
    for (const card of cards.values()) card.chart?.destroy();
  };
}
