"""Workers running real tuning jobs (TensorFlow subprocesses) against a real server.

Kept small for the test budget: tiny nets, synthetic data, T=5, a few meta-iterations.
The full-size chaos run (50 jobs, 3 workers, both backends) is `benchmarks/bench_service.py`.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
from svc_helpers import (
    REPO,
    base_env,
    create_key,
    kill_group,
    sse_events,
    start_worker,
    tiny_spec,
    wait_for,
)

# Each test here runs real TensorFlow jobs in subprocesses: the full tier only.
pytestmark = pytest.mark.slow


def _job(c: httpx.Client, jid: str) -> dict:
    return c.get(f"/v1/jobs/{jid}").json()


def _cli(server, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "revhpo", *args, "--api", server.url],
        env=base_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _events(c: httpx.Client, jid: str) -> list[tuple]:
    return sse_events(c, jid, timeout=60)


def _first_meta_after_last_claim(events: list[tuple]) -> int | None:
    """The first meta-iteration the last attempt ran (None: it had none left to run)."""
    kinds = [e[1] for e in events]
    last_claim = len(kinds) - 1 - kinds[::-1].index("claimed")
    metas = [e[2]["meta_iteration"] for e in events[last_claim:] if e[1] == "meta"]
    return metas[0] if metas else None


def _resumed_from_checkpoint(events: list[tuple]) -> bool:
    """The last attempt did not redo the start, nor a meta-iteration an earlier attempt
    reported (its checkpoint is written before its event)."""
    kinds = [e[1] for e in events]
    last_claim = len(kinds) - 1 - kinds[::-1].index("claimed")
    before = [e[2]["meta_iteration"] for e in events[:last_claim] if e[1] == "meta"]
    first = _first_meta_after_last_claim(events)
    redid_start = "start" in kinds[last_claim:] and "start" in kinds[:last_claim]
    return not redid_start and (first is None or not before or first > max(before))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fail_cancel_handback_and_cli(db_url, server_factory, tmp_path):
    srv = server_factory(db_url)
    c = httpx.Client(base_url=srv.url, timeout=30)
    w1, _ = start_worker(srv, name="w1")
    try:
        # A job whose data is bad FAILS with the reason; the worker survives it.
        csv = "a,b,label\n" + "\n".join(f"{i},{i % 7},{i % 2}" for i in range(60))
        ds = c.post("/v1/datasets", files={"file": ("t.csv", csv.encode(), "text/csv")}).json()
        bad = {
            **tiny_spec(),
            "dataset": {"kind": "uploaded", "id": ds["id"], "label_column": "nope"},
        }
        bad_id = c.post("/v1/jobs", json=bad).json()["id"]
        job = wait_for(
            lambda: (j := _job(c, bad_id))["state"] in ("failed", "succeeded") and j,
            180,
            what="fail",
        )
        assert job["state"] == "failed" and "DataError" in job["error"] and "nope" in job["error"]
        assert job["attempts"] == 1  # a job's own failure is not retried

        # A running job stops at its next meta-iteration when cancelled (revhpo cancel).
        long_id = c.post("/v1/jobs", json=tiny_spec(iterations=500, eval_seeds=0)).json()["id"]
        wait_for(lambda: (_job(c, long_id).get("progress") or {}).get("meta"), 180, what="meta")
        out = _cli(srv, "cancel", long_id)
        assert out.returncode == 0 and "running" in out.stdout
        job = wait_for(
            lambda: (j := _job(c, long_id))["state"] == "cancelled" and j, 60, what="cancel"
        )
        assert job["progress"]["meta"]["meta_iteration"] < 50
        assert w1.poll() is None  # the worker is still serving

        # SIGTERM: the worker hands its job back at a meta-iteration boundary and exits.
        spec_file = tmp_path / "job.yaml"
        import yaml

        # Long enough meta-iterations (T = 1000) that the signal lands before the job ends.
        slow = {
            **tiny_spec(iterations=3, eval_seeds=0),
            "training": {"steps": 1000, "batch_size": 20},
        }
        spec_file.write_text(yaml.safe_dump(slow))
        out = _cli(srv, "submit", str(spec_file))
        assert out.returncode == 0, out.stderr
        jid = out.stdout.strip().splitlines()[-1]
        wait_for(lambda: (_job(c, jid).get("progress") or {}).get("meta"), 180, what="meta")
        w1.send_signal(signal.SIGTERM)
        assert w1.wait(120) == 0
        job = _job(c, jid)
        assert job["state"] == "queued" and job["attempts"] == 0, job
        w2, _ = start_worker(srv, name="w2")
        try:
            job = wait_for(
                lambda: (j := _job(c, jid))["state"] in ("succeeded", "failed") and j,
                240,
                what="resumed job",
            )
            assert job["state"] == "succeeded" and job["attempts"] == 1, job
            events = _events(c, jid)
            assert [e[1] for e in events].count("released") == 1
            # Resumed from the checkpoint: across both attempts each meta-iteration ran once.
            assert sorted(e[2]["meta_iteration"] for e in events if e[1] == "meta") == [0, 1, 2]
            out = _cli(srv, "result", jid, "--out", str(tmp_path / "res"))
            assert out.returncode == 0, out.stderr
            assert "tuned hyperparameters" in out.stdout
            pngs = sorted(p.name for p in (tmp_path / "res").glob("*.png"))
            assert pngs and all((tmp_path / "res" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
            out = _cli(srv, "jobs", "--state", "succeeded")
            assert jid in out.stdout and long_id not in out.stdout
            out = _cli(srv, "status", jid)
            assert "succeeded" in out.stdout
        finally:
            w2.send_signal(signal.SIGTERM)
            w2.wait(60)
    finally:
        kill_group(w1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_whose_key_is_refused_exits_with_a_clear_error(db_url, server_factory):
    """401 (unknown, revoked or malformed key) and 403 (a user key) on the claim: the worker
    says so once and exits with status 2, instead of retrying forever; no job is touched."""
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    revoked = create_key(db_url, "ops", worker=True)
    out = subprocess.run(
        [sys.executable, "-m", "revhpo", "keys", "revoke", revoked, "--database-url", db_url],
        env=base_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    user = create_key(db_url, "alice")
    c = httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {user}"})
    jid = c.post("/v1/jobs", json=tiny_spec()).json()["id"]
    tokens = {"unknown": "rhp_notakey", "revoked": revoked, "bad": "x y", "user": user}
    procs = {name: start_worker(srv, token=tok, name=name) for name, tok in tokens.items()}
    try:
        for name, (proc, log) in procs.items():
            assert proc.wait(60) == 2, log.read_text()
            text = log.read_text()
            assert "refused the worker key" in text and srv.url in text, text
            assert ("403" if name == "user" else "401") in text, text
            assert "claim failed" not in text and "Traceback" not in text, text
    finally:
        for proc, _ in procs.values():
            kill_group(proc)
    job = _job(c, jid)
    assert job["state"] == "queued" and job["attempts"] == 0


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_chaos_sigkill_a_worker(db_url, server_factory):
    """3 jobs, 2 workers, SIGKILL the one running a job mid-way (and its job process): every
    job succeeds exactly once; the killed job resumes from its checkpoint on another worker."""
    srv = server_factory(db_url)
    c = httpx.Client(base_url=srv.url, timeout=30)
    ids = [
        c.post("/v1/jobs", json=tiny_spec(iterations=3, eval_seeds=0)).json()["id"]
        for _ in range(3)
    ]
    workers = {name: start_worker(srv, name=name)[0] for name in ("a", "b")}
    try:

        def victim():
            for jid in ids:
                j = _job(c, jid)
                if j["state"] == "running" and (j.get("progress") or {}).get("checkpoint"):
                    return jid
            return None

        jid = wait_for(victim, 240, what="a job past its first checkpoint")
        name = _job(c, jid)["worker"]
        kill_group(workers[name], signal.SIGKILL)
        workers[name].wait(10)
        workers["c"] = start_worker(srv, name="c")[0]
        jobs = wait_for(
            lambda: (
                (js := [_job(c, i) for i in ids])
                and all(j["state"] in ("succeeded", "failed", "cancelled") for j in js)
                and js
            ),
            300,
            what="all jobs finished",
        )
        assert [j["state"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
        for j in jobs:
            events = _events(c, j["id"])
            assert [e[1] for e in events].count("done") == 1
        killed = _job(c, jid)
        assert killed["attempts"] == 2
        events = _events(c, jid)
        kinds = [e[1] for e in events]
        assert kinds.count("lease_expired") == 1 and kinds.count("claimed") == 2
        assert _resumed_from_checkpoint(events)  # not restarted
    finally:
        for p in workers.values():
            kill_group(p)


def test_demo_runs_the_main_job_over_http(tmp_path):
    """`revhpo demo` (what `make run` runs), with a tiny spec: serve + local worker + submit +
    progress + result + plots, then the service is stopped."""
    import re

    import yaml

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(iterations=2, eval_seeds=1)))
    home = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "revhpo", "demo", "--spec", str(spec), "--home", str(home)],
        env=base_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "meta-iteration 1/2" in text and "meta-iteration 2/2" in text
    assert "status: completed" in text and "final: val loss" in text
    assert (home / "result" / "result.json").is_file()
    assert sorted(p.name for p in (home / "result").glob("*.png"))
    api = re.search(r"starting the service on (http://127\.0\.0\.1:\d+)", text).group(1)
    with pytest.raises(httpx.TransportError):
        httpx.get(api + "/healthz", timeout=2)  # stopped
