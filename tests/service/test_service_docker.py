"""The Docker files, tested without a Docker engine: what the images install and run.

Not run here (no engine): building the images and starting compose. What is checked: the
compose file's structure (PostgreSQL, API, one worker per GPU with its own device), that it
interpolates with no variable set (so the README's steps run in order, before a worker key
exists), that Docker's SIGKILL comes well after the worker's own grace, that every command the
images and compose run is a valid `revhpo` command line, that `.dockerignore` keeps the build
context to what the images COPY, that the API image's package list equals the lock's pins and
covers what the API imports, the API image's environment built from its requirements file in a
fresh virtual environment (no TensorFlow there) and its start command run for real against
PostgreSQL (migrate, then serve), and that the README's Docker steps name the compose file's
services and valid `revhpo` command lines.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from svc_helpers import REPO, base_env, free_port

DOCKER = REPO / "docker"
API_ROOTS = [
    "fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg-binary", "pydantic",
    "pydantic-settings", "pyyaml", "httpx", "numpy", "python-multipart",
    "httpx-sse", "tenacity",  # the client commands (revhpo.service.client)
    "prometheus-client",  # GET /metrics (revhpo.service.metrics)
]  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[_norm(name)] = version
    return out


def _cmd(dockerfile: str) -> list[str]:
    lines = (DOCKER / dockerfile).read_text().splitlines()
    cmd = [ln for ln in lines if ln.startswith("CMD ")][-1]
    return yaml.safe_load(cmd[4:])  # a JSON array


def _parse(argv: list[str]):
    from revhpo.service.cli import build_parser

    assert argv[0] == "revhpo"
    return build_parser().parse_args(argv[1:])


def test_api_requirements_match_the_lock_and_cover_the_imports():
    api, lock = _pins(DOCKER / "requirements-api.txt"), _pins(REPO / "requirements.lock")
    for name, version in api.items():
        assert lock.get(name) == version, name
    closure, stack = set(), list(API_ROOTS)
    while stack:
        dist = md.distribution(stack.pop())
        if _norm(dist.metadata["Name"]) in closure:
            continue
        closure.add(_norm(dist.metadata["Name"]))
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    assert closure <= set(api), sorted(closure - set(api))
    assert "tensorflow" not in api


def test_api_process_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from revhpo.service.api.app import create_app; "
        "from revhpo.service.settings import Settings; "
        f"create_app(Settings(home=r'{tmp_path}')).openapi(); "
        "print(sorted(m for m in ('tensorflow', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=base_env(), cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: `${V}`, `${V:-d}`, `${V-d}`, `${V:?e}`, `${V?e}`,
    `$V`, `$$`. Raises KeyError where Compose stops with "required variable is missing"."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and not value)
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"{name}: {arg}")
            return value
        return value or ""  # unset: empty string (Compose warns)

    return _VAR.sub(sub, text)


def _compose(env: dict[str, str] | None = None) -> dict:
    """compose.yml as Compose reads it: parsed (anchors merged), then every string value
    interpolated with `env` (an empty environment by default)."""

    def walk(node):  # noqa: ANN001, ANN202
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env or {}) if isinstance(node, str) else node

    return walk(yaml.safe_load((DOCKER / "compose.yml").read_text()))


def _duration_s(text: str | int) -> float:
    """A Compose duration (`150s`, `2m30s`, `1h`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(a + b for a, b in parts) == str(text), text
    return sum(float(a) * units[b] for a, b in parts)


def _workers(services: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in services.items()
        if svc.get("build", {}).get("dockerfile") == "docker/Dockerfile.worker"
    }


def test_compose_interpolates_with_no_variable_set():
    """Every compose command parses before a worker key exists (the README's first steps)."""
    doc = _compose({})  # raises KeyError on a `${VAR:?...}` without a value
    for worker in _workers(doc["services"]).values():
        assert worker["environment"]["REVHPO_TOKEN"] == ""  # a key is set by the operator
        assert "workers" in worker.get("profiles", [])  # a bare `up -d` starts no keyless worker
    doc = _compose({"REVHPO_WORKER_TOKEN": "rhp_x", "POSTGRES_PASSWORD": "pw"})
    assert {w["environment"]["REVHPO_TOKEN"] for w in _workers(doc["services"]).values()} == {
        "rhp_x"
    }
    assert ":pw@db:" in doc["services"]["api"]["environment"]["REVHPO_DATABASE_URL"]
    with pytest.raises(KeyError):  # the check itself can fail
        interpolate("a: ${NOPE:?set it}", {})


def test_compose_structure_and_commands():
    services = _compose()["services"]
    workers = _workers(services)
    assert set(services) == {"db", "api", *workers} and len(workers) >= 2
    assert services["db"]["image"].startswith("postgres:")
    api = services["api"]
    assert api["environment"]["REVHPO_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api["build"]["dockerfile"] == "docker/Dockerfile.api"
    serve = _parse(api["command"])
    assert serve.func.__name__ == "cmd_serve" and serve.workers == 0 and not serve.no_migrate
    for worker in workers.values():
        assert "REVHPO_DATABASE_URL" not in worker.get("environment", {})  # HTTP only
        assert "REVHPO_TOKEN" in worker["environment"]
        assert worker["depends_on"]["api"]["condition"] == "service_healthy"
        w = _parse(worker["command"])
        assert w.func.__name__ == "cmd_worker" and w.api == "http://api:8765"


def test_compose_gives_each_worker_its_own_gpu():
    """`count: 1` on replicas gives every replica GPU 0: each worker names its device."""
    seen: dict[str, str] = {}
    for name, worker in _workers(_compose()["services"]).items():
        assert worker.get("deploy", {}).get("replicas", 1) == 1, name
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        dev = devices[0]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"], name
        assert "count" not in dev and len(dev["device_ids"]) == 1, name
        gpu = str(dev["device_ids"][0])
        assert gpu not in seen, f"{name} and {seen.get(gpu)} share GPU {gpu}"
        seen[gpu] = name


def test_docker_kills_only_after_the_workers_grace():
    """SIGTERM → the worker waits `--grace` for a boundary, kills the job, hands it back (HTTP
    with retries); Docker's SIGKILL (`stop_grace_period`) must come clearly after all that."""
    margin = 30.0
    for name, worker in _workers(_compose()["services"]).items():
        grace = _parse(worker["command"]).grace
        stop = _duration_s(worker["stop_grace_period"])
        assert stop >= grace + margin, f"{name}: stop_grace_period {stop}s, --grace {grace}s"
    assert _parse(_cmd("Dockerfile.worker")).grace + margin <= 150  # docker run --stop-timeout


def _dockerignored(rel: str, rules: list[str]) -> bool:
    """Whether `.dockerignore` excludes `rel` (last matching rule wins; `!` re-includes)."""
    ignored = False
    for rule in rules:
        neg = rule.startswith("!")
        pat = rule[1:] if neg else rule
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    rules = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    sources = set()
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        for line in (DOCKER / name).read_text().splitlines():
            if line.startswith("COPY "):
                sources.update(shlex.split(line)[1:-1])
    for src in sources:
        assert not _dockerignored(src, rules), f"COPY {src} is excluded by .dockerignore"
    for junk in (".venv", ".git", "var", "benchmarks", "tests", "service/__pycache__"):
        assert _dockerignored(junk, rules), junk
    size = 0
    for top in REPO.iterdir():
        if _dockerignored(top.name, rules):
            continue
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        size += sum(
            p.stat().st_size for p in files if not _dockerignored(str(p.relative_to(REPO)), rules)
        )
    assert size < 50 << 20, f"build context {size} bytes"


def test_dockerfiles_copy_existing_paths_and_run_valid_commands():
    for name, func in (("Dockerfile.api", "cmd_serve"), ("Dockerfile.worker", "cmd_worker")):
        text = (DOCKER / name).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in shlex.split(line)[1:-1]:
                    assert (REPO / src).exists(), f"{name}: COPY {src}"
        assert _parse(_cmd(name)).func.__name__ == func
    assert "tensorflow/tensorflow:2.21.0-gpu" in (DOCKER / "Dockerfile.worker").read_text()


def _readme_docker_steps() -> list[str]:
    """The shell lines of the README's "Run on a GPU cluster (Docker)" code block."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("Run on a GPU cluster (Docker)") :]
    block = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    lines, cur = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if cur.strip():
                lines.append(cur.strip())
            cur = ""
    return lines


def test_readme_docker_steps_match_compose_and_the_cli():
    """The README's steps name the compose file's services and valid revhpo command lines."""
    doc = _compose()["services"]
    services = set(doc)
    profiles = {p for svc in doc.values() for p in svc.get("profiles", [])}
    steps = _readme_docker_steps()
    assert any(" build" in s for s in steps) and any(" up -d" in s for s in steps)
    for step in steps:
        words = shlex.split(re.sub(r"\$\((.*)\)", r"\1", step.split("=", 1)[-1]))
        if "docker" in words:
            i = words.index("docker")
            assert words[i + 1 : i + 4] == ["compose", "-f", "docker/compose.yml"], step
            assert (REPO / words[i + 3]).exists()
            rest = words[i + 4 :]
            while rest[0] == "--profile":  # compose's global options
                assert rest[1] in profiles, step
                rest = rest[2:]
            verb, rest = rest[0], rest[1:]
            if verb == "up":
                named = [w for w in rest if not w.startswith("-") and "=" not in w]
                assert named and set(named) <= services, step
            if verb == "exec":
                flags = []
                while rest[0].startswith("-"):  # exec's own flags, before the service
                    flags.append(rest.pop(0))
                if "$(" in step:  # captured output: no terminal, or the key ends in CR
                    assert "-T" in flags, step
                assert rest[0] in services, step
                argv = [w for w in rest[1:] if w != "2>/dev/null"]
                assert _parse(argv).func.__name__.startswith("cmd_"), step
        elif words and words[0] == "revhpo":
            assert _parse(words).func.__name__ == "cmd_submit", step


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_api_image_command_migrates_and_serves_on_postgres(db_url, tmp_path):
    """The API container's CMD, run here (on loopback) against a fresh PostgreSQL schema."""
    from revhpo.service.db import get_engine

    with get_engine(db_url).begin() as conn:  # start from an empty schema
        conn.exec_driver_sql("DROP TABLE job_events, jobs, datasets, api_keys, alembic_version")
    port = free_port()
    argv = _cmd("Dockerfile.api")
    argv = [a if a != "0.0.0.0" else "127.0.0.1" for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    env = base_env(REVHPO_DATABASE_URL=db_url, REVHPO_HOME=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "revhpo", *argv[1:]],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "API did not start"
            time.sleep(0.2)
        assert r.json() == {"status": "ok", "database": "ok", "backend": "postgresql"}
        with get_engine(db_url).connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        proc.terminate()
        proc.wait(30)


def _copy_context(dockerfile: str, dest) -> None:  # noqa: ANN001
    """The files the Dockerfile COPYs, laid out as in its WORKDIR (/app)."""
    for line in (DOCKER / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            *srcs, target = shlex.split(line)[1:]
            rel = target.removeprefix("/app").strip("/")
            for src in srcs:
                out = dest / rel / Path(src).name if target.endswith("/") else dest / rel
                if (REPO / src).is_dir():
                    shutil.copytree(
                        REPO / src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / src, out)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_api_image_environment_from_its_requirements_serves_without_tensorflow(db_url, tmp_path):
    """The API image's RUN steps in a fresh virtual environment (Python 3.11 like the image):
    `pip install -r docker/requirements-api.txt`, then the COPYed sources with `--no-deps`.
    TensorFlow is not importable there; the image's CMD migrates and serves; `revhpo keys
    create` prints a key that works (what `docker compose exec -T api ...` captures)."""
    from revhpo.service.db import get_engine

    assert _cmd("Dockerfile.api")[:2] == ["revhpo", "serve"]
    text = (DOCKER / "Dockerfile.api").read_text()
    assert "FROM python:3.11-slim" in text and sys.version_info[:2] == (3, 11)
    assert "pip install -r docker/requirements-api.txt" in text
    assert "pip install --no-deps ." in text
    ctx, venv = tmp_path / "app", tmp_path / "venv"
    _copy_context("Dockerfile.api", ctx)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, env = (
        venv / "bin" / "python",
        {k: v for k, v in base_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    for step in (["-r", "docker/requirements-api.txt"], ["--no-deps", "."]):
        out = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *step],
            cwd=ctx,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [str(py), "-c", "import tensorflow"], env=env, cwd=tmp_path, capture_output=True
    )
    assert out.returncode != 0  # the image has no TensorFlow

    with get_engine(db_url).begin() as conn:  # start from an empty schema
        conn.exec_driver_sql("DROP TABLE job_events, jobs, datasets, api_keys, alembic_version")
    port = free_port()
    argv = _cmd("Dockerfile.api")
    argv = [a if a != "0.0.0.0" else "127.0.0.1" for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    run_env = {**env, "REVHPO_DATABASE_URL": db_url, "REVHPO_HOME": str(tmp_path / "data")}
    log = tmp_path / "api.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [str(venv / "bin" / argv[0]), *argv[1:]],
            env=run_env,
            cwd=tmp_path,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.2)
        assert r.json()["database"] == "ok"
        key = subprocess.run(
            [str(venv / "bin" / "revhpo"), "keys", "create", "--owner", "alice"],
            env=run_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert key.returncode == 0, key.stderr
        token = key.stdout.strip()
        assert "\r" not in key.stdout and token.startswith("rhp_")
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        loaded = subprocess.run(
            [
                str(py),
                "-c",
                "import sys; import revhpo.service.api.app, revhpo.service.worker; "
                "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr
    finally:
        proc.terminate()
        proc.wait(30)
