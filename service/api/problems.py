"""Errors as RFC 9457 `application/problem+json`, each naming the offending field."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.db import StorageError

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


def problem_response(
    request: Request | None,
    status: int,
    title: str,
    detail: str | None = None,
    *,
    field: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The problem document as a response."""
    body: dict[str, Any] = {
        "type": f"/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
    if field:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def pydantic_errors(errs: list[dict[str, Any]], skip_root: int = 0) -> list[dict[str, Any]]:
    """Pydantic errors as `{field, message, received}` (`received` only when JSON-able)."""
    out = []
    for e in errs:
        loc = [str(p) for p in e.get("loc", ())][skip_root:]
        item: dict[str, Any] = {"field": ".".join(loc) or "body", "message": e.get("msg", "")}
        value = e.get("input")
        if isinstance(value, str | int | float | bool) or value is None:
            item["received"] = value if not isinstance(value, str) else value[:200]
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.title,
            exc.detail,
            field=exc.field,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = pydantic_errors(list(exc.errors()))
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return problem_response(
            request,
            422,
            "Invalid request",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}
        title = titles.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(request, exc.status_code, title, detail, headers=exc.headers)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage error on %s: %s", request.url.path, exc)
        status = 503 if exc.transient else 500
        return problem_response(
            request,
            status,
            "Storage unavailable" if exc.transient else "Storage error",
            "the database is busy or unreachable; retry" if exc.transient else None,
            headers={"Retry-After": "1"} if exc.transient else None,
        )
