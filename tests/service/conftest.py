"""Service test fixtures: real SQLite files and the real PostgreSQL server, one fresh schema
per test, and a real uvicorn server in a subprocess (see `svc_helpers.py`).

PostgreSQL is at REVHPO_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
When it is unreachable the PostgreSQL cases skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from svc_helpers import PG_URL, ServerProc


def _pg_reachable() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 (any failure means unreachable)
        return str(exc)
    return None


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    """The PostgreSQL URL, or skip (fail under CI) when the server is unreachable."""
    err = _pg_reachable()
    if err is not None:
        msg = f"PostgreSQL at {PG_URL} unreachable: {err}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return PG_URL


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_dir: Path) -> Iterator[str]:
    """A new, migrated database: an SQLite file, or a fresh PostgreSQL schema (dropped after)."""
    from revhpo.service.db import migrate

    if backend == "sqlite":
        url = f"sqlite:///{tmp_dir / 'revhpo.db'}"
        migrate(url)
        yield url
        return
    import psycopg

    base = request.getfixturevalue("pg_base_url")
    schema = f"revhpo_t_{uuid.uuid4().hex[:12]}"
    raw = base.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = _pg_schema_url(base, schema)
    try:
        migrate(url)
        yield url
    finally:
        from revhpo.service.db import _engines

        eng = _engines.pop(url, None)
        if eng is not None:
            eng.dispose()
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of the parametrised backend (`sqlite` or `postgres`)."""
    with fresh_database(request, getattr(request, "param", "sqlite"), tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def shared_server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[ServerProc]:
    """One API server per module and backend (param `sqlite`/`postgres`); keys required.

    Tests on it isolate themselves by owner: each makes its own API key.
    """
    backend = getattr(request, "param", "sqlite")
    tmp = tmp_path_factory.mktemp(f"shared-{backend}")
    with fresh_database(request, backend, tmp) as url:
        srv = ServerProc(
            db_url=url,
            home=tmp / "home",
            env={
                "REVHPO_ALLOW_ANONYMOUS": "false",
                "REVHPO_MAX_JOB_COST": "1e9",
                "REVHPO_MAX_REQUEST_BYTES": "20000",
                "REVHPO_MAX_DATASET_BYTES": "50000",
            },
        )
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture
def engine(db_url: str):
    """The engine of the fresh database."""
    from revhpo.service.db import get_engine

    return get_engine(db_url)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start real API servers (uvicorn subprocesses); all are stopped at teardown."""
    started: list[ServerProc] = []

    def start(db_url: str, **env: str) -> ServerProc:
        srv = ServerProc(db_url=db_url, home=tmp_path / f"home{len(started)}", env=env)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
