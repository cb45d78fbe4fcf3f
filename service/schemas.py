"""Request and response shapes of the HTTP API (separate from the ORM rows of `models`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from revhpo.service.models import Dataset, Job, JobState


def iso(t: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC timestamp."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`)."""

    type: str = Field("about:blank", description="problem type URI")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    field: str | None = Field(None, description="the offending field (dotted path), if any")
    errors: list[dict[str, Any]] | None = Field(
        None, description="every problem found: field, message, received"
    )


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    name: str | None
    state: JobState
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None = Field(None, description="the worker running the current attempt")
    progress: dict[str, Any] | None = Field(
        None, description="last events: `meta` (meta-iteration, losses, eta) and `step`"
    )
    error: str | None = Field(None, description="why the job (or its last attempt) failed")
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    links: dict[str, str]

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        """Build from the ORM row."""
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            name=job.name,
            state=JobState(job.state),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            worker=job.worker if job.state == JobState.running.value else None,
            progress=job.progress,
            error=job.error,
            created_at=iso(job.created_at),
            updated_at=iso(job.updated_at),
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            links={
                "self": base,
                "result": f"{base}/result",
                "events": f"{base}/events",
                "cancel": f"{base}/cancel",
            },
        )


class JobDetail(JobPublic):
    """A job with its spec."""

    spec: dict[str, Any]

    @classmethod
    def from_row(cls, job: Job) -> JobDetail:
        """Build from the ORM row."""
        return cls(**JobPublic.from_row(job).model_dump(), spec=job.spec)


class JobsPage(BaseModel):
    """One page of `GET /v1/jobs`, newest first."""

    items: list[JobPublic]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


class ArtifactLink(BaseModel):
    """A downloadable file of a finished job."""

    name: str
    url: str


class JobResult(BaseModel):
    """The result document of a succeeded job, and its downloadable files."""

    job_id: str
    result: dict[str, Any]
    artifacts: list[ArtifactLink]


class DatasetPublic(BaseModel):
    """An uploaded dataset; reference it from a spec as `dataset: {kind: uploaded, id: ...}`."""

    id: str
    filename: str
    format: str
    size: int
    sha256: str
    n_rows: int
    n_features: int
    n_classes: int
    created_at: str

    @classmethod
    def from_row(cls, d: Dataset) -> DatasetPublic:
        """Build from the ORM row: every field is the row's column of that name, and
        `created_at` is given as ISO 8601."""
        columns = {name: getattr(d, name) for name in cls.model_fields if name != "created_at"}
        return cls(**columns, created_at=iso(d.created_at))


class Health(BaseModel):
    """`GET /healthz`."""

    status: str
    database: str
    backend: str


# ----------------------------------------------------------------------------- worker protocol
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimRequest(_Strict):
    """A worker asks for a job."""

    worker: str = Field(..., min_length=1, max_length=200, description="worker name (for logs)")


class ClaimResponse(BaseModel):
    """A claimed job: the attempt's lease token and what the worker needs to run it."""

    job_id: str
    token: str
    attempt: int
    spec: dict[str, Any]
    checkpoint: str | None = Field(None, description="file name of the last checkpoint, if any")
    dataset_ids: list[str]
    lease_seconds: float
    heartbeat_seconds: float


class LeaseRequest(_Strict):
    """Any write of an attempt names its lease token."""

    token: str = Field(..., min_length=1, max_length=64)


class HeartbeatRequest(LeaseRequest):
    """Extend the lease."""

    progress: dict[str, Any] | None = None


class EventsRequest(LeaseRequest):
    """Progress events of the tuning loop (`step`, `meta`, `checkpoint`, ...)."""

    events: list[dict[str, Any]] = Field(..., max_length=1000)


class LeaseResponse(BaseModel):
    """The lease holds; `cancel_requested` asks the worker to stop the job."""

    cancel_requested: bool
    lease_seconds: float


class CompleteRequest(LeaseRequest):
    """The attempt finished: the result document."""

    result: dict[str, Any]


class FailRequest(LeaseRequest):
    """The attempt failed."""

    reason: str = Field(..., max_length=4000)
    retryable: bool = Field(
        False, description="true: the worker or process died (retry); false: the job itself failed"
    )
