"""The Python client of the revhpo HTTP API: ``from revhpo.client import Client``.

See :mod:`revhpo.service.client` for the whole API (jobs, events, datasets, the worker
protocol), its retry policy and its errors; every public name there is re-exported here.
"""

from revhpo.service import client as _impl
from revhpo.service.client import *  # noqa: F403  (re-export: the same names, one list)

__all__ = list(_impl.__all__)
