"""`revhpo submit --wait`, `status`, `jobs`, `result` as real subprocesses against a real
server and a real worker (a tiny TensorFlow job), and their errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from svc_helpers import REPO, base_env, create_key, kill_group, start_worker, tiny_spec

# Each test here runs real TensorFlow jobs in subprocesses: the full tier only.
pytestmark = pytest.mark.slow


def _cli(server, *args: str, token: str | None = None, timeout: float = 300):
    env = base_env()
    env.pop("REVHPO_TOKEN", None)
    if token:
        env["REVHPO_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "revhpo", *args, "--api", server.url],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_submit_wait_shows_progress_and_the_result(db_url, server_factory, tmp_path):
    srv = server_factory(db_url, REVHPO_ALLOW_ANONYMOUS="false")
    user = create_key(db_url, "alice")
    worker, log = start_worker(srv, token=create_key(db_url, "w", worker=True), name="w1")
    try:
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec(iterations=2, eval_seeds=1)))
        out = _cli(srv, "submit", str(spec), "--wait", token=user)
        assert out.returncode == 0, out.stdout + out.stderr + log.read_text()[-3000:]
        jid = out.stdout.splitlines()[0].strip()
        assert "status: completed" in out.stdout and "final: val loss" in out.stdout
        assert f"{srv.url}/v1/jobs/{jid}/artifacts/result.json" in out.stdout
        progress = out.stderr
        assert "running (attempt 1, worker w1)" in progress
        assert "meta-iteration 1/2  val loss" in progress and "meta-iteration 2/2" in progress
        assert "job succeeded" in progress
        for metric in ("test loss", "test_loss", "test acc"):
            assert metric not in progress  # never on the progress lines

        status = _cli(srv, "status", jid, token=user)
        assert status.returncode == 0 and "succeeded" in status.stdout
        assert "meta-iteration 2/2" in status.stdout
        jobs = _cli(srv, "jobs", "--state", "succeeded", token=user)
        assert jobs.returncode == 0 and jid in jobs.stdout and "2/2" in jobs.stdout
        res = _cli(srv, "result", jid, "--out", str(tmp_path / "res"), token=user)
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "res" / "result.json").is_file()

        # Errors: one line naming what the API said; exit status 1.
        other = create_key(db_url, "bob")
        out = _cli(srv, "status", jid, token=other)
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert "Not found (404)" in out.stderr and jid in out.stderr
        out = _cli(srv, "jobs", token="rhp_nope")
        assert out.returncode == 1 and "Unauthorized (401)" in out.stderr
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**tiny_spec(), "training": {"steps": 0}}))
        out = _cli(srv, "submit", str(bad), token=user)
        assert out.returncode == 1 and "training" in out.stderr and "422" in out.stderr
    finally:
        kill_group(worker)
