"""Helpers of the service tests: backends, free ports, real server and worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("REVHPO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# Short leases so that lost workers are noticed within seconds.
FAST_ENV = {
    "REVHPO_LEASE_SECONDS": "3",
    "REVHPO_HEARTBEAT_SECONDS": "0.5",
    "REVHPO_REAPER_SECONDS": "0.5",
    "REVHPO_BACKOFF_SECONDS": "0",
}


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this repository importable, quiet TensorFlow."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(FAST_ENV)
    env.update(extra)
    return env


class _PortTaken(RuntimeError):
    """The server could not bind its port: another process took it after `free_port`."""


class ServerProc:
    """`python -m revhpo.service.api` (migrations + uvicorn) on a free loopback port."""

    def __init__(self, *, db_url: str, home: Path, env: dict[str, str] | None = None):
        self.db_url = db_url
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = home / "server.log"

    def env(self) -> dict[str, str]:
        """The environment the server (and a worker sharing its settings) runs with."""
        env = {
            "REVHPO_DATABASE_URL": self.db_url,
            "REVHPO_HOME": str(self.home),
            "REVHPO_HOST": "127.0.0.1",
            "REVHPO_PORT": str(self.port),
            **self.extra_env,
        }
        return base_env(**env)

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait for /healthz; on a port another test process took meanwhile
        (parallel test workers), again on a new free port."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        return self._start(timeout)

    def _start(self, timeout: float) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "revhpo.service.api"],
            env=self.env(),
            cwd=str(REPO),
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._logf.close()
                tail = self.log.read_text()[-3000:]
                if "address already in use" in tail.lower():
                    self.log.write_text("")  # the next attempt's log starts empty
                    raise _PortTaken(tail)
                raise RuntimeError(f"server exited: {tail}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_logf", None):
            self._logf.close()


def start_worker(server: ServerProc, *, token: str | None = None, name: str = "w") -> tuple:
    """`python -m revhpo.service.worker --api URL` as its own process group; returns (proc, log).

    Without ``token`` the worker gets a new worker key (anonymous callers have no worker
    rights)."""
    log = server.home / f"worker-{name}.log"
    token = token or create_key(server.db_url, f"pool-{name}", worker=True)
    logf = open(log, "ab")  # noqa: SIM115 (the caller's process outlives this call)
    cmd = [sys.executable, "-m", "revhpo.service.worker", "--api", server.url, "--name", name]
    cmd += ["--token", token]
    proc = subprocess.Popen(
        cmd,
        env=server.env(),
        cwd=str(REPO),
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group `proc` leads (the worker and its job subprocess)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


TINY_SPEC = {
    "name": "tiny",
    "dataset": {
        "kind": "synthetic",
        "task": "blobs",
        "n_samples": 120,
        "n_features": 6,
        "n_classes": 3,
        "seed": 0,
    },
    "net": {"family": "mlp", "sizes": [6], "activation": "tanh"},
    "training": {"steps": 5, "batch_size": 20},
    "hyperparameters": {
        "learning_rate": {"init": 0.1, "tune": True, "granularity": "per_layer_per_step"},
        "momentum": {"init": 0.9, "tune": True, "granularity": "scalar"},
    },
    # An init start, one seed per hypergradient and two selection seeds: each job is a few
    # plain trainings, not the default coarse grid's dozens (the protocol is what is tested).
    "meta": {
        "iterations": 2,
        "eval_seeds": 1,
        "start": "init",
        "seeds_per_iteration": 1,
        "select_seeds": 2,
    },
}


def tiny_spec(**meta: object) -> dict:
    """The tiny job spec with `meta` fields overridden (a deep enough copy)."""
    spec = {**TINY_SPEC, "meta": {**TINY_SPEC["meta"], **meta}}
    return spec


def create_key(db_url: str, owner: str, worker: bool = False) -> str:
    """`revhpo keys create` as a user would run it; returns the printed key."""
    cmd = [sys.executable, "-m", "revhpo", "keys", "create", "--owner", owner]
    if worker:
        cmd.append("--worker")
    out = subprocess.run(
        cmd + ["--database-url", db_url],
        env=base_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip().splitlines()[-1]


def sse_events(client: httpx.Client, job_id: str, timeout: float = 120.0) -> list[tuple]:
    """Read the SSE stream of a job to its `end`; returns [(id, event, data), ...]."""
    import json

    out, eid, event, data = [], None, "message", ""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("id:"):
                eid = int(line[3:])
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                out.append((eid, event, json.loads(data)))
                if event == "end":
                    return out
                eid, event, data = None, "message", ""
    return out


PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict:
    """``resp`` is a problem document with ``status`` (and ``field``, when given); returns it."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    doc = resp.json()
    assert doc["status"] == status and doc["title"]
    if field is not None:
        assert doc.get("field") == field, doc
    return doc
