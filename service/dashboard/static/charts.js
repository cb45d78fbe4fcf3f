// Line charts (the vendored uPlot) with their data as a table and a CSV download.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { download, fill, h, num } from "./dom.js";

// Tableau 10: distinguishable, and readable on light and dark backgrounds.
export const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

const TABLE_ROWS = 1000;
// x is always a count (step, meta-iteration): ticks at whole numbers only
const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000, 1e6]; // rows shown in a chart's data table (the CSV has all)

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

function clean(values, positive) {
  return values.map((v) => (typeof v === "number" && Number.isFinite(v) && (!positive || v > 0) ? v : null));
}

/**
 * A line chart in a <figure>: `series` = [{label, values, color, dash, width}], all of
 * `x`'s length (null = no value). `yLog` plots y on a log scale (non-positive values dropped).
 * `xMax()`, if given, is where the x axis ends at least (e.g. the planned iterations, so a
 * live curve grows from the left). Returns {el, update(x, series)}; `el` carries data-testid,
 * data-points and data-series.
 */
export function lineChart({ title, note, xLabel, yLabel, x, series, yLog = false, height = 260, testid, csvName, xMax }) {
  let curX = x;
  let curSeries = series;
  let plot = null;
  const plotEl = h("div", { class: "chart-plot" });
  const tableHolder = h("div", { class: "chart-table" });
  const details = h(
    "details",
    { class: "chart-data" },
    h("summary", {}, "Data"),
    h("button", {
      type: "button",
      class: "btn small",
      onclick: () => download(toCsv(xLabel, curX, curSeries), `${csvName || testid || "chart"}.csv`, "text/csv"),
    }, "Download CSV"),
    tableHolder,
  );
  details.addEventListener("toggle", () => {
    if (details.open) renderTable();
  });
  const el = h(
    "figure",
    { class: "chart", "data-testid": testid },
    h("figcaption", {}, h("span", { class: "chart-title" }, title), note ? h("span", { class: "muted chart-note" }, note) : null),
    plotEl,
    details,
  );

  function renderTable() {
    const n = curX.length;
    const rows = [];
    for (let i = 0; i < Math.min(n, TABLE_ROWS); i++) {
      rows.push(h("tr", {}, h("th", { scope: "row" }, String(curX[i])), curSeries.map((s) => h("td", {}, num(s.values[i], 6)))));
    }
    fill(tableHolder,
      h("table", { class: "data" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, xLabel), curSeries.map((s) => h("th", { scope: "col" }, s.label)))),
        h("tbody", {}, rows)),
      n > TABLE_ROWS ? h("p", { class: "muted" }, `First ${TABLE_ROWS} of ${n} rows; the CSV has all.`) : null,
    );
  }

  function options(width) {
    const axis = cssVar("--fg-muted", "#666");
    const grid = cssVar("--grid", "#e5e5e5");
    return {
      width,
      height,
      scales: {
        x: {
          time: false,
          // with xMax: from the first x (or 0) to the larger of the last x and xMax(); uPlot's
          // own padding of a single point (0 -> [0, 100]) would otherwise win
          range: (u, min, max) => {
            if (!xMax) return [min, max];
            const lo = Math.min(curX.length ? curX[0] : 0, 0);
            const hi = Math.max(curX.length ? curX[curX.length - 1] : 0, xMax() ?? 0);
            return [lo, hi > lo ? hi : lo + 1];
          },
        },
        y: yLog ? { distr: 3 } : {},
      },
      axes: [
        { label: xLabel, stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, incrs: INT_INCRS,
          values: (u, splits) => splits.map((v) => String(v)) },
        { label: yLabel, stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 64,
          values: (u, splits) => splits.map((v) => (v === null ? "" : num(v, 3))) },
      ],
      series: [
        { label: xLabel },
        ...curSeries.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width || 2,
          dash: s.dash,
          spanGaps: true,
          points: { show: curX.length <= 40, size: 5 },
          value: (u, v) => (v === null || v === undefined ? "—" : num(v, 5)),
        })),
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
  }

  function data() {
    return [curX, ...curSeries.map((s) => clean(s.values, yLog))];
  }

  function width() {
    return Math.max(280, Math.floor(plotEl.clientWidth || el.clientWidth || 640));
  }

  function build() {
    plot?.destroy();
    plot = new uPlot(options(width()), data(), plotEl);
  }

  function mark() {
    el.dataset.points = String(curX.length);
    el.dataset.series = JSON.stringify(curSeries.map((s) => s.label));
  }

  mark();
  build();
  const ro = new ResizeObserver(() => {
    const w = width();
    if (plot && Math.abs(plot.width - w) > 2) plot.setSize({ width: w, height });
  });
  ro.observe(plotEl);

  return {
    el,
    update(newX, newSeries) {
      const rebuild = newSeries.length !== curSeries.length || newSeries.some((s, i) => s.label !== curSeries[i].label);
      curX = newX;
      curSeries = newSeries;
      mark();
      if (rebuild) build();
      else plot.setData(data());
      if (details.open) renderTable();
    },
  };
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(xLabel, x, series) {
  const lines = [[xLabel, ...series.map((s) => s.label)].map(csvCell).join(",")];
  for (let i = 0; i < x.length; i++) {
    lines.push([x[i], ...series.map((s) => s.values[i])].map(csvCell).join(","));
  }
  return `${lines.join("\n")}\n`;
}

/** 0, 1, ..., n-1 */
export function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}
