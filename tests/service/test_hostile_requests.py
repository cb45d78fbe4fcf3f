"""Hostile request bodies and parameters get a 4xx problem document, never a 5xx.

On a real uvicorn server, one per backend (SQLite and PostgreSQL): YAML alias bombs and deeply
nested JSON or YAML, NUL characters (PostgreSQL text cannot hold them) in spec fields, keys,
path and query parameters and worker payloads, non-finite numbers (`1e999`, `.inf`, `NaN`:
JSON has none), and malformed `Last-Event-ID` values and listing cursors. Also: a spec body
is parsed off the event loop (a worker heartbeat is answered while a 1 MiB YAML body is
parsed), and open event streams hold no thread of the shared pool while they wait.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import socket
import threading
import time
import tracemalloc
import uuid

import httpx
import pytest
import yaml
from revhpo.service.api.limits import load_yaml
from revhpo.service.schemas import DOC_MAX_DEPTH, SPEC_MAX_NODES, DocumentError, check_document
from svc_helpers import BACKENDS, REPO, create_key, tiny_spec

PROBLEM = "application/problem+json"
_server = pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")

# The 513-byte document of the issue: nine levels of nine aliases expand to 9^9 strings.
_LOL = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)),
    ]
)
YAML_BOMB = "name: bomb\nnet:\n  family: mlp\n  extra:\n" + "".join(
    f"    {line}\n" for line in _LOL.splitlines()
)


def _json(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _spec_with(path: str, value) -> dict:  # noqa: ANN001
    spec = json.loads(json.dumps(tiny_spec()))
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node[p]
    node[last] = value
    return spec


# (id, content type, body, status, field)
BODIES = [
    ("yaml-alias-bomb", "application/yaml", YAML_BOMB.encode(), 413, "body"),
    (
        "yaml-101-aliases",
        "application/yaml",
        b"a: &a 1\nb: [" + b"*a, " * 101 + b"1]\n",
        413,
        "body",
    ),
    ("yaml-recursive-alias", "application/yaml", b"name: &x [*x]\n", 422, None),
    # more values than any job spec holds: refused after SPEC_MAX_NODES, not the whole body
    ("yaml-flat-values", "application/yaml", b"name: [" + b"1," * 200_000 + b"1]\n", 413, "body"),
    ("json-flat-values", "application/json", b'{"name": [' + b"1," * 200_000 + b"1]}", 413, "body"),
    ("yaml-deep-flow", "application/yaml", b"[" * 5000 + b"]" * 5000, 422, "body"),
    ("yaml-deep-block", "application/yaml", b"- " * 3000 + b"1\n", 422, "body"),
    ("json-deep", "application/json", b"[" * 5000 + b"]" * 5000, 422, "body"),
    ("json-deep-object", "application/json", b'{"a":' * 2000 + b"1" + b"}" * 2000, 422, None),
    ("json-nul-name", "application/json", _json(_spec_with("name", "a\x00b")), 422, "name"),
    ("yaml-nul-name", "application/yaml", b'name: "a\\0b"\n', 422, "name"),
    # a lone surrogate (valid JSON escape, not Unicode text): no database encoding takes it
    ("json-surrogate-name", "application/json", b'{"name": "a\\ud800b"}', 422, "name"),
    (
        "json-surrogate-nested",
        "application/json",
        _json(_spec_with("net.activation", "tanh")).replace(b'"tanh"', b'"tanh\\udfff"'),
        422,
        "net.activation",
    ),
    ("json-surrogate-key", "application/json", b'{"name": "x", "k\\udc80": 1}', 422, "body"),
    ("yaml-nul-key", "application/yaml", b'"bad\\0key": 1\n', 422, "body"),
    (
        "json-nul-nested",
        "application/json",
        _json(_spec_with("net.activation", "tanh\x00")),
        422,
        "net.activation",
    ),
    (
        "json-1e999",
        "application/json",
        _json(_spec_with("dataset.noise", 1.5)).replace(b"1.5", b"1e999"),
        422,
        "dataset.noise",
    ),
    (
        "json-nan",
        "application/json",
        _json(_spec_with("hyperparameters.learning_rate.init", 0.25)).replace(b"0.25", b"NaN"),
        422,
        "hyperparameters.learning_rate.init",
    ),
    (
        "json-infinity",
        "application/json",
        _json(_spec_with("meta.max_wall_time_s", 7.5)).replace(b"7.5", b"-Infinity"),
        422,
        "meta.max_wall_time_s",
    ),
    (
        "yaml-inf",
        "application/yaml",
        yaml.safe_dump(_spec_with("dataset.noise", 1.5)).replace("1.5", ".inf").encode(),
        422,
        "dataset.noise",
    ),
]


@pytest.fixture(scope="module")
def users(shared_server) -> dict[str, httpx.Client]:
    """A user and a worker client of a fresh owner on the module's server."""
    owner = f"h-{uuid.uuid4().hex[:8]}"
    out = {
        "user": httpx.Client(
            base_url=shared_server.url,
            headers={"Authorization": f"Bearer {create_key(shared_server.db_url, owner)}"},
            timeout=60,
        ),
        "worker": httpx.Client(
            base_url=shared_server.url,
            headers={"Authorization": f"Bearer {create_key(shared_server.db_url, 'pool', True)}"},
            timeout=60,
        ),
    }
    yield out
    for c in out.values():
        c.close()


def _assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == PROBLEM, resp.headers
    doc = resp.json()
    assert doc["status"] == status and doc["detail"]
    if field is not None:
        assert doc["field"] == field, doc
    return doc


@_server
@pytest.mark.parametrize(
    ("ctype", "body", "status", "field"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES]
)
def test_hostile_spec_bodies_are_refused_with_a_problem(users, ctype, body, status, field):
    c = users["user"]
    resp = c.post("/v1/jobs", content=body, headers={"Content-Type": ctype})
    doc = _assert_problem(resp, status, field)
    if field and field != "body":
        assert doc["detail"].startswith(f"{field}: ")  # names the field, then the value
    assert c.get("/v1/jobs").json()["items"] == []  # nothing was stored
    assert c.get("/healthz").status_code == 200  # and the server is still there


@_server
def test_a_nul_or_a_non_finite_number_is_named_with_the_value_received(users):
    doc = _assert_problem(
        users["user"].post("/v1/jobs", json=_spec_with("name", "run\x001")), 422, "name"
    )
    assert doc["errors"] == [
        {"field": "name", "message": "a NUL character is not allowed", "received": "run\x001"}
    ]
    body = _json(_spec_with("dataset.noise", 1.5)).replace(b"1.5", b"1e999")
    doc = _assert_problem(
        users["user"].post("/v1/jobs", content=body, headers={"Content-Type": "application/json"}),
        422,
        "dataset.noise",
    )
    assert "finite" in doc["detail"] and "inf" in doc["detail"]


@_server
def test_a_body_with_thousands_of_errors_lists_a_bounded_number(users):
    body = json.dumps({f"k{i}": 0 for i in range(1200)}).encode()  # under the 20000-byte limit
    resp = users["user"].post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    doc = _assert_problem(resp, 422)
    assert len(doc["errors"]) == 50 and len(resp.content) < 20_000


@_server
def test_a_spec_with_anchors_and_aliases_in_bounds_is_accepted(users):
    text = (  # anchors and aliases are plain YAML: a spec written with them is accepted
        "name: anchored\n"
        "dataset: {kind: synthetic, task: blobs, n_samples: &n 120, n_features: 6,"
        " n_classes: 3, seed: 0}\n"
        "net: {family: mlp, sizes: [6], activation: tanh}\n"
        "training: {steps: 5, batch_size: 20}\n"
        "hyperparameters:\n"
        "  learning_rate: {init: 0.1, tune: &t true, granularity: per_layer_per_step}\n"
        "  momentum: {init: 0.9, tune: *t, granularity: scalar}\n"
        "meta: {iterations: 2, eval_seeds: 1}\n"
    )
    resp = users["user"].post(
        "/v1/jobs", content=text.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["spec"]["hyperparameters"]["momentum"]["tune"] is True
    assert users["user"].post(f"/v1/jobs/{job['id']}/cancel").status_code == 202


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# (id, method, path, params, headers, field)
PARAMS = [
    ("nul-job-id", "GET", "/v1/jobs/a%00b", None, None, "path"),
    ("nul-job-id-cancel", "POST", "/v1/jobs/a%00b/cancel", None, None, "path"),
    ("nul-job-id-events", "GET", "/v1/jobs/a%00b/events", None, None, "path"),
    ("nul-artifact-name", "GET", "/v1/jobs/abc/artifacts/x%00.png", None, None, "path"),
    ("nul-dataset-id", "GET", "/v1/datasets/a%00", None, None, "path"),
    ("nul-cursor", "GET", "/v1/jobs", {"cursor": "ajE\x00"}, None, "cursor"),
    ("huge-cursor", "GET", "/v1/jobs", {"cursor": _cursor(b"j" + b"9" * 40)}, None, "cursor"),
    ("cursor-2^63", "GET", "/v1/jobs", {"cursor": _cursor(b"j%d" % 2**63)}, None, "cursor"),
    ("non-ascii-cursor", "GET", "/v1/jobs", {"cursor": "ä²"}, None, "cursor"),
    (
        "digit-lookalike-cursor",
        "GET",
        "/v1/jobs",
        {"cursor": _cursor("j²".encode())},
        None,
        "cursor",
    ),
]


@_server
@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "field"),
    [p[1:] for p in PARAMS],
    ids=[p[0] for p in PARAMS],
)
def test_hostile_parameters_are_refused_with_a_problem(users, method, path, params, headers, field):
    resp = users["user"].request(method, path, params=params, headers=headers)
    _assert_problem(resp, 422, field)


@_server
@pytest.mark.parametrize(
    "value",
    ["²".encode("latin-1"), "é".encode(), b"9" * 20, str(2**63).encode(), b"-1", b"1e3", b"9" * 21],
    ids=["superscript", "utf8", "20-nines", "2^63", "negative", "float", "too-long"],
)
def test_a_malformed_last_event_id_is_refused_with_a_problem(users, value):
    c = users["user"]
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    c.post(f"/v1/jobs/{jid}/cancel")  # a finished job: a stream of it would end at once
    with c.stream("GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": value}) as r:
        r.read()
        _assert_problem(r, 422, "Last-Event-ID")


@_server
def test_a_valid_last_event_id_resumes_the_stream(users):
    c = users["user"]
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    c.post(f"/v1/jobs/{jid}/cancel")
    with c.stream("GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": str(2**63 - 1)}) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert "event: end" in text and "event: done" not in text  # nothing after that id


@_server
def test_hostile_worker_payloads_are_refused_and_the_attempt_goes_on(users):
    c, w = users["user"], users["worker"]
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    _assert_problem(w.post("/v1/worker/claim", json={"worker": "w\x00"}), 422, "body.worker")
    for _ in range(50):  # the queue is shared by the module's tests: fail what is not ours
        claim = w.post("/v1/worker/claim", json={"worker": "w1"})
        assert claim.status_code == 200, claim.text
        if claim.json()["job_id"] == jid:
            break
        other = claim.json()
        w.post(
            f"/v1/worker/jobs/{other['job_id']}/fail",
            json={"token": other["token"], "reason": "left over"},
        )
    token = claim.json()["token"]
    assert claim.json()["job_id"] == jid
    base = f"/v1/worker/jobs/{jid}"
    raw = {"Content-Type": "application/json"}
    cases = [
        ("heartbeat", {"token": "t\x00"}, "body.token"),
        ("heartbeat", {"token": token, "progress": {"meta\x00": 1}}, "body.progress"),
        ("heartbeat", {"token": token, "progress": {"meta": {"x": "\x00"}}}, "body.progress"),
        ("fail", {"token": token, "reason": "boom\x00"}, "body.reason"),
    ]
    for route, body, field in cases:
        _assert_problem(w.post(f"{base}/{route}", json=body), 422, field)
    surrogates = [  # lone surrogates, as a JSON encoder writes them
        ("fail", b'{"token": "%s", "reason": "boom\\ud800"}', "body.reason"),
        ("heartbeat", b'{"token": "%s", "progress": {"m\\udc00": 1}}', "body.progress"),
        ("events", b'{"token": "%s", "events": [{"type": "x\\udfff"}]}', "body.events.0"),
    ]
    for route, body, field in surrogates:
        resp = w.post(f"{base}/{route}", content=body % token.encode(), headers=raw)
        _assert_problem(resp, 422, field)
    for number in (b"1e999", b"NaN", b"-Infinity"):
        events = b'{"token": "%s", "events": [{"type": "meta", "val_loss": %s}]}' % (
            token.encode(),
            number,
        )
        _assert_problem(w.post(f"{base}/events", content=events, headers=raw), 422, "body.events.0")
        done = b'{"token": "%s", "result": {"loss": %s}}' % (token.encode(), number)
        _assert_problem(w.post(f"{base}/complete", content=done, headers=raw), 422, "body.result")
    deep = b'{"token": "%s", "progress": %s1%s}' % (token.encode(), b'{"a":' * 100, b"}" * 100)
    resp = w.post(f"{base}/heartbeat", content=deep, headers=raw)
    assert 400 <= resp.status_code < 500 and resp.headers["content-type"] == PROBLEM
    # the attempt is unharmed: its heartbeat holds, the job reads back, and it completes
    hb = w.post(f"{base}/heartbeat", json={"token": token, "progress": {"meta": {"x": 1}}})
    assert hb.status_code == 200, hb.text
    assert c.get(f"/v1/jobs/{jid}").json()["progress"] == {"meta": {"x": 1}}
    assert w.post(f"{base}/complete", json={"token": token, "result": {"ok": 1}}).status_code == 204
    assert c.get(f"/v1/jobs/{jid}/result").json()["result"] == {"ok": 1}


@_server
def test_a_nul_in_an_upload_filename_is_not_a_5xx(users, shared_server):
    # the generic guard: a value the database refuses (PostgreSQL: NUL in text) is a 422
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\na,b\n1,0\n2,1\n\r\n--XX--\r\n"
    )
    resp = users["user"].post(
        "/v1/datasets",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    if shared_server.db_url.startswith("sqlite"):  # SQLite text holds NUL: a valid answer
        assert resp.status_code == 422, resp.text  # refused at the route, naming the field
        assert resp.json()["field"] == "filename"
    else:
        _assert_problem(resp, 422)


@_server
def test_openapi_declares_problem_json_for_every_error(shared_server):
    doc = httpx.get(shared_server.url + "/openapi.json", timeout=30).json()
    seen = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, resp in op["responses"].items():
                if code[0] in "45" and path != "/healthz":  # its 503 is a Health document
                    seen += 1
                    assert list(resp["content"]) == [PROBLEM], (path, method, code)
                    assert resp["content"][PROBLEM]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }, (path, method, code)
    assert seen > 20
    assert "HTTPValidationError" not in doc["components"]["schemas"]


# ------------------------------------------------------------------ the bounded YAML loader
def test_bounded_yaml_loader_reads_every_example_like_safe_load():
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        text = path.read_text()
        assert load_yaml(text) == yaml.safe_load(text), path


def test_bounded_yaml_loader_refuses_bombs_and_depth_while_parsing():
    with pytest.raises(DocumentError) as err:  # parsed (aliases shared), refused by the walk
        check_document(load_yaml(YAML_BOMB))
    assert err.value.too_large
    with pytest.raises(DocumentError, match="deeper than"):
        load_yaml("[" * 100_000 + "]" * 100_000)  # libyaml's own composer would crash here
    with pytest.raises(DocumentError, match="deeper than"):
        load_yaml("- " * (DOC_MAX_DEPTH + 1) + "1")
    assert load_yaml("- " * (DOC_MAX_DEPTH - 1) + "1") is not None
    with pytest.raises(DocumentError, match="at most"):
        load_yaml("[" + "1," * 200_000 + "1]")  # stops counting nodes, not at the end
    assert len(load_yaml("[" + "1," * (SPEC_MAX_NODES - 2) + "1]", SPEC_MAX_NODES)) == (
        SPEC_MAX_NODES - 1
    )
    with pytest.raises(DocumentError, match=f"at most {SPEC_MAX_NODES} values"):
        load_yaml("[" + "1," * SPEC_MAX_NODES + "1]", SPEC_MAX_NODES)
    # the walk refuses a long array when it meets it, before visiting its items
    check_document(list(range(SPEC_MAX_NODES - 1)), max_nodes=SPEC_MAX_NODES)
    with pytest.raises(DocumentError, match="at most") as err:
        check_document({"a": [0, {"b": list(range(SPEC_MAX_NODES))}]}, max_nodes=SPEC_MAX_NODES)
    assert err.value.too_large and err.value.field == "body"
    with pytest.raises(DocumentError, match="deeper than"):  # a cycle is infinitely deep
        check_document(load_yaml("a: &x [*x]"))


def test_a_refused_document_is_freed_when_its_answer_is():
    """Refusing a body leaves nothing of it behind: no reference cycle through the error's
    traceback keeps the parsed document until a later garbage collection (10 refused 1 MiB
    bodies once held +60 MB in the API)."""
    from revhpo.service.api.jobs import parse_document
    from revhpo.service.api.problems import ProblemError

    def refuse(body: bytes, ctype: str) -> None:
        try:  # (not pytest.raises: its ExceptionInfo in this frame would itself be a cycle)
            parse_document(body, ctype, SPEC_MAX_NODES)
        except ProblemError as exc:
            status = exc.status
        assert status == 413

    bodies = [(b"[" + b"1," * 200_000 + b"1]", "application/json")]  # a 1.6 MB list each
    bodies.append((b'{"a": {"b": [' + b"0.5," * 100_000 + b"1]}}", "application/json"))
    bodies.append((b"[" + b"1," * 200_000 + b"1]", "application/yaml"))
    for body, ctype in bodies:
        refuse(body, ctype)  # warm: imports, caches
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(5):
            for body, ctype in bodies:
                refuse(body, ctype)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < 1 << 20, f"{held / 2**20:.1f} MiB still held"


# ------------------------------------------------------------------- the event loop stays free
def _worker_client(srv) -> httpx.Client:  # noqa: ANN001
    from revhpo.service.auth import create_key as make_key
    from revhpo.service.db import get_engine

    key = make_key(get_engine(srv.db_url), "pool", is_worker=True)
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _raw_post(url: str, path: str, body: bytes, ctype: str) -> socket.socket:
    """Send a whole POST on a raw socket (returns once the kernel took every byte)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_heartbeats_are_answered_while_1mib_yaml_bodies_are_parsed(server_factory, db_url):
    srv = server_factory(db_url, REVHPO_LEASE_SECONDS="600")
    c, w = httpx.Client(base_url=srv.url, timeout=120), _worker_client(srv)  # c: anonymous
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    token = w.post("/v1/worker/claim", json={"worker": "w"}).json()["token"]
    # ~1 MiB of YAML just under a spec's value bound (long strings): the slowest body to
    # parse (~50-100 ms here), then refused. Four of them are parsed one after the other
    # (one parse thread), ~0.2-0.5 s in all.
    body = ("x: [" + ",".join(["a" * 100] * (SPEC_MAX_NODES - 100)) + "]\n").encode()
    assert len(body) < 1 << 20
    answered: list[tuple[float, bytes]] = []
    sent = threading.Barrier(5)

    def post() -> None:  # send one body, then wait for its answer
        sock = _raw_post(srv.url, "/v1/jobs", body, "application/yaml")
        sent.wait()
        data = sock.recv(65536)
        answered.append((time.monotonic(), data))
        sock.close()

    posters = [threading.Thread(target=post, daemon=True) for _ in range(4)]
    for p in posters:
        p.start()
    sent.wait()  # every heartbeat below is sent after the whole bodies were handed over
    beats: list[float] = []
    while any(p.is_alive() for p in posters):
        hb = w.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": token})
        assert hb.status_code == 200, hb.text
        beats.append(time.monotonic())
    for p in posters:
        p.join()
    assert all(a.startswith(b"HTTP/1.1 422") for _, a in answered), [a[:200] for _, a in answered]
    # The service keeps answering during the parses: heartbeats are answered before the last
    # refusal. (A heartbeat takes ~0.1-0.2 s then, against ~5 ms idle: the parse thread holds
    # the GIL, and the heartbeat waits for it at each database call. A single parse can end
    # before a heartbeat does, hence four.)
    last = max(t for t, _ in answered)
    assert sum(t < last for t in beats) >= 1, (beats, sorted(t for t, _ in answered))


# ------------------------------------------------------------------ streams cost no thread
def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


async def _open_streams(url: str, jid: str, n: int, stop: asyncio.Event, seen: dict) -> None:
    """Open `n` event streams of the job; count those open and those that got a `meta`."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as ac:

        async def one() -> None:
            async with ac.stream("GET", f"/v1/jobs/{jid}/events") as resp:
                assert resp.status_code == 200
                text, opened = "", False
                async for chunk in resp.aiter_text():
                    text += chunk
                    if not opened and "retry:" in text:
                        opened = True
                        seen["open"] += 1
                    if "event: meta" in text:
                        seen["meta"] += 1
                        break
                await stop.wait()

        await asyncio.gather(*(one() for _ in range(n)))


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_hundred_open_streams_hold_no_pool_thread(server_factory, db_url):
    srv = server_factory(db_url, REVHPO_LEASE_SECONDS="600")
    c, w = httpx.Client(base_url=srv.url, timeout=120), _worker_client(srv)  # c: anonymous
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    token = w.post("/v1/worker/claim", json={"worker": "w"}).json()["token"]
    for _ in range(50):  # warm the pool's threads up the way ordinary traffic does
        assert c.get(f"/v1/jobs/{jid}").status_code == 200
    baseline = _threads(srv.proc.pid)

    n, seen = 100, {"open": 0, "meta": 0}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    runner = threading.Thread(
        target=lambda: loop.run_until_complete(_open_streams(srv.url, jid, n, stop, seen)),
        daemon=True,
    )
    runner.start()
    try:
        _wait(lambda: seen["open"] == n, 180, f"streams opened: {seen}")
        # Opening 100 streams at once spawns pool threads (authentication, the ownership
        # check); idle ones are retired after 10 s (anyio's MAX_IDLE_TIME). Then count what
        # the waiting streams hold.
        time.sleep(13)
        peak = 0
        for _ in range(10):
            peak = max(peak, _threads(srv.proc.pid))
            time.sleep(0.2)
        # the routes every worker needs still answer while the streams are open
        hb = w.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": token})
        assert hb.status_code == 200, hb.text
        assert c.get(f"/v1/jobs/{jid}").status_code == 200
        ev = w.post(
            f"/v1/worker/jobs/{jid}/events",
            json={"token": token, "events": [{"type": "meta", "meta_iteration": 0}]},
        )
        assert ev.status_code == 200, ev.text
        _wait(lambda: seen["meta"] == n, 180, f"streams that got the event: {seen}")
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(60)
        c.post(f"/v1/jobs/{jid}/cancel")
        c.close()
    # A waiting stream holds no thread: far fewer extra threads than streams. (Each stream
    # held one of the pool's 40 threads while it waited, so 100 streams took all 40.)
    assert peak - baseline < 20, (baseline, peak)
