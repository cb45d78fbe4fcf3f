"""Hyperparameter parametrisations: unconstrained raw values → training schedules.

Every tuned hyperparameter lives as an unconstrained float64 array (``log α``, ``logit γ``,
``log λ``, ``log scale``), so gradient steps never leave the valid set and no projection
(which would not be invertible) is needed. The maps below are TF ops, so the hypergradients
w.r.t. the schedules (``d_alpha``, ``d_gamma``, ``d_theta``, ``d_w0``) are pulled back to the raw
arrays with ``tape.gradient(outputs, raw, output_gradients=...)``.

Shapes of a group's natural value, by granularity (T steps, L layers, N weights, K tensors):
``scalar`` → ``[]``; ``per_step`` → ``[T]``; ``per_layer`` → ``[L]``;
``per_layer_per_step`` → ``[T, L]``; ``per_weight`` (weight decay only) → ``[N]`` (flat, in
parameter order); ``knots`` → ``[Q]`` and ``per_layer_knots`` → ``[Q, L]``: a schedule's values
at Q knots evenly spaced over the T steps, linear in between (:func:`knot_matrix`; Q = 1 is a
constant). Learning rate and momentum are expanded to ``[T, K]`` through the layer index of
each weight tensor. A knot schedule is a convex combination of its knot values at every step,
so it stays positive (α) and inside (0, 1) (γ), and its hypergradient is the chain rule through
the interpolation (one matrix product, differentiated by the tape like every other map here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from revhpo.optimizers.granularity import (
    DEFAULT_KNOTS,
    GRANULARITIES,
    GROUPS,
    KNOT_GRANULARITIES,
    check_granularity,
)

__all__ = [
    "GRANULARITIES",
    "GROUPS",
    "HyperGroup",
    "Hypers",
    "Layout",
    "Parametrization",
    "from_unconstrained",
    "knot_matrix",
    "to_unconstrained",
]


def knot_matrix(steps: int, knots: int) -> np.ndarray:
    """``[T, Q]`` weights of piecewise-linear interpolation between Q evenly spaced knots.

    Knot ``q`` sits at step ``q (T − 1) / (Q − 1)``; row ``t`` holds the two hat-function weights
    of the knots around ``t`` (non-negative, summing to 1). Q = 1 gives a column of ones.
    """
    if not 1 <= knots <= steps:
        raise ValueError(
            f"`knots` must be in [1, {steps}] (the training steps). Received: knots={knots}"
        )
    if knots == 1:
        return np.ones((steps, 1))
    t = np.arange(steps, dtype=np.float64)[:, None]
    pos = np.linspace(0.0, steps - 1.0, knots)[None, :]
    width = (steps - 1.0) / (knots - 1.0)
    return np.maximum(0.0, 1.0 - np.abs(t - pos) / width)


def to_unconstrained(value: float | np.ndarray, transform: str) -> np.ndarray:
    """Natural value → raw: ``log v`` or ``logit v = log(v / (1 - v))``."""
    v = np.asarray(value, dtype=np.float64)
    if transform == "log":
        return np.log(v)
    if transform == "logit":
        return np.log(v) - np.log1p(-v)
    raise ValueError(f"unknown transform. Received: transform={transform!r}")


def from_unconstrained(raw: tf.Tensor, transform: str) -> tf.Tensor:
    """Raw → natural value (TF op): ``exp`` or ``sigmoid``; inverse of :func:`to_unconstrained`."""
    if transform == "log":
        return tf.exp(raw)
    if transform == "logit":
        return tf.sigmoid(raw)
    raise ValueError(f"unknown transform. Received: transform={transform!r}")


@dataclass(frozen=True)
class HyperGroup:
    """One hyperparameter group.

    Attributes:
        name: ``learning_rate``, ``momentum``, ``weight_decay`` or ``init_scale``.
        init: initial natural value (every entry starts there).
        tuned: whether it is optimised (else it stays a constant).
        granularity: see the module docstring.
        knots: Q, the knots of a ``knots`` / ``per_layer_knots`` schedule (else unused).
    """

    name: str
    init: float
    tuned: bool = False
    granularity: str = "scalar"
    knots: int = DEFAULT_KNOTS

    def __post_init__(self) -> None:
        check_granularity(self.name, self.granularity)
        if self.granularity in KNOT_GRANULARITIES and not self.knots >= 1:
            raise ValueError(f"`knots` must be ≥ 1. Received: knots={self.knots!r}")
        if self.name == "momentum" and not 0 < self.init < 1:
            raise ValueError(f"momentum `init` must be in (0, 1). Received: init={self.init!r}")
        if self.name == "weight_decay" and self.init < 0:
            raise ValueError(f"weight_decay `init` must be ≥ 0. Received: init={self.init!r}")
        if self.name == "weight_decay" and self.tuned and self.init <= 0:
            raise ValueError(f"a tuned weight_decay needs init > 0. Received: init={self.init!r}")
        if self.name in ("learning_rate", "init_scale") and not self.init > 0:
            raise ValueError(f"{self.name} `init` must be > 0. Received: init={self.init!r}")

    @property
    def transform(self) -> str:
        """``log`` or ``logit``."""
        return GROUPS[self.name][0]

    @property
    def raw_key(self) -> str:
        """Key of the raw array (e.g. ``log_learning_rate``)."""
        return GROUPS[self.name][1]


@dataclass(frozen=True)
class Layout:
    """What the parametrisation needs to know about the training run and the net.

    Attributes:
        steps: T.
        param_layers: layer index of each weight tensor (``net.param_layers``), length K.
        param_shapes: shape of each weight tensor.
    """

    steps: int
    param_layers: tuple[int, ...]
    param_shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def for_net(cls, net: Any, steps: int) -> Layout:
        """The layout of training ``net`` (a :mod:`revhpo.nets` net) for ``steps`` steps."""
        return cls(int(steps), tuple(net.param_layers), tuple(tuple(s) for s in net.param_shapes))

    @property
    def n_layers(self) -> int:
        """L: number of layers (``max(param_layers) + 1``)."""
        return max(self.param_layers) + 1

    @property
    def n_tensors(self) -> int:
        """K: number of weight tensors."""
        return len(self.param_layers)

    @property
    def n_weights(self) -> int:
        """N: total number of weights."""
        return int(sum(math.prod(s) for s in self.param_shapes))

    def shape_of(self, granularity: str, knots: int = DEFAULT_KNOTS) -> tuple[int, ...]:
        """Shape of a group's natural value at this granularity (``knots``: Q of a knot one)."""
        if granularity in KNOT_GRANULARITIES and not 1 <= knots <= self.steps:
            raise ValueError(
                f"`knots` must be in [1, {self.steps}] (the training steps). "
                f"Received: knots={knots}"
            )
        return {
            "scalar": (),
            "knots": (knots,),
            "per_layer_knots": (knots, self.n_layers),
            "per_step": (self.steps,),
            "per_layer": (self.n_layers,),
            "per_layer_per_step": (self.steps, self.n_layers),
            "per_weight": (self.n_weights,),
        }[granularity]


class Hypers(NamedTuple):
    """Hyperparameters in the form training takes them (all float64 TF tensors).

    Attributes:
        alpha: ``[T, K]`` learning rates.
        gamma: ``[T, K]`` momentum decays in (0, 1).
        weight_decay: λ at its granularity's shape, or None when it is 0 and fixed.
        scales: ``[K]`` init scale of each weight tensor.
    """

    alpha: tf.Tensor
    gamma: tf.Tensor
    weight_decay: tf.Tensor | None
    scales: tf.Tensor


class Parametrization:
    """Maps the raw (unconstrained) arrays of the tuned groups to :class:`Hypers`.

    Args:
        groups: the four :class:`HyperGroup` (missing ones default to fixed values).
        layout: the :class:`Layout` of the training run.
    """

    def __init__(self, groups: Mapping[str, HyperGroup], layout: Layout):
        defaults = {
            "learning_rate": HyperGroup("learning_rate", 0.1),
            "momentum": HyperGroup("momentum", 0.9),
            "weight_decay": HyperGroup("weight_decay", 0.0),
            "init_scale": HyperGroup("init_scale", 1.0),
        }
        unknown = set(groups) - set(defaults)
        if unknown:
            raise ValueError(f"unknown hyperparameter groups. Received: {sorted(unknown)}")
        self.groups: dict[str, HyperGroup] = {**defaults, **dict(groups)}
        self.layout = layout
        # [K, L] one-hot of each tensor's layer: per-layer → per-tensor by a matmul (dense
        # gradients; tf.gather would give IndexedSlices, which the HVP machinery rejects).
        self._onehot = tf.one_hot(layout.param_layers, layout.n_layers, dtype=tf.float64)
        for g in self.groups.values():  # a knot count that does not fit T fails here, once
            layout.shape_of(g.granularity, g.knots)

    def _shape(self, g: HyperGroup) -> tuple[int, ...]:
        return self.layout.shape_of(g.granularity, g.knots)

    def _to_tensors(self, v: tf.Tensor) -> tf.Tensor:
        """Per-layer values ``[..., L]`` → per-tensor values ``[..., K]``."""
        return (
            tf.linalg.matvec(tf.cast(self._onehot, v.dtype), v)
            if v.shape.rank == 1
            else (tf.matmul(v, tf.cast(self._onehot, v.dtype), transpose_b=True))
        )

    # -- raw arrays -------------------------------------------------------------------------
    def initial_raw(self) -> dict[str, np.ndarray]:
        """The raw arrays of the tuned groups at their initial values (float64)."""
        return self.constant_raw({})

    def constant_raw(self, values: Mapping[str, float]) -> dict[str, np.ndarray]:
        """Raw arrays of the tuned groups with every entry at ``values[name]`` (a natural
        value; the group's ``init`` where absent): e.g. a point of a coarse grid search."""
        unknown = set(values) - set(self.groups)
        if unknown:
            raise ValueError(f"unknown hyperparameter groups. Received: {sorted(unknown)}")
        out = {}
        for name, g in self.groups.items():
            if g.tuned:
                v = values.get(name, g.init)
                out[g.raw_key] = np.full(self._shape(g), to_unconstrained(v, g.transform))
        return out

    def n_tuned(self) -> int:
        """Total number of tuned scalars."""
        return int(sum(a.size for a in self.initial_raw().values()))

    def natural(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Natural values of all four groups at their granularity shapes (TF ops).

        Untuned groups are constants; tuned ones are ``exp``/``sigmoid`` of ``raw``.
        """
        out = {}
        for name, g in self.groups.items():
            if g.tuned:
                r = tf.convert_to_tensor(raw[g.raw_key], dtype=tf.float64)
                out[name] = from_unconstrained(r, g.transform)
            else:
                out[name] = tf.fill(self._shape(g), tf.constant(g.init, tf.float64))
        return out

    def _knots_to_steps(self, v: tf.Tensor, g: HyperGroup) -> tuple[tf.Tensor, str]:
        """A knot schedule's values at every step (``per_step`` / ``per_layer_per_step``)."""
        m = tf.constant(knot_matrix(self.layout.steps, g.knots), v.dtype)
        if g.granularity == "knots":
            return tf.linalg.matvec(m, v), "per_step"
        return tf.matmul(m, v), "per_layer_per_step"

    def _per_tensor_schedule(self, v: tf.Tensor, g: HyperGroup) -> tf.Tensor:
        """Expand a natural value to ``[T, K]`` (per layer → each tensor of that layer)."""
        T, K = self.layout.steps, self.layout.n_tensors
        granularity = g.granularity
        if granularity in KNOT_GRANULARITIES:
            v, granularity = self._knots_to_steps(v, g)
        if granularity == "scalar":
            return v * tf.ones([T, K], tf.float64)
        if granularity == "per_step":
            return v[:, None] * tf.ones([1, K], tf.float64)
        if granularity == "per_layer":
            return tf.ones([T, 1], tf.float64) * self._to_tensors(v)[None, :]
        if granularity == "per_layer_per_step":
            return self._to_tensors(v)
        raise ValueError(f"no [T, K] schedule for granularity. Received: {granularity!r}")

    def hypers(self, raw: Mapping[str, tf.Tensor]) -> Hypers:
        """Map raw arrays to the training hyperparameters (differentiable TF ops)."""
        nat = self.natural(raw)
        g = self.groups
        alpha = self._per_tensor_schedule(nat["learning_rate"], g["learning_rate"])
        gamma = self._per_tensor_schedule(nat["momentum"], g["momentum"])
        wd = g["weight_decay"]
        lam = nat["weight_decay"] if (wd.tuned or wd.init > 0) else None
        s = nat["init_scale"]
        if g["init_scale"].granularity == "scalar":
            scales = s * tf.ones([self.layout.n_tensors], tf.float64)
        else:
            scales = self._to_tensors(s)
        return Hypers(alpha, gamma, lam, scales)

    # -- training-loss pieces ---------------------------------------------------------------
    def weight_decay_penalty(
        self, w: Sequence[tf.Tensor], lam: tf.Tensor, t: tf.Tensor
    ) -> tf.Tensor:
        """``½ Σ_k Σ_i λ_{k,i}(t) w_{k,i}²`` in ``w``'s dtype (λ per its granularity)."""
        gran = self.groups["weight_decay"].granularity
        dtype = w[0].dtype
        lam = tf.cast(lam, dtype)
        if gran == "per_weight":
            parts = tf.split(lam, [int(math.prod(s)) for s in self.layout.param_shapes])
            return 0.5 * tf.add_n(
                [tf.reduce_sum(p * tf.reshape(x, [-1]) ** 2) for p, x in zip(parts, w, strict=True)]
            )
        if gran == "per_step":
            lam = lam[t]
        elif gran == "per_layer_per_step":
            lam = lam[t]
        sq = tf.stack([tf.reduce_sum(x**2) for x in w])  # [K]
        if gran in ("per_layer", "per_layer_per_step"):
            lam = self._to_tensors(lam)
        return 0.5 * tf.reduce_sum(lam * sq)

    def init_weights(self, scales: tf.Tensor, raw_init: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """``w0_k = scale_k · raw_init_k`` (float64)."""
        return [scales[k] * tf.cast(r, tf.float64) for k, r in enumerate(raw_init)]

    # -- reporting --------------------------------------------------------------------------
    def per_step_per_layer(self, v: tf.Tensor, g: HyperGroup) -> np.ndarray | None:
        """A group's natural value expanded to ``[T, L]`` (None for ``per_weight``)."""
        T, L = self.layout.steps, self.layout.n_layers
        v = tf.convert_to_tensor(v, tf.float64)
        granularity = g.granularity
        if granularity in KNOT_GRANULARITIES:
            v, granularity = self._knots_to_steps(v, g)
        a = np.asarray(v, np.float64)
        if granularity == "scalar":
            return np.full((T, L), float(a))
        if granularity == "per_step":
            return np.repeat(a[:, None], L, axis=1)
        if granularity == "per_layer":
            return np.repeat(a[None, :], T, axis=0)
        if granularity == "per_layer_per_step":
            return a
        return None

    def describe(self, raw: Mapping[str, tf.Tensor]) -> dict[str, dict]:
        """JSON-able natural values of all groups (lists), with granularity and tuned flag.

        ``value`` holds the values actually tuned (e.g. a knot schedule's knot values);
        ``per_step_per_layer`` the same group expanded to every step and layer ``[T][L]``
        (absent for ``per_weight``); knot groups also give ``knots`` (Q).
        """
        nat = self.natural(raw)
        out: dict[str, dict] = {}
        for name, g in self.groups.items():
            d: dict[str, Any] = {
                "granularity": g.granularity,
                "tuned": g.tuned,
                "transform": g.transform,
                "value": np.asarray(nat[name]).tolist(),
            }
            if g.granularity in KNOT_GRANULARITIES:
                d["knots"] = g.knots
            expanded = self.per_step_per_layer(nat[name], g)
            if expanded is not None:
                d["per_step_per_layer"] = expanded.tolist()
            out[name] = d
        return out
