// Hash router: each view is mount(root, {id, query}) -> cleanup (stops its polls and streams).

import { forgetKey, apiKey } from "./api.js";
import { clear } from "./util.js";
import * as jobs from "./views/jobs.js";
import * as job from "./views/job.js";
import * as compare from "./views/compare.js";
import * as experiments from "./views/experiments.js";
import * as experiment from "./views/experiment.js";
import * as submit from "./views/submit.js";
import * as studies from "./views/studies.js";
import * as study from "./views/study.js";

const root = document.getElementById("app");
let cleanup = null;

function parse() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(qs) };
}

function pick({ parts }) {
  const [first, id] = parts;
  if (first === "jobs" && id) return ["jobs", job, id];
  if (first === "experiments" && id) return ["experiments", experiment, id];
  if (first === "experiments") return ["experiments", experiments, null];
  if (first === "studies" && id) return ["studies", study, id];
  if (first === "studies") return ["studies", studies, null];
  if (first === "compare") return ["compare", compare, null];
  if (first === "submit") return ["submit", submit, null];
  return ["jobs", jobs, null];
}

function route() {
  const where = parse();
  const [section, view, id] = pick(where);
  if (cleanup) cleanup.fn();
  for (const a of document.querySelectorAll("[data-route]")) {
    a.classList.toggle("active", a.dataset.route === section);
  }
  clear(root);
  window.scrollTo(0, 0);
  const fn = view.mount(root, { id, query: where.query }) || (() => {});
  cleanup = { fn };
}

document.getElementById("forget-key").hidden = !apiKey();
document.getElementById("forget-key").addEventListener("click", () => { forgetKey(); location.reload(); });
window.addEventListener("hashchange", route);
route();
