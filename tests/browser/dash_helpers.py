"""Helpers of the dashboard's browser tests (imported by `conftest.py` and the tests)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from svc_helpers import (  # noqa: E402  (re-exported for conftest.py and the tests)
    REPO,
    ServerProc,
    kill_group,
    start_worker,
    tiny_spec,
    wait_for,
)

__all__ = ["kill_group", "start_worker", "tiny_spec", "wait_for"]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS = REPO / "docs"
# Without these, Chromium on a machine without network stalls on its background services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}


def chromium_path() -> str | None:
    """Debian's Chromium, or None when it is not installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Service:
    """A running API server, and ways to make and revoke its users' keys and talk to it."""

    server: ServerProc

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, owner: str, *, worker: bool = False) -> str:
        """A new API key of `owner` (what `revhpo keys create` stores; made in-process, which
        takes milliseconds where the command takes seconds on a busy machine)."""
        from revhpo.service.auth import create_key
        from revhpo.service.db import get_engine

        return create_key(get_engine(self.server.db_url), owner, is_worker=worker)

    def revoke(self, key: str) -> None:
        """Revoke `key` as `revhpo keys revoke KEY` does (the same database write, in-process;
        the API server still holds it in its cache of verified keys for up to 10 s)."""
        from revhpo.service.auth import revoke_key
        from revhpo.service.db import get_engine

        assert revoke_key(get_engine(self.server.db_url), key)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


def start_server(tmp: Path, **env: str) -> ServerProc:
    """`python -m revhpo.service.api` on SQLite in `tmp` (keys required unless `env` says
    otherwise), started and healthy."""
    server = ServerProc(
        db_url=f"sqlite:///{tmp / 'revhpo.db'}",
        home=tmp / "home",
        env={"REVHPO_ALLOW_ANONYMOUS": "false", **env},
    )
    server.start()
    return server


class PageProblems:
    """What a page must never do: an uncaught script error, or anything the CSP refused."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page) -> None:  # noqa: ANN001
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, msg) -> None:  # noqa: ANN001
        text = msg.text
        if msg.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.errors.append(f"CSP: {text}")


def screenshot(page, name: str, *, docs: bool = False, full_page: bool = False) -> Path:  # noqa: ANN001
    """Save `tests/browser/artifacts/<name>.png`; with REVHPO_DOCS_SCREENSHOTS=1 and `docs`,
    also `docs/dashboard-<name>.png`."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if full_page:
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("REVHPO_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / f"dashboard-{name}.png")
    return path


def sign_in(page, url: str, key: str) -> None:  # noqa: ANN001
    """Open the dashboard and sign in through its form, as a user does."""
    page.goto(url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.locator('[data-page="jobs"][data-ready="true"]').wait_for()
