"""The tuning loop: hyper-descent on a :class:`~revhpo.optimizers.TuningProblem`.

No files, no HTTP: the state is explicit (:class:`MetaState`), progress goes to a callback as
JSON-able events, checkpoints go to a hook as state (the caller decides where they are kept),
and the loop stops on request, at a wall-time limit, or when training diverges beyond repair::

    problem = TuningProblem(net, ArraySplits(...), parametrization, batch_size=50)
    outcome = Tuner(problem, TunerConfig(iterations=30)).run()
    outcome.raw            # the tuned raw hyperparameters
    outcome.evaluation     # initial vs tuned, on held-out training seeds

Invariants: meta-iteration ``i`` trains with seed ``training_seed(seed, i, fresh_seed)`` and the
final evaluation with seeds ``seed + EVAL_SEED_OFFSET + j``, so the two never meet; a resumed
run (``run(state)`` with a checkpointed state) gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import tensorflow as tf
from revhpo.optimizers.meta import (
    MetaOptimizer,
    clip_by_global_norm,
    global_norm,
    make_meta_optimizer,
)
from revhpo.optimizers.problem import EVAL_SEED_OFFSET, Evaluation, TuningProblem, training_seed
from revhpo.optimizers.reversible import DivergenceError
from revhpo.optimizers.state import MetaState
from revhpo.precise import FixedPointOverflowError

from revhpo.runtime import require_exact_ops

__all__ = ["Cancelled", "MetaState", "Tuner", "TunerConfig", "TuningOutcome"]

Event = dict[str, Any]
#: Keys of a meta-iteration record shown in progress events. Test-set figures are never among
#: them: a user must not select hyperparameters on the test set while tuning runs.
EVENT_KEYS = ("val_loss", "train_loss", "val_acc", "train_acc", "grad_norm", "diverged")
#: ``divergence_kind`` of a record whose weights left the fixed-point range before training
#: (e.g. a huge init scale, or too many fractional bits for the weights' size).
FIXED_POINT_RANGE = "fixed_point_range"


class Cancelled(Exception):
    """``should_stop()`` returned True; the last checkpointed state allows a resume."""


@dataclass(frozen=True)
class TunerConfig:
    """The outer loop's settings (the job spec's ``meta`` section, plus the base seed).

    Attributes:
        iterations: meta-iterations.
        optimizer: ``"adam"`` or ``"sgd"`` on the raw hyperparameters.
        step_size, momentum, beta1, beta2: the meta-optimizer's settings.
        clip_norm: clip each hypergradient to this global norm (None: no clipping).
        on_divergence: ``"stop"``, or ``"backtrack"``: restore the previous hyperparameters,
            halve the meta step size and go on (at most ``max_backtracks`` times).
        max_backtracks: backtracks allowed over the whole run.
        seed: base training seed.
        fresh_seed: a new training seed every meta-iteration (else always ``seed``).
        eval_seeds: held-out training seeds for the final evaluation.
        max_wall_time_s: stop (status ``"stopped"``) once tuning has run this long.
    """

    iterations: int = 50
    optimizer: Literal["adam", "sgd"] = "adam"
    step_size: float = 0.05
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    clip_norm: float | None = 10.0
    on_divergence: Literal["stop", "backtrack"] = "backtrack"
    max_backtracks: int = 5
    seed: int = 0
    fresh_seed: bool = True
    eval_seeds: int = 5
    max_wall_time_s: float | None = None

    def meta_optimizer(self) -> MetaOptimizer:
        """The meta-optimizer these settings describe."""
        return make_meta_optimizer(
            self.optimizer, self.step_size, momentum=self.momentum, b1=self.beta1, b2=self.beta2
        )

    def eval_seed_list(self) -> list[int]:
        """The held-out evaluation seeds (disjoint from every tuning seed)."""
        return [self.seed + EVAL_SEED_OFFSET + j for j in range(self.eval_seeds)]


@dataclass
class TuningOutcome:
    """What :meth:`Tuner.run` returns.

    Attributes:
        status: ``completed``, ``stopped`` (wall-time limit) or ``diverged``.
        stop_reason: why it stopped early (None when completed).
        state: the final :class:`MetaState` (``state.raw``: the tuned raw hyperparameters).
        initial_raw: the raw hyperparameters tuning started from.
        evaluation: initial vs tuned on held-out training seeds (means, stds, per seed).
        curves: per-step training losses of both on the first held-out seed.
        timings: ``tuning_s``, ``evaluation_s``, ``first_iteration_s`` (includes tracing and
            compilation), mean forward / reverse seconds.
    """

    status: str
    stop_reason: str | None
    state: MetaState
    initial_raw: dict[str, np.ndarray]
    evaluation: dict[str, Any]
    curves: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def raw(self) -> dict[str, np.ndarray]:
        """The tuned raw hyperparameters."""
        return self.state.raw


class _Clock:
    """Durations of this process's meta-iterations; the first includes tracing/compilation,
    so the ETA is taken from the later ones only (None until there is one)."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def eta(self, remaining: int) -> float | None:
        steady = self.durations[1:]
        return float(np.mean(steady)) * remaining if steady else None


class Tuner:
    """Hyper-descent on a problem's raw hyperparameters.

    Args:
        problem: the :class:`TuningProblem`.
        config: the loop's settings.
        callback: receives JSON-able events: ``{"type": "step", "phase", "meta_iteration",
            "step", "steps"}`` (every 10 training steps), ``{"type": "meta", "meta_iteration",
            "meta_iterations", "val_loss", "train_loss", ..., "eta_s"}`` (no test-set figures),
            ``{"type": "evaluation", "initial", "final"}``.
        should_stop: polled before every meta-iteration and before the final evaluation.
        on_checkpoint: receives the state after every meta-iteration (to persist it).
    """

    def __init__(
        self,
        problem: TuningProblem,
        config: TunerConfig | None = None,
        *,
        callback: Callable[[Event], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_checkpoint: Callable[[MetaState], None] | None = None,
    ) -> None:
        self.problem = problem
        self.config = config or TunerConfig()
        self.opt = self.config.meta_optimizer()
        self._emit = callback or (lambda event: None)
        self._stop = should_stop or (lambda: False)
        self._checkpoint = on_checkpoint or (lambda state: None)

    def initial_state(self) -> MetaState:
        """The state before the first meta-iteration (raw at the initial values)."""
        raw = self.problem.initial_raw()
        return MetaState(iteration=0, raw=raw, opt_state=self.opt.init(raw))

    # -- one meta-iteration ----------------------------------------------------------------
    def step(self, state: MetaState) -> tuple[MetaState, dict[str, Any]]:
        """One meta-iteration: exact hypergradient at ``state.raw``, clip, update.

        A diverged training run (or a non-finite hypergradient) either stops the loop
        (``stop_reason`` is set) or backtracks (see :class:`TunerConfig`).

        Returns:
            ``(new_state, record)``; ``state`` is not modified; the record is JSON-able.
        """
        t0 = time.perf_counter()
        seed = training_seed(self.config.seed, state.iteration, self.config.fresh_seed)
        rec: dict[str, Any] = {"iteration": state.iteration, "seed": int(seed)}
        rec["hypers"] = _hyper_summary(self.problem, state.raw)
        ev, failure = self._hypergradient(state, seed)
        if failure is not None:
            rec.update(
                diverged=True,
                divergence_step=int(failure[0]),
                divergence_reason=failure[1],
                divergence_kind=failure[2],
            )
            rec["time_s"] = time.perf_counter() - t0
            return self._after_divergence(state, rec, failure), rec
        rec.update(_evaluation_record(self.problem, ev))
        clipped, norm = clip_by_global_norm(ev.grads, self.config.clip_norm)
        rec.update(
            grad_norm=norm,
            clipped=bool(self.config.clip_norm is not None and norm > self.config.clip_norm),
        )
        rec["step_scale"] = state.step_scale
        t1 = time.perf_counter()
        updates, opt_state = self.opt.update(clipped, state.opt_state, state.step_scale)
        rec["update_norm"] = global_norm(updates)
        rec["timings"] = {
            "forward_s": ev.hyper.timings.get("forward_s"),
            "reverse_s": ev.hyper.timings.get("reverse_s"),
            "update_s": time.perf_counter() - t1,
            "total_s": time.perf_counter() - t0,
        }
        new = replace(
            state,
            iteration=state.iteration + 1,
            raw={k: state.raw[k] + updates[k] for k in state.raw},
            opt_state=opt_state,
            prev_raw=state.raw,
            prev_opt_state=state.opt_state,
            history=[*state.history, rec],
        )
        return new, rec

    def _hypergradient(
        self, state: MetaState, seed: int
    ) -> tuple[Evaluation | None, tuple[int, str, str] | None]:
        """The evaluation, or ``(step, reason, kind)`` when training or its hypergradient
        failed; ``kind`` is :data:`FIXED_POINT_RANGE` when a weight is outside the fixed-point
        range (the initial weights: a divergence at step 0, never a crash), else
        ``"divergence"``."""

        def on_step(phase: str, step: int, total: int) -> None:
            if step == total or step % 10 == 0:
                self._emit(
                    {
                        "type": "step",
                        "phase": phase,
                        "meta_iteration": state.iteration,
                        "step": step,
                        "steps": total,
                    }
                )

        try:
            ev = self.problem.evaluate(state.raw, seed, callback=on_step)
        except DivergenceError as exc:
            return None, (exc.step, exc.reason, "divergence")
        except FixedPointOverflowError as exc:
            reason = " ".join(str(exc).split())  # one line
            return None, (
                int(getattr(exc, "step", None) or 0),
                f"outside the fixed-point range: {reason}",
                FIXED_POINT_RANGE,
            )
        finite = np.isfinite(ev.val_loss) and all(np.all(np.isfinite(g)) for g in ev.grads.values())
        if finite:
            return ev, None
        return None, (self.problem.steps, "non-finite hypergradient", "divergence")

    def _after_divergence(
        self, state: MetaState, rec: dict[str, Any], failure: tuple[int, str, str]
    ) -> MetaState:
        """Backtrack to the previous hyperparameters with half the step, or stop."""
        cfg = self.config
        done = {"iteration": state.iteration + 1, "history": [*state.history, rec]}
        if (
            cfg.on_divergence == "backtrack"
            and state.prev_raw is not None
            and state.backtracks < cfg.max_backtracks
        ):
            rec["action"] = "backtrack"
            return replace(
                state,
                **done,
                raw=state.prev_raw,
                opt_state=state.prev_opt_state,
                step_scale=state.step_scale / 2,
                backtracks=state.backtracks + 1,
                prev_raw=None,
                prev_opt_state=None,
            )
        rec["action"] = "stop"
        if cfg.on_divergence == "stop":
            why = "on_divergence='stop'"
        elif state.prev_raw is None:
            why = "it diverged with the initial hyperparameters"
        else:
            why = f"max_backtracks={cfg.max_backtracks} reached"
        reason = f"training diverged at step {failure[0]} ({failure[1]}); stopped: {why}"
        return replace(state, **done, stop_reason=reason)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, state: MetaState | None = None) -> TuningOutcome:
        """Run (or resume from ``state``) to the end, then evaluate on held-out seeds.

        Raises:
            Cancelled: ``should_stop()`` returned True (the last checkpoint allows a resume).
            ExactnessError: a reverse pass was not exact (a bug; never silent).
        """
        require_exact_ops()
        cfg = self.config
        state = state or self.initial_state()
        clock = _Clock()
        status, stop_reason = "completed", None
        while state.iteration < cfg.iterations and not state.stop_reason:
            if self._stop():
                raise Cancelled(f"cancelled before meta-iteration {state.iteration}")
            if cfg.max_wall_time_s is not None and state.tuning_s >= cfg.max_wall_time_s:
                status = "stopped"
                stop_reason = (
                    f"limits.max_wall_time_s={cfg.max_wall_time_s} reached after "
                    f"{state.iteration} meta-iterations"
                )
                break
            state = self._timed_step(state, clock)
        if state.stop_reason:
            status, stop_reason = "diverged", state.stop_reason
        if self._stop():
            raise Cancelled(f"cancelled before the final evaluation ({state.iteration} done)")
        return self._finish(status, stop_reason, state, clock)

    def _timed_step(self, state: MetaState, clock: _Clock) -> MetaState:
        t0 = time.perf_counter()
        state, rec = self.step(state)
        dt = time.perf_counter() - t0
        clock.durations.append(dt)
        state = replace(state, tuning_s=state.tuning_s + dt)
        self._checkpoint(state)
        event = {
            "type": "meta",
            "meta_iteration": rec["iteration"],
            "meta_iterations": self.config.iterations,
            **{k: rec.get(k) for k in EVENT_KEYS},
            "eta_s": clock.eta(self.config.iterations - state.iteration),
        }
        if len(clock.durations) == 1:
            event["first_iteration_s"] = dt  # includes tracing and compilation
        self._emit(event)
        return state

    def _finish(
        self, status: str, stop_reason: str | None, state: MetaState, clock: _Clock
    ) -> TuningOutcome:
        t0 = time.perf_counter()
        raw0 = self.problem.initial_raw()
        seeds = self.config.eval_seed_list()
        evaluation: dict[str, Any] = {"seeds": seeds}
        if seeds:
            evaluation["initial"] = self.evaluate(raw0, seeds)
            evaluation["final"] = self.evaluate(state.raw, seeds)
        curves = self._curves(raw0, state.raw, seeds[0] if seeds else self.config.seed)
        self._emit({"type": "evaluation", **{k: v for k, v in evaluation.items() if k != "seeds"}})
        ok = [r for r in state.history if not r.get("diverged") and "timings" in r]
        timings = {
            "tuning_s": state.tuning_s,
            "evaluation_s": time.perf_counter() - t0,
            "first_iteration_s": clock.durations[0] if clock.durations else None,
            "mean_forward_s": _mean([r["timings"]["forward_s"] for r in ok]),
            "mean_reverse_s": _mean([r["timings"]["reverse_s"] for r in ok]),
        }
        return TuningOutcome(status, stop_reason, state, raw0, evaluation, curves, timings)

    # -- held-out evaluation -----------------------------------------------------------------
    def evaluate(self, raw: Mapping[str, Any], seeds: list[int]) -> dict[str, Any]:
        """Plain training with ``raw`` on each seed; loss and accuracy on every split.

        A diverged run is a result (``"diverged": true``), not a crash; means and standard
        deviations are over the finite runs.
        """
        per_seed = [{"seed": s, **self._metrics_or_divergence(raw, s)} for s in seeds]
        out: dict[str, Any] = {"per_seed": per_seed}
        for key in ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"):
            vals = [p[key] for p in per_seed if key in p and np.isfinite(p[key])]
            if vals:
                out[f"{key}_mean"] = float(np.mean(vals))
                out[f"{key}_std"] = float(np.std(vals))
        return out

    def _metrics_or_divergence(self, raw: Mapping[str, Any], seed: int) -> dict[str, Any]:
        try:
            w, _ = self.problem.train(raw, seed)
        except (DivergenceError, tf.errors.InvalidArgumentError, ValueError) as exc:
            return {"diverged": True, "error": str(exc)}
        m: dict[str, Any] = self.problem.metrics(w)
        if not all(np.isfinite(v) for v in m.values()):
            m["diverged"] = True
        return m

    def _curves(self, raw0: Mapping[str, Any], raw: Mapping[str, Any], seed: int) -> dict:
        curves: dict[str, Any] = {"seed": seed}
        for key, r in (("initial", raw0), ("final", raw)):
            try:
                curves[key] = self.problem.train(r, seed)[1].tolist()
            except (DivergenceError, tf.errors.InvalidArgumentError, ValueError) as exc:
                curves[key] = []
                curves[f"{key}_error"] = str(exc)
        return curves


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _hyper_summary(problem: TuningProblem, raw: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Mean, min and max of every tuned group's natural values."""
    nat = problem.param.natural({k: tf.constant(v) for k, v in raw.items()})
    out = {}
    for name, g in problem.param.groups.items():
        if g.tuned:
            a = np.asarray(nat[name], np.float64)
            out[name] = {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
    return out


def _evaluation_record(problem: TuningProblem, ev: Evaluation) -> dict[str, Any]:
    """What a successful meta-iteration records: objective, metrics, gradient norms, proof."""
    res = ev.hyper
    rec: dict[str, Any] = {"diverged": False, "objective": ev.val_loss}
    rec.update(problem.metrics(res.w_final))
    rec["final_minibatch_loss"] = float(res.train_losses[-1])
    rec["grad_norms"] = {
        name: float(np.linalg.norm(ev.grads[g.raw_key]))
        for name, g in problem.param.groups.items()
        if g.tuned
    }
    rec["certificate"] = res.certificate.to_dict()
    rec["bits_per_weight"] = res.certificate.bits_held
    rec["info_bound_bits"] = res.certificate.info_bound_bits
    return rec
