"""Fixtures of the dashboard's browser tests: Debian's Chromium, driven by Playwright, against
a real API server (uvicorn in a subprocess, SQLite) and a real worker running real tuning jobs.

Chromium is `/usr/bin/chromium` (or `chromium` on PATH; `make browser` installs Debian's);
without it every browser test skips with a message. Playwright's own browser downloads are
never used (no `playwright install`): the machine may have no network.

Screenshots go to `tests/browser/artifacts/` (git-ignored). With `REVHPO_DOCS_SCREENSHOTS=1`
the ones the README shows are also copied to `docs/dashboard-*.png`.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest
from dash_helpers import (
    CHROMIUM_ARGS,
    VIEWPORT,
    PageProblems,
    Service,
    chromium_path,
    kill_group,
    start_server,
    start_worker,
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable, or skip every browser test with the reason."""
    path = chromium_path()
    if path is None:
        pytest.skip(
            "Chromium not found (/usr/bin/chromium, or `chromium` on PATH): the dashboard's "
            "browser tests need it; `make browser` installs Debian's package"
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium: str):
    """One headless Chromium for the session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# Two workers: the module's two tuning jobs run side by side (each job is mostly a fresh
# process importing TensorFlow and compiling, so this halves the time until both are done).
WORKERS = 2


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    """A real API server (SQLite, keys required) and `WORKERS` real workers, for the module."""
    service = Service(start_server(tmp_path_factory.mktemp("dash")))
    procs = []
    try:
        token = service.key("pool", worker=True)
        for i in range(WORKERS):
            procs.append(start_worker(service.server, token=token, name=f"browser{i}")[0])
        yield service
    finally:
        for proc in procs:
            kill_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
                proc.wait()
        service.server.stop()


@pytest.fixture(scope="session")
def bare(tmp_path_factory) -> Iterator[Service]:
    """An API server without workers (what is queued stays queued), on loopback with
    anonymous use allowed as `revhpo serve` does by default; keys work there as anywhere.
    Tests on it isolate themselves by owner."""
    service = Service(start_server(tmp_path_factory.mktemp("bare"), REVHPO_ALLOW_ANONYMOUS="true"))
    try:
        yield service
    finally:
        service.server.stop()


@pytest.fixture
def new_page(browser):
    """Open pages in fresh browser contexts (own sessionStorage, like a new browser window);
    each page fails its test on an uncaught script error or a CSP refusal."""
    contexts, problems = [], []

    def make():
        ctx = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True)
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        watch = PageProblems()
        watch.attach(page)
        contexts.append(ctx)
        problems.append(watch)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    found = [e for w in problems for e in w.errors]
    assert not found, found
