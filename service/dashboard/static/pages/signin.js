// Sign in with an API key (or, on a loopback server that allows it, without one).

import { errorOf, session } from "../api.js";
import { append, fill, h } from "../dom.js";

async function probe(headers) {
  const resp = await fetch("/v1/jobs?limit=1", { headers: { Accept: "application/json", ...headers }, cache: "no-store", credentials: "omit" });
  if (resp.ok) return null;
  return errorOf(resp);
}

export async function signinPage(main) {
  const flash = session.takeFlash();
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    autocapitalize: "off",
    placeholder: "rhp_…",
    required: true,
    "aria-describedby": "key-help",
  });
  const show = h("input", { type: "checkbox", id: "show-key", onchange: () => { input.type = show.checked ? "text" : "password"; } });
  const message = h("div", { class: "box error", role: "alert", "data-testid": "signin-error", hidden: true });
  const submit = h("button", { type: "submit", class: "btn primary" }, "Sign in");
  const anon = h("div", { class: "anon", hidden: true });

  function fail(text) {
    fill(message, h("p", {}, text));
    message.hidden = false;
  }

  // method=post: should the script fail, a browser never puts the key into a URL
  const form = h(
    "form",
    { class: "signin card", method: "post", action: "#", autocomplete: "off", "data-testid": "signin-form" },
    h("h1", {}, "Sign in"),
    flash ? h("div", { class: "box warn", role: "status", "data-testid": "signin-flash" }, flash) : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h("label", { class: "inline" }, show, " show the key"),
    h(
      "p",
      { id: "key-help", class: "muted" },
      "Create one with ",
      h("code", {}, "revhpo keys create --owner NAME"),
      ". The key stays in this browser tab only (session storage, gone when the tab closes) and is sent as an ",
      h("code", {}, "Authorization"),
      " header; it never appears in a URL.",
    ),
    message,
    submit,
    anon,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    message.hidden = true;
    if (!key) {
      fail("Paste an API key.");
      return;
    }
    submit.disabled = true;
    submit.textContent = "Checking…";
    try {
      const err = await probe({ Authorization: `Bearer ${key}` });
      if (err) {
        fail(err.status === 401
          ? `The server refused this key: ${err.problem.detail || "unknown or revoked"}.`
          : `Could not sign in: ${err.message}`);
        return;
      }
      session.signIn(key);
      input.value = "";
      location.hash = "#/jobs";
    } catch (err) {
      fail(`The server could not be reached: ${err.message}`);
    } finally {
      submit.disabled = false;
      submit.textContent = "Sign in";
    }
  });
  append(main, h("div", { class: "signin-wrap" }, form));
  input.focus();

  // A loopback-bound `revhpo serve` may accept requests without a key (as the user `local`).
  try {
    if ((await probe({})) === null) {
      append(anon,
        h("p", { class: "muted" }, "This server accepts requests without a key from this machine, as the user “local”."),
        h("button", {
          type: "button",
          class: "btn",
          "data-testid": "signin-anonymous",
          onclick: () => {
            session.signInAnonymous();
            location.hash = "#/jobs";
          },
        }, "Continue without a key"),
      );
      anon.hidden = false;
    }
  } catch {
    /* unreachable server: the form reports it on submit */
  }
}
