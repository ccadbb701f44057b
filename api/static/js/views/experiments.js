// Experiments: newest first, with each one's children per status; polled every 3 s.

import { api } from "../api.js";
import { age, badge, clear, every, h, setLive } from "../util.js";

const ORDER = ["succeeded", "running", "queued", "failed", "cancelled"];

export function countsBar(counts) {
  const total = ORDER.reduce((s, k) => s + (counts[k] || 0), 0) || 1;
  return h("div", { class: "progress", style: { display: "flex", width: "160px" },
    title: ORDER.filter((k) => counts[k]).map((k) => `${counts[k]} ${k}`).join(", ") },
  ORDER.filter((k) => counts[k]).map((k) => h("i", { style: {
    width: `${(100 * counts[k]) / total}%`, background: `var(--${k})`, opacity: 0.55 } })));
}

export function mount(root) {
  let lastText = "";
  const tbody = h("tbody", { dataset: { testid: "experiments-body" } });
  const empty = h("div", { class: "empty", hidden: true });
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Experiments"), h("span", { class: "spacer" }),
      h("span", { class: "muted small" }, "submit with POST /v1/experiments or `bnlab experiment submit`")),
    h("div", { class: "card", style: { padding: 0 } },
      h("div", { class: "table-wrap" }, h("table", { dataset: { testid: "experiments-table" } },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Status"), h("th", {}, "Children"),
          h("th", {}, "Variants"), h("th", { class: "num" }, "Seeds"), h("th", { class: "num" }, "Stacks"),
          h("th", {}, "Created"))),
        tbody)), empty));

  async function refresh() {
    try {
      const page = await api("/v1/experiments?limit=100");
      setLive(true);
      const text = JSON.stringify([Math.floor(Date.now() / 30000), page.items.map((e) => [e.id, e.status, e.counts])]);
      if (text === lastText) return;
      lastText = text;
      clear(tbody, page.items.map((e) => h("tr", { dataset: { testid: "experiment-row" } },
        h("td", { class: "name" }, h("a", { href: `#/experiments/${e.id}`, title: e.id }, e.name || e.id.slice(0, 8))),
        h("td", {}, badge(e.status)),
        h("td", {}, h("div", { class: "row" }, countsBar(e.counts),
          h("span", { class: "small muted" }, `${e.counts.succeeded || 0}/${e.children.length} done`))),
        h("td", { class: "name" }, e.variants.join(", ")),
        h("td", { class: "num" }, e.seeds.length), h("td", { class: "num" }, e.stacks),
        h("td", { title: e.created_at }, age(e.created_at)))));
      empty.hidden = page.items.length > 0;
      empty.textContent = "No experiments yet.";
    } catch (err) {
      setLive(false);
      clear(empty, err.message); empty.hidden = false;
    }
  }
  refresh();
  const stop = every(3000, refresh);
  return () => { stop(); setLive(false); };
}
