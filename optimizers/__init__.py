"""Reversible SGD with momentum, hypergradients, and the references they are checked against.

Knows a training loss ``L(w, θ, t)`` and a validation loss ``f(w)``; knows nothing of nets
or the service.
"""

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
