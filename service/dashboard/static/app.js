// The dashboard's entry point: routes on the URL fragment (#/jobs, #/jobs/<id>, #/compare,
// #/datasets, #/new, #/signin), so the server only ever serves one page.

import { session } from "./api.js";
import { append, errorBox, fill, h } from "./dom.js";
import { comparePage } from "./pages/compare.js";
import { datasetsPage } from "./pages/datasets.js";
import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { signinPage } from "./pages/signin.js";
import { submitPage } from "./pages/submit.js";
import { compareSelection } from "./selection.js";

// [path pattern, page, its name (data-page), the nav entry it highlights]
const ROUTES = [
  [/^\/jobs\/?$/, jobsPage, "jobs", "jobs"],
  [/^\/jobs\/([^/]+)$/, jobPage, "job", "jobs"],
  [/^\/compare\/?$/, comparePage, "compare", "compare"],
  [/^\/datasets\/?$/, datasetsPage, "datasets", "datasets"],
  [/^\/new\/?$/, submitPage, "new", "new"],
  [/^\/signin\/?$/, signinPage, "signin", null],
];

let current = null; // the AbortController of the page on screen

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const q = raw.indexOf("?");
  return { path: q < 0 ? raw : raw.slice(0, q), query: new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)) };
}

function updateChrome(section) {
  const signedIn = session.signedIn;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("who-label").textContent = signedIn ? session.label : "";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  updateCompareCount();
}

function updateCompareCount() {
  const n = session.signedIn ? compareSelection().size : 0;
  const el = document.getElementById("compare-count");
  el.textContent = String(n);
  el.hidden = n === 0;
}

async function render() {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { path, query } = parseHash();
  if (!session.signedIn && path !== "/signin") {
    location.replace("#/signin");
    return;
  }
  if (session.signedIn && path === "/signin") {
    location.replace("#/jobs");
    return;
  }
  const main = document.getElementById("main");
  fill(main);
  document.title = "revhpo dashboard";
  for (const [re, page, name, section] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    updateChrome(section);
    const params = m.slice(1).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
    const box = h("div", { class: "page", "data-page": name });
    append(main, box);
    try {
      await page(box, { params, query, signal: controller.signal });
      box.dataset.ready = "true";
    } catch (err) {
      if (controller.signal.aborted) return;
      console.warn(err);
      fill(box, errorBox(err, err.status === 404 ? "Not found" : undefined));
      box.dataset.ready = "true";
    }
    return;
  }
  updateChrome(null);
  append(main, h("div", { class: "empty" }, "No such page. ", h("a", { href: "#/jobs" }, "Go to your jobs.")));
}

document.getElementById("sign-out").addEventListener("click", () => session.signOut("Signed out."));
document.addEventListener("revhpo:selection", updateCompareCount);
window.addEventListener("hashchange", render);
// Another tab cannot see this tab's sessionStorage; nothing to sync. Render the first page.
render();
