// Small DOM and formatting helpers shared by the views.

/** h("div", {class: "x", onclick: f, dataset: {testid: "y"}}, child, "text", [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function num(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(digits);
}

export function pval(p) {
  if (p === null || p === undefined) return "–";
  return p < 1e-4 ? p.toExponential(1) : p.toFixed(4);
}

export function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { testid: "status", status } }, status);
}

export function progress(done, total, status) {
  const pct = total ? Math.min(100, (100 * done) / total) : 0;
  return h("div", { class: `progress ${status || ""}`, title: `${done} of ${total} epochs` },
    h("span", { style: { width: `${pct}%` } }), h("em", {}, `${done} / ${total}`));
}

// tab10: distinguishable, and what matplotlib users expect
export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

export function color(i) { return PALETTE[i % PALETTE.length]; }

export function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

let toastTimer = 0;
export function toast(text, isError = false) {
  document.querySelector(".toast")?.remove();
  const el = h("div", { class: `toast${isError ? " err" : ""}`, dataset: { testid: "toast" } }, text);
  document.body.append(el);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.remove(), isError ? 8000 : 3500);
}

/** Run fn at most once per `ms`, trailing call included (for redraws on bursts of events). */
export function throttle(fn, ms) {
  let last = 0, timer = 0;
  const run = () => { last = Date.now(); timer = 0; fn(); };
  const wrapped = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(run, wait);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = 0; };
  return wrapped;
}

export function jobLabel(job) { return job.name || job.id.slice(0, 8); }

/** The green dot in the top bar: on while a view holds a live stream or poll. */
export function setLive(on) {
  document.getElementById("live")?.classList.toggle("on", on);
}

/** setInterval that skips ticks while the tab is hidden and stops on cleanup. */
export function every(ms, fn) {
  const id = setInterval(() => { if (!document.hidden) fn(); }, ms);
  return () => clearInterval(id);
}
