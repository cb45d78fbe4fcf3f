"""The exact engine, hyperparameter parametrisations, meta-optimizers and the tuning loop.

The library entry point a Python user calls (no files, no HTTP)::

    from revhpo.optimizers import Tuner, TunerConfig, TuningProblem

Knows a training loss ``L(w, θ, t[, key])`` and a validation loss ``f(w)``; knows nets only
through their functional contract and nothing of the service. Names are imported lazily, so
``revhpo.optimizers.granularity`` (TensorFlow-free) can be used without TensorFlow.
"""

from revhpo._lazy import lazy_exports

_EXPORTS = {
    # the exact engine and its references
    "DivergenceError": "reversible",
    "ExactnessCertificate": "reversible",
    "ExactnessError": "reversible",
    "HypergradResult": "reversible",
    "hypergradient": "reversible",
    "hypergradients": "reversible",
    "make_stepper": "reversible",
    "minibatch_indices": "reversible",
    "minibatch_table": "reversible",
    "PlainSGD": "unrolled",
    "unrolled_hypergradient": "unrolled",
    # hyperparameters
    "GRANULARITIES": "granularity",
    "HyperGroup": "hyperparams",
    "Hypers": "hyperparams",
    "Layout": "hyperparams",
    "Parametrization": "hyperparams",
    # meta-optimizers
    "MetaOptimizer": "meta",
    "make_meta_optimizer": "meta",
    # problems and the tuning loop
    "ArraySplits": "problem",
    "EVAL_SEED_OFFSET": "problem",
    "Evaluation": "problem",
    "TuningProblem": "problem",
    "training_seed": "problem",
    "Cancelled": "tuner",
    "MetaState": "state",
    "Tuner": "tuner",
    "TunerConfig": "tuner",
    "TuningOutcome": "tuner",
    "CheckpointError": "checkpoint",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
