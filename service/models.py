"""ORM rows (SQLAlchemy 2.0). The API's request/response shapes live in `revhpo.service.schemas`.

Times are float seconds since the Unix epoch taken from the database clock (`db_epoch()`), so
lease arithmetic is one comparison in SQL on every backend.
"""

from __future__ import annotations

import enum
from typing import Any

from revhpo.service.db import db_epoch
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(enum.StrEnum):
    """A job's life: queued -> running -> succeeded | failed | cancelled (running -> queued on
    a lost lease or a hand-back)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


class Base(DeclarativeBase):
    """Declarative base of every table."""


class ApiKey(Base):
    """An API key, stored as its SHA-256 hash; `prefix` (public) finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    is_worker: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_epoch())
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    """A tuning job: the spec, its queue state, its lease and its result.

    `seq` orders the queue and the listing cursor; `id` is the public identifier.
    """

    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    dataset_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    cost: Mapped[float] = mapped_column(Float, default=0.0)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[float] = mapped_column(Float, server_default=db_epoch())
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # key figures of `result` (schemas.result_summary), small enough for every listed row
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(400), nullable=True)
    artifacts: Mapped[list[str]] = mapped_column(JSON, default=list)
    requeues: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[float] = mapped_column(Float, server_default=db_epoch())
    updated_at: Mapped[float] = mapped_column(Float, server_default=db_epoch())
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_state_not_before_seq", "state", "not_before", "seq"),
        Index("ix_jobs_owner_seq", "owner", "seq"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    )


class JobEvent(Base):
    """One progress event of a job (the SSE stream replays these by `id`)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_epoch())

    __table_args__ = (Index("ix_job_events_job_id", "job_seq", "id"),)


class Dataset(Base):
    """An uploaded dataset file (`.npz` or `.csv`) kept in the artifact directory."""

    __tablename__ = "datasets"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(8))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(400))
    n_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    n_features: Mapped[int] = mapped_column(BigInteger, default=0)
    n_classes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_epoch())
