"""Run one tuning job from a :class:`~revhpo.service.spec.JobSpec`: the entry point of the
worker's job process and of ``revhpo tune``.

This layer turns a spec into a problem and handles files; the loop itself is the library's
(:class:`revhpo.optimizers.Tuner`). ``build_problem(spec)`` loads the data, builds the net and
the hyperparameter parametrisation; ``tune(spec, out_dir, ...)`` runs the tuner with a
checkpoint after every meta-iteration, then writes ``result.json`` and the plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from revhpo.nets import build_net, family_task
from revhpo.optimizers import (
    ArraySplits,
    Cancelled,
    HyperGroup,
    Layout,
    MetaState,
    Parametrization,
    Tuner,
    TunerConfig,
    TuningOutcome,
    TuningProblem,
)
from revhpo.optimizers.checkpoint import to_jsonable
from revhpo.service.data import Dataset, load_dataset
from revhpo.service.results import TuneResult, load_checkpoint, save_checkpoint
from revhpo.service.spec import JobSpec, SpecError, load_spec
from revhpo.service.tensorboard import TensorBoardLog

from revhpo.runtime import __version__

__all__ = ["Cancelled", "TuneResult", "build_problem", "spec_hash", "tune", "tuner_config"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"
RESULT_FILE = "result.json"


def _groups(spec: JobSpec) -> dict[str, HyperGroup]:
    hp = spec.hyperparameters
    return {
        name: HyperGroup(name, g.init, g.tune, g.granularity, g.knots)
        for name, g in (
            ("learning_rate", hp.learning_rate),
            ("momentum", hp.momentum),
            ("weight_decay", hp.weight_decay),
            ("init_scale", hp.init_scale),
        )
    }


def _build_net(spec: JobSpec, data: Dataset) -> Any:
    config = spec.net.config()
    try:
        out_dim = data.input_dim if family_task(config) == "reconstruction" else data.n_classes
        net = build_net(config, data.input_dim, out_dim)
    except ValueError as exc:
        raise SpecError(f"net: {exc}") from exc
    T = spec.training.steps
    if net.num_params * T > spec.limits.max_params_x_steps:
        raise SpecError(
            f"limits.max_params_x_steps: the net has {net.num_params} parameters × {T} steps = "
            f"{net.num_params * T} > {spec.limits.max_params_x_steps}. "
            f"Received: training.steps={T}, net={config}"
        )
    if getattr(spec.net, "init", None) is not None:  # SIM initial weights (revhpo.nets.sim)
        from revhpo.nets.sim import initialise

        try:
            net.sim_report = initialise(net, data.x_train, data.y_train, data.x_val, data.y_val)
        except ValueError as exc:
            raise SpecError(f"net.init.sim: {exc}") from exc
        log.info("SIM initial weights: %s", net.sim_report["accuracy"])
    return net


def _parametrization(spec: JobSpec, net: Any) -> Parametrization:
    param = Parametrization(_groups(spec), Layout.for_net(net, spec.training.steps))
    n_tuned = param.n_tuned()
    if n_tuned > spec.limits.max_hyperparameters:
        granularities = {k: g.granularity for k, g in param.groups.items() if g.tuned}
        raise SpecError(
            f"limits.max_hyperparameters: {n_tuned} tuned hyperparameters > "
            f"{spec.limits.max_hyperparameters}. Received: granularities {granularities}"
        )
    return param


def build_problem(
    spec: JobSpec | Mapping | str | Path, dataset_dir: Path | None = None
) -> TuningProblem:
    """Load the data, build the net and the parametrisation a spec describes.

    Args:
        spec: a :class:`JobSpec` (or anything :func:`load_spec` accepts).
        dataset_dir: where uploaded dataset ids and relative paths are resolved.

    Returns:
        The :class:`~revhpo.optimizers.TuningProblem`; ``problem.dataset_summary`` describes
        the data.

    Raises:
        SpecError: the net config is invalid, the batch does not fit the training set, or a
            limit is exceeded (the message names the field and the value).
        revhpo.service.data.DataError: the dataset cannot be loaded.
    """
    spec = load_spec(spec)
    data = load_dataset(spec.dataset, dataset_dir)
    net = _build_net(spec, data)
    if spec.training.batch_size > len(data.y_train):
        raise SpecError(
            f"training.batch_size must be at most the training set size {len(data.y_train)}. "
            f"Received: training.batch_size={spec.training.batch_size}"
        )
    problem = TuningProblem(
        net,
        ArraySplits(data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test),
        _parametrization(spec, net),
        batch_size=spec.training.batch_size,
        dtype=tf.as_dtype(spec.training.dtype),
        frac_bits=spec.training.frac_bits,
        max_denominator=spec.training.max_denominator,
        select_fraction=spec.meta.select_fraction,
    )
    problem.dataset_summary = data.summary()  # type: ignore[attr-defined]
    return problem


def tuner_config(spec: JobSpec) -> TunerConfig:
    """The library's loop settings for a spec: every field of its ``meta`` section that the
    :class:`TunerConfig` has (the same names), plus the base seed and the wall-time limit."""
    meta = spec.meta.model_dump()
    shared = {f.name for f in dataclasses.fields(TunerConfig)} & set(meta)
    return TunerConfig(
        **{k: meta[k] for k in shared},
        seed=spec.training.seed,
        max_wall_time_s=spec.limits.max_wall_time_s,
    )


def spec_hash(spec: JobSpec) -> str:
    """Hash of everything that determines the run's result (not the limits, the name or the
    outputs asked for)."""
    doc = spec.model_dump(mode="json", exclude={"limits", "name", "tensorboard"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name


def tune(
    spec: JobSpec | Mapping | str | Path,
    out_dir: Path | str,
    callback: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    dataset_dir: Path | str | None = None,
    problem: TuningProblem | None = None,
    tensorboard: bool | None = None,
) -> TuneResult:
    """Run a tuning job; checkpoint after every meta-iteration; write results and plots.

    Args:
        spec: the job spec (anything :func:`load_spec` accepts).
        out_dir: directory for ``checkpoint.npz``, ``result.json`` and the PNG plots.
        callback: receives the :class:`~revhpo.optimizers.Tuner`'s events, plus
            ``{"type": "checkpoint", "path"}`` and ``{"type": "done", "status", "result"}``.
        should_stop: polled before every meta-iteration and before the final evaluation.
        resume: continue from ``out_dir/checkpoint.npz`` when it exists (same spec only).
        dataset_dir: where uploaded dataset ids and relative paths are resolved.
        problem: the spec's problem when the caller already built it (its compiled steps are
            reused); default: built here.
        tensorboard: write TensorBoard event files into ``out_dir/tensorboard`` (see
            :mod:`revhpo.service.tensorboard`); default: the spec's ``tensorboard``.

    Returns:
        The :class:`TuneResult` (also written to ``out_dir/result.json``).

    Raises:
        Cancelled: ``should_stop()`` returned True (the checkpoint stays for a resume).
        CheckpointError: the checkpoint in ``out_dir`` belongs to another spec.
        SpecError, revhpo.service.data.DataError: invalid spec or data.
        revhpo.optimizers.ExactnessError: a reverse pass was not exact (a bug; never silent).
    """
    t_start = time.perf_counter()
    spec = load_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = callback or (lambda event: None)
    config, tag, ckpt = tuner_config(spec), spec_hash(spec), out / CHECKPOINT_FILE
    state = None
    if resume and ckpt.exists():  # read (and check) the checkpoint before any heavy work
        state = load_checkpoint(ckpt, config.meta_optimizer(), tag=tag)
        log.info("resuming from %s at meta-iteration %d", ckpt, state.iteration)
    problem = problem or build_problem(spec, Path(dataset_dir) if dataset_dir else None)
    tb = TensorBoardLog(out) if (spec.tensorboard if tensorboard is None else tensorboard) else None
    for rec in state.history if (tb and state) else []:  # a resumed run's earlier iterations
        tb.meta(rec)

    def on_checkpoint(st: MetaState) -> None:
        save_checkpoint(ckpt, st, tag=tag)
        if tb and st.history:
            tb.meta(st.history[-1])
        emit({"type": "checkpoint", "path": str(ckpt)})

    tuner = Tuner(
        problem, config, callback=emit, should_stop=should_stop, on_checkpoint=on_checkpoint
    )
    outcome = tuner.run(state)
    result = _result(spec, problem, outcome, time.perf_counter() - t_start)
    from revhpo.service.plots import write_plots

    result.files["plots"] = write_plots(out, result.to_dict())
    if tb:
        tb.final(result.to_dict())
        tb.close()
        result.files["tensorboard"] = [str(p.relative_to(out)) for p in tb.files()]
    result.write(out / RESULT_FILE)
    emit({"type": "done", "status": outcome.status, "result": str(out / RESULT_FILE)})
    return result


def _result(
    spec: JobSpec, problem: TuningProblem, outcome: TuningOutcome, total_s: float
) -> TuneResult:
    """The ``result.json`` document of a finished run."""
    net = problem.net
    return TuneResult(
        status=outcome.status,
        stop_reason=outcome.stop_reason,
        spec=spec.model_dump(mode="json"),
        dataset=getattr(problem, "dataset_summary", {}),
        net={
            "config": net.config,
            "num_params": net.num_params,
            "param_names": list(net.param_names),
            "param_layers": list(net.param_layers),
            "param_shapes": [list(map(int, sh)) for sh in net.param_shapes],
            "layer_names": list(net.layer_names),
            **({"sim": to_jsonable(net.sim_report)} if hasattr(net, "sim_report") else {}),
        },
        n_hyperparameters=problem.param.n_tuned(),
        meta_iterations=outcome.state.iteration,
        history=outcome.state.history,
        hyperparameters={
            "initial": problem.hypers_of(outcome.initial_raw),
            "start": problem.hypers_of(_start_raw(problem, outcome)),
            "final": problem.hypers_of(outcome.raw),
            "last": problem.hypers_of(outcome.last_raw),
        },
        selection=outcome.selection,
        evaluation=outcome.evaluation,
        training_curves=outcome.curves,
        timings={"total_s": total_s, **outcome.timings},
        device=_device(),
        files={"result": RESULT_FILE, "checkpoint": CHECKPOINT_FILE},
        versions={"revhpo": __version__, "tensorflow": tf.__version__, "numpy": np.__version__},
    )


def _start_raw(problem: TuningProblem, outcome: TuningOutcome) -> dict[str, np.ndarray]:
    """The raw hyperparameters hyper-descent started from (the coarse start's choice)."""
    start = outcome.state.start or {}
    if start.get("kind") == "coarse":
        return problem.param.constant_raw(start["chosen"])
    return outcome.initial_raw


def final_state(out_dir: Path | str, spec: JobSpec) -> MetaState:
    """The meta-state stored in ``out_dir``'s checkpoint (for inspection)."""
    spec = load_spec(spec)
    opt = tuner_config(spec).meta_optimizer()
    return load_checkpoint(Path(out_dir) / CHECKPOINT_FILE, opt, tag=spec_hash(spec))
