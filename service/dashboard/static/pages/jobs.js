// The signed-in owner's jobs: state filter, cursor pagination, live refresh, pick to compare.

import { api } from "../api.js";
import { TERMINAL, ago, append, bar, duration, enc, every, fill, h, localTime, num, parseTime, pct, shortId, stateBadge } from "../dom.js";
import { compareSelection } from "../selection.js";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE_SIZES = [20, 50, 100];
const REFRESH_MS = 3000;

// The cursors of the pages before the current one, per filter (the API pages forwards only).
const trail = { filter: "", cursors: [] };

function hashFor({ states, limit, cursor }) {
  const q = new URLSearchParams();
  for (const s of states) q.append("state", s);
  if (limit !== PAGE_SIZES[0]) q.set("limit", String(limit));
  if (cursor) q.set("cursor", cursor);
  const qs = q.toString();
  return `#/jobs${qs ? `?${qs}` : ""}`;
}

/** Progress cell: meta-iterations done of planned, and the pass in flight. */
export function progressCell(job) {
  const meta = job.progress?.meta;
  const step = job.progress?.step;
  if (job.state === "queued") return h("span", { class: "muted" }, job.attempts > 0 ? "queued again" : "waiting for a worker");
  if (!meta && !step) return h("span", { class: "muted" }, job.state === "running" ? "starting…" : "—");
  const parts = [];
  if (meta && typeof meta.meta_iterations === "number") {
    const done = (meta.meta_iteration ?? -1) + 1;
    parts.push(bar(done / Math.max(1, meta.meta_iterations), `${done} / ${meta.meta_iterations}`, "job-progress"));
  }
  if (job.state === "running" && step && step.phase) {
    const what = step.phase === "compile" ? "compiling" : `${step.phase} ${step.step ?? "?"}/${step.steps ?? "?"}`;
    parts.push(h("span", { class: "muted small" }, what));
  }
  return parts;
}

function timeCell(job) {
  if (job.state === "running") {
    const eta = job.progress?.meta?.eta_s;
    return typeof eta === "number" ? `ETA ${duration(eta)}` : "running";
  }
  const start = parseTime(job.started_at);
  const end = parseTime(job.finished_at);
  if (start !== null && end !== null) return duration((end - start) / 1000);
  return "—";
}

/** A finished job's held-out test loss (and accuracy) after tuning, from its summary; the
 * figure is shown only once the job has ended, as in its final report. */
function testCell(job) {
  const fin = job.summary?.final;
  const ini = job.summary?.initial;
  const title = fin ? `mean over ${job.summary.eval_seeds ?? "?"} held-out training seed(s); before tuning ${num(ini?.test_loss)}` : undefined;
  return h(
    "td",
    { class: "num", "data-testid": "test-loss", title },
    fin ? num(fin.test_loss) : "—",
    fin && typeof fin.test_acc === "number" ? h("div", { class: "muted small" }, pct(fin.test_acc)) : null,
  );
}

function row(job, selection, onSelect) {
  const meta = job.progress?.meta || {};
  const checkbox = h("input", {
    type: "checkbox",
    checked: selection.has(job.id),
    "aria-label": `Compare ${job.name || job.id}`,
    "data-testid": "select-job",
    onchange: (e) => onSelect(job.id, e.target.checked),
  });
  return h(
    "tr",
    { "data-testid": "job-row", "data-job-id": job.id, "data-state": job.state },
    h("td", {}, checkbox),
    h(
      "td",
      { class: "name" },
      h("a", { href: `#/jobs/${enc(job.id)}`, "data-testid": "job-link" }, job.name || "(unnamed)"),
      h("div", { class: "mono muted small", title: job.id }, shortId(job.id)),
    ),
    h("td", {}, stateBadge(job.state), job.cancel_requested && !TERMINAL.has(job.state) ? h("div", { class: "small warn-text" }, "cancel requested") : null),
    h("td", { class: "progress-cell" }, progressCell(job)),
    h("td", { class: "num", "data-testid": "val-loss" }, num(meta.val_loss)),
    h("td", { class: "num" }, num(meta.best_select_loss)),
    testCell(job),
    h("td", {}, timeCell(job)),
    h("td", { class: "num" }, `${job.attempts}/${job.max_attempts}`),
    h("td", { title: localTime(job.created_at) }, ago(job.created_at)),
  );
}

export async function jobsPage(main, { query, signal }) {
  const states = query.getAll("state").filter((s) => STATES.includes(s));
  const limit = PAGE_SIZES.includes(Number(query.get("limit"))) ? Number(query.get("limit")) : PAGE_SIZES[0];
  const cursor = query.get("cursor") || null;
  const filterKey = `${states.join(",")}|${limit}`;
  if (trail.filter !== filterKey || !cursor) trail.cursors = [];
  trail.filter = filterKey;
  const selection = compareSelection();

  const chips = h(
    "div",
    { class: "chips", role: "group", "aria-label": "Filter by state" },
    h("a", { class: "chip", href: hashFor({ states: [], limit }), "aria-pressed": String(states.length === 0), "data-testid": "filter-all" }, "all"),
    STATES.map((s) => {
      const on = states.includes(s);
      const next = on ? states.filter((x) => x !== s) : [...states, s];
      return h("a", { class: `chip chip-${s}`, href: hashFor({ states: next, limit }), "aria-pressed": String(on), "data-testid": `filter-${s}` }, s);
    }),
  );
  const size = h(
    "select",
    { "aria-label": "Jobs per page", onchange: (e) => { location.hash = hashFor({ states, limit: Number(e.target.value) }); } },
    PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === limit }, `${n} per page`)),
  );
  const live = h("span", { class: "live muted small", "data-testid": "live" }, "");
  const selected = h("span", { "data-testid": "selected-count" });
  const compareBtn = h("a", { class: "btn primary small", href: "#/compare", "data-testid": "compare-selected" }, "Compare");
  const clearBtn = h("button", { type: "button", class: "btn small", onclick: () => { selection.clear(); refreshSelection(); body.querySelectorAll("input[type=checkbox]").forEach((c) => { c.checked = false; }); } }, "Clear");
  const compareBar = h("div", { class: "compare-bar" }, selected, compareBtn, clearBtn);
  const body = h("tbody", {});
  const tableEl = h(
    "table",
    { class: "jobs", "data-testid": "jobs-table" },
    h("thead", {}, h("tr", {}, ["", "Name", "State", "Meta-iterations", "Val loss", "Best sel. loss", "Test loss", "Time", "Attempts", "Created"].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  const empty = h("div", { class: "empty", "data-testid": "jobs-empty", hidden: true });
  const newer = h("a", { class: "btn small", "data-testid": "page-newer" }, "← Newer");
  const older = h("a", { class: "btn small", "data-testid": "page-older" }, "Older →");
  const pageLabel = h("span", { class: "muted small" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages of jobs" }, newer, pageLabel, older);

  function refreshSelection() {
    const n = selection.size;
    selected.textContent = n ? `${n} selected` : "Tick two or more jobs to compare them";
    compareBtn.hidden = n < 2;
    clearBtn.hidden = n === 0;
    compareBtn.setAttribute("href", `#/compare?ids=${[...selection.ids()].map(enc).join(",")}`);
  }
  function onSelect(id, on) {
    if (on) selection.add(id);
    else selection.delete(id);
    refreshSelection();
  }

  append(main,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), live),
    h("div", { class: "toolbar" }, chips, size),
    compareBar,
    h("div", { class: "table-wrap" }, tableEl),
    empty,
    pager,
  );
  refreshSelection();

  const signatures = new Map();
  let nextCursor = null;
  async function load() {
    const q = new URLSearchParams({ limit: String(limit) });
    for (const s of states) q.append("state", s);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/jobs?${q}`, { signal });
    if (signal.aborted) return;
    nextCursor = page.next_cursor;
    const rows = [];
    for (const job of page.items) {
      const sig = JSON.stringify(job);
      const old = body.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
      rows.push(old && signatures.get(job.id) === sig ? old : row(job, selection, onSelect));
      signatures.set(job.id, sig);
    }
    fill(body, ...rows);
    const pageNo = trail.cursors.length + 1;
    empty.hidden = page.items.length > 0;
    tableEl.hidden = page.items.length === 0;
    if (page.items.length === 0) {
      fill(empty,
        cursor ? "No more jobs." : states.length ? `No ${states.join(" or ")} jobs.` : "No jobs yet. ",
        !cursor && !states.length ? h("a", { href: "#/new" }, "Submit one") : null,
        !cursor && !states.length ? " here or with " : null,
        !cursor && !states.length ? h("code", {}, "revhpo submit spec.yaml") : null,
      );
    }
    pageLabel.textContent = `page ${pageNo}`;
    older.hidden = !nextCursor;
    older.setAttribute("href", nextCursor ? hashFor({ states, limit, cursor: nextCursor }) : "#");
    newer.hidden = !cursor;
    live.textContent = `● live · updated ${new Date().toLocaleTimeString()}`;
  }
  older.addEventListener("click", () => {
    trail.cursors.push(cursor);
  });
  newer.addEventListener("click", (e) => {
    e.preventDefault();
    const prev = trail.cursors.pop() || null;
    location.hash = hashFor({ states, limit, cursor: prev });
  });

  await load();
  every(REFRESH_MS, load, signal);
}
