"""Request-size limits (before a body is read) and the job-size policy (before queueing)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings
from service.spec import JobSpec

DIGITS_SHAPE = (1797, 64, 10)  # examples, features, classes of the bundled digits data


class BodyLimitMiddleware:
    """Refuse a request body larger than its route's limit, with 413, before it is used.

    A declared `Content-Length` over the limit is refused before any byte is read; a streamed
    (chunked) body is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    def limit_for(self, method: str, path: str) -> int:
        """The body limit of a route."""
        s = self.settings
        if method == "POST" and path.rstrip("/") == "/v1/datasets":
            return s.max_dataset_bytes + 64 * 1024  # multipart framing
        if method == "PUT" and path.startswith("/v1/worker/"):
            return s.max_artifact_bytes
        return s.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit or declared < 0:
                    await _send_413(send, scope["path"], limit)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return msg

        await self.app(scope, counted, send)


async def _send_413(send: Send, path: str, limit: int) -> None:
    body = json.dumps(
        {
            "type": "/problems/request-too-large",
            "title": "Request too large",
            "status": 413,
            "detail": f"request body exceeds {limit} bytes",
            "instance": path,
            "field": "body",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def estimate_params(net: dict[str, Any], d: int, c: int) -> int:
    """An upper bound on the trainable parameters of a net config (dense-equivalent).

    Computed without building the net (the API process does not import TensorFlow): an MLP
    with the config's widths (`sizes`, default [50, 50] for mlp and [256, 256] otherwise), or
    for `implicit` nets `n` states with dense A, B, C, D. Structured families (sss, rank1)
    have fewer parameters than this dense bound.
    """
    family = net.get("family")
    if family == "implicit":
        n = int(net.get("n", 64))
        return n * n + n * d + n + c * n + c * d + c
    default = [50, 50] if family == "mlp" else [256, 256]
    sizes = net.get("sizes", net.get("hidden", default))
    if not isinstance(sizes, list) or not all(isinstance(x, int) and x > 0 for x in sizes):
        sizes = default
    widths = [d, *sizes, c]
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def dataset_shape(spec: JobSpec, uploaded: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    """(examples, features, classes) of the spec's dataset, without loading it."""
    ds = spec.dataset
    if ds.kind == "digits":
        return DIGITS_SHAPE
    if ds.kind == "synthetic":
        return ds.n_samples, ds.n_features, 2 if ds.task == "xor" else ds.n_classes
    if ds.kind == "uploaded":
        return uploaded[ds.id]
    raise ValueError(ds.kind)


def job_cost(spec: JobSpec, shape: tuple[int, int, int]) -> tuple[float, int]:
    """(cost, params): params x steps x (3 per meta-iteration + evaluation runs).

    One meta-iteration is a forward and a reverse pass (about three plain trainings); the
    final evaluation trains once per held-out seed plus once more.
    """
    _, d, c = shape
    params = estimate_params(spec.net.config(), d, c)
    runs = 3 * spec.meta.iterations + spec.meta.eval_seeds + 1
    return float(params) * spec.training.steps * runs, params
