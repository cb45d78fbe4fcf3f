"""The web dashboard in a real browser (Debian's Chromium through Playwright) against a real API
server and a real worker that runs real tuning jobs.

The module's jobs are submitted once, over HTTP, the moment the service is up, so the worker
tunes while the first tests sign in and watch. Every assertion reads the page's DOM and
compares it with what the API itself answers; every page also fails its test on an uncaught
script error or anything the Content-Security-Policy refused (`conftest.new_page`).
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from dash_helpers import (
    VIEWPORT,
    PageProblems,
    Service,
    screenshot,
    sign_in,
    tiny_spec,
    wait_for,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

LIVE_ITERATIONS = 20  # about 0.2-0.5 s each once compiled: long enough to watch it advance
T = 20


def job_spec(name: str, iterations: int, **meta: object) -> dict:
    """A small job (MLP 6-6-3 on synthetic blobs, T = 20) with α and γ schedules per layer."""
    spec = tiny_spec(
        iterations=iterations,
        seeds_per_iteration=1,
        select_seeds=4,
        coarse_seeds=1,
        eval_seeds=2,
        patience=0,
        **meta,
    )
    spec["name"] = name
    spec["training"] = {"steps": T, "batch_size": 20}
    spec["hyperparameters"] = {
        "learning_rate": {"init": 0.1, "tune": True, "granularity": "per_layer_knots", "knots": 4},
        "momentum": {"init": 0.9, "tune": True, "granularity": "per_layer_knots", "knots": 4},
    }
    return spec


@dataclass
class World:
    """The service, the owner `alice` (key and HTTP client) and her two tuning jobs."""

    service: Service
    alice: str
    api: httpx.Client
    live: str  # LIVE_ITERATIONS meta-iterations: watched while it runs
    other: str  # 3 meta-iterations, another meta step size: compared with `live`
    revoked_page: object  # a tab signed in with a key of alice's that was then revoked
    _doomed: str | None = None

    @property
    def url(self) -> str:
        return self.service.url

    def job(self, job_id: str) -> dict:
        return self.api.get(f"/v1/jobs/{job_id}").json()

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
        def done():
            job = self.job(job_id)
            return job if job["state"] in states else None

        return wait_for(done, timeout, interval=0.5, what=f"job {job_id} in {states}")

    def doomed(self) -> str:
        """A long job (500 meta-iterations) that `test_cancel_a_running_job` cancels, queued
        on the first call (best once a worker is free: its start then slows no other job)."""
        if self._doomed is None:
            r = self.api.post("/v1/jobs", json=job_spec("to-cancel", 500))
            assert r.status_code == 202, r.text
            self._doomed = r.json()["id"]
        return self._doomed

    def result(self, job_id: str) -> dict:
        job = self.wait_state(job_id, ("succeeded", "failed", "cancelled"))
        assert job["state"] == "succeeded", job
        return self.api.get(f"/v1/jobs/{job_id}/result").json()


@pytest.fixture(scope="module")
def world(service: Service, browser):
    """Alice's two jobs, queued at once so the workers tune while the first tests run; and a
    tab of hers signed in with a second key that is revoked right away (API processes honour a
    revocation within 10 s, so by the time its test looks, the tab has been signed out)."""
    alice = service.key("alice")
    api = service.client(alice)
    live = api.post("/v1/jobs", json=job_spec("mlp-live", LIVE_ITERATIONS))
    other = api.post("/v1/jobs", json=job_spec("mlp-big-step", 3, step_size=0.3))
    assert live.status_code == other.status_code == 202, (live.text, other.text)
    ctx = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    tab = ctx.new_page()
    watch = PageProblems()
    watch.attach(tab)
    second = service.key("alice")
    sign_in(tab, service.url, second)
    assert tab.get_by_test_id("job-row").count() == 2  # the same owner: the same jobs
    service.revoke(second)
    try:
        yield World(service, alice, api, live.json()["id"], other.json()["id"], tab)
    finally:
        ctx.close()
        api.close()
    assert not watch.errors, watch.errors


def js_num(x: float, digits: int = 4) -> str:
    """What the dashboard's `num(x, digits)` shows for x (dom.js)."""
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e6:
        mantissa, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exp)}"
    v = float(f"{x:.{digits}g}")
    return str(int(v)) if v.is_integer() else repr(v)


def open_job(page, url: str, job_id: str) -> None:  # noqa: ANN001
    page.goto(f"{url}/#/jobs/{job_id}")
    page.locator('[data-page="job"][data-ready="true"]').wait_for()


def chart_rows(page, testid: str) -> list[list[str]]:  # noqa: ANN001
    """Open a chart's data table and return its rows (x first)."""
    chart = page.get_by_test_id(testid)
    chart.locator("summary").click()
    rows = chart.locator("table.data tbody tr")
    rows.first.wait_for()
    return [
        [c.strip() for c in r]
        for r in rows.evaluate_all("rows => rows.map(r => [...r.children].map(c => c.textContent))")
    ]


def done_count(page) -> tuple[int, int]:  # noqa: ANN001
    m = re.fullmatch(r"(\d+) of (\d+)", page.get_by_test_id("meta-done").inner_text().strip())
    assert m, page.get_by_test_id("meta-done").inner_text()
    return int(m[1]), int(m[2])


# ------------------------------------------------------------------------------------ tests
def test_sign_in_and_watch_a_running_job_advance(world: World, new_page):
    page = new_page()
    page.goto(world.url + "/")
    screenshot(page, "signin")
    # A wrong key is refused with the server's reason, and nothing is stored.
    page.get_by_label("API key").fill("rhp_000000000000_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("refused this key")
    assert page.evaluate("sessionStorage.getItem('revhpo.key')") is None

    sign_in(page, world.url, world.alice)
    # The key is in this tab's sessionStorage only: never in the URL, never in localStorage.
    assert world.alice not in page.url
    assert page.evaluate("sessionStorage.getItem('revhpo.key')") == world.alice
    assert page.evaluate("localStorage.length") == 0
    rows = page.get_by_test_id("job-row")
    listed = {j["id"]: j["name"] for j in world.api.get("/v1/jobs").json()["items"]}
    assert rows.count() == len(listed) >= 2
    for job_id, name in listed.items():
        row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
        assert row.get_by_test_id("job-link").inner_text() == name

    page.get_by_role("link", name="mlp-live").click()
    page.locator('[data-page="job"][data-ready="true"]').wait_for()
    assert page.get_by_test_id("job-name").inner_text() == "mlp-live"
    # Live progress from the event stream: a meta-iteration finishes, then more do.
    page.wait_for_function(
        """() => {
            const m = /^(\\d+) of (\\d+)$/.exec(
                document.querySelector('[data-testid=meta-done]')?.textContent || '');
            return m && +m[1] >= 1 && +m[1] < +m[2];
        }""",
        timeout=180_000,
        polling=100,
    )
    first, total = done_count(page)
    assert total == LIVE_ITERATIONS
    assert page.get_by_test_id("stream-status").inner_text() == "● live"
    assert page.get_by_test_id("state").first.inner_text() == "running"
    points = int(page.get_by_test_id("meta-curve").get_attribute("data-points"))
    assert points >= first
    float(page.get_by_test_id("stat-val").inner_text())  # a number, not "—"
    page.wait_for_function(
        f"""() => {{
            const m = /^(\\d+) of/.exec(
                document.querySelector('[data-testid=meta-done]')?.textContent || '');
            return m && +m[1] > {first};
        }}""",
        timeout=60_000,
        polling=100,
    )
    assert int(page.get_by_test_id("meta-curve").get_attribute("data-points")) > points
    screenshot(page, "job-live", docs=True)
    # It finishes without a reload: the stream's end brings the state and then the result.
    page.locator('[data-testid="state"]', has_text="succeeded").first.wait_for(timeout=180_000)
    page.get_by_test_id("key-figures").wait_for(timeout=30_000)
    assert done_count(page) == (LIVE_ITERATIONS, LIVE_ITERATIONS)
    assert world.job(world.live)["state"] == "succeeded"
    world.doomed()  # both workers are free now: it is running by the time its test looks


def test_revoked_key_signs_the_user_out(world: World):
    page = world.revoked_page  # signed in, then its key revoked (see `world`)
    # The list refreshes every few seconds; the first 401 signs the tab out, with the reason.
    flash = page.get_by_test_id("signin-flash")
    flash.wait_for(timeout=30_000)
    assert "revoked" in flash.inner_text()
    assert page.get_by_test_id("signin-form").is_visible()
    assert page.evaluate("sessionStorage.getItem('revhpo.key')") is None
    assert page.url.endswith("#/signin")
    screenshot(page, "signed-out")


def test_finished_job_shows_schedules_curves_certificate_and_plots(world: World, new_page):
    doc = world.result(world.live)
    result = doc["result"]
    page = new_page()
    sign_in(page, world.url, world.alice)
    open_job(page, world.url, world.live)
    figures = page.get_by_test_id("evaluation")
    figures.wait_for()
    # The worker's PNG plots, fetched with the key and shown from blob: URLs.
    pngs = sorted(a["name"] for a in doc["artifacts"] if a["name"].endswith(".png"))
    assert pngs
    images = page.get_by_test_id("plot-image")
    assert sorted(images.evaluate_all("els => els.map(e => e.dataset.name)")) == pngs
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=plot-image]')]"
        ".every(i => i.complete && i.naturalWidth > 100 && i.src.startsWith('blob:'))"
    )
    screenshot(page, "job", docs=True, full_page=True)
    final = result["evaluation"]["final"]
    tuned = figures.locator('tr[data-metric="val_loss"] td').nth(1).inner_text()
    assert tuned.startswith(js_num(final["val_loss_mean"]))
    test_acc = figures.locator('tr[data-metric="test_acc"] td').nth(1).inner_text()
    assert test_acc.startswith(f"{100 * final['test_acc_mean']:.1f}%")
    assert result["selection"]["reason"] in page.get_by_test_id("selection").inner_text()

    # Learned schedules: α and γ at every step, one series per layer, from per_step_per_layer.
    layers = result["net"]["layer_names"]
    for group, symbol in (("learning_rate", "α"), ("momentum", "γ")):
        chart = page.get_by_test_id(f"schedule-{group}")
        assert json.loads(chart.get_attribute("data-series")) == [f"{symbol} {n}" for n in layers]
        matrix = result["hyperparameters"]["final"][group]["per_step_per_layer"]
        rows = chart_rows(page, f"schedule-{group}")
        assert len(rows) == len(matrix) == T
        for t in (0, T // 2, T - 1):
            assert rows[t] == [str(t)] + [js_num(v, 6) for v in matrix[t]]
    # The iterate picker redraws from another iterate: the initial values are the spec's.
    page.get_by_test_id("which-iterate").select_option("initial")
    rows = chart_rows(page, "schedule-learning_rate")
    assert rows[0][1:] == ["0.1"] * len(layers)

    # Meta-learning curve from the history (+ the last iterate's estimate), training curves.
    history = result["history"]
    curve = page.get_by_test_id("meta-curve")
    iterates = len(history) + (history[-1].get("next_select_loss") is not None)
    assert int(curve.get_attribute("data-points")) == iterates
    rows = chart_rows(page, "meta-curve")
    assert rows[1][1] == js_num(history[1]["select_loss"], 6)
    training = chart_rows(page, "training-curves")
    assert len(training) == T
    assert training[-1][2] == js_num(result["training_curves"]["final"][-1], 6)

    # The exactness certificate of every meta-iteration.
    certs = page.get_by_test_id("certificate-table").locator("tbody tr")
    assert certs.count() == len(history) == LIVE_ITERATIONS
    trained = [h for h in history if not h["diverged"]]  # a diverged one ran no reverse pass
    assert trained and all(h["certificate"]["ok"] for h in trained)
    summary = page.get_by_test_id("certificate-summary").inner_text()
    assert f"all {len(trained)} reverse passes" in summary

    # The tuned schedules exported by the API, downloaded through the page.
    with page.expect_download() as dl:
        page.get_by_test_id("export-csv").click()
    csv = open(dl.value.path(), encoding="utf-8").read().splitlines()
    assert csv[0].startswith("step,layer,learning_rate,momentum")
    assert len(csv) == 1 + T * len(layers)


def test_event_stream_resumes_after_a_dropped_connection(world: World, new_page):
    """The first stream is cut after two `meta` events (no `end`): the page reconnects with
    Last-Event-ID and the server sends the rest, each event exactly once."""
    world.wait_state(world.live, ("succeeded",))
    requests: list[str | None] = []
    cut: dict[str, str] = {}

    def handle(route):  # noqa: ANN001
        requests.append(route.request.headers.get("last-event-id"))
        if len(requests) > 1:
            route.continue_()
            return
        body = route.fetch().text()
        blocks = [b for b in body.split("\n\n") if b.strip()]
        metas = [i for i, b in enumerate(blocks) if "event: meta" in b]
        keep = blocks[: metas[1] + 1]
        cut["id"] = re.search(r"^id: (\d+)$", keep[-1], re.M)[1]
        cut["full"] = body
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body="\n\n".join(keep) + "\n\n",
        )

    page = new_page()
    sign_in(page, world.url, world.alice)
    page.route(f"**/v1/jobs/{world.live}/events", handle)
    open_job(page, world.url, world.live)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stream-status]')?.textContent"
        " === 'stream ended'",
        timeout=30_000,
    )
    assert requests == [None, cut["id"]]
    ids = [int(i) for i in re.findall(r"^id: (\d+)$", cut["full"], re.M)]
    logged = page.get_by_test_id("event-log").locator("li").all_text_contents()
    numbers = [int(m[1]) for line in logged if (m := re.match(r"#(\d+) ", line))]
    assert numbers == sorted(set(numbers)) and numbers[-1] == max(ids)
    metas = [line for line in logged if re.match(r"#\d+ meta-iteration \d+/", line)]
    assert len(metas) == LIVE_ITERATIONS
    # every streamed event shows when the API recorded it (its `received_at`)
    assert all(re.search(r" · \d{1,2}:\d{2}:\d{2}", line) for line in logged if line[0] == "#")


def test_compare_two_finished_jobs(world: World, new_page):
    results = {j: world.result(j)["result"] for j in (world.live, world.other)}
    names = {world.live: "mlp-live", world.other: "mlp-big-step"}
    page = new_page()
    sign_in(page, world.url, world.alice)
    for job_id in (world.live, world.other):
        row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
        # the listing shows each finished job's held-out test figures (from its summary)
        final = results[job_id]["evaluation"]["final"]
        cell = row.get_by_test_id("test-loss").inner_text()
        assert cell.split()[0] == js_num(final["test_loss_mean"]), cell
        row.get_by_test_id("select-job").check()
    assert page.get_by_test_id("selected-count").inner_text() == "2 selected"
    screenshot(page, "jobs", docs=True)
    page.get_by_test_id("compare-selected").click()
    page.locator('[data-page="compare"][data-ready="true"]').wait_for()
    time.sleep(0.3)  # let the charts settle before the picture
    screenshot(page, "compare", docs=True, full_page=True)
    table = page.get_by_test_id("compare-table")
    heads = table.locator("thead th").all_text_contents()[1:]
    assert sorted(heads) == sorted(names.values())
    row = table.locator("tbody tr", has_text="held-out validation loss (tuned)")
    for job_id, result in results.items():
        cell = row.locator(f'td[data-job-id="{job_id}"]').inner_text()
        assert cell.startswith(js_num(result["evaluation"]["final"]["val_loss_mean"]))
    # Exactly the spec fields that differ.
    diff = page.get_by_test_id("spec-diff").locator("tbody tr")
    fields = diff.evaluate_all("rows => rows.map(r => r.dataset.field)")
    assert fields == ["meta.iterations", "meta.step_size", "name"]
    # Schedules side by side: per layer, one series per job, from each result.
    layer = results[world.live]["net"]["layer_names"][0]
    chart = page.get_by_test_id(f"compare-learning_rate-{layer}")
    series = json.loads(chart.get_attribute("data-series"))
    assert sorted(series) == sorted(names.values())
    rows = chart_rows(page, f"compare-learning_rate-{layer}")
    for col, label in enumerate(series, start=1):
        job_id = next(j for j, n in names.items() if n == label)
        lr = results[job_id]["hyperparameters"]["final"]["learning_rate"]["per_step_per_layer"]
        assert [r[col] for r in rows] == [js_num(step[0], 6) for step in lr]
    meta = page.get_by_test_id("compare-meta")
    last = results[world.live]["history"][-1]
    assert int(meta.get_attribute("data-points")) == LIVE_ITERATIONS + (
        last.get("next_select_loss") is not None
    )


def _npz(n: int = 60, d: int = 4, classes: int = 3) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, d)), y=rng.integers(0, classes, size=n))
    return buf.getvalue()


def test_upload_and_list_datasets(world: World, new_page):
    page = new_page()
    sign_in(page, world.url, world.alice)
    page.get_by_role("link", name="Datasets").click()
    page.locator('[data-page="datasets"][data-ready="true"]').wait_for()
    file = {"name": "blobs.npz", "mimeType": "application/octet-stream", "buffer": _npz()}
    page.get_by_test_id("dataset-file").set_input_files(file)
    page.get_by_test_id("upload").click()
    ok = page.get_by_test_id("upload-ok")
    ok.wait_for()
    assert "60 rows, 4 features, 3 classes" in ok.inner_text()
    (ds,) = world.api.get("/v1/datasets").json()["items"]
    assert page.get_by_test_id("upload-snippet").inner_text() == (
        f"dataset: {{kind: uploaded, id: {ds['id']}}}"
    )
    row = page.locator(f'[data-testid="dataset-row"][data-dataset-id="{ds["id"]}"]')
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[0].startswith("blobs.npz") and cells[1:5] == ["npz", "60", "4", "3"]
    # A file no job can use is refused with the server's reason, and not listed.
    bad = {"name": "one.csv", "mimeType": "text/csv", "buffer": b"a,b,label\n1,2,0\n3,4,0\n"}
    page.get_by_test_id("dataset-file").set_input_files(bad)
    page.get_by_test_id("upload").click()
    error = page.get_by_test_id("upload-status").get_by_test_id("error")
    error.wait_for()
    assert "Upload refused" in error.inner_text() and "class" in error.inner_text()
    assert len(world.api.get("/v1/datasets").json()["items"]) == 1
    assert page.get_by_test_id("dataset-row").count() == 1


def test_another_owner_sees_none_of_these_jobs(world: World, new_page):
    bob = world.service.key("bob")
    page = new_page()
    sign_in(page, world.url, bob)
    page.get_by_test_id("jobs-empty").wait_for()
    assert page.get_by_test_id("job-row").count() == 0
    assert "No jobs yet" in page.get_by_test_id("jobs-empty").inner_text()
    # Alice's job by its id: the API's 404, shown as such; no name, no spec leaks.
    open_job(page, world.url, world.live)
    error = page.get_by_test_id("error")
    assert "Not found" in error.inner_text() and world.live in error.inner_text()
    assert page.get_by_test_id("job-name").count() == 0
    assert "mlp-live" not in page.content()
    page.goto(f"{world.url}/#/compare?ids={world.live},{world.other}")
    missing = page.get_by_test_id("compare-missing")
    missing.wait_for()
    assert world.live in missing.inner_text() and world.other in missing.inner_text()
    assert "mlp-" not in page.content()
    page.goto(f"{world.url}/#/datasets")
    page.get_by_test_id("datasets-empty").wait_for()
    assert page.get_by_test_id("dataset-row").count() == 0


def test_cancel_a_running_job(world: World, new_page):
    """A job that a worker runs: its cancel is asked for, and it stops at its next
    meta-iteration boundary."""
    doomed = world.doomed()
    world.wait_state(doomed, ("running",), timeout=120)
    page = new_page()
    sign_in(page, world.url, world.alice)
    page.get_by_role("link", name="to-cancel").click()
    page.locator('[data-page="job"][data-ready="true"]').wait_for()
    expect(page.get_by_test_id("state").first).to_have_text("running")
    page.get_by_test_id("cancel-job").click()
    page.get_by_test_id("confirm-cancel").click()
    # The API answered "running, cancel requested" (the page says so until the job stops).
    expect(page.locator("#toasts")).to_contain_text("Cancel requested")
    page.locator('[data-testid="state"]', has_text="cancelled").first.wait_for(timeout=90_000)
    job = world.job(doomed)
    assert job["state"] == "cancelled" and job["cancel_requested"]
    assert page.get_by_test_id("cancel-job").count() == 0
    # The state filter of the list, served by the API's own filter.
    page.goto(f"{world.url}/#/jobs?state=cancelled")
    page.locator(f'[data-testid="job-row"][data-job-id="{doomed}"]').wait_for()
    assert page.get_by_test_id("filter-cancelled").get_attribute("aria-pressed") == "true"
    assert page.locator('[data-testid="job-row"]').evaluate_all(
        "rows => rows.map(r => r.dataset.state)"
    ) == ["cancelled"]


def test_a_loopback_server_can_be_used_without_a_key(bare: Service, new_page):
    """`revhpo serve`'s default: bound to loopback, it serves the person at the machine as the
    user `local` without a key, and the sign-in page offers that."""
    page = new_page()
    page.goto(bare.url + "/")
    page.get_by_test_id("signin-anonymous").click()
    page.locator('[data-page="jobs"][data-ready="true"]').wait_for()
    expect(page.locator("#who-label")).to_have_text("local user (no key)")
    page.get_by_test_id("jobs-empty").wait_for()
    page.get_by_role("link", name="Datasets").click()
    page.get_by_test_id("dataset-file").set_input_files(
        {"name": "mine.npz", "mimeType": "application/octet-stream", "buffer": _npz()}
    )
    page.get_by_test_id("upload").click()
    page.get_by_test_id("upload-ok").wait_for()
    (ds,) = httpx.get(bare.url + "/v1/datasets", timeout=30).json()["items"]
    assert ds["filename"] == "mine.npz"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("signin-flash")).to_have_text("Signed out.")
    assert page.evaluate("sessionStorage.getItem('revhpo.anonymous')") is None


def chip(state: str, page) -> None:  # noqa: ANN001
    """Toggle a state filter and wait until the page shows it toggled."""
    pressed = page.get_by_test_id(f"filter-{state}").get_attribute("aria-pressed") == "true"
    page.get_by_test_id(f"filter-{state}").click()
    expect(page.get_by_test_id(f"filter-{state}")).to_have_attribute(
        "aria-pressed", "false" if pressed else "true"
    )


def test_pages_of_jobs_follow_the_api_cursor(bare: Service, new_page):
    """23 jobs of one owner: 20 a page, the second page by the API's `next_cursor`, and back."""
    pager = bare.key("pager")
    with bare.client(pager) as api:
        ids = [
            api.post("/v1/jobs", json=job_spec(f"sweep-{i:02d}", 1)).json()["id"] for i in range(23)
        ]
        for job_id in ids[::2]:
            api.post(f"/v1/jobs/{job_id}/cancel")
    page = new_page()
    sign_in(page, bare.url, pager)
    rows = page.get_by_test_id("job-row")
    listed = rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert listed == ids[::-1][:20]
    assert page.get_by_test_id("page-newer").is_hidden()
    page.get_by_test_id("page-older").click()
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)") == ids[::-1][20:]
    assert "cursor=" in page.url and page.get_by_test_id("page-older").is_hidden()
    page.get_by_test_id("page-newer").click()
    expect(rows).to_have_count(20)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)") == ids[::-1][:20]
    # A filter no job matches, then two states at once, then one.
    chip("running", page)
    page.get_by_test_id("jobs-empty").wait_for()
    assert "No running jobs" in page.get_by_test_id("jobs-empty").inner_text()
    chip("cancelled", page)
    expect(rows).to_have_count(12)
    assert "state=running&state=cancelled" in page.url
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)") == ids[::2][::-1]
    for state in ("queued", "running", "cancelled"):
        chip(state, page)
    expect(rows).to_have_count(11)
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.state)")) == {"queued"}


def test_submit_a_spec_from_the_page(bare: Service, new_page):
    owner = bare.key("submitter")
    page = new_page()
    sign_in(page, bare.url, owner)
    page.get_by_role("link", name="New job").click()
    text = page.get_by_test_id("spec-text")
    text.fill("name: broken\ntraining: {steps: 0}\nmeta: {iterations: -1}\n")
    page.get_by_test_id("submit-job").click()
    error = page.get_by_test_id("error")
    error.wait_for()
    assert "The spec was refused" in error.inner_text()
    assert "training.steps" in error.inner_text() and "meta.iterations" in error.inner_text()
    text.fill(json.dumps({**job_spec("from-the-page", 1), "name": "from-the-page"}))
    page.get_by_test_id("submit-job").click()
    page.locator('[data-page="job"][data-ready="true"]').wait_for()
    assert page.get_by_test_id("job-name").inner_text() == "from-the-page"
    expect(page.get_by_test_id("state").first).to_have_text("queued")
    with bare.client(owner) as api:
        (job,) = api.get("/v1/jobs").json()["items"]
    assert page.url.endswith(f"#/jobs/{job['id']}") and job["name"] == "from-the-page"
    assert job["state"] == "queued"


def test_job_names_render_as_text(bare: Service, new_page):
    """Names and specs are the submitter's text: shown literally, never parsed as HTML."""
    mallory = bare.key("mallory")
    name = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    with bare.client(mallory) as api:
        job = api.post("/v1/jobs", json={**job_spec("x", 1), "name": name}).json()
    page = new_page()
    sign_in(page, bare.url, mallory)
    link = page.get_by_test_id("job-link")
    assert link.inner_text() == name
    open_job(page, bare.url, job["id"])
    assert page.get_by_test_id("job-name").inner_text() == name
    assert json.loads(page.get_by_test_id("spec").text_content())["name"] == name
    assert page.evaluate("window.__xss") is None
    assert page.locator('img[src="x"], b').count() == 0


def test_the_event_stream_parser_follows_the_sse_rules(bare: Service, new_page):
    """The page's own parser (sse.js), fed in every possible chunking: CRLF, CR and LF line
    ends, comments, multi-line data, `retry`, and an `id` that counts only once dispatched."""
    page = new_page()
    page.goto(bare.url + "/#/signin")
    got = page.evaluate(
        """async () => {
            const { SSEParser } = await import('/dashboard/sse.js');
            const text = 'retry: 1500\\r\\n: keep-alive\\n\\nid: 7\\revent: meta\\r'
                + 'data: {"a":\\r\\ndata: 1}\\n\\nid: 8\\ndata: x\\n\\nid: 9\\ndata: cut';
            const runs = [];
            for (let cut = 0; cut <= text.length; cut++) {
                const events = [], retries = [];
                const p = new SSEParser((e) => events.push(e), (ms) => retries.push(ms));
                for (const chunk of [text.slice(0, cut), text.slice(cut)]) p.push(chunk);
                runs.push(JSON.stringify({ events, retries, last: p.lastEventId }));
            }
            return [...new Set(runs)];
        }"""
    )
    assert len(got) == 1, got  # the same result however the bytes arrived
    assert json.loads(got[0]) == {
        "events": [
            {"id": "7", "event": "meta", "data": '{"a":\n1}'},
            {"id": "8", "event": "message", "data": "x"},
        ],
        "retries": [1500],
        "last": "8",  # event 9 never ended: a reconnect resumes after 8
    }
