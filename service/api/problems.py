"""Errors as RFC 9457 `application/problem+json`, each naming the offending field."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from revhpo.service.db import StorageError
from revhpo.service.schemas import DocumentError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Raise from a route to answer with a problem document.

    Args:
        status: HTTP status.
        title: short, fixed summary of the problem type.
        detail: this occurrence, naming what was received.
        field: the offending field (dotted path), if any.
        errors: every problem found, as `{field, message, received}` dicts.
        headers: extra response headers.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.field, self.errors, self.headers = field, errors, headers

    def response(self, request: Request | None) -> JSONResponse:
        """The problem document as a response (`instance` is the request's path)."""
        body: dict[str, Any] = {
            "type": f"/problems/{self.title.lower().replace(' ', '-')}",
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if request is not None:
            body["instance"] = request.url.path
        if self.field:
            body["field"] = self.field
        if self.errors:
            body["errors"] = self.errors
        return ProblemResponse(
            body, status_code=self.status, media_type=PROBLEM_JSON, headers=self.headers
        )


class ProblemResponse(JSONResponse):
    """A problem document: it echoes what was received, which may hold text that is not
    Unicode (a lone surrogate from a ``"\\ud800"`` JSON escape); that text is sent escaped
    as JSON escapes it, never as an encoding error (a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


MAX_ERRORS = 50  # errors listed in one problem document (a hostile body can have 100000)


def pydantic_errors(errs: list[dict[str, Any]], skip_root: int = 0) -> list[dict[str, Any]]:
    """Pydantic errors as `{field, message, received}` (`received` only when JSON-able); the
    first `MAX_ERRORS`."""
    out = []
    for e in errs[:MAX_ERRORS]:
        loc = [str(p) for p in e.get("loc", ())][skip_root:]
        item: dict[str, Any] = {"field": ".".join(loc) or "body", "message": e.get("msg", "")}
        value = e.get("input")
        if isinstance(value, str | int | float | bool) or value is None:
            item["received"] = value if not isinstance(value, str) else value[:200]
        out.append(item)
    return out


def document_problem(exc: DocumentError, title: str = "Invalid request") -> ProblemError:
    """The 422 (413 for a document over its size bounds) answering a `DocumentError`."""
    status = 413 if exc.too_large else 422
    received = exc.received if isinstance(exc.received, str | int | float | bool) else None
    return ProblemError(
        status,
        "Request too large" if status == 413 else title,
        f"{exc.field}: {exc.message}. Received: {exc.received!r}",
        field=exc.field,
        errors=[{"field": exc.field, "message": exc.message, "received": received}],
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return exc.response(request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = pydantic_errors(list(exc.errors()))
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return ProblemError(
            422,
            "Invalid request",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            errors=errors,
        ).response(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}
        title = titles.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return ProblemError(exc.status_code, title, detail, headers=exc.headers).response(request)

    @app.exception_handler(DocumentError)
    async def _document(request: Request, exc: DocumentError) -> JSONResponse:
        return document_problem(exc).response(request)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage error on %s: %s", request.url.path, exc)
        if isinstance(exc.__cause__, DataError):
            # A value the database cannot store (e.g. a NUL character in PostgreSQL text, a
            # number out of range): the request's fault, not the server's.
            orig = str(getattr(exc.__cause__, "orig", exc.__cause__)).splitlines()[0]
            return ProblemError(
                422, "Invalid request", f"the database refused a value of this request: {orig}"
            ).response(request)
        status = 503 if exc.transient else 500
        return ProblemError(
            status,
            "Storage unavailable" if exc.transient else "Storage error",
            "the database is busy or unreachable; retry" if exc.transient else None,
            headers={"Retry-After": "1"} if exc.transient else None,
        ).response(request)
