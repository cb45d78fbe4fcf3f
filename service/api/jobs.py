"""`/v1/jobs`: submit, list, inspect, cancel, results, plots and progress events."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from revhpo.service import queue
from revhpo.service.auth import Principal
from revhpo.service.db import StorageError, session_scope
from revhpo.service.models import Dataset, Job, JobState
from revhpo.service.schemas import JobDetail, JobPublic, JobResult, JobsPage, Problem
from revhpo.service.settings import Settings
from revhpo.service.spec import JobSpec
from sqlalchemy import select

from .deps import EngineDep, PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from .limits import dataset_shape, job_cost
from .problems import ProblemError, pydantic_errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PROBLEMS = {
    401: {"model": Problem, "description": "missing or unknown API key"},
    404: {"model": Problem, "description": "no such job for this owner"},
    422: {"model": Problem, "description": "invalid request; `field` names the offending field"},
}
SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0

_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "description": "a job spec (the document `revhpo tune` takes), as JSON or YAML",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}

# Datasets the API accepts: the bundled and generated ones, and uploads. Paths on the server's
# disk (npz, csv, idx kinds) are refused: a client must not read the server's files.
_API_DATASET_KINDS = ("digits", "synthetic", "uploaded")


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(404, "Not found", f"no job with id {job_id!r}", field="id")


def _owned_job(session, job_id: str, owner: str) -> Job:  # noqa: ANN001
    """The job `job_id` of `owner`.

    Raises:
        ProblemError: 404 when the owner has no such job.
    """
    try:
        return queue.get_job(session, job_id, owner)
    except queue.NotFound as exc:
        raise _not_found(job_id) from exc


def parse_document(raw: bytes, content_type: str) -> Any:
    """Parse a JSON or YAML request body.

    Raises:
        ProblemError: 415 for another media type, 422 for a body that does not parse.
    """
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in ("", "application/json", "application/yaml", "text/yaml", "application/x-yaml"):
        raise ProblemError(
            415,
            "Unsupported media type",
            f"send application/json or application/yaml. Received: {ctype!r}",
            field="Content-Type",
        )
    try:
        text = raw.decode("utf-8")
        return json.loads(text) if ctype in ("", "application/json") else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ProblemError(
            422, "Invalid request", f"body does not parse: {exc}", field="body"
        ) from exc


def validate_spec(data: Any) -> JobSpec:
    """Validate a job spec document.

    Raises:
        ProblemError: 422 naming every offending field.
    """
    if not isinstance(data, dict):
        raise ProblemError(
            422,
            "Invalid job spec",
            f"a job spec is an object. Received: {type(data).__name__}",
            field="body",
        )
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = pydantic_errors(list(exc.errors()))
        first = errors[0]
        raise ProblemError(
            422,
            "Invalid job spec",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            errors=errors,
        ) from exc


def _check_policy(
    spec: JobSpec, principal: Principal, settings: Settings, session
) -> tuple[float, list[str]]:
    """Server-side limits applied before queueing; returns (cost, dataset ids)."""
    kind = spec.dataset.kind
    if kind not in _API_DATASET_KINDS:
        raise ProblemError(
            422,
            "Invalid job spec",
            f"over the API a dataset is one of {list(_API_DATASET_KINDS)}; upload files with "
            f"POST /v1/datasets and use kind 'uploaded'. Received: dataset.kind={kind!r}",
            field="dataset.kind",
        )
    uploaded: dict[str, tuple[int, int, int]] = {}
    ids: list[str] = []
    if kind == "uploaded":
        ds = session.scalars(
            select(Dataset).where(Dataset.id == spec.dataset.id, Dataset.owner == principal.owner)
        ).first()
        if ds is None:
            raise ProblemError(
                422,
                "Invalid job spec",
                f"no uploaded dataset with this id. Received: dataset.id={spec.dataset.id!r}",
                field="dataset.id",
            )
        uploaded[ds.id] = (ds.n_rows, ds.n_features, ds.n_classes)
        ids.append(ds.id)
    shape = dataset_shape(spec, uploaded)
    if kind == "synthetic" and shape[0] * shape[1] > 50_000_000:
        raise ProblemError(
            422,
            "Job too large",
            f"synthetic data of {shape[0]}x{shape[1]} values exceeds 5e7",
            field="dataset.n_samples",
        )
    try:
        cost, params = job_cost(spec, shape)
    except ValueError as exc:  # e.g. `time_steps` does not divide the dataset's features
        raise ProblemError(
            422,
            "Invalid job spec",
            f"the net cannot be built on this dataset ({shape[1]} features, {shape[2]} "
            f"classes): {exc}",
            field="net",
        ) from exc
    if params * spec.training.steps > spec.limits.max_params_x_steps:
        raise ProblemError(
            422,
            "Job too large",
            f"{params} parameters x {spec.training.steps} steps exceeds the spec's "
            f"limits.max_params_x_steps={spec.limits.max_params_x_steps}",
            field="training.steps",
        )
    if cost > settings.max_job_cost:
        raise ProblemError(
            422,
            "Job too large",
            f"estimated size {cost:.3g} ({params} parameters x {spec.training.steps} "
            f"steps x {spec.meta.iterations} meta-iterations) exceeds this server's limit "
            f"{settings.max_job_cost:.3g}",
            field="meta.iterations",
        )
    return cost, ids


def _submit(
    engine, settings: Settings, principal: Principal, spec: JobSpec, key: str | None
) -> tuple[JobDetail, bool]:
    canonical = spec.model_dump(mode="json")
    sha = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    for attempt in range(2):
        try:
            with session_scope(engine) as s:
                cost, ids = _check_policy(spec, principal, settings, s)
                job, created = queue.enqueue(
                    s,
                    owner=principal.owner,
                    spec=canonical,
                    spec_sha256=sha,
                    idempotency_key=key,
                    max_attempts=settings.max_attempts,
                    cost=cost,
                    dataset_ids=ids,
                    name=spec.name,
                    max_unfinished=settings.max_queued_per_owner,
                )
                return JobDetail.from_row(job), created
        except queue.IdempotencyConflict as exc:
            raise ProblemError(
                422,
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different job spec",
                field="Idempotency-Key",
            ) from exc
        except queue.QuotaExceeded as exc:
            raise ProblemError(429, "Too many jobs", str(exc), field="owner") from exc
        except StorageError as exc:
            # Two requests raced on the same Idempotency-Key: the loser replays the winner.
            if not (exc.conflict and key is not None and attempt == 0):
                raise
    raise AssertionError("unreachable")


@router.post(
    "",
    status_code=202,
    response_model=JobDetail,
    responses={**PROBLEMS, 413: {"model": Problem}, 415: {"model": Problem}},
    openapi_extra=_SPEC_BODY,
    summary="Submit a tuning job",
)
async def create_job(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    engine: EngineDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="replaying a key returns the job it created; the same key with a "
            "different spec is refused (422)",
        ),
    ] = None,
) -> JobDetail:
    """Validate the spec, apply the size limits, and queue the job (202 + `Location`)."""
    data = parse_document(await request.body(), request.headers.get("content-type", ""))
    spec = validate_spec(data)
    job, created = await run_in_threadpool(
        _submit, engine, settings, principal, spec, idempotency_key
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get("", response_model=JobsPage, responses=PROBLEMS, summary="List your jobs")
def list_jobs(
    principal: PrincipalDep,
    session: ReadSessionDep,
    settings: SettingsDep,
    state: Annotated[list[JobState] | None, Query(description="filter (repeatable)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor`")] = None,
) -> JobsPage:
    """One page of the caller's jobs, newest first (cursor pagination, one query)."""
    try:
        jobs, nxt = queue.list_jobs(
            session,
            owner=principal.owner,
            states=[s.value for s in state] if state else None,
            limit=min(limit, settings.page_size_max),
            cursor=cursor,
        )
    except ValueError as exc:
        raise ProblemError(422, "Invalid request", str(exc), field="cursor") from exc
    return JobsPage(items=[JobPublic.from_row(j) for j in jobs], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobDetail, responses=PROBLEMS, summary="A job")
def get_job(job_id: str, principal: PrincipalDep, session: ReadSessionDep) -> JobDetail:
    """State, progress, attempts and error reason of one job."""
    return JobDetail.from_row(_owned_job(session, job_id, principal.owner))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobPublic,
    responses=PROBLEMS,
    summary="Cancel a job",
)
def cancel_job(job_id: str, principal: PrincipalDep, engine: EngineDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within one meta-iteration."""
    try:
        with session_scope(engine) as session:
            return JobPublic.from_row(
                queue.request_cancel(session, job_id=job_id, owner=principal.owner)
            )
    except queue.NotFound as exc:
        raise _not_found(job_id) from exc


@router.get(
    "/{job_id}/result",
    response_model=JobResult,
    responses={**PROBLEMS, 409: {"model": Problem, "description": "job not succeeded"}},
    summary="The result of a succeeded job",
)
def get_result(job_id: str, principal: PrincipalDep, session: ReadSessionDep) -> JobResult:
    """The result document (`result.json` of the tuning run) and links to its plots."""
    job = _owned_job(session, job_id, principal.owner)
    if job.state != JobState.succeeded.value:
        detail = f"job is {job.state}" + (f": {job.error}" if job.error else "")
        raise ProblemError(409, "No result", detail, field="state")
    links = [
        {"name": rel.split("/")[-1], "url": f"/v1/jobs/{job.id}/artifacts/{rel.split('/')[-1]}"}
        for rel in job.artifacts
    ]
    return JobResult(job_id=job.id, result=job.result or {}, artifacts=links)


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={**PROBLEMS, 200: {"content": {"application/octet-stream": {}}}},
    response_class=FileResponse,
    summary="Download a file of a job (plots, result.json)",
)
def get_artifact(
    job_id: str, name: str, principal: PrincipalDep, session: ReadSessionDep, store: StoreDep
) -> FileResponse:
    """A file the job's worker uploaded (e.g. `hyperparameters.png`)."""
    job = _owned_job(session, job_id, principal.owner)
    for rel in job.artifacts:
        if rel.split("/")[-1] == name:
            path = store.job_file(job.id, rel)
            if path.is_file():
                return FileResponse(path, filename=name)
    raise ProblemError(404, "Not found", f"job {job_id} has no file {name!r}", field="name")


def _sse(event_id: int | None, event: str, data: Any) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _event_stream(engine, job_id: str, owner: str, after: int) -> Iterator[str]:
    """Replay the job's events after `after`, then follow them until the job is finished."""
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        with session_scope(engine, write=False) as s:
            job = queue.get_job(s, job_id, owner)
            events = queue.events_after(s, job=job, after_id=after)
            state = job.state
            snapshot = JobPublic.from_row(job).model_dump(mode="json")
        for ev in events:
            after = ev.id
            yield _sse(ev.id, str(ev.data.get("type", "message")), ev.data)
            last_sent = time.monotonic()
        if not events and queue.is_terminal(state):
            yield _sse(None, "end", snapshot)
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if not events:
            time.sleep(SSE_POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=StreamingResponse,
    summary="Progress as Server-Sent Events",
)
def job_events(
    job_id: str,
    principal: PrincipalDep,
    engine: EngineDep,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Events `claimed`, `step`, `meta`, `checkpoint`, `lease_expired`, `done`, ...; then
    `end` with the job. Resumes after `Last-Event-ID`."""
    # a short transaction: the stream itself opens one per poll, none held between
    with session_scope(engine, write=False) as session:
        _owned_job(session, job_id, principal.owner)
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    return StreamingResponse(
        _event_stream(engine, job_id, principal.owner, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
