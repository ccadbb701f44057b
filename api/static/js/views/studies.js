// Studies: newest first, one progress bar per claim (its experiment's children per status);
// polled every 2 s. A small form starts a new one (POST /v1/studies).

import { api } from "../api.js";
import { age, badge, clear, every, h, setLive, toast } from "../util.js";
import { countsBar } from "./experiments.js";

export const CLAIMS = [
  ["faster_convergence", "BatchNorm accelerates training"],
  ["higher_learning_rates", "BatchNorm allows higher learning rates"],
  ["init_insensitivity", "BatchNorm reduces sensitivity to initialisation"],
  ["regularization", "BatchNorm acts as a regulariser"],
  ["batch_size", "BatchNorm works best with batches of 16-32 or more"],
  ["placement", "BatchNorm works best placed before the activation"],
  ["train_vs_inference", "BatchNorm behaves differently in training and inference"],
];

function total(counts) { return Object.values(counts || {}).reduce((s, n) => s + (n || 0), 0); }

/** One row per claim: name, its children per status as a bar, done/total. */
export function claimBars(claims) {
  return h("div", { class: "claim-bars", dataset: { testid: "claim-bars" } },
    claims.map((c) => [
      h("span", { class: "name", title: c.text }, c.claim),
      h("span", { dataset: { testid: "claim-progress", claim: c.claim } }, countsBar(c.counts || {})),
      h("span", { class: "muted" }, `${c.counts?.succeeded || 0}/${total(c.counts)}`),
    ]));
}

function newStudyForm(onCreated) {
  const msg = h("div", { class: "msg err", hidden: true, dataset: { testid: "study-form-error" } });
  const name = h("input", { type: "text", placeholder: "optional", dataset: { testid: "sf-name" } });
  const seeds = h("input", { type: "number", min: 2, max: 1000, value: 20, dataset: { testid: "sf-seeds" } });
  const checks = CLAIMS.map(([claim, text]) => h("input", { type: "checkbox", checked: true, value: claim,
    dataset: { testid: `sf-claim-${claim}` } }));
  const base = h("textarea", { placeholder: "base: a partial job spec as JSON (empty: the server's default, the notebook's BN network on concertriccir2 for 200 epochs)",
    dataset: { testid: "sf-base" } });
  const button = h("button", { type: "submit", class: "primary", dataset: { testid: "sf-submit" } }, "Start study");

  async function submit(e) {
    e.preventDefault();
    msg.hidden = true;
    const body = { preset: "bn-claims", seeds: Number(seeds.value) };
    if (name.value.trim()) body.name = name.value.trim();
    const picked = checks.filter((c) => c.checked).map((c) => c.value);
    if (!picked.length) { clear(msg, "Pick at least one claim."); msg.hidden = false; return; }
    if (picked.length < CLAIMS.length) body.claims = picked;
    if (base.value.trim()) {
      try { body.base = JSON.parse(base.value); }
      catch (err) { clear(msg, `base is not JSON: ${err.message}`); msg.hidden = false; return; }
    }
    button.disabled = true;
    try {
      const study = await api("/v1/studies", { method: "POST", body });
      toast(`Study started: ${study.cost?.children ?? "?"} runs`);
      onCreated(study);
    } catch (err) {
      clear(msg, err.message); msg.hidden = false;
    } finally { button.disabled = false; }
  }

  return h("details", { class: "card", dataset: { testid: "study-form-wrap" } },
    h("summary", {}, "New study"),
    h("form", { onsubmit: submit, dataset: { testid: "study-form" }, style: { marginTop: "10px" } },
      h("p", { class: "small muted" }, "Each claim is one experiment: the base network with BatchNorm against the same network without it (or BN before against after the activation), paired by seed."),
      h("div", { class: "fields" },
        h("label", { class: "field" }, h("span", {}, "Name"), name),
        h("label", { class: "field" }, h("span", {}, "Seeds per variant"), seeds)),
      h("fieldset", { style: { marginTop: "10px" } }, h("legend", {}, "Claims"),
        h("div", { class: "checks" }, checks.map((c, i) => h("label", { title: CLAIMS[i][1] }, c, CLAIMS[i][0])))),
      base, msg,
      h("div", { class: "row end", style: { marginTop: "8px" } }, button)));
}

export function mount(root) {
  let lastText = "";
  const tbody = h("tbody", { dataset: { testid: "studies-body" } });
  const empty = h("div", { class: "empty", hidden: true });
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Studies"), h("span", { class: "spacer" }),
      h("span", { class: "muted small" }, "claims about BatchNorm, each tested as an experiment · POST /v1/studies or `bnlab study`")),
    newStudyForm((s) => { location.hash = `#/studies/${s.id}`; }),
    h("div", { class: "card", style: { padding: 0 } },
      h("div", { class: "table-wrap" }, h("table", { dataset: { testid: "studies-table" } },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Status"), h("th", {}, "Claims"),
          h("th", { class: "num" }, "Runs"), h("th", {}, "Created"))),
        tbody)), empty));

  async function refresh() {
    try {
      const page = await api("/v1/studies?limit=100");
      setLive(true);
      const items = page.items || [];
      const text = JSON.stringify([Math.floor(Date.now() / 30000),
        items.map((s) => [s.id, s.status, s.claims.map((c) => c.counts)])]);
      if (text === lastText) return;
      lastText = text;
      clear(tbody, items.map((s) => h("tr", { dataset: { testid: "study-row", studyId: s.id } },
        h("td", { class: "name" }, h("a", { href: `#/studies/${s.id}`, title: s.id }, s.name || s.id.slice(0, 8))),
        h("td", {}, badge(s.status)),
        h("td", {}, claimBars(s.claims)),
        h("td", { class: "num" }, s.cost?.children ?? s.claims.reduce((n, c) => n + total(c.counts), 0)),
        h("td", { title: s.created_at }, age(s.created_at)))));
      empty.hidden = items.length > 0;
      empty.textContent = "No studies yet.";
    } catch (err) {
      setLive(false);
      clear(empty, err.message); empty.hidden = false;
    }
  }
  refresh();
  const stop = every(2000, refresh);
  return () => { stop(); setLive(false); };
}
