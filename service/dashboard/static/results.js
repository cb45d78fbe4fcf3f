// What the pages read out of a job's events and its result document (`result.json`,
// schema_version 1: see the README's "`result.json`" section).

export const GROUPS = {
  learning_rate: { symbol: "α", name: "learning rate", log: true },
  momentum: { symbol: "γ", name: "momentum", log: false },
  weight_decay: { symbol: "λ", name: "weight decay", log: true },
  init_scale: { symbol: "scale", name: "init scale", log: false },
};

export const WHICH = {
  final: "returned (selected) iterate",
  start: "start (coarse search's choice)",
  initial: "initial values",
  last: "last iterate",
};

/** Layer names of a result (or "layer 0", ... when it has none). */
export function layerNames(result, L) {
  const names = result?.net?.layer_names;
  if (Array.isArray(names) && names.length === L) return names.map(String);
  return Array.from({ length: L }, (_, i) => `layer ${i}`);
}

/**
 * A group's schedule of iterate `which` as {T, L, layers, columns: [L][T], tuned, granularity},
 * from `hyperparameters[which][group].per_step_per_layer` ([T][L]); null when absent.
 */
export function schedule(result, group, which = "final") {
  const g = result?.hyperparameters?.[which]?.[group];
  const m = g?.per_step_per_layer;
  if (!Array.isArray(m) || m.length === 0 || !Array.isArray(m[0])) return null;
  const T = m.length;
  const L = m[0].length;
  const columns = Array.from({ length: L }, (_, l) => m.map((row) => (Array.isArray(row) ? row[l] : null)));
  return { T, L, layers: layerNames(result, L), columns, tuned: Boolean(g.tuned), granularity: g.granularity };
}

/** Whether a [L][T] schedule changes over the steps (otherwise a table says more than a chart). */
export function variesOverSteps(columns) {
  return columns.some((col) => col.some((v) => v !== col[0]));
}

/**
 * The meta-learning curve as rows by iterate index: {select, objective, val, train, best,
 * diverged}. `select` is the selection estimate (mean held-out loss) of iterate i; objective,
 * val and train are the losses of the meta-iteration that started from iterate i.
 */
export function metaCurveFromHistory(result) {
  const rows = new Map();
  const history = Array.isArray(result?.history) ? result.history : [];
  let best = Infinity;
  for (const rec of history) {
    const i = rec.iteration;
    if (typeof i !== "number") continue;
    if (typeof rec.select_loss === "number") best = Math.min(best, rec.select_loss);
    rows.set(i, {
      select: rec.select_loss,
      objective: rec.objective,
      val: rec.val_loss,
      train: rec.train_loss,
      best: Number.isFinite(best) ? best : null,
      diverged: Boolean(rec.diverged),
      certificate: rec.certificate || null,
    });
  }
  const last = history[history.length - 1];
  if (last && typeof last.next_select_loss === "number" && !rows.has(last.iteration + 1)) {
    best = Math.min(best, last.next_select_loss);
    rows.set(last.iteration + 1, { select: last.next_select_loss, best, diverged: false });
  }
  return rows;
}

/** One `meta` progress event as a curve row (its iteration is `meta_iteration`). */
export function metaRowOfEvent(ev) {
  return {
    select: ev.select_loss,
    objective: ev.objective,
    val: ev.val_loss,
    train: ev.train_loss,
    best: ev.best_select_loss,
    diverged: Boolean(ev.diverged),
  };
}

export const CURVE_SERIES = [
  ["select", "selection estimate (held-out seeds)"],
  ["best", "best so far"],
  ["objective", "objective (fit part, mean over seeds)"],
  ["val", "validation loss (first seed)"],
  ["train", "training loss (first seed)"],
];

/** x and series arrays of a curve (rows: Map iteration -> row). */
export function curveArrays(rows, keys = CURVE_SERIES) {
  const xs = [...rows.keys()].sort((a, b) => a - b);
  return {
    x: xs,
    series: keys.map(([key, label]) => ({ key, label, values: xs.map((i) => rows.get(i)?.[key] ?? null) })),
  };
}

/** The certificate of every meta-iteration that trained: [{iteration, ...certificate}]. */
export function certificates(result) {
  const out = [];
  for (const rec of Array.isArray(result?.history) ? result.history : []) {
    out.push({ iteration: rec.iteration, diverged: Boolean(rec.diverged), ...(rec.certificate || {}) });
  }
  return out;
}

/** {initial, final} evaluation records (means and stds over held-out seeds), or null. */
export function evaluation(result) {
  const ev = result?.evaluation;
  if (!ev || !ev.final) return null;
  return { seeds: Array.isArray(ev.seeds) ? ev.seeds.length : null, initial: ev.initial || {}, final: ev.final };
}

/** Relative change from a to b ("-86.1%"), or "". */
export function change(a, b) {
  if (typeof a !== "number" || typeof b !== "number" || a === 0) return "";
  const r = (b - a) / Math.abs(a);
  return `${r > 0 ? "+" : ""}${(100 * r).toFixed(1)}%`;
}

/** Every leaf of a JSON document as dotted path -> value (arrays of scalars stay whole). */
export function flatten(doc, prefix = "", out = new Map()) {
  if (doc && typeof doc === "object" && !Array.isArray(doc)) {
    for (const [k, v] of Object.entries(doc)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix || "(document)", doc);
  }
  return out;
}

/** A one-line description of a progress event (never a test-set figure), or null. */
export function describeEvent(name, ev) {
  const f = (x) => (typeof x === "number" && Number.isFinite(x) ? Number(x.toPrecision(4)).toString() : "—");
  switch (name) {
    case "claimed":
      return `claimed by worker ${ev.worker ?? "?"} (attempt ${ev.attempt ?? "?"})`;
    case "start":
      if (ev.kind === "coarse") {
        const chosen = Object.entries(ev.chosen || {}).map(([k, v]) => `${GROUPS[k]?.symbol || k} ${f(v)}`).join(", ");
        return `coarse start: best of ${(ev.points || []).length} constant settings is ${chosen} (selection estimate ${f(ev.select_loss)})`;
      }
      return `starting from the init values (selection estimate ${f(ev.select_loss)})`;
    case "meta":
      if (ev.diverged) return `meta-iteration ${ev.meta_iteration + 1}/${ev.meta_iterations}: training diverged`;
      return `meta-iteration ${ev.meta_iteration + 1}/${ev.meta_iterations}: val loss ${f(ev.val_loss)}, train loss ${f(ev.train_loss)}, selection ${f(ev.select_loss)} (best ${f(ev.best_select_loss)}), |∇| ${f(ev.grad_norm)}`;
    case "checkpoint":
      return `checkpoint ${ev.file ?? ""} saved`;
    case "evaluation":
      return "evaluating initial and tuned hyperparameters on held-out training seeds";
    case "finished":
      return `tuning ${ev.status ?? "finished"}`;
    case "lease_expired":
      return `worker lost; job ${ev.state} again (attempt ${ev.attempt})`;
    case "attempt_failed":
      return `attempt failed, will retry: ${ev.reason ?? ""}`;
    case "released":
      return "handed back by its worker; queued again";
    case "done":
      return `job ${ev.state}${ev.reason ? `: ${ev.reason}` : ""}`;
    default:
      return null;
  }
}
