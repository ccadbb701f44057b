// uPlot wrappers: an epoch-indexed line chart that resizes with its card and can grow live.
//
// new LineChart(el, {series: [{label, color, dash, band: [loIdx, hiIdx]}], yLabel, sync})
//   .setData(x, ys)  x: epochs, ys: one array per series (null = gap)
// Series flagged {hidden: true} are drawn (e.g. a band's edges) but left out of the legend.
// xLabel names the x axis ("epoch"); xTicks, an array of labels, makes x a category axis:
// x values are then the indices 0..n-1 and each tick shows its label (a sweep's values).
// The container's data-points attribute says how many x values are plotted (tests read it).

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { alpha, h, num } from "./util.js";

const HEIGHT = 260;

export class LineChart {
  constructor(el, { series, yLabel = "", title = "", sync = null, height = HEIGHT,
    legend = true, xLabel = "epoch", xTicks = null } = {}) {
    this.el = el;
    this.series = series;
    this.height = height;
    el.classList.add("chart");
    el.dataset.points = "0";
    const bands = [];
    series.forEach((s, i) => {
      if (s.band) bands.push({ series: [s.band[1] + 1, s.band[0] + 1], fill: alpha(s.color, 0.15) });
    });
    const opts = {
      title, width: Math.max(200, el.clientWidth || 600), height,
      scales: { x: xTicks ? { time: false, range: () => [-0.25, Math.max(1, xTicks.length - 1) + 0.25] }
        : { time: false } },
      axes: [
        // epochs are whole numbers: no 2.5 ticks
        xTicks
          ? { label: xLabel, labelSize: 20, size: 36, grid: { stroke: "#eef0f2" },
            splits: () => xTicks.map((_, i) => i), values: (u, vals) => vals.map((v) => xTicks[v] ?? "") }
          : { label: xLabel, labelSize: 20, size: 36, grid: { stroke: "#eef0f2" },
            incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000] },
        { label: yLabel, labelSize: 20, size: 56, grid: { stroke: "#eef0f2" },
          values: (u, vals) => vals.map((v) => (Math.abs(v) >= 1000 ? v.toExponential(1) : +v.toPrecision(4))) },
      ],
      series: [
        xTicks ? { label: xLabel, value: (u, v) => (v === null || v === undefined ? "–" : xTicks[v] ?? "") }
          : { label: xLabel },
        ...series.map((s) => ({
          label: s.label, stroke: s.hidden ? "transparent" : s.color, width: s.width ?? 1.6,
          // points: uPlot's default shows them only while they are sparse (a first epoch)
          dash: s.dash, spanGaps: false, ...(s.hidden ? { points: { show: false } } : {}),
          value: (u, v) => num(v, 4),
        })),
      ],
      bands,
      legend: { show: legend, live: true },
      cursor: { sync: sync ? { key: sync } : undefined, drag: { x: true, y: false } },
    };
    this.u = new uPlot(opts, [[], ...series.map(() => [])], el);
    // hide legend rows of helper series (band edges)
    if (legend) series.forEach((s, i) => {
      if (s.hidden) this.u.root.querySelectorAll(".u-legend .u-series")[i + 1]?.setAttribute("hidden", "");
    });
    this.ro = new ResizeObserver(() => {
      const w = el.clientWidth;
      if (w > 0 && Math.abs(w - this.u.width) > 2) this.u.setSize({ width: w, height: this.height });
    });
    this.ro.observe(el);
  }

  setData(x, ys) {
    this.u.setData([x, ...ys]);
    this.el.dataset.points = String(x.length);
  }

  destroy() {
    this.ro.disconnect();
    this.u.destroy();
  }
}

/** A placeholder in a chart's place while there is nothing to draw. */
export function emptyChart(text) {
  return h("div", { class: "chart-empty" }, text);
}
