"""`revhpo serve | worker | submit | status | result | cancel | jobs | keys | demo`.

Client commands talk to the API over HTTP (`--api`, default `$REVHPO_API` or
http://127.0.0.1:8765; `--token`, default `$REVHPO_TOKEN`). `keys create` writes to the
database directly (run it where the API runs). `serve` with the embedded SQLite default also
starts a local worker; `demo` runs the README's main job end to end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here

DEFAULT_API = "http://127.0.0.1:8765"
TERMINAL = ("succeeded", "failed", "cancelled")


# ----------------------------------------------------------------------------- HTTP client
class ClientError(Exception):
    """An error the API answered with (a problem document) or a connection failure."""


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    return httpx.Client(base_url=args.api.rstrip("/"), headers=headers, timeout=30.0)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        try:
            doc = resp.json()
            msg = f"{doc.get('title', 'error')} ({resp.status_code})"
            if doc.get("detail"):
                msg += f": {doc['detail']}"
            if doc.get("field"):
                msg += f" [field: {doc['field']}]"
        except ValueError:
            msg = f"HTTP {resp.status_code}: {resp.text[:300]}"
        raise ClientError(msg)
    return resp


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=os.environ.get("REVHPO_API", DEFAULT_API), help="API URL")
    p.add_argument("--token", default=os.environ.get("REVHPO_TOKEN"), help="API key")


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = float(s)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}min"


def _progress_line(ev: dict[str, Any]) -> str | None:
    kind = ev.get("type")
    if kind == "meta":
        parts = [f"meta-iteration {ev['meta_iteration'] + 1}/{ev['meta_iterations']}"]
        for key in ("val_loss", "train_loss", "test_loss"):
            if isinstance(ev.get(key), int | float):
                parts.append(f"{key.replace('_loss', '')} loss {ev[key]:.4f}")
        parts.append(f"eta {_fmt_s(ev.get('eta_s'))}")
        return "  ".join(parts)
    if kind == "claimed":
        return f"running (attempt {ev.get('attempt')}, worker {ev.get('worker')})"
    if kind == "lease_expired":
        return f"worker lost; job {ev.get('state')} again (attempt {ev.get('attempt')})"
    if kind == "attempt_failed":
        return f"attempt failed, will retry: {ev.get('reason')}"
    if kind == "released":
        return "handed back by its worker; queued again"
    if kind == "evaluation":
        return "evaluating on held-out training seeds"
    if kind == "done":
        return f"job {ev.get('state')}" + (f": {ev['reason']}" if ev.get("reason") else "")
    return None


def stream_events(client: httpx.Client, job_id: str, out=sys.stdout) -> dict[str, Any]:  # noqa: ANN001
    """Print the job's progress from its SSE stream until it ends; returns the final job.

    Reconnects (with `Last-Event-ID`) if the stream breaks.
    """
    last_id: str | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
            ) as resp:
                _check(resp) if resp.status_code >= 400 else None
                event, data = "message", ""
                for line in resp.iter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line == "":
                        if data:
                            payload = json.loads(data)
                            if event == "end":
                                return payload
                            msg = _progress_line(payload)
                            if msg:
                                print(msg, file=out, flush=True)
                        event, data = "message", ""
        except httpx.TransportError as exc:
            print(f"(event stream interrupted: {exc}; reconnecting)", file=sys.stderr)
            time.sleep(1)


def summarize(result: dict[str, Any]) -> list[str]:
    """Human summary lines of a result document."""
    timings = result.get("timings") or {}
    lines = [
        f"status: {result.get('status')}"
        + (f" ({result['stop_reason']})" if result.get("stop_reason") else ""),
        f"tuned hyperparameters: {result.get('n_hyperparameters')}; meta-iterations: "
        f"{result.get('meta_iterations')}; time {_fmt_s(timings.get('total_s'))}",
    ]
    ev = result.get("evaluation") or {}
    n = len(ev.get("seeds") or [])
    for key in ("initial", "final"):
        e = ev.get(key) or {}
        if "val_loss_mean" in e:
            acc = e.get("test_acc_mean")
            acc_s = f", test acc {100 * acc:.1f}%" if isinstance(acc, int | float) else ""
            lines.append(
                f"{key:>7}: val loss {e['val_loss_mean']:.4f}, test loss "
                f"{e.get('test_loss_mean', float('nan')):.4f}{acc_s} "
                f"(mean over {n} held-out training seeds)"
            )
    return lines


# ----------------------------------------------------------------------------- client commands
def cmd_submit(args: argparse.Namespace) -> int:
    """`revhpo submit SPEC [--wait]`."""
    path = Path(args.spec)
    if not path.is_file():
        print(f"revhpo submit: spec file not found: {path}", file=sys.stderr)
        return 2
    text = path.read_text(encoding="utf-8")
    ctype = "application/json" if path.suffix == ".json" else "application/yaml"
    headers = {"Content-Type": ctype}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    with _client(args) as c:
        try:
            job = _check(c.post("/v1/jobs", content=text.encode(), headers=headers)).json()
        except (ClientError, httpx.HTTPError) as exc:
            print(f"revhpo submit: {exc}", file=sys.stderr)
            return 1
        print(job["id"])
        if not args.wait:
            return 0
        final = stream_events(c, job["id"], out=sys.stderr)
        return _print_result(c, final, out_dir=None)


def _print_result(c: httpx.Client, job: dict[str, Any], out_dir: Path | None) -> int:
    if job["state"] != "succeeded":
        print(f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
        return 1
    doc = _check(c.get(f"/v1/jobs/{job['id']}/result")).json()
    for line in summarize(doc["result"]):
        print(line)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for art in doc["artifacts"]:
            resp = _check(c.get(art["url"]))
            (out_dir / art["name"]).write_bytes(resp.content)
        print(f"files: {', '.join(str(out_dir / a['name']) for a in doc['artifacts'])}")
    else:
        print("files: " + ", ".join(a["url"] for a in doc["artifacts"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`revhpo status ID`."""
    with _client(args) as c:
        try:
            job = _check(c.get(f"/v1/jobs/{args.id}")).json()
        except (ClientError, httpx.HTTPError) as exc:
            print(f"revhpo status: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    meta = (job.get("progress") or {}).get("meta")
    print(f"{job['id']}  {job['state']}  attempts {job['attempts']}/{job['max_attempts']}")
    if meta:
        print("  " + (_progress_line(meta) or ""))
    if job.get("error"):
        print(f"  error: {job['error']}")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    """`revhpo result ID [--out DIR]`."""
    with _client(args) as c:
        try:
            job = _check(c.get(f"/v1/jobs/{args.id}")).json()
            if args.json and job["state"] == "succeeded":
                print(json.dumps(_check(c.get(f"/v1/jobs/{args.id}/result")).json(), indent=2))
                return 0
            return _print_result(c, job, Path(args.out) if args.out else None)
        except (ClientError, httpx.HTTPError) as exc:
            print(f"revhpo result: {exc}", file=sys.stderr)
            return 1


def cmd_cancel(args: argparse.Namespace) -> int:
    """`revhpo cancel ID`."""
    with _client(args) as c:
        try:
            job = _check(c.post(f"/v1/jobs/{args.id}/cancel")).json()
        except (ClientError, httpx.HTTPError) as exc:
            print(f"revhpo cancel: {exc}", file=sys.stderr)
            return 1
    note = " (stops at its next meta-iteration)" if job["state"] == "running" else ""
    print(f"{job['id']}  {job['state']}{note}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """`revhpo jobs [--state S] [--limit N] [--all]`."""
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    with _client(args) as c:
        try:
            while True:
                page = _check(c.get("/v1/jobs", params=params)).json()
                for j in page["items"]:
                    meta = (j.get("progress") or {}).get("meta") or {}
                    it = (
                        f"{meta['meta_iteration'] + 1}/{meta['meta_iterations']}"
                        if "meta_iteration" in meta
                        else "-"
                    )
                    print(f"{j['id']}  {j['state']:<9}  {it:>7}  {j['created_at']}  {j['name']}")
                if not (args.all and page.get("next_cursor")):
                    return 0
                params["cursor"] = page["next_cursor"]
        except (ClientError, httpx.HTTPError) as exc:
            print(f"revhpo jobs: {exc}", file=sys.stderr)
            return 1


def cmd_keys_create(args: argparse.Namespace) -> int:
    """`revhpo keys create --owner NAME [--worker]`: prints the new key (shown once)."""
    from service.auth import create_key

    key = create_key(_key_engine(args), args.owner, is_worker=args.worker)
    print(key)
    print(
        f"(owner {args.owner}{', worker' if args.worker else ''}; stored hashed, shown once)",
        file=sys.stderr,
    )
    return 0


def _key_engine(args: argparse.Namespace):  # noqa: ANN202
    from service.db import get_engine, migrate
    from service.settings import Settings

    settings = Settings(**({"database_url": args.database_url} if args.database_url else {}))
    url = settings.resolved_database_url
    migrate(url)
    return get_engine(url)


def cmd_keys_list(args: argparse.Namespace) -> int:
    """`revhpo keys list`: prefix, owner, kind and state of every key (never a secret)."""
    import datetime as dt

    from service.auth import list_keys

    def when(t: float | None) -> str:
        return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")

    rows = list_keys(_key_engine(args))
    print(f"{'prefix':<14} {'owner':<20} {'kind':<7} {'created (UTC)':<17} revoked (UTC)")
    for r in rows:
        kind = "worker" if r["worker"] else "user"
        print(
            f"{r['prefix']:<14} {r['owner']:<20} {kind:<7} {when(r['created_at']):<17} "
            f"{when(r['revoked_at'])}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """`revhpo keys revoke KEY_OR_PREFIX`: the key stops working (within 10 s everywhere)."""
    from service.auth import revoke_key

    if not revoke_key(_key_engine(args), args.key):
        print(f"revhpo keys revoke: no key with prefix {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key}")
    return 0


# ----------------------------------------------------------------------------- serve, worker
def _settings_from(args: argparse.Namespace):  # noqa: ANN202
    from service.settings import Settings

    over: dict[str, Any] = {}
    for name in ("host", "port", "home", "database_url", "artifact_dir"):
        value = getattr(args, name, None)
        if value is not None:
            over[name] = value
    return Settings(**over)


def start_local_workers(
    api: str, n: int, env: dict[str, str], log_dir: Path | None = None
) -> list[subprocess.Popen]:
    """Start `n` worker processes against `api` (own sessions, so a terminal's Ctrl-C reaches
    only the server, which then drains them)."""
    procs = []
    for i in range(n):
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 (lives with the proc)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "service.worker", "--api", api, "--name", f"local-{i}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM (hand back running jobs), then SIGKILL after `timeout`."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """`revhpo serve`: migrate, serve the API; with SQLite also run local worker(s)."""
    import uvicorn

    from service.api.app import create_app
    from service.auth import create_key
    from service.db import get_engine, migrate

    settings = _settings_from(args)
    url = settings.resolved_database_url
    if not args.no_migrate:
        migrate(url)
    n_workers = args.workers if args.workers is not None else (1 if settings.is_sqlite else 0)
    env = dict(os.environ)
    api = (
        f"http://127.0.0.1:{settings.port}"
        if settings.host in ("0.0.0.0", "::")
        else (f"http://{settings.host}:{settings.port}")
    )
    if n_workers and not settings.anonymous_enabled:
        env["REVHPO_TOKEN"] = create_key(get_engine(url), "local-worker", is_worker=True)
    workers: list[subprocess.Popen] = []
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Drain the local workers while the API still answers their hand-backs.
            def drain() -> None:
                stop_workers(workers)
                uvicorn.Server.handle_exit(self, sig, frame)

            if not getattr(self, "_draining", False):
                self._draining = True
                threading.Thread(target=drain, daemon=True).start()
            else:
                uvicorn.Server.handle_exit(self, sig, frame)

    server = _Server(config)
    db_shown = settings.resolved_database_url.split("@")[-1]  # no credentials on the console
    access = "anonymous access on loopback" if settings.anonymous_enabled else "API keys required"
    print(
        f"revhpo API on http://{settings.host}:{settings.port} (database {db_shown}, "
        f"artifacts {settings.resolved_artifact_dir}, {n_workers} local worker(s), {access})",
        file=sys.stderr,
    )
    if n_workers:
        workers.extend(start_local_workers(api, n_workers, env, log_dir=settings.home / "logs"))
    try:
        server.run()
    finally:
        stop_workers(workers, timeout=5)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """`revhpo worker --api URL --token KEY`."""
    from service.worker import run_from_args

    return run_from_args(args)


# ----------------------------------------------------------------------------- demo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_example(name: str) -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        cand = base / "examples" / name
        if cand.is_file():
            return cand
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    """`revhpo demo`: the README's main job, end to end over HTTP.

    Starts `revhpo serve` on SQLite (with one local worker) in `--home`, submits the spec,
    streams progress, prints the tuned result and where the plots are, and stops the service.
    """
    spec = Path(args.spec) if args.spec else _find_example("mlp_digits.yaml")
    if spec is None or not spec.is_file():
        print("revhpo demo: examples/mlp_digits.yaml not found; pass --spec", file=sys.stderr)
        return 2
    home = Path(args.home).resolve()
    if home.exists():
        shutil.rmtree(home)  # a fresh service every run
    home.mkdir(parents=True)
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        REVHPO_HOME=str(home),
        REVHPO_HOST="127.0.0.1",
        REVHPO_PORT=str(port),
        REVHPO_DATABASE_URL=f"sqlite:///{home / 'revhpo.db'}",
    )
    env.pop("REVHPO_ARTIFACT_DIR", None)
    log_path = home / "server.log"
    print(f"starting the service on {api} (SQLite and artifacts in {home})", flush=True)
    with open(log_path, "ab") as logf:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--workers", "1"],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=api, timeout=30.0) as c:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    print(log_path.read_text()[-2000:], file=sys.stderr)
                    print("revhpo demo: the service did not start", file=sys.stderr)
                    return 1
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    print("revhpo demo: the service did not answer in 60 s", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            body = spec.read_bytes()
            job = _check(
                c.post(
                    "/v1/jobs",
                    content=body,
                    headers={"Content-Type": "application/yaml", "Idempotency-Key": "demo"},
                )
            ).json()
            print(f"submitted {spec} as job {job['id']} (POST {api}/v1/jobs)", flush=True)
            print("progress (GET /v1/jobs/{id}/events):", flush=True)
            final = stream_events(c, job["id"])
            rc = _print_result(c, final, out_dir=home / "result")
            return rc
    except KeyboardInterrupt:
        print("\nrevhpo demo: interrupted", file=sys.stderr)
        return 130
    except (ClientError, httpx.HTTPError) as exc:
        print(f"revhpo demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the service", flush=True)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ----------------------------------------------------------------------------- registration
def register(subparsers: Any) -> None:
    """Add serve, worker, submit, status, result, cancel, jobs, keys and demo."""
    from service.worker import add_arguments as worker_arguments

    p = subparsers.add_parser("serve", help="run the API (with SQLite: and a local worker)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765)")
    p.add_argument("--home", type=Path, default=None, help="directory of the embedded default")
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default SQLite in home)")
    p.add_argument("--artifact-dir", type=Path, default=None)
    p.add_argument(
        "--workers", type=int, default=None, help="local workers (default 1 on SQLite, else 0)"
    )
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("worker", help="run jobs from an API (HTTP only)")
    worker_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("submit", help="submit a job spec to the API")
    p.add_argument("spec", help="job spec (.yaml/.yml/.json)")
    p.add_argument("--wait", action="store_true", help="stream progress and print the result")
    p.add_argument("--idempotency-key", default=None, help="replays return the same job")
    _add_client_args(p)
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("status", help="state and progress of a job")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    _add_client_args(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("result", help="result summary of a job (and its plots)")
    p.add_argument("id")
    p.add_argument("--out", default=None, help="download result.json and plots here")
    p.add_argument("--json", action="store_true", help="print the whole result document")
    _add_client_args(p)
    p.set_defaults(func=cmd_result)

    p = subparsers.add_parser("cancel", help="cancel a job")
    p.add_argument("id")
    _add_client_args(p)
    p.set_defaults(func=cmd_cancel)

    p = subparsers.add_parser("jobs", help="list your jobs, newest first")
    p.add_argument("--state", action="append", choices=["queued", "running", *TERMINAL])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--all", action="store_true", help="follow the cursor through every page")
    _add_client_args(p)
    p.set_defaults(func=cmd_jobs)

    p = subparsers.add_parser("keys", help="API keys")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION")
    kc = ks.add_parser("create", help="create an API key (prints it once)")
    kc.add_argument("--owner", required=True, help="who owns the jobs made with this key")
    kc.add_argument("--worker", action="store_true", help="a key for workers")
    kc.add_argument("--database-url", default=None, help="default $REVHPO_DATABASE_URL")
    kc.set_defaults(func=cmd_keys_create)
    kl = ks.add_parser("list", help="list keys (prefix, owner, kind, state; never a secret)")
    kl.add_argument("--database-url", default=None, help="default $REVHPO_DATABASE_URL")
    kl.set_defaults(func=cmd_keys_list)
    kr = ks.add_parser("revoke", help="revoke a key (by the key or its prefix)")
    kr.add_argument("key", help="the key (rhp_...) or its prefix (as `keys list` shows it)")
    kr.add_argument("--database-url", default=None, help="default $REVHPO_DATABASE_URL")
    kr.set_defaults(func=cmd_keys_revoke)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    p = subparsers.add_parser("demo", help="the main job over HTTP on a local service")
    p.add_argument("--spec", default=None, help="default examples/mlp_digits.yaml")
    p.add_argument("--home", default="var/demo", help="service directory (reset each run)")
    p.set_defaults(func=cmd_demo)
