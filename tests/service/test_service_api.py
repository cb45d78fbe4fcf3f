"""The user-facing HTTP API on a real uvicorn server (one per backend), keys required.

Every test makes its own owner (API key), so tests sharing the server cannot see each other.
"""

from __future__ import annotations

import io
import json
import uuid

import httpx
import numpy as np
import pytest
from svc_helpers import BACKENDS, sse_events, tiny_spec
from svc_helpers import assert_problem as _problem

pytestmark = pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")


def _key(server, owner: str, worker: bool = False) -> str:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    return create_key(get_engine(server.db_url), owner, is_worker=worker)


def _owner_client(server, worker: bool = False) -> httpx.Client:
    key = _key(server, f"user-{uuid.uuid4().hex[:8]}", worker)
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def client(shared_server):
    with _owner_client(shared_server) as c:
        yield c


def _npz_bytes(n=60, d=4, classes=3) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, d)), y=rng.integers(0, classes, size=n))
    return buf.getvalue()


def test_health_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    doc = client.get("/openapi.json").json()
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/events",
        "/v1/datasets",
        "/healthz",
    ):
        assert path in doc["paths"], path
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/JobSpec"
    assert "TrainingSpec" in doc["components"]["schemas"]


def test_submit_location_and_idempotency(client):
    r = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["attempts"] == 0
    got = client.get(r.headers["location"]).json()
    assert got["id"] == job["id"] and got["spec"]["training"]["steps"] == 5
    again = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    other = client.post(
        "/v1/jobs", json=tiny_spec(iterations=3), headers={"Idempotency-Key": "k-1"}
    )
    _problem(other, 422, "Idempotency-Key")
    yaml_body = "name: y\ntraining: {steps: 3}\ndataset: {kind: digits}\nmeta: {iterations: 1}\n"
    r = client.post("/v1/jobs", content=yaml_body, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 202 and r.json()["spec"]["training"]["steps"] == 3


def test_validation_names_the_field(client):
    bad = tiny_spec()
    bad["training"] = {"steps": 0}
    doc = _problem(client.post("/v1/jobs", json=bad), 422, "training.steps")
    assert any(e["field"] == "training.steps" and e["received"] == 0 for e in doc["errors"])
    typo = {**tiny_spec(), "trainig": {}}
    _problem(client.post("/v1/jobs", json=typo), 422, "trainig")
    _problem(
        client.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}),
        422,
        "body",
    )
    _problem(client.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/csv"}), 415)
    server_file = {**tiny_spec(), "dataset": {"kind": "npz", "path": "/etc/passwd"}}
    _problem(client.post("/v1/jobs", json=server_file), 422, "dataset.kind")
    missing = {**tiny_spec(), "dataset": {"kind": "uploaded", "id": "nope"}}
    _problem(client.post("/v1/jobs", json=missing), 422, "dataset.id")
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was queued


def test_size_limits_before_queueing(client):
    huge = tiny_spec(iterations=100_000)  # far above REVHPO_MAX_JOB_COST=1e9
    huge["training"] = {"steps": 1000}
    doc = _problem(client.post("/v1/jobs", json=huge), 422, "meta.iterations")
    assert "exceeds" in doc["detail"]
    padded = {**tiny_spec(), "name": "x" * 150, "net": {"family": "mlp", "pad": "y" * 30_000}}
    _problem(client.post("/v1/jobs", json=padded), 413, "body")

    def chunks():
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    _problem(r, 413)
    assert client.get("/v1/jobs").json()["items"] == []


def test_listing_cursor_and_state_filter(client):
    ids = [client.post("/v1/jobs", json=tiny_spec()).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    page = client.get("/v1/jobs", params={"state": "cancelled"}).json()
    assert [j["id"] for j in page["items"]] == [ids[1]]
    page = client.get("/v1/jobs", params=[("state", "cancelled"), ("state", "queued")]).json()
    assert len(page["items"]) == 5
    _problem(client.get("/v1/jobs", params={"state": "exploded"}), 422, "query.state.0")
    _problem(client.get("/v1/jobs", params={"cursor": "garbage!"}), 422, "cursor")
    _problem(client.get("/v1/jobs", params={"limit": 0}), 422, "query.limit")


def test_cancel_and_result_states(client):
    job = client.post("/v1/jobs", json=tiny_spec()).json()
    _problem(client.get(f"/v1/jobs/{job['id']}/result"), 409, "state")
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    events = sse_events(client, job["id"], timeout=20)
    assert events[-1][1] == "end" and events[-1][2]["state"] == "cancelled"
    _problem(client.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404)


def test_owner_isolation(shared_server):
    a, b = _owner_client(shared_server), _owner_client(shared_server)
    anon = httpx.Client(base_url=shared_server.url)
    _problem(anon.get("/v1/jobs"), 401, "Authorization")
    _problem(anon.get("/v1/jobs", headers={"Authorization": "Bearer rhp_000000000000_x"}), 401)
    _problem(anon.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    jid = a.post("/v1/jobs", json=tiny_spec()).json()["id"]
    ds = a.post("/v1/datasets", files={"file": ("d.npz", _npz_bytes(), "application/zip")}).json()
    refused = [
        b.get(f"/v1/jobs/{jid}"),
        b.post(f"/v1/jobs/{jid}/cancel"),
        b.get(f"/v1/jobs/{jid}/result"),
        b.get(f"/v1/jobs/{jid}/events"),
        b.get(f"/v1/jobs/{jid}/artifacts/result.json"),
    ]
    for r in refused:
        _problem(r, 404)  # 404, not 403: another owner's job does not exist for you
    assert b.get("/v1/jobs").json()["items"] == []
    spec = {**tiny_spec(), "dataset": {"kind": "uploaded", "id": ds["id"]}}
    _problem(b.post("/v1/jobs", json=spec), 422, "dataset.id")  # nor does their data
    _problem(a.post("/v1/worker/claim", json={"worker": "x"}), 403)  # not a worker key
    assert a.get(f"/v1/jobs/{jid}").json()["state"] == "queued"  # bob's cancel did nothing
    from revhpo.service.db import get_engine, session_scope
    from revhpo.service.models import ApiKey
    from sqlalchemy import select

    key = a.headers["Authorization"].split()[1]
    with session_scope(get_engine(shared_server.db_url), write=False) as s:
        stored = [k.key_hash for k in s.scalars(select(ApiKey))]
    assert key not in json.dumps(stored)  # only hashes are stored
