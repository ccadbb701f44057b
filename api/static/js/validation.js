// The validation views of a job (GET /v1/jobs/{id}/validation): the confusion matrix and, for
// image datasets, a grid of validation images with their true and predicted classes.
//
// Confusion cells are shaded by their share of the row (the true class): the diagonal green
// (right), the rest red (wrong). Tiles are the server's PNGs, drawn with hard pixel edges.

import { h } from "./util.js";

const GREEN = [46, 139, 87], RED = [200, 49, 44];

function shade(rgb, t) { return `rgba(${rgb.join(",")}, ${(0.08 + 0.72 * t).toFixed(3)})`; }

/** The confusion matrix as a table: rows = true class, columns = predicted class. */
export function confusionTable(data) {
  const k = data.confusion.length;
  const names = Array.from({ length: k }, (_, i) => data.classes[i] ?? String(i));
  const rowTotals = data.confusion.map((row) => row.reduce((a, b) => a + b, 0));
  const colTotals = names.map((_, j) => data.confusion.reduce((a, row) => a + row[j], 0));
  return h("div", { class: "table-wrap" },
    h("table", { class: `confusion${k > 12 ? " dense" : ""}`, dataset: {
      testid: "confusion-matrix", total: String(data.n_val), classes: String(k) } },
    h("thead", {},
      h("tr", {}, h("th", { class: "corner", title: "rows: true class; columns: predicted class" },
        "true ↓ · predicted →"), names.map((c) => h("th", { title: `predicted ${c}` }, c)),
      h("th", { class: "total" }, "n"))),
    h("tbody", {}, data.confusion.map((row, i) => h("tr", { dataset: { testid: "confusion-row" } },
      h("th", { title: `true ${names[i]}` }, names[i]),
      row.map((n, j) => {
        const share = rowTotals[i] ? n / rowTotals[i] : 0;
        const right = i === j;
        return h("td", {
          class: right ? "diag" : n ? "off" : "zero",
          style: { background: n ? shade(right ? GREEN : RED, share) : "" },
          title: `true ${names[i]}, predicted ${names[j]}: ${n} (${(100 * share).toFixed(1)}% of the row)`,
          dataset: { testid: "confusion-cell", count: String(n) },
        }, n);
      }),
      h("td", { class: "total" }, rowTotals[i])))),
    h("tfoot", {}, h("tr", {}, h("th", {}, "n"), colTotals.map((n) => h("td", { class: "total" }, n)),
      h("td", { class: "total" }, data.n_val)))));
}

/** Per class: recall (diagonal over the row) and precision (diagonal over the column). */
export function classScores(data) {
  return data.confusion.map((row, i) => {
    const support = row.reduce((a, b) => a + b, 0);
    const predicted = data.confusion.reduce((a, r) => a + r[i], 0);
    return { name: data.classes[i] ?? String(i), support, recall: support ? row[i] / support : null,
      precision: predicted ? row[i] / predicted : null };
  });
}

/** The image tiles: mistakes outlined in red. */
export function imageGrid(data) {
  const imgs = data.images;
  if (!imgs) return null;
  const name = (i) => data.classes[i] ?? String(i);
  if (!imgs.items.length) {
    return h("p", { class: "muted", dataset: { testid: "val-images-empty" } }, "No images to show.");
  }
  return h("div", { class: "val-grid", dataset: { testid: "val-images", count: String(imgs.items.length) } },
    imgs.items.map((it) => {
      const right = it.label === it.predicted;
      const conf = it.confidence == null ? "" : ` (${(100 * it.confidence).toFixed(0)}%)`;
      return h("figure", {
        class: `val-img ${right ? "right" : "wrong"}`,
        title: `row ${it.row}: true ${name(it.label)}, predicted ${name(it.predicted)}${conf}`,
        dataset: { testid: "val-image", row: String(it.row), label: String(it.label),
          predicted: String(it.predicted), correct: String(right) },
      },
      h("img", { src: `data:image/png;base64,${it.png}`, alt: `validation row ${it.row}` }),
      h("figcaption", {},
        h("span", { class: "t" }, name(it.label)),
        h("span", { class: right ? "p ok" : "p bad" }, right ? "✓" : `→ ${name(it.predicted)}`)));
    }));
}
