"""Prometheus metrics of the API process (``GET /metrics``), with ``prometheus_client``.

Two kinds:

- **From the database, at scrape time** (true across API restarts and for every API process
  sharing the database): jobs by state, attempts (= claims) and re-runs (a lease that expired,
  or a job handed back, runs again), the oldest queued job's wait, queue wait and run time of
  recently started / finished jobs, meta-iteration durations reported by the workers, finished
  tuning runs by their status, exactness failures.
- **Counted by this process** since it started: HTTP requests and their latency by route
  template (never the raw path, so ids do not multiply the series), by :class:`MetricsMiddleware`.

One registry per app (not the global one), so several apps in one process (the tests) do not
share counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from revhpo.service.api.deps import PrincipalDep
from sqlalchemy import Engine, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "MetricsMiddleware", "ServiceMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Finished (or started) jobs whose durations the scrape-time quantiles cover.
RECENT_JOBS = 1000
#: Meta-iteration events the scrape-time duration quantiles cover.
RECENT_EVENTS = 1000
_QUANTILES = (0.5, 0.9, 0.99)


class ServiceMetrics:
    """The API's metrics: ``observe_request`` (from :class:`MetricsMiddleware`) and
    ``render()`` for ``GET /metrics``; the rest is read from the database when scraped."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram(
            "revhpo_http_request_duration_seconds",
            "HTTP request latency by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(_DatabaseCollector(engine))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request (``route``: the route's template, e.g. ``/v1/jobs/{job_id}``)."""
        self.http.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and records it under its route template (unmatched paths
    are recorded as ``unmatched``: a scan of random URLs adds no series)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", "?"), route, status, time.perf_counter() - t0
            )


class _DatabaseCollector:
    """Scrape-time figures from the jobs table (a few aggregate queries)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []  # no metrics at registration time: collect() needs the database

    def collect(self) -> Iterator[Metric]:
        from revhpo.service.models import Job, JobEvent, JobState

        now = time.time()
        with self.engine.connect() as conn:
            by_state = dict(conn.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            totals = select(
                func.coalesce(func.sum(Job.attempts), 0), func.coalesce(func.sum(Job.requeues), 0)
            )
            attempts, requeues = conn.execute(totals).one()
            oldest = conn.execute(
                select(func.min(Job.created_at)).where(Job.state == JobState.queued.value)
            ).scalar()
            waits = (
                conn.execute(
                    select(Job.started_at - Job.created_at)
                    .where(Job.started_at.is_not(None))
                    .order_by(Job.started_at.desc())
                    .limit(RECENT_JOBS)
                )
                .scalars()
                .all()
            )
            runs = (
                conn.execute(
                    select(Job.finished_at - Job.started_at)
                    .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                    .order_by(Job.finished_at.desc())
                    .limit(RECENT_JOBS)
                )
                .scalars()
                .all()
            )
            exactness = conn.execute(
                select(func.count()).where(
                    Job.state == JobState.failed.value, Job.error.like("%ExactnessError%")
                )
            ).scalar()
            status = Job.result["status"].as_string()
            finished = dict(
                conn.execute(
                    select(status, func.count()).where(status.is_not(None)).group_by(status)
                ).all()
            )
            metas = (
                conn.execute(
                    select(JobEvent.data)
                    .where(JobEvent.data["type"].as_string() == "meta")
                    .order_by(JobEvent.id.desc())
                    .limit(RECENT_EVENTS)
                )
                .scalars()
                .all()
            )
        jobs = GaugeMetricFamily("revhpo_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], float(by_state.get(state.value, 0)))
        yield jobs
        yield CounterMetricFamily(
            "revhpo_job_attempts", "Attempts started over all jobs", value=float(attempts)
        )
        yield CounterMetricFamily(
            "revhpo_job_requeues",
            "Attempts that ended without finishing their job and were queued again (lease "
            "expired: a lost worker; or handed back)",
            value=float(requeues),
        )
        yield GaugeMetricFamily(
            "revhpo_queue_oldest_wait_seconds",
            "How long the oldest queued job has waited (0: none queued)",
            value=max(0.0, now - oldest) if oldest is not None else 0.0,
        )
        yield _quantiles(
            "revhpo_queue_wait_seconds",
            f"Queue wait (created → first claim) of the last {RECENT_JOBS} started jobs",
            waits,
        )
        yield _quantiles(
            "revhpo_job_run_seconds",
            f"Run time (first claim → finished) of the last {RECENT_JOBS} finished jobs",
            runs,
        )
        yield CounterMetricFamily(
            "revhpo_exactness_failures",
            "Jobs failed because a reverse pass was not bit-exact (ExactnessError)",
            value=float(exactness or 0),
        )
        runs_by_status = CounterMetricFamily(
            "revhpo_tuning_runs",
            "Finished tuning runs by their status (completed; stopped: wall-time limit; "
            "diverged: training diverged beyond repair)",
            labels=["status"],
        )
        for st in ("completed", "stopped", "diverged"):
            runs_by_status.add_metric([st], float(finished.get(st, 0)))
        yield runs_by_status
        yield _quantiles(
            "revhpo_meta_iteration_seconds",
            f"Duration of the last {RECENT_EVENTS} meta-iterations the workers reported (exact "
            "forward + reverse on the iteration's seeds, and the selection estimate)",
            [m.get("duration_s") if isinstance(m, dict) else None for m in metas],
        )


def _quantiles(name: str, doc: str, values: Iterable[Any]) -> Metric:
    import numpy as np

    vals = np.asarray(
        [v for v in values if isinstance(v, int | float) and 0 <= v < 1e9], np.float64
    )
    g = GaugeMetricFamily(name, doc, labels=["quantile"])
    for q in _QUANTILES:
        g.add_metric([str(q)], float(np.quantile(vals, q)) if len(vals) else 0.0)
    return g


def metrics_router(metrics: ServiceMetrics) -> Any:
    """``GET /metrics`` (the same authentication as every route: anonymous on loopback, else
    any valid key)."""
    router = APIRouter(tags=["metrics"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "exposition text"}},
    )
    def get_metrics(principal: PrincipalDep) -> Response:  # noqa: ARG001 (authentication)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
