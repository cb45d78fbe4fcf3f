"""revhpo: tune hundreds to thousands of hyperparameters by exactly reversible learning.

The installed distribution exposes everything under this one name:

- ``revhpo.precise``: exact fixed point and the information buffer.
- ``revhpo.hessian``: gradients, Hessian-vector products, mixed products.
- ``revhpo.optimizers``: the exact engine, hyperparameter parametrisations, meta-optimizers and
  the tuning loop (:class:`revhpo.optimizers.Tuner`), usable without the service.
- ``revhpo.nets``: model families and their typed, TensorFlow-free configs.
- ``revhpo.service``: job specs, datasets, results, the CLI, the HTTP API, the worker.
- ``revhpo.client``: the Python client of the HTTP API.

Importing ``revhpo`` imports no TensorFlow; it only makes the one environment setting that
must precede TensorFlow's first import (see :mod:`revhpo.runtime`).
"""

from revhpo.runtime import __version__, prepare_environment

prepare_environment()

__all__ = ["__version__"]
