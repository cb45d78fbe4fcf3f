"""The tuning loop: hyper-descent on a :class:`~revhpo.optimizers.TuningProblem`.

No files, no HTTP: the state is explicit (:class:`MetaState`), progress goes to a callback as
JSON-able events, checkpoints go to a hook as state (the caller decides where they are kept),
and the loop stops on request, at a wall-time limit, or when training diverges beyond repair::

    problem = TuningProblem(net, ArraySplits(...), parametrization, batch_size=50)
    outcome = Tuner(problem, TunerConfig(iterations=30)).run()
    outcome.raw            # the tuned raw hyperparameters
    outcome.evaluation     # initial vs tuned, on held-out training seeds

The loop, with its default settings:

1. **Start.** A coarse grid of constant (α, γ) around the init values, each point trained
   plainly on the selection seeds; hyper-descent starts from the best point (``start="init"``:
   from the init values).
2. **Descend.** Each meta-iteration averages the exact hypergradient over
   ``seeds_per_iteration`` fresh training seeds (lower variance), clips it, and takes an Adam
   step whose size decays (cosine) over the run.
3. **Select.** After every step the new iterate's *selection estimate* is computed: the loss on
   the validation set's select part (which the hypergradient never sees, see
   :class:`TuningProblem`) after plain training on the selection seeds. The loop keeps the
   iterate with the lowest estimate, returns it (not merely the last one), goes back to it with
   half the step when an iterate is worse by more than ``backtrack_tol``, and stops when the
   estimate has not improved for ``patience`` meta-iterations.

Invariants: meta-iteration ``i`` trains with seeds ``training_seed(seed, i·S + j, fresh_seed)``
(``j < S``), the selection estimate with ``seed + SELECT_SEED_OFFSET + j`` and the final
evaluation with ``seed + EVAL_SEED_OFFSET + j``, so the three never meet; a resumed run
(``run(state)`` with a checkpointed state) gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import tensorflow as tf
from revhpo.optimizers.checkpoint import to_jsonable
from revhpo.optimizers.meta import (
    MetaOptimizer,
    clip_by_global_norm,
    global_norm,
    make_meta_optimizer,
    noise_normalized,
)
from revhpo.optimizers.problem import (
    EVAL_SEED_OFFSET,
    MAX_TUNING_SEEDS,
    SELECT_SEED_OFFSET,
    Evaluation,
    TuningProblem,
    training_seed,
)
from revhpo.optimizers.reversible import DivergenceError
from revhpo.optimizers.state import MetaState
from revhpo.precise import FixedPointOverflowError

from revhpo.runtime import require_exact_ops

__all__ = [
    "Cancelled",
    "MetaState",
    "Tuner",
    "TunerConfig",
    "TuningOutcome",
    "coarse_points",
    "edge_points",
]

Event = dict[str, Any]
#: Keys of a meta-iteration record shown in progress events. Test-set figures are never among
#: them: a user must not select hyperparameters on the test set while tuning runs.
EVENT_KEYS = (
    "objective",
    "select_loss",
    "val_loss",
    "train_loss",
    "val_acc",
    "train_acc",
    "grad_norm",
    "diverged",
)
#: The coarse start's learning rates, as multiples of the init value.
COARSE_LEARNING_RATE_FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: How many of the coarse grid's best points (on ``coarse_seeds`` seeds) are then compared on
#: every selection seed; the best of them is the start.
COARSE_FINALISTS = 4
#: The coarse start's momentum decays, as multiples of the init value's ``1 − γ``.
COARSE_ONE_MINUS_MOMENTUM_FACTORS = (5.0, 2.0, 1.0, 0.5)
#: When the coarse grid's best point lies on its edge (the largest or smallest α, the smallest
#: γ), the grid grows past that edge (α × 2 or ÷ 2.5, ``1 − γ`` × 2) up to this many times,
#: so that an init value far from the optimum does not pin the start to the grid's border.
COARSE_EDGE_EXTENSIONS = 3
#: The smallest momentum decay the coarse start tries.
COARSE_MIN_MOMENTUM = 0.05
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
        seeds_per_iteration: S, training seeds each hypergradient is averaged over.
        start: ``"coarse"`` (a small grid of constant α, γ first, see
            :func:`coarse_points`) or ``"init"``.
        select_seeds: training seeds of the selection estimate.
        coarse_seeds: how many of those seeds each point of the coarse start trains on.
        patience: stop when the selection estimate has not improved for this many
            meta-iterations (0: never stop early).
        backtrack_tol: go back to the best iterate (half the step) when an iterate's estimate
            is worse than the best's by more than this fraction.
        step_decay: ``"cosine"`` (the step falls to a tenth over the run) or ``"none"``.
    """

    iterations: int = 20
    optimizer: Literal["adam", "sgd", "snr"] = "adam"
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
    seeds_per_iteration: int = 4
    start: Literal["coarse", "init"] = "coarse"
    select_seeds: int = 20
    coarse_seeds: int = 3
    patience: int = 8
    backtrack_tol: float = 0.1
    step_decay: Literal["none", "cosine"] = "cosine"

    def __post_init__(self) -> None:
        if min(self.seeds_per_iteration, self.select_seeds, self.coarse_seeds) < 1:
            raise ValueError(
                "`seeds_per_iteration`, `select_seeds` and `coarse_seeds` must be ≥ 1. "
                f"Received: {self.seeds_per_iteration}, {self.select_seeds}, {self.coarse_seeds}"
            )
        if self.iterations * self.seeds_per_iteration > MAX_TUNING_SEEDS:
            raise ValueError(
                f"`iterations` × `seeds_per_iteration` must be at most {MAX_TUNING_SEEDS} (the "
                f"tuning seeds). Received: {self.iterations} × {self.seeds_per_iteration}"
            )

    def tuning_seeds(self, iteration: int) -> list[int]:
        """The training seeds of meta-iteration ``iteration``'s hypergradient."""
        s = self.seeds_per_iteration
        return [training_seed(self.seed, iteration * s + j, self.fresh_seed) for j in range(s)]

    def select_seed_list(self) -> list[int]:
        """The selection estimate's seeds (disjoint from tuning and evaluation seeds)."""
        return [self.seed + SELECT_SEED_OFFSET + j for j in range(self.select_seeds)]

    def step_factor(self, iteration: int) -> float:
        """The decay of the meta step at ``iteration`` (1 at the start)."""
        if self.step_decay == "none" or self.iterations <= 1:
            return 1.0
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * iteration / self.iterations))

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
        evaluation: initial vs tuned (the selected iterate) on held-out training seeds
            (means, stds, per seed).
        curves: per-step training losses of both on the first held-out seed.
        timings: ``tuning_s``, ``evaluation_s``, ``first_iteration_s`` (includes tracing and
            compilation), mean forward / reverse seconds.
        selection: which iterate was returned and why (``iteration``, ``select_loss``,
            ``last_iteration``, ``last_select_loss``, ``stopped_early``, ``reason``, ``start``).
    """

    status: str
    stop_reason: str | None
    state: MetaState
    initial_raw: dict[str, np.ndarray]
    evaluation: dict[str, Any]
    curves: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def raw(self) -> dict[str, np.ndarray]:
        """The tuned raw hyperparameters: the selected iterate (see ``selection``)."""
        return _selected_raw(self.state)

    @property
    def last_raw(self) -> dict[str, np.ndarray]:
        """The last iterate's raw hyperparameters (not necessarily the selected one)."""
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
        """The state before the start is chosen (raw at the initial values)."""
        raw = self.problem.initial_raw()
        return MetaState(iteration=0, raw=raw, opt_state=self.opt.init(raw))

    # -- the start ---------------------------------------------------------------------------
    def choose_start(self, state: MetaState) -> MetaState:
        """Pick where hyper-descent starts and compute its selection estimate.

        With ``start="coarse"`` every point of :func:`coarse_points` is trained plainly on the
        first ``coarse_seeds`` selection seeds and scored by its loss on the *whole*
        validation set (a plain grid search, which no hypergradient follows, ranks on all the
        data it has, as a careful user's grid would); the grid grows past an edge its best
        point lies on (:func:`edge_points`, at most :data:`COARSE_EDGE_EXTENSIONS` times); the
        :data:`COARSE_FINALISTS` best are then scored on every selection seed, and the best of
        those is the start. Its selection estimate (the select part only, as every later
        iterate's) is what hyper-descent must then beat. With ``"init"``, or when neither α
        nor γ is tuned, the init values are the start.
        """
        cfg, seeds = self.config, self.config.select_seed_list()
        grid = coarse_points(self.problem) if cfg.start == "coarse" else []
        if len(grid) > 1:
            points: list[dict[str, float]] = []  # every point tried, in order
            rows: list[dict[str, float]] = []  # the same points with their `val_loss`
            few = seeds[: cfg.coarse_seeds]

            def evaluate(new: list[dict[str, float]]) -> None:
                for p in new:
                    if self._stop():
                        raise Cancelled("cancelled during the coarse start")
                    raw_p = self.problem.param.constant_raw(p)
                    rows.append({**p, "val_loss": self.problem.selection_loss(raw_p, few, True)})
                points.extend(new)  # edge points are new points: rows stay aligned

            evaluate(grid)
            for _ in range(COARSE_EDGE_EXTENSIONS):
                new = edge_points(rows)
                if not new:
                    break
                evaluate(new)
            # race: the best few on every selection seed, the start is the best of those
            ranked = sorted(range(len(rows)), key=lambda j: rows[j]["val_loss"])
            finals = []
            for j in ranked[:COARSE_FINALISTS]:
                if self._stop():
                    raise Cancelled("cancelled during the coarse start")
                raw_j = self.problem.param.constant_raw(points[j])
                finals.append((self.problem.selection_loss(raw_j, seeds, True), j))
            _, best = min(finals)
            raw = self.problem.param.constant_raw(points[best])
            loss = self.problem.selection_loss(raw, seeds)  # what later iterates must beat
            start = {
                "kind": "coarse",
                "chosen": points[best],
                "seeds": few,
                "points": rows,
                "finalists": [{**points[j], "val_loss": v} for v, j in finals],
            }
        else:
            raw = state.raw
            loss = self.problem.selection_loss(raw, seeds)
            start = {"kind": "init"}
        start["select_loss"] = loss
        opt_state = self.opt.init(raw)
        self._emit({"type": "start", **to_jsonable(start)})
        return replace(
            state,
            raw=raw,
            opt_state=opt_state,
            started=True,
            start=start,
            select_loss=loss,
            best_raw=raw,
            best_opt_state=opt_state,
            best_iteration=state.iteration,
            best_select_loss=loss,
            since_best=0,
        )

    # -- one meta-iteration ----------------------------------------------------------------
    def step(self, state: MetaState) -> tuple[MetaState, dict[str, Any]]:
        """One meta-iteration: the exact hypergradient at ``state.raw`` averaged over the
        iteration's seeds, clip, update, then the new iterate's selection estimate.

        A diverged training run (or a non-finite hypergradient) either stops the loop
        (``stop_reason`` is set) or backtracks (see :class:`TunerConfig`).

        Returns:
            ``(new_state, record)``; ``state`` is not modified; the record is JSON-able (it
            never holds test-set figures).
        """
        t0 = time.perf_counter()
        cfg = self.config
        seeds = cfg.tuning_seeds(state.iteration)
        rec: dict[str, Any] = {"iteration": state.iteration, "seed": int(seeds[0])}
        rec["seeds"] = [int(s) for s in seeds]
        rec["select_loss"] = state.select_loss
        rec["hypers"] = _hyper_summary(self.problem, state.raw)
        evs, failure = self._hypergradients(state, seeds)
        if failure is not None:
            rec.update(
                diverged=True,
                divergence_seed=int(failure[3]),
                divergence_step=int(failure[0]),
                divergence_reason=failure[1],
                divergence_kind=failure[2],
            )
            rec["time_s"] = time.perf_counter() - t0
            return self._after_divergence(state, rec, failure[:3]), rec
        rec.update(_evaluation_record(self.problem, evs[0]))
        rec["objective"] = float(np.mean([ev.val_loss for ev in evs]))
        grads = {k: np.mean([ev.grads[k] for ev in evs], axis=0) for k in evs[0].grads}
        clipped, norm = clip_by_global_norm(grads, cfg.clip_norm)
        rec.update(
            grad_norm=norm,
            clipped=bool(cfg.clip_norm is not None and norm > cfg.clip_norm),
        )
        if self.opt.name == "snr":  # the direction, from the seeds' spread (clipping is moot)
            clipped, rec["significant_share"] = noise_normalized([ev.grads for ev in evs])
        scale = state.step_scale * cfg.step_factor(state.iteration)
        rec["step_scale"] = scale
        t1 = time.perf_counter()
        updates, opt_state = self.opt.update(clipped, state.opt_state, scale)
        rec["update_norm"] = global_norm(updates)
        raw = {k: state.raw[k] + updates[k] for k in state.raw}
        t2 = time.perf_counter()
        select_loss = self.problem.selection_loss(raw, cfg.select_seed_list())
        rec["timings"] = {
            "forward_s": _mean([ev.hyper.timings.get("forward_s") for ev in evs]),
            "reverse_s": _mean([ev.hyper.timings.get("reverse_s") for ev in evs]),
            "update_s": t2 - t1,
            "select_s": time.perf_counter() - t2,
            "total_s": time.perf_counter() - t0,
        }
        new = replace(
            state,
            iteration=state.iteration + 1,
            raw=raw,
            opt_state=opt_state,
            prev_raw=state.raw,
            prev_opt_state=state.opt_state,
            history=[*state.history, rec],
            select_loss=select_loss,
        )
        return self._select(new, rec), rec

    def _select(self, state: MetaState, rec: dict[str, Any]) -> MetaState:
        """Keep the best iterate by the selection estimate; back to it when much worse."""
        loss, best = state.select_loss, state.best_select_loss
        assert loss is not None
        rec["next_select_loss"] = loss
        if loss < best:
            rec["improved"] = True
            return replace(
                state,
                best_raw=state.raw,
                best_opt_state=state.opt_state,
                best_iteration=state.iteration,
                best_select_loss=loss,
                since_best=0,
            )
        rec["improved"] = False
        state = replace(state, since_best=state.since_best + 1)
        if state.best_raw is not None and not loss - best <= self.config.backtrack_tol * abs(best):
            rec["action"] = "back_to_best"
            return replace(
                state,
                raw=state.best_raw,
                opt_state=state.best_opt_state,
                select_loss=best,
                step_scale=state.step_scale / 2,
                prev_raw=None,
                prev_opt_state=None,
            )
        return state

    def _hypergradients(
        self, state: MetaState, seeds: Sequence[int]
    ) -> tuple[list[Evaluation], tuple[int, str, str, int] | None]:
        """The evaluations on ``seeds`` (one pass of replicas when the problem has
        ``evaluate_many``, else one run per seed), or ``(step, reason, kind, seed)`` when a
        seed's training or its hypergradient failed; ``kind`` is :data:`FIXED_POINT_RANGE`
        when a weight is outside the fixed-point range (the initial weights: a divergence at
        step 0, never a crash), else ``"divergence"``."""

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

        def failed_seed(exc: Exception, default: int) -> int:
            replica = getattr(exc, "replica", None)
            return int(seeds[replica]) if replica is not None else default

        many = getattr(self.problem, "evaluate_many", None)
        batches = [list(seeds)] if many is not None else [[s] for s in seeds]
        evs: list[Evaluation] = []
        for batch in batches:
            try:
                if many is not None:
                    evs += many(state.raw, batch, callback=on_step)
                else:
                    evs.append(self.problem.evaluate(state.raw, batch[0], callback=on_step))
            except DivergenceError as exc:
                return [], (exc.step, exc.reason, "divergence", failed_seed(exc, batch[0]))
            except FixedPointOverflowError as exc:
                reason = " ".join(str(exc).split())  # one line
                return [], (
                    int(getattr(exc, "step", None) or 0),
                    f"outside the fixed-point range: {reason}",
                    FIXED_POINT_RANGE,
                    failed_seed(exc, batch[0]),
                )
        for seed, ev in zip(seeds, evs, strict=True):
            finite = np.isfinite(ev.val_loss) and all(
                np.all(np.isfinite(g)) for g in ev.grads.values()
            )
            if not finite:
                return [], (self.problem.steps, "non-finite hypergradient", "divergence", seed)
        return evs, None

    def _after_divergence(
        self, state: MetaState, rec: dict[str, Any], failure: tuple[int, str, str]
    ) -> MetaState:
        """Back to the best iterate so far with half the step, or stop."""
        cfg = self.config
        done = {"iteration": state.iteration + 1, "history": [*state.history, rec]}
        at_best = state.best_raw is None or _same(state.raw, state.best_raw)
        can = cfg.on_divergence == "backtrack" and state.backtracks < cfg.max_backtracks
        if can and not at_best:
            rec["action"] = "backtrack"
            return replace(
                state,
                **done,
                raw=state.best_raw,
                opt_state=state.best_opt_state,
                select_loss=state.best_select_loss,
                step_scale=state.step_scale / 2,
                backtracks=state.backtracks + 1,
                prev_raw=None,
                prev_opt_state=None,
                since_best=state.since_best + 1,
            )
        rec["action"] = "stop"
        if cfg.on_divergence == "stop":
            why = "on_divergence='stop'"
        elif at_best:
            why = "nothing to go back to (it diverged at the start or at the best iterate)"
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
        status, stop_reason, stopped_early = "completed", None, False
        if not state.started:
            t0 = time.perf_counter()
            state = self.choose_start(state)
            state = replace(state, tuning_s=state.tuning_s + time.perf_counter() - t0)
            self._checkpoint(state)
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
            if cfg.patience and state.since_best >= cfg.patience:
                stopped_early = True
                break
            state = self._timed_step(state, clock)
        if state.stop_reason:
            status, stop_reason = "diverged", state.stop_reason
        if self._stop():
            raise Cancelled(f"cancelled before the final evaluation ({state.iteration} done)")
        return self._finish(status, stop_reason, state, clock, stopped_early)

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
            "best_iteration": state.best_iteration,
            "best_select_loss": state.best_select_loss,
            "eta_s": clock.eta(self.config.iterations - state.iteration),
            "duration_s": dt,
        }
        if len(clock.durations) == 1:
            event["first_iteration_s"] = dt  # includes tracing and compilation
        self._emit(to_jsonable(event))
        return state

    def selection_report(self, state: MetaState, stopped_early: bool) -> dict[str, Any]:
        """Which iterate the run returns, and why (JSON-able)."""
        cfg = self.config
        report = {
            "rule": "lowest selection estimate",
            "iteration": state.best_iteration,
            "select_loss": state.best_select_loss,
            "last_iteration": state.iteration,
            "last_select_loss": state.select_loss,
            "select_fraction": self.problem.select_fraction,
            "select_seeds": cfg.select_seed_list(),
            "stopped_early": stopped_early,
            "start": state.start,
        }
        where = "the start" if state.best_iteration == 0 else f"iterate {state.best_iteration}"
        split = (
            "the validation set's select part (kept out of the hypergradient)"
            if self.problem.select_fraction > 0
            else "the validation set"
        )
        reason = (
            f"{where} of {state.iteration} has the lowest mean loss on {split} after plain "
            f"training on {cfg.select_seeds} held-out seed(s): {state.best_select_loss:.5g}"
        )
        if stopped_early:
            reason += f"; stopped after {cfg.patience} meta-iterations without improvement"
        report["reason"] = reason
        return to_jsonable(report)

    def _finish(
        self,
        status: str,
        stop_reason: str | None,
        state: MetaState,
        clock: _Clock,
        stopped_early: bool = False,
    ) -> TuningOutcome:
        t0 = time.perf_counter()
        raw0 = self.problem.initial_raw()
        chosen = _selected_raw(state)
        seeds = self.config.eval_seed_list()
        evaluation: dict[str, Any] = {"seeds": seeds}
        if seeds:
            evaluation["initial"] = self.evaluate(raw0, seeds)
            evaluation["final"] = self.evaluate(chosen, seeds)
        curves = self._curves(raw0, chosen, seeds[0] if seeds else self.config.seed)
        self._emit({"type": "evaluation", **{k: v for k, v in evaluation.items() if k != "seeds"}})
        ok = [r for r in state.history if not r.get("diverged") and "timings" in r]
        timings = {
            "tuning_s": state.tuning_s,
            "evaluation_s": time.perf_counter() - t0,
            "first_iteration_s": clock.durations[0] if clock.durations else None,
            "mean_forward_s": _mean([r["timings"]["forward_s"] for r in ok]),
            "mean_reverse_s": _mean([r["timings"]["reverse_s"] for r in ok]),
        }
        selection = self.selection_report(state, stopped_early)
        return TuningOutcome(
            status, stop_reason, state, raw0, evaluation, curves, timings, selection
        )

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


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _same(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _selected_raw(state: MetaState) -> dict[str, np.ndarray]:
    """The iterate a run returns: the best by the selection estimate (else the last)."""
    return state.best_raw if state.best_raw is not None else state.raw


def coarse_points(problem: TuningProblem) -> list[dict[str, float]]:
    """The coarse start's grid: constant α (multiples of its init) × constant γ (multiples of
    its init's ``1 − γ``), for the groups that are tuned; the init point is among them."""
    g = problem.param.groups
    lr, mom = g["learning_rate"], g["momentum"]
    alphas = [lr.init * f for f in COARSE_LEARNING_RATE_FACTORS] if lr.tuned else [None]
    gammas: list[float | None] = [None]
    if mom.tuned:
        gammas = [1 - (1 - mom.init) * f for f in COARSE_ONE_MINUS_MOMENTUM_FACTORS]
        gammas = list(dict.fromkeys(min(max(m, COARSE_MIN_MOMENTUM), 0.999) for m in gammas))
    points = []
    for a in alphas:
        for m in gammas:
            p = {k: v for k, v in (("learning_rate", a), ("momentum", m)) if v is not None}
            points.append(p)
    return points


def edge_points(rows: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """Points past the coarse grid's edge where its best point lies, or ``[]``.

    ``rows`` are the evaluated points with their ``val_loss``. When the best point has the
    largest α tried, the new points double it; the smallest, divide it by 2.5 (each with every
    γ tried); when it has the smallest γ tried (above :data:`COARSE_MIN_MOMENTUM`), ``1 − γ``
    doubles, at the best α and its neighbours. A best point that diverged everywhere (every
    loss infinite) extends nothing.
    """
    finite = [r for r in rows if np.isfinite(r["val_loss"])]
    if not finite:
        return []
    best = min(finite, key=lambda r: r["val_loss"])
    tried = {(r.get("learning_rate"), r.get("momentum")) for r in rows}
    new: list[dict[str, float]] = []

    def add(a: float | None, m: float | None) -> None:
        if (a, m) not in tried:
            tried.add((a, m))
            new.append({k: v for k, v in (("learning_rate", a), ("momentum", m)) if v is not None})

    a, m = best.get("learning_rate"), best.get("momentum")
    alphas = sorted({r["learning_rate"] for r in rows if "learning_rate" in r})
    gammas = sorted({r["momentum"] for r in rows if "momentum" in r}) or [None]
    if a is not None and a == alphas[-1]:
        for g in gammas:
            add(a * 2.0, g)
    elif a is not None and a == alphas[0]:
        for g in gammas:
            add(a / 2.5, g)
    if m is not None and m == gammas[0] and m > COARSE_MIN_MOMENTUM:
        lower = max(1.0 - 2.0 * (1.0 - m), COARSE_MIN_MOMENTUM)
        i = alphas.index(a) if a is not None else 0
        for a2 in alphas[max(i - 1, 0) : i + 2] if a is not None else [None]:
            add(a2, lower)
    return new


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
    rec.update(problem.metrics(res.w_final, include_test=False))
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
