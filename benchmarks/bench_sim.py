"""SIM (state-driven implicit modeling) benchmark: sparsity, robustness, solver time, tuning.

    python benchmarks/bench_sim.py            # measure, print the markdown section
    python benchmarks/bench_sim.py --write    # ... and write benchmarks/results_sim.json

Per dataset (digits: 1000/397/400, MLP 64-50-50-10; a generated ``blobs`` set: 3000 examples
of 32 features, 6 classes, split 0.6/0.2/0.2, MLP 32-64-64-6), an explicit ReLU MLP is trained
by plain SGD-momentum (400 steps, α 0.3, γ 0.9, λ 1e-4, seed 0); SIM fits half of the
training set (κ = 0.95, batched TensorFlow solver, tol 1e-7, ≤ 5000 iterations per program):

* **sparsity**: for λ₁ in a sweep, the fraction of exact zeros of (A, B, C, D) and the
  nonzero count, test accuracy of SIM's implicit net, of the explicit net, and of the explicit
  net magnitude-pruned (globally, over its kernels) to SIM's nonzero count;
* **robustness**: for λ₁ in a sweep, test accuracy under an ℓ∞ PGD attack (10 signed-gradient
  steps of 2.5ε/10 from the clean input, through each model's forward; an upper bound on
  the true robust accuracy) at growing ε, for SIM and the explicit net, and certified accuracy
  from each model's ℓ∞ Lipschitz bound (a lower bound);
* **solver**: the digits state program (sparsity, λ₁ 1e-3) on 200 fitted examples solved by
  the batched solver and by cvxpy/CLARABEL: wall time and objective values (tol 1e-10 for the
  batched solver here, so that both reach the optimum);
* **tuning** (digits): examples/sim_digits.yaml's SIM-initialised implicit net, its test loss
  at the SIM weights, after plain fine-tuning with the initial hyperparameters, and after
  reversible tuning (the spec as shipped, mean over its evaluation seeds), with what makes
  SIM's weights stiff to fine-tune (self-loops ``a_ii = κ``, rows of A at ``‖a_i‖₁ = κ``,
  Picard iterations).

    python benchmarks/bench_sim.py --only-tuning --write   # the tuning part alone; --write
                                                           # replaces it in results_sim.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]

from revhpo.runtime import import_tensorflow, require_exact_ops  # noqa: E402

OUT = REPO / "benchmarks" / "results_sim.json"
EPS = [0.0, 0.05, 0.1, 0.2, 0.3]
SPARSITY_LAMBDAS = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2]
ROBUST_LAMBDAS = [1e-3, 1e-2, 3e-2]


def _datasets() -> dict:
    from revhpo.service.data import load_dataset
    from revhpo.service.spec import DigitsDataset, SyntheticDataset

    return {
        "digits": (load_dataset(DigitsDataset()), [50, 50]),
        "blobs": (
            load_dataset(
                SyntheticDataset(
                    task="blobs",
                    n_samples=3000,
                    n_features=32,
                    n_classes=6,
                    noise=2.0,
                    split={"train": 0.6, "val": 0.2, "test": 0.2},
                )
            ),
            [64, 64],
        ),
    }


def _dataset_figures(name: str, data, sizes: list[int]) -> dict:
    import numpy as np
    from revhpo.nets import sim as S

    t0 = time.perf_counter()
    mlp, w = S.train_explicit(
        data.x_train, data.y_train, {"sizes": sizes, "steps": 400}, data.n_classes
    )
    train_s = time.perf_counter() - t0
    xs, _ = S._subset(data.x_train, data.y_train, 0.5, 0)
    out = {
        "sizes": sizes,
        "fitted_examples": len(xs),
        "explicit_train_s": train_s,
        "sparsity": [],
        "robustness": [],
    }
    for lam in SPARSITY_LAMBDAS:
        res = S.fit_mlp(mlp, w, xs, objective="sparsity", kappa=0.95, lambda1=lam)
        rep = S.sim_report(res, mlp, w, data.x_test, data.y_test)
        out["sparsity"].append(_row(lam, rep))
        print(f"[{name}] sparsity λ₁={lam:g}: {out['sparsity'][-1]}", file=sys.stderr)
    for lam in ROBUST_LAMBDAS:
        res = S.fit_mlp(mlp, w, xs, objective="robustness", kappa=0.95, lambda1=lam)
        rep = S.sim_report(res, mlp, w, data.x_test, data.y_test, eps=EPS)
        row = _row(lam, rep)
        row.update(
            {
                k: rep["robustness"][k]
                for k in (
                    "implicit_pgd",
                    "explicit_pgd",
                    "implicit_certified",
                    "explicit_certified",
                    "lipschitz_bound",
                )
            }
        )
        out["robustness"].append(row)
        print(f"[{name}] robustness λ₁={lam:g}: {row}", file=sys.stderr)
    out["eps"] = EPS
    out["explicit_test_acc"] = float(
        np.mean(np.argmax(mlp.apply(w, data.x_test).numpy(), 1) == data.y_test)
    )
    return out


def _row(lam: float, rep: dict) -> dict:
    sp, acc = rep["sparsity"], rep["accuracy"]
    return {
        "lambda1": lam,
        "zero_fraction": sp["zero_fraction"],
        "nonzeros": sp["nonzeros"],
        "explicit_nonzeros": sp["explicit_nonzeros"],
        "implicit_acc": acc["implicit"],
        "explicit_acc": acc["explicit"],
        "pruned_explicit_acc": acc["explicit_pruned_to_same_nonzeros"],
        "inf_norm_A": rep["well_posedness"]["inf_norm_A"],
        "state_residual_relative_rms": rep["state_fit"]["residual"]["relative_rms"],
        "state_iterations": rep["state_fit"]["iterations"],
        "state_converged": rep["state_fit"]["converged"],
        "output_iterations": rep["output_fit"]["iterations"],
        "output_converged": rep["output_fit"]["converged"],
        "solve_s": rep["state_fit"]["seconds"] + rep["output_fit"]["seconds"],
    }


def _solver_figures(data) -> dict:
    from revhpo.nets import sim as S

    mlp, w = S.train_explicit(
        data.x_train, data.y_train, {"sizes": [50, 50], "steps": 400}, data.n_classes
    )
    xs, _ = S._subset(data.x_train, data.y_train, 0.2, 0)
    st = S.collect_states(mlp, w, xs)
    x = S._scaled_x(st, S.state_exponents(mlp, w, 0.95))
    problem = S.state_problem(x, st.u, "sparsity", 0.95, 1e-3)
    ours = S.solve_batched(problem, tol=1e-10, max_iter=100_000)
    again = S.solve_batched(problem, tol=1e-10, max_iter=100_000)  # compiled kernels cached?
    ref = S.solve_reference(problem, "CLARABEL")
    o, r = ours.info["objective"], ref.info["objective"]
    return {
        "problem": f"digits state program [A|B|b], sparsity, λ₁ 1e-3, κ 0.95, "
        f"{problem.features.shape[0]} examples, {problem.shape[0]} rows × "
        f"{problem.shape[1]} features",
        "batched_s": ours.info["seconds"],
        "batched_s_second_call": again.info["seconds"],
        "batched_iterations": ours.info["iterations"],
        "batched_converged": ours.info["converged"],
        "batched_objective": o,
        "cvxpy_s": ref.info["seconds"],
        "cvxpy_status": ref.info["status"],
        "cvxpy_objective": r,
        "relative_objective_difference": abs(o - r) / abs(r),
        "cvxpy_constraint_violation": ref.info["constraint_violation"],
        "batched_inf_norm_A": float(max(abs(ours.w[:, :100]).sum(1))),
        "device": ours.info["device"],
    }


def _tuning_figures() -> dict:
    import numpy as np
    from revhpo.optimizers import Tuner
    from revhpo.service.spec import load_spec
    from revhpo.service.tuning import build_problem, tuner_config

    spec = load_spec(REPO / "examples" / "sim_digits.yaml")
    t0 = time.perf_counter()
    problem = build_problem(spec)
    sim_s = time.perf_counter() - t0
    net = problem.net
    w0 = net.init_params(0)
    at_sim = problem.metrics(w0)
    a = net.well_posed_A(w0).numpy()
    kappa = float(net.config["kappa"])
    rows = np.sum(np.abs(a), axis=1)
    outcome = Tuner(problem, tuner_config(spec)).run()
    ev = outcome.evaluation
    keys = ("val_loss_mean", "val_acc_mean", "test_loss_mean", "test_acc_mean")
    hp = spec.hyperparameters
    return {
        "spec": "examples/sim_digits.yaml",
        "build_problem_with_sim_s": sim_s,
        "tuning_s": time.perf_counter() - t0 - sim_s,
        "init": {
            "learning_rate": hp.learning_rate.init,
            "momentum": hp.momentum.init,
            "steps": spec.training.steps,
            "start": spec.meta.start,
        },
        "sim_weights": {
            "inf_norm_A": float(rows.max()),
            "rows_at_kappa": int(np.sum(rows >= kappa * (1 - 2e-9))),
            "self_loops_at_kappa": int(np.sum(np.abs(np.diag(a)) >= kappa * (1 - 2e-9))),
            "picard_iterations_train": net.solve_info(w0, problem.data.x_train)["iterations"],
        },
        "at_sim_weights": {k: at_sim[k] for k in ("val_loss", "val_acc", "test_loss", "test_acc")},
        "initial_hypers": {k: ev["initial"].get(k) for k in keys},
        "tuned_hypers": {k: ev["final"].get(k) for k in keys},
        "tuned_values": {
            g: problem.hypers_of(outcome.raw)[g]["value"] for g in ("learning_rate", "momentum")
        },
        "selection": outcome.selection.get("reason"),
        "eval_seeds": tuner_config(spec).eval_seeds,
        "meta_iterations": outcome.state.iteration,
        "status": outcome.status,
    }


def _markdown(res: dict) -> str:
    lines = ["## State-driven implicit modeling (SIM)", ""]
    lines.append(
        f"`python benchmarks/bench_sim.py --write` ({res['machine']}; {res['date']}). "
        "Explicit ReLU MLPs trained by plain SGD-momentum (400 steps); SIM fits half of the "
        "training set with κ = 0.95 (batched TensorFlow solver, ≤ 5000 iterations per "
        "program, tol 1e-7); ‖A‖∞ ≤ κ held exactly in every fit. Test accuracy."
    )
    for name, d in res["datasets"].items():
        lines += [
            "",
            f"### {name} (MLP sizes {d['sizes']}, {d['fitted_examples']} fitted "
            f"examples; explicit test accuracy {d['explicit_test_acc']:.4f})",
            "",
        ]
        lines += [
            "**Sparsity** (zeros counted over A, B, C, D; the explicit net has "
            f"{d['sparsity'][0]['explicit_nonzeros']} nonzero kernel weights)",
            "",
            "| λ₁ | zeros | nonzeros | SIM acc | explicit pruned to same nonzeros "
            "| residual (rel.) | solver iterations (state/output) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in d["sparsity"]:
            lines.append(
                f"| {r['lambda1']:g} | {r['zero_fraction']:.1%} | {r['nonzeros']} | "
                f"{r['implicit_acc']:.4f} | {r['pruned_explicit_acc']:.4f} | "
                f"{r['state_residual_relative_rms']:.3g} | {r['state_iterations']}"
                f"{'' if r['state_converged'] else '*'} / {r['output_iterations']}"
                f"{'' if r['output_converged'] else '*'} |"
            )
        eps = d["eps"]
        lines += [
            "",
            "**Robustness**: PGD accuracy (empirical, upper bound) at ε = "
            + ", ".join(f"{e:g}" for e in eps)
            + " (standardised input units); certified accuracy (lower bound) in brackets",
            "",
            "| model | ℓ∞ Lipschitz bound | " + " | ".join(f"ε={e:g}" for e in eps) + " |",
            "|---|---|" + "---|" * len(eps),
        ]
        r0 = d["robustness"][0]
        lines.append(
            f"| explicit | {r0['lipschitz_bound']['explicit']:.3g} | "
            + " | ".join(
                f"{a:.3f} [{c:.3f}]"
                for a, c in zip(r0["explicit_pgd"], r0["explicit_certified"], strict=True)
            )
            + " |"
        )
        for r in d["robustness"]:
            lines.append(
                f"| SIM robustness λ₁={r['lambda1']:g} | {r['lipschitz_bound']['implicit']:.3g} | "
                + " | ".join(
                    f"{a:.3f} [{c:.3f}]"
                    for a, c in zip(r["implicit_pgd"], r["implicit_certified"], strict=True)
                )
                + " |"
            )
    s = res["solver"]
    lines += [
        "",
        "### Solver: batched TensorFlow vs cvxpy (CLARABEL)",
        "",
        f"{s['problem']}: batched {s['batched_s']:.2f} s ({s['batched_iterations']} "
        f"iterations, XLA compilation included; {s['batched_s_second_call']:.2f} s on a second "
        f"call), cvxpy/CLARABEL {s['cvxpy_s']:.2f} s; objectives {s['batched_objective']:.10g} vs "
        f"{s['cvxpy_objective']:.10g} (relative difference "
        f"{s['relative_objective_difference']:.1e}); device {s['device']}.",
    ]
    if res.get("tuning"):
        lines += ["", *_tuning_lines(res["tuning"])]
    lines += ["", "`*`: the solver stopped at its iteration cap (its report says so)."]
    return "\n".join(lines)


def _tuning_lines(t: dict) -> list[str]:
    init, sw = t["init"], t["sim_weights"]
    cols = ("val_loss", "val_acc", "test_loss", "test_acc")

    def row(name: str, d: dict, sfx: str) -> str:
        return f"| {name} | " + " | ".join(f"{d[k + sfx]:.4f}" for k in cols) + " |"

    def knots(v: list) -> str:
        return "[" + ", ".join("[" + ", ".join(f"{x:.3g}" for x in r) + "]" for r in v) + "]"

    measured = f"`{t['command']}` ({t['date']}): " if "command" in t else ""
    return [
        "### SIM weights, then reversible tuning (digits)",
        "",
        f"{measured}`{t['spec']}` ({init['steps']} fine-tuning steps; start `{init['start']}`; "
        f"{t['meta_iterations']} meta-iterations, {t['status']}; SIM and explicit "
        f"training {t['build_problem_with_sim_s']:.0f} s, tuning {t['tuning_s']:.0f} s). "
        f"SIM's A: ‖A‖∞ = {sw['inf_norm_A']:.10f}, {sw['rows_at_kappa']} rows at "
        f"‖a_i‖₁ = κ, {sw['self_loops_at_kappa']} of them self-loops a_ii = κ; "
        f"{sw['picard_iterations_train']} Picard iterations on the training set. "
        f"Mean over {t['eval_seeds']} held-out training seeds for the trained rows:",
        "",
        "| weights | val loss | val acc | test loss | test acc |",
        "|---|---|---|---|---|",
        row("SIM, untrained", t["at_sim_weights"], ""),
        row(
            f"SIM + fine-tuning, initial hyperparameters (α = {init['learning_rate']:g}, "
            f"γ = {init['momentum']:g})",
            t["initial_hypers"],
            "_mean",
        ),
        row("SIM + fine-tuning, tuned hyperparameters", t["tuned_hypers"], "_mean"),
        "",
        f"Tuned α, γ ([knot][layer A, B, readout]): {knots(t['tuned_values']['learning_rate'])}, "
        f"{knots(t['tuned_values']['momentum'])}. Selection: {t['selection']}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.name}")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--no-tuning", action="store_true", help="skip the tuning figures")
    parts.add_argument(
        "--only-tuning",
        action="store_true",
        help=f"only the tuning figures (with --write: replace them in {OUT.name}, keep the rest)",
    )
    args = parser.parse_args(argv)
    import_tensorflow()
    require_exact_ops()
    t0 = time.perf_counter()
    if args.only_tuning:
        res = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {}
        res.pop("markdown", None)
        res["tuning"] = _tuning_figures()
        res["tuning"].update(
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.machine()}, {os.cpu_count()} cores",
            command="python benchmarks/bench_sim.py --only-tuning --write",
        )
        if "datasets" not in res:  # nothing else measured yet: the tuning section alone
            print("\n".join(_tuning_lines(res["tuning"])))
            if args.write:
                OUT.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
            return 0
    else:
        data = _datasets()
        res = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/bench_sim.py --write",
            "datasets": {
                name: _dataset_figures(name, d, sizes) for name, (d, sizes) in data.items()
            },
            "solver": _solver_figures(data["digits"][0]),
        }
        if not args.no_tuning:
            res["tuning"] = _tuning_figures()
        res["total_s"] = time.perf_counter() - t0
    text = _markdown(res)
    res["markdown"] = text
    if args.write:
        OUT.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
