// Two or more jobs side by side: held-out figures, what differs in their specs, their learned
// schedules per layer, meta-learning curves and training curves overlaid.

import { api } from "../api.js";
import { color, lineChart, range } from "../charts.js";
import { append, duration, enc, h, meanStd, num, pct, shortId, stateBadge } from "../dom.js";
import { GROUPS, certificates, change, curveArrays, flatten, metaCurveFromHistory, schedule } from "../results.js";
import { compareSelection } from "../selection.js";

const MAX_JOBS = 8;

function idsHash(ids) {
  return `#/compare?ids=${ids.map(enc).join(",")}`;
}

async function load(id, signal) {
  try {
    const job = await api(`/v1/jobs/${enc(id)}`, { signal });
    let result = null;
    if (job.state === "succeeded") result = (await api(`/v1/jobs/${enc(id)}/result`, { signal })).result || {};
    return { id, job, result };
  } catch (err) {
    if (err.status === 404 || err.status === 422) return { id, missing: err };
    throw err;
  }
}

export async function comparePage(main, { query, signal }) {
  const selection = compareSelection();
  let ids = (query.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (ids.length === 0) ids = selection.ids();
  ids = [...new Set(ids)].slice(0, MAX_JOBS);
  append(main, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")));
  if (ids.length < 2) {
    append(main, h("h1", {}, "Compare jobs"), h("div", { class: "empty", "data-testid": "compare-empty" },
      "Tick two or more jobs on the ", h("a", { href: "#/jobs" }, "Jobs"), " page, then press Compare."));
    return;
  }
  const loading = h("p", { class: "muted" }, `Loading ${ids.length} jobs…`);
  append(main, loading);
  const all = await Promise.all(ids.map((id) => load(id, signal)));
  loading.remove();
  const missing = all.filter((e) => e.missing);
  const entries = all.filter((e) => !e.missing);
  entries.forEach((e, i) => { e.color = color(i); });
  selection.set(entries.map((e) => e.id));
  const withResult = entries.filter((e) => e.result);

  append(main,
    h("h1", {}, `Compare ${entries.length} jobs`),
    missing.length
      ? h("div", { class: "box warn", role: "alert", "data-testid": "compare-missing" },
        missing.map((m) => h("p", {}, `No job ${m.id} for you: ${m.missing.problem?.detail || m.missing.message}`)))
      : null,
    h("ul", { class: "legend", "data-testid": "compare-legend" }, entries.map((e) => h(
      "li",
      { "data-job-id": e.id },
      h("span", { class: "swatch", "aria-hidden": "true", dataset: { color: e.color } }),
      h("a", { href: `#/jobs/${enc(e.id)}` }, e.job.name || "(unnamed)"),
      " ", h("span", { class: "mono muted small" }, shortId(e.id)), " ", stateBadge(e.job.state), " ",
      entries.length > 2
        ? h("a", { class: "small", href: idsHash(entries.filter((x) => x !== e).map((x) => x.id)), "aria-label": `Remove ${e.job.name || e.id}` }, "remove")
        : null,
    ))),
  );
  // swatch colours: set through the CSSOM (no inline style attribute under the CSP)
  main.querySelectorAll(".swatch").forEach((el) => { el.style.background = el.dataset.color; });
  if (entries.length === 0) return;

  append(main, figuresTable(entries), specDiff(entries));
  if (withResult.length === 0) {
    append(main, h("p", { class: "box warn" }, "None of these jobs has succeeded yet: schedules and curves appear once they have."));
    return;
  }
  append(main, scheduleSection(withResult), curvesSection(withResult));
}

function figuresTable(entries) {
  const evalOf = (e, which, key) => e.result?.evaluation?.[which]?.[`${key}_mean`];
  const stdOf = (e, which, key) => e.result?.evaluation?.[which]?.[`${key}_std`];
  const rows = [
    ["held-out validation loss (tuned)", (e) => evalOf(e, "final", "val_loss"), "min", (e) => meanStd(evalOf(e, "final", "val_loss"), stdOf(e, "final", "val_loss"))],
    ["held-out test loss (tuned)", (e) => evalOf(e, "final", "test_loss"), "min", (e) => meanStd(evalOf(e, "final", "test_loss"), stdOf(e, "final", "test_loss"))],
    ["held-out test accuracy (tuned)", (e) => evalOf(e, "final", "test_acc"), "max", (e) => meanStd(evalOf(e, "final", "test_acc"), stdOf(e, "final", "test_acc"), pct)],
    ["held-out validation loss (initial)", (e) => evalOf(e, "initial", "val_loss"), null, (e) => num(evalOf(e, "initial", "val_loss"))],
    ["validation loss change", null, null, (e) => change(evalOf(e, "initial", "val_loss"), evalOf(e, "final", "val_loss")) || "—"],
    ["held-out seeds", null, null, (e) => String(e.result?.evaluation?.seeds?.length ?? "—")],
    ["best selection estimate", (e) => e.result?.selection?.select_loss, "min", (e) => num(e.result?.selection?.select_loss)],
    ["returned iterate", null, null, (e) => (e.result ? `${e.result.selection?.iteration ?? "?"} of ${e.result.meta_iterations ?? "?"}` : "—")],
    ["hyperparameters tuned", null, null, (e) => String(e.result?.n_hyperparameters ?? "—")],
    ["net", null, null, (e) => netLabel(e.job.spec?.net)],
    ["training steps T", null, null, (e) => String(e.job.spec?.training?.steps ?? "—")],
    ["dataset", null, null, (e) => datasetLabel(e)],
    ["run time", (e) => e.result?.timings?.total_s, null, (e) => duration(e.result?.timings?.total_s)],
    ["exact reverse passes", null, null, (e) => exactLabel(e.result)],
  ];
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Key figures"),
    h("div", { class: "table-wrap" }, h(
      "table",
      { class: "figures compare", "data-testid": "compare-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), entries.map((e) => h("th", { scope: "col", "data-job-id": e.id }, e.job.name || shortId(e.id))))),
      h("tbody", {}, rows.map(([label, value, better, fmt]) => {
        const vals = entries.map((e) => (value ? value(e) : null));
        const finite = vals.filter((v) => typeof v === "number" && Number.isFinite(v));
        const best = better && finite.length > 1 ? (better === "min" ? Math.min(...finite) : Math.max(...finite)) : null;
        return h("tr", {}, h("th", { scope: "row" }, label), entries.map((e, i) => {
          const isBest = best !== null && vals[i] === best;
          return h("td", { class: `num${isBest ? " best" : ""}`, "data-job-id": e.id }, fmt(e), isBest ? h("span", { class: "best-mark", title: "best of these jobs" }, " ★") : null);
        }));
      })),
    )),
  );
}

function netLabel(net) {
  if (!net) return "—";
  const sizes = Array.isArray(net.sizes) ? ` [${net.sizes.join(", ")}]` : "";
  return `${net.family || "?"}${sizes}${net.activation ? ` ${net.activation}` : ""}`;
}

function datasetLabel(e) {
  const d = e.result?.dataset;
  const s = e.job.spec?.dataset || {};
  const name = d?.name || s.kind || "?";
  return d ? `${name} (${d.n_train}/${d.n_val}/${d.n_test})` : name;
}

function exactLabel(result) {
  if (!result) return "—";
  const trained = certificates(result).filter((c) => !c.diverged && "ok" in c);
  const bad = trained.filter((c) => !c.ok).length;
  return bad ? `${bad} of ${trained.length} NOT exact` : `all ${trained.length} exact`;
}

function specDiff(entries) {
  const flats = entries.map((e) => flatten(e.job.spec || {}));
  const keys = [...new Set(flats.flatMap((f) => [...f.keys()]))].sort();
  const differing = keys.filter((k) => new Set(flats.map((f) => JSON.stringify(f.get(k) ?? null))).size > 1);
  const show = (v) => (v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v));
  return h(
    "section",
    { class: "card", "data-testid": "spec-diff" },
    h("h2", {}, "What differs in the specs"),
    differing.length === 0
      ? h("p", { class: "muted" }, "The specs are identical.")
      : h("div", { class: "table-wrap" }, h(
        "table",
        { class: "data" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "field"), entries.map((e) => h("th", { scope: "col" }, e.job.name || shortId(e.id))))),
        h("tbody", {}, differing.map((k) => h("tr", { "data-field": k }, h("th", { scope: "row", class: "mono" }, k), flats.map((f) => h("td", { class: "mono" }, show(f.get(k))))))),
      )),
  );
}

function scheduleSection(entries) {
  const out = [];
  for (const group of ["learning_rate", "momentum", "weight_decay", "init_scale"]) {
    const meta = GROUPS[group];
    const scheds = entries.map((e) => ({ e, s: schedule(e.result, group, "final") }));
    if (group !== "learning_rate" && group !== "momentum" && !entries.some((e) => e.result.hyperparameters?.final?.[group]?.tuned)) continue;
    const layers = [...new Set(scheds.flatMap(({ s }) => (s ? s.layers : [])))];
    const T = Math.max(0, ...scheds.map(({ s }) => (s ? s.T : 0)));
    for (const layer of layers) {
      const series = scheds.filter(({ s }) => s && s.layers.includes(layer)).map(({ e, s }) => ({
        label: e.job.name || shortId(e.id),
        values: range(T).map((t) => (t < s.T ? s.columns[s.layers.indexOf(layer)][t] : null)),
        color: e.color,
      }));
      out.push(lineChart({
        title: `${meta.symbol} ${layer}`,
        note: meta.name,
        xLabel: "step",
        yLabel: meta.symbol,
        x: range(T),
        series,
        yLog: meta.log,
        height: 200,
        testid: `compare-${group}-${layer}`,
        csvName: `compare-${group}-${layer}`,
      }).el);
    }
  }
  return h("section", { class: "card", "data-testid": "compare-schedules" },
    h("h2", {}, "Learned schedules (returned iterate), per layer"),
    h("div", { class: "chart-grid" }, out));
}

function curvesSection(entries) {
  const curves = entries.map((e) => curveArrays(metaCurveFromHistory(e.result), [["select", "selection estimate"]]));
  const n = Math.max(0, ...curves.map((c) => (c.x.length ? c.x[c.x.length - 1] + 1 : 0)));
  const meta = lineChart({
    title: "Selection estimate per meta-iteration",
    note: "held-out seeds, validation set's select part",
    xLabel: "meta-iteration",
    yLabel: "loss",
    x: range(n),
    series: entries.map((e, i) => {
      const byIt = new Map(curves[i].x.map((it, j) => [it, curves[i].series[0].values[j]]));
      return { label: e.job.name || shortId(e.id), values: range(n).map((it) => byIt.get(it) ?? null), color: e.color };
    }),
    yLog: true,
    testid: "compare-meta",
    csvName: "compare-meta-curve",
  });
  const T = Math.max(0, ...entries.map((e) => e.result.training_curves?.final?.length || 0));
  const training = lineChart({
    title: "Training curves with the tuned hyperparameters",
    note: "minibatch loss per step, first held-out seed",
    xLabel: "step",
    yLabel: "loss",
    x: range(T),
    series: entries.map((e) => ({ label: e.job.name || shortId(e.id), values: range(T).map((t) => e.result.training_curves?.final?.[t] ?? null), color: e.color })),
    yLog: true,
    testid: "compare-training",
    csvName: "compare-training-curves",
  });
  return h("section", { class: "card" }, h("h2", {}, "Curves"), h("div", { class: "chart-grid two" }, meta.el, training.el));
}
