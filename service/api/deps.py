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


def get_principal(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    authorization: Annotated[str | None, Header(description="`Bearer <API key>`")] = None,
) -> Principal:
    """Authenticate the caller by API key; anonymous only on a loopback-bound server.

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
    client = request.client.host if request.client else ""
    if settings.anonymous_enabled and is_loopback(client):
        return Principal(owner=ANONYMOUS_OWNER, is_worker=True, anonymous=True)
    raise _unauthorized("an API key is required (create one with `revhpo keys create`)")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_worker(principal: PrincipalDep) -> Principal:
    """The caller, who must hold a worker key.

    Raises:
        ProblemError: 403 for a key without the worker role.
    """
    if not principal.is_worker:
        raise ProblemError(
            403,
            "Forbidden",
            "this endpoint needs a worker key (`revhpo keys create --worker`)",
            field="Authorization",
        )
    return principal


WorkerDep = Annotated[Principal, Depends(get_worker)]
