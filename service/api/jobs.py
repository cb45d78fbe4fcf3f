"""`/v1/jobs`: submit, list, inspect, cancel, results, plots and progress events."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import yaml
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from revhpo.service import queue
from revhpo.service.artifacts import file_response
from revhpo.service.auth import Principal
from revhpo.service.db import StorageError, session_scope
from revhpo.service.models import Dataset, Job, JobState
from revhpo.service.schemas import (
    DOC_MAX_NODES,
    SPEC_MAX_NODES,
    DocumentError,
    JobDetail,
    JobPublic,
    JobResult,
    JobsPage,
    Problem,
    check_document,
)
from revhpo.service.settings import Settings
from revhpo.service.spec import JobSpec
from sqlalchemy import select

from .deps import EngineDep, PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from .limits import dataset_shape, job_cost, load_yaml, sim_cost
from .problems import ProblemError, document_problem, pydantic_errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

PROBLEMS = {
    401: {"model": Problem, "description": "missing or unknown API key"},
    404: {"model": Problem, "description": "no such job for this owner"},
    422: {"model": Problem, "description": "invalid request; `field` names the offending field"},
}
SSE_POLL_SECONDS = 0.5  # between polls while events arrive
SSE_IDLE_POLL_SECONDS = 2.0  # the poll interval grows to this while none do
SSE_KEEPALIVE_SECONDS = 15.0
MAX_SEQ = 2**63 - 1  # the largest id or listing position a database integer holds

# Threads that spec parsing and stream polls may occupy at once (each on top of the shared
# pool's 40): a burst of large submissions or hundreds of open streams never takes the threads
# other routes (heartbeats, claims) need. A stream holds no thread between its polls.
PARSE_THREADS = 1  # parsing holds the GIL: more threads would only take it from the loop
STREAM_THREADS = 4


def _limiter(request: Request, name: str, tokens: int) -> anyio.CapacityLimiter:
    """The app's limiter `name` (created on first use, inside the event loop)."""
    limiter = getattr(request.app.state, name, None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(tokens)
        setattr(request.app.state, name, limiter)
    return limiter


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


def parse_document(raw: bytes, content_type: str, max_nodes: int = DOC_MAX_NODES) -> Any:
    """Parse a JSON or YAML request body, bounded (see `schemas.check_document`).

    YAML is composed by `limits.BoundedYamlLoader` (depth and aliases bounded while parsing);
    the parsed document of either kind is then checked: depth, values after alias expansion,
    text size, no NUL character, no non-finite number.

    Raises:
        ProblemError: 415 for another media type, 422 for a body that does not parse or holds
            a value no job can (NUL, `1e999`, `.inf`), 413 for a document over its bounds.
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
        if ctype in ("", "application/json"):
            data = json.loads(text)
        else:
            data = load_yaml(text, max_nodes)
        check_document(data, max_nodes=max_nodes)
    except DocumentError as exc:
        raise document_problem(exc) from exc
    except RecursionError as exc:  # JSON nested deeper than the interpreter's stack
        raise document_problem(
            DocumentError("body", "the document is nested too deeply", "over 1000 levels")
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ProblemError(
            422, "Invalid request", f"body does not parse: {exc}", field="body"
        ) from exc
    return data


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


def _parse_spec(raw: bytes, content_type: str) -> tuple[JobSpec, dict[str, Any]]:
    """Parse, bound and validate a submitted spec; returns (spec, canonical document).

    Runs in a worker thread: YAML parsing, validation and the canonical dump of a 1 MiB
    body take CPU seconds that must not stall the event loop.
    """
    spec = validate_spec(parse_document(raw, content_type, SPEC_MAX_NODES))
    canonical = spec.model_dump(mode="json")
    try:  # defaults and coercions must not bring back what the parsed body could not hold
        check_document(canonical, max_nodes=SPEC_MAX_NODES)
    except DocumentError as exc:
        raise document_problem(exc, "Invalid job spec") from exc
    return spec, canonical


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
        sim = sim_cost(spec, shape)
        if sim > settings.max_job_cost / 2:  # the SIM initialisation is most of it
            raise ProblemError(
                422,
                "Job too large",
                f"estimated size {cost:.3g}, of which {sim:.3g} for the SIM initialisation "
                "(its explicit net's training and its solver's iterations on the fitted "
                f"states), exceeds this server's limit {settings.max_job_cost:.3g}",
                field="net.init.sim.max_iter",
            )
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
    engine,
    settings: Settings,
    principal: Principal,
    spec: JobSpec,
    canonical: dict[str, Any],
    key: str | None,
) -> tuple[JobDetail, bool]:
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
    body = await request.body()
    spec, canonical = await anyio.to_thread.run_sync(
        _parse_spec,
        body,
        request.headers.get("content-type", ""),
        limiter=_limiter(request, "parse_limiter", PARSE_THREADS),
    )
    job, created = await run_in_threadpool(
        _submit, engine, settings, principal, spec, canonical, idempotency_key
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created:
        log.info("submitted by %r", principal.owner, extra={"job_id": job.id})
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _check_cursor(cursor: str) -> None:
    """Raises ProblemError (422) unless `cursor` is a `next_cursor` this service can issue."""
    try:
        seq = queue.decode_cursor(cursor)
    except ValueError:
        seq = -1
    if not (cursor.isascii() and 0 <= seq <= MAX_SEQ):
        raise ProblemError(
            422,
            "Invalid request",
            f"cursor: not a `next_cursor` of this listing. Received: {cursor!r}",
            field="cursor",
        )


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
    if cursor is not None:
        _check_cursor(cursor)
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
            job = JobPublic.from_row(
                queue.request_cancel(session, job_id=job_id, owner=principal.owner)
            )
    except queue.NotFound as exc:
        raise _not_found(job_id) from exc
    log.info("cancel requested by %r (job %s)", principal.owner, job.state.value)
    return job


EXPORT_MEDIA = {
    "json": "application/json",
    "keras": "application/json",
    "csv": "text/csv; charset=utf-8",
    "npz": "application/octet-stream",
}


@router.get(
    "/{job_id}/result",
    response_model=JobResult,
    responses={
        **PROBLEMS,
        200: {
            "description": "the result document; with `format`, the tuned schedules in it",
            "content": {media: {} for media in {*EXPORT_MEDIA.values(), "application/json"}},
        },
        409: {"model": Problem, "description": "job not succeeded, or nothing to export"},
    },
    summary="The result of a succeeded job (or its tuned schedules with `format`)",
)
def get_result(
    job_id: str,
    principal: PrincipalDep,
    session: ReadSessionDep,
    format: Annotated[  # noqa: A002 (the query parameter's public name)
        Literal["json", "keras", "csv", "npz"] | None,
        Query(
            description="export the tuned schedules with named axes (step, layer) instead "
            "of the whole document, as `revhpo export` does: json, keras (the JSON that "
            "`revhpo.keras.ScheduledMomentum` reads), csv or npz"
        ),
    ] = None,
    which: Annotated[
        Literal["final", "last", "start", "initial"],
        Query(description="with `format`: which iterate's hyperparameters"),
    ] = "final",
) -> Any:
    """The result document (`result.json` of the tuning run) and links to its plots; with
    `format`, the tuned α, γ, λ and init scales in that format."""
    job = _owned_job(session, job_id, principal.owner)
    if job.state != JobState.succeeded.value:
        detail = f"job is {job.state}" + (f": {job.error}" if job.error else "")
        raise ProblemError(409, "No result", detail, field="state")
    if format is not None:
        return _export(job, format, which)
    links = [
        {"name": rel.split("/")[-1], "url": f"/v1/jobs/{job.id}/artifacts/{rel.split('/')[-1]}"}
        for rel in job.artifacts
    ]
    return JobResult(job_id=job.id, result=job.result or {}, artifacts=links)


def _export(job: Job, fmt: str, which: str) -> Response:
    """The tuned schedules of ``job`` in ``fmt`` (409 problem when the result holds none)."""
    from revhpo.export import ExportError, load_schedules

    try:
        schedules = load_schedules(job.result or {}, which=which)
    except ExportError as exc:
        raise ProblemError(409, "Nothing to export", str(exc), field="format") from exc
    if fmt == "npz":
        body = schedules.to_npz_bytes()
    elif fmt == "csv":
        body = schedules.to_csv().encode()
    else:
        body = json.dumps(schedules.to_dict(), indent=1).encode()
    filename = f"{job.id}-{which}.{'json' if fmt == 'keras' else fmt}"
    return Response(
        body,
        media_type=EXPORT_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


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
                return file_response(path, name)
    raise ProblemError(404, "Not found", f"job {job_id} has no file {name!r}", field="name")


def _sse(event_id: int | None, event: str, data: Any) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _check_owned(engine, job_id: str, owner: str) -> None:  # noqa: ANN001
    """Raises ProblemError (404) unless `owner` has the job `job_id`."""
    with session_scope(engine, write=False) as session:
        _owned_job(session, job_id, owner)


def _poll(engine, job_id: str, owner: str, after: int) -> tuple[list[tuple[int, dict]], str, dict]:
    """One brief read: the job's events after `after`, its state and its public snapshot."""
    with session_scope(engine, write=False) as s:
        job = queue.get_job(s, job_id, owner)
        events = [  # each with when the API recorded it (database clock, Unix seconds)
            (ev.id, {**ev.data, "received_at": ev.created_at})
            for ev in queue.events_after(s, job=job, after_id=after)
        ]
        return events, job.state, JobPublic.from_row(job).model_dump(mode="json")


async def _event_stream(
    engine, job_id: str, owner: str, after: int, limiter: anyio.CapacityLimiter
) -> AsyncIterator[str]:
    """Replay the job's events after `after`, then follow them until the job is finished.

    Between polls the stream waits with `asyncio.sleep` and holds no thread; each poll is one
    brief read in a thread of `limiter` (shared by the app's streams). The interval grows
    from `SSE_POLL_SECONDS` to `SSE_IDLE_POLL_SECONDS` while no event arrives.
    """
    last_sent = time.monotonic()
    delay = SSE_POLL_SECONDS
    yield "retry: 2000\n\n"
    while True:
        events, state, snapshot = await anyio.to_thread.run_sync(
            _poll, engine, job_id, owner, after, limiter=limiter
        )
        for event_id, data in events:
            after = event_id
            yield _sse(event_id, str(data.get("type", "message")), data)
            last_sent = time.monotonic()
        if not events and queue.is_terminal(state):
            yield _sse(None, "end", snapshot)
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if events:
            delay = SSE_POLL_SECONDS
        else:
            await asyncio.sleep(delay)
            delay = min(delay * 2, SSE_IDLE_POLL_SECONDS)


def _last_event_id(value: str | None) -> int:
    """The event id a reconnecting client saw last (0: none).

    Raises:
        ProblemError: 422 for anything but a decimal event id this service can have sent.
    """
    if value is None or value == "":
        return 0
    if not (len(value) <= 19 and value.isascii() and value.isdigit() and int(value) <= MAX_SEQ):
        raise ProblemError(
            422,
            "Invalid request",
            f"Last-Event-ID: not an event id of this stream. Received: {value[:40]!r}",
            field="Last-Event-ID",
        )
    return int(value)


@router.get(
    "/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=StreamingResponse,
    summary="Progress as Server-Sent Events",
)
async def job_events(
    request: Request,
    job_id: str,
    principal: PrincipalDep,
    engine: EngineDep,
    last_event_id: Annotated[
        str | None, Header(description="the `id` of the last event received (resumes after it)")
    ] = None,
) -> StreamingResponse:
    """Events `claimed`, `step`, `meta`, `checkpoint`, `lease_expired`, `done`, ...; then
    `end` with the job. Resumes after `Last-Event-ID`."""
    after = _last_event_id(last_event_id)
    limiter = _limiter(request, "stream_limiter", STREAM_THREADS)
    # a short transaction: the stream itself opens one per poll, none held between
    await anyio.to_thread.run_sync(_check_owned, engine, job_id, principal.owner, limiter=limiter)
    return StreamingResponse(
        _event_stream(engine, job_id, principal.owner, after, limiter),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
