"""Hostile requests against a real API server (uvicorn subprocess), on this machine.

Subcommands (each prints its figures as Markdown and JSON; loopback traffic only, bounded):

  bombs    YAML alias bombs, deeply nested JSON and YAML, NUL characters and non-finite
           numbers, each sent --repeat times: the status, the answer time (p50, max) and the
           API process's memory (VmRSS and its peak VmHWM from /proc/<pid>/status) before and
           after; then worker heartbeats while 1 MiB YAML bodies are being parsed.
  streams  --streams event streams (SSE) held open on one job while `GET /v1/jobs/{id}` is
           timed (p50, p99) and worker heartbeats are sent; the API process's thread count.

Backends: --backend sqlite (a fresh file) or postgres (a fresh schema at $REVHPO_TEST_PG_URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/test, dropped afterwards).

  .venv/bin/python benchmarks/bench_hostile.py bombs --backend postgres
  .venv/bin/python benchmarks/bench_hostile.py streams --backend postgres --streams 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from bench_service import SHORT_JOB, api_process, database, pct  # noqa: E402

_LOL = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)),
    ]
)
# The shape: nine levels of nine aliases (9^9 strings) under a free-form key of `net`.
YAML_BOMB = "name: bomb\nnet:\n  family: mlp\n  extra:\n" + "".join(
    f"    {line}\n" for line in _LOL.splitlines()
)
MIB = 1 << 20


def _spec_text(replace: tuple[str, str]) -> bytes:
    return json.dumps(SHORT_JOB).replace(*replace).encode()


def _long_strings() -> bytes:
    return ("x: [" + ",".join(["a" * 100] * 9_900) + "]\n").encode()


BOMBS: list[tuple[str, str, bytes]] = [
    ("yaml alias bomb (9^9)", "application/yaml", YAML_BOMB.encode()),
    ("yaml 101 aliases", "application/yaml", b"a: &a 1\nb: [" + b"*a, " * 101 + b"1]\n"),
    ("yaml self-alias", "application/yaml", b"name: &x [*x]\n"),
    ("json nested 500k deep (1 MiB)", "application/json", b"[" * 500_000 + b"]" * 500_000),
    ("yaml nested 500k deep (1 MiB)", "application/yaml", b"[" * 500_000 + b"]" * 500_000),
    ("yaml block nested 300k deep", "application/yaml", b"- " * 300_000 + b"1\n"),
    ("yaml 500k values (1 MiB)", "application/yaml", b"[" + b"1," * 500_000 + b"1]"),
    ("json 500k values (1 MiB)", "application/json", b"[" + b"1," * 500_000 + b"1]"),
    # not a bomb: the slowest body under the bounds to parse (refused by validation)
    ("yaml 9,900 strings of 100 chars (1 MiB)", "application/yaml", _long_strings()),
    ("json NUL in name", "application/json", _spec_text(('"chaos"', '"a\\u0000b"'))),
    ("json 1e999 learning rate", "application/json", _spec_text(("0.1", "1e999"))),
    ("json NaN momentum", "application/json", _spec_text(("0.9", "NaN"))),
]


@contextmanager
def api_server(url: str, home: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real API server (`python -m revhpo.service.api`); yields (base URL, process)."""
    with api_process(url, home, **extra) as (base, _, proc):
        yield base, proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads of a process, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _worker_key(url: str) -> str:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    return create_key(get_engine(url), "bench-pool", is_worker=True)


def _claimed_job(base: str, url: str) -> tuple[httpx.Client, httpx.Client, str, str]:
    """(user client, worker client, job id, lease token) of a claimed job."""
    user = httpx.Client(base_url=base, timeout=120)  # anonymous on loopback
    worker = httpx.Client(
        base_url=base, timeout=120, headers={"Authorization": f"Bearer {_worker_key(url)}"}
    )
    jid = user.post("/v1/jobs", json=SHORT_JOB).json()["id"]
    claim = worker.post("/v1/worker/claim", json={"worker": "bench"})
    claim.raise_for_status()
    return user, worker, jid, claim.json()["token"]


# ----------------------------------------------------------------------------- bombs
def bombs(args: argparse.Namespace) -> dict:
    """Each hostile body --repeat times: status, answer time, memory of the API process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        with api_server(url, Path(tmp) / "home", REVHPO_LEASE_SECONDS="600") as (base, proc):
            user, worker, jid, token = _claimed_job(base, url)
            for _ in range(20):  # warm up: imports, the first validation, the pool
                user.get(f"/v1/jobs/{jid}")
                user.post("/v1/jobs", content=b"name: [", headers={"content-type": "text/yaml"})
            before = proc_status(proc.pid)
            for label, ctype, body in BOMBS:
                times, statuses, ctypes = [], set(), set()
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    r = user.post("/v1/jobs", content=body, headers={"content-type": ctype})
                    times.append(time.perf_counter() - t0)
                    statuses.add(r.status_code)
                    ctypes.add(r.headers.get("content-type"))
                st = proc_status(proc.pid)
                rows.append(
                    {
                        "body": label,
                        "bytes": len(body),
                        "status": sorted(statuses),
                        "content_type": sorted(c or "" for c in ctypes),
                        "p50_ms": 1000 * statistics.median(times),
                        "max_ms": 1000 * max(times),
                        "rss_mb": st["VmRSS"] / 1024,
                    }
                )
            after = proc_status(proc.pid)
            listing_ms = []
            for _ in range(20):
                t0 = time.perf_counter()
                user.get("/v1/jobs").raise_for_status()
                listing_ms.append(1000 * (time.perf_counter() - t0))
            beats = _heartbeats_during_big_yaml(base, worker, jid, token, args.parallel)
    return {
        "backend": args.backend,
        "repeat": args.repeat,
        "rows": rows,
        "rss_before_mb": before["VmRSS"] / 1024,
        "rss_after_mb": after["VmRSS"] / 1024,
        "rss_growth_mb": (after["VmRSS"] - before["VmRSS"]) / 1024,
        "peak_growth_mb": (after["VmHWM"] - before["VmHWM"]) / 1024,
        "listing_after_p50_ms": statistics.median(listing_ms),
        "heartbeats_during_parse": beats,
    }


def _heartbeats_during_big_yaml(
    base: str, worker: httpx.Client, jid: str, token: str, parallel: int
) -> dict:
    """Heartbeat latencies while `parallel` 1 MiB YAML bodies are parsed (and refused)."""
    body = ("x: [" + ",".join(["aaaaaaaaa"] * 99_000) + "]\n").encode()
    assert len(body) < MIB
    done = threading.Event()
    answers: list[tuple[int, float]] = []

    def submit() -> None:
        with httpx.Client(base_url=base, timeout=300) as c:
            t0 = time.perf_counter()
            r = c.post("/v1/jobs", content=body, headers={"content-type": "application/yaml"})
            answers.append((r.status_code, time.perf_counter() - t0))

    senders = [threading.Thread(target=submit) for _ in range(parallel)]
    for t in senders:
        t.start()
    beats: list[float] = []
    waiter = threading.Thread(target=lambda: ([t.join() for t in senders], done.set()))
    waiter.start()
    while not done.is_set():
        t0 = time.perf_counter()
        worker.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": token}).raise_for_status()
        beats.append(1000 * (time.perf_counter() - t0))
    waiter.join()
    return {
        "bodies": parallel,
        "body_bytes": len(body),
        "answers": sorted({s for s, _ in answers}),
        "submit_max_s": max(s for _, s in answers),
        "heartbeats": len(beats),
        "heartbeat_p50_ms": statistics.median(beats),
        "heartbeat_max_ms": max(beats),
    }


# ----------------------------------------------------------------------------- streams
async def _hold_streams(base: str, jid: str, n: int, opened: list, stop: asyncio.Event) -> None:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as ac:

        async def one() -> None:
            async with ac.stream("GET", f"/v1/jobs/{jid}/events") as resp:
                resp.raise_for_status()
                first = True
                async for _ in resp.aiter_raw():  # read like a client does, until stopped
                    if first:
                        opened.append(1)
                        first = False

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def streams(args: argparse.Namespace) -> dict:
    """GET latency and heartbeats while --streams event streams are open."""
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        with api_server(url, Path(tmp) / "home", REVHPO_LEASE_SECONDS="600") as (base, proc):
            user, worker, jid, token = _claimed_job(base, url)
            for _ in range(50):
                user.get(f"/v1/jobs/{jid}")

            def timed(n: int) -> tuple[list[float], list[float]]:
                gets, beats = [], []
                for i in range(n):
                    t0 = time.perf_counter()
                    user.get(f"/v1/jobs/{jid}").raise_for_status()
                    gets.append(1000 * (time.perf_counter() - t0))
                    if i % 20 == 0:
                        t0 = time.perf_counter()
                        hb = worker.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": token})
                        hb.raise_for_status()
                        beats.append(1000 * (time.perf_counter() - t0))
                    time.sleep(0.01)
                return gets, beats

            idle_gets, idle_beats = timed(args.requests)
            threads_idle = proc_status(proc.pid)["Threads"]
            opened: list[int] = []
            loop = asyncio.new_event_loop()
            stop = asyncio.Event()
            holder = threading.Thread(
                target=lambda: loop.run_until_complete(
                    _hold_streams(base, jid, args.streams, opened, stop)
                ),
                daemon=True,
            )
            t_open = time.perf_counter()
            holder.start()
            while len(opened) < args.streams:
                if time.perf_counter() - t_open > 300:
                    raise RuntimeError(f"only {len(opened)} streams opened")
                time.sleep(0.05)
            open_s = time.perf_counter() - t_open
            time.sleep(args.settle)
            threads_open = proc_status(proc.pid)["Threads"]
            gets, beats = timed(args.requests)
            loop.call_soon_threadsafe(stop.set)
            holder.join(60)
    return {
        "backend": args.backend,
        "streams": args.streams,
        "streams_open_s": open_s,
        "requests": args.requests,
        "idle_get_p50_ms": pct(idle_gets, 50),
        "idle_get_p99_ms": pct(idle_gets, 99),
        "get_p50_ms": pct(gets, 50),
        "get_p99_ms": pct(gets, 99),
        "get_max_ms": max(gets),
        "heartbeats": len(beats),
        "heartbeat_max_ms": max(beats),
        "idle_heartbeat_max_ms": max(idle_beats),
        "threads_without_streams": threads_idle,
        "threads_with_streams": threads_open,
    }


def _markdown(name: str, res: dict) -> str:
    if name == "bombs":
        lines = [
            f"backend {res['backend']}, each body sent {res['repeat']} times",
            "",
            "| body | bytes | status | p50 ms | max ms | API RSS MB |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['body']} | {r['bytes']} | {'/'.join(map(str, r['status']))} "
                f"| {r['p50_ms']:.1f} | {r['max_ms']:.1f} | {r['rss_mb']:.1f} |"
            )
        hb = res["heartbeats_during_parse"]
        lines += [
            "",
            f"API RSS {res['rss_before_mb']:.1f} -> {res['rss_after_mb']:.1f} MB "
            f"(growth {res['rss_growth_mb']:.1f} MB, peak growth {res['peak_growth_mb']:.1f} MB); "
            f"job listing afterwards p50 {res['listing_after_p50_ms']:.1f} ms",
            f"{hb['heartbeats']} heartbeats while {hb['bodies']} x {hb['body_bytes']} B YAML "
            f"bodies were parsed (answered {hb['answers']} in at most {hb['submit_max_s']:.2f} s):"
            f" p50 {hb['heartbeat_p50_ms']:.1f} ms, max {hb['heartbeat_max_ms']:.1f} ms",
        ]
        return "\n".join(lines)
    return "\n".join(
        [
            f"backend {res['backend']}: {res['streams']} event streams open "
            f"(opened in {res['streams_open_s']:.1f} s)",
            "",
            "| | GET /v1/jobs/{id} p50 ms | p99 ms | heartbeat max ms | API threads |",
            "|---|---:|---:|---:|---:|",
            f"| no stream | {res['idle_get_p50_ms']:.1f} | {res['idle_get_p99_ms']:.1f} "
            f"| {res['idle_heartbeat_max_ms']:.1f} | {res['threads_without_streams']} |",
            f"| {res['streams']} streams | {res['get_p50_ms']:.1f} | {res['get_p99_ms']:.1f} "
            f"| {res['heartbeat_max_ms']:.1f} | {res['threads_with_streams']} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bombs")
    b.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    b.add_argument("--repeat", type=int, default=10)
    b.add_argument("--parallel", type=int, default=4, help="1 MiB YAML bodies at once")
    s = sub.add_parser("streams")
    s.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    s.add_argument("--streams", type=int, default=100)
    s.add_argument("--requests", type=int, default=300)
    s.add_argument("--settle", type=float, default=12.0, help="seconds between open and timing")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    res = bombs(args) if args.cmd == "bombs" else streams(args)
    print(_markdown(args.cmd, res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
