"""Does revhpo's tuner beat seed-averaged baselines at equal CPU budget?

Problems (job specs under ``examples/``): ``mlp_digits`` (MLP 64-50-50-10, T = 100),
``mlp_digits_t300`` (the same spec with ``training.steps = 300``), ``implicit_digits``,
``sss_digits`` and ``mlp4_digits`` (four tanh hidden layers, T = 100).

Protocol, per problem:

1. **revhpo**: the spec as shipped: ``Tuner(build_problem(spec), tuner_config(spec))`` with
   ``eval_seeds = 0`` (the benchmark evaluates every method itself). Its process CPU time
   (``time.process_time()``, building the problem and tracing included) is the budget B.
2. **grid**: constant (α, γ) on α ∈ {.03, .1, .3, 1, 2, 4} × γ ∈ {.5, .8, .9, .95}, weight
   decay and init scale at the spec's init values; round-robin over tuning seeds (pass k
   trains every point on seed k) until B is spent, at least one full pass; the point with the
   lowest mean validation loss over the complete passes (a last pass cut short by the budget
   is left out of the selection, so every point is compared on the same seeds).
3. **TPE**: Optuna ``TPESampler(seed=0)`` over constant (log α ∈ [log .01, log 10],
   γ ∈ [.3, .99], log λ ∈ [log 1e-6, log .1], log scale ∈ [log .3, log 3]); a trial's value
   is the mean validation loss over the tuning seeds 0, 1, 2; trials until B is spent.
4. **random**: the same space and objective, uniform (NumPy ``default_rng(0)``), until B.
5. **start**: the spec's init hyperparameters, untuned.

Every baseline's CPU time includes building its own problem; a trial or grid point started
before B is reached runs to its end, so the baselines get at least B. A diverged training run
(an exception or a non-finite loss) counts as +inf. Tuning seeds are small integers (0, 1, …);
the held-out evaluation seeds are ``EVAL_SEED_OFFSET + j`` (j < ``--eval-seeds``), which no
tuner uses. The tuners see validation losses only: test figures are computed once, in the
final evaluation, where every method's hyperparameters are trained on every held-out seed
(revhpo's with its own problem, whose schedules are not constant; the others with a constant
problem) and scored by one scorer on the same validation and test sets. Diverged held-out runs
are counted and left out of the means.

Comparison: the best baseline is the baseline (grid, TPE, random) with the lowest mean
held-out test loss; each method's test loss minus the best baseline's, paired by seed, gives a
mean difference and its standard error. revhpo is *no worse* when that mean is ≤ 0 or within
2 standard errors (and it diverged on no more held-out seeds), *strictly better* when it is
below −2 standard errors; the same test against the start says whether tuning helped. The
target over the five problems: no worse on ≥ 4, strictly better on ≥ 2, never worse than the
start.

Run: ``.venv/bin/python benchmarks/bench_tuning.py [--problems a,b] [--eval-seeds 20]
[--json PATH] [--write]``; ``--quick`` is a smoke run (``mlp_digits`` only unless
``--problems`` is given, 3 meta-iterations, 2 held-out seeds). ``--write`` replaces the
section "Tuning: revhpo vs seed-averaged grid, TPE and random search" of BENCHMARKS.md.
A run takes about 4 × the sum of the budgets B plus the evaluation; to size it, ``--iterations
N`` overrides every spec's ``meta.iterations`` and ``--max-tuning-s S`` tightens revhpo's
wall-time limit (the section then says the specs did not run as shipped). Optuna is a
benchmark-only extra (``.venv/bin/pip install optuna``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import revhpo.optimizers as ro  # noqa: E402
from revhpo.service.spec import JobSpec, load_spec  # noqa: E402

EXAMPLES = ROOT / "examples"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADING = "## Tuning: revhpo vs seed-averaged grid, TPE and random search"
#: The section this one replaces when its own heading is not there yet.
LEGACY_HEADING = "## tuning: digits experiment"
INSERT_BEFORE = "## service: reliability and load"
COMMAND = ".venv/bin/python benchmarks/bench_tuning.py"

#: problem name → (example spec file, training.steps override or None)
PROBLEMS: dict[str, tuple[str, int | None]] = {
    "mlp_digits": ("mlp_digits.yaml", None),
    "mlp_digits_t300": ("mlp_digits.yaml", 300),
    "implicit_digits": ("implicit_digits.yaml", None),
    "sss_digits": ("sss_digits.yaml", None),
    "mlp4_digits": ("mlp4_digits.yaml", None),
}
BASELINES = ("grid", "tpe", "random")
METHODS = ("revhpo", *BASELINES, "start")

GRID_ALPHA = (0.03, 0.1, 0.3, 1.0, 2.0, 4.0)
GRID_GAMMA = (0.5, 0.8, 0.9, 0.95)
#: (name, low, high, log) of the constant search space of TPE and random search
SPACE = (
    ("alpha", 0.01, 10.0, True),
    ("gamma", 0.3, 0.99, False),
    ("lambda", 1e-6, 1e-1, True),
    ("scale", 0.3, 3.0, True),
)
#: tuning seeds a TPE or random-search trial averages its validation loss over
TRIAL_SEEDS = (0, 1, 2)
#: weight decay of the search space's constant problem when the spec's is 0 (log λ needs λ > 0)
SEARCH_WEIGHT_DECAY_INIT = 1e-4
#: twice the standard error: the margin of "no worse" and "strictly better"
MARGIN_SE = 2.0

#: Objective of the constant tuners: (α, γ, λ, scale) and a tuning seed → validation loss.
Objective = Callable[[Mapping[str, float], int], float]


# ------------------------------------------------------------------------------ problems
def problem_spec(name: str) -> JobSpec:
    """The job spec of a benchmark problem (``mlp_digits_t300`` derived from mlp_digits)."""
    file, steps = PROBLEMS[name]
    spec = load_spec(EXAMPLES / file)
    if steps is None:
        return spec
    doc = spec.model_dump(mode="json")
    doc["name"] = name
    doc["training"]["steps"] = steps
    return load_spec(doc)


def natural_init(spec: JobSpec) -> dict[str, float]:
    """The spec's init values as constants (α, γ, λ, scale)."""
    hp = spec.hyperparameters
    return {
        "alpha": hp.learning_rate.init,
        "gamma": hp.momentum.init,
        "lambda": hp.weight_decay.init,
        "scale": hp.init_scale.init,
    }


def constant_spec(spec: JobSpec, *, search: bool) -> JobSpec:
    """The spec's data, net and training with four scalar hyperparameters.

    ``search=False`` (grid, scorer): every init as in the spec; a weight decay of 0 stays
    untuned at 0. ``search=True`` (TPE, random): the weight decay is always tuned (as log λ,
    so a 0 init becomes ``SEARCH_WEIGHT_DECAY_INIT``). The validation loss is on the whole
    validation set (``meta.select_fraction`` is revhpo's split of it, not the baselines').
    """
    init = natural_init(spec)
    lam = init["lambda"]
    if search and lam <= 0:
        lam = SEARCH_WEIGHT_DECAY_INIT
    doc = spec.model_dump(mode="json")
    if "select_fraction" in doc["meta"]:
        doc["meta"]["select_fraction"] = 0.0  # plain tuners select on the whole validation set
    doc["hyperparameters"] = {
        "learning_rate": {"init": init["alpha"], "tune": True, "granularity": "scalar"},
        "momentum": {"init": init["gamma"], "tune": True, "granularity": "scalar"},
        "weight_decay": {"init": lam, "tune": lam > 0, "granularity": "scalar"},
        "init_scale": {"init": init["scale"], "tune": True, "granularity": "scalar"},
    }
    return load_spec(doc)


def constant_problem(spec: JobSpec, *, search: bool) -> Any:
    """The :class:`~revhpo.optimizers.TuningProblem` of :func:`constant_spec`."""
    from revhpo.service.tuning import build_problem

    return build_problem(constant_spec(spec, search=search))


def constant_raw(problem: Any, hp: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Raw arrays of a constant problem for natural (α, γ, λ, scale); only its tuned keys."""
    transform = {
        "log_learning_rate": math.log(hp["alpha"]),
        "logit_momentum": math.log(hp["gamma"]) - math.log1p(-hp["gamma"]),
        "log_weight_decay": math.log(hp["lambda"]) if hp["lambda"] > 0 else -math.inf,
        "log_init_scale": math.log(hp["scale"]),
    }
    return {k: np.full_like(v, transform[k]) for k, v in problem.initial_raw().items()}


def describe_problem(spec: JobSpec) -> str:
    """One line: family, shape, T, batch."""
    cfg = spec.net.model_dump(mode="json")
    keys = ("sizes", "n", "blocks", "state", "activation")
    shape = ", ".join(f"{k} {cfg[k]}" for k in keys if k in cfg)
    return (
        f"{cfg['family']} ({shape}), T = {spec.training.steps}, batch "
        f"{spec.training.batch_size}, {spec.training.dtype}"
    )


# ------------------------------------------------------------------------------ budget
class Clock:
    """Process CPU seconds (all threads) and wall seconds since creation."""

    def __init__(self) -> None:
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def cpu(self) -> float:
        return time.process_time() - self.cpu0

    def wall(self) -> float:
        return time.perf_counter() - self.wall0


def _divergence_errors() -> tuple[type[BaseException], ...]:
    """What plain training raises when it diverges (what the library's evaluation catches)."""
    import tensorflow as tf

    return (ro.DivergenceError, tf.errors.InvalidArgumentError, ValueError, FloatingPointError)


def validation_objective(problem: Any) -> Objective:
    """(α, γ, λ, scale), seed → validation loss after plain training (+inf if it diverged).

    The only thing the constant tuners see of a training run.
    """
    errors = _divergence_errors()

    def objective(hp: Mapping[str, float], seed: int) -> float:
        raw = constant_raw(problem, hp)
        try:
            v = float(problem.val_loss_only(raw, seed))
        except errors:
            return math.inf
        return v if math.isfinite(v) else math.inf

    return objective


# ------------------------------------------------------------------------------ tuners
def select_grid(scores: Mapping[tuple[float, float], Sequence[float]]) -> tuple[float, float]:
    """The grid point with the lowest mean validation loss over the seeds every point got
    (the complete passes: a last pass cut short by the budget is left out, so all points are
    compared on the same seeds; +inf stays +inf)."""
    common = min(len(v) for v in scores.values())
    return min(scores, key=lambda p: float(np.mean(scores[p][:common])))


def grid_search(
    objective: Objective,
    fixed: Mapping[str, float],
    budget_s: float,
    spent: Callable[[], float],
) -> dict[str, Any]:
    """Round-robin over tuning seeds until ``spent() >= budget_s`` (one full pass at least).

    ``fixed`` gives λ and the scale; the selection sees validation losses only.
    """
    points = list(itertools.product(GRID_ALPHA, GRID_GAMMA))
    scores: dict[tuple[float, float], list[float]] = {p: [] for p in points}
    seed, runs = 0, 0
    while seed == 0 or spent() < budget_s:
        for a, g in points:
            if seed > 0 and spent() >= budget_s:
                break
            scores[(a, g)].append(objective({**fixed, "alpha": a, "gamma": g}, seed))
            runs += 1
        seed += 1
    best = select_grid(scores)
    passes = min(len(v) for v in scores.values())
    return {
        "hyperparameters": {**fixed, "alpha": best[0], "gamma": best[1]},
        "tuning_val_loss": float(np.mean(scores[best][:passes])),
        "full_passes": passes,
        "runs": runs,
        "diverged_runs": int(sum(not math.isfinite(x) for v in scores.values() for x in v)),
    }


def trial_value(objective: Objective, hp: Mapping[str, float]) -> tuple[float, int]:
    """Mean validation loss over :data:`TRIAL_SEEDS` (+inf at the first divergence) and the
    number of training runs it took."""
    vals = []
    for seed in TRIAL_SEEDS:
        vals.append(objective(hp, seed))
        if not math.isfinite(vals[-1]):
            return math.inf, len(vals)
    return float(np.mean(vals)), len(vals)


def random_point(rng: np.random.Generator) -> dict[str, float]:
    """One uniform draw from :data:`SPACE` (log-uniform where ``log``)."""
    out = {}
    for name, lo, hi, log in SPACE:
        out[name] = (
            float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            if log
            else float(rng.uniform(lo, hi))
        )
    return out


def search(
    kind: str, objective: Objective, budget_s: float, spent: Callable[[], float]
) -> dict[str, Any]:
    """TPE (``kind="tpe"``) or random search over :data:`SPACE` until ``spent() >= budget_s``
    (one trial at least); the trial with the lowest seed-averaged validation loss."""
    if kind == "tpe":
        import optuna
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=0)
        )
        dists = {n: FloatDistribution(lo, hi, log=log) for n, lo, hi, log in SPACE}
    elif kind == "random":
        rng = np.random.default_rng(0)
    else:
        raise ValueError(f"kind must be 'tpe' or 'random'. Received: {kind!r}")
    best: tuple[float, dict[str, float]] = (math.inf, {})
    trials, runs, diverged = 0, 0, 0
    while trials == 0 or spent() < budget_s:
        if kind == "tpe":
            trial = study.ask(dists)
            hp = {n: float(trial.params[n]) for n, *_ in SPACE}
        else:
            hp = random_point(rng)
        value, n = trial_value(objective, hp)
        if kind == "tpe":
            study.tell(trial, value)
        trials, runs, diverged = trials + 1, runs + n, diverged + (not math.isfinite(value))
        if value < best[0] or not best[1]:
            best = (value, hp)
    return {
        "hyperparameters": best[1],
        "tuning_val_loss": best[0],
        "trials": trials,
        "runs": runs,
        "diverged_trials": diverged,
    }


def run_revhpo(
    spec: JobSpec, iterations: int | None = None, max_tuning_s: float | None = None
) -> tuple[Any, Any, dict]:
    """The tuner as the spec ships it: (problem, tuned raw, info); info's ``cpu_s`` is B.

    ``iterations`` overrides ``meta.iterations``; ``max_tuning_s`` tightens the tuner's own
    wall-time limit (``limits.max_wall_time_s``: it stops with status ``stopped`` and returns
    what it has selected so far). Both are for sizing runs; None keeps the spec's.
    """
    from revhpo.service.tuning import build_problem, tuner_config

    clock = Clock()
    problem = build_problem(spec)
    config = dataclasses.replace(tuner_config(spec), eval_seeds=0)
    if iterations is not None:
        config = dataclasses.replace(config, iterations=iterations)
    if max_tuning_s is not None:
        limit = min(config.max_wall_time_s or math.inf, max_tuning_s)
        config = dataclasses.replace(config, max_wall_time_s=limit)
    outcome = ro.Tuner(problem, config).run()
    cpu, wall = clock.cpu(), clock.wall()
    history = getattr(outcome.state, "history", [])
    info = {
        "cpu_s": cpu,
        "wall_s": wall,
        "status": outcome.status,
        "stop_reason": outcome.stop_reason,
        "iterations": int(outcome.state.iteration),
        "iterations_configured": config.iterations,
        "max_wall_time_s": config.max_wall_time_s,
        "diverged_iterations": sum(1 for r in history if r.get("diverged")),
        "n_hyperparameters": int(problem.param.n_tuned()),
        "granularities": {
            name: g.granularity for name, g in problem.param.groups.items() if g.tuned
        },
        "timings": getattr(outcome, "timings", {}) or {},
        "selection": getattr(outcome, "selection", None),
        "hyperparameters": hyper_summary(problem, outcome.raw),
    }
    return problem, outcome.raw, info


def hyper_summary(problem: Any, raw: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Mean, min and max of every group's natural values."""
    out = {}
    for name, d in problem.hypers_of(raw).items():
        a = np.asarray(d["value"], np.float64).ravel()
        out[name] = {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
    return out


def run_baseline(kind: str, spec: JobSpec, budget_s: float) -> tuple[Any, Any, dict]:
    """Grid, TPE or random search for ``budget_s`` CPU seconds, building its problem
    included: (problem, selected raw, info)."""
    clock = Clock()
    problem = constant_problem(spec, search=kind != "grid")
    objective = validation_objective(problem)
    if kind == "grid":
        init = natural_init(spec)
        fixed = {"lambda": init["lambda"], "scale": init["scale"]}
        info = grid_search(objective, fixed, budget_s, clock.cpu)
    else:
        info = search(kind, objective, budget_s, clock.cpu)
    info.update(cpu_s=clock.cpu(), wall_s=clock.wall())
    return problem, constant_raw(problem, info["hyperparameters"]), info


# ------------------------------------------------------------------------------ evaluation
def eval_seeds(n: int) -> list[int]:
    """The held-out training seeds (no tuner uses them)."""
    return [ro.EVAL_SEED_OFFSET + j for j in range(n)]


def evaluate(problem: Any, raw: Mapping[str, Any], seeds: Sequence[int], scorer: Any) -> dict:
    """Train with ``problem`` and ``raw`` on each seed; ``scorer.metrics`` scores the weights
    (one scorer per problem: every method on the same validation and test sets)."""
    errors = _divergence_errors()
    per_seed, per_example = [], []
    for s in seeds:
        row: dict[str, Any] = {"seed": int(s)}
        try:
            w, _ = problem.train(raw, s)
            m = scorer.metrics(w)
            row.update({k: float(m[k]) for k in ("val_loss", "test_loss", "val_acc", "test_acc")})
            row["diverged"] = not all(math.isfinite(v) for v in row.values())
            if not row["diverged"]:
                per_example.append(test_losses(scorer, w, row["test_loss"]))
        except errors as exc:
            row.update(diverged=True, error=" ".join(str(exc).split())[:200])
        per_seed.append(row)
    ok = [r for r in per_seed if not r["diverged"]]
    out: dict[str, Any] = {"n": len(per_seed), "diverged": len(per_seed) - len(ok)}
    # each test example's loss, averaged over the seeds (the test set's own sampling noise)
    out["test_loss_per_example"] = np.mean(per_example, axis=0).tolist() if per_example else []
    for key in ("val_loss", "test_loss", "val_acc", "test_acc"):
        a = np.array([r[key] for r in ok], np.float64)
        out[key] = float(a.mean()) if len(a) else math.nan
        out[key + "_se"] = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    out["per_seed"] = per_seed
    return out


def test_losses(scorer: Any, w: Sequence[Any], mean: float) -> np.ndarray:
    """Per-example softmax cross-entropy of weights ``w`` on the scorer's test set (their mean
    is checked against the scorer's own test loss)."""
    import tensorflow as tf

    x, y = scorer._splits["test"]
    logits = scorer.net.apply([tf.cast(p, scorer.dtype) for p in w], x)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits).numpy()
    if not math.isclose(float(loss.mean()), mean, rel_tol=1e-6, abs_tol=1e-12):
        raise AssertionError(f"per-example test losses average {loss.mean()}, not {mean}")
    return loss.astype(np.float64)


def example_se(a: dict, b: dict) -> float:
    """Standard error of the ``a − b`` test-loss difference from the test set's finite size:
    over test examples, of each example's seed-averaged loss difference."""
    pa = np.asarray(a.get("test_loss_per_example", []))
    pb = np.asarray(b.get("test_loss_per_example", []))
    if len(pa) < 2 or len(pa) != len(pb):
        return math.nan
    return float(np.std(pa - pb, ddof=1) / math.sqrt(len(pa)))


def paired_diff(a: dict, b: dict) -> dict[str, float]:
    """Mean and standard error of ``a − b`` test loss over the seeds where neither diverged;
    ``se_examples``: the difference's standard error over test examples (see
    :func:`example_se`), reported alongside; the verdicts use ``se`` (over seeds)."""
    tb = {r["seed"]: r["test_loss"] for r in b["per_seed"] if not r["diverged"]}
    d = np.array(
        [
            r["test_loss"] - tb[r["seed"]]
            for r in a["per_seed"]
            if not r["diverged"] and r["seed"] in tb
        ]
    )
    return {
        "mean": float(d.mean()) if len(d) else math.nan,
        "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan,
        "n": len(d),
        "se_examples": example_se(a, b),
    }


def no_worse(diff: dict) -> bool:
    """Mean difference ≤ 0, or within :data:`MARGIN_SE` paired standard errors."""
    m, se = diff["mean"], diff["se"]
    return bool(m <= 0 or (math.isfinite(se) and m <= MARGIN_SE * se))


def strictly_better(diff: dict) -> bool:
    """Mean difference below −:data:`MARGIN_SE` paired standard errors."""
    m, se = diff["mean"], diff["se"]
    return bool(math.isfinite(se) and m < -MARGIN_SE * se)


def compare(evals: Mapping[str, dict]) -> dict[str, Any]:
    """Best baseline (lowest mean held-out test loss), every method's paired difference to
    it, and revhpo's verdicts (against the best baseline and against the start)."""

    def key(m: str) -> float:
        v = evals[m]["test_loss"]
        return v if math.isfinite(v) else math.inf

    best = min((m for m in BASELINES if m in evals), key=key)
    diffs = {m: paired_diff(evals[m], evals[best]) for m in evals}
    out: dict[str, Any] = {"best_baseline": best, "diff_vs_best_baseline": diffs}
    if "revhpo" in evals:
        fewer_div = evals["revhpo"]["diverged"] <= evals[best]["diverged"]
        vs_start = paired_diff(evals["revhpo"], evals["start"]) if "start" in evals else None
        out.update(
            no_worse=no_worse(diffs["revhpo"]) and fewer_div,
            strictly_better=strictly_better(diffs["revhpo"]) and fewer_div,
            diff_vs_start=vs_start,
            no_worse_than_start=(
                vs_start is not None
                and no_worse(vs_start)
                and evals["revhpo"]["diverged"] <= evals["start"]["diverged"]
            ),
        )
    return out


# ------------------------------------------------------------------------------ one problem
def run_problem(
    name: str,
    spec: JobSpec,
    *,
    n_eval_seeds: int,
    iterations: int | None = None,
    max_tuning_s: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune with every method at the budget revhpo takes, then evaluate on held-out seeds."""
    log(f"== {name}: {describe_problem(spec)}")
    problems, raws, tuning = {}, {}, {}
    problems["revhpo"], raws["revhpo"], tuning["revhpo"] = run_revhpo(
        spec, iterations, max_tuning_s
    )
    rev = tuning["revhpo"]
    budget = rev["cpu_s"]
    log(
        f"   revhpo: {rev['status']}, {rev['iterations']} meta-iterations, "
        f"{rev['n_hyperparameters']} hyperparameters; B = {budget:.1f} CPU s "
        f"({rev['wall_s']:.1f} s wall)"
    )
    for kind in BASELINES:
        problems[kind], raws[kind], tuning[kind] = run_baseline(kind, spec, budget)
        t = tuning[kind]
        hp = " ".join(f"{k} {v:.3g}" for k, v in t["hyperparameters"].items())
        log(
            f"   {kind}: {t['runs']} training runs, {t['cpu_s']:.1f} CPU s "
            f"({t['wall_s']:.1f} s wall); selected {hp}, tuning val loss "
            f"{t['tuning_val_loss']:.4f}"
        )
    problems["start"], raws["start"] = problems["revhpo"], problems["revhpo"].initial_raw()
    tuning["start"] = {"cpu_s": 0.0, "wall_s": 0.0, "hyperparameters": natural_init(spec)}

    seeds = eval_seeds(n_eval_seeds)
    log(f"   held-out evaluation on {len(seeds)} seeds ...")
    scorer = constant_problem(spec, search=False)
    evals = {m: evaluate(problems[m], raws[m], seeds, scorer) for m in METHODS}
    result = {
        "problem": name,
        "description": describe_problem(spec),
        "budget_cpu_s": budget,
        "eval_seeds": seeds,
        "tuning": tuning,
        "evaluation": evals,
        "comparison": compare(evals),
    }
    log(format_table(result))
    return result


# ------------------------------------------------------------------------------ reporting
def _f(x: float, fmt: str = ".4f") -> str:
    return format(x, fmt) if math.isfinite(x) else "–"


def _pm(m: float, se: float, fmt: str = ".4f") -> str:
    return f"{_f(m, fmt)} ± {_f(se, '.4f')}" if math.isfinite(se) else _f(m, fmt)


def work_of(method: str, t: Mapping[str, Any]) -> str:
    """What a method's budget bought, in a few words."""
    if method == "revhpo":
        return f"{t['iterations']} meta-its, {t['n_hyperparameters']} hps"
    if method == "grid":
        return f"{t['runs']} runs, {t['full_passes']} full passes"
    if method in ("tpe", "random"):
        return f"{t['trials']} trials × {len(TRIAL_SEEDS)} seeds"
    return "–"


def table_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """One row per method: method, CPU s, wall s, work, val loss, test loss ± SE, test acc,
    diverged held-out runs, paired Δ test loss vs the best baseline ± SE."""
    comp = result["comparison"]
    rows = []
    for m in METHODS:
        t, e, d = result["tuning"][m], result["evaluation"][m], comp["diff_vs_best_baseline"][m]
        name = m + (" (best baseline)" if m == comp["best_baseline"] else "")
        rows.append(
            [
                name,
                f"{t['cpu_s']:.1f}",
                f"{t['wall_s']:.1f}",
                work_of(m, t),
                _f(e["val_loss"]),
                _pm(e["test_loss"], e["test_loss_se"]),
                f"{_f(100 * e['test_acc'], '.2f')} %",
                f"{e['diverged']}/{e['n']}",
                "0 (itself)" if m == comp["best_baseline"] else _pm(d["mean"], d["se"], "+.4f"),
                "–" if m == comp["best_baseline"] else _f(d.get("se_examples", math.nan)),
            ]
        )
    return rows


HEADER = (
    "method",
    "tuning CPU s",
    "wall s",
    "tuning work",
    "val loss",
    "test loss ± SE",
    "test acc",
    "diverged",
    "Δ test vs best baseline ± SE",
    "SE of Δ over test examples",
)


def verdict_line(result: Mapping[str, Any]) -> str:
    c = result["comparison"]
    d, s = c["diff_vs_best_baseline"]["revhpo"], c["diff_vs_start"]
    return (
        f"revhpo − {c['best_baseline']}: {_pm(d['mean'], d['se'], '+.4f')} → no worse: "
        f"{_yes(c['no_worse'])}, strictly better: {_yes(c['strictly_better'])}; revhpo − "
        f"start: {_pm(s['mean'], s['se'], '+.4f')} → no worse than the start: "
        f"{_yes(c['no_worse_than_start'])}"
    )


def _yes(b: bool) -> str:
    return "yes" if b else "**no**"


def format_table(result: Mapping[str, Any]) -> str:
    """The problem's table as fixed-width text (for the terminal)."""
    rows = [list(HEADER), *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines + [verdict_line(result).replace("**", ""), ""])


def summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over the problems and the verdict against the target."""
    n = len(results)
    nw = sum(r["comparison"]["no_worse"] for r in results)
    sb = sum(r["comparison"]["strictly_better"] for r in results)
    ns = sum(r["comparison"]["no_worse_than_start"] for r in results)
    complete = {r["problem"] for r in results} == set(PROBLEMS)
    met = nw >= 4 and sb >= 2 and ns == n
    return {
        "problems": n,
        "no_worse": nw,
        "strictly_better": sb,
        "no_worse_than_start": ns,
        "all_problems": complete,
        "target_met": met if complete else None,
    }


def summary_line(s: Mapping[str, Any]) -> str:
    n = s["problems"]
    verdict = (
        ("target met" if s["target_met"] else "target **not** met")
        if s["all_problems"]
        else "a subset of the problems: the target is defined on all five"
    )
    return (
        f"revhpo no worse than the best baseline on {s['no_worse']} of {n} (target ≥ 4 of 5), "
        f"strictly better on {s['strictly_better']} of {n} (target ≥ 2), no worse than the "
        f"untuned start on {s['no_worse_than_start']} of {n} (target: all): {verdict}."
    )


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    head = out.stdout.strip() if out.returncode == 0 else "unknown"
    return head + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def render_section(report: Mapping[str, Any]) -> str:
    """The BENCHMARKS.md section: a table per problem, the verdict, machine and command."""
    m = report["machine"]
    out = [
        HEADING,
        "",
        "Each method tunes at the same budget of process CPU seconds: B, what revhpo's tuner "
        "(the spec as shipped) took on that problem, its problem's construction and tracing "
        "included; the grid (constant α × γ, round-robin over tuning seeds), Optuna TPE and "
        "random search (constant α, γ, λ, scale; each trial the mean validation loss over 3 "
        "tuning seeds) run until they have spent B (a started trial or grid run finishes, so "
        "they get slightly more). They select on validation loss only. Then "
        f"every method's hyperparameters are trained on {report['n_eval_seeds']} held-out "
        "training seeds that no tuner saw and scored on the test set: mean ± standard error; "
        "Δ is the test-loss difference to the best baseline paired by seed. revhpo is *no "
        "worse* when Δ ≤ 2 paired SE, *strictly better* when Δ < −2 SE. That SE counts the "
        "training seeds' noise only; every method is scored on the same test set, whose finite "
        "size (a few hundred examples) adds its own: the last column is the standard error of Δ "
        "over test examples (each example's loss averaged over the seeds), a guide to how much "
        "of Δ another test set of the same size could undo. The protocol is in the docstring "
        "of `benchmarks/bench_tuning.py`; all figures (per seed) in its `--json`.",
        "",
    ]
    changed = []
    if report.get("iterations_override") is not None:
        changed.append(f"meta.iterations = {report['iterations_override']}")
    if report.get("max_tuning_s") is not None:
        changed.append(f"its wall-time limit tightened to {report['max_tuning_s']:g} s")
    if changed:
        out += [f"**Not the specs as shipped**: revhpo ran with {' and '.join(changed)}.", ""]
    for r in report["results"]:
        rev = r["tuning"]["revhpo"]
        sel = rev["selection"] if isinstance(rev["selection"], Mapping) else {}
        chosen = f", returned iterate {sel['iteration']}" if "iteration" in sel else ""
        out += [
            f"### {r['problem']}: {r['description']}",
            "",
            f"B = {r['budget_cpu_s']:.1f} CPU s; revhpo: {rev['status']}, "
            f"{rev['iterations']} of {rev['iterations_configured']} meta-iterations{chosen}, "
            f"{rev['n_hyperparameters']} hyperparameters "
            f"({', '.join(f'{k} {v}' for k, v in rev['granularities'].items())}).",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "---|" * len(HEADER),
            *("| " + " | ".join(row) + " |" for row in table_rows(r)),
            "",
            verdict_line(r) + ".",
            "",
        ]
    out += [
        "### Verdict",
        "",
        summary_line(report["summary"]),
        "",
        f"Machine: {m['machine']}, {m['cpus']} CPUs, Python {m['python']}; load average "
        f"{m['load_start']:.1f} at the start, {m['load_end']:.1f} at the end (the budget "
        "counts process CPU seconds, which sharing the machine inflates far less than wall "
        f"clock); commit {m['commit']}, {m['date']}. The run took "
        f"{report['total_cpu_s']:.0f} CPU s, {report['total_wall_s'] / 60:.1f} min wall.",
        "",
        "```sh",
        report["command"],
        "```",
        "",
    ]
    return "\n".join(out)


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace this section of BENCHMARKS.md (or the legacy digits section it supersedes),
    else insert it before the service section; ``bench_engine.write_section`` does the work."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    engine = importlib.import_module("bench_engine")
    text = path.read_text() if path.exists() else ""
    lines = {line.rstrip() for line in text.splitlines()}
    heading = LEGACY_HEADING if HEADING not in lines and LEGACY_HEADING in lines else HEADING
    engine.write_section(section, path, heading=heading, insert_before=INSERT_BEFORE)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, str | int | float | bool):
        return x
    return str(x)


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--problems",
        default=None,
        help=f"comma-separated subset of {','.join(PROBLEMS)} (default: all; --quick: mlp_digits)",
    )
    ap.add_argument("--eval-seeds", type=int, default=None, help="held-out seeds (20; quick 2)")
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="override every spec's meta.iterations (default: as shipped; quick: 3)",
    )
    ap.add_argument(
        "--max-tuning-s",
        type=float,
        default=None,
        help="tighten revhpo's wall-time limit to this (default: the spec's limits)",
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    ap.add_argument("--json", default=None, help="write every figure (per seed) to this file")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    names = (args.problems or ("mlp_digits" if args.quick else ",".join(PROBLEMS))).split(",")
    unknown = [n for n in names if n not in PROBLEMS]
    if unknown:
        ap.error(f"unknown problem(s) {unknown}; choose from {list(PROBLEMS)}")
    if args.write and args.quick:
        ap.error("--write records a full run; drop --quick")
    n_eval = args.eval_seeds if args.eval_seeds is not None else (2 if args.quick else 20)
    iterations = args.iterations if args.iterations is not None else (3 if args.quick else None)
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("optuna is needed for the TPE baseline: .venv/bin/pip install optuna")
        return 1

    clock, load_start = Clock(), os.getloadavg()[0]
    results = [
        run_problem(
            n,
            problem_spec(n),
            n_eval_seeds=n_eval,
            iterations=iterations,
            max_tuning_s=args.max_tuning_s,
        )
        for n in names
    ]
    report = {
        "command": " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]),
        "n_eval_seeds": n_eval,
        "iterations_override": iterations,
        "max_tuning_s": args.max_tuning_s,
        "results": results,
        "summary": summary(results),
        "total_cpu_s": clock.cpu(),
        "total_wall_s": clock.wall(),
        "machine": {
            "machine": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "commit": _git_commit(),
            "date": datetime.date.today().isoformat(),
        },
    }
    print(summary_line(report["summary"]).replace("**", ""))
    print(f"total {report['total_cpu_s']:.0f} CPU s, {report['total_wall_s']:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=1))
        print(f"figures: {args.json}")
    if args.write:
        write_section(render_section(report))
        print(f"section written to {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
