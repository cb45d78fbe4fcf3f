"""Request limits: body sizes (before a body is read), parsed-document bounds (YAML aliases,
depth, size after parsing), NUL characters in paths and queries, and the job-size policy
(before queueing)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import yaml
from fastapi import HTTPException
from revhpo.nets.config import NetConfigBase, parse_net_config
from revhpo.service.schemas import DOC_MAX_DEPTH, DOC_MAX_NODES, DocumentError
from revhpo.service.settings import Settings
from revhpo.service.spec import JobSpec
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

if yaml.__with_libyaml__:  # libyaml's scanner and parser (C); the composer stays in Python
    from yaml.cyaml import CParser as _EventParser
else:  # pragma: no cover (PyYAML built without libyaml)
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _EventParser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


YAML_MAX_ALIASES = 100  # alias uses (`*name`) in one document


class BoundedYamlLoader(Composer, _EventParser, SafeConstructor, Resolver):
    """`yaml.SafeLoader`'s document model, composed with bounds.

    libyaml (C) scans and parses; the composer is PyYAML's, with the nesting depth bounded
    (`DOC_MAX_DEPTH`: a deeply nested document is refused before it can exhaust the stack)
    and the nodes and alias uses counted (`DOC_MAX_NODES`, `YAML_MAX_ALIASES`), so parsing
    stops as soon as a bound is passed. The size after alias expansion is bounded
    by `schemas.check_document` on the constructed data, which walks it as the tree it
    expands to and stops at its node budget: the 513-byte "billion laughs" document is refused
    after `DOC_MAX_NODES` visits instead of expanding to gigabytes.
    """

    def __init__(self, stream: str, max_nodes: int = DOC_MAX_NODES):
        _EventParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self._max_nodes = max_nodes

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (PyYAML's signature)
        """Compose one node, refusing depth over `DOC_MAX_DEPTH` and too many aliases."""
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > YAML_MAX_ALIASES:
                raise DocumentError(
                    "body",
                    f"a job spec uses at most {YAML_MAX_ALIASES} YAML aliases",
                    f"more than {YAML_MAX_ALIASES}",
                    too_large=True,
                )
        else:
            self._nodes += 1
            if self._nodes > self._max_nodes:  # stop parsing early: the walk would refuse it
                raise DocumentError(
                    "body",
                    f"a document holds at most {self._max_nodes} values",
                    f"more than {self._max_nodes}",
                    too_large=True,
                )
        self._depth += 1
        try:
            if self._depth > DOC_MAX_DEPTH:
                raise DocumentError(
                    "body",
                    f"the document is nested deeper than {DOC_MAX_DEPTH} levels",
                    f"more than {DOC_MAX_DEPTH} levels",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, max_nodes: int = DOC_MAX_NODES) -> Any:
    """Parse one YAML document with `BoundedYamlLoader` (safe tags only).

    Raises:
        yaml.YAMLError: the text is not YAML.
        DocumentError: too deep, too many aliases, or more than `max_nodes` values.
    """
    loader = BoundedYamlLoader(text, max_nodes)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class InputGuardMiddleware:
    """Refuse a NUL character in the path or the query string with 422 (problem+json).

    PostgreSQL text cannot hold NUL: without this guard a NUL in a path parameter (a job id,
    a file name) or a query parameter reached the database and failed there with 500. HTTP
    header values cannot carry NUL at all (the HTTP parser refuses them).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            bad = _nul_input(scope)
            if bad is not None:
                field, received = bad
                await _send_problem(
                    send,
                    422,
                    "Invalid request",
                    f"{field}: a NUL character is not allowed. Received: {received!r}",
                    scope["path"],
                    field,
                )
                return
        await self.app(scope, receive, send)


def _nul_input(scope: Scope) -> tuple[str, str] | None:
    """(field, value) of the first path or query value holding a NUL character."""
    path = scope.get("path", "")
    if "\x00" in path:
        return "path", path[:200]
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return (name if "\x00" not in name else "query"), value[:200]
    return None


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
    await _send_problem(
        send, 413, "Request too large", f"request body exceeds {limit} bytes", path, "body"
    )


async def _send_problem(
    send: Send, status: int, title: str, detail: str, path: str, field: str
) -> None:
    """Answer from a middleware with a problem document (and close the connection)."""
    body = json.dumps(
        {
            "type": f"/problems/{title.lower().replace(' ', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
            "field": field,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
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
    cost = float(params) * spec.training.steps * runs
    return cost + sim_cost(spec, shape), params


def sim_cost(spec: JobSpec, shape: tuple[int, int, int]) -> float:
    """The cost of an implicit net's SIM initialisation (0 without one), in the units of
    :func:`job_cost`: the explicit net's plain training (params x steps), plus the solver's
    iterations, each a pass over the fitted states of the ``n + c`` rows of ``[A|B|b]`` and
    ``[C|D|c]`` (``n + d + 1`` features; about 4 flops per weight and example against a
    training step's 6 per weight and minibatch example)."""
    n_examples, d, c = shape
    cfg = parse_net_config(spec.net)
    init = getattr(cfg, "init", None)
    if init is None:
        return 0.0
    sim = init.sim
    explicit = net_params({"family": "mlp", "sizes": sim.source.sizes, "activation": "relu"}, d, c)
    fitted = max(1, round(sim.fraction * n_examples))
    per_iteration = (cfg.n + c) * (cfg.n + d + 1) * 4 * fitted / (6 * spec.training.batch_size)
    return float(explicit) * sim.source.steps + sim.max_iter * per_iteration
