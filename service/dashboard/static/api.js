// The API key and every call to the HTTP API.
//
// The key lives in this tab's sessionStorage only (gone when the tab closes, never shared with
// other tabs, never in a URL) and travels as `Authorization: Bearer <key>`. A 401 from any
// call (a revoked or unknown key) signs the tab out and says why.

const KEY = "revhpo.key";
const ANON = "revhpo.anonymous";
const FLASH = "revhpo.flash";
const PREFIX = "revhpo.";

export class ApiError extends Error {
  /** `problem`: the server's problem document (`title`, `detail`, `field`, `errors`). */
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || { title: `HTTP ${status}`, status };
  }
}

let signingOut = false;

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  get anonymous() {
    return sessionStorage.getItem(ANON) === "1";
  },
  get signedIn() {
    return Boolean(this.key) || this.anonymous;
  },
  /** A label for the header: the key's public prefix, never the secret. */
  get label() {
    if (this.anonymous) return "local user (no key)";
    const key = this.key || "";
    const m = /^(rhp_[0-9a-f]{12})_/.exec(key);
    return m ? `key ${m[1]}…` : "API key";
  },
  signIn(key) {
    clearTabState();
    sessionStorage.setItem(KEY, key);
  },
  signInAnonymous() {
    clearTabState();
    sessionStorage.setItem(ANON, "1");
  },
  /** Forget the key and everything this tab kept; reload on the sign-in page with `message`. */
  signOut(message) {
    if (signingOut) return;
    signingOut = true;
    clearTabState();
    if (message) sessionStorage.setItem(FLASH, message);
    history.replaceState(null, "", "/#/signin");
    location.reload();
  },
  takeFlash() {
    const msg = sessionStorage.getItem(FLASH);
    sessionStorage.removeItem(FLASH);
    return msg;
  },
};

/** Remove every revhpo entry of this tab's storage (key, selections, drafts). */
function clearTabState() {
  for (const name of Object.keys(sessionStorage)) {
    if (name.startsWith(PREFIX) && name !== FLASH) sessionStorage.removeItem(name);
  }
}

export function authHeaders(key = session.key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Parse an error response into an ApiError (problem+json when the server sent one). */
export async function errorOf(resp) {
  let problem = null;
  try {
    const type = resp.headers.get("content-type") || "";
    if (type.includes("json")) problem = await resp.json();
    else problem = { title: resp.statusText || `HTTP ${resp.status}`, detail: (await resp.text()).slice(0, 300) };
  } catch {
    problem = null;
  }
  return new ApiError(resp.status, problem);
}

/** The message shown when the server refuses the tab's key. */
export function refusedMessage(err) {
  const why = err?.problem?.detail ? ` (${err.problem.detail})` : "";
  return session.anonymous
    ? `Signed out: this server now needs an API key${why}. Sign in with one.`
    : `Signed out: the server refused your API key${why}. Sign in with a valid key.`;
}

/**
 * Call the API. Returns the parsed JSON (or the Response with `raw: true`).
 * Throws ApiError for an error answer; a 401 also signs the tab out.
 */
export async function api(path, { method = "GET", body, headers = {}, signal, raw = false, json } = {}) {
  const h = { Accept: "application/json", ...authHeaders(), ...headers };
  let payload = body;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  const resp = await fetch(path, {
    method,
    headers: h,
    body: payload,
    signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && session.signedIn) session.signOut(refusedMessage(err));
    throw err;
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

/** A file of the API (e.g. a plot) as a Blob, fetched with the key. */
export async function apiBlob(path, { signal } = {}) {
  const resp = await api(path, { signal, raw: true, headers: { Accept: "*/*" } });
  return resp.blob();
}
