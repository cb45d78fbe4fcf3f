"""The Python client of the revhpo HTTP API: ``from revhpo.client import Client``.

See :mod:`revhpo.service.client` for the whole API (jobs, events, datasets, the worker
protocol), its retry policy and its errors.
"""

from revhpo.service.client import (
    DEFAULT_API,
    ApiConnectionError,
    ApiError,
    Client,
    ClientError,
    JobEvent,
    LeaseLostError,
    WorkerApi,
)

__all__ = [
    "DEFAULT_API",
    "ApiConnectionError",
    "ApiError",
    "Client",
    "ClientError",
    "JobEvent",
    "LeaseLostError",
    "WorkerApi",
]
