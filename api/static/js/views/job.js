// One job: live curves from its event stream, decision boundary (2-D data) or validation
// predictions (confusion matrix; image tiles for image datasets), BN statistics (per channel
// beyond 2-D data), model summary, predictions and checkpoint downloads.

import { api, apiKey, ApiError, download, getFresh } from "../api.js";
import { boundaryLegend, drawBoundary } from "../boundary.js";
import { emptyChart, LineChart } from "../charts.js";
import { openStream } from "../sse.js";
import { classScores, confusionTable, imageGrid } from "../validation.js";
import { age, badge, clear, color, duration, every, h, jobLabel, num, progress, setLive, TERMINAL, throttle, toast } from "../util.js";

const SERIES = ["loss", "accuracy", "val_loss", "val_accuracy", "lr"];

export function mount(root, { id }) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const hist = { epoch: [], ...Object.fromEntries(SERIES.map((k) => [k, []])) };
  const charts = [];
  const cleanups = [];
  let job = null, stream = null, inputShape = undefined, stopped = false;
  let boundaryWhich = "last", boundaryBusy = false, bnCharts = [], bnKey = "";
  let valWhich = "last", valOnly = "all", valBusy = false, valShown = "";
  const VAL_IMAGES = 64;

  // ------------------------------------------------------------------ layout
  const head = h("div");
  const facts = h("div", { class: "card" });
  const lossEl = h("div", { dataset: { testid: "chart-loss" } });
  const accEl = h("div", { dataset: { testid: "chart-accuracy" } });
  const canvas = h("canvas", { dataset: { testid: "boundary-canvas", draws: "0" } });
  const boundaryNote = h("span", { class: "muted small", dataset: { testid: "boundary-note" } });
  const boundarySide = h("div");
  const boundaryBody = h("div", { class: "boundary" }, h("div", {}, canvas), boundarySide);
  const boundaryCard = h("div", { class: "card", dataset: { testid: "boundary-card" } },
    h("h2", {}, "Decision boundary", h("span", { class: "tools" }, boundaryNote, seg(["best", "last"], boundaryWhich, (v) => { boundaryWhich = v; refreshBoundary(); }))),
    boundaryBody);
  // beyond 2-D data: the validation rows' confusion matrix in the boundary's place
  const valNote = h("span", { class: "muted small", dataset: { testid: "validation-note" } });
  const valBody = h("div", {}, h("p", { class: "muted" }, "Computed after the first epoch."));
  const valCard = h("div", { class: "card", hidden: true, dataset: { testid: "validation-card" } },
    h("h2", {}, "Validation", h("span", { class: "tools" }, valNote,
      seg(["best", "last"], valWhich, (v) => { valWhich = v; refreshValidation(); }, "validation-checkpoint"))),
    valBody);
  const imagesNote = h("span", { class: "muted small", dataset: { testid: "images-note" } });
  const imagesBody = h("div");
  const imagesCard = h("div", { class: "card", hidden: true, dataset: { testid: "images-card" } },
    h("h2", {}, "Validation images", h("span", { class: "tools" }, imagesNote,
      seg(["all", "mistakes"], valOnly, (v) => { valOnly = v; refreshValidation(); }, "images-choice"))),
    imagesBody);
  const modelCard = h("div", { class: "card", dataset: { testid: "model-card" } }, h("h2", {}, "Model"), h("p", { class: "muted" }, "Loading…"));
  const bnBody = h("div");
  const bnHint = h("span", { class: "tools muted" }, "mean across channels, band = min…max");
  const bnCard = h("div", { class: "card", hidden: true, dataset: { testid: "bn-card" } },
    h("h2", {}, "BatchNorm statistics", bnHint), bnBody);
  const ckptCard = h("div", { class: "card", dataset: { testid: "checkpoints-card" } }, h("h2", {}, "Checkpoints"));
  const predictCard = h("div", { class: "card", dataset: { testid: "predict-card" } });
  const specEl = h("pre", { class: "json" });

  root.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", h("span", { class: "mono" }, id.slice(0, 12))),
    head, facts,
    h("div", { class: "grid2", style: { marginBottom: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Loss"), lossEl),
      h("div", { class: "card" }, h("h2", {}, "Accuracy"), accEl)),
    h("div", { class: "grid2", style: { marginBottom: "16px" } }, boundaryCard, valCard, modelCard),
    imagesCard,
    bnCard,
    h("div", { class: "grid2", style: { marginBottom: "16px" } }, predictCard, ckptCard),
    h("details", { class: "card" }, h("summary", {}, "Job spec (JSON)"), specEl));

  function seg(options, current, onPick, testid = "checkpoint-choice") {
    const el = h("span", { class: "seg", dataset: { testid } }, options.map((o) =>
      h("button", { class: o === current ? "on" : "", dataset: { value: o }, onclick: () => {
        el.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.value === o));
        onPick(o);
      } }, o)));
    return el;
  }

  // ------------------------------------------------------------------ header and facts
  function renderHead() {
    const running = !TERMINAL.has(job.status);
    clear(head, h("div", { class: "page-head" },
      h("h1", { dataset: { testid: "job-name" } }, jobLabel(job)), badge(job.status),
      progress(job.epoch, job.epochs, job.status),
      job.experiment_id ? h("a", { href: `#/experiments/${job.experiment_id}` }, `experiment · ${job.variant} · seed ${job.seed}`) : null,
      h("span", { class: "spacer" }),
      h("button", { onclick: () => { location.hash = `#/compare?jobs=${job.id}&metric=val_accuracy`; } }, "Compare…"),
      running && !job.cancel_requested ? h("button", { class: "danger", dataset: { testid: "cancel" }, onclick: cancel }, "Cancel") : null,
      job.cancel_requested && running ? h("span", { class: "muted" }, "cancelling…") : null));
    const spec = job.spec, net = spec.network, tr = spec.training;
    const best = job.best_metrics || {};
    clear(facts,
      h("dl", { class: "facts" },
        fact("Dataset", datasetText(spec.dataset)),
        fact("Network", networkText(net)),
        fact("Optimizer", `${tr.optimizer.name} lr ${tr.optimizer.lr} · batch ${tr.batch_size}`),
        fact("Split", `${tr.split} ${tr.validation_split} · seed ${tr.seed}`),
        fact("Device", [job.device, job.worker].filter(Boolean).join(" · ") || "–"),
        fact("Elapsed", duration(elapsed(job))),
        fact("Best val acc", job.best_epoch ? `${num(best.val_accuracy)} (epoch ${job.best_epoch})` : "–"),
        fact("Final val acc", num(job.final_metrics?.val_accuracy)),
        fact("Created", age(job.created_at)),
        fact("Id", h("span", { class: "mono" }, job.id))),
      job.error ? h("div", { class: "msg err", dataset: { testid: "job-error" } }, job.error) : null,
      job.warnings?.length ? h("ul", { class: "small muted", style: { margin: "8px 0 0" } }, job.warnings.map((w) => h("li", {}, w))) : null);
    specEl.textContent = JSON.stringify(job.spec, null, 2);
  }

  function elapsed(j) {
    if (!j.started_at) return null;
    if (j.finished_at || TERMINAL.has(j.status)) return j.elapsed_s;
    return (Date.now() - new Date(j.started_at).getTime()) / 1000;
  }

  function fact(k, v) { return h("div", {}, h("dt", {}, k), h("dd", { title: typeof v === "string" ? v : "" }, v)); }

  function datasetText(d) {
    const shape = inputShape && inputShape.length > 1 ? ` · ${inputShape.join("×")} images` : "";
    if (d.id) return `uploaded ${d.id.slice(0, 8)}${shape}`;
    const params = Object.entries(d).filter(([k, v]) => k !== "name" && k !== "seed" && v !== null && v !== undefined)
      .map(([k, v]) => k === "n_samples" ? `${v}` : `${k.replace("n_", "")} ${v}`);
    return `${d.name}${params.length ? ` (${params.join(", ")})` : ""}${shape}`;
  }

  function networkText(n) {
    if (n.hidden || n.conv) {
      const conv = n.conv?.length ? `conv [${n.conv.join(", ")}]${n.pool && n.pool !== "none" ? ` ${n.pool} pool` : ""} → ` : "";
      return `${conv}hidden [${(n.hidden || []).join(", ")}] ${n.activation}, ${n.norm && n.norm !== "batchnorm" ? n.norm : "BN"} ${n.batchnorm}`;
    }
    return n.layers.map((l) => l.type === "dense" ? `${l.units}${l.activation ? " " + l.activation : ""}`
      : l.type === "conv2d" ? `conv ${l.filters}` : l.type).join(" → ");
  }

  async function cancel() {
    try {
      job = await api(`${path}/cancel`, { method: "POST" });
      renderHead();
      toast("Cancel requested: the job stops at the end of its epoch");
    } catch (err) { toast(err.message, true); }
  }

  // ------------------------------------------------------------------ curves
  function buildCharts() {
    const loss = new LineChart(lossEl, { yLabel: "loss", sync: `job-${id}`, series: [
      { label: "train loss", color: color(0) }, { label: "val loss", color: color(1) }] });
    const acc = new LineChart(accEl, { yLabel: "accuracy", sync: `job-${id}`, series: [
      { label: "train accuracy", color: color(0) }, { label: "val accuracy", color: color(1) }] });
    charts.push(loss, acc);
    return { loss, acc };
  }
  const { loss: lossChart, acc: accChart } = buildCharts();

  const redrawCurves = throttle(() => {
    lossChart.setData(hist.epoch, [hist.loss, hist.val_loss]);
    accChart.setData(hist.epoch, [hist.accuracy, hist.val_accuracy]);
  }, 250);

  function addEpoch(e) {
    const last = hist.epoch[hist.epoch.length - 1] || 0;
    if (e.epoch <= last) return;  // the stream resumes after what /history gave: no repeats
    hist.epoch.push(e.epoch);
    for (const k of SERIES) hist[k].push(e[k] ?? null);
    redrawCurves();
  }

  // ------------------------------------------------------------------ decision boundary
  /** One row's shape: [F] for a table, [C, H, W] for images. */
  async function datasetShape(d) {
    if (d.id) {
      const ds = await api(`/v1/datasets/${d.id}`);
      return ds.input_shape?.length ? ds.input_shape : [ds.n_features];
    }
    if (d.name === "blobs") return [d.n_features ?? 2];
    if (d.name === "digits") return d.layout === "flat" ? [64] : [1, 8, 8];
    try {
      const g = (await api("/v1/datasets/builtin")).find((x) => x.name === d.name);
      if (g?.input_shape?.length) return g.input_shape;
      if (typeof g?.n_features === "number") return [g.n_features];
    } catch { /* an older server: its generators are 2-D */ }
    return [2];
  }
  // null: unknown (the server decides what it can draw); undefined: not asked yet
  const isImage = () => (inputShape?.length || 0) > 1;
  const twoD = () => inputShape?.length === 1 && inputShape[0] === 2;

  let boundaryAgain = false;
  async function boundaryNow() {
    if (!twoD() || !job || job.epoch < 1 || stopped) return;
    if (boundaryBusy) { boundaryAgain = true; return; }  // redraw once the current one lands
    boundaryBusy = true;
    try {
      const data = await api(`${path}/boundary?checkpoint=${boundaryWhich}&resolution=80`);
      if (stopped) return;
      drawBoundary(canvas, data);
      canvas.dataset.draws = String(Number(canvas.dataset.draws) + 1);
      canvas.dataset.epoch = String(data.checkpoint.epoch);
      boundaryNote.textContent = `${data.checkpoint.kind} checkpoint, epoch ${data.checkpoint.epoch}`;
      if (boundarySide.dataset.classes !== data.classes.join()) {
        clear(boundarySide, boundaryLegend(data));
        boundarySide.dataset.classes = data.classes.join();
      }
      predictDefaults(data);
    } catch (err) {
      boundaryNote.textContent = err instanceof ApiError ? err.message : "boundary unavailable";
    } finally {
      boundaryBusy = false;
      if (boundaryAgain) { boundaryAgain = false; refreshBoundary(); }
    }
  }
  const refreshBoundary = throttle(boundaryNow, 1500);

  function setupBoundary() {
    if (twoD()) {
      // no request (and no throttle slot spent) before a checkpoint can exist
      if (job.epoch < 1) boundaryNote.textContent = "drawn after the first epoch";
      else refreshBoundary();
    } else {
      // 2-D data only: images and wider tables get the validation rows' confusion matrix
      boundaryCard.hidden = true;
      valCard.hidden = false;
      imagesCard.hidden = !isImage();
      canvas.dataset.hidden = "1";
      if (job.epoch < 1) valNote.textContent = "computed after the first epoch";
      else refreshValidation();
    }
  }

  // ------------------------------------------------------------------ validation predictions
  let valAgain = false;
  async function validationNow() {
    if (inputShape === undefined || twoD() || !job || job.epoch < 1 || stopped) return;
    if (valBusy) { valAgain = true; return; }
    valBusy = true;
    const url = `${path}/validation?checkpoint=${valWhich}&limit=${VAL_IMAGES}&only=${valOnly}`;
    try {
      // a 304 (same checkpoint) keeps what is drawn, unless the choice changed
      const { changed, data } = await getFresh(url);
      if (stopped || (!changed && valShown === url)) return;
      valShown = url;
      renderValidation(data);
    } catch (err) {
      valNote.textContent = err instanceof ApiError ? err.message : "validation unavailable";
    } finally {
      valBusy = false;
      if (valAgain) { valAgain = false; refreshValidation(); }
    }
  }
  const refreshValidation = throttle(validationNow, 1500);

  function renderValidation(data) {
    const ck = `${data.checkpoint.kind} checkpoint, epoch ${data.checkpoint.epoch}`;
    valNote.textContent = ck;
    valCard.dataset.epoch = String(data.checkpoint.epoch);
    valCard.dataset.accuracy = String(data.accuracy);
    const scores = classScores(data);
    clear(valBody,
      h("p", { class: "small", dataset: { testid: "validation-accuracy" } },
        h("b", {}, `accuracy ${num(data.accuracy, 4)}`),
        h("span", { class: "muted" }, ` · ${data.correct} of ${data.n_val} validation rows right, eval mode`)),
      confusionTable(data),
      h("details", { class: "small", style: { marginTop: "8px" } }, h("summary", {}, "Per class"),
        h("table", { class: "small" },
          h("thead", {}, h("tr", {}, h("th", {}, "Class"), h("th", { class: "num" }, "n"),
            h("th", { class: "num" }, "Recall"), h("th", { class: "num" }, "Precision"))),
          h("tbody", {}, scores.map((s) => h("tr", {}, h("td", {}, s.name), h("td", { class: "num" }, s.support),
            h("td", { class: "num" }, num(s.recall)), h("td", { class: "num" }, num(s.precision))))))));
    if (data.images) {
      imagesCard.hidden = false;
      const n = data.images.items.length;
      const wrong = data.images.items.filter((it) => it.label !== it.predicted).length;
      imagesNote.textContent = valOnly === "mistakes"
        ? `${n} of ${data.n_val - data.correct} mistakes · ${ck}`
        : `first ${n} of ${data.n_val} · ${wrong} wrong · ${ck}`;
      imagesCard.dataset.epoch = String(data.checkpoint.epoch);
      clear(imagesBody, imageGrid(data),
        h("p", { class: "small muted", style: { margin: "8px 0 0" } },
          `Caption: true class, then ✓ or → the predicted class; mistakes in red. Pixels scaled from ` +
          `${num(data.images.scale[0])} … ${num(data.images.scale[1])} (the dataset's range) to black … white` +
          (data.images.layout === "channels" ? "; channels side by side." : ".")));
    }
  }

  // ------------------------------------------------------------------ BN statistics
  // 2-D data: each statistic's mean across channels with a min…max band. Beyond: one line per
  // channel (conv) or unit (dense), from /bn?values=true (layers of <= 64 channels).
  const perChannel = () => inputShape !== undefined && !twoD();
  const refreshBn = throttle(async () => {
    if (stopped) return;
    try {
      const { changed, data } = await getFresh(`${path}/bn${perChannel() ? "?values=true" : ""}`);
      if (changed && !stopped) renderBn(data.layers || []);
    } catch { /* older servers have no /bn: the card stays hidden */ }
  }, 2000);

  const channelsOf = (s) => (s?.values || []).reduce((m, v) => Math.max(m, v ? v.length : 0), 0);

  function renderBn(layers) {
    if (perChannel() && layers.some((l) => channelsOf(l.running_mean))) {
      renderBnChannels(layers);
      return;
    }
    bnCard.hidden = layers.length === 0;
    const key = layers.map((l) => `${l.name}:${!!l.gamma}`).join();
    if (key !== bnKey) {
      bnCharts.forEach((c) => c.destroy());
      bnCharts = [];
      clear(bnBody);
      bnKey = key;
      for (const l of layers) {
        const stats = ["running_mean", "running_var", ...(l.gamma ? ["gamma", "beta"] : [])];
        const els = stats.map((s) => h("div", { dataset: { testid: `bn-${s}` } }));
        bnBody.append(h("div", { class: "bn-layer", dataset: { testid: "bn-layer" } },
          h("h3", {}, l.name, h("span", { class: "muted small" }, ` (module ${l.module})`)),
          h("div", { class: stats.length > 2 ? "grid2" : "grid2" }, stats.map((s, i) =>
            h("div", {}, h("div", { class: "small muted" }, s.replace("_", " ")), els[i])))));
        stats.forEach((s, i) => {
          const chart = new LineChart(els[i], { height: 170, yLabel: s.replace("running_", ""), series: [
            { label: "mean", color: color(2 + i) },
            { label: "min", color: color(2 + i), hidden: true },
            { label: "max", color: color(2 + i), hidden: true, band: [1, 2] }] });
          chart.stat = s;
          chart.layer = l.name;
          bnCharts.push(chart);
        });
      }
    }
    for (const c of bnCharts) {
      const l = layers.find((x) => x.name === c.layer);
      const s = l?.[c.stat];
      if (s) c.setData(l.epochs, [s.mean, s.min, s.max]);
    }
  }

  function renderBnChannels(layers) {
    bnCard.hidden = layers.length === 0;
    bnHint.textContent = "one line per channel (conv) or unit (dense), eval-mode buffers after each epoch";
    const statsOf = (l) => ["running_mean", "running_var", ...(l.gamma ? ["gamma", "beta"] : [])];
    const key = "ch|" + layers.map((l) => `${l.name}:${statsOf(l).map((s) => channelsOf(l[s])).join("/")}`).join();
    if (key !== bnKey) {
      bnCharts.forEach((c) => c.destroy());
      bnCharts = [];
      clear(bnBody);
      bnKey = key;
      for (const l of layers) {
        const stats = statsOf(l);
        const n = channelsOf(l.running_mean);
        const els = stats.map((s) => h("div", { dataset: { testid: channelsOf(l[s]) ? `bn-ch-${s}` : `bn-${s}` } }));
        bnBody.append(h("div", { class: "bn-layer", dataset: { testid: "bn-layer", channels: String(n), name: l.name } },
          h("h3", {}, l.name, h("span", { class: "muted small" },
            n ? ` (module ${l.module}, ${n} channels)` : ` (module ${l.module}; over 64 channels: mean and min…max only)`)),
          h("div", { class: "grid2" }, stats.map((s, i) =>
            h("div", {}, h("div", { class: "small muted" }, s.replace("_", " ")), els[i])))));
        stats.forEach((s, i) => {
          const k = channelsOf(l[s]);
          const series = k
            ? Array.from({ length: k }, (_, c) => ({ label: `#${c}`, color: color(c), width: 1.2 }))
            : [{ label: "mean", color: color(2 + i) }, { label: "min", color: color(2 + i), hidden: true },
              { label: "max", color: color(2 + i), hidden: true, band: [1, 2] }];
          const chart = new LineChart(els[i], { height: 190, yLabel: s.replace("running_", ""), series, legend: k <= 16 });
          els[i].dataset.series = String(k || 1);
          chart.stat = s;
          chart.layer = l.name;
          chart.channels = k;
          bnCharts.push(chart);
        });
      }
    }
    for (const c of bnCharts) {
      const l = layers.find((x) => x.name === c.layer);
      const s = l?.[c.stat];
      if (!s) continue;
      if (c.channels) {
        const ys = Array.from({ length: c.channels }, (_, ch) => s.values.map((v) => (v ? v[ch] ?? null : null)));
        c.setData(l.epochs, ys);
      } else c.setData(l.epochs, [s.mean, s.min, s.max]);
    }
  }

  // ------------------------------------------------------------------ model summary
  async function refreshModel() {
    try {
      const m = await api(`${path}/model`);
      if (stopped) return;
      clear(modelCard, h("h2", {}, "Model", h("span", { class: "tools muted" },
        m.checkpoint ? `${m.checkpoint.kind} checkpoint, epoch ${m.checkpoint.epoch}` : "from the spec")),
      h("table", { class: "small", dataset: { testid: "model-table" } },
        h("thead", {}, h("tr", {}, h("th", {}, "Layer"), h("th", {}, "Output shape"),
          h("th", { class: "num" }, "Trainable"), h("th", { class: "num" }, "Non-trainable"))),
        h("tbody", {}, m.layers.map((l) => h("tr", {}, h("td", {}, `${l.name} (${l.type})`),
          h("td", { class: "mono" }, `(${l.output_shape.map((v) => v ?? "None").join(", ")})`),
          h("td", { class: "num" }, l.trainable), h("td", { class: "num" }, l.non_trainable)))),
        h("tfoot", {}, h("tr", {}, h("th", {}, "Total"), h("th", {}, `${m.head} head, ${m.loss}`),
          h("th", { class: "num" }, m.totals.trainable), h("th", { class: "num" }, m.totals.non_trainable)))),
      h("p", { class: "small muted" }, `${m.totals.total} parameters; BN running mean and variance count as non-trainable, as Keras counts them.`));
    } catch (err) { clear(modelCard, h("h2", {}, "Model"), h("p", { class: "error" }, err.message)); }
  }

  // ------------------------------------------------------------------ checkpoints
  async function refreshCheckpoints() {
    try {
      const list = await api(`${path}/checkpoints`);
      if (stopped) return;
      clear(ckptCard, h("h2", {}, "Checkpoints", h("span", { class: "tools muted" }, "safetensors")),
        list.length ? h("table", { class: "small" },
          h("thead", {}, h("tr", {}, h("th", {}, "Kind"), h("th", { class: "num" }, "Epoch"),
            h("th", { class: "num" }, "val acc"), h("th", { class: "num" }, "Size"), h("th", {}))),
          h("tbody", {}, list.map((c) => h("tr", {},
            h("td", {}, c.kind), h("td", { class: "num" }, c.epoch),
            h("td", { class: "num" }, num(c.metrics?.val_accuracy)),
            h("td", { class: "num" }, `${(c.size / 1024).toFixed(1)} KiB`),
            h("td", {}, h("a", { href: c.url, download: "", dataset: { testid: `download-${c.kind}` },
              onclick: (e) => {
                if (!apiKey()) return;  // a plain link works without auth
                e.preventDefault();
                download(c.url, `${c.kind}.safetensors`).catch((err) => toast(err.message, true));
              } }, "download"))))))
          : h("p", { class: "muted" }, "None yet: the worker writes one as epochs finish."));
    } catch (err) { clear(ckptCard, h("h2", {}, "Checkpoints"), h("p", { class: "error" }, err.message)); }
  }

  // ------------------------------------------------------------------ predict
  const rowsInput = h("textarea", { dataset: { testid: "predict-input" }, spellcheck: false });
  const predictWhich = h("select", {}, h("option", { value: "last" }, "last"), h("option", { value: "best" }, "best"));
  const predictOut = h("div", { dataset: { testid: "predict-output" } });
  let defaultsSet = false;
  function renderPredict() {
    const hint = isImage()
      ? `One image per line: its ${inputShape.join(" × ")} values comma-separated, channel by channel, row by row.`
      : "One row per line, features comma-separated in the dataset's column order.";
    clear(predictCard, h("h2", {}, "Predict", h("span", { class: "tools muted" }, "eval mode")),
      h("p", { class: "small muted" }, hint),
      rowsInput,
      h("div", { class: "row", style: { marginTop: "8px" } },
        h("label", { class: "inline small" }, "checkpoint", predictWhich),
        h("button", { class: "primary", onclick: predict, dataset: { testid: "predict-submit" } }, "Predict")),
      predictOut);
  }
  function predictDefaults(data) {
    if (defaultsSet || rowsInput.value) return;
    defaultsSet = true;
    const p = data.points;
    rowsInput.value = [0, 1, 2].filter((i) => i < p.x.length).map((i) => `${+p.x[i].toFixed(3)}, ${+p.y[i].toFixed(3)}`).join("\n");
  }
  async function predict() {
    const lines = rowsInput.value.split("\n").map((l) => l.trim()).filter(Boolean);
    const inputs = lines.map((l) => l.split(/[,\s]+/).filter(Boolean).map(Number));
    if (!inputs.length || inputs.some((r) => r.some((v) => !Number.isFinite(v)))) {
      clear(predictOut, h("div", { class: "msg err" }, "Each line needs numbers separated by commas."));
      return;
    }
    // images: a line of C·H·W values becomes its nested [C][H][W] (other lengths: the server says why)
    const body = isImage() ? inputs.map((r) => (r.length === inputShape.reduce((a, b) => a * b, 1) ? nest(r, inputShape) : r)) : inputs;
    try {
      const res = await api(`${path}/predict`, { method: "POST", body: { inputs: body, checkpoint: predictWhich.value } });
      clear(predictOut, h("table", { class: "small", style: { marginTop: "8px" } },
        h("thead", {}, h("tr", {}, h("th", {}, "Input"), h("th", {}, "Class"),
          res.class_names.map((c) => h("th", { class: "num" }, `P(${c})`)))),
        h("tbody", {}, inputs.map((r, i) => h("tr", {}, h("td", { class: "mono" }, r.length > 12 ? `${r.slice(0, 12).join(", ")}, … (${r.length} values)` : r.join(", ")),
          h("td", {}, h("b", {}, res.classes[i])), res.probabilities[i].map((p) => h("td", { class: "num" }, num(p))))))),
      h("p", { class: "small muted" }, `${res.checkpoint.kind} checkpoint, epoch ${res.checkpoint.epoch}`));
    } catch (err) { clear(predictOut, h("div", { class: "msg err" }, err.message)); }
  }

  function nest(flat, shape) {
    if (shape.length === 1) return flat;
    const size = shape.slice(1).reduce((a, b) => a * b, 1);
    return Array.from({ length: shape[0] }, (_, i) => nest(flat.slice(i * size, (i + 1) * size), shape.slice(1)));
  }

  // ------------------------------------------------------------------ live
  // the model card reads the best checkpoint: it moves when the checkpoints do
  const refreshCheckpointsSoon = throttle(() => { refreshCheckpoints(); refreshModel(); }, 5000);

  function onEvent({ event, data }) {
    if (stopped) return;
    if (event === "epoch") {
      addEpoch(data);
      if (data.epoch > job.epoch) { job.epoch = data.epoch; renderHeadSoon(); }
      refreshBoundary();
      refreshValidation();
      refreshBn();
      refreshCheckpointsSoon();
    } else if (event === "status") {
      Object.assign(job, { status: data.status, epoch: data.epoch, error: data.error });
      renderHead();
      // the event carries the status only: fetch the rest (worker, device, start time)
      api(path).then((j) => { if (!stopped && !TERMINAL.has(job.status)) { job = j; renderHead(); } }, () => {});
    } else if (event === "done") {
      job = data;
      renderHead();
      redrawCurves();
      refreshBoundary();
      refreshValidation();
      refreshBn();
      refreshModel();
      refreshCheckpoints();
      setLive(false);
    } else if (event === "error") {
      toast(data.detail || "the event stream failed", true);
      setLive(false);
    }
  }
  const renderHeadSoon = throttle(() => job && renderHead(), 500);

  (async () => {
    try {
      job = await api(path);
    } catch (err) {
      clear(root, h("div", { class: "card" }, h("h2", {}, "Job not found"), h("p", { class: "error" }, err.message),
        h("a", { href: "#/jobs" }, "← all jobs")));
      return;
    }
    if (stopped) return;
    renderHead();
    const past = await api(`${path}/history`);
    for (let i = 0; i < past.epoch.length; i++) {
      addEpoch(Object.fromEntries(["epoch", ...SERIES].map((k) => [k, past[k]?.[i] ?? null])));
    }
    if (!past.epoch.length) redrawCurves();
    try {
      inputShape = await datasetShape(job.spec.dataset);
    } catch { inputShape = null; }
    if (stopped) return;
    renderHead();
    renderPredict();
    setupBoundary();
    refreshBn();
    refreshModel();
    refreshCheckpoints();
    if (stopped) return;
    stream = openStream(`${path}/events`, {
      lastEventId: past.epoch.length ? String(past.epoch[past.epoch.length - 1]) : null,
      onEvent, onState: (s) => setLive(s === "open" && !TERMINAL.has(job.status)),
    });
    // ages and elapsed time move on their own while the job runs
    cleanups.push(every(5000, () => { if (!TERMINAL.has(job.status)) renderHead(); }));
  })().catch((err) => toast(err.message, true));

  return () => {
    stopped = true;
    stream?.close();
    cleanups.forEach((f) => f());
    [redrawCurves, refreshBoundary, refreshValidation, refreshBn, refreshCheckpointsSoon, renderHeadSoon].forEach((t) => t.cancel());
    [...charts, ...bnCharts].forEach((c) => c.destroy());
    setLive(false);
  };
}
