"""Service settings: one `Settings` object read from `REVHPO_*` environment variables.

The embedded default keeps everything under one directory (`REVHPO_HOME`, default `./var`):
an SQLite database and the artifact directory (datasets, results, plots, checkpoints).
Scale-out points `REVHPO_DATABASE_URL` at PostgreSQL and `REVHPO_ARTIFACT_DIR` at shared storage.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the API server, the queue and the workers.

    Every field can be set from the environment as `REVHPO_<FIELD>` (upper case).
    """

    model_config = SettingsConfigDict(env_prefix="REVHPO_", extra="ignore")

    home: Path = Field(Path("var"), description="directory of the embedded default")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home")
    artifact_dir: Path | None = Field(None, description="datasets, results, plots; default home")
    host: str = Field("127.0.0.1", description="address the API binds to")
    port: int = Field(8765, description="port the API binds to")
    allow_anonymous: bool = Field(
        True,
        description="accept requests without a key as the user `local` (never as a worker); "
        "honoured only on a loopback bind, from a loopback peer with a loopback Host and no "
        "proxy headers",
    )

    lease_seconds: float = Field(30.0, gt=0, description="a claimed job's lease")
    heartbeat_seconds: float = Field(5.0, gt=0, description="worker heartbeat period")
    reaper_seconds: float = Field(2.0, gt=0, description="period of the expired-lease reaper")
    max_attempts: int = Field(3, ge=1, description="claims before a job fails for good")
    backoff_seconds: float = Field(2.0, ge=0, description="base of the exponential re-queue delay")
    backoff_max_seconds: float = Field(300.0, ge=0, description="cap of the re-queue delay")

    max_request_bytes: int = Field(1 << 20, description="largest JSON request body")
    max_dataset_bytes: int = Field(64 << 20, description="largest dataset upload")
    max_dataset_values: int = Field(
        1 << 25,
        ge=1,
        description="most values (features + labels) in an upload once decompressed or parsed "
        "(a job holds them as float64: 8 bytes each)",
    )
    max_dataset_classes: int = Field(
        10_000, ge=2, description="most distinct labels in an uploaded dataset"
    )
    max_artifact_bytes: int = Field(256 << 20, description="largest worker upload (plots, ckpt)")
    max_job_cost: float = Field(
        2e12, description="largest estimated job size: weights x steps x meta-iterations"
    )
    max_queued_per_owner: int = Field(1000, description="queued+running jobs one owner may have")
    page_size_max: int = Field(200, description="largest page of GET /v1/jobs")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to an SQLite file in `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'revhpo.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        """The artifact directory, defaulting to `home/artifacts`."""
        return (self.artifact_dir or self.home / "artifacts").resolve()

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (the embedded default)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def anonymous_enabled(self) -> bool:
        """Anonymous access is honoured only when the API binds to a loopback address."""
        return self.allow_anonymous and is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether `host` names only the loopback interface (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
