"""Request and response shapes of the HTTP API (separate from the ORM rows of `models`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from revhpo.service.models import Dataset, Job, JobState

# Bounds of every JSON or YAML document a request carries (after parsing, aliases expanded).
DOC_MAX_DEPTH = 32  # nested objects and arrays
DOC_MAX_NODES = 100_000  # values (objects, arrays, scalars), counting each alias expansion
# A job spec's values: hundreds in any real spec; the bound keeps a hostile 1 MiB body's parse
# (PyYAML composes in Python, ~5 µs a value) to tens of milliseconds before it is refused.
SPEC_MAX_NODES = 10_000
DOC_MAX_CHARS = 4 << 20  # characters of all strings and keys


class DocumentError(ValueError):
    """A request document out of bounds or holding a value no database stores.

    Attributes:
        field: the dotted path of the offending value (`body` for the whole document).
        message: what is wrong.
        received: the offending value, shortened (JSON-able).
        too_large: the document is over a size bound (HTTP 413) rather than invalid (422).
    """

    def __init__(self, field: str, message: str, received: Any = None, *, too_large: bool = False):
        super().__init__(f"{field}: {message}. Received: {received!r}")
        self.field, self.message, self.received = field, message, received
        self.too_large = too_large


def _dotted(root: str, path: tuple) -> str:
    parts = [root] if root else []
    parts += [str(p) for p in path]
    return ".".join(parts) or "body"


def check_document(
    value: Any,
    *,
    root: str = "",
    max_depth: int = DOC_MAX_DEPTH,
    max_nodes: int = DOC_MAX_NODES,
    max_chars: int = DOC_MAX_CHARS,
) -> None:
    """Check a parsed JSON/YAML document before it is validated or stored.

    Walks the document as the tree it serialises to (a YAML alias is walked once per use)
    without recursion, and stops at the first problem, so the walk itself is bounded by
    `max_nodes` whatever the input (shared or self-referencing YAML nodes included).

    Raises:
        DocumentError: nested deeper than `max_depth`, more than `max_nodes` values or
            `max_chars` characters, a NUL character in a string or key (PostgreSQL text
            cannot hold it), or a non-finite number (`1e999`, `.inf`, `NaN`: JSON has none).
    """

    # Made when raised: an error kept in a local of this frame would hold its traceback, the
    # frame and so the whole parsed document in a reference cycle (megabytes per refused body,
    # freed only by a later garbage collection).
    def too_many() -> DocumentError:
        return DocumentError(
            "body",
            f"a document holds at most {max_nodes} values",
            f"more than {max_nodes}",
            too_large=True,
        )

    nodes = chars = 0
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        v, path, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise too_many()
        if isinstance(v, str):
            chars += len(v)
            bad = text_problem(v)
            if bad:
                raise DocumentError(_dotted(root, path), bad, v[:200])
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise DocumentError(_dotted(root, path), "a number must be finite", repr(v))
        elif isinstance(v, dict | list | tuple):
            if depth >= max_depth:
                raise DocumentError(
                    _dotted(root, path),
                    f"the document is nested deeper than {max_depth} levels",
                    f"more than {max_depth} levels",
                )
            if nodes + len(stack) + len(v) > max_nodes:  # each will be a value: refuse now,
                raise too_many()  # before a 500,000-item array is pushed item by item
            if isinstance(v, dict):
                for k, item in v.items():
                    key = k if isinstance(k, str) else str(k)
                    chars += len(key)
                    bad = text_problem(key)
                    if bad:
                        raise DocumentError(_dotted(root, path), f"{bad} in a key", key[:200])
                    stack.append((item, (*path, key), depth + 1))
            else:
                stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(v))
        if chars > max_chars:
            raise DocumentError(
                "body",
                f"a document holds at most {max_chars} characters of text",
                f"more than {max_chars}",
                too_large=True,
            )


def text_problem(v: str) -> str | None:
    """Why text cannot be stored, or None: a NUL character (PostgreSQL text cannot hold it) or a
    lone surrogate (``"\\ud800"`` in JSON: not Unicode text, no database encoding takes it)."""
    if "\x00" in v:
        return "a NUL character is not allowed"
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone surrogate (\\ud800-\\udfff) is not text"
    return None


def _no_nul(v: str) -> str:
    bad = text_problem(v)
    if bad:
        raise ValueError(f"{bad}. Received: {v[:200]!r}")
    return v


def _json_value(v: Any) -> Any:
    try:  # the body limit bounds a JSON body's size (no aliases); depth and content matter
        check_document(v, max_nodes=1 << 30, max_chars=1 << 40)
    except DocumentError as exc:
        raise ValueError(f"{exc.message} (at {exc.field}). Received: {exc.received!r}") from exc
    return v


# A string the database can store (no NUL), and a JSON value it can store (bounded, finite).
Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_value)]


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
    summary: dict[str, Any] | None = Field(
        None,
        description="a succeeded job's key figures: `initial` and `final` mean `val_loss`, "
        "`test_loss`, `test_acc` over the held-out evaluation seeds, `returned_iteration`, "
        "`select_loss`, `meta_iterations`, `n_hyperparameters`, `status`",
    )
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
            summary=job.summary,
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


class WhoAmI(BaseModel):
    """`GET /v1/whoami`: who the API takes the caller for."""

    owner: str = Field(..., description="the owner of the caller's jobs and datasets")
    worker: bool = Field(..., description="a worker key (may claim and run jobs)")
    anonymous: bool = Field(..., description="no key: a loopback caller acting as `local`")


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

    worker: Text = Field(..., min_length=1, max_length=200, description="worker name (for logs)")


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

    token: Text = Field(..., min_length=1, max_length=64)


class HeartbeatRequest(LeaseRequest):
    """Extend the lease."""

    progress: JsonObject | None = None


class EventsRequest(LeaseRequest):
    """Progress events of the tuning loop (`step`, `meta`, `checkpoint`, ...)."""

    events: list[JsonObject] = Field(..., max_length=1000)


class LeaseResponse(BaseModel):
    """The lease holds; `cancel_requested` asks the worker to stop the job."""

    cancel_requested: bool
    lease_seconds: float


class CompleteRequest(LeaseRequest):
    """The attempt finished: the result document."""

    result: JsonObject


class FailRequest(LeaseRequest):
    """The attempt failed."""

    reason: Text = Field(..., max_length=4000)
    retryable: bool = Field(
        False, description="true: the worker or process died (retry); false: the job itself failed"
    )


# ----------------------------------------------------------------------------- result summary
#: The held-out figures a job's summary carries, from `result.json`'s `evaluation`.
SUMMARY_FIGURES = ("val_loss", "test_loss", "test_acc")


def _finite(x: Any) -> float | None:
    return (
        float(x)
        if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        else None
    )


def result_summary(result: Any) -> dict[str, Any] | None:
    """The key figures of a result document, small enough for every row of a job listing.

    ``{"status", "meta_iterations", "n_hyperparameters", "returned_iteration", "select_loss",
    "initial": {...}, "final": {...}, "eval_seeds"}``, the last two holding the means over the
    held-out evaluation seeds of :data:`SUMMARY_FIGURES` (test figures are shown only once a
    job has ended, as in its final report). Keys the document lacks (or holds with another
    type, or non-finite) are left out; ``None`` when nothing is left.
    """
    if not isinstance(result, dict):
        return None
    out: dict[str, Any] = {}
    if isinstance(result.get("status"), str):
        out["status"] = result["status"][:40]
    for key in ("meta_iterations", "n_hyperparameters"):
        if isinstance(result.get(key), int) and not isinstance(result.get(key), bool):
            out[key] = result[key]
    sel = result.get("selection")
    if isinstance(sel, dict):
        if isinstance(sel.get("iteration"), int) and not isinstance(sel.get("iteration"), bool):
            out["returned_iteration"] = sel["iteration"]
        if (v := _finite(sel.get("select_loss"))) is not None:
            out["select_loss"] = v
    ev = result.get("evaluation")
    if isinstance(ev, dict):
        if isinstance(ev.get("seeds"), list):
            out["eval_seeds"] = len(ev["seeds"])
        for which in ("initial", "final"):
            part = ev.get(which)
            if isinstance(part, dict):
                figs = {
                    f: v
                    for f in SUMMARY_FIGURES
                    if (v := _finite(part.get(f"{f}_mean"))) is not None
                }
                if figs:
                    out[which] = figs
    return out or None
