"""Run one tuning job from a :class:`~service.spec.JobSpec`: the entry point of the worker and
of ``revhpo tune``.

``build_problem(spec)`` loads the data, builds the net and the hyperparameter parametrisation;
``tune(spec, out_dir, ...)`` runs the meta-iterations with a checkpoint after each one, then
evaluates the initial and the tuned hyperparameters on held-out training seeds and writes
``result.json`` and the plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from nets import build_net, family_task
from optimizers.hyperparams import HyperGroup, Layout, Parametrization
from optimizers.meta import make_meta_optimizer
from optimizers.tuning import (
    EVAL_SEED_OFFSET,
    ArraySplits,
    MetaState,
    TuningProblem,
    meta_step,
    training_seed,
)
from service.data import load_dataset
from service.results import TuneResult, load_checkpoint, save_checkpoint
from service.spec import JobSpec, SpecError, load_spec

__all__ = ["Cancelled", "Problem", "TuneResult", "build_problem", "tune"]

log = logging.getLogger(__name__)

#: The problem type ``build_problem`` returns (see :class:`optimizers.tuning.TuningProblem`).
Problem = TuningProblem

CHECKPOINT_FILE = "checkpoint.npz"
RESULT_FILE = "result.json"


class Cancelled(Exception):
    """``should_stop()`` returned True; the last checkpoint is kept for a later resume."""


def _groups(spec: JobSpec) -> dict[str, HyperGroup]:
    hp = spec.hyperparameters
    return {
        name: HyperGroup(name, g.init, g.tune, g.granularity)
        for name, g in (
            ("learning_rate", hp.learning_rate),
            ("momentum", hp.momentum),
            ("weight_decay", hp.weight_decay),
            ("init_scale", hp.init_scale),
        )
    }


def build_problem(spec: JobSpec | Mapping | str | Path, dataset_dir: Path | None = None) -> Problem:
    """Load the data, build the net and the parametrisation a spec describes.

    Args:
        spec: a :class:`JobSpec` (or anything :func:`load_spec` accepts).
        dataset_dir: where uploaded dataset ids and relative paths are resolved.

    Returns:
        The :class:`Problem` (``problem.raw``, ``problem.evaluate(raw, seed)``,
        ``problem.val_loss_only(raw, seed)``).

    Raises:
        SpecError: the net config is invalid, the batch does not fit the training set, or a
            limit is exceeded (the message names the field and the value).
        service.data.DataError: the dataset cannot be loaded.
    """
    spec = load_spec(spec)
    # Exact reversal needs the reverse pass to recompute every gradient bit for bit.
    tf.config.experimental.enable_op_determinism()
    data = load_dataset(spec.dataset, dataset_dir)
    try:
        config = spec.net.config()
        out_dim = data.input_dim if family_task(config) == "reconstruction" else data.n_classes
        net = build_net(config, data.input_dim, out_dim)
    except ValueError as exc:
        raise SpecError(f"net: {exc}") from exc
    T = spec.training.steps
    n_params = int(sum(int(np.prod(s)) for s in net.param_shapes))
    if n_params * T > spec.limits.max_params_x_steps:
        raise SpecError(
            f"limits.max_params_x_steps: the net has {n_params} parameters × {T} steps = "
            f"{n_params * T} > {spec.limits.max_params_x_steps}. "
            f"Received: training.steps={T}, net={spec.net.config()}"
        )
    if spec.training.batch_size > len(data.y_train):
        raise SpecError(
            f"training.batch_size must be at most the training set size {len(data.y_train)}. "
            f"Received: training.batch_size={spec.training.batch_size}"
        )
    layout = Layout(T, tuple(net.param_layers), tuple(tuple(s) for s in net.param_shapes))
    param = Parametrization(_groups(spec), layout)
    n_tuned = param.n_tuned()
    if n_tuned > spec.limits.max_hyperparameters:
        raise SpecError(
            f"limits.max_hyperparameters: {n_tuned} tuned hyperparameters > "
            f"{spec.limits.max_hyperparameters}. Received: hyperparameters granularities "
            f"{ {k: g.granularity for k, g in param.groups.items() if g.tuned} }"
        )
    problem = TuningProblem(
        net,
        ArraySplits(data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test),
        param,
        batch_size=spec.training.batch_size,
        dtype=tf.as_dtype(spec.training.dtype),
        frac_bits=spec.training.frac_bits,
        max_denominator=spec.training.max_denominator,
    )
    problem.dataset_summary = data.summary()  # type: ignore[attr-defined]
    return problem


_PROBLEM_CACHE: dict[str, Problem] = {}


def _problem_for(spec: JobSpec, dataset_dir: Path | None) -> Problem:
    """``build_problem``, reusing the last problem (and its compiled steps) of this process
    when data, net, training and hyperparameter layout are the same. ``tune`` never changes a
    problem's state: the raw hyperparameters live in the meta-state."""
    doc = spec.model_dump(
        mode="json", include={"dataset", "net", "training", "hyperparameters", "limits"}
    )
    key = json.dumps([doc, str(dataset_dir)], sort_keys=True)
    if key not in _PROBLEM_CACHE:
        _PROBLEM_CACHE.clear()  # keep one: a problem holds its data and compiled graphs
        _PROBLEM_CACHE[key] = build_problem(spec, dataset_dir)
    return _PROBLEM_CACHE[key]


def spec_hash(spec: JobSpec) -> str:
    """Hash of everything that determines the run's result (not the limits or the name)."""
    doc = spec.model_dump(mode="json", exclude={"limits", "name"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name


def _evaluate_seeds(problem: Problem, raw: Mapping[str, np.ndarray], seeds: list[int]) -> dict:
    per_seed = []
    for s in seeds:
        try:
            w, losses = problem.train(raw, s)
            m = problem.metrics(w)
            if not all(np.isfinite(v) for v in m.values()):
                m["diverged"] = True
        except Exception as exc:  # a diverged plain run is a result, not a crash
            m = {"diverged": True, "error": str(exc)}
        per_seed.append({"seed": s, **m})
    out: dict[str, Any] = {"per_seed": per_seed}
    for key in ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"):
        vals = [p[key] for p in per_seed if key in p and np.isfinite(p[key])]
        if vals:
            out[f"{key}_mean"] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals))
    return out


def tune(
    spec: JobSpec | Mapping | str | Path,
    out_dir: Path | str,
    callback: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    dataset_dir: Path | str | None = None,
) -> TuneResult:
    """Run a tuning job; checkpoint after every meta-iteration; write results and plots.

    Args:
        spec: the job spec (anything :func:`load_spec` accepts).
        out_dir: directory for ``checkpoint.npz``, ``result.json`` and the PNG plots.
        callback: ``callback(event)`` with JSON-able events: ``{"type": "step", "phase",
            "meta_iteration", "step", "steps"}``, ``{"type": "meta", "meta_iteration",
            "meta_iterations", "val_loss", "train_loss", "test_loss", ..., "eta_s"}``,
            ``{"type": "checkpoint", "path"}``, ``{"type": "evaluation", ...}``,
            ``{"type": "done", "status", "result"}``.
        should_stop: polled before every meta-iteration and before the final evaluation.
        resume: continue from ``out_dir/checkpoint.npz`` when it exists (same spec only).
        dataset_dir: where uploaded dataset ids and relative paths are resolved.

    Returns:
        The :class:`TuneResult` (also written to ``out_dir/result.json``).

    Raises:
        Cancelled: ``should_stop()`` returned True (the checkpoint stays for a resume).
        SpecError, service.data.DataError: invalid spec or data.
        optimizers.ExactnessError: a reverse pass was not exact (a bug; never silent).
    """
    t_start = time.perf_counter()
    spec = load_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = callback or (lambda event: None)
    stop = should_stop or (lambda: False)
    m = spec.meta
    opt = make_meta_optimizer(m.optimizer, m.step_size, momentum=m.momentum, b1=m.beta1, b2=m.beta2)
    h = spec_hash(spec)
    ckpt = out / CHECKPOINT_FILE
    tuning_s = 0.0
    state = None
    if resume and ckpt.exists():  # read (and check) the checkpoint before any heavy work
        state, extra = load_checkpoint(ckpt, opt, spec_hash=h)
        tuning_s = float(extra.get("tuning_s", 0.0))
        log.info("resuming from %s at meta-iteration %d", ckpt, state.iteration)
    problem = _problem_for(spec, Path(dataset_dir) if dataset_dir is not None else None)
    raw0 = problem.param.initial_raw()
    if state is None:
        state = MetaState(iteration=0, raw=dict(raw0), opt_state=opt.init(raw0))
    limit = spec.limits.max_wall_time_s
    status, stop_reason = "completed", None

    while state.iteration < m.iterations:
        if state.stop_reason:  # resumed from a checkpoint of a run that had to stop
            break
        if stop():
            raise Cancelled(f"cancelled before meta-iteration {state.iteration}")
        if limit is not None and tuning_s >= limit:
            status = "stopped"
            stop_reason = (
                f"limits.max_wall_time_s={limit} reached after {state.iteration} meta-iterations"
            )
            break
        it = state.iteration
        seed = training_seed(spec.training.seed, it, m.fresh_seed)

        def on_step(phase: str, step: int, total: int, _it: int = it) -> None:
            if step == total or step % 10 == 0:
                emit(
                    {
                        "type": "step",
                        "phase": phase,
                        "meta_iteration": _it,
                        "step": step,
                        "steps": total,
                    }
                )

        t0 = time.perf_counter()
        state, rec = meta_step(
            problem,
            opt,
            state,
            seed=seed,
            clip_norm=m.clip_norm,
            on_divergence=m.on_divergence,
            max_backtracks=m.max_backtracks,
            callback=on_step,
        )
        tuning_s += time.perf_counter() - t0
        next_seed = training_seed(spec.training.seed, state.iteration, m.fresh_seed)
        save_checkpoint(
            ckpt, state, spec_hash=h, extra={"tuning_s": tuning_s, "next_seed": next_seed}
        )
        per_it = tuning_s / max(len(state.history), 1)
        emit(
            {
                "type": "meta",
                "meta_iteration": it,
                "meta_iterations": m.iterations,
                **{
                    k: rec.get(k)
                    for k in (
                        "val_loss",
                        "train_loss",
                        "test_loss",
                        "val_acc",
                        "test_acc",
                        "grad_norm",
                        "diverged",
                    )
                },
                "eta_s": per_it * (m.iterations - state.iteration),
            }
        )
        emit({"type": "checkpoint", "path": str(ckpt)})
        if state.stop_reason:
            break
    if state.stop_reason:
        status, stop_reason = "diverged", state.stop_reason

    if stop():
        raise Cancelled(f"cancelled before the final evaluation (meta-iteration {state.iteration})")
    t_eval = time.perf_counter()
    seeds = [spec.training.seed + EVAL_SEED_OFFSET + j for j in range(m.eval_seeds)]
    evaluation: dict[str, Any] = {"seeds": seeds}
    if seeds:
        evaluation["initial"] = _evaluate_seeds(problem, raw0, seeds)
        evaluation["final"] = _evaluate_seeds(problem, state.raw, seeds)
    curve_seed = seeds[0] if seeds else spec.training.seed + EVAL_SEED_OFFSET
    curves: dict[str, Any] = {"seed": curve_seed}
    for key, raw in (("initial", raw0), ("final", state.raw)):
        try:
            curves[key] = problem.train(raw, curve_seed)[1].tolist()
        except Exception as exc:  # noqa: BLE001 - a diverged curve is reported, not fatal
            curves[key] = []
            curves[f"{key}_error"] = str(exc)
    emit({"type": "evaluation", **{k: v for k, v in evaluation.items() if k != "seeds"}})
    eval_s = time.perf_counter() - t_eval

    net = problem.net
    ok = [r for r in state.history if not r.get("diverged")]
    result = TuneResult(
        status=status,
        stop_reason=stop_reason,
        spec=spec.model_dump(mode="json"),
        dataset=getattr(problem, "dataset_summary", {}),
        net={
            "config": net.config,
            "num_params": int(sum(int(np.prod(s)) for s in net.param_shapes)),
            "param_names": list(net.param_names),
            "param_layers": list(net.param_layers),
            "layer_names": list(net.layer_names),
        },
        n_hyperparameters=problem.param.n_tuned(),
        meta_iterations=state.iteration,
        history=state.history,
        hyperparameters={
            "initial": problem.hypers_of(raw0),
            "final": problem.hypers_of(state.raw),
        },
        evaluation=evaluation,
        training_curves=curves,
        timings={
            "total_s": time.perf_counter() - t_start,
            "tuning_s": tuning_s,
            "evaluation_s": eval_s,
            "mean_forward_s": float(np.mean([r["timings"]["forward_s"] for r in ok]))
            if ok
            else None,
            "mean_reverse_s": float(np.mean([r["timings"]["reverse_s"] for r in ok]))
            if ok
            else None,
        },
        device=_device(),
        files={"result": RESULT_FILE, "checkpoint": CHECKPOINT_FILE},
        versions={"tensorflow": tf.__version__, "numpy": np.__version__},
    )
    from service.plots import write_plots

    result.files["plots"] = write_plots(out, result.to_dict())
    result.write(out / RESULT_FILE)
    emit({"type": "done", "status": status, "result": str(out / RESULT_FILE)})
    return result


def final_state(out_dir: Path | str, spec: JobSpec) -> MetaState:
    """The meta-state stored in ``out_dir``'s checkpoint (for inspection)."""
    spec = load_spec(spec)
    m = spec.meta
    opt = make_meta_optimizer(m.optimizer, m.step_size, momentum=m.momentum, b1=m.beta1, b2=m.beta2)
    return load_checkpoint(Path(out_dir) / CHECKPOINT_FILE, opt, spec_hash=spec_hash(spec))[0]
