"""`revhpo serve | worker | submit | status | result | cancel | jobs | keys | demo`.

Client commands talk to the API over HTTP through :class:`revhpo.service.client.Client`
(`--api`, default `$REVHPO_API` or http://127.0.0.1:8765; `--token`, default
`$REVHPO_TOKEN`). `keys` writes to the database directly (run it where the API runs).
`serve` with the embedded SQLite default also starts a local worker; `demo` runs the README's
main job end to end.

None of these commands imports TensorFlow (the worker's job processes do, each in its own
process).
"""

from __future__ import annotations

import argparse
import functools
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from revhpo.service.client import Client

DEFAULT_API = "http://127.0.0.1:8765"  # revhpo.service.client.DEFAULT_API (not imported: speed)
TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ----------------------------------------------------------------------------- helpers
def _add_api_and_token(p: argparse.ArgumentParser, token_help: str) -> None:
    p.add_argument(
        "--api",
        default=os.environ.get("REVHPO_API", DEFAULT_API),
        help="URL of the API (environment: REVHPO_API)",
    )
    p.add_argument("--token", default=None, help=token_help)


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    """``--api``, ``--token``, ``--timeout`` and ``--retries`` of the API's client commands."""
    _add_api_and_token(
        p, "API key; default: $REVHPO_TOKEN, else none (anonymous, loopback servers only)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer of the API"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a call that failed on the network or got 503 (exponential backoff)",
    )


WORKER_DESCRIPTION = (
    "Claim jobs from a revhpo API over HTTP and run each in a fresh TensorFlow process "
    "(no database access needed). SIGTERM/SIGINT hands the running job back at its next "
    "meta-iteration; a second signal stops at once."
)
WORKER_EPILOG = (
    "exit status: 0 drained after a signal or --max-jobs; 2 the API refused the key "
    "(401: unknown, revoked or malformed; 403: not a worker key). An API that cannot be "
    "reached is waited for (a warning is logged for each failed claim)."
)


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's command-line flags (shared with `revhpo worker`)."""
    _add_api_and_token(
        p,
        "worker API key (`revhpo keys create --worker`); default: $REVHPO_TOKEN, else "
        "none (anonymous, accepted by a loopback-only server)",
    )
    p.add_argument(
        "--name", default=None, help="worker name shown in job events; default: host-pid"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch space for the jobs' files; default: a temporary directory, removed at exit",
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between claims when idle")
    p.add_argument(
        "--max-jobs", type=int, default=None, help="exit after this many jobs; default: no limit"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=120.0,
        help="after SIGTERM, seconds the job may take to reach a meta-iteration boundary "
        "before it is killed and handed back",
    )


def client_from_args(args: argparse.Namespace) -> Client:
    """The API client that ``add_client_arguments``' options name."""
    from revhpo.service.client import Client

    if not getattr(args, "verbose", False):  # one line for the final error; -v shows retries
        logging.getLogger("revhpo.service.client").setLevel(logging.ERROR)
    token = args.token or os.environ.get("REVHPO_TOKEN") or None
    return Client(args.api, token, timeout=args.timeout, retries=max(args.retries, 0))


def _api_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the client's errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from revhpo.service.client import ClientError

        try:
            return func(args)
        except ClientError as exc:
            print(f"revhpo {args.command}: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return wrapper


def _print_help(parser: argparse.ArgumentParser, _args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def follow(client: Client, job: dict[str, Any], out: Any = None) -> dict[str, Any]:
    """Show a job's progress (from its event stream) until it ends; returns the final job.

    Args:
        client: the API client.
        job: the job (as ``submit`` or ``get`` return it).
        out: where to draw the progress (default: stderr); a live bar on a terminal, plain
            lines elsewhere.
    """
    from revhpo.service.progress import ProgressDisplay

    total = ((job.get("spec") or {}).get("meta") or {}).get("iterations")
    with ProgressDisplay(out if out is not None else sys.stderr, total=total) as show:
        for event in client.events(job["id"]):
            if event.type == "end":
                return event.data
            show({"type": event.type, **event.data})
    return client.get(job["id"])  # pragma: no cover (the stream always ends with `end`)


# ----------------------------------------------------------------------------- client commands
@_api_command
def cmd_submit(args: argparse.Namespace) -> int:
    """`revhpo submit SPEC [--wait]`."""
    path = Path(args.spec)
    if not path.is_file():
        print(f"revhpo submit: spec file not found. Received: {args.spec!r}", file=sys.stderr)
        return EXIT_USAGE
    with client_from_args(args) as c:
        job = c.submit(path, idempotency_key=args.idempotency_key)
        print(job["id"], flush=True)
        if not args.wait:
            return EXIT_OK
        try:
            final = follow(c, job)
        except KeyboardInterrupt:
            print(
                f"\nrevhpo submit: stopped following; job {job['id']} goes on "
                f"(`revhpo status {job['id']}`, `revhpo cancel {job['id']}`)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        return _print_result(c, final, out_dir=None)


def _print_result(c: Client, job: dict[str, Any], out_dir: Path | None) -> int:
    from revhpo.service.progress import summary_lines

    if job["state"] != "succeeded":
        print(f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
        return EXIT_FAILED
    doc = c.result(job["id"])
    for line in summary_lines(doc["result"]):
        print(line)
    if out_dir is not None:
        paths = [
            c.download_artifact(job["id"], a["name"], out_dir / a["name"]) for a in doc["artifacts"]
        ]
        print(f"files: {', '.join(str(p) for p in paths)}")
    else:
        print("files: " + ", ".join(c.url(a["url"]) for a in doc["artifacts"]))
    return EXIT_OK


@_api_command
def cmd_status(args: argparse.Namespace) -> int:
    """`revhpo status ID`."""
    from revhpo.service.progress import format_event

    with client_from_args(args) as c:
        job = c.get(args.id)
    if args.json:
        print(json.dumps(job, indent=2))
        return EXIT_OK
    meta = (job.get("progress") or {}).get("meta")
    print(f"{job['id']}  {job['state']}  attempts {job['attempts']}/{job['max_attempts']}")
    if meta:
        print("  " + (format_event({"type": "meta", **meta}) or ""))
    if job.get("error"):
        print(f"  error: {job['error']}")
    return EXIT_OK


@_api_command
def cmd_result(args: argparse.Namespace) -> int:
    """`revhpo result ID [--out DIR] [--json]`."""
    with client_from_args(args) as c:
        job = c.get(args.id)
        if args.json and job["state"] == "succeeded":
            print(json.dumps(c.result(args.id), indent=2))
            return EXIT_OK
        return _print_result(c, job, Path(args.out) if args.out else None)


@_api_command
def cmd_cancel(args: argparse.Namespace) -> int:
    """`revhpo cancel ID`."""
    with client_from_args(args) as c:
        job = c.cancel(args.id)
    note = " (stops at its next meta-iteration)" if job["state"] == "running" else ""
    print(f"{job['id']}  {job['state']}{note}")
    return EXIT_OK


@_api_command
def cmd_jobs(args: argparse.Namespace) -> int:
    """`revhpo jobs [--state S] [--limit N] [--all]`."""
    with client_from_args(args) as c:
        cursor = None
        while True:
            page = c.list(args.state, limit=args.limit, cursor=cursor)
            for j in page["items"]:
                meta = (j.get("progress") or {}).get("meta") or {}
                it = (
                    f"{meta['meta_iteration'] + 1}/{meta['meta_iterations']}"
                    if "meta_iteration" in meta
                    else "-"
                )
                print(f"{j['id']}  {j['state']:<9}  {it:>7}  {j['created_at']}  {j['name']}")
            cursor = page.get("next_cursor")
            if not (args.all and cursor):
                return EXIT_OK


class _NoDatabase(Exception):
    """`revhpo keys` was pointed at a database the API never created."""


def _keys_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line on stderr (and exit status 2) when the key database is missing or unreachable."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from revhpo.service.db import StorageError

        try:
            return func(args)
        except _NoDatabase as exc:
            print(f"revhpo keys {args.keys_command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except StorageError as exc:
            print(f"revhpo keys {args.keys_command}: database error: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return wrapper


@_keys_command
def cmd_keys_create(args: argparse.Namespace) -> int:
    """`revhpo keys create --owner NAME [--worker]`: prints the new key (shown once)."""
    from revhpo.service.auth import create_key

    key = create_key(_key_engine(args), args.owner, is_worker=args.worker)
    print(key)
    print(
        f"(owner {args.owner}{', worker' if args.worker else ''}; stored hashed, shown once)",
        file=sys.stderr,
    )
    return EXIT_OK


def _key_engine(args: argparse.Namespace):  # noqa: ANN202
    """The engine of the API's database; never creates a database (a key written into a new
    one, e.g. an SQLite file under the wrong directory, would be refused by the API with 401).

    Raises:
        _NoDatabase: there is no revhpo database at the resolved URL.
    """
    from revhpo.service.db import get_engine, has_schema, migrate, sqlite_path
    from revhpo.service.settings import Settings

    settings = Settings(**({"database_url": args.database_url} if args.database_url else {}))
    url = settings.resolved_database_url
    if not has_schema(url):
        path = sqlite_path(url)
        where = f"SQLite file {path}" if path else url.split("@")[-1]
        raise _NoDatabase(
            f"no revhpo database at {where} (nothing was created). Run this where the API "
            "runs, or name its database with --database-url or $REVHPO_DATABASE_URL "
            "(SQLite: $REVHPO_HOME/revhpo.db); `revhpo serve` creates the database."
        )
    migrate(url)  # an older schema of the same database is brought up to date
    return get_engine(url)


@_keys_command
def cmd_keys_list(args: argparse.Namespace) -> int:
    """`revhpo keys list`: prefix, owner, kind and state of every key (never a secret)."""
    import datetime as dt

    from revhpo.service.auth import list_keys

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
    return EXIT_OK


@_keys_command
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """`revhpo keys revoke KEY_OR_PREFIX`: the key stops working (within 10 s everywhere)."""
    from revhpo.service.auth import revoke_key

    if not revoke_key(_key_engine(args), args.key):
        print(f"revhpo keys revoke: no key with prefix {args.key!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"revoked {args.key}")
    return EXIT_OK


# ----------------------------------------------------------------------------- serve, worker
def _settings_from(args: argparse.Namespace):  # noqa: ANN202
    from revhpo.service.settings import Settings

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
                [
                    sys.executable,
                    "-m",
                    "revhpo.service.worker",
                    "--api",
                    api,
                    "--name",
                    f"local-{i}",
                ],
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


LOCAL_WORKER_OWNER = "local-worker"
LOCAL_WORKER_KEY_FILE = "local-worker.key"


def local_worker_key(engine: Any, home: Path) -> str:
    """The worker key of `revhpo serve`'s local workers, reused across restarts.

    Kept in `HOME/local-worker.key` (mode 0600). A new key is made only when that file is
    missing or its key no longer authenticates as a worker key (revoked, or another database),
    so restarts do not pile up unrevoked keys. Revoke it with `revhpo keys revoke`; the next
    start makes a new one.
    """
    from revhpo.service.auth import authenticate, create_key

    path = Path(home) / LOCAL_WORKER_KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        principal = authenticate(engine, key)
        if principal is not None and principal.is_worker:
            return key
    key = create_key(engine, LOCAL_WORKER_OWNER, is_worker=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    """`revhpo serve`: migrate, serve the API; with SQLite also run local worker(s)."""
    import uvicorn
    from revhpo.service.api.app import create_app
    from revhpo.service.db import get_engine, migrate

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
    if n_workers:  # anonymous callers never have worker rights: the local workers get a key
        env["REVHPO_TOKEN"] = local_worker_key(get_engine(url), settings.home)
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
    print(f"dashboard: {api}/  (API docs: {api}/docs)", file=sys.stderr)
    if n_workers:
        workers.extend(start_local_workers(api, n_workers, env, log_dir=settings.home / "logs"))
    try:
        server.run()
    finally:
        stop_workers(workers, timeout=5)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """`revhpo worker --api URL --token KEY`."""
    from revhpo.service.worker import run_from_args

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
    from revhpo.service.client import ApiConnectionError, Client, ClientError

    spec = Path(args.spec) if args.spec else _find_example("mlp_digits.yaml")
    if spec is None or not spec.is_file():
        print("revhpo demo: examples/mlp_digits.yaml not found; pass --spec", file=sys.stderr)
        return EXIT_USAGE
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
            [sys.executable, "-m", "revhpo", "serve", "--workers", "1"],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with Client(api, retries=0) as probe:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    print(log_path.read_text()[-2000:], file=sys.stderr)
                    print("revhpo demo: the service did not start", file=sys.stderr)
                    return EXIT_FAILED
                try:
                    probe.health()
                    break
                except ClientError as exc:
                    if time.monotonic() > deadline:
                        print(f"revhpo demo: no answer in 60 s: {exc}", file=sys.stderr)
                        return EXIT_FAILED
                    if not isinstance(exc, ApiConnectionError):
                        time.sleep(0.2)
                time.sleep(0.2)
        with Client(api) as c:
            job = c.submit(spec, idempotency_key="demo")
            print(f"submitted {spec} as job {job['id']} (POST {api}/v1/jobs)", flush=True)
            print("progress (GET /v1/jobs/{id}/events):", flush=True)
            final = follow(c, job, out=sys.stdout)
            return _print_result(c, final, out_dir=home / "result")
    except KeyboardInterrupt:
        print("\nrevhpo demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ClientError as exc:
        print(f"revhpo demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
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
    p = subparsers.add_parser(
        "serve",
        help="run the API (with SQLite: and a local worker)",
        description="Upgrade the database schema, then serve the HTTP API. On the embedded "
        "SQLite default it also starts one local worker. Settings not given here come from "
        "REVHPO_* environment variables (REVHPO_HOST, REVHPO_PORT, REVHPO_HOME, "
        "REVHPO_DATABASE_URL, REVHPO_ARTIFACT_DIR, ...).",
    )
    p.add_argument("--host", default=None, help="bind address; default: $REVHPO_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="port; default: $REVHPO_PORT or 8765")
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        help="directory of the embedded SQLite database and artifacts; default: $REVHPO_HOME "
        "or ./var",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL; default: $REVHPO_DATABASE_URL or SQLite in the home directory",
    )
    p.add_argument(
        "--artifact-dir",
        type=Path,
        default=None,
        help="where datasets, results and plots are stored; default: $REVHPO_ARTIFACT_DIR or "
        "HOME/artifacts",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes to start; default: 1 on SQLite, else 0",
    )
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "worker",
        help="run jobs from an API (HTTP only)",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
    )
    add_worker_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser(
        "submit",
        help="submit a job spec to the API",
        description="Submit a job spec; prints the job's id. With --wait, shows its progress "
        "(a live bar on a terminal, log lines otherwise) and prints the result.",
    )
    p.add_argument("spec", help="job spec file (.yaml/.yml/.json)")
    p.add_argument("--wait", action="store_true", help="show progress and print the result")
    p.add_argument(
        "--idempotency-key",
        default=None,
        help="a replay with the same key returns the same job; default: a fresh key",
    )
    add_client_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser(
        "status", help="state and progress of a job", description="State and progress of a job."
    )
    p.add_argument("id", help="the job's id (as `submit` printed it)")
    p.add_argument("--json", action="store_true", help="print the whole job document")
    add_client_arguments(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "result",
        help="result summary of a job (and its plots)",
        description="Summary of a succeeded job's result; with --out, download result.json "
        "and the plots. Exit status 1 when the job did not succeed.",
    )
    p.add_argument("id", help="the job's id")
    p.add_argument(
        "--out", default=None, help="download result.json and the plots into this directory"
    )
    p.add_argument("--json", action="store_true", help="print the whole result document")
    add_client_arguments(p)
    p.set_defaults(func=cmd_result)

    p = subparsers.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: a queued one at once, a running one at its next meta-iteration.",
    )
    p.add_argument("id", help="the job's id")
    add_client_arguments(p)
    p.set_defaults(func=cmd_cancel)

    p = subparsers.add_parser(
        "jobs", help="list your jobs, newest first", description="List your jobs, newest first."
    )
    p.add_argument(
        "--state",
        action="append",
        choices=["queued", "running", *TERMINAL],
        help="only jobs in this state (repeatable); default: every state",
    )
    p.add_argument("--limit", type=int, default=20, help="jobs per page")
    p.add_argument("--all", action="store_true", help="follow the cursor through every page")
    add_client_arguments(p)
    p.set_defaults(func=cmd_jobs)

    keys = subparsers.add_parser(
        "keys",
        help="API keys: create, list, revoke",
        description="Manage API keys in the database directly (run where the API runs).",
    )
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    db_help = (
        "SQLAlchemy URL of the API's database; default: $REVHPO_DATABASE_URL or ./var's SQLite"
    )
    kc = ks.add_parser(
        "create",
        help="create an API key (prints it once)",
        description="Create an API key and print it (it is stored hashed: shown only once).",
    )
    kc.add_argument("--owner", required=True, help="who owns the jobs made with this key")
    kc.add_argument("--worker", action="store_true", help="a key for workers")
    kc.add_argument("--database-url", default=None, help=db_help)
    kc.set_defaults(func=cmd_keys_create)
    kl = ks.add_parser(
        "list",
        help="list keys (prefix, owner, kind, state; never a secret)",
        description="List the keys: prefix, owner, kind, creation and revocation times.",
    )
    kl.add_argument("--database-url", default=None, help=db_help)
    kl.set_defaults(func=cmd_keys_list)
    kr = ks.add_parser(
        "revoke",
        help="revoke a key (by the key or its prefix)",
        description="Revoke a key: it stops working within 10 s everywhere.",
    )
    kr.add_argument("key", help="the key (rhp_...) or its prefix (as `keys list` shows it)")
    kr.add_argument("--database-url", default=None, help=db_help)
    kr.set_defaults(func=cmd_keys_revoke)
    keys.set_defaults(func=functools.partial(_print_help, keys))

    p = subparsers.add_parser(
        "demo",
        help="the main job over HTTP on a local service",
        description="Start a local service (SQLite, one worker), submit a spec, show its "
        "progress and result, download the plots, stop the service.",
    )
    p.add_argument("--spec", default=None, help="job spec; default: examples/mlp_digits.yaml")
    p.add_argument("--home", default="var/demo", help="service directory (reset each run)")
    p.set_defaults(func=cmd_demo)
