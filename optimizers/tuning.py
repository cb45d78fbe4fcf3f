"""The hyper-descent loop over arrays + a net + a hyperparameter parametrisation.

No files, no HTTP: :class:`TuningProblem` turns raw (unconstrained) hyperparameters into one
exact forward + reverse training run and pulls the hypergradients back to the raw arrays;
:func:`meta_step` does one meta-iteration (hypergradient, clipping, meta-optimizer update,
divergence handling) on an explicit :class:`MetaState`.

Training loss ``L(w, θ, t)`` = mean task loss on minibatch ``minibatch_indices(seed, t, n, B)``
+ ``½ Σ λ w²``; validation loss ``f(w)`` = mean task loss on the whole validation set. The task
loss is softmax cross-entropy (written with ``logsumexp`` so that it is twice differentiable)
for classifiers and ``½ mean ‖x̂ − x‖²`` for reconstruction nets (``net.task``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from optimizers.hyperparams import Parametrization
from optimizers.meta import MetaOptimizer, clip_by_global_norm, global_norm
from optimizers.reversible import (
    DivergenceError,
    HypergradResult,
    hypergradient,
    make_stepper,
    minibatch_indices,
)
from optimizers.unrolled import PlainSGD

__all__ = [
    "ArraySplits",
    "Evaluation",
    "MetaState",
    "TuningProblem",
    "initial_state",
    "meta_step",
    "training_seed",
]

#: Offset of the held-out evaluation seeds: tuning uses ``base + i`` for meta-iteration ``i``
#: (``i < 100_000``), evaluation uses ``base + EVAL_SEED_OFFSET + j``: the two never meet.
EVAL_SEED_OFFSET = 1_000_000


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
        hyper: the optimizer's :class:`~optimizers.HypergradResult`.
    """

    val_loss: float
    grads: dict[str, np.ndarray]
    hyper: HypergradResult


class TuningProblem:
    """A net, its data and a hyperparameter parametrisation: a function raw → (f, ∇f).

    Args:
        net: a ``nets`` net (``init_params``, ``apply``, ``param_layers``, ``param_shapes``).
        data: the arrays.
        parametrization: maps raw arrays to training schedules.
        batch_size: minibatch size B.
        dtype: dtype the net is evaluated in.
        frac_bits: fixed-point fractional bits of the exact optimizer.
        max_denominator: denominator bound of the momentum rationals.

    Attributes:
        raw: ``dict[str, tf.Variable]`` of the tuned raw arrays (start: initial values).
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
    ) -> None:
        self.net = net
        self.data = data
        self.param = parametrization
        self.steps = parametrization.layout.steps
        self.batch_size = int(batch_size)
        self.dtype = tf.as_dtype(dtype)
        self.frac_bits = frac_bits
        self.max_denominator = max_denominator
        self.task = getattr(net, "task", "classification")
        self.n_train = int(len(data.x_train))
        if not 1 <= self.batch_size <= self.n_train:
            raise ValueError(
                f"`batch_size` must be in [1, {self.n_train}] (the training set). "
                f"Received: batch_size={batch_size}"
            )
        self._splits: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}
        for name in ("train", "val", "test"):
            x = getattr(data, f"x_{name}")
            y = getattr(data, f"y_{name}")
            if x is not None and len(x):
                self._splits[name] = (
                    tf.constant(np.asarray(x), self.dtype),
                    tf.constant(np.asarray(y).astype(np.int32)),
                )
        self._x_train, self._y_train = self._splits["train"]
        self._seed = tf.Variable(0, dtype=tf.int64, trainable=False, name="training_seed")
        self.raw: dict[str, tf.Variable] = {
            k: tf.Variable(v, dtype=tf.float64, name=k)
            for k, v in parametrization.initial_raw().items()
        }
        self._stepper = make_stepper(self.train_loss, len(net.param_layers), self.dtype, frac_bits)
        self._plain = PlainSGD(self.train_loss, self.dtype)
        self._metrics_fn = tf.function(self._metrics, reduce_retracing=True)

    # -- losses ---------------------------------------------------------------------------
    def task_loss(self, out: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean per-example loss (twice differentiable)."""
        if self.task == "reconstruction":
            return 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(out - tf.cast(x, out.dtype)), -1))
        picked = tf.reduce_sum(out * tf.one_hot(y, tf.shape(out)[-1], dtype=out.dtype), axis=1)
        return tf.reduce_mean(tf.reduce_logsumexp(out, axis=1) - picked)

    def train_loss(self, w: Sequence[tf.Tensor], theta: Sequence[tf.Tensor], t: tf.Tensor):
        """``L(w, θ, t)``: task loss on minibatch ``t`` of the current seed + weight decay."""
        idx = minibatch_indices(self._seed, t, self.n_train, self.batch_size)
        xb = tf.gather(self._x_train, idx)
        yb = tf.gather(self._y_train, idx)
        loss = self.task_loss(self.net.apply(w, xb), xb, yb)
        if len(theta):
            loss = loss + tf.cast(self.param.weight_decay_penalty(w, theta[0], t), loss.dtype)
        return loss

    def val_loss(self, w: Sequence[tf.Tensor]) -> tf.Tensor:
        """``f(w)``: mean task loss on the validation set."""
        x, y = self._splits["val"]
        w = [tf.cast(p, self.dtype) for p in w]
        return self.task_loss(self.net.apply(w, x), x, y)

    def _metrics(self, w: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {}
        for name, (x, y) in self._splits.items():
            o = self.net.apply(w, x)
            out[f"{name}_loss"] = self.task_loss(o, x, y)
            if self.task != "reconstruction":
                hit = tf.cast(tf.equal(tf.argmax(o, 1, output_type=tf.int32), y), tf.float64)
                out[f"{name}_acc"] = tf.reduce_mean(hit)
        return out

    def metrics(self, w: Sequence[tf.Tensor]) -> dict[str, float]:
        """Loss (no weight decay) and accuracy of weights ``w`` on every split."""
        res = self._metrics_fn([tf.cast(p, self.dtype) for p in w])
        return {k: float(v) for k, v in res.items()}

    # -- raw → training inputs -------------------------------------------------------------
    def _raw_tensors(self, raw: Mapping[str, Any] | None) -> dict[str, tf.Tensor]:
        raw = self.raw if raw is None else raw
        missing = set(self.raw) - set(raw)
        if missing:
            raise ValueError(f"`raw` lacks tuned arrays {sorted(missing)}. Received: {sorted(raw)}")
        return {k: tf.convert_to_tensor(np.asarray(raw[k]), tf.float64) for k in self.raw}

    def _inputs(self, raw_t: Mapping[str, tf.Tensor], seed: int):
        h = self.param.hypers(raw_t)
        w0 = self.param.init_weights(h.scales, self.net.init_params(int(seed), tf.float64))
        theta = [h.weight_decay] if h.weight_decay is not None else []
        return h, w0, theta

    # -- the contract ------------------------------------------------------------------------
    def evaluate(
        self,
        raw: Mapping[str, Any] | None = None,
        seed: int = 0,
        callback: Callable[[str, int, int], None] | None = None,
    ) -> Evaluation:
        """Exact forward + reverse training; hypergradients w.r.t. every raw array.

        Args:
            raw: raw arrays (default: ``self.raw``).
            seed: training seed (initial weights and minibatches).
            callback: ``callback(phase, step, total)`` after each training step.

        Returns:
            An :class:`Evaluation`.

        Raises:
            DivergenceError: training diverged (non-finite, or fixed-point overflow).
            ExactnessError: the reverse pass was not exact (never silent).
        """
        raw_t = self._raw_tensors(raw)
        keys = list(raw_t)
        self._seed.assign(int(seed))
        with tf.GradientTape() as tape:
            tape.watch([raw_t[k] for k in keys])
            h, w0, theta = self._inputs(raw_t, seed)
        res = hypergradient(
            self.train_loss,
            self.val_loss,
            w0,
            h.alpha,
            h.gamma,
            theta,
            dtype=self.dtype,
            frac_bits=self.frac_bits,
            max_denominator=self.max_denominator,
            callback=callback,
            stepper=self._stepper,
        )
        if not keys:
            return Evaluation(res.val_loss, {}, res)
        # Pull back: d raw = J_alpha^T d_alpha + J_gamma^T d_gamma + J_theta^T d_theta + ...
        targets = [h.alpha, h.gamma, *theta, *w0]
        cotangents = [res.d_alpha, res.d_gamma, *res.d_theta, *res.d_w0]
        grads = tape.gradient(
            targets,
            [raw_t[k] for k in keys],
            output_gradients=[tf.cast(c, tf.float64) for c in cotangents],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return Evaluation(
            res.val_loss, {k: g.numpy() for k, g in zip(keys, grads, strict=True)}, res
        )

    def train(
        self, raw: Mapping[str, Any] | None = None, seed: int = 0
    ) -> tuple[list[tf.Tensor], np.ndarray]:
        """Plain float SGD-momentum (no reversal): final weights and per-step training losses."""
        raw_t = self._raw_tensors(raw)
        self._seed.assign(int(seed))
        h, w0, theta = self._inputs(raw_t, seed)
        return self._plain.run(w0, h.alpha, h.gamma, theta)

    def val_loss_only(self, raw: Mapping[str, Any] | None = None, seed: int = 0) -> float:
        """``f(w_T)`` after plain float64 training (no reversal): the finite-difference oracle."""
        w, _ = self.train(raw, seed)
        return float(self.val_loss(w))

    def hypers_of(self, raw: Mapping[str, Any] | None = None) -> dict[str, dict]:
        """Natural values of every group (JSON-able)."""
        return self.param.describe(self._raw_tensors(raw))


# ----------------------------------------------------------------------------- meta-iterations
@dataclass
class MetaState:
    """Everything the loop needs to continue exactly where it stopped (checkpointed).

    Attributes:
        iteration: meta-iterations done (also the position in the seed sequence).
        raw: the raw hyperparameters (float64 arrays).
        opt_state: the meta-optimizer's state.
        step_scale: multiplier of the meta step size (halved on each backtrack).
        backtracks: backtracks done so far.
        prev_raw, prev_opt_state: the state before the last update (for backtracking).
        history: one record per meta-iteration.
        stop_reason: set when the loop must stop (divergence it cannot recover from).
    """

    iteration: int
    raw: dict[str, np.ndarray]
    opt_state: Any
    step_scale: float = 1.0
    backtracks: int = 0
    prev_raw: dict[str, np.ndarray] | None = None
    prev_opt_state: Any = None
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None


def initial_state(problem: TuningProblem, opt: MetaOptimizer) -> MetaState:
    """The state before the first meta-iteration (raw at the initial values)."""
    raw = {k: np.array(v.numpy(), np.float64) for k, v in problem.raw.items()}
    return MetaState(iteration=0, raw=raw, opt_state=opt.init(raw))


def _summary(values: Any) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def meta_step(
    problem: TuningProblem,
    opt: MetaOptimizer,
    state: MetaState,
    *,
    seed: int,
    clip_norm: float | None = None,
    on_divergence: str = "stop",
    max_backtracks: int = 5,
    callback: Callable[[str, int, int], None] | None = None,
) -> tuple[MetaState, dict[str, Any]]:
    """One meta-iteration: exact hypergradient at ``state.raw``, clip, update.

    A diverged training run (or a non-finite hypergradient) either stops the loop
    (``state.stop_reason`` is set) or, with ``on_divergence="backtrack"``, restores the
    hyperparameters of the previous iteration and halves the meta step size.

    Args:
        problem: the problem.
        opt: the meta-optimizer.
        state: the current state (not modified).
        seed: training seed of this meta-iteration.
        clip_norm: clip the meta-gradient to this global norm (None: no clipping).
        on_divergence: ``"stop"`` or ``"backtrack"``.
        max_backtracks: backtracks allowed over the whole run.
        callback: per training step ``callback(phase, step, total)``.

    Returns:
        ``(new_state, record)``: the record describes this meta-iteration (JSON-able).
    """
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"iteration": state.iteration, "seed": int(seed)}
    hyp = problem.param.natural({k: tf.constant(v) for k, v in state.raw.items()})
    rec["hypers"] = {
        name: _summary(hyp[name]) for name, g in problem.param.groups.items() if g.tuned
    }
    failure = None
    try:
        ev = problem.evaluate(state.raw, seed, callback=callback)
        if not np.isfinite(ev.val_loss) or not all(
            np.all(np.isfinite(g)) for g in ev.grads.values()
        ):
            failure = (problem.steps, "non-finite hypergradient")
    except DivergenceError as exc:
        failure = (exc.step, exc.reason)
    if failure is not None:
        rec.update(diverged=True, divergence_step=int(failure[0]), divergence_reason=failure[1])
        rec["time_s"] = time.perf_counter() - t0
        can_backtrack = (
            on_divergence == "backtrack"
            and state.prev_raw is not None
            and state.backtracks < max_backtracks
        )
        if can_backtrack:
            rec["action"] = "backtrack"
            new = replace(
                state,
                iteration=state.iteration + 1,
                raw=state.prev_raw,
                opt_state=state.prev_opt_state,
                step_scale=state.step_scale / 2,
                backtracks=state.backtracks + 1,
                prev_raw=None,
                prev_opt_state=None,
                history=[*state.history, rec],
            )
        else:
            rec["action"] = "stop"
            why = (
                "it diverged with the initial hyperparameters"
                if state.prev_raw is None and on_divergence == "backtrack"
                else f"on_divergence={on_divergence!r}"
                if on_divergence == "stop"
                else f"max_backtracks={max_backtracks} reached"
            )
            new = replace(
                state,
                iteration=state.iteration + 1,
                history=[*state.history, rec],
                stop_reason=f"training diverged at step {failure[0]} ({failure[1]}); "
                f"stopped: {why}",
            )
        return new, rec

    res = ev.hyper
    m = problem.metrics(res.w_final)
    rec.update(diverged=False, objective=ev.val_loss, **m)
    rec["final_minibatch_loss"] = float(res.train_losses[-1])
    norms = {}
    for name, g in problem.param.groups.items():
        if g.tuned:
            norms[name] = float(np.linalg.norm(ev.grads[g.raw_key]))
    rec["grad_norms"] = norms
    clipped, norm = clip_by_global_norm(ev.grads, clip_norm)
    rec["grad_norm"] = norm
    rec["clipped"] = bool(clip_norm is not None and norm > clip_norm)
    rec["step_scale"] = state.step_scale
    rec["certificate"] = res.certificate.to_dict()
    rec["bits_per_weight"] = res.certificate.bits_held
    rec["info_bound_bits"] = res.certificate.info_bound_bits
    t1 = time.perf_counter()
    updates, opt_state = opt.update(clipped, state.opt_state, state.step_scale)
    raw = {k: state.raw[k] + updates[k] for k in state.raw}
    rec["timings"] = {
        "forward_s": res.timings.get("forward_s"),
        "reverse_s": res.timings.get("reverse_s"),
        "update_s": time.perf_counter() - t1,
        "total_s": time.perf_counter() - t0,
    }
    rec["update_norm"] = global_norm(updates)
    new = replace(
        state,
        iteration=state.iteration + 1,
        raw=raw,
        opt_state=opt_state,
        prev_raw=state.raw,
        prev_opt_state=state.opt_state,
        history=[*state.history, rec],
    )
    return new, rec
