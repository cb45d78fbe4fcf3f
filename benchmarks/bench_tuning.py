"""The digits experiment: reversible hyper-descent vs a grid and Optuna TPE at equal wall clock.

MLP 64-50-50-10 (tanh) on scikit-learn's digits (1000/397/400 split, seed 0), T = 100 steps of
SGD with momentum, batch 50.

1. Reversible: ``revhpo.service.tuning.tune`` on ``examples/mlp_digits.yaml`` — per-layer-per-step α
   and γ, per-layer weight decay and init scale (606 hyperparameters), Adam on the raw values,
   a fresh training seed per meta-iteration. Its tuning wall-clock time is the budget B.
2. Grid: constant α × γ (6 × 4; λ = 1e-4, scale 1), each point trained on tuning seeds
   0, 1, 2, ... round-robin until B is spent; the point with the lowest mean validation loss.
3. Optuna TPE (seed 0) over constant (α, γ, λ, scale), one plain training run per trial on a
   fresh tuning seed, until B is spent (and, continuing the same study, until 3B).

Every selected configuration is then trained on ``--eval-seeds`` fresh training seeds
(``1_000_000 + j``, never used by any tuner) and scored on the validation and the test set.

Usage: ``.venv/bin/python benchmarks/bench_tuning.py [--iterations 60] [--eval-seeds 20]``
(optuna is a benchmark-only extra: ``.venv/bin/pip install optuna``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from revhpo.optimizers import EVAL_SEED_OFFSET  # noqa: E402
from revhpo.service.spec import load_spec  # noqa: E402
from revhpo.service.tuning import build_problem, tune  # noqa: E402

GRID_ALPHA = [0.03, 0.1, 0.3, 1.0, 2.0, 4.0]
GRID_GAMMA = [0.5, 0.8, 0.9, 0.95]


def constant_problem(base_spec):
    """The same data/net/training with four scalar hyperparameters (for grid and TPE)."""
    doc = base_spec.model_dump(mode="json")
    doc["hyperparameters"] = {
        "learning_rate": {"init": 0.3, "tune": True, "granularity": "scalar"},
        "momentum": {"init": 0.9, "tune": True, "granularity": "scalar"},
        "weight_decay": {"init": 1e-4, "tune": True, "granularity": "scalar"},
        "init_scale": {"init": 1.0, "tune": True, "granularity": "scalar"},
    }
    return build_problem(load_spec(doc))


def raw_of(alpha, gamma, lam, scale):
    return {
        "log_learning_rate": np.array(np.log(alpha)),
        "logit_momentum": np.array(np.log(gamma) - np.log1p(-gamma)),
        "log_weight_decay": np.array(np.log(lam)),
        "log_init_scale": np.array(np.log(scale)),
    }


def val_of(problem, raw, seed):
    """Validation loss after plain training (inf when training diverges)."""
    try:
        v = problem.val_loss_only(raw, seed)
    except Exception:  # noqa: BLE001 - a diverged configuration is just a bad one
        return float("inf")
    return v if np.isfinite(v) else float("inf")


def evaluate(problem, raw, seeds):
    rows = []
    for s in seeds:
        w, _ = problem.train(raw, s)
        rows.append(problem.metrics(w))
    out = {}
    for k in ("val_loss", "test_loss", "test_acc"):
        a = np.array([r[k] for r in rows])
        out[k] = float(a.mean())
        out[k + "_std"] = float(a.std())
        out[k + "_sem"] = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0
    out["per_seed_test_loss"] = [r["test_loss"] for r in rows]
    return out


def run_grid(problem, budget):
    t0 = time.perf_counter()
    scores = {p: [] for p in itertools.product(GRID_ALPHA, GRID_GAMMA)}
    seed, runs = 0, 0
    while True:
        for a, g in scores:
            scores[(a, g)].append(val_of(problem, raw_of(a, g, 1e-4, 1.0), seed))
            runs += 1
        seed += 1
        if time.perf_counter() - t0 >= budget:
            break
    best = min(scores, key=lambda p: np.mean(scores[p]))
    return {
        "alpha": best[0],
        "gamma": best[1],
        "lambda": 1e-4,
        "scale": 1.0,
        "tuning_val_loss": float(np.mean(scores[best])),
        "seeds_per_point": seed,
        "runs": runs,
        "time_s": time.perf_counter() - t0,
    }


def run_tpe(problem, budget, multiples=(1, 3)):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))

    def objective(trial):
        a = trial.suggest_float("alpha", 1e-2, 5.0, log=True)
        g = trial.suggest_float("gamma", 0.3, 0.99)
        lam = trial.suggest_float("lambda", 1e-6, 1e-1, log=True)
        s = trial.suggest_float("scale", 0.3, 3.0, log=True)
        return val_of(problem, raw_of(a, g, lam, s), trial.number)  # seed = trial number

    t0 = time.perf_counter()
    out = {}
    for m in sorted(multiples):
        while time.perf_counter() - t0 < m * budget:
            study.optimize(objective, n_trials=1)
        b = study.best_trial
        out[f"{m}x"] = {
            **{k: float(v) for k, v in b.params.items()},
            "tuning_val_loss": float(b.value),
            "trials": len(study.trials),
            "time_s": time.perf_counter() - t0,
        }
    return out


def run_hybrid(spec, grid, iterations, out, seeds):
    """Reversible hyper-descent started from the grid's best constants (α, γ)."""
    doc = spec.model_dump(mode="json")
    doc["meta"]["iterations"] = iterations
    doc["hyperparameters"]["learning_rate"]["init"] = grid["alpha"]
    doc["hyperparameters"]["momentum"]["init"] = grid["gamma"]
    hspec = load_spec(doc)
    res = tune(hspec, out, resume=False)
    from revhpo.service.tuning import final_state

    problem = build_problem(hspec)
    row = evaluate(problem, final_state(out, hspec).raw, seeds)
    info = {
        "time_s": res.timings["tuning_s"],
        "meta_iterations": res.meta_iterations,
        "diverged_iterations": sum(1 for h in res.history if h.get("diverged")),
        "status": res.status,
    }
    return row, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "mlp_digits.yaml"))
    ap.add_argument("--iterations", type=int, default=60, help="reversible meta-iterations")
    ap.add_argument("--eval-seeds", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_tuning"))
    ap.add_argument("--json", default=None, help="write the summary here (default: OUT/summary)")
    ap.add_argument(
        "--hybrid",
        action="store_true",
        help="also run reversible hyper-descent started from the grid's best (α, γ)",
    )
    ap.add_argument(
        "--hybrid-from",
        default=None,
        help="only the hybrid stage, reusing the grid result and seeds of this summary.json",
    )
    ap.add_argument("--step-size", type=float, default=None, help="override meta.step_size")
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    doc = load_spec(args.spec).model_dump(mode="json")
    doc["meta"]["iterations"] = args.iterations
    doc["meta"]["eval_seeds"] = 0  # the benchmark evaluates every method the same way below
    doc["limits"]["max_wall_time_s"] = None
    if args.step_size is not None:
        doc["meta"]["step_size"] = args.step_size
    spec = load_spec(doc)
    out = Path(args.out)
    step = spec.meta.step_size

    if args.hybrid_from:
        summary = json.loads(Path(args.hybrid_from).read_text())
        print(f"grid + reversible from {args.hybrid_from}, {args.iterations} meta-iterations")
        row, info = run_hybrid(
            spec, summary["grid"], args.iterations, out / f"hybrid_{step:g}", summary["eval_seeds"]
        )
        summary["results"][f"grid + reversible (meta step {step:g})"] = row
        summary[f"hybrid_{step:g}"] = {**info, "command": " ".join(sys.argv)}
        Path(args.hybrid_from).write_text(json.dumps(summary, indent=1))
        print(
            f"grid + reversible: val {row['val_loss']:.4f}±{row['val_loss_sem']:.4f} test "
            f"{row['test_loss']:.4f}±{row['test_loss_sem']:.4f} acc {100 * row['test_acc']:.2f}% "
            f"({info['time_s']:.0f} s of hyper-descent)"
        )
        return 0

    print(f"[1/4] reversible hyper-descent, {args.iterations} meta-iterations ...", flush=True)
    res = tune(spec, out, resume=False)
    budget = res.timings["tuning_s"]
    hist = res.history
    rev = {
        "meta_iterations": res.meta_iterations,
        "n_hyperparameters": res.n_hyperparameters,
        "time_s": budget,
        "mean_forward_s": res.timings["mean_forward_s"],
        "mean_reverse_s": res.timings["mean_reverse_s"],
        "diverged_iterations": sum(1 for h in hist if h.get("diverged")),
        "clipped_iterations": sum(1 for h in hist if h.get("clipped")),
        "max_grad_norm": max((h.get("grad_norm") or 0) for h in hist),
        "bits_per_weight": float(
            np.mean([h["bits_per_weight"] for h in hist if "bits_per_weight" in h])
        ),
        "info_bound_bits": float(
            np.mean([h["info_bound_bits"] for h in hist if "info_bound_bits" in h])
        ),
        "status": res.status,
    }
    print(f"      {budget:.1f} s; budget B = {budget:.1f} s", flush=True)

    cproblem = constant_problem(spec)
    print("[2/4] grid over constant (alpha, gamma) for B ...", flush=True)
    grid = run_grid(cproblem, budget)
    print(
        f"      best alpha={grid['alpha']} gamma={grid['gamma']} ({grid['runs']} runs)", flush=True
    )
    tpe = None
    try:
        import optuna  # noqa: F401

        print("[3/4] Optuna TPE over (alpha, gamma, lambda, scale) for B and 3B ...", flush=True)
        tpe = run_tpe(cproblem, budget)
    except ImportError:
        print("      optuna not installed: TPE skipped (.venv/bin/pip install optuna)", flush=True)

    print(f"[4/4] evaluation on {args.eval_seeds} held-out training seeds ...", flush=True)
    seeds = [spec.training.seed + EVAL_SEED_OFFSET + j for j in range(args.eval_seeds)]
    rproblem = build_problem(spec)
    raw0 = rproblem.initial_raw()
    from revhpo.service.tuning import final_state

    raw_final = final_state(out, spec).raw
    rows = {
        "untuned (alpha .3, gamma .9, lambda 1e-4, scale 1)": evaluate(rproblem, raw0, seeds),
        "reversible": evaluate(rproblem, raw_final, seeds),
        "grid": evaluate(cproblem, raw_of(grid["alpha"], grid["gamma"], 1e-4, 1.0), seeds),
    }
    if tpe:
        for m, best in tpe.items():
            rows[f"tpe {m}"] = evaluate(
                cproblem, raw_of(best["alpha"], best["gamma"], best["lambda"], best["scale"]), seeds
            )
    hybrid = None
    if args.hybrid:
        print("[5/5] grid + reversible ...", flush=True)
        rows[f"grid + reversible (meta step {step:g})"], hybrid = run_hybrid(
            spec, grid, args.iterations, out / f"hybrid_{step:g}", seeds
        )
    summary = {
        "hybrid": hybrid,
        "command": " ".join([".venv/bin/python", "benchmarks/bench_tuning.py", *sys.argv[1:]]),
        "eval_seeds": seeds,
        "budget_s": budget,
        "reversible": rev,
        "grid": grid,
        "tpe": tpe,
        "results": rows,
        "total_s": time.perf_counter() - t_all,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    path = Path(args.json or out / "summary.json")
    path.write_text(json.dumps(summary, indent=1))
    print(f"\n{'method':<55} {'val loss':>14} {'test loss':>16} {'test acc':>14}")
    for name, r in rows.items():
        print(
            f"{name:<55} {r['val_loss']:.4f}±{r['val_loss_sem']:.4f} "
            f"{r['test_loss']:.4f}±{r['test_loss_sem']:.4f} "
            f"{100 * r['test_acc']:.2f}%±{100 * r['test_acc_sem']:.2f}"
        )
    print(
        f"(mean ± standard error over {len(seeds)} held-out seeds; total "
        f"{summary['total_s']:.0f} s; summary: {path})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
