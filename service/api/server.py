"""Run the API with uvicorn (migrating the database first)."""

from __future__ import annotations

import logging

from revhpo.service.db import migrate
from revhpo.service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def serve(settings: Settings | None = None, *, run_migrations: bool = True) -> None:
    """Migrate the database and serve the API until SIGINT/SIGTERM.

    Args:
        settings: defaults to `get_settings()`.
        run_migrations: upgrade the schema to the newest revision first.
    """
    import uvicorn

    from .app import create_app

    settings = settings or get_settings()
    if not settings.anonymous_enabled and settings.allow_anonymous:
        log.warning(
            "bound to %s (not loopback): anonymous access is disabled, every request needs a key",
            settings.host,
        )
    if run_migrations:
        migrate(settings.resolved_database_url)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
