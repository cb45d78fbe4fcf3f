"""The Python API of the revhpo service: one HTTP client for users, the CLI and the workers.

Example::

    from revhpo.client import Client

    with Client("http://127.0.0.1:8765", token="rhp_...") as api:
        job = api.submit("examples/quick_digits.yaml")
        for event in api.events(job["id"]):  # progress as Server-Sent Events
            print(event.type, event.data)
        doc = api.result(job["id"])  # the result document and its files
        api.download_artifact(job["id"], "hyperparameters.png", "out/")

Every call returns the API's JSON document as plain ``dict``s (the shapes are the OpenAPI
schemas ``JobDetail``, ``JobsPage``, ``JobResult``, ``DatasetPublic``, ...). The worker
protocol (claim, heartbeat, events, uploads, complete/fail) is under :attr:`Client.worker`.

Retries: connection failures before the request was sent, and 503 answers (the server rolled
the transaction back), are retried for every call, with exponential backoff and jitter
(honouring ``Retry-After``). A call that is idempotent, or that the API makes idempotent, is
also retried after a failure that may have happened after the request was sent (a read
timeout, a dropped connection, 502/504): reads, ``cancel``, uploads by ``PUT``, heartbeats,
``submit`` (it always sends an ``Idempotency-Key``; a replay returns the same job) and the
lease-guarded ``complete``/``fail``/``release``/``cancelled`` (a replay of an applied call can
only answer 409, it is never applied twice). ``claim``, posting progress events and dataset
uploads are not: a replay would claim a second job, duplicate events or store the file twice.

Errors: :class:`ApiError` (the API answered 4xx/5xx; it carries ``status`` and the
``application/problem+json`` ``title``, ``detail`` and ``field``), its subclass
:class:`LeaseLostError` (409 on a worker call: the attempt lost its lease), and
:class:`ApiConnectionError` (the API could not be reached; the message names the URL tried).
All derive from :class:`ClientError`.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import tenacity
from httpx_sse import SSEError, connect_sse
from revhpo.service.logs import context_headers

from revhpo.runtime import __version__

__all__ = [
    "DEFAULT_API",
    "ApiConnectionError",
    "ApiError",
    "Client",
    "ClientError",
    "JobEvent",
    "LeaseLostError",
    "WorkerApi",
]

log = logging.getLogger(__name__)

DEFAULT_API = "http://127.0.0.1:8765"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
SSE_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive comment at least every 15 s

# Failures that happen before any byte of the request reached the server: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures that no retry can fix.
_PERMANENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

Retry = Literal["always", "unsent"]
"""``always``: the call is idempotent (retry any transport failure, 502/503/504);
``unsent``: retry only failures before the request was sent, and 503."""


# ----------------------------------------------------------------------------- errors
class ClientError(Exception):
    """Base of every error the client raises."""


class ApiError(ClientError):
    """The API answered with an error status (its body an RFC 9457 problem document).

    Attributes:
        status: the HTTP status.
        title: the problem's short summary (e.g. ``"Not found"``).
        detail: this occurrence, naming what the server received (may be None).
        field: the offending field (dotted path), if the API named one.
        problem: the whole problem document (``{}`` when the body was not JSON).
        method: the request's method.
        url: the request's URL.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        problem: dict[str, Any] | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        self.status, self.title, self.detail, self.field = status, title, detail, field
        self.problem = problem or {}
        self.method, self.url = method, url
        msg = f"{title} ({status})"
        if detail:
            msg += f": {detail}"
        notes = [f"field: {field}"] if field else []
        errors = self.problem.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            if "received" in errors[0] and "Received" not in (detail or ""):
                notes.append(f"received: {errors[0]['received']!r}")
        if notes:
            msg += f" [{'; '.join(notes)}]"
        super().__init__(msg)

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        """Build from an error response (a problem document, or any other body)."""
        method, url = resp.request.method, str(resp.request.url)
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            text = resp.text.strip()[:300]
            return cls(
                resp.status_code,
                resp.reason_phrase or "HTTP error",
                f"{method} {url} answered: {text!r}" if text else None,
                method=method,
                url=url,
            )
        return cls(
            resp.status_code,
            str(doc.get("title") or resp.reason_phrase or "HTTP error"),
            doc.get("detail"),
            field=doc.get("field"),
            problem=doc,
            method=method,
            url=url,
        )


class LeaseLostError(ApiError):
    """409 on a worker call: the attempt's lease expired or was superseded; stop the job."""


class ApiConnectionError(ClientError):
    """The API could not be reached (or the connection failed mid-call, after the retries).

    Attributes:
        method: the request's method.
        url: the URL that was tried.
        cause: the transport error.
    """

    def __init__(self, method: str, url: str, cause: BaseException) -> None:
        self.method, self.url, self.cause = method, url, cause
        reason = str(cause) or type(cause).__name__
        super().__init__(f"cannot reach the revhpo API at {url} ({method}): {reason}")


class _RetryableStatus(Exception):
    """Internal: an answer (502/503/504) that a retry may fix."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job.

    Attributes:
        id: the stream's last event id (resume after it with ``Last-Event-ID``); as in
            the SSE standard, ``end``, which has no id of its own, repeats the one before it.
        type: the SSE event name: ``claimed``, ``step``, ``meta``, ``checkpoint``,
            ``evaluation``, ``finished``, ``lease_expired``, ``attempt_failed``, ``released``,
            ``done``, and last ``end`` (whose data is the job as ``get`` returns it).
        data: the event's JSON payload (for progress events it carries ``"type"`` too).
    """

    id: int | None
    type: str
    data: dict[str, Any]


# ----------------------------------------------------------------------------- the client
class Client:
    """A client of the revhpo HTTP API (thread-safe; a context manager).

    Args:
        base_url: the API's URL, e.g. ``http://127.0.0.1:8765``.
        token: an API key (``Authorization: Bearer``); None for a loopback server that
            allows anonymous access.
        timeout: seconds for connecting and for each read of a call.
        retries: how many times a failed call is retried (0: never).
        backoff: first wait between retries, in seconds (doubled each time, with jitter).
        backoff_max: longest wait between retries, in seconds.
        transport: an httpx transport (tests, proxies); None for the default.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0. Received: {retries!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        headers = {"User-Agent": f"revhpo/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.worker = WorkerApi(self)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ------------------------------------------------------------------ transport
    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        return path if "://" in path else f"{self.base_url}{path}"

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = tenacity.wait_exponential_jitter(
            initial=self.backoff, max=self.backoff_max, jitter=self.backoff
        )(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableStatus):
            after = exc.response.headers.get("retry-after", "")
            if after.isdigit():
                wait = max(wait, min(float(after), self.backoff_max))
        return wait

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = f"HTTP {exc.response.status_code}" if isinstance(exc, _RetryableStatus) else exc
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s %s failed (%s); retry %d/%d in %.1f s",
            *state.args[:2],
            what,
            state.attempt_number,
            self.retries,
            wait,
        )

    def request(
        self, method: str, path: str, *, retry: Retry = "always", **kwargs: Any
    ) -> httpx.Response:
        """Send one call with the retry policy; returns the (successful) response.

        Args:
            method: HTTP method.
            path: API path (``/v1/jobs``) or absolute URL.
            retry: ``"always"`` for idempotent calls, ``"unsent"`` for the others.
            **kwargs: passed to :meth:`httpx.Client.request` (``json``, ``content``, ...).

        Raises:
            ApiError: the API answered with a status >= 400.
            ApiConnectionError: the API could not be reached (after the retries).
        """

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, _RetryableStatus):
                return True
            if isinstance(exc, _PERMANENT):
                return False
            if isinstance(exc, _NOT_SENT):
                return True
            return retry == "always" and isinstance(exc, httpx.TransportError)

        statuses = (502, 503, 504) if retry == "always" else (503,)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            resp = retrying(self._send_once, method, path, statuses, kwargs)
        except _RetryableStatus as exc:
            resp = exc.response
        except httpx.TransportError as exc:
            raise ApiConnectionError(method, self.url(path), exc) from exc
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    def _send_once(
        self, method: str, path: str, statuses: tuple[int, ...], kwargs: dict[str, Any]
    ) -> httpx.Response:
        headers = context_headers()  # a worker's name and attempt, for the API's logs
        if headers:
            kwargs = {**kwargs, "headers": {**headers, **(kwargs.get("headers") or {})}}
        resp = self._http.request(method, path, **kwargs)
        if resp.status_code in statuses:
            raise _RetryableStatus(resp)
        return resp

    def _json(self, method: str, path: str, *, retry: Retry = "always", **kw: Any) -> Any:
        resp = self.request(method, path, retry=retry, **kw)
        return None if resp.status_code == 204 or not resp.content else resp.json()

    # ------------------------------------------------------------------ jobs
    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status", "database", "backend"}``."""
        return self._json("GET", "/healthz")

    def submit(
        self,
        spec: str | os.PathLike[str] | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job spec; returns the queued job (``JobDetail``: ``id``, ``state``, ...).

        Args:
            spec: a path to a ``.yaml``/``.yml``/``.json`` file, the spec's YAML or JSON text,
                or the spec as a mapping.
            idempotency_key: a replay with the same key returns the job it created (the same
                key with another spec is refused with 422). By default a fresh key is made
                for this call, so that its retries never queue the job twice.

        Raises:
            FileNotFoundError: ``spec`` names a spec file that does not exist.
            ApiError: 422 naming the offending field of an invalid spec, 429 over quota, ...
        """
        headers = {"Idempotency-Key": idempotency_key or f"revhpo-client-{uuid.uuid4().hex}"}
        if isinstance(spec, Mapping):
            return self._json("POST", "/v1/jobs", json=dict(spec), headers=headers)
        text, json_like = _spec_text(spec)
        headers["Content-Type"] = "application/json" if json_like else "application/yaml"
        return self._json("POST", "/v1/jobs", content=text.encode("utf-8"), headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        """One job (``JobDetail``): state, progress, attempts, error, spec, links."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list(
        self,
        state: str | Sequence[str] | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of your jobs, newest first: ``{"items": [...], "next_cursor": ...}``.

        Args:
            state: only jobs in this state or these states (``queued``, ``running``,
                ``succeeded``, ``failed``, ``cancelled``).
            limit: page size (1 to the server's maximum, 200 by default).
            cursor: ``next_cursor`` of the previous page.
        """
        params: builtins.list[tuple[str, str | int]] = [("limit", limit)]
        if isinstance(state, str):
            state = [state]
        params += [("state", s) for s in state or ()]
        if cursor:
            params.append(("cursor", cursor))
        return self._json("GET", "/v1/jobs", params=params)

    def iter_jobs(
        self, state: str | Sequence[str] | None = None, *, page_size: int = 50
    ) -> Iterator[dict[str, Any]]:
        """Every job of yours (newest first), following the cursor page by page."""
        cursor = None
        while True:
            page = self.list(state, limit=page_size, cursor=cursor)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one at its next meta-iteration.

        Returns:
            The job (``JobPublic``) as it is after the request.
        """
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def result(self, job_id: str) -> dict[str, Any]:
        """The result of a succeeded job: ``{"job_id", "result", "artifacts": [{name, url}]}``.

        Raises:
            ApiError: 409 when the job has not succeeded (the detail says its state).
        """
        return self._json("GET", f"/v1/jobs/{job_id}/result")

    def export(self, job_id: str, fmt: str = "json", which: str = "final") -> bytes:
        """The tuned schedules of a succeeded job with named axes, as ``revhpo export`` writes
        them: ``fmt`` is json, keras, csv or npz; ``which`` is final, last, start or initial.

        Raises:
            ApiError: 409 when the job has not succeeded or its result holds no schedules.
        """
        resp = self.request(
            "GET", f"/v1/jobs/{job_id}/result", params={"format": fmt, "which": which}
        )
        return resp.content

    def artifacts(self, job_id: str) -> builtins.list[dict[str, str]]:
        """The files of a succeeded job: ``[{"name": ..., "url": ...}, ...]``."""
        return self.result(job_id)["artifacts"]

    def download_artifact(self, job_id: str, name: str, dest: str | os.PathLike[str]) -> Path:
        """Download one file of a job (``result.json``, a plot).

        Args:
            job_id: the job.
            name: the file's name, as :meth:`artifacts` lists it.
            dest: the file to write, or an existing directory to write ``name`` into.

        Returns:
            The path written.
        """
        path = Path(dest)
        if path.is_dir():
            path = path / name
        resp = self.request("GET", f"/v1/jobs/{job_id}/artifacts/{name}")
        _write_atomic(path, resp.content)
        return path

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """The job's progress events (Server-Sent Events), ending with the ``end`` event.

        Replays the job's events from the start (or after ``last_event_id``), then follows
        them live until the job is finished; the last event is ``end``, whose data is the
        finished job. A broken stream is reconnected with ``Last-Event-ID`` (nothing is
        missed or repeated), up to ``retries`` times in a row.

        Raises:
            ApiError: e.g. 404 for a job that is not yours.
            ApiConnectionError: the stream could not be (re)opened.
        """
        path = f"/v1/jobs/{job_id}/events"
        timeout = httpx.Timeout(self.timeout, read=max(SSE_READ_TIMEOUT_S, self.timeout))
        last = last_event_id
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with connect_sse(self._http, "GET", path, headers=headers, timeout=timeout) as src:
                    resp = src.response
                    if resp.status_code >= 400:
                        resp.read()
                        if resp.status_code != 503:
                            raise ApiError.from_response(resp)
                        raise _RetryableStatus(resp)
                    for sse in src.iter_sse():
                        if not sse.data:
                            continue  # the `retry:` preamble
                        failures = 0
                        event = JobEvent(
                            int(sse.id) if sse.id and sse.id.isdigit() else None,
                            sse.event,
                            json.loads(sse.data),
                        )
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.type == "end":
                            return
                    reason: BaseException = httpx.RemoteProtocolError("stream ended early")
            except SSEError as exc:
                raise ApiError(
                    200, "Not an event stream", str(exc), method="GET", url=self.url(path)
                ) from exc
            except (httpx.TransportError, _RetryableStatus) as exc:
                if isinstance(exc, _PERMANENT):
                    raise ApiConnectionError("GET", self.url(path), exc) from exc
                reason = exc
            failures += 1
            if failures > self.retries:
                if isinstance(reason, _RetryableStatus):
                    raise ApiError.from_response(reason.response)
                raise ApiConnectionError("GET", self.url(path), reason)
            wait = min(self.backoff * 2 ** (failures - 1), self.backoff_max)
            log.warning("event stream of job %s interrupted (%s); reconnecting", job_id, reason)
            time.sleep(wait)

    def wait(self, job_id: str) -> dict[str, Any]:
        """Block until the job is finished (following its events); returns the final job."""
        for event in self.events(job_id):
            if event.type == "end":
                return event.data
        return self.get(job_id)  # pragma: no cover (the stream always ends with `end`)

    # ------------------------------------------------------------------ datasets
    def upload_dataset(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload a ``.npz`` (arrays ``x``, ``y``) or ``.csv`` (label last) dataset.

        Returns:
            The dataset (``DatasetPublic``: ``id``, rows, features, classes, sha256, ...);
            reference it in a spec as ``dataset: {kind: uploaded, id: <id>}``.

        Raises:
            FileNotFoundError: no such file.
            ApiError: 422 for a file that does not read as a dataset, 413 when too large.
        """
        p = Path(path)
        data = p.read_bytes()
        ctype = "text/csv" if p.suffix.lower() == ".csv" else "application/octet-stream"
        return self._json(
            "POST", "/v1/datasets", retry="unsent", files={"file": (p.name, data, ctype)}
        )


class WorkerApi:
    """The worker protocol (``/v1/worker``; worker keys only), as ``Client.worker``.

    Every call after :meth:`claim` names the attempt's lease token; a 409 answer raises
    :class:`LeaseLostError` (the job was given to another attempt: stop it, write nothing).
    """

    def __init__(self, client: Client) -> None:
        self._c = client

    def _call(
        self, method: str, path: str, *, retry: Retry = "always", **kw: Any
    ) -> httpx.Response:
        try:
            return self._c.request(method, path, retry=retry, **kw)
        except ApiError as exc:
            if exc.status == 409 and not isinstance(exc, LeaseLostError):
                raise LeaseLostError(
                    exc.status,
                    exc.title,
                    exc.detail,
                    field=exc.field,
                    problem=exc.problem,
                    method=exc.method,
                    url=exc.url,
                ) from exc
            raise

    def _post(self, path: str, body: dict[str, Any], retry: Retry = "always") -> Any:
        resp = self._call("POST", path, retry=retry, json=body)
        return None if resp.status_code == 204 or not resp.content else resp.json()

    def claim(self, worker: str) -> dict[str, Any] | None:
        """Claim the oldest runnable job; None when there is none.

        Returns:
            ``ClaimResponse``: ``job_id``, ``token``, ``attempt``, ``spec``, ``checkpoint``,
            ``dataset_ids``, ``lease_seconds``, ``heartbeat_seconds``.

        Raises:
            ApiError: 401 (unknown or revoked key), 403 (not a worker key), ...
        """
        return self._post("/v1/worker/claim", {"worker": worker}, retry="unsent")

    def heartbeat(
        self, job_id: str, token: str, progress: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Extend the lease: ``{"cancel_requested", "lease_seconds"}``."""
        body: dict[str, Any] = {"token": token}
        if progress is not None:
            body["progress"] = progress
        return self._post(f"/v1/worker/jobs/{job_id}/heartbeat", body)

    def send_events(
        self, job_id: str, token: str, events: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """Record progress events (also extends the lease): ``{"cancel_requested", ...}``."""
        body = {"token": token, "events": list(events)}
        return self._post(f"/v1/worker/jobs/{job_id}/events", body, retry="unsent")

    def upload_artifact(
        self, job_id: str, token: str, path: str | os.PathLike[str], name: str | None = None
    ) -> None:
        """Upload a result file (``result.json``, a plot) of the attempt."""
        p = Path(path)
        self._call(
            "PUT",
            f"/v1/worker/jobs/{job_id}/artifacts/{name or p.name}",
            content=p.read_bytes(),
            headers={"X-Lease-Token": token},
        )

    def upload_checkpoint(
        self, job_id: str, token: str, path: str | os.PathLike[str], name: str | None = None
    ) -> None:
        """Upload the attempt's latest checkpoint (a later attempt resumes from it)."""
        p = Path(path)
        self._call(
            "PUT",
            f"/v1/worker/jobs/{job_id}/checkpoint/{name or p.name}",
            content=p.read_bytes(),
            headers={"X-Lease-Token": token},
        )

    def download_checkpoint(self, job_id: str, token: str, dest: str | os.PathLike[str]) -> bool:
        """Download the job's last checkpoint into ``dest``; False when it has none."""
        try:
            resp = self._call(
                "GET", f"/v1/worker/jobs/{job_id}/checkpoint", headers={"X-Lease-Token": token}
            )
        except LeaseLostError:
            raise
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        _write_atomic(Path(dest), resp.content)
        return True

    def download_dataset(
        self, job_id: str, token: str, dataset_id: str, dest_dir: str | os.PathLike[str]
    ) -> Path:
        """Download a dataset the job references, as ``dest_dir/<id>.<npz|csv>``."""
        resp = self._call(
            "GET",
            f"/v1/worker/jobs/{job_id}/datasets/{dataset_id}",
            headers={"X-Lease-Token": token},
        )
        ext = ".csv" if ".csv" in resp.headers.get("content-disposition", "") else ".npz"
        path = Path(dest_dir) / f"{dataset_id}{ext}"
        _write_atomic(path, resp.content)
        return path

    def complete(self, job_id: str, token: str, result: dict[str, Any]) -> None:
        """The attempt succeeded: store its result document."""
        self._post(f"/v1/worker/jobs/{job_id}/complete", {"token": token, "result": result})

    def fail(self, job_id: str, token: str, reason: str, *, retryable: bool) -> None:
        """The attempt failed; ``retryable``: the worker or process died (not the job)."""
        body = {"token": token, "reason": reason[:4000], "retryable": retryable}
        self._post(f"/v1/worker/jobs/{job_id}/fail", body)

    def cancelled(self, job_id: str, token: str) -> None:
        """The attempt stopped on its owner's cancel request."""
        self._post(f"/v1/worker/jobs/{job_id}/cancelled", {"token": token})

    def release(self, job_id: str, token: str) -> None:
        """Hand the job back (the worker is shutting down); it is queued again at once."""
        self._post(f"/v1/worker/jobs/{job_id}/release", {"token": token})


# ----------------------------------------------------------------------------- helpers
def _spec_text(spec: str | os.PathLike[str]) -> tuple[str, bool]:
    """(text, is JSON) of a spec given as a path or as YAML/JSON text."""
    if isinstance(spec, os.PathLike):
        return _read_spec(Path(spec))
    text = str(spec)
    one_line = text.strip()
    is_doc = "\n" in one_line or one_line.startswith(("{", "["))
    if not is_doc and _is_spec_path(one_line):
        return _read_spec(Path(one_line))
    return text, one_line.startswith(("{", "["))


def _is_spec_path(s: str) -> bool:
    if s.lower().endswith((".yaml", ".yml", ".json")):
        return True
    try:
        return Path(s).is_file()
    except OSError:  # e.g. a name too long for a path: YAML text
        return False


def _read_spec(path: Path) -> tuple[str, bool]:
    if not path.is_file():
        raise FileNotFoundError(f"spec file not found. Received: {str(path)!r}")
    return path.read_text(encoding="utf-8"), path.suffix.lower() == ".json"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    tmp.replace(path)
