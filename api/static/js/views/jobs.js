// Jobs: newest first, filter by status, select rows to compare, cancel; polled every 2 s.

import { api, ApiError } from "../api.js";
import { age, badge, clear, every, h, jobLabel, num, progress, setLive, TERMINAL, toast } from "../util.js";

const STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"];
// remembered across visits to the page (not across reloads)
const state = { status: "all", children: false, selected: new Set() };

export function mount(root) {
  let rows = [], olderRows = [], nextCursor = null, lastText = "", loaded = false;
  const tbody = h("tbody", { dataset: { testid: "jobs-body" } });
  const empty = h("div", { class: "empty", hidden: true });
  const moreBtn = h("button", { hidden: true, onclick: loadOlder, dataset: { testid: "jobs-more" } }, "Load older jobs");
  const compareBtn = h("button", { onclick: openCompare, dataset: { testid: "compare-selected" } });
  const seg = h("div", { class: "seg", dataset: { testid: "status-filter" } },
    STATUSES.map((s) => h("button", {
      class: s === state.status ? "on" : "", dataset: { status: s },
      onclick: () => { state.status = s; segUpdate(); olderRows = []; lastText = ""; refresh(); },
    }, s)));
  const segUpdate = () => seg.querySelectorAll("button").forEach((b) =>
    b.classList.toggle("on", b.dataset.status === state.status));
  const childNote = h("span");
  const childBox = h("input", { type: "checkbox", checked: state.children,
    onchange: (e) => { state.children = e.target.checked; render(); } });

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), seg,
      h("label", { class: "inline small muted" }, childBox, "experiment children", childNote),
      h("span", { class: "spacer" }), compareBtn,
      h("button", { class: "primary", onclick: () => { location.hash = "#/submit"; } }, "New job")),
    h("div", { class: "card", style: { padding: 0 } },
      h("div", { class: "table-wrap" },
        h("table", { dataset: { testid: "jobs-table" } },
          h("thead", {}, h("tr", {},
            h("th", { style: { width: "28px" } }), h("th", {}, "Name"), h("th", {}, "Status"),
            h("th", {}, "Progress"), h("th", { class: "num" }, "Best val acc"),
            h("th", { class: "num" }, "Final val acc"), h("th", { class: "num" }, "Final loss"),
            h("th", {}, "Device"), h("th", {}, "Created"), h("th", {}))),
          tbody)),
      empty),
    h("div", { class: "row" }, moreBtn));

  function all() { return [...rows, ...olderRows.filter((o) => !rows.some((r) => r.id === o.id))]; }
  function visible() { return state.children ? all() : all().filter((j) => !j.experiment_id); }

  function render() {
    const list = visible();
    clear(tbody, list.map(row));
    empty.hidden = list.length > 0;
    empty.textContent = !loaded ? "Loading…" : state.status === "all"
      ? "No jobs yet: submit one from “New job”." : `No ${state.status} jobs.`;
    const hidden = all().length - list.length;
    childNote.textContent = hidden ? `(${hidden} hidden)` : "";
    moreBtn.hidden = !nextCursor;
    compareBtn.textContent = `Compare selected (${state.selected.size})`;
    compareBtn.disabled = state.selected.size < 1;
  }

  function row(j) {
    const best = j.best_metrics?.val_accuracy, fin = j.final_metrics?.val_accuracy;
    const cancellable = !TERMINAL.has(j.status) && !j.cancel_requested;
    return h("tr", { dataset: { testid: "job-row", jobId: j.id } },
      h("td", {}, h("input", { type: "checkbox", checked: state.selected.has(j.id),
        title: "select for Compare",
        onchange: (e) => { e.target.checked ? state.selected.add(j.id) : state.selected.delete(j.id); render(); } })),
      h("td", { class: "name" },
        h("a", { href: `#/jobs/${j.id}`, dataset: { testid: "job-link" }, title: j.id }, jobLabel(j)),
        j.experiment_id ? h("div", { class: "small muted" },
          h("a", { href: `#/experiments/${j.experiment_id}` }, "experiment"), ` · ${j.variant} · seed ${j.seed}`) : null),
      h("td", {}, badge(j.status), j.cancel_requested && !TERMINAL.has(j.status) ? h("span", { class: "small muted" }, " cancelling") : null),
      h("td", {}, progress(j.epoch, j.epochs, j.status)),
      h("td", { class: "num" }, num(best)),
      h("td", { class: "num" }, num(fin)),
      h("td", { class: "num" }, num(j.final_metrics?.loss)),
      h("td", {}, j.device || "–"),
      h("td", { title: j.created_at }, age(j.created_at)),
      h("td", {}, cancellable ? h("button", { class: "small danger", dataset: { testid: "cancel" },
        onclick: () => cancel(j) }, "Cancel") : null));
  }

  async function cancel(j) {
    try {
      await api(`/v1/jobs/${j.id}/cancel`, { method: "POST" });
      toast(`Cancelling ${jobLabel(j)}`);
      lastText = "";
      refresh();
    } catch (err) { toast(err.message, true); }
  }

  function query(cursor) {
    const q = new URLSearchParams({ limit: "100" });
    if (state.status !== "all") q.set("status", state.status);
    if (cursor) q.set("cursor", cursor);
    return `/v1/jobs?${q}`;
  }

  async function refresh() {
    try {
      const page = await api(query());
      // re-render only on change (keeps hover and text selection), and twice a minute for ages
      const text = JSON.stringify([Math.floor(Date.now() / 30000),
        page.items.map((j) => [j.id, j.status, j.epoch, j.cancel_requested, j.final_metrics])]);
      if (nextCursor === null || !olderRows.length) nextCursor = page.next_cursor;
      rows = page.items;
      loaded = true;
      setLive(true);
      if (text !== lastText) { lastText = text; render(); }
    } catch (err) {
      setLive(false);
      if (!(err instanceof ApiError)) return;  // offline for a moment: the next poll retries
      clear(empty, err.message); empty.hidden = false;
    }
  }

  async function loadOlder() {
    try {
      const page = await api(query(nextCursor));
      olderRows.push(...page.items);
      nextCursor = page.next_cursor;
      render();
    } catch (err) { toast(err.message, true); }
  }

  function openCompare() {
    location.hash = `#/compare?jobs=${[...state.selected].join(",")}&metric=val_accuracy`;
  }

  render();
  refresh();
  const stop = every(2000, refresh);
  return () => { stop(); setLive(false); };
}
