"""The HTTP API (FastAPI): `create_app`, and `serve` to run it with uvicorn."""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
