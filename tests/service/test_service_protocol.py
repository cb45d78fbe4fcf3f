"""The worker protocol on a real uvicorn server per test: leases, reaper, late writes,
cancel, datasets handed to workers; and the loopback-only anonymous mode."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from svc_helpers import (
    BACKENDS,
    REPO,
    base_env,
    create_key,
    sse_events,
    tiny_spec,
    wait_for,
)
from svc_helpers import (
    assert_problem as _problem,
)

pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)


@pytest.fixture
def server(db_url, server_factory):
    return server_factory(db_url, REVHPO_LEASE_SECONDS="4", REVHPO_MAX_DATASET_BYTES="50000")


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def pool(server):
    """A worker's client (anonymous callers have no worker rights)."""
    key = create_key(server.db_url, "pool", worker=True)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as c:
        yield c


def _npz_bytes(n=60, d=4, classes=3) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, d)), y=rng.integers(0, classes, size=n))
    return buf.getvalue()


def test_worker_protocol_leases_and_late_writes(client, pool, server):
    job = client.post("/v1/jobs", json=tiny_spec()).json()
    jid = job["id"]
    c1 = pool.post("/v1/worker/claim", json={"worker": "a"}).json()
    assert c1["job_id"] == jid and c1["attempt"] == 1 and c1["lease_seconds"] == 4.0
    assert pool.post("/v1/worker/claim", json={"worker": "b"}).status_code == 204
    r = pool.post(
        f"/v1/worker/jobs/{jid}/events",
        json={
            "token": c1["token"],
            "events": [
                {"type": "meta", "meta_iteration": 0, "meta_iterations": 2, "val_loss": 0.5}
            ],
        },
    )
    assert r.status_code == 200 and r.json()["cancel_requested"] is False
    put = pool.put(
        f"/v1/worker/jobs/{jid}/checkpoint/checkpoint.npz",
        content=b"ckpt-1",
        headers={"X-Lease-Token": c1["token"]},
    )
    assert put.status_code == 204
    assert client.get(f"/v1/jobs/{jid}").json()["progress"]["meta"]["val_loss"] == 0.5
    # The worker goes silent: the reaper re-queues the job on the database clock.
    deadline = time.monotonic() + 15
    while client.get(f"/v1/jobs/{jid}").json()["state"] != "queued":
        assert time.monotonic() < deadline, "lease never reaped"
        time.sleep(0.2)
    late = pool.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": c1["token"]})
    _problem(late, 409, "token")
    c2 = pool.post("/v1/worker/claim", json={"worker": "b"}).json()
    assert c2["job_id"] == jid and c2["attempt"] == 2 and c2["checkpoint"] == "checkpoint.npz"
    ck = pool.get(f"/v1/worker/jobs/{jid}/checkpoint", headers={"X-Lease-Token": c2["token"]})
    assert ck.content == b"ckpt-1"
    # The first attempt wakes up: its files and its result are refused.
    _problem(
        pool.put(
            f"/v1/worker/jobs/{jid}/artifacts/plot.png",
            content=b"late",
            headers={"X-Lease-Token": c1["token"]},
        ),
        409,
    )
    _problem(
        pool.post(f"/v1/worker/jobs/{jid}/complete", json={"token": c1["token"], "result": {}}),
        409,
    )
    hb = pool.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": c2["token"]})
    assert hb.status_code == 200
    up = pool.put(
        f"/v1/worker/jobs/{jid}/artifacts/plot.png",
        content=b"\x89PNG-live",
        headers={"X-Lease-Token": c2["token"]},
    )
    assert up.status_code == 204
    done = pool.post(
        f"/v1/worker/jobs/{jid}/complete", json={"token": c2["token"], "result": {"status": "ok"}}
    )
    assert done.status_code == 204
    res = client.get(f"/v1/jobs/{jid}/result").json()
    assert res["result"] == {"status": "ok"}
    assert [a["name"] for a in res["artifacts"]] == ["plot.png"]
    assert client.get(res["artifacts"][0]["url"]).content == b"\x89PNG-live"
    kinds = [e[1] for e in sse_events(client, jid)]
    assert kinds == ["claimed", "meta", "lease_expired", "claimed", "done", "end"]
    # A running job's cancel reaches its worker through the lease answers.
    jid = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    c = pool.post("/v1/worker/claim", json={"worker": "a"}).json()
    r = client.post(f"/v1/jobs/{jid}/cancel")
    assert r.json()["state"] == "running" and r.json()["cancel_requested"]
    hb = pool.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": c["token"]}).json()
    assert hb["cancel_requested"] is True
    r = pool.post(f"/v1/worker/jobs/{jid}/cancelled", json={"token": c["token"]})
    assert r.status_code == 204
    assert client.get(f"/v1/jobs/{jid}").json()["state"] == "cancelled"


def test_dataset_upload(client, pool):
    r = client.post(
        "/v1/datasets", files={"file": ("d.npz", _npz_bytes(), "application/octet-stream")}
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["n_rows"], ds["n_features"], ds["n_classes"]) == (60, 4, 3)
    csv = "a,b,label\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(30))
    r = client.post("/v1/datasets", files={"file": ("t.csv", csv.encode(), "text/csv")})
    assert r.status_code == 201 and r.json()["n_features"] == 2
    _problem(
        client.post("/v1/datasets", files={"file": ("x.txt", b"hello", "text/plain")}), 422, "file"
    )
    _problem(
        client.post("/v1/datasets", files={"file": ("x.npz", b"not a zip", "application/zip")}),
        422,
        "file",
    )
    big = _npz_bytes(n=4000, d=8)  # > REVHPO_MAX_DATASET_BYTES=50000
    assert (
        client.post("/v1/datasets", files={"file": ("b.npz", big, "application/zip")}).status_code
        == 413
    )
    spec = {
        **tiny_spec(),
        "dataset": {
            "kind": "uploaded",
            "id": ds["id"],
            "split": {"train": 30, "val": 15, "test": 15},
        },
    }
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    c = pool.post("/v1/worker/claim", json={"worker": "a"}).json()
    assert c["dataset_ids"] == [ds["id"]]
    got = pool.get(
        f"/v1/worker/jobs/{c['job_id']}/datasets/{ds['id']}", headers={"X-Lease-Token": c["token"]}
    )
    assert got.content == _npz_bytes()


def test_no_anonymous_access_off_loopback(db_url, server_factory):
    srv = server_factory(db_url, REVHPO_HOST="0.0.0.0")
    r = httpx.get(srv.url + "/v1/jobs")
    _problem(r, 401, "Authorization")
    assert httpx.get(srv.url + "/healthz").status_code == 200


@pytest.mark.slow
def test_keys_created_by_the_cli(db_url, server_factory):
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    from revhpo.service.auth import create_key as create_key_in_process
    from revhpo.service.db import get_engine

    user = create_key(db_url, "alice")  # the real `revhpo keys create`
    worker = create_key_in_process(get_engine(db_url), "pool", is_worker=True)
    assert user.startswith("rhp_") and user != worker
    u = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {user}"})
    w = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {worker}"})
    jid = u.post("/v1/jobs", json=tiny_spec()).json()["id"]
    _problem(u.post("/v1/worker/claim", json={"worker": "x"}), 403)
    assert w.post("/v1/worker/claim", json={"worker": "x"}).json()["job_id"] == jid
    assert u.get(f"/v1/jobs/{jid}").json()["state"] == "running"
    _problem(httpx.get(srv.url + "/v1/jobs"), 401, "Authorization")


@pytest.mark.slow
def test_keys_listed_and_revoked_by_the_cli(db_url, server_factory):
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    key = create_key(db_url, "carol")
    prefix = key.split("_")[1]
    u = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"})
    assert u.get("/v1/jobs").status_code == 200

    def cli(*argv: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "revhpo", "keys", *argv, "--database-url", db_url]
        return subprocess.run(
            cmd, env=base_env(), cwd=str(REPO), capture_output=True, text=True, timeout=120
        )

    listed = cli("list")
    assert listed.returncode == 0 and key not in listed.stdout  # never a secret
    row = next(ln for ln in listed.stdout.splitlines() if ln.startswith(prefix))
    assert "carol" in row and row.rstrip().endswith("-")  # not revoked
    assert cli("revoke", "nosuchprefix").returncode == 1
    out = cli("revoke", key)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in cli("list").stdout.splitlines() if ln.startswith(prefix))
    assert not row.rstrip().endswith("-")  # a revocation time now
    # The server caches a verified key for at most 10 s; then the key is refused.
    wait_for(lambda: u.get("/v1/jobs").status_code == 401, 30, what="revoked key refused")
    _problem(u.get("/v1/jobs"), 401, "Authorization")
