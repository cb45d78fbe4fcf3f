"""A tuning problem: a net, its data and a hyperparameter parametrisation, seen as a function
of the raw (unconstrained) hyperparameters.

No files, no HTTP. :class:`TuningProblem` turns raw hyperparameters into one exact forward +
reverse training run and pulls the hypergradients back to the raw arrays.

Training loss ``L(w, θ, t, batches)`` = mean task loss on minibatch ``batches[t]`` + ``½ Σ λ w²``,
where ``batches = minibatch_table(seed, T, n, B)`` (row ``t`` equals
``minibatch_indices(seed, t, n, B)``) is made once per training seed; validation loss ``f(w)``
= mean task loss on the validation set's *fit* part. With ``select_fraction > 0`` a fixed
random part of the validation set is kept out of ``f`` (the *select* part): the tuner selects
iterates on it (:meth:`TuningProblem.selection_loss`), so a selection the hypergradient never
saw catches hyperparameters that overfit the fit part. The task loss is
:func:`revhpo.nets.task_loss` (softmax
cross-entropy for classifiers, ``½ mean ‖x̂ − x‖²`` for reconstruction nets), the same one the
nets' own hypergradient tests check. The training seed is an argument of every call, never
state: one problem can serve any number of seeds, in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from revhpo.nets import task_loss
from revhpo.optimizers.hyperparams import Hypers, Parametrization
from revhpo.optimizers.reversible import (
    HypergradResult,
    hypergradients,
    make_stepper,
    minibatch_table,
)
from revhpo.optimizers.unrolled import PlainSGD

__all__ = [
    "EVAL_SEED_OFFSET",
    "SELECT_SEED_OFFSET",
    "ArraySplits",
    "Evaluation",
    "TuningProblem",
    "training_seed",
]

#: Offset of the held-out evaluation seeds: hypergradients use ``base + i`` (``i < 500_000``),
#: the selection estimate ``base + SELECT_SEED_OFFSET + j``, the final evaluation
#: ``base + EVAL_SEED_OFFSET + j``: the three never meet.
EVAL_SEED_OFFSET = 1_000_000
#: Offset of the seeds the selection estimate trains with (see :data:`EVAL_SEED_OFFSET`).
SELECT_SEED_OFFSET = 500_000
#: Largest seed index a hypergradient may use (below the selection seeds).
MAX_TUNING_SEEDS = SELECT_SEED_OFFSET

Raw = Mapping[str, Any]


def training_seed(base: int, iteration: int, fresh: bool) -> int:
    """Training seed (init + minibatches) of meta-iteration ``iteration``."""
    return base + iteration if fresh else base


@dataclass(frozen=True)
class ArraySplits:
    """Train / validation / (optional) test arrays: float features ``[n, d]``, int labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


class Evaluation(NamedTuple):
    """One exact hypergradient evaluation.

    Attributes:
        val_loss: ``f(w_T)``.
        grads: ``d f / d raw`` for every raw array (NumPy float64, same shapes).
        hyper: the engine's :class:`~revhpo.optimizers.HypergradResult`.
    """

    val_loss: float
    grads: dict[str, np.ndarray]
    hyper: HypergradResult


class TuningProblem:
    """A net, its data and a hyperparameter parametrisation: a function raw → (f, ∇f).

    Args:
        net: a :mod:`revhpo.nets` net (``init_params``, ``apply``, ``param_layers``, ...).
        data: the arrays.
        parametrization: maps raw arrays to training schedules.
        batch_size: minibatch size B.
        dtype: dtype the net is evaluated in.
        frac_bits: fixed-point fractional bits of the exact optimizer.
        max_denominator: denominator bound of the momentum rationals.
        select_fraction: part of the validation set kept out of ``f`` for selection (0: none;
            ``f`` and the selection both use the whole validation set).

    The compiled steps are made once here and reused by every call, for every seed.
    """

    def __init__(
        self,
        net: Any,
        data: ArraySplits,
        parametrization: Parametrization,
        *,
        batch_size: int,
        dtype: tf.DType = tf.float64,
        frac_bits: int = 52,
        max_denominator: int = 2**16,
        select_fraction: float = 0.0,
    ) -> None:
        self.net = net
        self.data = data
        self.param = parametrization
        self.steps = parametrization.layout.steps
        self.batch_size = int(batch_size)
        self.dtype = tf.as_dtype(dtype)
        self.frac_bits = frac_bits
        self.max_denominator = max_denominator
        self.n_train = int(len(data.x_train))
        if not 1 <= self.batch_size <= self.n_train:
            raise ValueError(
                f"`batch_size` must be in [1, {self.n_train}] (the training set). "
                f"Received: batch_size={batch_size}"
            )
        self._splits = _split_tensors(data, self.dtype)
        self._x_train, self._y_train = self._splits["train"]
        self.select_fraction = float(select_fraction)
        self._fit, self._select = _fit_select(data, self.dtype, self.select_fraction)
        self._select_fn = tf.function(
            lambda w: task_loss(self.net, self.net.apply(w, self._select[0]), *self._select),
            reduce_retracing=True,
            autograph=False,
        )
        val = self._splits["val"]
        self._whole_val_fn = tf.function(
            lambda w: task_loss(self.net, self.net.apply(w, val[0]), *val),
            reduce_retracing=True,
            autograph=False,
        )
        self._stepper = make_stepper(self.train_loss, len(net.param_layers), self.dtype, frac_bits)
        self._plain = PlainSGD(self.train_loss, self.dtype)
        self._metrics_fn = tf.function(self._metrics, autograph=False)
        self._table = tf.function(
            lambda seed: minibatch_table(seed, self.steps, self.n_train, self.batch_size)
        )

    # -- losses ---------------------------------------------------------------------------
    def train_loss(
        self,
        w: Sequence[tf.Tensor],
        theta: Sequence[tf.Tensor],
        t: tf.Tensor,
        batches: tf.Tensor,
    ) -> tf.Tensor:
        """``L(w, θ, t, batches)``: task loss on minibatch ``batches[t]`` + weight decay."""
        idx = tf.gather(batches, t)
        xb = tf.gather(self._x_train, idx)
        yb = tf.gather(self._y_train, idx)
        loss = task_loss(self.net, self.net.apply(w, xb), xb, yb)
        if len(theta):
            loss = loss + tf.cast(self.param.weight_decay_penalty(w, theta[0], t), loss.dtype)
        return loss

    def minibatches(self, seed: int) -> tf.Tensor:
        """The ``[T, B]`` minibatch table of training seed ``seed`` (the loss's data key)."""
        return self._table(tf.constant(int(seed), tf.int64))

    def val_loss(self, w: Sequence[tf.Tensor]) -> tf.Tensor:
        """``f(w)``: mean task loss on the validation set's fit part (the whole set when
        ``select_fraction`` is 0)."""
        x, y = self._fit
        w = [tf.cast(p, self.dtype) for p in w]
        return task_loss(self.net, self.net.apply(w, x), x, y)

    def selection_loss(self, raw: Raw | None, seeds: Sequence[int], whole: bool = False) -> float:
        """Mean loss on the validation set's select part after plain training on each seed.

        The tuner's estimate of generalisation: the hypergradient never sees the select part
        (when ``select_fraction > 0``) nor these seeds. ``inf`` when a run diverges. With
        ``whole``, the loss on the whole validation set instead (fit and select parts): what
        a plain search that no hypergradient follows (the coarse start) ranks by.
        """
        loss_fn = self._whole_val_fn if whole else self._select_fn
        from revhpo.optimizers.reversible import DivergenceError

        vals = []
        for s in seeds:
            try:
                w, _ = self.train(raw, s)
                v = float(loss_fn([tf.cast(p, self.dtype) for p in w]))
            except (DivergenceError, tf.errors.InvalidArgumentError, ValueError):
                return float("inf")
            if not np.isfinite(v):
                return float("inf")
            vals.append(v)
        return float(np.mean(vals)) if vals else float("inf")

    def _metrics(self, w: list[tf.Tensor], splits: tuple[str, ...]) -> dict[str, tf.Tensor]:
        out = {}
        for name in splits:
            x, y = self._splits[name]
            o = self.net.apply(w, x)
            out[f"{name}_loss"] = task_loss(self.net, o, x, y)
            if self.net.task != "reconstruction":
                hit = tf.cast(tf.equal(tf.argmax(o, 1, output_type=tf.int32), y), tf.float64)
                out[f"{name}_acc"] = tf.reduce_mean(hit)
        return out

    def metrics(self, w: Sequence[tf.Tensor], include_test: bool = True) -> dict[str, float]:
        """Loss (no weight decay) and accuracy of weights ``w`` on every split (the test set
        only with ``include_test``: figures shown while tuning runs never include it)."""
        splits = tuple(k for k in self._splits if include_test or k != "test")
        res = self._metrics_fn([tf.cast(p, self.dtype) for p in w], splits)
        return {k: float(v) for k, v in res.items()}

    # -- raw → training inputs -------------------------------------------------------------
    def initial_raw(self) -> dict[str, np.ndarray]:
        """The raw arrays at their initial values (a fresh float64 copy)."""
        return self.param.initial_raw()

    def _raw_tensors(self, raw: Raw | None) -> dict[str, tf.Tensor]:
        keys = set(self.param.initial_raw())
        raw = self.initial_raw() if raw is None else raw
        missing = keys - set(raw)
        if missing:
            raise ValueError(f"`raw` lacks tuned arrays {sorted(missing)}. Received: {sorted(raw)}")
        return {k: tf.convert_to_tensor(np.asarray(raw[k]), tf.float64) for k in sorted(keys)}

    def _inputs(
        self, raw_t: Mapping[str, tf.Tensor], seed: int
    ) -> tuple[Hypers, list[tf.Tensor], list[tf.Tensor]]:
        h = self.param.hypers(raw_t)
        w0 = self.param.init_weights(h.scales, self.net.init_params(int(seed), tf.float64))
        theta = [h.weight_decay] if h.weight_decay is not None else []
        return h, w0, theta

    # -- the contract ------------------------------------------------------------------------
    def evaluate(
        self,
        raw: Raw | None = None,
        seed: int = 0,
        callback: Callable[[str, int, int], None] | None = None,
    ) -> Evaluation:
        """Exact forward + reverse training; hypergradients w.r.t. every raw array.

        The schedules' hypergradients (``d_alpha``, ``d_gamma``, ``d_theta``, ``d_w0``) are
        pulled back to the raw arrays by one vector-Jacobian product of the parametrisation:
        ``d raw = J_αᵀ dα + J_γᵀ dγ + J_θᵀ dθ + J_w0ᵀ dw0``.

        Args:
            raw: raw arrays (default: the initial values).
            seed: training seed (initial weights and minibatches).
            callback: ``callback(phase, step, total)`` after each training step.

        Returns:
            An :class:`Evaluation`.

        Raises:
            DivergenceError: training diverged (non-finite, or fixed-point overflow).
            ExactnessError: the reverse pass was not exact (never silent).
        """
        return self.evaluate_many(raw, [seed], callback)[0]

    def evaluate_many(
        self,
        raw: Raw | None = None,
        seeds: Sequence[int] = (0,),
        callback: Callable[[str, int, int], None] | None = None,
    ) -> list[Evaluation]:
        """:meth:`evaluate` on several training seeds at once: their exact runs are replicas
        of one pass (:func:`~revhpo.optimizers.hypergradients`), each equal bit for bit to
        its own :meth:`evaluate`.

        Raises:
            DivergenceError: a seed's run diverged (``replica`` is its index in ``seeds`` when
                there are several).
            ExactnessError: a reverse pass was not exact (never silent).
        """
        raw_t = self._raw_tensors(raw)
        names = list(raw_t)
        tapes, inputs = [], []
        for seed in seeds:
            with tf.GradientTape() as tape:
                tape.watch([raw_t[k] for k in names])
                inputs.append(self._inputs(raw_t, seed))
            tapes.append(tape)
        h, _, theta = inputs[0]  # the schedules and θ do not depend on the seed
        results = hypergradients(
            self.train_loss,
            self.val_loss,
            [w0 for _, w0, _ in inputs],
            h.alpha,
            h.gamma,
            theta,
            keys=[self.minibatches(seed) for seed in seeds],
            dtype=self.dtype,
            frac_bits=self.frac_bits,
            max_denominator=self.max_denominator,
            callback=callback,
            stepper=self._stepper,
        )
        out = []
        for tape, (h, w0, theta), res in zip(tapes, inputs, results, strict=True):
            if not names:
                out.append(Evaluation(res.val_loss, {}, res))
                continue
            grads = tape.gradient(
                [h.alpha, h.gamma, *theta, *w0],
                [raw_t[k] for k in names],
                output_gradients=[
                    tf.cast(c, tf.float64)
                    for c in (res.d_alpha, res.d_gamma, *res.d_theta, *res.d_w0)
                ],
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            out.append(
                Evaluation(
                    res.val_loss, {k: g.numpy() for k, g in zip(names, grads, strict=True)}, res
                )
            )
        return out

    def train(self, raw: Raw | None = None, seed: int = 0) -> tuple[list[tf.Tensor], np.ndarray]:
        """Plain float SGD-momentum (no reversal): final weights and per-step training losses."""
        h, w0, theta = self._inputs(self._raw_tensors(raw), seed)
        return self._plain.run(w0, h.alpha, h.gamma, theta, key=self.minibatches(seed))

    def val_loss_only(self, raw: Raw | None = None, seed: int = 0) -> float:
        """``f(w_T)`` after plain float64 training (no reversal): the finite-difference oracle."""
        w, _ = self.train(raw, seed)
        return float(self.val_loss(w))

    def hypers_of(self, raw: Raw | None = None) -> dict[str, dict]:
        """Natural values of every group (JSON-able)."""
        return self.param.describe(self._raw_tensors(raw))


def _split_tensors(data: ArraySplits, dtype: tf.DType) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """The non-empty splits as (features in ``dtype``, int32 labels) constants."""
    out = {}
    for name in ("train", "val", "test"):
        x, y = getattr(data, f"x_{name}"), getattr(data, f"y_{name}")
        if x is not None and len(x):
            out[name] = (
                tf.constant(np.asarray(x), dtype),
                tf.constant(np.asarray(y).astype(np.int32)),
            )
    return out


def _fit_select(
    data: ArraySplits, dtype: tf.DType, fraction: float
) -> tuple[tuple[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The validation set's fit and select parts (both the whole set when ``fraction`` is 0).

    The select part is a fixed random subset (the same for every run of the same data), of
    ``round(fraction · n_val)`` examples, at least 1 and leaving at least 1 to fit on.
    """
    x, y = np.asarray(data.x_val), np.asarray(data.y_val).astype(np.int32)
    if not 0 <= fraction < 1:
        raise ValueError(f"`select_fraction` must be in [0, 1). Received: {fraction!r}")
    whole = (tf.constant(x, dtype), tf.constant(y))
    if fraction == 0:
        return whole, whole
    n = len(x)
    if n < 2:
        raise ValueError(
            f"`select_fraction` > 0 needs at least 2 validation examples. Received: {n}"
        )
    k = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng(0x5E1EC7).permutation(n)
    sel, fit = np.sort(perm[:k]), np.sort(perm[k:])
    return (
        (tf.constant(x[fit], dtype), tf.constant(y[fit])),
        (tf.constant(x[sel], dtype), tf.constant(y[sel])),
    )
