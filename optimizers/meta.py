"""Meta-optimizers: gradient descent on the raw hyperparameters (NumPy, float64).

Optax-style: an optimizer is ``(init, update)``; the state is an explicit immutable
``NamedTuple`` of arrays, and ``update(grads, state, scale)`` returns ``(updates, new_state)``
with ``new_params = params + updates``. ``scale`` multiplies the step size (the tuning loop
halves it when it backtracks after a divergence). State round-trips exactly through
:func:`state_to_arrays` / :func:`state_from_arrays` (checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "AdamState",
    "MetaOptimizer",
    "SgdState",
    "adam",
    "clip_by_global_norm",
    "global_norm",
    "make_meta_optimizer",
    "noise_normalized",
    "sgd",
    "snr",
    "state_from_arrays",
    "state_to_arrays",
]

Params = dict[str, np.ndarray]


class AdamState(NamedTuple):
    """Adam's state: step count and the first and second moment estimates."""

    count: int
    mu: Params
    nu: Params


class SgdState(NamedTuple):
    """SGD-with-momentum's state: the velocity."""

    count: int
    velocity: Params


class MetaOptimizer(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, scale=1.0) -> (updates, state)``."""

    name: str
    init: Callable[[Mapping[str, np.ndarray]], NamedTuple]
    update: Callable[..., tuple[Params, NamedTuple]]


def _zeros(params: Mapping[str, np.ndarray]) -> Params:
    return {k: np.zeros_like(np.asarray(v, dtype=np.float64)) for k, v in params.items()}


def adam(step_size: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> MetaOptimizer:
    """Adam (Kingma & Ba 2015) with bias correction.

    ``m ← b1 m + (1-b1) g``; ``v ← b2 v + (1-b2) g²``;
    ``update = -step_size·scale · m̂ / (√v̂ + eps)``.
    """
    if not step_size > 0:
        raise ValueError(f"`step_size` must be > 0. Received: step_size={step_size!r}")

    def init(params: Mapping[str, np.ndarray]) -> AdamState:
        return AdamState(0, _zeros(params), _zeros(params))

    def update(
        grads: Mapping[str, np.ndarray], state: AdamState, scale: float = 1.0
    ) -> tuple[Params, AdamState]:
        count = state.count + 1
        mu = {k: b1 * state.mu[k] + (1 - b1) * grads[k] for k in state.mu}
        nu = {k: b2 * state.nu[k] + (1 - b2) * np.square(grads[k]) for k in state.nu}
        c1, c2 = 1 - b1**count, 1 - b2**count
        lr = step_size * scale
        updates = {k: -lr * (mu[k] / c1) / (np.sqrt(nu[k] / c2) + eps) for k in mu}
        return updates, AdamState(count, mu, nu)

    return MetaOptimizer("adam", init, update)


def sgd(step_size: float, momentum: float = 0.0) -> MetaOptimizer:
    """SGD with (heavy-ball) momentum: ``v ← μ v - lr g``; ``update = v``."""
    if not step_size > 0:
        raise ValueError(f"`step_size` must be > 0. Received: step_size={step_size!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")

    def init(params: Mapping[str, np.ndarray]) -> SgdState:
        return SgdState(0, _zeros(params))

    def update(
        grads: Mapping[str, np.ndarray], state: SgdState, scale: float = 1.0
    ) -> tuple[Params, SgdState]:
        lr = step_size * scale
        vel = {k: momentum * state.velocity[k] - lr * grads[k] for k in state.velocity}
        return dict(vel), SgdState(state.count + 1, vel)

    return MetaOptimizer("sgd", init, update)


def noise_normalized(
    per_seed: list[Mapping[str, np.ndarray]], z: float = 2.0
) -> tuple[Params, float]:
    """Per coordinate, the seed-averaged gradient divided by ``max(|mean|, z · its standard
    error)``: ±1 where the gradient is clearly nonzero across the seeds, proportionally less
    where it is within noise (with one seed, the sign). Returns ``(direction, share)`` with
    ``share`` the fraction of coordinates whose mean exceeds ``z`` standard errors.
    """
    n = len(per_seed)
    out: Params = {}
    strong = total = 0
    for k in per_seed[0]:
        g = np.stack([np.asarray(p[k], np.float64) for p in per_seed])
        mean = g.mean(axis=0)
        se = g.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
        denom = np.maximum(np.abs(mean), z * se)
        out[k] = np.divide(mean, denom, out=np.zeros_like(mean), where=denom > 0)
        strong += int(np.sum(np.abs(mean) > z * se))
        total += mean.size
    return out, strong / max(total, 1)


def snr(step_size: float) -> MetaOptimizer:
    """A normalised step on a noise-normalised direction (see :func:`noise_normalized`):
    ``update = −step_size · scale · direction``, each coordinate moving by at most the step
    size, and by less the noisier its hypergradient is across the iteration's seeds."""
    if not step_size > 0:
        raise ValueError(f"`step_size` must be > 0. Received: step_size={step_size!r}")

    def init(params: Mapping[str, np.ndarray]) -> SgdState:
        return SgdState(0, _zeros(params))

    def update(
        direction: Mapping[str, np.ndarray], state: SgdState, scale: float = 1.0
    ) -> tuple[Params, SgdState]:
        lr = step_size * scale
        step = {k: -lr * np.asarray(v, np.float64) for k, v in direction.items()}
        return step, SgdState(state.count + 1, dict(step))

    return MetaOptimizer("snr", init, update)


def make_meta_optimizer(
    name: str, step_size: float, *, momentum: float = 0.9, b1: float = 0.9, b2: float = 0.999
) -> MetaOptimizer:
    """``adam``, ``sgd`` or ``snr`` by name."""
    if name == "adam":
        return adam(step_size, b1, b2)
    if name == "sgd":
        return sgd(step_size, momentum)
    if name == "snr":
        return snr(step_size)
    raise ValueError(f"unknown meta-optimizer. Received: name={name!r}")


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """``sqrt(Σ ‖g‖²)`` over all arrays."""
    return float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values())))


def clip_by_global_norm(
    grads: Mapping[str, np.ndarray], max_norm: float | None
) -> tuple[Params, float]:
    """Scale all arrays by ``min(1, max_norm / ‖g‖)``; returns ``(clipped, norm before)``."""
    norm = global_norm(grads)
    if max_norm is None or norm <= max_norm or norm == 0:
        return {k: np.asarray(v, np.float64) for k, v in grads.items()}, norm
    f = max_norm / norm
    return {k: np.asarray(v, np.float64) * f for k, v in grads.items()}, norm


def state_to_arrays(state: NamedTuple) -> dict[str, np.ndarray]:
    """Flatten an optimizer state to ``{"count": ..., "<field>/<key>": array}``."""
    out: dict[str, np.ndarray] = {"count": np.asarray(state.count, np.int64)}
    for field in state._fields[1:]:
        for k, v in getattr(state, field).items():
            out[f"{field}/{k}"] = np.asarray(v, np.float64)
    return out


def state_from_arrays(opt: MetaOptimizer, arrays: Mapping[str, np.ndarray]) -> NamedTuple:
    """Inverse of :func:`state_to_arrays` for optimizer ``opt``."""
    cls = AdamState if opt.name == "adam" else SgdState
    fields: dict[str, dict[str, np.ndarray]] = {f: {} for f in cls._fields[1:]}
    for key, v in arrays.items():
        if key == "count":
            continue
        field, _, k = key.partition("/")
        if field not in fields:
            raise ValueError(f"unexpected meta-optimizer state entry. Received: {key!r}")
        fields[field][k] = np.array(v, np.float64)
    return cls(int(arrays["count"]), *fields.values())
