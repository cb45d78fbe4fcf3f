"""Logs of the API, the worker and its job processes: text lines (default) or JSON lines.

``REVHPO_LOG_FORMAT=json`` (or ``revhpo --log-format json …``) writes one JSON object per line
to stderr, with ``python-json-logger``::

    {"time": "2026-12-02 04:10:31,020", "level": "INFO", "logger": "revhpo.service.worker",
     "message": "job 3f0c… attempt 1: start", "job_id": "3f0c…", "attempt": 1, "worker": "gpu-0"}

Every line logged while a job is being handled carries ``job_id``, ``attempt`` and ``worker``
when they are known: the worker sets them for each attempt (its heartbeat and event threads
included) and hands them to the job's TensorFlow process through the environment; the API takes
``job_id`` from the request path and the worker's name and attempt from the ``X-Revhpo-Worker``
and ``X-Revhpo-Attempt`` headers its workers send (informational only: they grant nothing).
Text lines show the same fields as ``[job_id=… attempt=… worker=…]``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "LogContextMiddleware",
    "configure_logging",
    "context_headers",
    "context_thread",
    "env_for_child",
    "forward_lines",
    "json_logs",
    "log_context",
    "safe_label",
    "set_process_context",
]

CONTEXT_FIELDS = ("job_id", "attempt", "worker")
LOG_FORMATS = ("text", "json")
ENV_FORMAT = "REVHPO_LOG_FORMAT"
_ENV_CONTEXT = {field: f"REVHPO_LOG_{field.upper()}" for field in CONTEXT_FIELDS}
_LABEL = re.compile(r"[A-Za-z0-9._:@-]{1,64}")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "revhpo_log_context", default=None
)
_process: dict[str, Any] = {}  # fields of the whole process (a worker's name, a job process's)


def _fields() -> dict[str, Any]:
    return _context.get() or {}


def _current() -> dict[str, Any]:
    """The fields in force here: the process's, overridden by this thread's or task's."""
    return {**_process, **_fields()}


def _env_format() -> str:
    return (os.environ.get(ENV_FORMAT) or "text").lower()


def safe_label(value: Any) -> str | None:
    """``value`` as a log field when it is a short plain label, else None (never log raw
    client-supplied text: it could forge lines in the text format)."""
    text = str(value)
    return text if _LABEL.fullmatch(text) else None


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. ``job_id``, ``attempt``) to every line logged inside the block, in
    this thread or task (see :func:`context_thread` for threads it starts)."""
    token = _context.set({**_fields(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def set_process_context(**fields: Any) -> None:
    """Fields every line of this process carries (a worker's name)."""
    _process.update({k: v for k, v in fields.items() if v is not None})


def context_thread(target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
    """A ``threading.Thread`` running ``target(*args)`` inside the caller's log context."""
    ctx = contextvars.copy_context()
    return threading.Thread(target=ctx.run, args=(target, *args), **kwargs)


def context_headers() -> dict[str, str]:
    """``X-Revhpo-Worker`` / ``X-Revhpo-Attempt`` for the API's logs, when known here."""
    fields = _current()
    headers = {}
    if fields.get("worker") is not None and safe_label(fields["worker"]):
        headers["X-Revhpo-Worker"] = str(fields["worker"])
    if fields.get("attempt") is not None:
        headers["X-Revhpo-Attempt"] = str(fields["attempt"])
    return headers


def env_for_child() -> dict[str, str]:
    """Environment variables that give a child process this context (to add to this process's
    environment, which already carries the log format)."""
    return {_ENV_CONTEXT[k]: str(v) for k, v in _current().items() if k in _ENV_CONTEXT}


class _ContextFilter(logging.Filter):
    """Puts the context fields on each record (as attributes, so JSON lines carry them) and a
    ``context`` string for text lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _current()
        shown = []
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = fields.get(name)
                if value is not None:
                    setattr(record, name, value)
            if value is not None:
                shown.append(f"{name}={value}")
        record.context = f" [{' '.join(shown)}]" if shown else ""
        return True


def json_logs() -> bool:
    """Whether this process writes JSON lines (``$REVHPO_LOG_FORMAT``)."""
    return _env_format() == "json"


def forward_lines(stream: IO[bytes], logger: str = "revhpo.job.stderr") -> None:
    """Copy a child's stderr until EOF: its JSON lines as they are, every other line (e.g.
    TensorFlow's own start-up messages, a traceback) as a warning of ``logger`` in this
    thread's log context, so that a JSON log holds nothing but JSON objects."""
    out = logging.getLogger(logger)
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("{") and line.endswith("}"):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        elif line.strip():
            out.warning("%s", line)
    stream.close()


def configure_logging(level: int = logging.INFO, fmt: str | None = None) -> None:
    """Log to stderr in ``fmt`` (``text`` or ``json``; default ``$REVHPO_LOG_FORMAT`` or text),
    replacing earlier handlers; a child process started with :func:`env_for_child` takes its
    context from the environment."""
    fmt = fmt.lower() if fmt else _env_format()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}. Received: {fmt!r}")
    for name, var in _ENV_CONTEXT.items():
        value = os.environ.get(var)
        if value:
            set_process_context(**{name: int(value) if value.isdigit() else value})
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*RESERVED_ATTRS, "context"],
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here


_JOB_PATH = re.compile(r"^/v1/(?:worker/)?jobs/([0-9a-f]{32})(?:/|$)")


class LogContextMiddleware:
    """ASGI middleware: the lines an API request logs carry its job id (from the path) and the
    calling worker's name and attempt (from its ``X-Revhpo-*`` headers, when plain labels)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _JOB_PATH.match(scope.get("path", ""))
        fields: dict[str, Any] = {"job_id": match.group(1) if match else None}
        for name, value in scope.get("headers") or ():
            if name == b"x-revhpo-worker":
                fields["worker"] = safe_label(value.decode("latin-1"))
            elif name == b"x-revhpo-attempt" and value.isdigit() and len(value) < 10:
                fields["attempt"] = int(value)
        with log_context(**fields):
            await self.app(scope, receive, send)
