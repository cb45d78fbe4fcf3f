"""Reliability and load of the tuning service, on this machine, against real servers.

Subcommands (each prints its figures as Markdown and JSON; loopback traffic only, bounded):

  chaos   N short tuning jobs, W workers, SIGKILL a random worker (and its job process) every
          few seconds and start a fresh one: every job must end succeeded exactly once, none
          lost, no result from a dead attempt. Reports the re-queue latency (kill -> reaper
          re-queues on the database clock -> claimed again).
  load    submit and status latency (p50/p99) at a fixed open-loop rate, then claims/s.
  owners  cross-owner access attempts (another owner's jobs and data): all must be refused.
  fuzz    schemathesis against the published OpenAPI document: no 5xx, every response's
          content type declared. Needs schemathesis,
          which is not a dependency of the project:  .venv/bin/pip install schemathesis

Backends: --backend sqlite (a fresh file) or postgres (a fresh schema at $REVHPO_TEST_PG_URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/test, dropped afterwards).

  .venv/bin/python benchmarks/bench_service.py chaos --backend sqlite --jobs 50 --workers 3
  .venv/bin/python benchmarks/bench_service.py load --backend postgres --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_URL = os.environ.get("REVHPO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

SHORT_JOB = {
    "name": "chaos",
    "dataset": {"kind": "synthetic", "n_samples": 120, "n_features": 6, "n_classes": 3},
    "net": {"family": "mlp", "sizes": [6], "activation": "tanh"},
    "training": {"steps": 5, "batch_size": 20},
    "hyperparameters": {
        "learning_rate": {"init": 0.1, "tune": True, "granularity": "per_layer_per_step"},
        "momentum": {"init": 0.9, "tune": True, "granularity": "scalar"},
    },
    "meta": {"iterations": 3, "eval_seeds": 0},
}


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def database(backend: str, tmp: Path):
    """A fresh, migrated database URL."""
    from revhpo.service.db import _engines, migrate

    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'revhpo.db'}"
        migrate(url)
        yield url
        return
    import psycopg

    schema = f"revhpo_bench_{uuid.uuid4().hex[:10]}"
    raw = PG_URL.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        eng = _engines.pop(url, None)
        if eng is not None:
            eng.dispose()
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def env_for(url: str, home: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment of the server and workers."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        TF_CPP_MIN_LOG_LEVEL="3",
        REVHPO_DATABASE_URL=url,
        REVHPO_HOME=str(home),
        REVHPO_HOST="127.0.0.1",
        REVHPO_PORT=str(port),
        **extra,
    )
    return env


@contextmanager
def server(url: str, home: Path, **extra: str):
    """A real API server (uvicorn subprocess); yields (base URL, env)."""
    with api_process(url, home, **extra) as (base, env, _):
        yield base, env


@contextmanager
def api_process(url: str, home: Path, **extra: str):
    """A real API server (uvicorn subprocess) ready on /healthz; yields (base URL, env,
    process); stopped with SIGTERM on exit."""
    port = free_port()
    env = env_for(url, home, port, **extra)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "revhpo.service.api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        yield base, env, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


# ----------------------------------------------------------------------------- chaos
def chaos(args: argparse.Namespace) -> dict:
    """Kill workers at random while short jobs run; check exactly-once success."""
    from revhpo.service.db import db_epoch, get_engine, session_scope
    from revhpo.service.models import Job, JobEvent
    from sqlalchemy import select

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        fast = {
            "REVHPO_LEASE_SECONDS": str(args.lease),
            "REVHPO_HEARTBEAT_SECONDS": str(args.lease / 6),
            "REVHPO_REAPER_SECONDS": "0.5",
            "REVHPO_BACKOFF_SECONDS": "0",
            "REVHPO_MAX_ATTEMPTS": "10",
        }
        with server(url, Path(tmp) / "home", **fast) as (base, env):
            c = httpx.Client(base_url=base, timeout=30)
            ids = [c.post("/v1/jobs", json=SHORT_JOB).json()["id"] for _ in range(args.jobs)]
            workers: dict[str, subprocess.Popen] = {}
            serial = 0
            logs = Path(tmp) / "home"

            def spawn() -> None:
                nonlocal serial
                name = f"w{serial}"
                serial += 1
                out = open(logs / f"{name}.log", "ab")  # noqa: SIM115
                workers[name] = subprocess.Popen(
                    [sys.executable, "-m", "revhpo.service.worker", "--api", base, "--name", name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

            try:
                for _ in range(args.workers):
                    spawn()
                kills: list[dict] = []
                t0 = time.monotonic()
                next_kill = t0 + args.kill_every
                while True:
                    with session_scope(get_engine(url), write=False) as s:
                        states = [j.state for j in s.scalars(select(Job))]
                    if all(st in ("succeeded", "failed", "cancelled") for st in states):
                        break
                    if time.monotonic() - t0 > args.timeout:
                        raise RuntimeError(f"timeout; states {states}")
                    if time.monotonic() >= next_kill:
                        busy = [n for n, p in workers.items() if p.poll() is None]
                        name = rng.choice(busy)
                        with session_scope(get_engine(url), write=False) as s:
                            running = s.scalars(
                                select(Job.id).where(Job.state == "running", Job.worker == name)
                            ).all()
                            t_db = s.execute(select(db_epoch())).scalar()
                        os.killpg(workers[name].pid, signal.SIGKILL)
                        workers[name].wait()
                        del workers[name]
                        kills.append({"worker": name, "jobs": list(running), "t": t_db})
                        spawn()
                        next_kill = time.monotonic() + args.kill_every
                    time.sleep(0.3)
                wall = time.monotonic() - t0
            finally:
                for p in workers.values():
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            with session_scope(get_engine(url), write=False) as s:
                jobs = {j.id: j for j in s.scalars(select(Job))}
                events: dict[int, list[JobEvent]] = {}
                for ev in s.scalars(select(JobEvent).order_by(JobEvent.id)):
                    events.setdefault(ev.job_seq, []).append(ev)
                seq = {j.id: j.seq for j in jobs.values()}
                requeue, reclaim = [], []
                for k in kills:
                    for jid in k["jobs"]:
                        evs = [e for e in events[seq[jid]] if e.created_at >= k["t"]]
                        exp = next((e for e in evs if e.data["type"] == "lease_expired"), None)
                        cl = next((e for e in evs if e.data["type"] == "claimed"), None)
                        if exp:
                            requeue.append(exp.created_at - k["t"])
                        if cl:
                            reclaim.append(cl.created_at - k["t"])
                done_counts = [
                    sum(1 for e in events[j.seq] if e.data["type"] == "done") for j in jobs.values()
                ]
                # The done event is written by the attempt that held the lease: its attempt
                # number is the job's last claim; every earlier (killed) attempt wrote none.
                late = sum(
                    1
                    for j in jobs.values()
                    for e in events[j.seq]
                    if e.data["type"] == "done" and e.attempt != j.attempts
                )
                out = {
                    "backend": args.backend,
                    "jobs": args.jobs,
                    "workers": args.workers,
                    "kill_every_s": args.kill_every,
                    "lease_s": args.lease,
                    "kills": len(kills),
                    "jobs_interrupted": sum(len(k["jobs"]) for k in kills),
                    "succeeded": sum(1 for j in jobs.values() if j.state == "succeeded"),
                    "not_succeeded": [j.error for j in jobs.values() if j.state != "succeeded"],
                    "done_events_per_job": sorted(set(done_counts)),
                    "results_from_dead_attempts": late,
                    "attempts_total": sum(j.attempts for j in jobs.values()),
                    "requeue_latency_s": _stats(requeue),
                    "kill_to_reclaim_s": _stats(reclaim),
                    "wall_s": round(wall, 1),
                }
                assert len(ids) == len(jobs)
    return out


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": round(statistics.median(xs), 2),
        "p99": round(pct(xs, 99), 2),
        "max": round(max(xs), 2),
    }


# ----------------------------------------------------------------------------- load
async def _open_loop(client: httpx.AsyncClient, make, rate: float, seconds: float) -> dict:
    """Send `make(i)` requests at a fixed rate (open loop: latency counts from the scheduled
    send time, so a slow server cannot slow the generator down and hide its queueing)."""
    n = int(rate * seconds)
    lat: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        nonlocal errors
        t_sched = start + i / rate
        await asyncio.sleep(max(0.0, t_sched - time.perf_counter()))
        try:
            r = await make(i)
            if r.status_code >= 400:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        lat.append(time.perf_counter() - t_sched)

    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    return {
        "requests": n,
        "errors": errors,
        "achieved_rps": round(n / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": round(1000 * pct(lat, 99), 1),
    }


def load(args: argparse.Namespace) -> dict:
    """Submit and status latency at a fixed rate; then claims per second."""
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        with server(url, Path(tmp) / "home") as (base, _env):

            async def run() -> dict:
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
                async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
                    ids: list[str] = []

                    async def submit(i: int):
                        r = await c.post("/v1/jobs", json={**SHORT_JOB, "name": f"load-{i}"})
                        if r.status_code == 202:
                            ids.append(r.json()["id"])
                        return r

                    sub = await _open_loop(c, submit, args.rate, args.seconds)

                    async def status(i: int):
                        return await c.get(f"/v1/jobs/{ids[i % len(ids)]}")

                    st = await _open_loop(c, status, args.rate, args.seconds)

                    async def listing(i: int):
                        return await c.get("/v1/jobs", params={"limit": 50, "state": "queued"})

                    ls = await _open_loop(c, listing, args.rate / 2, args.seconds / 2)
                    return {"submit": sub, "status": st, "list_50": ls, "queued": len(ids)}

            res = asyncio.run(run())
            res["claims"] = _claims(base, res["queued"], args.claimers)
    res["backend"] = args.backend
    return res


def _claims(base: str, n: int, claimers: int) -> dict:
    import threading

    got: list[str] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while True:
                r = c.post("/v1/worker/claim", json={"worker": f"bench-{i}"})
                if r.status_code == 204:
                    return
                with lock:
                    got.append(r.json()["job_id"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return {
        "claimers": claimers,
        "claimed": len(got),
        "distinct": len(set(got)),
        "queued": n,
        "claims_per_s": round(len(got) / dt, 1),
    }


# ----------------------------------------------------------------------------- owners
def owners(args: argparse.Namespace) -> dict:
    """Every way one owner could reach another's jobs and data, tried; all must fail."""
    import io

    import numpy as np
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        with server(url, Path(tmp) / "home", REVHPO_ALLOW_ANONYMOUS="false") as (base, _):
            ka, kb = (create_key(get_engine(url), o) for o in ("alice", "bob"))
            a = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ka}"})
            b = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {kb}"})
            anon = httpx.Client(base_url=base)
            buf = io.BytesIO()
            np.savez(buf, x=np.zeros((30, 3)), y=np.arange(30) % 2)
            ds = a.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()["id"]
            ids = [a.post("/v1/jobs", json=SHORT_JOB).json()["id"] for _ in range(args.n)]
            tries: list[tuple[str, httpx.Response]] = []
            for jid in ids:
                for who, cl in (("other owner", b), ("no key", anon)):
                    tries += [
                        (who, cl.get(f"/v1/jobs/{jid}")),
                        (who, cl.post(f"/v1/jobs/{jid}/cancel")),
                        (who, cl.get(f"/v1/jobs/{jid}/result")),
                        (who, cl.get(f"/v1/jobs/{jid}/events")),
                        (who, cl.get(f"/v1/jobs/{jid}/artifacts/result.json")),
                        (who, cl.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": "x"})),
                    ]
            spec = {**SHORT_JOB, "dataset": {"kind": "uploaded", "id": ds}}
            tries.append(("other owner", b.post("/v1/jobs", json=spec)))
            listed = [j["id"] for j in b.get("/v1/jobs", params={"limit": 200}).json()["items"]]
            refused = sum(1 for _, r in tries if r.status_code in (401, 403, 404, 422))
            codes: dict[str, int] = {}
            for _, r in tries:
                codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
            states = {a.get(f"/v1/jobs/{j}").json()["state"] for j in ids}
            return {
                "backend": args.backend,
                "attempts": len(tries),
                "refused": refused,
                "status_codes": codes,
                "leaked_in_listing": len(set(listed) & set(ids)),
                "owner_jobs_state_after": sorted(states),
            }


# ----------------------------------------------------------------------------- fuzz
def fuzz(args: argparse.Namespace) -> dict:
    """schemathesis over the OpenAPI document; fails on any 5xx or on a response whose
    content type the document does not declare (errors: application/problem+json). Two
    passes: anonymous on loopback (the user routes), then the worker routes with a worker
    key (anonymous callers have no worker rights)."""
    exe = shutil_which("schemathesis") or shutil_which("st")
    if exe is None:
        raise SystemExit("schemathesis not installed: .venv/bin/pip install schemathesis")
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    out: dict = {"backend": args.backend, "passes": []}
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        with server(url, Path(tmp) / "home") as (base, _):
            key = create_key(get_engine(url), "fuzz-pool", is_worker=True)
            passes = {
                "user": ("user routes, anonymous", ["--exclude-path-regex", "^/v1/worker"]),
                "worker": (
                    "worker routes, worker key",
                    # schemathesis 4.32's coverage phase stops with an internal KeyError
                    # (its own cache) on these routes: the other phases still run
                    ["--include-path-regex", "^/v1/worker", "-H", f"Authorization: Bearer {key}"]
                    + ["--phases", "examples,fuzzing,stateful"],
                ),
            }
            for label, extra in (passes[name] for name in args.passes.split(",")):
                cmd = [
                    exe,
                    "run",
                    f"{base}/openapi.json",
                    "--checks",
                    "not_a_server_error,content_type_conformance",
                    "--max-examples",
                    str(args.examples),
                    "--workers",
                    "2",
                    "--exclude-path-regex",
                    "/events$",  # an SSE stream only ends with its job
                    "--request-timeout",
                    "30",
                    *extra,
                ]
                t0 = time.monotonic()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                lines = proc.stdout.splitlines()
                tail = "\n".join(lines if proc.returncode else lines[-25:])  # failures: all
                print(f"--- {label}\n{tail}")
                out["passes"].append(
                    {
                        "label": label,
                        "command": " ".join(cmd[1:]).replace(key, "rhp_..."),
                        "exit_status": proc.returncode,
                        "wall_s": round(time.monotonic() - t0, 1),
                    }
                )
    out["exit_status"] = max(p["exit_status"] for p in out["passes"])
    return out


def shutil_which(name: str) -> str | None:
    """`name` next to this interpreter, else on PATH."""
    import shutil

    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else shutil.which(name)


def main() -> int:
    """CLI."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("chaos", "load", "owners", "fuzz"):
        s = sub.add_parser(name)
        s.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    s = sub.choices["chaos"]
    s.add_argument("--jobs", type=int, default=50)
    s.add_argument("--workers", type=int, default=3)
    s.add_argument("--kill-every", type=float, default=30.0)
    s.add_argument("--lease", type=float, default=6.0)
    s.add_argument("--timeout", type=float, default=3600)
    s.add_argument("--seed", type=int, default=0)
    s = sub.choices["load"]
    s.add_argument("--rate", type=float, default=100.0)
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--claimers", type=int, default=4)
    sub.choices["owners"].add_argument("--n", type=int, default=20)
    s = sub.choices["fuzz"]
    s.add_argument("--examples", type=int, default=50)
    s.add_argument("--passes", default="user,worker", help="user, worker or both (comma)")
    s.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds: servers and workers are reaped

    signal.signal(signal.SIGTERM, _terminate)
    res = {"chaos": chaos, "load": load, "owners": owners, "fuzz": fuzz}[args.cmd](args)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
