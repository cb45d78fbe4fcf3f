"""The web dashboard: a static single-page app the API serves at `/`.

Everything it needs ships in this package (`static/`: HTML, ES modules, CSS, and the vendored
uPlot chart library); nothing is fetched from elsewhere at run time and there is no build step.
The page talks to the same HTTP API as every other client, with the user's API key
(`Authorization: Bearer`, kept in the tab's `sessionStorage`).

Every file goes out with a strict Content-Security-Policy (scripts and styles from this origin
only, no inline script, no `eval`; images from this origin or `blob:` URLs the page made from
plots it downloaded with the key) and `X-Content-Type-Options: nosniff`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/dashboard"  # the static files; the page itself is `/`

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# Explicit types: an ES module must be served as JavaScript, and `mimetypes` reads the host's
# tables (some map .js to text/plain), which `nosniff` would then make the browser refuse.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}


class DashboardFiles(StaticFiles):
    """`StaticFiles` (ETag, 304s, no path escapes) with the dashboard's headers on every file."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media = MEDIA_TYPES.get(Path(full_path).suffix.lower())
        if media is not None:
            response.headers["content-type"] = media
        response.headers.update(SECURITY_HEADERS)
        # Revalidated on every load (cheap: 304 by ETag), so an upgraded server is never
        # paired with a stale module in the browser's cache.
        response.headers["Cache-Control"] = "no-cache"
        return response


router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> FileResponse:
    """The dashboard's page (one HTML shell; the app routes by the URL's fragment)."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type=MEDIA_TYPES[".html"],
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


def mount(app: FastAPI) -> None:
    """Serve the dashboard from `app`: the page at `/`, its files under `/dashboard/`."""
    app.include_router(router)
    app.mount(PREFIX, DashboardFiles(directory=STATIC_DIR), name="dashboard")
