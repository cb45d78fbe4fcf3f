"""The durable job queue: enqueue, claim with a lease, heartbeat, finish, reap.

Invariants (each enforced by one SQL statement, so no nested row locks are ever held):

* A running job has exactly one live attempt, named by `lease_token`. Every write a worker
  makes (heartbeat, events, result, failure, hand-back) is an `UPDATE ... WHERE id = :id AND
  lease_token = :token AND state = 'running' AND lease_expires_at >= db_epoch()`; when it
  matches no row the attempt has lost its lease and the write is refused (`LeaseLost`). A
  late result from an attempt presumed dead therefore never lands.
* Lease time comes from the database clock (`db_epoch()`), never from a worker's clock.
* The reaper turns every expired lease back into `queued` (with exponential backoff through
  `not_before`) or, after `max_attempts` claims, into `failed`. Recovery is keyed to the job
  row, not to a worker's identity, and any API replica may run it.
* Claim: PostgreSQL uses one `UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT
  1) RETURNING`; SQLite runs the same statement inside `BEGIN IMMEDIATE` (one writer at a time).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from revhpo.service.artifacts import attempt_dir
from revhpo.service.db import db_epoch
from revhpo.service.models import TERMINAL_STATES, Job, JobEvent, JobState
from revhpo.service.schemas import result_summary
from sqlalchemy import and_, case, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, defer


class QueueError(Exception):
    """Base class of queue refusals (mapped to HTTP problems by the API)."""


class LeaseLost(QueueError):
    """The attempt's lease expired or was superseded: the write was refused."""


class IdempotencyConflict(QueueError):
    """The Idempotency-Key was already used for a different job spec."""


class NotFound(QueueError):
    """No such job for this owner."""


class QuotaExceeded(QueueError):
    """The owner has too many unfinished jobs."""


@dataclass(frozen=True)
class Claim:
    """A job handed to a worker: the attempt's token and what it needs to run."""

    job_id: str
    token: str
    attempt: int
    spec: dict[str, Any]
    checkpoint: str | None
    dataset_ids: list[str]
    lease_expires_at: float


@dataclass(frozen=True)
class Reaped:
    """A job whose lease had expired, and what the reaper did with it."""

    job_id: str
    state: str
    attempts: int
    lease_expired_at: float
    reaped_at: float


def new_id() -> str:
    """A fresh public identifier (32 hex digits)."""
    return uuid.uuid4().hex


def _live(job_id: str, token: str):  # noqa: ANN202
    """The WHERE clause of every write an attempt makes: its lease still holds."""
    return and_(
        Job.id == job_id,
        Job.lease_token == token,
        Job.state == JobState.running.value,
        Job.lease_expires_at >= db_epoch(),
    )


def _update_live(session: Session, job_id: str, token: str, returning: tuple, **values: Any):  # noqa: ANN202
    """Apply `values` to the job if the attempt still holds its lease; the `returning` row.

    Raises:
        LeaseLost: the lease expired or belongs to another attempt.
    """
    row = session.execute(
        update(Job)
        .where(_live(job_id, token))
        .values(**values)
        .returning(*returning)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise LeaseLost(job_id)
    return row


def enqueue(
    session: Session,
    *,
    owner: str,
    spec: dict[str, Any],
    spec_sha256: str,
    idempotency_key: str | None,
    max_attempts: int,
    cost: float,
    dataset_ids: list[str],
    name: str | None,
    max_unfinished: int | None = None,
) -> tuple[Job, bool]:
    """Queue a job, or return the job an earlier request with the same key created.

    Args:
        session: a write session.
        owner: the owner of the job.
        spec: the validated job spec (JSON-able).
        spec_sha256: hash of the canonical spec (the idempotency fingerprint).
        idempotency_key: the client's `Idempotency-Key`, if any.
        max_attempts: claims before the job fails for good.
        cost: the estimated job size.
        dataset_ids: uploaded datasets the spec references.
        name: a display name.
        max_unfinished: refuse when the owner already has this many unfinished jobs.

    Returns:
        (job, created): created is False for an idempotent replay.

    Raises:
        IdempotencyConflict: the key was used with a different spec.
        QuotaExceeded: too many unfinished jobs.
    """
    if idempotency_key is not None:
        existing = session.scalars(
            select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key)
        ).first()
        if existing is not None:
            if existing.spec_sha256 != spec_sha256:
                raise IdempotencyConflict(idempotency_key)
            return existing, False
    if max_unfinished is not None:
        unfinished = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.owner == owner,
                Job.state.in_([JobState.queued.value, JobState.running.value]),
            )
        )
        if unfinished >= max_unfinished:
            raise QuotaExceeded(f"{unfinished} unfinished jobs (limit {max_unfinished})")
    job = Job(
        id=new_id(),
        owner=owner,
        name=name,
        state=JobState.queued.value,
        spec=spec,
        spec_sha256=spec_sha256,
        idempotency_key=idempotency_key,
        dataset_ids=dataset_ids,
        cost=cost,
        attempts=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        artifacts=[],
        requeues=0,
    )
    session.add(job)
    session.flush()
    session.refresh(job)
    return job, True


def claim(session: Session, *, worker: str, lease_seconds: float) -> Claim | None:
    """Claim the oldest runnable job for `worker`, or None when nothing is runnable.

    One statement: the subquery picks and locks (`FOR UPDATE SKIP LOCKED` on PostgreSQL) the
    oldest queued job whose backoff has passed; the update starts a new attempt with a fresh
    token and a lease of `lease_seconds` on the database clock.
    """
    token = secrets.token_hex(16)
    pick = (
        select(Job.seq)
        .where(Job.state == JobState.queued.value, Job.not_before <= db_epoch())
        .order_by(Job.seq)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(Job)
        .where(Job.seq == pick, Job.state == JobState.queued.value)
        .values(
            state=JobState.running.value,
            lease_token=token,
            lease_expires_at=db_epoch() + lease_seconds,
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=func.coalesce(Job.started_at, db_epoch()),
            updated_at=db_epoch(),
        )
        .returning(
            Job.seq,
            Job.id,
            Job.attempts,
            Job.spec,
            Job.checkpoint,
            Job.dataset_ids,
            Job.lease_expires_at,
        )
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    session.execute(
        insert(JobEvent).values(
            job_seq=row.seq,
            attempt=row.attempts,
            data={"type": "claimed", "attempt": row.attempts, "worker": worker},
        )
    )
    return Claim(
        job_id=row.id,
        token=token,
        attempt=row.attempts,
        spec=row.spec,
        checkpoint=row.checkpoint,
        dataset_ids=list(row.dataset_ids or []),
        lease_expires_at=row.lease_expires_at,
    )


def heartbeat(
    session: Session,
    *,
    job_id: str,
    token: str,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Extend the attempt's lease; returns whether a cancel was requested.

    Raises:
        LeaseLost: the lease expired or belongs to another attempt.
    """
    values: dict[str, Any] = {
        "lease_expires_at": db_epoch() + lease_seconds,
        "updated_at": db_epoch(),
    }
    if progress is not None:
        values["progress"] = progress
    row = _update_live(
        session, job_id, token, (Job.cancel_requested, Job.seq, Job.attempts), **values
    )
    return bool(row.cancel_requested)


def add_events(
    session: Session,
    *,
    job_id: str,
    token: str,
    lease_seconds: float,
    events: list[dict[str, Any]],
) -> bool:
    """Record progress events of a live attempt (also a heartbeat).

    The job's `progress` keeps the last `meta`, `step` and `checkpoint` events under those
    keys. Returns whether a cancel was requested.

    Raises:
        LeaseLost: the lease expired or belongs to another attempt.
    """
    current = session.execute(
        select(Job.seq, Job.attempts, Job.progress).where(_live(job_id, token))
    ).first()
    if current is None:
        raise LeaseLost(job_id)
    progress = dict(current.progress or {})
    for ev in events:
        if ev.get("type") == "meta":
            progress["meta"] = ev
        elif ev.get("type") == "step":
            progress["step"] = ev
        elif ev.get("type") == "checkpoint":
            progress["checkpoint"] = ev
    cancel = heartbeat(
        session, job_id=job_id, token=token, lease_seconds=lease_seconds, progress=progress
    )
    if events:
        session.execute(
            insert(JobEvent),
            [{"job_seq": current.seq, "attempt": current.attempts, "data": ev} for ev in events],
        )
    return cancel


def set_checkpoint(session: Session, *, job_id: str, token: str, checkpoint: str) -> None:
    """Record where the live attempt's latest checkpoint is stored.

    Raises:
        LeaseLost: the lease expired or belongs to another attempt.
    """
    _update_live(session, job_id, token, (Job.seq,), checkpoint=checkpoint, updated_at=db_epoch())


def add_artifact(session: Session, *, job_id: str, token: str, name: str) -> None:
    """Record an artifact uploaded by the live attempt.

    Raises:
        LeaseLost: the lease expired or belongs to another attempt.
    """
    job = session.scalars(select(Job).where(_live(job_id, token))).first()
    if job is None:
        raise LeaseLost(job_id)
    if name not in job.artifacts:
        job.artifacts = [*job.artifacts, name]


def _finish(session: Session, job_id: str, token: str, event: dict[str, Any], **values: Any) -> Job:
    values.setdefault("updated_at", db_epoch())
    row = _update_live(
        session,
        job_id,
        token,
        (Job.seq, Job.attempts),
        lease_token=None,
        lease_expires_at=None,
        **values,
    )
    session.execute(insert(JobEvent).values(job_seq=row.seq, attempt=row.attempts, data=event))
    return session.scalars(select(Job).where(Job.seq == row.seq)).one()


def _end(
    session: Session, job_id: str, token: str, state: JobState, event: dict[str, Any], **values: Any
) -> Job:
    """End the job for good in `state` (a `done` event carrying `event`'s keys too)."""
    return _finish(
        session,
        job_id,
        token,
        {"type": "done", "state": state.value, **event},
        state=state.value,
        **values,
        finished_at=db_epoch(),
    )


def complete(session: Session, *, job_id: str, token: str, result: dict[str, Any]) -> Job:
    """Mark the job succeeded with its result document.

    The job's files become the ones this attempt uploaded (an earlier attempt's `result.json`
    or plots are never listed next to, or served instead of, the final ones).

    Raises:
        LeaseLost: the attempt no longer holds the lease; the result is discarded.
    """
    job = session.scalars(select(Job).where(_live(job_id, token))).first()
    if job is None:
        raise LeaseLost(job_id)
    mine = [a for a in job.artifacts if a.split("/")[0] == attempt_dir(token)]
    return _end(
        session,
        job_id,
        token,
        JobState.succeeded,
        {},
        result=result,
        summary=result_summary(result),
        error=None,
        artifacts=mine,
    )


def _backoff(base: float, cap: float):  # noqa: ANN202
    """SQL: min(base * 2**(attempts-1), cap) seconds (bit shift works on both backends)."""
    delay = literal(float(base)) * (literal(1).op("<<")(Job.attempts - 1))
    return case((delay > cap, literal(float(cap))), else_=delay)


def fail(
    session: Session,
    *,
    job_id: str,
    token: str,
    reason: str,
    retryable: bool,
    backoff_seconds: float,
    backoff_max_seconds: float,
) -> Job:
    """End the attempt with an error: re-queue with backoff when retryable and attempts
    remain, otherwise fail the job with `reason`.

    Raises:
        LeaseLost: the attempt no longer holds the lease.
    """
    if retryable:
        retry = Job.attempts < Job.max_attempts
        return _finish(
            session,
            job_id,
            token,
            {"type": "attempt_failed", "reason": reason, "retryable": True},
            state=case((retry, JobState.queued.value), else_=JobState.failed.value),
            error=reason,
            not_before=db_epoch() + _backoff(backoff_seconds, backoff_max_seconds),
            requeues=Job.requeues + case((retry, 1), else_=0),
            finished_at=case((retry, None), else_=db_epoch()),
        )
    return _end(session, job_id, token, JobState.failed, {"reason": reason}, error=reason)


def mark_cancelled(session: Session, *, job_id: str, token: str) -> Job:
    """The attempt stopped after a cancel request: the job is cancelled.

    Raises:
        LeaseLost: the attempt no longer holds the lease.
    """
    return _end(session, job_id, token, JobState.cancelled, {})


def release(session: Session, *, job_id: str, token: str) -> Job:
    """Hand the job back (a worker shutting down): queued again at once, and the attempt
    does not count against `max_attempts`. A pending cancel request cancels the job instead.

    Raises:
        LeaseLost: the attempt no longer holds the lease.
    """
    return _finish(
        session,
        job_id,
        token,
        {"type": "released"},
        state=case((Job.cancel_requested, JobState.cancelled.value), else_=JobState.queued.value),
        attempts=Job.attempts - 1,
        not_before=db_epoch(),
        requeues=Job.requeues + 1,
        finished_at=case((Job.cancel_requested, db_epoch()), else_=None),
    )


def reap(session: Session, *, backoff_seconds: float, backoff_max_seconds: float) -> list[Reaped]:
    """Re-queue (or fail, or cancel) every running job whose lease expired on the DB clock.

    Returns:
        What was reaped.
    """
    expired = and_(
        Job.state == JobState.running.value,
        Job.lease_expires_at < db_epoch(),
    )
    retry = Job.attempts < Job.max_attempts
    new_state = case(
        (Job.cancel_requested, JobState.cancelled.value),
        (retry, JobState.queued.value),
        else_=JobState.failed.value,
    )
    rows = session.execute(
        update(Job)
        .where(expired)
        .values(
            state=new_state,
            lease_token=None,
            lease_expires_at=None,
            not_before=db_epoch() + _backoff(backoff_seconds, backoff_max_seconds),
            requeues=Job.requeues + case((retry, 1), else_=0),
            error=case(
                (
                    and_(~Job.cancel_requested, ~retry),
                    literal("lease expired on the last allowed attempt (worker lost)"),
                ),
                else_=Job.error,
            ),
            finished_at=case((and_(~Job.cancel_requested, retry), None), else_=db_epoch()),
            updated_at=db_epoch(),
        )
        .returning(Job.seq, Job.id, Job.state, Job.attempts, Job.updated_at)
        .execution_options(synchronize_session=False)
    ).all()
    out = []
    for r in rows:
        session.execute(
            insert(JobEvent).values(
                job_seq=r.seq,
                attempt=r.attempts,
                data={"type": "lease_expired", "state": r.state, "attempt": r.attempts},
            )
        )
        out.append(Reaped(r.id, r.state, r.attempts, r.updated_at, r.updated_at))
    return out


def get_job(session: Session, job_id: str, owner: str | None) -> Job:
    """The job `job_id` if `owner` may see it (None: any owner).

    Raises:
        NotFound: no such job, or it belongs to someone else.
    """
    q = select(Job).where(Job.id == job_id)
    if owner is not None:
        q = q.where(Job.owner == owner)
    job = session.scalars(q).first()
    if job is None:
        raise NotFound(job_id)
    return job


def request_cancel(session: Session, *, job_id: str, owner: str) -> Job:
    """Cancel a job: a queued job at once, a running one at its next meta-iteration.

    A finished job is returned unchanged.

    Raises:
        NotFound: no such job for this owner.
    """
    job = get_job(session, job_id, owner)
    if job.state == JobState.queued.value:
        row = session.execute(
            update(Job)
            .where(Job.seq == job.seq, Job.state == JobState.queued.value)
            .values(
                state=JobState.cancelled.value,
                cancel_requested=True,
                finished_at=db_epoch(),
                updated_at=db_epoch(),
            )
            .returning(Job.seq)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            session.execute(
                insert(JobEvent).values(
                    job_seq=job.seq,
                    attempt=job.attempts,
                    data={"type": "done", "state": JobState.cancelled.value},
                )
            )
    elif job.state == JobState.running.value:
        session.execute(
            update(Job)
            .where(Job.seq == job.seq, Job.state == JobState.running.value)
            .values(cancel_requested=True, updated_at=db_epoch())
            .execution_options(synchronize_session=False)
        )
    session.expire(job)
    return get_job(session, job_id, owner)


def encode_cursor(seq: int) -> str:
    """An opaque cursor for the listing position `seq`."""
    return base64.urlsafe_b64encode(f"j{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The listing position of an opaque cursor.

    Raises:
        ValueError: not a cursor this service issued.
    """
    pad = "=" * (-len(cursor) % 4)
    try:
        raw = base64.urlsafe_b64decode(cursor + pad).decode()
    except Exception as exc:  # binascii.Error, UnicodeDecodeError
        raise ValueError("malformed cursor") from exc
    if not raw.startswith("j") or not raw[1:].isdigit():
        raise ValueError("malformed cursor")
    return int(raw[1:])


def list_jobs(
    session: Session,
    *,
    owner: str,
    states: list[str] | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    """One page of the owner's jobs, newest first, in one query.

    Returns:
        (jobs, next_cursor); next_cursor is None on the last page.

    Raises:
        ValueError: a malformed cursor.
    """
    # a listed row needs neither the spec nor the result (up to megabytes each): its summary
    q = select(Job).options(defer(Job.spec), defer(Job.result)).where(Job.owner == owner)
    if states:
        q = q.where(Job.state.in_(states))
    if cursor:
        q = q.where(Job.seq < decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(Job.seq.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], nxt


def events_after(session: Session, *, job: Job, after_id: int, limit: int = 500) -> list[JobEvent]:
    """The job's events with id > `after_id`, oldest first."""
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_seq == job.seq, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def is_terminal(state: str) -> bool:
    """Whether `state` is final."""
    return state in {s.value for s in TERMINAL_STATES}


def unfinished_clause():  # noqa: ANN201
    """SQL: the job is queued or running."""
    return or_(Job.state == JobState.queued.value, Job.state == JobState.running.value)
