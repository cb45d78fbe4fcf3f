"""benchmarks/bench_tuning.py: the budget, selection and evaluation invariants of the tuning
benchmark, on a tiny problem (mlp_digits with T = 20, 2 meta-iterations, 2 held-out seeds)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bt = _load("bench_tuning")


def _keys(x) -> set[str]:
    """Every key of nested dicts and lists."""
    if isinstance(x, dict):
        return set(x) | {k for v in x.values() for k in _keys(v)}
    if isinstance(x, list | tuple):
        return {k for v in x for k in _keys(v)}
    return set()


# --------------------------------------------------------------------- the search loops alone
def test_grid_runs_round_robin_until_the_budget_and_selects_on_complete_passes():
    calls = []
    first, last = (bt.GRID_ALPHA[0], bt.GRID_GAMMA[0]), (bt.GRID_ALPHA[-1], bt.GRID_GAMMA[-1])

    def objective(hp, seed):
        p = (hp["alpha"], hp["gamma"])
        calls.append((p, seed))
        if p == first:  # the best on average, thanks to the pass cut short
            return 1.0 if seed == 0 else 0.0
        if p == last:  # the best on the complete passes
            return 0.9
        return 1.0 + 0.1 * seed + hp["alpha"] / 100

    n = len(bt.GRID_ALPHA) * len(bt.GRID_GAMMA)
    fixed = {"lambda": 1e-4, "scale": 1.0}
    # "CPU seconds" = runs so far: a budget of 2.5 passes, the third pass cut short
    out = bt.grid_search(objective, fixed, 2.5 * n, lambda: len(calls))
    assert [s for _, s in calls] == [i // n for i in range(len(calls))]  # round-robin
    assert len(calls) == 2.5 * n and out["runs"] == len(calls) and out["full_passes"] == 2
    calls.clear()
    out = bt.grid_search(objective, fixed, 1.5 * n, lambda: len(calls))
    seeds = {}
    for p, s in calls:
        seeds.setdefault(p, []).append(s)
    assert seeds[first] == [0, 1] and seeds[last] == [0]
    assert out["full_passes"] == 1 and out["runs"] == 1.5 * n
    assert (out["hyperparameters"]["alpha"], out["hyperparameters"]["gamma"]) == last
    assert out["tuning_val_loss"] == 0.9


def test_grid_always_completes_one_pass_and_inf_never_wins():
    def objective(hp, seed):
        return math.inf if hp["alpha"] >= 2 else hp["alpha"] * (1 - hp["gamma"])

    out = bt.grid_search(objective, {"lambda": 1e-4, "scale": 1.0}, 0.0, lambda: 1.0)
    assert out["runs"] == 24 and out["diverged_runs"] == 8
    assert out["hyperparameters"]["alpha"] == 0.03 and out["hyperparameters"]["gamma"] == 0.95


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_search_selects_the_lowest_seed_averaged_validation_loss(kind):
    calls = []

    def objective(hp, seed):
        v = (math.log(hp["alpha"]) - math.log(0.5)) ** 2 + hp["gamma"] + 0.01 * seed
        v = math.inf if hp["alpha"] > 2 else v
        calls.append((tuple(hp.values()), seed, v))
        return v

    out = bt.search(kind, objective, 60, lambda: len(calls))
    assert len(calls) >= 60 and out["runs"] == len(calls)
    seeds, values = {}, {}
    for point, seed, v in calls:
        seeds.setdefault(point, []).append(seed)
        values.setdefault(point, []).append(v)
    assert all(s == list(bt.TRIAL_SEEDS[: len(s)]) for s in seeds.values())
    assert any(len(s) == 1 for s in seeds.values())  # a divergence ends its trial
    means = {p: float(np.mean(v)) for p, v in values.items()}
    best = min(means, key=means.get)
    assert tuple(out["hyperparameters"].values()) == best
    assert math.isclose(out["tuning_val_loss"], means[best])
    for (name, lo, hi, _), v in zip(bt.SPACE, best, strict=True):
        assert lo <= v <= hi, name


def test_verdicts_on_paired_differences():
    def ev(losses, diverged=()):
        rows = [
            {"seed": s, "test_loss": v, "diverged": s in diverged} for s, v in enumerate(losses)
        ]
        ok = [r["test_loss"] for r in rows if not r["diverged"]]
        return {"per_seed": rows, "test_loss": float(np.mean(ok)), "diverged": len(diverged)}

    base = [1.0, 2.0, 3.0, 4.0]
    evals = {
        "revhpo": ev([0.9, 1.9, 2.9, 3.9]),
        "grid": ev(base),
        "tpe": ev([1.1, 2.2, 3.1, 4.0]),
        "random": ev([0.5, 9.0, 9.0, 9.0], diverged=(1,)),
        "start": ev([1.0, 2.5, 3.0, 4.5]),
    }
    c = bt.compare(evals)
    assert c["best_baseline"] == "grid"
    grid = c["diff_vs_best_baseline"]["grid"]
    assert {k: grid[k] for k in ("mean", "se", "n")} == {"mean": 0.0, "se": 0.0, "n": 4}
    assert math.isnan(grid["se_examples"])  # no per-example losses in these evaluations
    assert c["diff_vs_best_baseline"]["random"]["n"] == 3  # the diverged seed is not paired
    d = c["diff_vs_best_baseline"]["revhpo"]
    assert math.isclose(d["mean"], -0.1) and d["se"] < 1e-12
    assert c["no_worse"] and c["strictly_better"] and c["no_worse_than_start"]
    evals["revhpo"] = ev([1.2, 1.8, 3.2, 3.9])  # mean +0.025, within 2 SE
    c = bt.compare(evals)
    assert c["no_worse"] and not c["strictly_better"]
    evals["revhpo"] = ev([0.9, 1.9, 2.9, 3.9], diverged=(3,))  # better, but diverged more
    assert not bt.compare(evals)["no_worse"]


def test_write_section_replaces_the_legacy_section_and_keeps_the_rest(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        "# Benchmarks\n\n## a\nA\n\n" + bt.LEGACY_HEADING + "\nold\n\n" + bt.INSERT_BEFORE + "\nS\n"
    )
    bt.write_section(bt.HEADING + "\n\nnew\n\n", md)
    text = md.read_text()
    assert "old" not in text and bt.LEGACY_HEADING not in text
    assert text.index("## a") < text.index(bt.HEADING) < text.index(bt.INSERT_BEFORE)
    bt.write_section(bt.HEADING + "\n\nnewer\n\n", md)
    assert md.read_text() == text.replace("new\n", "newer\n")


# --------------------------------------------------------------------- one tiny problem, end to end
@pytest.fixture(scope="module")
def tiny():
    """run_problem on mlp_digits at T = 20; the baselines' tuning can see no test figure
    (``TuningProblem.metrics`` raises while they tune) and every objective call is kept."""
    from revhpo.optimizers import TuningProblem

    doc = bt.problem_spec("mlp_digits").model_dump(mode="json")
    doc["training"]["steps"] = 20
    spec = bt.load_spec(doc)
    calls: dict[str, list] = {}
    real_objective, real_baseline = bt.validation_objective, bt.run_baseline
    current = []

    def spy_objective(problem):
        f = real_objective(problem)

        def g(hp, seed):
            v = f(hp, seed)
            calls[current[-1]].append((dict(hp), seed, v))
            return v

        return g

    def guarded_baseline(kind, spec, budget):
        current.append(kind)
        calls[kind] = []
        err = AssertionError("a tuner asked for metrics (test figures) while tuning")
        with mock.patch.object(TuningProblem, "metrics", side_effect=err):
            return real_baseline(kind, spec, budget)

    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bt, "validation_objective", spy_objective)
        mp.setattr(bt, "run_baseline", guarded_baseline)
        result = bt.run_problem("tiny", spec, n_eval_seeds=2, iterations=2, log=lines.append)
    return result, calls, lines


def test_every_method_is_evaluated_on_the_same_held_out_seeds(tiny):
    result, _, _ = tiny
    from revhpo.optimizers import EVAL_SEED_OFFSET

    assert result["eval_seeds"] == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1]
    assert set(result["evaluation"]) == set(bt.METHODS)
    for m, e in result["evaluation"].items():
        assert [r["seed"] for r in e["per_seed"]] == result["eval_seeds"], m
        ok = [r["test_loss"] for r in e["per_seed"] if not r["diverged"]]
        assert e["n"] == 2 and e["diverged"] == 2 - len(ok), m
        assert all(math.isfinite(v) for v in ok), m
        if ok:
            assert math.isclose(e["test_loss"], np.mean(ok)), m
    start = result["evaluation"]["start"]["per_seed"]
    assert start[0]["test_loss"] != start[1]["test_loss"]  # the seeds differ


def test_paired_differences_and_best_baseline(tiny):
    result, _, _ = tiny
    ev, comp = result["evaluation"], result["comparison"]
    best = comp["best_baseline"]
    assert best == min(bt.BASELINES, key=lambda m: ev[m]["test_loss"])
    assert comp["diff_vs_best_baseline"][best] == {
        "mean": 0.0,
        "se": 0.0,
        "n": 2,
        "se_examples": 0.0,
    }
    for m in ev:  # each example's seed-averaged test loss averages to the method's test loss
        if ev[m]["diverged"] == ev[m]["n"]:
            continue
        per_example = ev[m]["test_loss_per_example"]
        assert len(per_example) == 400
        assert math.isclose(np.mean(per_example), ev[m]["test_loss"], rel_tol=1e-9)
    d = [
        a["test_loss"] - b["test_loss"]
        for a, b in zip(ev["revhpo"]["per_seed"], ev[best]["per_seed"], strict=True)
        if not (a["diverged"] or b["diverged"])
    ]
    got = comp["diff_vs_best_baseline"]["revhpo"]
    assert got["n"] == len(d)
    if len(d) == 2:
        assert math.isclose(got["mean"], np.mean(d))
        assert math.isclose(got["se"], np.std(d, ddof=1) / math.sqrt(2))
    assert isinstance(comp["no_worse"], bool) and isinstance(comp["no_worse_than_start"], bool)


def test_baselines_spend_the_revhpo_budget(tiny):
    result, _, _ = tiny
    budget = result["budget_cpu_s"]
    assert budget > 0
    assert result["tuning"]["revhpo"]["iterations"] <= 2
    for kind in bt.BASELINES:
        cpu = result["tuning"][kind]["cpu_s"]
        assert budget <= cpu <= 1.25 * budget + 1.0, (kind, cpu, budget)


def test_tuners_select_on_validation_losses_of_tuning_seeds_only(tiny):
    result, calls, lines = tiny
    from revhpo.optimizers import EVAL_SEED_OFFSET

    assert set(calls) == set(bt.BASELINES)
    for kind, cs in calls.items():
        assert cs and all(0 <= seed < EVAL_SEED_OFFSET for _, seed, _ in cs), kind
        assert result["tuning"][kind]["runs"] == len(cs)
    # the grid's choice is the arg-min of the validation losses it was given
    scores = {}
    for hp, _, v in calls["grid"]:
        scores.setdefault((hp["alpha"], hp["gamma"]), []).append(v)
    grid = result["tuning"]["grid"]
    assert (grid["hyperparameters"]["alpha"], grid["hyperparameters"]["gamma"]) == bt.select_grid(
        scores
    )
    # TPE / random: the best seed-averaged trial among the calls
    for kind in ("tpe", "random"):
        trials = {}
        for hp, _, v in calls[kind]:
            trials.setdefault(tuple(hp.values()), []).append(v)
        value = {p: float(np.mean(v)) for p, v in trials.items()}
        chosen = tuple(result["tuning"][kind]["hyperparameters"].values())
        assert value[chosen] == min(value.values())
    # nothing the tuners report, and nothing printed before the evaluation, is a test figure
    assert not any("test" in k for k in _keys(result["tuning"]))
    before_eval = lines[: next(i for i, line in enumerate(lines) if "held-out" in line)]
    assert before_eval and not any("test" in line for line in before_eval)


def test_section_renders_every_method(tiny):
    result, _, _ = tiny
    report = {
        "results": [result],
        "summary": bt.summary([result]),
        "n_eval_seeds": 2,
        "total_cpu_s": 1.0,
        "total_wall_s": 1.0,
        "command": bt.COMMAND + " --quick",
        "machine": {
            "machine": "m",
            "cpus": 2,
            "python": "3",
            "load_start": 0.0,
            "load_end": 0.0,
            "commit": "c",
            "date": "d",
        },
    }
    text = bt.render_section(report)
    assert text.startswith(bt.HEADING + "\n")
    assert report["summary"]["target_met"] is None  # one problem of five
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(bt.METHODS)
    assert not any(line.startswith("## ") for line in text.splitlines()[1:])
    json.dumps(bt._jsonable(report))  # every figure serialises
