"""`/v1/worker`: the protocol between the queue and HTTP workers (worker keys only).

Every call after the claim names the attempt's lease token; a call from an attempt whose
lease expired or was superseded gets 409 and its data is discarded.

Results of any size: the worker uploads `result.json` with a streamed PUT (limit
`max_artifact_bytes`), then completes with an empty `result`; the API reads the attempt's
uploaded `result.json` as the result document. (A `result` in the body, which must fit in
`max_request_bytes` like every JSON body, is still accepted.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from revhpo.service import queue
from revhpo.service.artifacts import ArtifactStore, TooLarge, attempt_dir, file_response, safe_name
from revhpo.service.db import session_scope
from revhpo.service.logs import safe_label
from revhpo.service.models import Dataset
from revhpo.service.schemas import (
    ClaimRequest,
    ClaimResponse,
    CompleteRequest,
    EventsRequest,
    FailRequest,
    HeartbeatRequest,
    LeaseRequest,
    LeaseResponse,
    Problem,
)
from revhpo.service.settings import Settings
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from .deps import EngineDep, ReadSessionDep, SettingsDep, StoreDep, WorkerDep
from .problems import ProblemError

router = APIRouter(prefix="/v1/worker", tags=["worker"])
log = logging.getLogger(__name__)

RESPONSES = {
    401: {"model": Problem},
    403: {"model": Problem, "description": "not a worker key"},
    409: {"model": Problem, "description": "the attempt's lease is lost; stop the job"},
}
TokenHeader = Annotated[str, Header(alias="X-Lease-Token", min_length=1, max_length=64)]


def _lost(job_id: str) -> ProblemError:
    return ProblemError(
        409,
        "Lease lost",
        f"the lease of this attempt on job {job_id} expired or was superseded",
        field="token",
    )


RESULT_FILE = "result.json"


def _lease_call(engine, fn, job_id: str, **kw):  # noqa: ANN001, ANN202
    """`fn(session, job_id=..., **kw)` in its own committed transaction; a lost lease is 409."""
    try:
        with session_scope(engine) as session:
            return fn(session, job_id=job_id, **kw)
    except queue.LeaseLost as exc:
        raise _lost(job_id) from exc


def _renew(engine, settings, fn, job_id: str, token: str, **kw) -> LeaseResponse:  # noqa: ANN001
    """Run the lease-extending write `fn` (a heartbeat, or events); answer whether to cancel."""
    cancel = _lease_call(
        engine, fn, job_id, token=token, lease_seconds=settings.lease_seconds, **kw
    )
    return LeaseResponse(cancel_requested=cancel, lease_seconds=settings.lease_seconds)


@router.post(
    "/claim",
    response_model=ClaimResponse,
    responses={**RESPONSES, 204: {"description": "nothing to run"}},
)
def claim(
    body: ClaimRequest, _w: WorkerDep, engine: EngineDep, settings: SettingsDep
) -> ClaimResponse | Response:
    """Claim the oldest runnable job (204 when none)."""
    with session_scope(engine) as session:
        c = queue.claim(session, worker=body.worker[:200], lease_seconds=settings.lease_seconds)
    if c is None:
        return Response(status_code=204)
    log.info(
        "claimed by %r (attempt %d)",
        body.worker[:200],
        c.attempt,
        extra={"job_id": c.job_id, "attempt": c.attempt, "worker": safe_label(body.worker)},
    )
    return ClaimResponse(
        job_id=c.job_id,
        token=c.token,
        attempt=c.attempt,
        spec=c.spec,
        checkpoint=c.checkpoint.split("/")[-1] if c.checkpoint else None,
        dataset_ids=c.dataset_ids,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
    )


@router.post("/jobs/{job_id}/heartbeat", response_model=LeaseResponse, responses=RESPONSES)
def heartbeat(
    job_id: str, body: HeartbeatRequest, _w: WorkerDep, engine: EngineDep, settings: SettingsDep
) -> LeaseResponse:
    """Extend the lease; the answer says whether the owner asked to cancel."""
    return _renew(engine, settings, queue.heartbeat, job_id, body.token, progress=body.progress)


@router.post("/jobs/{job_id}/events", response_model=LeaseResponse, responses=RESPONSES)
def events(
    job_id: str, body: EventsRequest, _w: WorkerDep, engine: EngineDep, settings: SettingsDep
) -> LeaseResponse:
    """Record progress events (also extends the lease)."""
    return _renew(engine, settings, queue.add_events, job_id, body.token, events=body.events)


@dataclass(frozen=True)
class _Upload:
    """A PUT of the live attempt: its body is to be stored as the job's file `name`."""

    job_id: str
    token: str
    name: str
    request: Request
    engine: Engine
    store: ArtifactStore
    settings: Settings

    async def _save(self) -> str:
        """Store the body as this attempt's file `name`; returns its relative path."""
        job_id, token, engine, store = self.job_id, self.token, self.engine, self.store
        try:
            rel = f"{attempt_dir(token)}/{safe_name(self.name)}"
            dest = store.job_file(safe_name(job_id), rel)
        except ValueError as exc:
            raise ProblemError(422, "Invalid request", str(exc), field="name") from exc

        def holds_lease() -> bool:
            with session_scope(engine, write=False) as s:
                try:
                    return queue.get_job(s, job_id, None).lease_token == token
                except queue.NotFound:
                    return False

        if not await run_in_threadpool(holds_lease):  # refuse early when the lease is gone
            raise _lost(job_id)
        try:
            await store.save_stream(self.request.stream(), dest, self.settings.max_artifact_bytes)
        except TooLarge as exc:
            raise ProblemError(413, "Request too large", str(exc), field="body") from exc
        return rel

    async def save_and_record(self, record: Callable[[Session, str], None]) -> Response:
        """Store the upload, then `record(session, rel)`; a lost lease discards the file."""
        rel = await self._save()

        def in_session() -> None:
            with session_scope(self.engine) as s:
                record(s, rel)

        try:
            await run_in_threadpool(in_session)  # never block the event loop on a database lock
        except queue.LeaseLost as exc:
            self.store.job_file(self.job_id, rel).unlink(missing_ok=True)
            raise _lost(self.job_id) from exc
        return Response(status_code=204)


def _upload(
    job_id: str,
    name: str,
    request: Request,
    token: TokenHeader,
    _w: WorkerDep,
    engine: EngineDep,
    store: StoreDep,
    settings: SettingsDep,
) -> _Upload:
    """What the upload routes take (a worker key, the lease token and the body)."""
    return _Upload(job_id, token, name, request, engine, store, settings)


UploadDep = Annotated[_Upload, Depends(_upload)]


@router.put("/jobs/{job_id}/artifacts/{name}", status_code=204, responses=RESPONSES)
async def put_artifact(up: UploadDep) -> Response:
    """Upload a result file (plot, result.json) of the live attempt."""

    def record(s: Session, rel: str) -> None:
        queue.add_artifact(s, job_id=up.job_id, token=up.token, name=rel)

    return await up.save_and_record(record)


@router.put("/jobs/{job_id}/checkpoint/{name}", status_code=204, responses=RESPONSES)
async def put_checkpoint(up: UploadDep) -> Response:
    """Upload the attempt's latest meta-iteration checkpoint (the next attempt resumes it)."""

    def record(s: Session, rel: str) -> None:
        queue.set_checkpoint(s, job_id=up.job_id, token=up.token, checkpoint=rel)

    return await up.save_and_record(record)


def _job_for_attempt(session, job_id: str, token: str):  # noqa: ANN202
    try:
        job = queue.get_job(session, job_id, None)
    except queue.NotFound as exc:
        raise _lost(job_id) from exc
    if job.lease_token != token:
        raise _lost(job_id)
    return job


@router.get(
    "/jobs/{job_id}/checkpoint",
    response_class=FileResponse,
    responses={**RESPONSES, 404: {"model": Problem}},
)
def get_checkpoint(
    job_id: str, token: TokenHeader, _w: WorkerDep, session: ReadSessionDep, store: StoreDep
) -> FileResponse:
    """The job's last checkpoint (written by an earlier attempt)."""
    job = _job_for_attempt(session, job_id, token)
    if not job.checkpoint or not store.job_file(job.id, job.checkpoint).is_file():
        raise ProblemError(404, "Not found", "the job has no checkpoint", field="checkpoint")
    return file_response(store.job_file(job.id, job.checkpoint), job.checkpoint.split("/")[-1])


@router.get(
    "/jobs/{job_id}/datasets/{dataset_id}",
    response_class=FileResponse,
    responses={**RESPONSES, 404: {"model": Problem}},
)
def get_dataset(
    job_id: str,
    dataset_id: str,
    token: TokenHeader,
    _w: WorkerDep,
    session: ReadSessionDep,
    store: StoreDep,
) -> FileResponse:
    """A dataset the attempt's job references (saved by the worker as `<id>.<format>`)."""
    job = _job_for_attempt(session, job_id, token)
    if dataset_id not in (job.dataset_ids or []):
        raise ProblemError(404, "Not found", "the job references no such dataset", field="id")
    row = session.scalars(select(Dataset).where(Dataset.id == dataset_id)).first()
    if row is None:
        raise ProblemError(404, "Not found", "dataset missing", field="id")
    return file_response(store.root / row.path, f"{row.id}.{row.format}")


_FINISHED = {
    "complete": "attempt succeeded",
    "fail": "attempt failed",
    "mark_cancelled": "attempt stopped on a cancel request",
    "release": "attempt handed back; queued again",
}


def _finish_call(engine, fn, job_id: str, **kw) -> Response:  # noqa: ANN001
    """Run `fn(session, job_id=..., **kw)` in its own committed transaction."""
    _lease_call(engine, fn, job_id, **kw)
    what = _FINISHED.get(fn.__name__, fn.__name__)
    if fn is queue.fail:
        retry = "retryable" if kw.get("retryable") else "not retryable"
        log.warning("%s (%s): %r", what, retry, str(kw.get("reason"))[:500])
    else:
        log.info("%s", what)
    return Response(status_code=204)


def _uploaded_result(store: ArtifactStore, job_id: str, token: str) -> dict[str, Any]:
    """The attempt's uploaded `result.json`, parsed (422 when missing or not a JSON object)."""
    try:
        path = store.job_file(safe_name(job_id), f"{attempt_dir(token)}/{RESULT_FILE}")
    except ValueError as exc:
        raise ProblemError(422, "Invalid request", str(exc), field="token") from exc
    if not path.is_file():
        raise ProblemError(
            422,
            "No result",
            f"empty `result` and this attempt uploaded no {RESULT_FILE}: upload it first "
            f"(PUT /v1/worker/jobs/{job_id}/artifacts/{RESULT_FILE})",
            field="result",
        )
    try:
        doc = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ProblemError(
            422, "Invalid result", f"{RESULT_FILE} is not JSON: {exc}", field="result"
        ) from exc
    if not isinstance(doc, dict):
        raise ProblemError(
            422, "Invalid result", f"{RESULT_FILE} must hold a JSON object", field="result"
        )
    return doc


@router.post(
    "/jobs/{job_id}/complete",
    status_code=204,
    responses={**RESPONSES, 422: {"model": Problem}},
)
def complete(
    job_id: str, body: CompleteRequest, _w: WorkerDep, engine: EngineDep, store: StoreDep
) -> Response:
    """The attempt succeeded: store the result (refused if the lease is lost).

    An empty `result` means "the `result.json` this attempt uploaded" (results of any size up
    to `REVHPO_MAX_ARTIFACT_BYTES` travel as a streamed upload, never in a JSON body).
    """
    with session_scope(engine, write=False) as s:  # refuse a lost lease before reading a file
        _job_for_attempt(s, job_id, body.token)
    result = body.result or _uploaded_result(store, job_id, body.token)
    response = _finish_call(engine, queue.complete, job_id, token=body.token, result=result)
    with session_scope(engine, write=False) as s:  # the files of earlier attempts go
        job = queue.get_job(s, job_id, None)
        keep = {rel.split("/")[0] for rel in [*job.artifacts, job.checkpoint or ""] if rel}
    store.prune_attempts(job_id, keep)
    return response


@router.post("/jobs/{job_id}/fail", status_code=204, responses=RESPONSES)
def fail(
    job_id: str, body: FailRequest, _w: WorkerDep, engine: EngineDep, settings: SettingsDep
) -> Response:
    """The attempt failed: retry with backoff if `retryable` and attempts remain, else fail."""
    return _finish_call(
        engine,
        queue.fail,
        job_id,
        token=body.token,
        reason=body.reason,
        retryable=body.retryable,
        backoff_seconds=settings.backoff_seconds,
        backoff_max_seconds=settings.backoff_max_seconds,
    )


@router.post("/jobs/{job_id}/cancelled", status_code=204, responses=RESPONSES)
def cancelled(job_id: str, body: LeaseRequest, _w: WorkerDep, engine: EngineDep) -> Response:
    """The attempt stopped on a cancel request."""
    return _finish_call(engine, queue.mark_cancelled, job_id, token=body.token)


@router.post("/jobs/{job_id}/release", status_code=204, responses=RESPONSES)
def release(job_id: str, body: LeaseRequest, _w: WorkerDep, engine: EngineDep) -> Response:
    """Hand the job back (worker shutting down); it is queued again at once."""
    return _finish_call(engine, queue.release, job_id, token=body.token)
