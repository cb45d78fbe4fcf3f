"""The FastAPI application: routes, problem documents, size limits, and the lease reaper."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from revhpo.service import dashboard, queue
from revhpo.service.artifacts import ArtifactStore
from revhpo.service.db import get_engine, session_scope
from revhpo.service.logs import LogContextMiddleware
from revhpo.service.metrics import MetricsMiddleware, ServiceMetrics, metrics_router
from revhpo.service.schemas import Health, Problem, WhoAmI
from revhpo.service.settings import Settings, get_settings
from revhpo.service.spec import JobSpec
from sqlalchemy import text

from revhpo.runtime import __version__

from . import datasets, jobs, problems, worker
from .deps import EngineDep, PrincipalDep
from .limits import BodyLimitMiddleware, InputGuardMiddleware

log = logging.getLogger(__name__)

health_router = APIRouter(tags=["health"])


@health_router.get(
    "/v1/whoami",
    response_model=WhoAmI,
    responses={401: {"model": Problem, "description": "missing or unknown API key"}},
    tags=["auth"],
    summary="Who the API takes the caller for",
)
def whoami(principal: PrincipalDep) -> WhoAmI:
    """The owner the caller's key (or anonymous loopback access) acts as."""
    return WhoAmI(owner=principal.owner, worker=principal.is_worker, anonymous=principal.anonymous)


@health_router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(engine: EngineDep):  # noqa: ANN201 (Health or a 503 JSONResponse)
    """Liveness and database reachability."""
    from fastapi.responses import JSONResponse

    try:
        with session_scope(engine, write=False) as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 (any failure means the database is down)
        log.warning("health check: database unreachable: %s", exc)
        body = Health(status="degraded", database="unreachable", backend=engine.dialect.name)
        return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok", database="ok", backend=engine.dialect.name)


class Reaper(threading.Thread):
    """Re-queue jobs whose lease expired (database clock), every `reaper_seconds`."""

    def __init__(self, engine, settings: Settings):  # noqa: ANN001
        super().__init__(name="revhpo-reaper", daemon=True)
        self.engine, self.settings = engine, settings
        self.stop_event = threading.Event()

    def run_once(self) -> list[queue.Reaped]:
        """One pass; returns what was reaped."""
        with session_scope(self.engine) as s:
            reaped = queue.reap(
                s,
                backoff_seconds=self.settings.backoff_seconds,
                backoff_max_seconds=self.settings.backoff_max_seconds,
            )
        for r in reaped:
            log.warning(
                "lease expired: job %s attempt %d -> %s",
                r.job_id,
                r.attempts,
                r.state,
                extra={"job_id": r.job_id, "attempt": r.attempts},
            )
        return reaped

    def run(self) -> None:
        while not self.stop_event.wait(self.settings.reaper_seconds):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 (a failed pass is retried next period)
                log.exception("reaper pass failed")


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in spec_schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components["JobSpec"] = spec_schema
    _problem_responses(schema)
    app.openapi_schema = schema
    return schema


def _problem_responses(schema: dict) -> None:
    """Declare every error answer (4xx, 5xx) as `application/problem+json` of `Problem`
    (except the 503 of `/healthz`, which answers a `Health` document).

    FastAPI documents `responses={...: {"model": Problem}}` as `application/json`, and its
    own 422 as `HTTPValidationError`; the server answers every error with a problem document
    (`problems.install`), so the document says so.
    """
    problem = {"$ref": "#/components/schemas/Problem"}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema())
    for item in schema.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for code, resp in op.get("responses", {}).items():
                if str(code)[0] not in "45":
                    continue
                content = resp.setdefault("content", {})
                current = content.get("application/json", {}).get("schema", problem)
                if current.get("$ref", "").endswith("/HTTPValidationError"):
                    current = problem
                if current != problem:  # e.g. /healthz's 503 answers its `Health` document
                    continue
                content.clear()
                content[problems.PROBLEM_JSON] = {"schema": problem}
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now unreferenced
        if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
            components.pop(unused, None)


def create_app(settings: Settings | None = None, *, reaper: bool = True) -> FastAPI:
    """Build the application (the database must already be migrated).

    Args:
        settings: defaults to `get_settings()`.
        reaper: run the expired-lease reaper in a background thread.

    Returns:
        The ASGI application.
    """
    settings = settings or get_settings()
    engine = get_engine(settings.resolved_database_url)
    store = ArtifactStore(settings.resolved_artifact_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = Reaper(engine, settings) if reaper else None
        if thread:
            thread.start()
        app.state.reaper = thread
        yield
        if thread:
            thread.stop_event.set()

    app = FastAPI(
        title="revhpo",
        version=__version__,
        description="Tuning jobs over HTTP: hyperparameters tuned by gradient descent through "
        "exactly reversible training. Errors are application/problem+json.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.engine, app.state.store = settings, engine, store
    problems.install(app)
    app.state.metrics = metrics = ServiceMetrics(engine)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(LogContextMiddleware)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(InputGuardMiddleware)  # outermost: before any body is read
    app.include_router(health_router)
    app.include_router(metrics_router(metrics))
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(worker.router)
    dashboard.mount(app)  # the web dashboard: `/` and its files under `/dashboard/`
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
