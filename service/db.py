"""Database engine, sessions, the database clock and migrations.

SQLite (the embedded default) runs in WAL mode with a busy timeout; every write transaction
starts with `BEGIN IMMEDIATE`, so a writer takes the write lock up front and waits for it
(busy timeout) instead of failing with "database is locked" on a read-to-write upgrade.
PostgreSQL uses ordinary READ COMMITTED transactions; the queue's claim is one statement with
`FOR UPDATE SKIP LOCKED` (see `revhpo.service.queue`).

Every time that decides a lease comes from the database clock (`db_epoch()`), never from the
clock of an API replica or a worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import Float

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


class StorageError(RuntimeError):
    """A database failure, mapped from the driver's exception (see `session_scope`).

    Attributes:
        conflict: True for a constraint violation (a duplicate key), False otherwise.
        transient: True when a retry may succeed (lock timeout, lost connection).
    """

    def __init__(self, message: str, *, conflict: bool = False, transient: bool = False):
        super().__init__(message)
        self.conflict = conflict
        self.transient = transient


class db_epoch(FunctionElement):  # noqa: N801 (reads like the SQL function it compiles to)
    """The database server's wall clock, in seconds since the Unix epoch (a float)."""

    type = Float()
    inherit_cache = True


@compiles(db_epoch, "postgresql")
def _pg_epoch(element, compiler, **kw):  # noqa: ANN001
    return "EXTRACT(EPOCH FROM clock_timestamp())::float8"


@compiles(db_epoch, "sqlite")
def _sqlite_epoch(element, compiler, **kw):  # noqa: ANN001
    # julianday('now') has millisecond resolution; 2440587.5 is the Julian day of 1970-01-01.
    return "((julianday('now') - 2440587.5) * 86400.0)"


def _configure_sqlite(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys; driver autocommit so we emit BEGIN ourselves."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # pysqlite: no implicit BEGIN; see _on_begin
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create an engine for `url` with the project's SQLite or PostgreSQL settings.

    Args:
        url: an SQLAlchemy URL (`sqlite:///path`, `postgresql+psycopg://...`).
        pool_size: connections kept open (PostgreSQL).

    Returns:
        The engine.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=20,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url` (created on first use)."""
    with _engines_lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


_write_locks: dict[int, threading.Lock] = {}


def _write_lock(engine: Engine) -> threading.Lock | None:
    """SQLite only: one in-process lock per database serialising this process's writers.

    SQLite admits one writer at a time; its busy handler makes waiting writers poll with
    sleeps, which under many concurrent requests collapses throughput. Queueing this
    process's writers on a lock hands the database over without polling (other processes
    still meet the busy timeout).
    """
    if engine.dialect.name != "sqlite":
        return None
    with _engines_lock:
        return _write_locks.setdefault(id(engine.pool), threading.Lock())


@lru_cache(maxsize=16)
def _sessionmakers(engine: Engine) -> tuple[sessionmaker, sessionmaker]:
    read = sessionmaker(bind=engine, expire_on_commit=False)
    if engine.dialect.name == "sqlite":
        write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    else:
        write_engine = engine
    write = sessionmaker(bind=write_engine, expire_on_commit=False)
    return read, write


@contextmanager
def session_scope(engine: Engine, *, write: bool = True) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on error, always closes.

    Database errors are re-raised as `StorageError` (a duplicate key sets `conflict`; a lock
    timeout or lost connection sets `transient`).

    Args:
        engine: the engine from `get_engine`.
        write: start with `BEGIN IMMEDIATE` on SQLite (take the write lock up front).

    Yields:
        The session.

    Raises:
        StorageError: the database refused or failed.
    """
    read, wr = _sessionmakers(engine)
    lock = _write_lock(engine) if write else None
    if lock is not None:
        lock.acquire()
    session = (wr if write else read)()
    try:
        yield session
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise StorageError(str(exc.orig), conflict=True) from exc
    except OperationalError as exc:
        session.rollback()
        raise StorageError(str(exc.orig), transient=True) from exc
    except (DBAPIError, SQLAlchemyError) as exc:
        session.rollback()
        raise StorageError(str(exc)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
        if lock is not None:
            lock.release()


def now(session: Session) -> float:
    """The database clock (seconds since the epoch)."""
    return float(session.execute(select(db_epoch())).scalar_one())


def migrations_dir() -> Path:
    """The Alembic script directory shipped inside the package."""
    return Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str):  # noqa: ANN201 (alembic is imported lazily)
    """An Alembic `Config` for `url` without an ini file."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for another backend or an in-memory database)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def has_schema(url: str) -> bool:
    """Whether the database at `url` exists and holds revhpo's schema (creates nothing).

    An SQLite file that does not exist is not opened (opening would create it).

    Raises:
        StorageError: the database server could not be reached.
    """
    from sqlalchemy import inspect

    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None or not path.is_file():
            return False
    try:
        return inspect(get_engine(url)).has_table("alembic_version")
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StorageError(str(getattr(exc, "orig", None) or exc), transient=True) from exc


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (creates the schema on a new database)."""
    from alembic import command

    engine = get_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("database at %s migrated to %s", engine.url.render_as_string(), revision)
