// The owner's uploaded datasets (cursor pagination) and an upload form.

import { api } from "../api.js";
import { ago, append, bytes, copyText, enc, errorBox, fill, h, localTime } from "../dom.js";

const PAGE = 20;
const trail = { cursors: [] };

function snippet(ds) {
  return `dataset: {kind: uploaded, id: ${ds.id}}`;
}

function row(ds) {
  return h(
    "tr",
    { "data-testid": "dataset-row", "data-dataset-id": ds.id },
    h("td", {}, h("span", { class: "name" }, ds.filename), h("div", { class: "mono muted small", title: ds.id }, ds.id)),
    h("td", {}, ds.format),
    h("td", { class: "num" }, String(ds.n_rows)),
    h("td", { class: "num" }, String(ds.n_features)),
    h("td", { class: "num" }, String(ds.n_classes)),
    h("td", { class: "num" }, bytes(ds.size)),
    h("td", { title: localTime(ds.created_at) }, ago(ds.created_at)),
    h("td", {}, h("button", { type: "button", class: "btn small", onclick: () => copyText(snippet(ds), "Spec line copied") }, "Copy spec line")),
  );
}

export async function datasetsPage(main, { query, signal }) {
  const cursor = query.get("cursor") || null;
  if (!cursor) trail.cursors = [];

  const file = h("input", { type: "file", id: "dataset-file", accept: ".npz,.csv", required: true, "data-testid": "dataset-file" });
  const status = h("div", { class: "upload-status", "data-testid": "upload-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn primary", "data-testid": "upload" }, "Upload");
  const form = h(
    "form",
    { class: "card upload", method: "post", action: "#" },
    h("h2", {}, "Upload a dataset"),
    h("p", { class: "muted small" }, h("code", {}, ".npz"), " with arrays ", h("code", {}, "x"), " (features) and ", h("code", {}, "y"),
      " (labels), or ", h("code", {}, ".csv"), " with the label in the last column. It is checked the way a job will read it."),
    h("label", { for: "dataset-file" }, "File"),
    file,
    submit,
    status,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = file.files?.[0];
    if (!f) {
      fill(status, h("p", { class: "box error" }, "Choose a .npz or .csv file first."));
      return;
    }
    const body = new FormData();
    body.append("file", f, f.name);
    submit.disabled = true;
    fill(status, h("p", { class: "muted" }, `Uploading ${f.name} (${bytes(f.size)})…`));
    try {
      const ds = await api("/v1/datasets", { method: "POST", body, signal });
      fill(status, h("div", { class: "box ok", "data-testid": "upload-ok" },
        h("p", {}, `Uploaded ${ds.filename}: ${ds.n_rows} rows, ${ds.n_features} features, ${ds.n_classes} classes.`),
        h("p", {}, "Use it in a spec: ", h("code", { "data-testid": "upload-snippet" }, snippet(ds)), " ",
          h("button", { type: "button", class: "btn small", onclick: () => copyText(snippet(ds), "Spec line copied") }, "Copy"))));
      form.reset();
      if (!cursor) await load();
    } catch (err) {
      if (!signal.aborted) fill(status, errorBox(err, "Upload refused"));
    } finally {
      submit.disabled = false;
    }
  });

  const body = h("tbody", {});
  const tableEl = h(
    "table",
    { class: "datasets", "data-testid": "datasets-table" },
    h("thead", {}, h("tr", {}, ["File", "Format", "Rows", "Features", "Classes", "Size", "Uploaded", ""].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  const empty = h("div", { class: "empty", "data-testid": "datasets-empty", hidden: true }, "No datasets uploaded yet.");
  const newer = h("a", { class: "btn small", href: "#/datasets", "data-testid": "datasets-newer" }, "← Newer");
  const older = h("a", { class: "btn small", "data-testid": "datasets-older" }, "Older →");
  newer.addEventListener("click", (e) => {
    e.preventDefault();
    const prev = trail.cursors.pop() || null;
    location.hash = prev ? `#/datasets?cursor=${enc(prev)}` : "#/datasets";
  });
  older.addEventListener("click", () => trail.cursors.push(cursor));

  append(main,
    h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
    form,
    h("section", { class: "card" }, h("h2", {}, "Your datasets"), h("div", { class: "table-wrap" }, tableEl), empty,
      h("nav", { class: "pager", "aria-label": "Pages of datasets" }, newer, older)),
  );

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/datasets?${q}`, { signal });
    fill(body, ...page.items.map(row));
    empty.hidden = page.items.length > 0;
    tableEl.hidden = page.items.length === 0;
    older.hidden = !page.next_cursor;
    older.setAttribute("href", page.next_cursor ? `#/datasets?cursor=${enc(page.next_cursor)}` : "#");
    newer.hidden = !cursor;
  }
  await load();
}
