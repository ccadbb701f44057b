// The decision-boundary view: eval-mode predictions on a grid as a heatmap, the data on top.
//
// Binary: colour runs from class 0's colour through white (p = 0.5, the boundary) to class 1's.
// More classes: each cell takes its predicted class's colour, faded by the model's confidence.
// Train points are filled, validation points are hollow rings.

import { color, h } from "./util.js";

const SIZE = 560;  // canvas pixels per side (drawn at devicePixelRatio for sharpness)

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [n >> 16, (n >> 8) & 255, n & 255];
}

function mix(a, b, t) { return a.map((v, i) => Math.round(v + (b[i] - v) * t)); }

const WHITE = [255, 255, 255];

export function classColors(n) {
  // blue vs orange for two classes (tab10's first two), tab10 beyond
  return Array.from({ length: n }, (_, i) => color(i));
}

/** Draw `data` (the /boundary JSON) onto `canvas`. */
export function drawBoundary(canvas, data) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = canvas.height = Math.round(SIZE * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const nx = data.x.length, ny = data.y.length;
  const colors = classColors(data.classes.length).map(rgb);

  // one pixel per grid cell, then scaled up with smoothing: a soft, readable field
  const grid = new OffscreenCanvas(nx, ny);
  const gctx = grid.getContext("2d");
  const img = gctx.createImageData(nx, ny);
  for (let r = 0; r < ny; r++) {
    for (let c = 0; c < nx; c++) {
      let px;
      if (data.probabilities) {
        const p = data.probabilities[r][c];
        px = p >= 0.5 ? mix(WHITE, colors[1], (p - 0.5) * 2 * 0.75)
          : mix(WHITE, colors[0], (0.5 - p) * 2 * 0.75);
      } else {
        const k = data.predicted[r][c];
        const conf = data.confidence[r][c];
        const floor = 1 / data.classes.length;
        px = mix(WHITE, colors[k % colors.length], 0.15 + 0.6 * (conf - floor) / (1 - floor));
      }
      const o = ((ny - 1 - r) * nx + c) * 4;  // rows go up in y, canvas rows go down
      img.data[o] = px[0]; img.data[o + 1] = px[1]; img.data[o + 2] = px[2]; img.data[o + 3] = 255;
    }
  }
  gctx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(grid, 0, 0, SIZE, SIZE);

  // grid values are cell centres: the image spans half a cell beyond the first and last
  const dx = nx > 1 ? (data.x[nx - 1] - data.x[0]) / (nx - 1) : 1;
  const dy = ny > 1 ? (data.y[ny - 1] - data.y[0]) / (ny - 1) : 1;
  const x0 = data.x[0] - dx / 2, x1 = data.x[nx - 1] + dx / 2;
  const y0 = data.y[0] - dy / 2, y1 = data.y[ny - 1] + dy / 2;
  const sx = (x) => ((x - x0) / (x1 - x0)) * SIZE;
  const sy = (y) => SIZE - ((y - y0) / (y1 - y0)) * SIZE;

  if (data.probabilities) drawContour(ctx, data, sx, sy);

  const pts = data.points || { x: [], y: [], label: [], split: [] };
  for (let i = 0; i < pts.x.length; i++) {
    const c = `rgb(${colors[pts.label[i] % colors.length].join(",")})`;
    ctx.beginPath();
    ctx.arc(sx(pts.x[i]), sy(pts.y[i]), 3.2, 0, 2 * Math.PI);
    if (pts.split[i] === "val") {
      ctx.fillStyle = "#fff"; ctx.fill();
      ctx.lineWidth = 1.6; ctx.strokeStyle = c; ctx.stroke();
    } else {
      ctx.fillStyle = c; ctx.fill();
      ctx.lineWidth = 0.8; ctx.strokeStyle = "rgba(0,0,0,.55)"; ctx.stroke();
    }
  }
  canvas.dataset.extent = JSON.stringify([x0, x1, y0, y1].map((v) => +v.toFixed(3)));
}

/** The p = 0.5 line by marching squares over the grid (binary only). */
function drawContour(ctx, data, sx, sy) {
  const P = data.probabilities, X = data.x, Y = data.y;
  const lerp = (a, b, pa, pb) => a + ((0.5 - pa) / (pb - pa)) * (b - a);
  ctx.beginPath();
  for (let r = 0; r + 1 < Y.length; r++) {
    for (let c = 0; c + 1 < X.length; c++) {
      const p = [P[r][c], P[r][c + 1], P[r + 1][c + 1], P[r + 1][c]];
      const pts = [];
      const corners = [[X[c], Y[r]], [X[c + 1], Y[r]], [X[c + 1], Y[r + 1]], [X[c], Y[r + 1]]];
      for (let e = 0; e < 4; e++) {
        const a = e, b = (e + 1) % 4;
        if ((p[a] >= 0.5) !== (p[b] >= 0.5)) {
          pts.push([lerp(corners[a][0], corners[b][0], p[a], p[b]),
            lerp(corners[a][1], corners[b][1], p[a], p[b])]);
        }
      }
      for (let k = 0; k + 1 < pts.length; k += 2) {
        ctx.moveTo(sx(pts[k][0]), sy(pts[k][1]));
        ctx.lineTo(sx(pts[k + 1][0]), sy(pts[k + 1][1]));
      }
    }
  }
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = "rgba(30,35,40,.7)";
  ctx.stroke();
}

/** The side panel: classes and what the colours mean. */
export function boundaryLegend(data) {
  const cols = classColors(data.classes.length);
  const [fx, fy] = data.features || ["x", "y"];
  const range = (v) => `${v[0].toFixed(2)} … ${v[v.length - 1].toFixed(2)}`;
  return h("div", { class: "side" },
    h("h3", {}, "Classes"),
    data.classes.map((c, i) => h("div", {}, h("span", { class: "swatch", style: { background: cols[i] } }), c)),
    data.probabilities ? [
      h("div", { class: "ramp", style: { background: `linear-gradient(90deg, ${cols[0]}, #fff, ${cols[1]})`, opacity: 0.8 } }),
      h("div", { class: "row", style: { justifyContent: "space-between" } },
        h("span", {}, "P=0"), h("span", {}, "0.5"), h("span", {}, "1")),
      h("p", { class: "muted" }, `Shade: P(${data.classes[1]}) in eval mode; the dark line is P = 0.5.`),
    ] : h("p", { class: "muted" }, "Shade: the predicted class, fainter where the model is less sure."),
    h("p", { class: "muted" }, "● train   ○ validation"),
    h("p", { class: "muted" }, `${fx} (horizontal): ${range(data.x)}`, h("br"), `${fy} (vertical): ${range(data.y)}`),
  );
}
