"""Reversible SGD with momentum, hypergradients, and the references they are checked against.

Knows a training loss ``L(w, θ, t)`` and a validation loss ``f(w)``; knows nothing of nets
or the service.
"""

import os

# Exact reversal needs the reverse pass to recompute each gradient bit for bit. oneDNN's
# float32 CPU kernels can round differently in the forward and the reverse graph, so they are
# off unless the user chose otherwise before TensorFlow was first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from optimizers.reversible import (
    DivergenceError,
    ExactnessCertificate,
    ExactnessError,
    HypergradResult,
    hypergradient,
    make_stepper,
    minibatch_indices,
)
from optimizers.unrolled import PlainSGD, plain_sgd, unrolled_hypergradient

__all__ = [
    "DivergenceError",
    "ExactnessCertificate",
    "ExactnessError",
    "HypergradResult",
    "PlainSGD",
    "hypergradient",
    "make_stepper",
    "minibatch_indices",
    "plain_sgd",
    "unrolled_hypergradient",
]
