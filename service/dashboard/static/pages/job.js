// One job: live progress over its event stream, then its result — learned schedules per layer,
// the meta-learning curve, training curves, the exactness certificate, plots and downloads.

import { api, apiBlob } from "../api.js";
import { color, lineChart, range } from "../charts.js";
import {
  TERMINAL, append, bar, copyText, download, duration, enc, errorBox, every, fill, h, localTime, meanStd, num, parseTime, pct, stateBadge, toast,
} from "../dom.js";
import {
  CURVE_SERIES, GROUPS, WHICH, certificates, change, curveArrays, describeEvent, evaluation, metaCurveFromHistory,
  metaRowOfEvent, schedule, variesOverSteps,
} from "../results.js";
import { followEvents } from "../sse.js";

const LOG_MAX = 300;
const CURVE_COLORS = { select: color(0), best: color(9), objective: color(1), val: color(4), train: color(2) };

function section(title, testid, ...children) {
  return h("section", { class: "card", "data-testid": testid }, h("h2", {}, title), ...children);
}

function fact(label, value, testid) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", { "data-testid": testid }, value));
}

export async function jobPage(main, { params: [jobId], signal }) {
  const job = await api(`/v1/jobs/${enc(jobId)}`, { signal });
  const st = {
    curve: new Map(),
    lastMeta: job.progress?.meta || null,
    lastMetaAt: Date.now(),
    step: job.progress?.step || null,
    start: null,
    log: [],
    result: null,
    artifacts: [],
    resultLoading: false,
    stream: "connecting",
    streamError: null,
  };

  // ---------------------------------------------------------------- the page's skeleton
  const title = h("h1", { "data-testid": "job-name" });
  const badgeSlot = h("span", {});
  const actions = h("div", { class: "actions" });
  const facts = h("dl", { class: "facts" });
  const errorSlot = h("div", {});
  const streamLabel = h("span", { class: "stream small", "data-testid": "stream-status" });
  const progressBody = h("div", { class: "progress-body" });
  const curveNote = h("p", { class: "muted small", "data-testid": "curve-note" });
  const curve = lineChart({
    title: "Meta-learning curve",
    note: "loss per meta-iteration (iterate 0 is the start)",
    xLabel: "meta-iteration",
    yLabel: "loss",
    x: [],
    series: CURVE_SERIES.map(([key, label]) => ({ label, values: [], color: CURVE_COLORS[key], dash: key === "best" ? [4, 4] : undefined, width: key === "select" ? 2.5 : 1.5 })),
    yLog: true,
    testid: "meta-curve",
    csvName: `${jobId}-meta-curve`,
    xMax: () => plannedIterations(),
  });
  const summarySlot = h("div", {}); // the result's key figures, first thing on a finished job
  const resultSlot = h("div", { class: "result", "data-testid": "result" });
  const logList = h("ol", { class: "log", "data-testid": "event-log" });
  const logSummary = h("summary", {}, "Events");
  const specPre = h("pre", { class: "spec", "data-testid": "spec" }, JSON.stringify(job.spec, null, 2));

  append(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")),
    h("div", { class: "page-head" }, h("div", {}, title, h("div", { class: "mono muted small" }, job.id, " ",
      h("button", { type: "button", class: "link small", onclick: () => copyText(job.id, "Job id copied") }, "copy"))), badgeSlot, actions),
    facts,
    errorSlot,
    summarySlot,
    h("section", { class: "card", "data-testid": "progress" }, h("div", { class: "card-head" }, h("h2", {}, "Progress"), streamLabel), progressBody),
    h("section", { class: "card" }, curve.el, curveNote),
    resultSlot,
    h("details", { class: "card" }, logSummary, logList),
    h("details", { class: "card" }, h("summary", {}, "Spec"),
      h("div", { class: "section-tools" },
        h("button", { type: "button", class: "btn small", onclick: () => copyText(JSON.stringify(job.spec, null, 2), "Spec copied") }, "Copy JSON"),
        h("button", { type: "button", class: "btn small", onclick: () => {
          sessionStorage.setItem("revhpo.draft", JSON.stringify(job.spec, null, 2));
          location.hash = "#/new";
        } }, "New job from this spec")),
      specPre),
  );

  // ---------------------------------------------------------------- rendering
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    setTimeout(() => {
      pending = false;
      if (!signal.aborted) render();
    }, 80);
  }

  function plannedIterations() {
    return st.lastMeta?.meta_iterations ?? job.spec?.meta?.iterations ?? null;
  }

  function renderHead() {
    title.textContent = job.name || "(unnamed job)";
    // the tab's title shows progress, so a background tab says when the job is done
    const N = plannedIterations();
    const done = st.lastMeta ? (st.lastMeta.meta_iteration ?? -1) + 1 : 0;
    const mark = job.state === "running" && N ? `(${done}/${N}) ` : job.state === "succeeded" ? "✓ " : TERMINAL.has(job.state) ? `${job.state}: ` : "";
    document.title = `${mark}${job.name || job.id} · revhpo`;
    fill(badgeSlot, stateBadge(job.state));
    const terminal = TERMINAL.has(job.state);
    const started = parseTime(job.started_at);
    const finished = parseTime(job.finished_at);
    fill(facts,
      fact("attempts", `${job.attempts} of ${job.max_attempts}`, "attempts"),
      job.worker ? fact("worker", job.worker) : null,
      fact("created", localTime(job.created_at)),
      fact("started", localTime(job.started_at)),
      terminal ? fact("finished", localTime(job.finished_at)) : null,
      started !== null && finished !== null ? fact("run time", duration((finished - started) / 1000)) : null,
    );
    fill(errorSlot, job.error
      ? h("div", { class: `box ${job.state === "failed" ? "error" : "warn"}`, role: "alert", "data-testid": "job-error" },
        h("strong", {}, job.state === "failed" ? "Failed" : "Last attempt failed"), h("p", {}, job.error))
      : null,
    st.streamError ? errorBox(st.streamError, "Progress stream unavailable") : null);
    renderActions();
  }

  let confirming = false;
  function renderActions() {
    const out = [];
    if (!TERMINAL.has(job.state)) {
      if (job.cancel_requested) {
        out.push(h("span", { class: "muted small", "data-testid": "cancel-requested" }, "Cancel requested: the job stops at its next meta-iteration"));
      } else if (confirming) {
        out.push(
          h("span", { class: "small" }, "Cancel this job?"),
          h("button", { type: "button", class: "btn danger small", "data-testid": "confirm-cancel", onclick: doCancel }, "Yes, cancel it"),
          h("button", { type: "button", class: "btn small", onclick: () => { confirming = false; renderActions(); } }, "No"),
        );
      } else {
        out.push(h("button", { type: "button", class: "btn danger", "data-testid": "cancel-job", onclick: () => { confirming = true; renderActions(); } }, "Cancel job"));
      }
    }
    fill(actions, ...out);
  }

  async function doCancel() {
    confirming = false;
    try {
      Object.assign(job, await api(`/v1/jobs/${enc(job.id)}/cancel`, { method: "POST", signal }));
      toast(job.state === "cancelled" ? "Job cancelled" : "Cancel requested");
    } catch (err) {
      if (!signal.aborted) toast(`Cancel failed: ${err.message}`, "error");
    }
    render();
  }

  function renderProgress() {
    const N = plannedIterations();
    const meta = st.lastMeta;
    const done = meta ? (meta.meta_iteration ?? -1) + 1 : 0;
    const step = job.state === "running" ? st.step : null;
    let frac = N ? done / N : 0;
    let stepText = "";
    if (step?.phase === "compile") {
      stepText = "compiling the training steps";
    } else if (step && typeof step.meta_iteration === "number" && step.meta_iteration >= done && N) {
      // the pass in flight: forward is the first half of a meta-iteration, reverse the second
      const s = Number(step.step) || 0;
      const total = Math.max(1, Number(step.steps) || 1);
      const within = step.phase === "forward" ? 0.5 * (s / total) : step.phase === "reverse" ? 0.5 + 0.5 * (s / total) : 0;
      frac = Math.min(1, (step.meta_iteration + within) / N);
      stepText = `meta-iteration ${step.meta_iteration + 1}: ${step.phase} pass, step ${s} of ${total}`;
    }
    if (job.state === "succeeded") frac = 1;
    const eta = meta && typeof meta.eta_s === "number" && job.state === "running"
      ? Math.max(0, meta.eta_s - (Date.now() - st.lastMetaAt) / 1000)
      : null;
    const phase = {
      queued: job.attempts > 0 ? "queued again (resumes from its last checkpoint)" : "queued: waiting for a worker",
      running: stepText || (meta ? "between meta-iterations" : "starting (importing, building the net, coarse start)"),
      succeeded: "finished",
      failed: "failed",
      cancelled: "cancelled",
    }[job.state] || job.state;
    fill(progressBody,
      h("div", { class: "progress-main" },
        bar(frac, N ? `${done} / ${N} meta-iterations` : `${done} meta-iterations`, "meta-progress"),
        h("span", { class: "muted", "data-testid": "phase" }, phase),
        eta !== null ? h("span", { class: "eta", "data-testid": "eta" }, `ETA ${duration(eta)}`) : null),
      h("dl", { class: "stats" },
        fact("meta-iterations done", N ? `${done} of ${N}` : String(done), "meta-done"),
        fact("selection estimate", num(meta?.select_loss), "stat-select"),
        fact("best so far", num(meta?.best_select_loss), "stat-best"),
        fact("validation loss", num(meta?.val_loss), "stat-val"),
        fact("training loss", num(meta?.train_loss), "stat-train"),
        fact("val. accuracy", pct(meta?.val_acc), "stat-val-acc"),
        fact("hypergradient norm", num(meta?.grad_norm), "stat-grad"),
        fact("last meta-iteration", typeof meta?.duration_s === "number"
          ? `${duration(meta.duration_s)}${typeof meta.first_iteration_s === "number" ? " (with compiling)" : ""}`
          : "—")),
      st.start ? h("p", { class: "muted small", "data-testid": "start-line" }, describeEvent("start", st.start)) : null,
    );
    streamLabel.textContent = {
      connecting: "connecting…",
      "reconnecting-now": "reconnecting…",
      live: "● live",
      reconnecting: "connection lost: reconnecting…",
      ended: "stream ended",
      error: "stream unavailable",
    }[st.stream] || st.stream;
    streamLabel.dataset.state = st.stream;
  }

  function renderCurve() {
    const rows = st.result ? metaCurveFromHistory(st.result) : st.curve;
    const { x, series } = curveArrays(rows);
    curve.update(x, series.map((s) => ({ ...s, color: CURVE_COLORS[s.key], dash: s.key === "best" ? [4, 4] : undefined, width: s.key === "select" ? 2.5 : 1.5 })));
    const sel = st.result?.selection;
    curveNote.textContent = sel
      ? `Returned iterate ${sel.iteration} (selection estimate ${num(sel.select_loss)}): ${sel.reason || sel.rule || ""}`
      : x.length ? "The selection estimate is the mean loss on the validation set's select part, after plain training on held-out seeds." : "No meta-iteration finished yet.";
  }

  function renderLog() {
    logSummary.textContent = `Events (${st.log.length}${st.log.length >= LOG_MAX ? ", latest" : ""})`;
    fill(logList, ...st.log.map((e) => h("li", {},
      h("span", { class: "mono muted" }, e.id ? `#${e.id} ` : ""),
      e.text,
      h("span", { class: "mono muted" }, typeof e.at === "number" ? ` · ${new Date(e.at * 1000).toLocaleTimeString()}` : ""))));
  }

  function render() {
    renderHead();
    renderProgress();
    renderCurve();
    renderLog();
    if (job.state === "succeeded" && !st.result && !st.resultLoading) loadResult();
  }

  // ---------------------------------------------------------------- the result
  async function loadResult() {
    st.resultLoading = true;
    fill(resultSlot, h("p", { class: "muted" }, "Loading the result…"));
    try {
      const doc = await api(`/v1/jobs/${enc(job.id)}/result`, { signal });
      st.result = doc.result || {};
      st.artifacts = doc.artifacts || [];
      renderResult();
      renderCurve();
    } catch (err) {
      if (!signal.aborted) fill(resultSlot, errorBox(err, "The result could not be loaded"));
    } finally {
      st.resultLoading = false;
    }
  }

  function renderResult() {
    const r = st.result;
    fill(summarySlot, keyFigures(r));
    fill(resultSlot,
      schedulesSection(r),
      trajectorySection(r),
      trainingCurves(r),
      certificateSection(r),
      plotsSection(),
    );
  }

  function keyFigures(r) {
    const ev = evaluation(r);
    const rows = [
      ["validation loss", "val_loss", num],
      ["test loss", "test_loss", num],
      ["test accuracy", "test_acc", pct],
      ["training loss", "train_loss", num],
    ];
    const sel = r.selection || {};
    const t = r.timings || {};
    return section(
      "Result",
      "key-figures",
      h("p", {}, h("strong", {}, `Tuning ${r.status || "finished"}`), r.stop_reason ? ` (${r.stop_reason})` : "",
        ` · ${r.n_hyperparameters ?? "?"} hyperparameters tuned · ${r.meta_iterations ?? "?"} meta-iterations · ${duration(t.total_s)}`),
      ev
        ? h("table", { class: "figures", "data-testid": "evaluation" },
          h("caption", {}, `Held-out evaluation: mean ± std over ${ev.seeds ?? "?"} training seeds the tuner never saw`),
          h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { scope: "col" }, "initial"), h("th", { scope: "col" }, "tuned"), h("th", { scope: "col" }, "change"))),
          h("tbody", {}, rows.map(([label, key, fmt]) => h("tr", { "data-metric": key },
            h("th", { scope: "row" }, label),
            h("td", { class: "num" }, meanStd(ev.initial[`${key}_mean`], ev.initial[`${key}_std`], fmt)),
            h("td", { class: "num strong" }, meanStd(ev.final[`${key}_mean`], ev.final[`${key}_std`], fmt)),
            h("td", { class: "num" }, change(ev.initial[`${key}_mean`], ev.final[`${key}_mean`]))))))
        : h("p", { class: "muted" }, "No held-out evaluation in this result."),
      sel.reason ? h("p", { class: "small", "data-testid": "selection" }, h("strong", {}, "Selection: "), sel.reason) : null,
      h("div", { class: "section-tools" },
        h("span", { class: "muted small" }, "Download: "),
        h("button", { type: "button", class: "btn small", onclick: () => download(JSON.stringify(r, null, 1), `${job.id}-result.json`, "application/json") }, "result.json"),
        ["csv", "keras", "npz"].map((fmt) => h("button", {
          type: "button",
          class: "btn small",
          "data-testid": `export-${fmt}`,
          onclick: () => exportSchedules(fmt),
        }, `schedules (${fmt === "keras" ? "Keras JSON" : fmt.toUpperCase()})`))),
    );
  }

  async function exportSchedules(fmt) {
    try {
      const blob = await apiBlob(`/v1/jobs/${enc(job.id)}/result?format=${fmt}`, { signal });
      download(blob, `${job.id}-schedules.${fmt === "keras" ? "json" : fmt}`);
    } catch (err) {
      toast(`Export failed: ${err.message}`, "error");
    }
  }

  function schedulesSection(r) {
    const which = h("select", { "aria-label": "Which iterate", "data-testid": "which-iterate" },
      Object.entries(WHICH).map(([k, label]) => h("option", { value: k }, label)));
    const overlay = h("input", { type: "checkbox", "data-testid": "overlay-start" });
    const body = h("div", { class: "schedules" });
    const draw = () => fill(body, ...scheduleCharts(r, which.value, overlay.checked));
    which.addEventListener("change", draw);
    overlay.addEventListener("change", draw);
    draw();
    return section(
      "Learned schedules",
      "schedules",
      h("div", { class: "section-tools" }, which, h("label", { class: "inline small" }, overlay, " overlay the start (dashed)")),
      h("p", { class: "muted small" }, "Each hyperparameter at every training step, per layer (",
        h("code", {}, "hyperparameters.<iterate>.<group>.per_step_per_layer"), " of the result)."),
      body,
    );
  }

  function scheduleCharts(r, which, overlay) {
    const out = [];
    for (const [group, meta] of Object.entries(GROUPS)) {
      const s = schedule(r, group, which);
      if (!s) continue;
      const tunedAnywhere = ["final", "start", "initial", "last"].some((w) => r.hyperparameters?.[w]?.[group]?.tuned);
      if (!tunedAnywhere && group !== "learning_rate" && group !== "momentum") continue;
      const label = `${meta.symbol} (${meta.name}) · ${s.granularity}${s.tuned ? ", tuned" : ", fixed"}`;
      if (!variesOverSteps(s.columns) && group !== "learning_rate" && group !== "momentum") {
        out.push(h("div", { class: "schedule-table", "data-testid": `schedule-${group}` }, h("h3", {}, label),
          h("table", { class: "data" },
            h("thead", {}, h("tr", {}, s.layers.map((l) => h("th", { scope: "col" }, l)))),
            h("tbody", {}, h("tr", {}, s.columns.map((c) => h("td", { class: "num" }, num(c[0], 5))))))));
        continue;
      }
      const series = s.columns.map((values, l) => ({ label: `${meta.symbol} ${s.layers[l]}`, values, color: color(l) }));
      if (overlay && which !== "start") {
        const st0 = schedule(r, group, "start");
        st0?.columns.forEach((values, l) => series.push({ label: `${meta.symbol} ${st0.layers[l]} (start)`, values, color: color(l), dash: [6, 4], width: 1.25 }));
      }
      out.push(lineChart({
        title: label,
        note: WHICH[which],
        xLabel: "step",
        yLabel: meta.symbol,
        x: range(s.T),
        series,
        yLog: meta.log,
        height: 240,
        testid: `schedule-${group}`,
        csvName: `${job.id}-${group}-${which}`,
      }).el);
    }
    return out.length ? out : [h("p", { class: "muted" }, "This result holds no per-step schedules.")];
  }

  function trajectorySection(r) {
    // history[].hypers: mean, min and max of each tuned group at every meta-iteration
    const history = Array.isArray(r.history) ? r.history : [];
    const groups = Object.keys(GROUPS).filter((g) => history.some((rec) => rec.hypers?.[g]));
    if (!groups.length) return "";
    const x = history.map((rec) => rec.iteration);
    return section(
      "Hyperparameters per meta-iteration",
      "trajectory",
      h("p", { class: "muted small" }, "Mean, smallest and largest value over steps and layers of each tuned group, at the iterate each meta-iteration started from."),
      h("div", { class: "schedules" }, groups.map((g, i) => lineChart({
        title: `${GROUPS[g].symbol} (${GROUPS[g].name})`,
        xLabel: "meta-iteration",
        yLabel: GROUPS[g].symbol,
        x,
        series: ["mean", "min", "max"].map((k) => ({
          label: `${k}`,
          values: history.map((rec) => rec.hypers?.[g]?.[k] ?? null),
          color: color(i),
          dash: k === "mean" ? undefined : [4, 4],
          width: k === "mean" ? 2.5 : 1.25,
        })),
        yLog: GROUPS[g].log,
        height: 200,
        testid: `trajectory-${g}`,
        csvName: `${job.id}-${g}-per-meta-iteration`,
      }).el)),
    );
  }

  function trainingCurves(r) {
    const tc = r.training_curves;
    if (!tc || !Array.isArray(tc.final)) return "";
    const T = Math.max(tc.final.length, tc.initial?.length || 0);
    return section(
      "Training curves",
      "training-curves-section",
      lineChart({
        title: `Minibatch training loss per step (held-out seed ${tc.seed ?? "?"})`,
        xLabel: "step",
        yLabel: "loss",
        x: range(T),
        series: [
          { label: "initial hyperparameters", values: tc.initial || [], color: color(9), width: 1.5 },
          { label: "tuned hyperparameters", values: tc.final, color: color(0), width: 2.5 },
        ],
        yLog: true,
        testid: "training-curves",
        csvName: `${job.id}-training-curves`,
      }).el,
    );
  }

  function certificateSection(r) {
    const certs = certificates(r);
    const trained = certs.filter((c) => !c.diverged && "ok" in c);
    const bad = trained.filter((c) => !c.ok);
    const yes = (v) => (v === true ? "yes" : v === false ? "NO" : "—");
    const summary = trained.length === 0
      ? h("p", { class: "muted" }, "No reverse pass ran (no meta-iteration trained).")
      : bad.length === 0
        ? h("p", { class: "box ok", "data-testid": "certificate-summary" },
          `Exact: all ${trained.length} reverse passes recovered the initial weights w₀ and velocities v₀ bit for bit, and the information buffer emptied.`)
        : h("p", { class: "box error", "data-testid": "certificate-summary" },
          `Not exact in ${bad.length} of ${trained.length} meta-iterations (${bad.map((c) => c.iteration).join(", ")}).`);
    return section(
      "Exactness certificate",
      "certificate",
      summary,
      h("p", { class: "muted small" }, "Per meta-iteration: training run backwards from the final weights must give back the initial ones exactly; bits held is the information the buffer stored per weight, against the information-theoretic bound."),
      certs.length
        ? h("div", { class: "table-wrap scroll" }, h("table", { class: "data", "data-testid": "certificate-table" },
          h("thead", {}, h("tr", {}, ["meta-iteration", "exact", "w₀ exact", "v₀ exact", "buffer empty", "bits held / weight", "bound (bits)"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, certs.map((c) => h("tr", { class: c.diverged ? "muted" : c.ok === false ? "bad" : "" },
            h("td", {}, String(c.iteration)),
            h("td", {}, c.diverged ? "diverged" : yes(c.ok)),
            h("td", {}, yes(c.exact_w0)),
            h("td", {}, yes(c.exact_v0)),
            h("td", {}, yes(c.buffer_empty)),
            h("td", { class: "num" }, num(c.bits_held)),
            h("td", { class: "num" }, num(c.info_bound_bits)))))))
        : null,
    );
  }

  function plotsSection() {
    const pngs = st.artifacts.filter((a) => /\.(png|jpe?g|gif)$/i.test(a.name));
    const others = st.artifacts.filter((a) => !pngs.includes(a));
    const grid = h("div", { class: "plots", "data-testid": "plots" });
    for (const a of pngs) {
      const img = h("img", { alt: `${a.name} (the worker's plot)`, "data-testid": "plot-image", "data-name": a.name });
      const link = h("a", { class: "small", target: "_blank", rel: "noopener" }, "open");
      append(grid, h("figure", { class: "plot" }, img, h("figcaption", {}, a.name, " · ", link)));
      apiBlob(a.url, { signal }).then((blob) => {
        const url = URL.createObjectURL(blob);
        signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
        img.setAttribute("src", url);
        link.setAttribute("href", url);
      }).catch((err) => {
        if (!signal.aborted) img.replaceWith(h("p", { class: "box error small" }, `${a.name}: ${err.message}`));
      });
    }
    return section(
      "Plots",
      "plots-section",
      pngs.length ? grid : h("p", { class: "muted" }, "The worker uploaded no plots."),
      others.length
        ? h("p", { class: "small" }, "Files: ", others.map((a, i) => [i ? ", " : "", h("button", {
          type: "button",
          class: "link",
          onclick: async () => {
            try {
              download(await apiBlob(a.url, { signal }), a.name);
            } catch (err) {
              toast(`${a.name}: ${err.message}`, "error");
            }
          },
        }, a.name)]))
        : null,
    );
  }

  // ---------------------------------------------------------------- live updates
  function onEvent(name, ev, id) {
    switch (name) {
      case "claimed":
        job.state = "running";
        if (typeof ev.attempt === "number") job.attempts = Math.max(job.attempts, ev.attempt);
        if (ev.worker) job.worker = ev.worker;
        break;
      case "step":
        st.step = ev;
        break;
      case "start":
        st.start = ev;
        break;
      case "meta":
        if (typeof ev.meta_iteration === "number") st.curve.set(ev.meta_iteration, metaRowOfEvent(ev));
        st.lastMeta = ev;
        st.lastMetaAt = Date.now();
        break;
      case "lease_expired":
        if (ev.state) job.state = ev.state;
        break;
      case "released":
        job.state = "queued";
        break;
      case "done":
        if (ev.state) job.state = ev.state;
        break;
      case "end":
        Object.assign(job, ev);
        break;
      default:
        break;
    }
    const text = describeEvent(name, ev);
    if (text) {
      st.log.push({ id, text, at: ev.received_at });
      if (st.log.length > LOG_MAX) st.log.splice(0, st.log.length - LOG_MAX);
    }
    scheduleRender();
  }

  render();
  followEvents(job.id, {
    signal,
    onEvent,
    onStatus: (status, detail) => {
      st.stream = status;
      if (status === "error" && detail) st.streamError = detail;
      scheduleRender();
    },
  });
  // The snapshot as well (worker, attempts, cancel_requested), and a ticking ETA.
  every(5000, async () => {
    if (TERMINAL.has(job.state) && st.stream === "ended") return;
    const fresh = await api(`/v1/jobs/${enc(job.id)}`, { signal });
    if (!TERMINAL.has(job.state) || TERMINAL.has(fresh.state)) Object.assign(job, fresh);
    scheduleRender();
  }, signal);
  every(1000, () => {
    if (job.state === "running") renderProgress();
  }, signal);
}
