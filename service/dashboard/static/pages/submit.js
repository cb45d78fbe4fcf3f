// Submit a job spec (YAML or JSON), as `revhpo submit` does.

import { api } from "../api.js";
import { append, enc, errorBox, fill, h } from "../dom.js";

const DRAFT = "revhpo.draft";

const EXAMPLE = `# A small job: MLP on scikit-learn's digits, learning-rate and momentum
# schedules per layer (4 knots each). See the README's "The job spec".
name: quick_digits
dataset:
  kind: digits
  split: {train: 1000, val: 397, test: 400, seed: 0}
net: {family: mlp, sizes: [50, 50], activation: tanh}
training: {steps: 50, batch_size: 50, seed: 0}
hyperparameters:
  learning_rate: {init: 0.3, tune: true, granularity: per_layer_knots, knots: 4}
  momentum: {init: 0.9, tune: true, granularity: per_layer_knots, knots: 4}
meta:
  iterations: 10
  seeds_per_iteration: 2
  eval_seeds: 5
`;

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

export async function submitPage(main, { signal }) {
  const text = h("textarea", {
    id: "spec-text",
    class: "mono",
    rows: "22",
    spellcheck: "false",
    "data-testid": "spec-text",
    value: sessionStorage.getItem(DRAFT) || EXAMPLE,
  });
  text.addEventListener("input", () => sessionStorage.setItem(DRAFT, text.value));
  const fileIn = h("input", { type: "file", accept: ".yaml,.yml,.json", "aria-label": "Load a spec file" });
  fileIn.addEventListener("change", async () => {
    const f = fileIn.files?.[0];
    if (f) {
      text.value = await f.text();
      sessionStorage.setItem(DRAFT, text.value);
    }
  });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn primary", "data-testid": "submit-job" }, "Submit");
  // One idempotency key per draft: a double click or a retried request queues the job once.
  let idemKey = newKey();
  text.addEventListener("input", () => { idemKey = newKey(); });

  const form = h(
    "form",
    { class: "card", method: "post", action: "#" },
    h("h1", {}, "New job"),
    h("p", { class: "muted small" }, "A job spec in YAML or JSON: the document ", h("code", {}, "revhpo tune"),
      " and ", h("code", {}, "revhpo submit"), " take. Datasets: ", h("code", {}, "digits"), ", ", h("code", {}, "synthetic"),
      ", or one you ", h("a", { href: "#/datasets" }, "uploaded"), "."),
    h("label", { for: "spec-text" }, "Spec"),
    text,
    h("div", { class: "section-tools" }, h("label", { class: "inline small" }, "Load a file: ", fileIn),
      h("button", { type: "button", class: "btn small", onclick: () => { text.value = EXAMPLE; sessionStorage.removeItem(DRAFT); } }, "Reset to the example")),
    status,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = text.value;
    const isJson = body.trim().startsWith("{");
    submit.disabled = true;
    fill(status, h("p", { class: "muted" }, "Validating and queueing…"));
    try {
      const job = await api("/v1/jobs", {
        method: "POST",
        body,
        headers: { "Content-Type": isJson ? "application/json" : "application/yaml", "Idempotency-Key": idemKey },
        signal,
      });
      sessionStorage.removeItem(DRAFT);
      location.hash = `#/jobs/${enc(job.id)}`;
    } catch (err) {
      if (!signal.aborted) fill(status, errorBox(err, "The spec was refused"));
    } finally {
      submit.disabled = false;
    }
  });
  append(main, form);
}
