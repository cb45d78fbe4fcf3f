// Building the page safely, and formatting numbers and times.
//
// Every string from the server (job names, specs, errors, file names) reaches the page as a
// text node or a property such as `textContent`: nothing here parses HTML, so a job named
// `<img src=x onerror=...>` shows as those characters.

const PROPS = new Set(["value", "checked", "disabled", "hidden", "selected", "open", "indeterminate"]);

/** `h("a", {href: "#/jobs", class: "x"}, "text", child)`: an element; strings become text. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (PROPS.has(key)) el[key] = value;
    else if (key === "href" || key === "src") el.setAttribute(key, safeUrl(value));
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, ...children);
  return el;
}

/** Append children (nodes, strings, numbers, nested arrays; null, undefined, false and ""
 * are skipped: the DOM's own append would write "null"). */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false || child === "") continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace `el`'s children (as `append` takes them). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

/** Only in-app fragments, same-origin paths and `blob:` URLs this page made. */
export function safeUrl(url) {
  const s = String(url);
  if (s.startsWith("#") || (s.startsWith("/") && !s.startsWith("//")) || s.startsWith("blob:")) {
    return s;
  }
  return "#";
}

export const enc = encodeURIComponent;

/** A number with `digits` significant digits ("—" when missing or not finite). */
export function num(x, digits = 4) {
  if (x === null || x === undefined || typeof x !== "number" || !Number.isFinite(x)) return "—";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e6) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

export function pct(x, digits = 1) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "—";
  return `${(100 * x).toFixed(digits)}%`;
}

/** `mean ± std` of an evaluation figure. */
export function meanStd(mean, std, fmt = num) {
  if (typeof mean !== "number") return "—";
  if (typeof std !== "number" || !(std > 0)) return fmt(mean);
  return `${fmt(mean)} ± ${fmt === num ? num(std, 2) : fmt(std)}`;
}

/** Seconds as `1h02m`, `3m05s`, `12s`, `0.8s`. */
export function duration(s) {
  if (typeof s !== "number" || !Number.isFinite(s) || s < 0) return "—";
  if (s < 10) return `${s.toFixed(1)}s`;
  const t = Math.round(s);
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = t % 60;
  if (hh) return `${hh}h${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m${String(ss).padStart(2, "0")}s`;
  return `${ss}s`;
}

export function parseTime(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isFinite(t) ? t : null;
}

/** "3 min ago" for an ISO time (the full time goes in a `title`). */
export function ago(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

export function localTime(iso) {
  const t = parseTime(iso);
  return t === null ? "—" : new Date(t).toLocaleString();
}

export function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function stateBadge(state) {
  return h("span", { class: `badge state-${String(state).replace(/[^a-z]/g, "")}`, "data-testid": "state" }, state);
}

/** A progress bar (`value` in [0, 1]) with its text. */
export function bar(value, label, testid) {
  const v = Math.max(0, Math.min(1, Number(value) || 0));
  const fill = h("span", { class: "bar-fill" });
  fill.style.width = `${(100 * v).toFixed(1)}%`;
  return h(
    "span",
    { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(100 * v)), "aria-label": label || "progress", "data-testid": testid },
    h("span", { class: "bar-track" }, fill),
    label ? h("span", { class: "bar-label" }, label) : null,
  );
}

/** A short-lived message at the bottom of the page. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = h("div", { class: `toast ${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), 6000);
}

/** A box describing an error (an `ApiError` shows the problem document's fields). */
export function errorBox(err, title) {
  const problem = err && err.problem;
  const box = h("div", { class: "box error", role: "alert", "data-testid": "error" });
  append(box, h("strong", {}, title || (problem && problem.title) || "Error"));
  const detail = problem ? problem.detail || problem.title : String((err && err.message) || err);
  if (detail) append(box, h("p", {}, detail));
  if (problem && Array.isArray(problem.errors) && problem.errors.length > 1) {
    append(
      box,
      h("ul", {}, problem.errors.map((e) => h("li", {}, h("code", {}, e.field || "body"), ": ", e.message || "",
        "received" in e ? ` (received: ${JSON.stringify(e.received)})` : ""))),
    );
  }
  return box;
}

/** A `<table>` from column titles and rows of cells (nodes or strings). */
export function table(columns, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
  );
}

/** Save `content` (a Blob or text) as a file through a temporary `blob:` link. */
export function download(content, filename, type = "application/octet-stream") {
  const blob = content instanceof Blob ? content : new Blob([content], { type });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Copy text to the clipboard (a toast says whether it worked). */
export async function copyText(text, what = "Copied") {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} to the clipboard`);
  } catch {
    toast("Copying needs clipboard access; select the text instead", "warn");
  }
}

/** Wait `ms`, or less when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

/** Run `fn` every `ms` while the page is visible, until `signal` aborts. */
export function every(ms, fn, signal) {
  (async () => {
    while (!signal.aborted) {
      await sleep(ms, signal);
      if (signal.aborted) return;
      if (document.hidden) continue;
      try {
        await fn();
      } catch (err) {
        if (!signal.aborted) console.warn("refresh failed", err);
      }
    }
  })();
}
