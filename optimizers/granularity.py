"""Which granularities each hyperparameter group accepts, and how each group is tuned.

The one table of it: the job spec (validation, JSON Schema) and the parametrisation read it
here. TensorFlow-free, so the API can validate specs without importing TensorFlow.
"""

from __future__ import annotations

__all__ = [
    "ALL_GRANULARITIES",
    "DEFAULT_KNOTS",
    "GRANULARITIES",
    "GROUPS",
    "KNOT_GRANULARITIES",
    "SCHEDULE_GRANULARITIES",
    "check_granularity",
]

#: Schedules given by their values at K knots in time, linear in between (shared by the layers,
#: or one schedule per layer). Their hypergradients follow by the chain rule.
KNOT_GRANULARITIES = ("knots", "per_layer_knots")
#: K of a knot schedule when the spec does not say.
DEFAULT_KNOTS = 4

#: group → (unconstrained transform, raw-array key)
GROUPS: dict[str, tuple[str, str]] = {
    "learning_rate": ("log", "log_learning_rate"),
    "momentum": ("logit", "logit_momentum"),
    "weight_decay": ("log", "log_weight_decay"),
    "init_scale": ("log", "log_init_scale"),
}

#: Granularities of a schedule (learning rate, momentum), coarsest first.
SCHEDULE_GRANULARITIES = (
    "scalar",
    "knots",
    "per_layer_knots",
    "per_step",
    "per_layer",
    "per_layer_per_step",
)
#: Every granularity some group accepts (the job spec's vocabulary).
ALL_GRANULARITIES = (*SCHEDULE_GRANULARITIES, "per_weight")

#: group → the granularities it accepts (the first is the coarsest)
GRANULARITIES: dict[str, tuple[str, ...]] = {
    "learning_rate": SCHEDULE_GRANULARITIES,
    "momentum": SCHEDULE_GRANULARITIES,
    "weight_decay": ("scalar", "per_step", "per_layer", "per_layer_per_step", "per_weight"),
    "init_scale": ("scalar", "per_layer"),
}


def check_granularity(group: str, granularity: str) -> None:
    """Raise ValueError unless ``group`` accepts ``granularity`` (the message echoes both)."""
    if group not in GRANULARITIES:
        raise ValueError(
            f"unknown hyperparameter group; known: {sorted(GRANULARITIES)}. Received: {group!r}"
        )
    if granularity not in GRANULARITIES[group]:
        raise ValueError(
            f"`granularity` of {group} must be one of {list(GRANULARITIES[group])}. "
            f"Received: granularity={granularity!r}"
        )
