"""Results and artifacts over the JSON body limit are delivered (issue item 7); uploaded files
are served so that no browser renders them, `revhpo keys` never creates a database, and
`revhpo serve` reuses its local worker's key (issue item 10).

The worker uploads `result.json` as a streamed artifact (limit `REVHPO_MAX_ARTIFACT_BYTES`)
and completes with an empty `result`; the API takes the attempt's uploaded file as the result.
Real server, real database, real worker and tuning subprocess; no mocks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest
from revhpo.service.client import ApiError, Client
from svc_helpers import (
    BACKENDS,
    ServerProc,
    base_env,
    create_key,
    free_port,
    kill_group,
    start_worker,
    tiny_spec,
    wait_for,
)

# Per-weight weight decay on a 17k-weight net: result.json is about 2 MB (> 1 MiB).
BIG_SPEC = {
    **tiny_spec(iterations=1, eval_seeds=1, start="init", select_seeds=1, seeds_per_iteration=1),
    "name": "big-result",
    "dataset": {
        "kind": "synthetic",
        "task": "blobs",
        "n_samples": 120,
        "n_features": 64,
        "n_classes": 3,
        "seed": 0,
    },
    "net": {"family": "mlp", "sizes": [256], "activation": "tanh"},
    "training": {"steps": 3, "batch_size": 20},
    "hyperparameters": {
        "learning_rate": {"init": 0.1, "tune": False, "granularity": "scalar"},
        "momentum": {"init": 0.9, "tune": False, "granularity": "scalar"},
        "weight_decay": {"init": 0.001, "tune": True, "granularity": "per_weight"},
    },
}


def _keys(srv: ServerProc) -> tuple[str, str]:
    return create_key(srv.db_url, "alice"), create_key(srv.db_url, "pool", worker=True)


def _finished(c: httpx.Client, jid: str, timeout: float = 300) -> dict:
    return wait_for(
        lambda: (
            (j := c.get(f"/v1/jobs/{jid}").json())["state"] in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout,
        what=f"job {jid} to end",
    )


@pytest.mark.slow
@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_result_over_one_mib_is_delivered(db_url, server_factory, tmp_path):
    """A 2 MB result.json under the default 1 MiB JSON limit: the job succeeds first time."""
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    user, wkey = _keys(srv)
    c = httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {user}"})
    proc, log = start_worker(srv, token=wkey, name="big")
    try:
        jid = c.post("/v1/jobs", json=BIG_SPEC).json()["id"]
        job = _finished(c, jid)
        assert job["state"] == "succeeded", (job, log.read_text()[-3000:])
        assert job["attempts"] == 1
        doc = c.get(f"/v1/jobs/{jid}/result").json()
        names = [a["name"] for a in doc["artifacts"]]
        assert names.count("result.json") == 1
        raw = c.get(f"/v1/jobs/{jid}/artifacts/result.json").content
        assert len(raw) > 1 << 20
        assert doc["result"] == json.loads(raw)  # the stored result is the uploaded file
        wd = doc["result"]["hyperparameters"]["final"]["weight_decay"]
        assert wd["granularity"] == "per_weight"
        assert len(wd["value"]) == doc["result"]["net"]["num_params"]
        # One attempt's files only are kept on the API side.
        job_dir = srv.home / "artifacts" / "jobs" / jid
        assert len([d for d in job_dir.iterdir() if d.is_dir()]) == 1
    finally:
        kill_group(proc)
        proc.wait()
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_result_over_the_upload_limit_fails_once_with_the_reason(db_url, server_factory, tmp_path):
    """A result.json over REVHPO_MAX_ARTIFACT_BYTES: the job fails, not retried, with why."""
    srv = server_factory(
        db_url, REVHPO_ALLOW_ANONYMOUS="false", REVHPO_MAX_ARTIFACT_BYTES=str(1_500_000)
    )
    user, wkey = _keys(srv)
    c = httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {user}"})
    proc, log = start_worker(srv, token=wkey, name="big")
    try:
        jid = c.post("/v1/jobs", json=BIG_SPEC).json()["id"]
        job = _finished(c, jid)
        assert job["state"] == "failed" and job["attempts"] == 1, job
        assert "result.json is" in job["error"] and "upload limit" in job["error"], job
    finally:
        kill_group(proc)
        proc.wait()
        c.close()


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_complete_takes_the_attempts_uploaded_result(db_url, server_factory, tmp_path):
    """The protocol without TensorFlow: complete with `{}` reads this attempt's result.json;
    an earlier attempt's upload is neither listed nor served; no upload is a 422 problem."""
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false", REVHPO_MAX_REQUEST_BYTES="20000")
    user, wkey = _keys(srv)
    big = {"schema_version": 1, "blob": ["x" * 100] * 1000}  # 100 kB: over the JSON limit
    with Client(srv.url, user) as uc, Client(srv.url, wkey) as wc:
        jid = uc.submit(tiny_spec())["id"]
        w = wc.worker
        first = w.claim("w1")
        (tmp_path / "old.json").write_text(json.dumps({"stale": True}))
        w.upload_artifact(jid, first["token"], tmp_path / "old.json", "result.json")
        w.release(jid, first["token"])

        second = w.claim("w2")
        assert second["job_id"] == jid
        with pytest.raises(ApiError) as exc:  # nothing uploaded by this attempt yet
            w.complete(jid, second["token"], {})
        assert exc.value.status == 422 and exc.value.field == "result"
        with pytest.raises(ApiError) as exc:  # the old way cannot carry a large result
            w.complete(jid, second["token"], big)
        assert exc.value.status == 413
        (tmp_path / "result.json").write_text(json.dumps(big))
        w.upload_artifact(jid, second["token"], tmp_path / "result.json")
        w.complete(jid, second["token"], {})

        assert uc.get(jid)["state"] == "succeeded"
        doc = uc.result(jid)
        assert doc["result"] == big
        assert [a["name"] for a in doc["artifacts"]] == ["result.json"]
        got = uc.download_artifact(jid, "result.json", tmp_path / "dl.json")
        assert json.loads(got.read_text()) == big
        job_dir = srv.home / "artifacts" / "jobs" / jid
        assert len([d for d in job_dir.iterdir() if d.is_dir()]) == 1  # the old attempt's went


# ----------------------------------------------------------------------------- served files
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_uploaded_files_are_never_rendered_by_a_browser(db_url, server_factory, tmp_path):
    """A worker-uploaded HTML file is an opaque download (octet-stream, attachment, nosniff);
    a PNG or JSON keeps its type. (Issue item 10.)"""
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    user, wkey = _keys(srv)
    with Client(srv.url, user) as uc, Client(srv.url, wkey) as wc:
        jid = uc.submit(tiny_spec())["id"]
        w = wc.worker
        token = w.claim("w")["token"]
        files = {
            "page.html": b"<html><script>alert(document.cookie)</script></html>",
            "plot.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>',
            "plot.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 16,
            "result.json": b'{"schema_version": 1}',
        }
        for name, body in files.items():
            (tmp_path / name).write_bytes(body)
            w.upload_artifact(jid, token, tmp_path / name)
        (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04")
        w.upload_checkpoint(jid, token, tmp_path / "checkpoint.npz")
        w.complete(jid, token, {})
    auth = {"Authorization": f"Bearer {user}"}
    with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as c:
        for name in ("page.html", "plot.svg"):
            r = c.get(f"/v1/jobs/{jid}/artifacts/{name}")
            assert r.status_code == 200 and r.content == files[name]
            assert r.headers["content-type"] == "application/octet-stream", name
            assert r.headers["content-disposition"].startswith("attachment"), name
            assert r.headers["x-content-type-options"] == "nosniff", name
        r = c.get(f"/v1/jobs/{jid}/artifacts/plot.png")
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-content-type-options"] == "nosniff"
        r = c.get(f"/v1/jobs/{jid}/artifacts/result.json")
        assert r.headers["content-type"].startswith("application/json")


# ----------------------------------------------------------------------------- CLI: keys, serve
def _revhpo(*args: str, cwd, env: dict | None = None, timeout: float = 120):  # noqa: ANN001
    e = base_env(**(env or {}))
    for name in ("REVHPO_HOME", "REVHPO_DATABASE_URL", "REVHPO_TOKEN"):
        if name not in (env or {}):
            e.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "revhpo", *args],
        env=e,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_keys_never_create_a_database(tmp_path):
    """`revhpo keys create` where there is no database (another directory, a mistyped URL)
    refuses with the path it looked at, and creates nothing; the API's database works."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _revhpo("keys", "create", "--owner", "alice", cwd=elsewhere)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no revhpo database" in out.stderr and str(elsewhere / "var" / "revhpo.db") in out.stderr
    assert not out.stdout.strip() and not (elsewhere / "var").exists()
    missing = f"sqlite:///{tmp_path / 'typo.db'}"
    out = _revhpo("keys", "list", "--database-url", missing, cwd=elsewhere)
    assert out.returncode == 2 and not (tmp_path / "typo.db").exists()

    from revhpo.service.db import migrate

    home = tmp_path / "svc"
    migrate(f"sqlite:///{home / 'revhpo.db'}")  # what `revhpo serve` does at start
    env = {"REVHPO_HOME": str(home)}
    out = _revhpo("keys", "create", "--owner", "alice", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("rhp_")


def _worker_keys(home) -> list[dict]:  # noqa: ANN001
    from revhpo.service.auth import list_keys
    from revhpo.service.db import get_engine

    rows = list_keys(get_engine(f"sqlite:///{(home / 'revhpo.db').resolve()}"))
    return [r for r in rows if r["worker"]]


@pytest.mark.slow
def test_serve_reuses_its_local_worker_key(tmp_path):
    """With keys required, `revhpo serve` gives its local worker a worker key (anonymous
    callers have no worker rights), and restarts reuse it instead of minting another."""
    home = tmp_path / "home"
    port = free_port()
    env = {"REVHPO_ALLOW_ANONYMOUS": "false", "REVHPO_HOME": str(home)}
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        e = base_env(**env)
        e.pop("REVHPO_DATABASE_URL", None)
        e.pop("REVHPO_TOKEN", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "revhpo", "serve", "--port", str(port), "--workers", "1"],
            env=e,
            cwd=str(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            assert proc.poll() is None, "serve exited"
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, what="revhpo serve")
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)

    proc = serve()
    try:
        first = _worker_keys(home)
        assert len(first) == 1 and first[0]["owner"] == "local-worker"
        key_file = home / "local-worker.key"
        assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        user = _revhpo("keys", "create", "--owner", "alice", cwd=tmp_path, env=env).stdout.strip()
        with Client(url, user) as c:
            jid = c.submit(tiny_spec())["id"]
            job = wait_for(  # the local worker claimed it: its key has worker rights
                lambda: (j := c.get(jid))["state"] != "queued" and j, 120, what="claim"
            )
            assert job["attempts"] >= 1 or job["state"] == "succeeded", job
    finally:
        stop(proc)
    proc = serve()
    try:
        again = _worker_keys(home)
        assert [k["prefix"] for k in again] == [first[0]["prefix"]]  # reused, not re-minted
        with Client(url, user) as c:
            job = wait_for(
                lambda: (j := c.get(jid))["state"] in ("succeeded", "failed") and j,
                240,
                what="the job to end",
            )
            assert job["state"] == "succeeded", job
    finally:
        stop(proc)
    # A revoked local key is replaced (and only then).
    out = _revhpo("keys", "revoke", first[0]["prefix"], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    stop(serve())
    keys = _worker_keys(home)
    assert len(keys) == 2 and sum(k["revoked_at"] is None for k in keys) == 1
