"""The Docker files, tested without a Docker engine: what the images install and run.

Not run here (no engine): building the images and starting compose. What is checked: the
compose file's structure (PostgreSQL, API, GPU-reserved workers), that every command the
images and compose run is a valid `revhpo` command line, that the API image's package list
equals the lock's pins and covers what the API imports, and the API image's start command
run for real against PostgreSQL (migrate, then serve), and that the README's Docker steps name
the compose file's services and valid `revhpo` command lines.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from svc_helpers import REPO, base_env, free_port

DOCKER = REPO / "docker"
API_ROOTS = [
    "fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg-binary", "pydantic",
    "pydantic-settings", "pyyaml", "httpx", "numpy", "python-multipart",
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


def test_compose_structure_and_commands():
    doc = yaml.safe_load((DOCKER / "compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"db", "api", "worker"}
    assert services["db"]["image"].startswith("postgres:")
    api, worker = services["api"], services["worker"]
    assert api["environment"]["REVHPO_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert "REVHPO_DATABASE_URL" not in worker.get("environment", {})  # HTTP only
    assert "REVHPO_TOKEN" in worker["environment"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    serve = _parse(api["command"])
    assert serve.func.__name__ == "cmd_serve" and serve.workers == 0 and not serve.no_migrate
    w = _parse(worker["command"])
    assert w.func.__name__ == "cmd_worker" and w.api == "http://api:8765"


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
    services = set(yaml.safe_load((DOCKER / "compose.yml").read_text())["services"])
    steps = _readme_docker_steps()
    assert any(" build" in s for s in steps) and any(" up -d" in s for s in steps)
    for step in steps:
        words = shlex.split(re.sub(r"\$\((.*)\)", r"\1", step.split("=", 1)[-1]))
        if "docker" in words:
            i = words.index("docker")
            assert words[i + 1 : i + 4] == ["compose", "-f", "docker/compose.yml"], step
            assert (REPO / words[i + 3]).exists()
            verb, rest = words[i + 4], words[i + 5 :]
            if verb == "up":
                named = [w for w in rest if not w.startswith("-") and "=" not in w]
                assert named and set(named) <= services, step
            if verb == "exec":
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
