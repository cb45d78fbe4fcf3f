"""Dependencies of the routes: settings, database sessions, the artifact store, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from revhpo.service.artifacts import ArtifactStore
from revhpo.service.auth import ANONYMOUS_OWNER, Principal, authenticate
from revhpo.service.db import session_scope
from revhpo.service.settings import Settings, is_loopback
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from .problems import ProblemError


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_engine_dep(request: Request) -> Engine:
    """The app's database engine."""
    return request.app.state.engine


def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store."""
    return request.app.state.store


def get_db(engine: Annotated[Engine, Depends(get_engine_dep)]) -> Iterator[Session]:
    """A write transaction around the request (commit on success, rollback on error)."""
    with session_scope(engine) as session:
        yield session


def get_db_read(engine: Annotated[Engine, Depends(get_engine_dep)]) -> Iterator[Session]:
    """A read transaction (no write lock on SQLite)."""
    with session_scope(engine, write=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_db)]
ReadSessionDep = Annotated[Session, Depends(get_db_read)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        field="Authorization",
        headers={"WWW-Authenticate": "Bearer"},
    )


# Headers a reverse proxy adds: a request carrying one came through a proxy, so its loopback
# peer address says nothing about where the caller is.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "via")


def _host_of(value: str) -> str:
    """The host of a `Host` header or an `Origin` (scheme, brackets and port dropped)."""
    value = value.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):  # [::1]:8765
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def anonymous_refusal(request: Request, settings: Settings) -> str | None:
    """Why a request without a key may not be served anonymously, or None if it may.

    Anonymous access is for the person at the machine of a loopback-bound server: the peer
    is a loopback address, the `Host` header names a loopback host (not a public name a proxy
    forwards, nor a DNS-rebound one), no proxy header is present, and a browser's `Origin`
    (if sent) is a loopback origin too (no cross-site uploads from a web page).
    """
    if not settings.anonymous_enabled:
        return "an API key is required (create one with `revhpo keys create`)"
    client = request.client.host if request.client else ""
    if not is_loopback(client):
        return f"an API key is required from a non-loopback address. Received: client={client!r}"
    for name in PROXY_HEADERS:
        if name in request.headers:
            return (
                "an API key is required for a request that came through a proxy "
                f"(anonymous access is for loopback callers only). Received: header {name!r}"
            )
    host = request.headers.get("host", "")
    if not is_loopback(_host_of(host)):
        return f"an API key is required for a non-loopback Host. Received: Host={host!r}"
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback(_host_of(origin)):
        return f"an API key is required for a cross-site request. Received: Origin={origin!r}"
    return None


def get_principal(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    authorization: Annotated[str | None, Header(description="`Bearer <API key>`")] = None,
) -> Principal:
    """Authenticate the caller by API key; anonymous (owner `local`) only on a loopback server.

    An anonymous caller is a user, never a worker: it sees and submits the jobs and datasets
    of owner `local` only, and every `/v1/worker` route refuses it with 401 (workers, local
    ones included, use a worker key).

    Raises:
        ProblemError: 401 for a missing, malformed, unknown or revoked key.
    """
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("expected `Authorization: Bearer <API key>`")
        principal = authenticate(engine, key.strip())
        if principal is None:
            raise _unauthorized("unknown or revoked API key")
        return principal
    refusal = anonymous_refusal(request, settings)
    if refusal is not None:
        raise _unauthorized(refusal)
    return Principal(owner=ANONYMOUS_OWNER, is_worker=False, anonymous=True)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_worker(principal: PrincipalDep) -> Principal:
    """The caller, who must hold a worker key (anonymous callers never have worker rights).

    Raises:
        ProblemError: 401 for an anonymous caller, 403 for a key without the worker role.
    """
    if principal.anonymous:
        raise _unauthorized(
            "this endpoint needs a worker key (`revhpo keys create --worker`); anonymous "
            "access has user rights only. Received: no Authorization header"
        )
    if not principal.is_worker:
        raise ProblemError(
            403,
            "Forbidden",
            "this endpoint needs a worker key (`revhpo keys create --worker`). "
            f"Received: a user key of owner {principal.owner!r}",
            field="Authorization",
        )
    return principal


WorkerDep = Annotated[Principal, Depends(get_worker)]
