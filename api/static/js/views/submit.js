// Submit: a job from the `hidden` shorthand, with the JSON it will send shown live beside it.

import { api } from "../api.js";
import { clear, h } from "../util.js";

const ACTIVATIONS = ["relu", "leaky_relu", "gelu", "tanh", "sigmoid", "linear"];
const PLACEMENTS = [["none", "none"], ["before_activation", "before activation (Linear → BN → act)"],
  ["after_activation", "after activation (Dense(act) → BN)"]];
// the form's last values, kept while the page is open: "submit another like this" is common
const saved = {
  name: "", source: "generator", generator: "concentric_circles", params: {}, datasetId: "",
  hidden: "8, 4", activation: "relu", batchnorm: "after_activation", epochs: 50, batch_size: 32,
  optimizer: "adam", lr: 0.01, validation_split: 0.2, split: "random", seed: 0, device: "auto",
};

export function mount(root) {
  const v = saved;
  let generators = [], uploaded = [], stopped = false;
  const preview = h("pre", { class: "json", dataset: { testid: "spec-preview" } });
  const curl = h("pre", { class: "json small" });
  const message = h("div");
  const submitBtn = h("button", { class: "primary", type: "submit", dataset: { testid: "submit-job" } }, "Submit job");

  const field = (label, input, hint) => h("label", { class: "field" }, h("span", {}, label), input,
    hint ? h("small", { class: "muted" }, hint) : null);
  const input = (key, attrs = {}) => h("input", { value: String(v[key]), dataset: { testid: `f-${key}` },
    oninput: (e) => { v[key] = attrs.type === "number" ? e.target.valueAsNumber : e.target.value; update(); }, ...attrs });
  const select = (key, options) => h("select", { dataset: { testid: `f-${key}` },
    onchange: (e) => { v[key] = e.target.value; update(); } },
  options.map((o) => { const [val, text] = Array.isArray(o) ? o : [o, o]; return h("option", { value: val, selected: val === v[key] }, text); }));

  const hiddenInput = input("hidden", { type: "text", placeholder: "e.g. 8, 4" });
  const genSelect = h("select", { dataset: { testid: "f-generator" }, onchange: (e) => { v.generator = e.target.value; v.params = {}; renderParams(); update(); } });
  const paramsEl = h("div", { class: "fields", style: { marginTop: "10px" } });
  const datasetSelect = h("select", { dataset: { testid: "f-dataset" }, onchange: (e) => { v.datasetId = e.target.value; update(); } });
  const fileInput = h("input", { type: "file", accept: ".csv,text/csv", dataset: { testid: "f-file" }, onchange: upload });
  const uploadNote = h("div", { class: "small muted" });
  const sourceTabs = h("div", { class: "seg", dataset: { testid: "f-source" } });
  const sourceBody = h("div", { style: { marginTop: "10px" } });

  const form = h("form", { dataset: { testid: "submit-form" }, onsubmit: submit, novalidate: true },
    h("fieldset", {}, h("legend", {}, "Job"),
      h("div", { class: "fields" }, field("Name", input("name", { type: "text", placeholder: "optional" })),
        field("Device", select("device", ["auto", "cpu", "cuda"])))),
    h("fieldset", {}, h("legend", {}, "Dataset"), sourceTabs, sourceBody),
    h("fieldset", {}, h("legend", {}, "Network"),
      h("div", { class: "fields" },
        field("Hidden layer sizes", hiddenInput, "comma-separated units"),
        field("Activation", select("activation", ACTIVATIONS)),
        field("BatchNorm", select("batchnorm", PLACEMENTS)))),
    h("fieldset", {}, h("legend", {}, "Training"),
      h("div", { class: "fields" },
        field("Epochs", input("epochs", { type: "number", min: 1, step: 1 })),
        field("Batch size", input("batch_size", { type: "number", min: 1, step: 1 })),
        field("Optimizer", select("optimizer", ["adam", "adamw", "sgd", "rmsprop"])),
        field("Learning rate", input("lr", { type: "number", min: 0, step: "any" })),
        field("Validation split", input("validation_split", { type: "number", min: 0, max: 0.99, step: 0.05 })),
        field("Split", select("split", [["tail", "tail (Keras validation_split)"], ["random", "random"], ["stratified", "stratified"]])),
        field("Seed", input("seed", { type: "number", min: 0, step: 1 })))),
    message,
    h("div", { class: "row" }, submitBtn, h("span", { class: "muted small" }, "The server checks the spec and answers with every problem at once.")));

  root.append(h("div", { class: "page-head" }, h("h1", {}, "New job")),
    h("div", { class: "form-grid" },
      h("div", { class: "card" }, form),
      h("div", { class: "sticky" }, h("div", { class: "card" },
        h("h2", {}, "POST /v1/jobs", h("span", { class: "tools muted" }, "the body this form sends")), preview,
        h("details", { style: { marginTop: "10px" } }, h("summary", {}, "as curl"), curl)))));

  function renderSource() {
    clear(sourceTabs, [["generator", "Generator"], ["upload", "Upload CSV"], ["existing", "Uploaded dataset"]].map(([k, label]) =>
      h("button", { type: "button", class: v.source === k ? "on" : "", dataset: { source: k },
        onclick: () => { v.source = k; renderSource(); update(); } }, label)));
    if (v.source === "generator") clear(sourceBody, h("div", { class: "fields" }, field("Generator", genSelect)), paramsEl);
    else if (v.source === "upload") clear(sourceBody, fileInput, uploadNote);
    else clear(sourceBody, h("div", { class: "fields" }, field("Dataset", datasetSelect)));
  }

  function renderParams() {
    const g = generators.find((x) => x.name === v.generator);
    clear(genSelect, generators.map((x) => h("option", { value: x.name, selected: x.name === v.generator },
      `${x.name} (${x.n_features} features, ${x.n_classes} classes)`)));
    if (!g) return;
    clear(paramsEl, g.parameters.map((p) => {
      const numeric = p.type === "integer" || p.type === "number";
      const value = v.params[p.name] ?? p.default;
      const bounds = [p.minimum ?? p.exclusive_minimum, p.maximum ?? p.exclusive_maximum];
      return field(p.name, h("input", {
        type: numeric ? "number" : "text", value: value ?? "", step: p.type === "integer" ? 1 : "any",
        dataset: { testid: `f-param-${p.name}` },
        oninput: (e) => { v.params[p.name] = numeric ? e.target.valueAsNumber : e.target.value; update(); } }),
      p.description || (bounds.some((b) => b !== null && b !== undefined) ? `${bounds[0] ?? "…"} – ${bounds[1] ?? "…"}` : null));
    }));
  }

  function renderDatasets() {
    clear(datasetSelect, uploaded.length ? uploaded.map((d) => h("option", { value: d.id, selected: d.id === v.datasetId },
      `${d.name || d.filename || d.id.slice(0, 8)} · ${d.n_rows}×${d.n_features}`)) : h("option", { value: "" }, "none uploaded yet"));
    if (!v.datasetId && uploaded.length) v.datasetId = uploaded[0].id;
  }

  async function upload() {
    const file = fileInput.files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file);
    uploadNote.textContent = "uploading…";
    try {
      const d = await api("/v1/datasets", { method: "POST", body });
      uploaded.unshift(d);
      v.datasetId = d.id;
      renderDatasets();
      clear(uploadNote, h("div", { class: "msg ok" }, `${d.filename || d.id}: ${d.n_rows} rows, features ${d.columns.filter((c) => c !== d.label_column).join(", ")}, label “${d.label_column}” (${d.classes.join(", ")})`));
      update();
    } catch (err) { clear(uploadNote, h("div", { class: "msg err" }, err.message)); }
  }

  function parseHidden() {
    const parts = String(v.hidden).split(/[,\s]+/).filter(Boolean);
    const units = parts.map(Number);
    return parts.length && units.every((u) => Number.isInteger(u) && u > 0) ? units : null;
  }

  function build() {
    const g = generators.find((x) => x.name === v.generator);
    let dataset;
    if (v.source === "generator") {
      dataset = { name: v.generator };
      for (const p of g?.parameters || []) {
        const val = v.params[p.name] ?? p.default;
        if (val !== null && val !== undefined && !Number.isNaN(val)) dataset[p.name] = val;
      }
    } else dataset = { id: v.datasetId || "<upload a CSV first>" };
    const spec = {
      dataset,
      network: { hidden: parseHidden() ?? [], activation: v.activation, batchnorm: v.batchnorm },
      training: { epochs: v.epochs, batch_size: v.batch_size, optimizer: { name: v.optimizer, lr: v.lr },
        validation_split: v.validation_split, split: v.split, seed: v.seed },
      device: v.device,
    };
    return v.name.trim() ? { name: v.name.trim(), ...spec } : spec;
  }

  function update() {
    const spec = build();
    const text = JSON.stringify(spec, null, 2);
    preview.textContent = text;
    curl.textContent = `curl -s ${location.origin}/v1/jobs -H 'content-type: application/json' -d '${JSON.stringify(spec)}'`;
    const hiddenOk = parseHidden() !== null;
    hiddenInput.classList.toggle("invalid", !hiddenOk);
    submitBtn.disabled = !hiddenOk || (v.source !== "generator" && !v.datasetId);
  }

  async function submit(e) {
    e.preventDefault();
    submitBtn.disabled = true;
    clear(message);
    try {
      const job = await api("/v1/jobs", { method: "POST", body: build(),
        headers: { "Idempotency-Key": crypto.randomUUID() } });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      const detail = err.body?.detail;
      clear(message, h("div", { class: "msg err", dataset: { testid: "submit-error" } },
        Array.isArray(detail) ? h("ul", { style: { margin: 0, paddingLeft: "18px" } }, detail.map((d) => h("li", {}, d))) : err.message));
      submitBtn.disabled = false;
    }
  }

  renderSource();
  update();
  Promise.all([api("/v1/datasets/builtin"), api("/v1/datasets?limit=100").catch(() => ({ items: [] }))])
    .then(([gens, ds]) => {
      if (stopped) return;
      generators = gens;
      uploaded = ds.items || [];
      renderParams();
      renderDatasets();
      update();
    })
    .catch((err) => clear(message, h("div", { class: "msg err" }, err.message)));
  return () => { stopped = true; };
}
