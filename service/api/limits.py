"""Request-size limits (before a body is read) and the job-size policy (before queueing)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from revhpo.nets.config import NetConfigBase, parse_net_config
from revhpo.service.settings import Settings
from revhpo.service.spec import JobSpec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def net_params(net: NetConfigBase | Mapping[str, Any], d: int, c: int) -> int:
    """The exact number of parameters of the net a job trains on d features and c classes.

    Counted by the family's config model (``revhpo.nets.config``, no TensorFlow in the API
    process), the same model ``build_net`` validates with; a reconstruction family (the
    autoencoder) outputs d values, not c.

    Args:
        net: the spec's net section (a config model) or its dict.
        d: features per example.
        c: classes.

    Raises:
        ValueError: the config is invalid, or cannot be built on these dimensions (e.g.
            ``time_steps`` does not divide d); the message names the field and value.
    """
    cfg = parse_net_config(net)
    return cfg.num_params(d, cfg.output_dim_for(d, c))


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

    ``params`` is the net's exact parameter count (:func:`net_params`). One meta-iteration is
    a forward and a reverse pass (about three plain trainings); the final evaluation trains
    once per held-out seed plus once more.

    Raises:
        ValueError: the net cannot be built on the dataset's dimensions.
    """
    _, d, c = shape
    params = net_params(spec.net, d, c)
    runs = 3 * spec.meta.iterations + spec.meta.eval_seeds + 1
    return float(params) * spec.training.steps * runs, params
