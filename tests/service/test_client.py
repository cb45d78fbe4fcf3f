"""`revhpo.client.Client` against the real API server (uvicorn subprocesses, SQLite).

Every public method is exercised for real: jobs (submit in each form, get, list and its
cursor, cancel), datasets, the worker protocol driven by hand (claim, heartbeat, events,
uploads, complete/fail/release/cancelled) which makes a finished job cheaply (no TensorFlow),
its result and files, its event stream; and the errors and retries. The retry and reconnect
policies are also checked against small real HTTP servers that misbehave on purpose.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from svc_helpers import ServerProc, free_port, tiny_spec

from revhpo.client import ApiConnectionError, ApiError, Client, ClientError, LeaseLostError


def _key(server: ServerProc, owner: str, worker: bool = False) -> str:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    return create_key(get_engine(server.db_url), owner, is_worker=worker)


@pytest.fixture
def user(shared_server) -> Iterator[Client]:
    """A client with a fresh owner's key on the module's server (keys required there)."""
    with Client(shared_server.url, _key(shared_server, f"u-{uuid.uuid4().hex[:8]}")) as c:
        yield c


@pytest.fixture
def own_server(server_factory, tmp_path) -> ServerProc:
    """A server of this test alone (anonymous on loopback: the user `local`, never a worker)."""
    from revhpo.service.db import migrate

    url = f"sqlite:///{tmp_path / 'own.db'}"
    migrate(url)
    return server_factory(url, REVHPO_LEASE_SECONDS="120")  # no expiry mid-test on a busy CPU


def _npz(path: Path, n: int = 60, d: int = 4, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, d)), y=rng.integers(0, classes, size=n))
    path.write_bytes(buf.getvalue())
    return path


# ----------------------------------------------------------------------------- jobs
def test_public_names_and_context_manager():
    import revhpo.service.client as impl

    assert Client is impl.Client and ApiError is impl.ApiError
    assert issubclass(LeaseLostError, ApiError) and issubclass(ApiError, ClientError)
    assert issubclass(ApiConnectionError, ClientError)
    with Client("http://127.0.0.1:1/") as c:
        assert c.base_url == "http://127.0.0.1:1"
    with pytest.raises(RuntimeError):  # closed by the context manager
        c._http.get("/healthz")


def test_submit_in_every_form_get_list_and_cancel(user, tmp_path):
    spec = tiny_spec()
    by_mapping = user.submit(spec)
    assert by_mapping["state"] == "queued" and by_mapping["spec"]["name"] == "tiny"
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(yaml.safe_dump({**spec, "name": "from-yaml-file"}))
    json_file = tmp_path / "job.json"
    json_file.write_text(json.dumps({**spec, "name": "from-json-file"}))
    names = {
        user.submit(yaml_file)["name"],  # a Path
        user.submit(str(json_file))["name"],  # a path as str
        user.submit(yaml.safe_dump({**spec, "name": "from-yaml-text"}))["name"],
        user.submit(json.dumps({**spec, "name": "from-json-text"}))["name"],
    }
    assert names == {"from-yaml-file", "from-json-file", "from-yaml-text", "from-json-text"}

    got = user.get(by_mapping["id"])
    assert got["id"] == by_mapping["id"] and got["spec"] == by_mapping["spec"]

    # An idempotency key replays the job it created.
    a = user.submit(spec, idempotency_key="same-key")
    assert user.submit(spec, idempotency_key="same-key")["id"] == a["id"]

    # Pagination: 6 jobs, pages of 4 then 2, newest first; iter_jobs follows the cursor.
    page = user.list(limit=4)
    assert len(page["items"]) == 4 and page["next_cursor"]
    rest = user.list(limit=4, cursor=page["next_cursor"])
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    ids = [j["id"] for j in page["items"] + rest["items"]]
    assert ids[0] == a["id"] and len(set(ids)) == 6
    assert [j["id"] for j in user.iter_jobs(page_size=2)] == ids

    cancelled = user.cancel(by_mapping["id"])
    assert cancelled["state"] == "cancelled"
    assert user.cancel(by_mapping["id"])["state"] == "cancelled"  # idempotent
    assert [j["id"] for j in user.list("cancelled")["items"]] == [by_mapping["id"]]
    both = {j["id"] for j in user.list(["cancelled", "queued"], limit=50)["items"]}
    assert both == set(ids)
    assert len(user.list(state="queued")["items"]) == 5


def test_upload_dataset_and_submit_on_it(user, tmp_path):
    ds = user.upload_dataset(_npz(tmp_path / "data.npz"))
    assert ds["format"] == "npz" and ds["n_rows"] == 60 and ds["n_features"] == 4
    job = user.submit({**tiny_spec(), "dataset": {"kind": "uploaded", "id": ds["id"]}})
    assert job["spec"]["dataset"]["id"] == ds["id"]
    bad = tmp_path / "bad.csv"
    bad.write_text("just one line\n")
    with pytest.raises(ApiError) as err:
        user.upload_dataset(bad)
    assert err.value.status == 422 and err.value.field == "file"
    with pytest.raises(FileNotFoundError):
        user.upload_dataset(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- errors
def test_errors_carry_status_and_problem(shared_server, user):
    job = user.submit(tiny_spec())
    with Client(shared_server.url, _key(shared_server, "someone-else")) as other:
        with pytest.raises(ApiError) as err:
            other.get(job["id"])
        e = err.value
        assert (e.status, e.title, e.field) == (404, "Not found", "id")
        assert job["id"] in e.detail and job["id"] in str(e) and "404" in str(e)
        assert e.problem["status"] == 404 and e.url.endswith(f"/v1/jobs/{job['id']}")
        with pytest.raises(ApiError) as err:
            list(other.events(job["id"]))
        assert err.value.status == 404
        with pytest.raises(ApiError, match="404"):
            other.cancel(job["id"])
    with Client(shared_server.url, "rhp_not_a_key") as bad:
        with pytest.raises(ApiError) as err:
            bad.list()
        assert err.value.status == 401 and err.value.title == "Unauthorized"
        assert "revoked" in err.value.detail
        with pytest.raises(ApiError) as err:
            bad.worker.claim("w")
        assert err.value.status == 401
    with pytest.raises(ApiError) as err:  # a user key is not a worker key
        user.worker.claim("w")
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:
        user.submit({**tiny_spec(), "training": {"steps": -1, "batch_size": 20}})
    assert err.value.status == 422 and err.value.field == "training.steps"
    assert "-1" in str(err.value)  # the detail echoes what was received
    with pytest.raises(ApiError) as err:
        user.result(job["id"])
    assert err.value.status == 409 and "queued" in err.value.detail
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        user.submit("nope.yaml")


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, backoff=0.01) as c:
        t0 = time.monotonic()
        with pytest.raises(ApiConnectionError) as err:
            c.get("abc")
        assert time.monotonic() - t0 < 5
        with pytest.raises(ApiConnectionError) as err2:
            list(c.events("abc"))
    assert err.value.url == f"{url}/v1/jobs/abc"
    assert f"{url}/v1/jobs/abc" in str(err.value) and "GET" in str(err.value)
    assert f"{url}/v1/jobs/abc/events" in str(err2.value)


def test_retry_until_the_server_comes_up(tmp_path, caplog):
    """The server starts a moment after the first call: the retries carry the call through."""
    from revhpo.service.db import migrate

    url = f"sqlite:///{tmp_path / 'late.db'}"
    migrate(url)
    srv = ServerProc(db_url=url, home=tmp_path / "home")
    with Client(srv.url, retries=0) as impatient, pytest.raises(ApiConnectionError):
        impatient.health()  # nothing listens yet: without retries the call fails
    starter = threading.Timer(1.0, srv.start)
    try:
        caplog.set_level(logging.WARNING, logger="revhpo.service.client")
        with Client(srv.url, retries=25, backoff=0.2, backoff_max=2.0) as patient:
            starter.start()
            assert patient.health()["status"] == "ok"
            assert patient.submit(tiny_spec())["state"] == "queued"
        retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        assert retried and "/healthz" in retried[0]
    finally:
        starter.join()
        srv.stop()


# ----------------------------------------------------------------------------- worker protocol
def test_worker_protocol_result_artifacts_and_events(own_server, tmp_path):
    c = Client(own_server.url)  # anonymous on loopback: the user `local`
    w = Client(own_server.url, _key(own_server, "pool", worker=True)).worker
    ds = c.upload_dataset(_npz(tmp_path / "d.npz"))
    job = c.submit({**tiny_spec(), "dataset": {"kind": "uploaded", "id": ds["id"]}})
    jid = job["id"]

    claim = w.claim("w1")
    assert claim["job_id"] == jid and claim["dataset_ids"] == [ds["id"]]
    assert w.claim("w2") is None  # nothing else to run
    token = claim["token"]
    got = w.download_dataset(jid, token, ds["id"], tmp_path / "datasets")
    assert got.name == f"{ds['id']}.npz"
    assert got.read_bytes() == (tmp_path / "d.npz").read_bytes()
    assert w.download_checkpoint(jid, token, tmp_path / "ckpt.npz") is False
    assert w.heartbeat(jid, token)["cancel_requested"] is False
    meta = {"type": "meta", "meta_iteration": 0, "meta_iterations": 2, "val_loss": 0.5}
    w.send_events(jid, token, [meta])
    assert c.get(jid)["progress"]["meta"]["val_loss"] == 0.5
    (tmp_path / "checkpoint.npz").write_bytes(b"ckpt-1")
    w.upload_checkpoint(jid, token, tmp_path / "checkpoint.npz")
    result = {"status": "completed", "n_hyperparameters": 7, "meta_iterations": 2}
    (tmp_path / "result.json").write_text(json.dumps(result))
    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    w.upload_artifact(jid, token, tmp_path / "result.json")
    w.upload_artifact(jid, token, tmp_path / "plot.png", "hyperparameters.png")
    w.complete(jid, token, result)
    with pytest.raises(LeaseLostError) as err:  # the attempt is over: its lease is gone
        w.heartbeat(jid, token)
    assert err.value.status == 409 and err.value.field == "token"

    doc = c.result(jid)
    assert doc["job_id"] == jid and doc["result"] == result
    names = sorted(a["name"] for a in c.artifacts(jid))
    assert names == ["hyperparameters.png", "result.json"]
    out = c.download_artifact(jid, "hyperparameters.png", tmp_path / "out")  # missing dir
    assert out == tmp_path / "out" and out.read_bytes() == b"\x89PNG fake"
    (tmp_path / "dl").mkdir()
    path = c.download_artifact(jid, "result.json", tmp_path / "dl")  # into a directory
    assert json.loads(path.read_text()) == result
    with pytest.raises(ApiError) as err:
        c.download_artifact(jid, "nope.png", tmp_path / "dl")
    assert err.value.status == 404

    events = list(c.events(jid))
    kinds = [e.type for e in events]
    assert kinds[0] == "claimed" and kinds[-2:] == ["done", "end"] and "meta" in kinds
    assert events[kinds.index("meta")].data["val_loss"] == 0.5
    assert events[-1].data["state"] == "succeeded" and events[-1].id == events[-2].id
    ids = [e.id for e in events[:-1]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stamps = [e.data["received_at"] for e in events[:-1]]  # the API's clock, in order
    assert stamps == sorted(stamps) and all(abs(t - time.time()) < 600 for t in stamps)
    resumed = list(c.events(jid, last_event_id=events[0].id))
    assert [e.type for e in resumed] == kinds[1:]
    assert c.wait(jid)["state"] == "succeeded"

    # fail (not retryable): the job fails with the reason, and has no result.
    j2 = c.submit(tiny_spec())["id"]
    cl = w.claim("w1")
    w.fail(j2, cl["token"], "DataError: bad column", retryable=False)
    failed = c.get(j2)
    assert failed["state"] == "failed" and "bad column" in failed["error"]
    with pytest.raises(ApiError) as err:
        c.result(j2)
    assert err.value.status == 409 and "failed" in err.value.detail

    # release: queued again at once; cancel while running: the worker reports `cancelled`.
    j3 = c.submit(tiny_spec())["id"]
    cl = w.claim("w1")
    w.release(j3, cl["token"])
    assert c.get(j3)["state"] == "queued"
    cl = w.claim("w1")
    assert cl["job_id"] == j3 and cl["checkpoint"] is None
    assert c.cancel(j3)["state"] == "running"
    assert w.heartbeat(j3, cl["token"])["cancel_requested"] is True
    w.cancelled(j3, cl["token"])
    assert c.get(j3)["state"] == "cancelled"
    c.close()


def _schedules_result(steps: int = 5, layers: tuple[str, ...] = ("dense0", "dense1")) -> dict:
    """A result document in `result.json`'s shape with distinct per-step, per-layer values."""
    rng = np.random.default_rng(1)

    def group(granularity: str, lo: float, hi: float) -> dict:
        table = rng.uniform(lo, hi, size=(steps, len(layers)))
        return {"granularity": granularity, "per_step_per_layer": table.tolist()}

    final = {
        "learning_rate": group("per_layer_knots", 0.05, 0.5),
        "momentum": group("per_step", 0.5, 0.95),
        "weight_decay": group("per_layer", 0.0, 0.01),
        "init_scale": {"granularity": "per_layer", "value": [0.9, 1.1]},
    }
    return {
        "spec": {"name": "export-me", "training": {"steps": steps}},
        "net": {"layer_names": list(layers)},
        "hyperparameters": {"final": final, "last": final},
        "selection": {"iteration": 4},
    }


def test_result_exported_in_every_format_over_http_and_by_the_cli(own_server, tmp_path, capsys):
    from revhpo.service.cli import main

    from revhpo.export import load_schedules

    c = Client(own_server.url)
    w = Client(own_server.url, _key(own_server, "pool", worker=True)).worker
    doc = _schedules_result()
    jid = c.submit(tiny_spec())["id"]
    claim = w.claim("w1")
    with pytest.raises(ApiError) as err:  # not succeeded yet: nothing to export
        c.export(jid, "csv")
    assert err.value.status == 409 and err.value.field == "state"
    w.complete(jid, claim["token"], doc)

    local = load_schedules(doc)
    assert c.export(jid, "csv").decode() == local.to_csv()
    with np.load(io.BytesIO(c.export(jid, "npz"))) as z:
        np.testing.assert_array_equal(z["learning_rate"], local.learning_rate)
        np.testing.assert_array_equal(z["weight_decay"], local.weight_decay)
    for fmt in ("json", "keras"):
        assert json.loads(c.export(jid, fmt)) == local.to_dict()
    assert json.loads(c.export(jid, "json", which="last"))["source"]["which"] == "last"
    resp = c.request("GET", f"/v1/jobs/{jid}/result", params={"format": "npz"})
    assert resp.headers["content-disposition"] == f'attachment; filename="{jid}-final.npz"'
    for bad in ({"format": "xls"}, {"format": "csv", "which": "best"}):
        with pytest.raises(ApiError) as err:
            c.request("GET", f"/v1/jobs/{jid}/result", params=bad)
        assert err.value.status == 422
    with pytest.raises(ApiError) as err:  # no such iterate in this result
        c.export(jid, "json", which="start")
    assert err.value.status == 409 and "hyperparameters.start" in err.value.detail

    # `revhpo export JOB_ID` through the API prints what the local export of the same
    # document prints; another owner's job is not found.
    (tmp_path / "result.json").write_text(json.dumps(doc))
    assert main(["export", str(tmp_path / "result.json"), "-f", "csv"]) == 0
    by_file = capsys.readouterr().out
    assert main(["export", jid, "-f", "csv", "--api", own_server.url]) == 0
    assert capsys.readouterr().out == by_file
    other = _key(own_server, "someone-else")
    assert main(["export", jid, "--api", own_server.url, "--token", other]) == 1
    assert "404" in capsys.readouterr().err
    c.close()


def test_checkpoint_handed_to_the_next_attempt(own_server, tmp_path):
    pool = Client(own_server.url, _key(own_server, "pool", worker=True))
    with Client(own_server.url) as c, pool:
        jid = c.submit(tiny_spec())["id"]
        cl = pool.worker.claim("a")
        (tmp_path / "checkpoint.npz").write_bytes(b"state-after-1")
        pool.worker.upload_checkpoint(jid, cl["token"], tmp_path / "checkpoint.npz")
        pool.worker.release(jid, cl["token"])
        cl2 = pool.worker.claim("b")
        assert cl2["checkpoint"] == "checkpoint.npz"
        assert pool.worker.download_checkpoint(jid, cl2["token"], tmp_path / "got.npz") is True
        assert (tmp_path / "got.npz").read_bytes() == b"state-after-1"
        with pytest.raises(LeaseLostError):  # the first attempt's token is dead
            pool.worker.download_checkpoint(jid, cl["token"], tmp_path / "x.npz")


# ----------------------------------------------------------------------------- retry policy
class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers per the server's `script`: 'drop' (close without answering), '503', or '200'."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self) -> None:
        srv = self.server
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        with srv.lock:
            srv.calls.append((self.command, self.path))
            action = srv.script.pop(0) if srv.script else "200"
        if action == "drop":
            self.close_connection = True
            return
        status = int(action)
        body = json.dumps(
            {"status": "ok"} if status == 200 else {"title": "Busy", "status": status}
        )
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = _answer


@pytest.fixture
def flaky() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.lock, srv.calls, srv.script = threading.Lock(), [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_idempotent_calls_retry_ambiguous_failures_others_do_not(flaky):
    with Client(flaky.url, retries=3, backoff=0.01) as c:
        flaky.script[:] = ["drop", "503", "502"]
        assert c.health() == {"status": "ok"}  # GET: retried through all three
        assert len(flaky.calls) == 4

        flaky.calls.clear()
        flaky.script[:] = ["drop"]  # POST /claim may have been applied: never replayed
        with pytest.raises(ApiConnectionError) as err:
            c.worker.claim("w")
        assert len(flaky.calls) == 1 and f"{flaky.url}/v1/worker/claim" in str(err.value)

        flaky.calls.clear()
        flaky.script[:] = ["503", "503"]  # 503: the server did nothing; replay is safe
        assert c.worker.claim("w") == {"status": "ok"} and len(flaky.calls) == 3

        flaky.calls.clear()
        flaky.script[:] = ["502"]  # 502 on a non-idempotent call: reported, not replayed
        with pytest.raises(ApiError) as err:
            c.worker.send_events("j", "t", [])
        assert err.value.status == 502 and len(flaky.calls) == 1

        flaky.calls.clear()
        flaky.script[:] = ["drop"]  # submit sends an Idempotency-Key: replay is safe
        assert c.submit({"name": "x"}) == {"status": "ok"} and len(flaky.calls) == 2

        flaky.calls.clear()
        flaky.script[:] = ["503"] * 10  # retries exhausted: the last answer is the error
        with pytest.raises(ApiError) as err:
            c.health()
        assert err.value.status == 503 and err.value.title == "Busy" and len(flaky.calls) == 4


class _Sse(http.server.BaseHTTPRequestHandler):
    """An event stream that breaks after its first event; a reconnection resumes it."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(self.headers.get("Last-Event-ID"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [(1, "claimed", {"type": "claimed"}), (2, "meta", {"type": "meta"})]
        after = int(self.headers.get("Last-Event-ID") or 0)
        out = "retry: 2000\n\n"
        for eid, name, data in events:
            if eid > after:
                out += f"id: {eid}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                if after == 0:
                    break  # the connection drops after the first event
        else:
            out += 'event: end\ndata: {"state": "succeeded"}\n\n'
        self.wfile.write(out.encode())


def test_events_reconnect_with_last_event_id():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sse)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{srv.server_address[1]}", backoff=0.01) as c:
            events = list(c.events("j"))
        assert [(e.id, e.type) for e in events] == [(1, "claimed"), (2, "meta"), (2, "end")]
        assert srv.seen == [None, "1"]  # reconnected once, resuming after event 1
    finally:
        srv.shutdown()
        srv.server_close()
