"""``revhpo verify SPEC``, ``revhpo bench`` and ``revhpo sim``: the numerics, checked and timed by
the user."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "run_bench", "run_sim", "run_verify", "verify_spec"]


def register(subparsers: Any) -> None:
    """Add the ``verify``, ``bench`` and ``sim`` subcommands."""
    p = subparsers.add_parser(
        "verify",
        help="check exact reversal and hypergradients of a job spec against finite differences",
        description="Runs the exact forward and reverse pass of the training a SPEC describes "
        "(its initial hyperparameters), checks bit-exact recovery of the initial state, and "
        "compares a random subset of hypergradients with central finite differences of the "
        "validation loss after plain float64 training (whatever the spec's training.dtype). "
        "Exit status 1 when a check fails, 2 for an invalid spec (also initial weights outside "
        "the fixed-point range).",
    )
    p.add_argument("spec", help="job spec file (.yaml/.yml/.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--samples", type=int, default=8, help="hypergradients to check")
    p.add_argument(
        "--eps",
        type=float,
        default=1e-5,
        help="first finite-difference step tried (raw scale); then 1e-3 … 1e-7 and Richardson "
        "extrapolation when it disagrees (ReLU kinks)",
    )
    p.add_argument("--rtol", type=float, default=1e-4, help="largest relative error accepted")
    p.add_argument(
        "--rtol-float32",
        type=float,
        default=RTOL_FLOAT32,
        help="tolerance used instead of --rtol when it is larger and the spec's training.dtype "
        "is float32 (the finite differences are always of float64 training)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed and sampling seed")
    p.add_argument(
        "--steps", type=int, default=None, help="override training.steps; default: the spec's"
    )
    p.add_argument(
        "--dataset-dir",
        default=None,
        help="directory where uploaded dataset ids (and relative dataset paths not found "
        "from the working directory) resolve; default: none",
    )
    p.set_defaults(func=run_verify)

    b = subparsers.add_parser(
        "bench",
        help="time exact reversible training against the fastest plain TensorFlow loop",
        description="Measures, in one process and interleaved, the exact forward and reverse "
        "passes against three plain float SGD-momentum loops on the same net, data, batch, T "
        "and dtype: the whole loop in one tf.function (tf.while_loop over a precomputed "
        "minibatch index table), the same under XLA, and one compiled step per Python call. "
        "Ratios are to the fastest whole loop (the per-step figures are kept for comparison); "
        "each time is the median of --repeats rounds after an untimed compile. Also: the "
        "buffer's bits over the information bound, the wall time of a cold process to its "
        "first hypergradient (examples/mlp_digits.yaml; with an empty, then a warm, persistent "
        "XLA cache), and peak memory of the reversible "
        "method vs autodiff through the unrolled loop (each in a fresh subprocess).",
    )
    b.add_argument(
        "--sizes",
        default=None,
        help="MLP layer sizes, comma-separated; default 784,50,50,10 (N = 42,310), "
        "784,1000,1000,10 with --large",
    )
    b.add_argument(
        "--large",
        action="store_true",
        help="the large preset: MLP 784-1000-1000-10 (N ≈ 1.8M), T = 20, no memory runs",
    )
    b.add_argument(
        "--steps", type=int, default=None, help="training steps T; default 100 (20 with --large)"
    )
    b.add_argument("--batch", type=int, default=200, help="minibatch size")
    b.add_argument("--gamma", type=float, default=0.9, help="momentum decay")
    b.add_argument("--alpha", type=float, default=0.1, help="learning rate")
    b.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="float type of the net"
    )
    b.add_argument(
        "--repeats", type=int, default=5, help="timed rounds, interleaved (the median is kept)"
    )
    b.add_argument(
        "--memory-steps",
        default=None,
        help="T values for the peak-memory comparison, comma-separated ('' to skip); "
        "default 100,1000 ('' with --large)",
    )
    b.add_argument(
        "--cold-spec",
        default=None,
        help="job spec whose first hypergradient a cold process times; default "
        "examples/mlp_digits.yaml ('' to skip)",
    )
    b.add_argument(
        "--cold-steps",
        type=int,
        default=None,
        help="override the cold spec's training.steps (default: the spec's)",
    )
    b.add_argument(
        "--no-replicas",
        action="store_true",
        help="skip timing 8 replicas trained together against 1 (replicas_8_over_1)",
    )
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    b.set_defaults(func=run_bench)
    _register_sim(subparsers)


def _register_sim(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "sim",
        help="state-driven implicit modeling: fit an implicit net to a trained explicit MLP",
        description="Trains an explicit ReLU MLP by plain SGD-momentum, records its states on a "
        "fraction of the training set, fits an implicit model X = relu(A X + B U + b), "
        "Y = C X + D U + c to them by convex programs under ||A||_inf <= kappa (objective "
        "sparsity or robustness; revhpo.nets.sim), and reports well-posedness, the "
        "state-matching residual, test accuracy of both nets, sparsity, and accuracy under "
        "l_inf PGD attacks and certified bounds. SPEC (optional) is a job spec whose net has "
        "init.sim: its dataset and that section are used, and the options below override it.",
    )
    s.add_argument("spec", nargs="?", default=None, help="job spec with net.init.sim (optional)")
    s.add_argument("--sizes", default=None, help="explicit hidden widths, e.g. 50,50")
    s.add_argument("--steps", type=int, default=None, help="explicit training steps")
    s.add_argument(
        "--objective",
        choices=["sparsity", "robustness"],
        default=None,
        help="what the penalty favours (default sparsity)",
    )
    s.add_argument("--kappa", type=float, default=None, help="||A||_inf bound (default 0.95)")
    s.add_argument("--lambda1", type=float, default=None, help="penalty weight (default 1e-3)")
    s.add_argument("--fraction", type=float, default=None, help="fraction of training data")
    s.add_argument("--tol", type=float, default=None, help="solver tolerance (default 1e-7)")
    s.add_argument("--max-iter", type=int, default=None, help="solver iterations (default 5000)")
    s.add_argument(
        "--eps", default="0.05,0.1,0.2", help="l_inf attack radii (standardised input units)"
    )
    s.add_argument("--pgd-steps", type=int, default=10, help="PGD steps per attack")
    s.add_argument("--out", default=None, help="also write the report to this JSON file")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--dataset-dir", default=None, help="where uploaded dataset ids resolve")
    s.set_defaults(func=run_sim)


def _sim_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The dataset spec and the ``init.sim`` dict a ``revhpo sim`` command line describes."""
    from revhpo.service.spec import DigitsDataset, SpecError, load_spec

    dataset: Any = DigitsDataset()
    sim: dict[str, Any] = {}
    if args.spec:
        spec = load_spec(args.spec)
        init = getattr(spec.net, "init", None)
        if init is None:
            raise SpecError("net.init.sim: `revhpo sim SPEC` needs an implicit net with init.sim")
        dataset = spec.dataset
        sim = init.sim.model_dump(mode="json")
        if sim.get("kappa") is None:
            sim["kappa"] = spec.net.kappa
    source = dict(sim.get("from", {}))
    if args.sizes:
        source["sizes"] = [int(v) for v in args.sizes.split(",") if v.strip()]
    if args.steps is not None:
        source["steps"] = args.steps
    sim["from"] = source
    for key in ("objective", "kappa", "lambda1", "fraction", "tol", "max_iter"):
        value = getattr(args, key)
        if value is not None:
            sim[key] = value
    return dataset, sim


def run_sim(args: argparse.Namespace) -> int:
    """CLI handler for ``revhpo sim``."""
    from pydantic import ValidationError
    from revhpo.nets.config import SimConfig
    from revhpo.service.data import DataError, load_dataset
    from revhpo.service.spec import SpecError

    from revhpo.runtime import import_tensorflow, require_exact_ops

    try:
        eps = [float(v) for v in args.eps.split(",") if v.strip()]
        if any(e < 0 for e in eps) or args.pgd_steps < 1:
            raise ValueError("--eps must be ≥ 0 and --pgd-steps ≥ 1")
        dataset, sim = _sim_settings(args)
        cfg = SimConfig.model_validate(sim)
    except (SpecError, ValidationError, ValueError) as exc:
        print(f"revhpo sim: invalid settings: {exc}", file=sys.stderr)
        return 2
    import_tensorflow()
    require_exact_ops()
    from revhpo.nets.sim import run_sim as sim_run

    try:
        data = load_dataset(dataset, Path(args.dataset_dir) if args.dataset_dir else None)
        report, _ = sim_run(data, cfg, eps=eps, pgd_steps=args.pgd_steps)
    except DataError as exc:
        print(f"revhpo sim: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"revhpo sim: {exc}", file=sys.stderr)
        return 2
    report["dataset"] = data.summary()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
        return 0
    _print_sim(report)
    return 0


def _print_sim(r: dict[str, Any]) -> None:
    wp, acc, sp, rob = r["well_posedness"], r["accuracy"], r["sparsity"], r["robustness"]
    st, out = r["state_fit"], r["output_fit"]
    print(f"objective {r['objective']}, kappa {r['kappa']}, lambda1 {r['lambda1']}, "
          f"{r['fitted_examples']} fitted examples, n={r['dims']['n']}")  # fmt: skip
    print(f"||A||_inf = {wp['inf_norm_A']!r} <= kappa = {wp['kappa']!r}: {wp['holds']}")
    for name, f in (("state  [A|B|b]", st), ("output [C|D|c]", out)):
        print(
            f"{name}: {f['iterations']} iterations ({'converged' if f['converged'] else 'cap'}"
            f"), {f['seconds']:.1f} s, objective {f['objective']:.6g}, residual rms "
            f"{f['residual']['rms']:.3g} (relative {f['residual']['relative_rms']:.3g})"
        )
    print(f"{acc['split']} accuracy: explicit {acc['explicit']:.4f}, implicit (SIM) "
          f"{acc['implicit']:.4f}, explicit magnitude-pruned to SIM's nonzeros "
          f"{acc['explicit_pruned_to_same_nonzeros']:.4f}")  # fmt: skip
    print(f"nonzeros: SIM {sp['nonzeros']} of {sp['size']} ({sp['zero_fraction']:.1%} zeros), "
          f"explicit {sp['explicit_nonzeros']}")  # fmt: skip
    for i, e in enumerate(rob["eps"]):
        print(
            f"eps {e:g}: PGD accuracy implicit {rob['implicit_pgd'][i]:.4f} explicit "
            f"{rob['explicit_pgd'][i]:.4f}; certified implicit "
            f"{rob['implicit_certified'][i]:.4f} explicit {rob['explicit_certified'][i]:.4f}"
        )


#: Finite-difference steps (raw scale) tried after ``--eps``, nearest to it first.
FD_STEPS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
#: Relative-error floors, times the largest hypergradient: float64 and float32 exact runs.
FLOOR_FLOAT64, FLOOR_FLOAT32 = 1e-6, 1e-3
#: Default tolerance when the exact run evaluates the net in float32 (the oracle is float64).
RTOL_FLOAT32 = 1e-2
#: ``error_kind`` of a report whose initial weights do not fit the fixed point (exit status 2).
FIXED_POINT_RANGE = "fixed_point_range"


def _rel_error(analytic: float, fd: float, floor: float) -> float:
    """``|analytic − fd| / max(|fd|, |analytic|, floor)``; infinite when ``fd`` is not finite."""
    if not (np.isfinite(fd) and np.isfinite(analytic)):
        return float("inf")
    return abs(analytic - fd) / max(abs(fd), abs(analytic), floor)


def _fd_steps(eps: float) -> list[float]:
    """``eps`` first, then the other steps of :data:`FD_STEPS`, nearest (in decades) first."""
    rest = [h for h in FD_STEPS if not np.isclose(h, eps, rtol=1e-9, atol=0)]
    rest.sort(key=lambda h: (abs(np.log10(h / eps)), h))
    return [float(eps), *rest]


def verify_spec(
    spec: Any,
    *,
    samples: int = 8,
    eps: float = 1e-5,
    rtol: float = 1e-4,
    rtol_float32: float = RTOL_FLOAT32,
    seed: int = 0,
    steps: int | None = None,
    dataset_dir: str | None = None,
) -> dict[str, Any]:
    """Check one spec's exact reversal and hypergradients; returns the report (JSON-able).

    The exact run trains in the spec's ``training.dtype``; the finite-difference oracle is
    plain training in float64 whatever that dtype (a second problem built from the spec with
    ``training.dtype: float64`` when it is float32). Entries are drawn at random from every
    tuned raw array. Each is compared with central differences at the steps ``eps``, then
    1e-3 … 1e-7 (nearest first; stopping at the first that agrees), then with Richardson
    extrapolations of consecutive steps: the entry passes when any estimate agrees within the
    tolerance (ReLU nets have kinks that some steps cross), and its row reports the estimate
    and step used (the closest one when none agrees). Relative errors use the scale
    ``max(|fd|, |analytic|, floor · max |hypergradient|)`` (floor 1e-6; 1e-3 for a float32
    exact run) so that entries whose gradient is zero to rounding do not divide by nothing.
    The tolerance is ``rtol`` for a float64 exact run and ``max(rtol, rtol_float32)`` for a
    float32 one (float32 training's hypergradient differs from float64 training's by its
    rounding). ``ok`` requires bit-exact recovery, an empty buffer and every entry in
    tolerance. Initial weights outside the fixed-point range give ``ok: false`` with
    ``error`` and ``error_kind: "fixed_point_range"``.
    """
    from revhpo.service.spec import load_spec, spec_warnings
    from revhpo.service.tuning import build_problem

    spec = load_spec(spec)
    if steps is not None:
        data = spec.model_dump()
        data["training"]["steps"] = int(steps)
        spec = load_spec(data)
    problem = build_problem(spec, dataset_dir=dataset_dir)
    exact_dtype = spec.training.dtype
    tol = rtol if exact_dtype == "float64" else max(rtol, rtol_float32)
    report: dict[str, Any] = {
        "spec": spec.name,
        "steps": problem.steps,
        "exact_dtype": exact_dtype,
        "finite_difference_dtype": "float64",
        "rtol": tol,
        "exact_recovery": False,
        "buffer_empty": False,
        "max_rel_error": None,
        "hypergradients": [],
        "ok": False,
    }
    warnings = spec_warnings(spec)
    if warnings:
        report["warnings"] = warnings
    hint = (
        f"lower hyperparameters.init_scale.init or training.frac_bits. Received: "
        f"hyperparameters.init_scale.init={spec.hyperparameters.init_scale.init!r}, "
        f"training.frac_bits={spec.training.frac_bits}"
    )
    ev = _exact_run(problem, seed, report, hint=hint)
    if ev is None:
        return report
    raw = problem.initial_raw()
    if not raw:
        report["error"] = "the spec tunes no hyperparameter: nothing to compare"
        return report
    if exact_dtype == "float64":
        oracle = problem
    else:
        data = spec.model_dump()
        data["training"]["dtype"] = "float64"
        oracle = build_problem(load_spec(data), dataset_dir=dataset_dir)
    scale = max(float(np.max(np.abs(g))) for g in ev.grads.values())
    floor = (FLOOR_FLOAT64 if exact_dtype == "float64" else FLOOR_FLOAT32) * scale
    fd_steps = _fd_steps(eps)
    rows = [
        _compare(
            oracle,
            raw,
            float(ev.grads[name][idx]),
            name,
            idx,
            seed=seed,
            floor=max(floor, 1e-300),
            rtol=tol,
            steps=fd_steps,
        )
        for name, idx in _pick_entries(raw, samples, np.random.default_rng(seed))
    ]
    report["hypergradients"] = rows
    report["max_rel_error"] = max(r["rel_error"] for r in rows)
    report["ok"] = bool(
        report["exact_recovery"] and report["buffer_empty"] and all(r["ok"] for r in rows)
    )
    return report


def _exact_run(problem: Any, seed: int, report: dict[str, Any], *, hint: str = "") -> Any:
    """The exact forward + reverse at the initial hyperparameters, its certificate recorded in
    ``report``; None (with ``report["error"]``) when it diverged, was not exact, or the
    initial weights are outside the fixed-point range (``error_kind: "fixed_point_range"``,
    the one-line message ending with ``hint``)."""
    from revhpo.optimizers import DivergenceError, ExactnessError
    from revhpo.precise import FixedPointOverflowError

    try:
        ev = problem.evaluate(seed=seed)
    except ExactnessError as exc:
        cert = exc.certificate
        report.update(
            exact_recovery=cert.exact_w0 and cert.exact_v0,
            buffer_empty=cert.buffer_empty,
            error=str(exc),
        )
        return None
    except DivergenceError as exc:
        report["error"] = str(exc)
        return None
    except FixedPointOverflowError as exc:
        detail = " ".join(str(exc).split())  # one line
        report["error"] = f"the initial weights do not fit the fixed-point range ({detail})" + (
            f"; {hint}" if hint else ""
        )
        report["error_kind"] = FIXED_POINT_RANGE
        return None
    cert = ev.hyper.certificate
    report.update(
        exact_recovery=cert.exact_w0 and cert.exact_v0,
        buffer_empty=cert.buffer_empty,
        val_loss=ev.val_loss,
        bits_held_per_weight=cert.bits_held,
        info_bound_bits_per_weight=cert.info_bound_bits,
    )
    return ev


def _pick_entries(
    raw: dict[str, np.ndarray], samples: int, rng: np.random.Generator
) -> list[tuple[str, tuple[int, ...]]]:
    """One entry of every tuned array first, then random entries of all of them, up to
    ``samples`` in all; as ``(array name, index)`` in a stable order."""
    entries = [(k, i) for k in sorted(raw) for i in range(raw[k].size)]
    picks: list[int] = []
    start = 0
    for k in sorted(raw):
        if len(picks) < samples:
            picks.append(start + int(rng.integers(raw[k].size)))
        start += raw[k].size
    rest = [j for j in range(len(entries)) if j not in set(picks)]
    extra = max(0, min(samples, len(entries)) - len(picks))
    picks += [int(j) for j in rng.choice(rest, size=extra, replace=False)] if extra else []
    out = []
    for j in sorted(picks):
        name, flat = entries[j]
        shape = raw[name].shape
        out.append((name, tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()))
    return out


def _compare(
    oracle: Any,
    raw: dict[str, np.ndarray],
    analytic: float,
    name: str,
    idx: tuple[int, ...],
    *,
    seed: int,
    floor: float,
    rtol: float,
    steps: list[float],
) -> dict[str, Any]:
    """The hypergradient entry ``raw[name][idx]`` (value ``analytic``) against central
    differences of the validation loss after ``oracle``'s plain training.

    Central differences at each of ``steps`` in turn, stopping at the first within ``rtol``;
    when none is, Richardson extrapolations of consecutive steps ``h1 > h2``:
    ``(r² D(h2) − D(h1)) / (r² − 1)`` with ``r = h1 / h2``. The row reports the estimate
    that agrees (or the closest), its ``step`` (the larger one for Richardson), ``method``
    (``central`` or ``richardson``), ``steps_tried`` and ``ok``.
    """

    def at(delta: float) -> float:
        moved = {k: v.copy() for k, v in raw.items()}
        moved[name][idx] += delta
        return oracle.val_loss_only(moved, seed)

    central: dict[float, float] = {}
    best = (float("inf"), float("nan"), steps[0], "central")
    for h in steps:
        fd = (at(h) - at(-h)) / (2 * h)
        central[h] = fd
        best = min(best, (_rel_error(analytic, fd, floor), fd, h, "central"), key=_by_error)
        if best[0] <= rtol:
            break
    else:
        hs = sorted(central, reverse=True)
        for h1, h2 in zip(hs, hs[1:], strict=False):
            r2 = (h1 / h2) ** 2
            fd = (r2 * central[h2] - central[h1]) / (r2 - 1)
            best = min(best, (_rel_error(analytic, fd, floor), fd, h1, "richardson"), key=_by_error)
    rel, fd, h, method = best
    return {
        "name": f"{name}[{','.join(str(i) for i in idx)}]" if idx else name,
        "analytic": analytic,
        "finite_difference": float(fd),
        "rel_error": float(rel),
        "step": float(h),
        "method": method,
        "steps_tried": len(central),
        "ok": bool(rel <= rtol),
    }


def _by_error(candidate: tuple[float, float, float, str]) -> float:
    return candidate[0]


def run_verify(args: argparse.Namespace) -> int:
    """CLI handler for ``revhpo verify``."""
    from revhpo.service.data import DataError
    from revhpo.service.spec import SpecError

    from revhpo.runtime import import_tensorflow

    bad = [
        f"{flag} must be {what}. Received: {flag}={value!r}"
        for flag, value, ok, what in (
            ("--eps", args.eps, args.eps > 0, "> 0"),
            ("--rtol", args.rtol, args.rtol >= 0, "≥ 0"),
            ("--rtol-float32", args.rtol_float32, args.rtol_float32 >= 0, "≥ 0"),
            ("--samples", args.samples, args.samples >= 1, "≥ 1"),
        )
        if not ok
    ]
    if bad:
        print(f"revhpo verify: {bad[0]}", file=sys.stderr)
        return 2
    import_tensorflow()  # quietly, before revhpo.service.tuning imports it

    try:
        report = verify_spec(
            args.spec,
            samples=args.samples,
            eps=args.eps,
            rtol=args.rtol,
            rtol_float32=args.rtol_float32,
            seed=args.seed,
            steps=args.steps,
            dataset_dir=args.dataset_dir,
        )
    except SpecError as exc:
        print(f"revhpo verify: invalid spec: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"revhpo verify: {exc}", file=sys.stderr)
        return 2
    for warning in report.get("warnings", []):
        print(f"revhpo verify: warning: {warning}", file=sys.stderr)
    status = 0 if report["ok"] else 1
    if report.get("error_kind") == FIXED_POINT_RANGE:
        status = 2  # the spec's initial weights cannot be represented: an invalid spec
        print(f"revhpo verify: {report['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return status
    if status == 2:
        return status
    print(f"exact recovery of w0 and v0 : {'yes' if report['exact_recovery'] else 'NO'}")
    print(f"buffer empty after reverse  : {'yes' if report['buffer_empty'] else 'NO'}")
    if "bits_held_per_weight" in report:
        print(
            f"buffer bits per weight      : {report['bits_held_per_weight']:.2f} held, "
            f"{report['info_bound_bits_per_weight']:.2f} information bound"
        )
    print(
        f"dtypes                      : exact run {report['exact_dtype']}, finite "
        f"differences {report['finite_difference_dtype']} (plain training)"
    )
    if report.get("error"):
        print(f"error                       : {report['error']}")
    if report["hypergradients"]:
        print(
            f"\n{'hyperparameter':<34}{'analytic':>14}{'finite diff':>14}{'rel err':>10}"
            f"  {'difference used'}"
        )
        for r in report["hypergradients"]:
            print(
                f"{r['name']:<34}{r['analytic']:>14.6e}{r['finite_difference']:>14.6e}"
                f"{r['rel_error']:>10.1e}  {r['method']} {r['step']:.0e}"
            )
        why = "" if report["exact_dtype"] == "float64" else " (float32 exact run)"
        print(
            f"\nmax relative error {report['max_rel_error']:.2e} "
            f"(tolerance {report['rtol']:g}{why})"
        )
    print("OK" if report["ok"] else "FAILED")
    return status


def run_bench(args: argparse.Namespace) -> int:
    """CLI handler for ``revhpo bench``."""
    from revhpo.runtime import import_tensorflow, require_exact_ops

    import_tensorflow()  # quietly, before its first import
    import tensorflow as tf
    from revhpo.optimizers import benchmark as bm

    require_exact_ops()
    sizes_arg = args.sizes or ",".join(map(str, bm.LARGE_SIZES if args.large else bm.DEFAULT_SIZES))
    mem_arg = args.memory_steps
    if mem_arg is None:
        mem_arg = "" if args.large else "100,1000"
    steps = args.steps if args.steps is not None else (bm.LARGE_STEPS if args.large else 100)
    try:
        sizes = [int(s) for s in sizes_arg.split(",")]
        mem_steps = [int(s) for s in mem_arg.split(",") if s.strip()]
    except ValueError:
        print(
            f"revhpo bench: --sizes and --memory-steps take comma-separated integers. "
            f"Received: --sizes={sizes_arg!r} --memory-steps={mem_arg!r}",
            file=sys.stderr,
        )
        return 2
    if steps < 1 or args.repeats < 1:
        print(
            f"revhpo bench: --steps and --repeats must be at least 1. "
            f"Received: --steps={steps} --repeats={args.repeats}",
            file=sys.stderr,
        )
        return 2
    cold_spec = args.cold_spec
    if cold_spec is None:
        cold_spec = str(_DEFAULT_COLD_SPEC)
    dtype = tf.float64 if args.dtype == "float64" else tf.float32
    problem = bm.mlp_bench_problem(sizes, batch=args.batch, dtype=dtype)
    out: dict[str, Any] = {
        "sizes": sizes,
        "batch": args.batch,
        "alpha": args.alpha,
        "gamma": args.gamma,
        "dtype": args.dtype,
    }
    out.update(
        bm.measure_engine(
            problem,
            steps,
            alpha=args.alpha,
            gamma=args.gamma,
            repeats=args.repeats,
            replicas=not args.no_replicas,
        )
    )
    # older names, kept for scripts that read them: the per-step dispatch baseline
    out["plain_s"] = out["plain_loop_s"]["per_step"]
    out["forward_over_plain"] = out["forward_over_plain_per_step"]
    out["reverse_over_plain"] = out["reverse_over_plain_per_step"]
    notes: dict[str, str] = {}
    if args.no_replicas:
        notes["replicas_8_over_1"] = "not measured (--no-replicas)"
    out.update(_bench_first_hypergradient(cold_spec, args.cold_steps))
    if out["first_hypergradient_s"] is None:
        notes["first_hypergradient_s"] = out.pop("first_hypergradient_error")
    out["notes"] = notes
    memory = {}
    for t in mem_steps:
        rev = bm.peak_memory("reversible", sizes, t, args.batch)["peak_mib"]
        unr = bm.peak_memory("unrolled", sizes, t, args.batch)["peak_mib"]
        memory[str(t)] = {"reversible_peak_mib": rev, "unrolled_peak_mib": unr}
    out["peak_memory"] = memory
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_bench(out)
    return 0


#: The spec whose first hypergradient ``revhpo bench`` times in a cold process.
_DEFAULT_COLD_SPEC = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.yaml"

# A cold process (python -c): imports, builds the spec's problem, runs meta-iteration 0's
# hypergradient (exact forward + reverse, tracing included); prints wall-clock time stamps.
_COLD_CHILD = """
import json, sys, time
import revhpo
from revhpo.runtime import import_tensorflow
import_tensorflow()
from revhpo.service.spec import load_spec
from revhpo.service.tuning import build_problem
t_imported = time.time()
spec = load_spec(sys.argv[1])
if len(sys.argv) > 2:
    data = spec.model_dump()
    data["training"]["steps"] = int(sys.argv[2])
    spec = load_spec(data)
problem = build_problem(spec)
t_built = time.time()
ev = problem.evaluate(seed=spec.training.seed)
t_done = time.time()
print(json.dumps({"t_imported": t_imported, "t_built": t_built, "t_done": t_done,
                  "steps": problem.steps, "exact": bool(ev.hyper.certificate.ok)}))
"""


def _bench_first_hypergradient(spec: str, steps: int | None) -> dict[str, Any]:
    """Wall time of a fresh ``python -c`` process from its start to its first hypergradient
    (imports, data, tracing and compiling included), twice: with an empty persistent XLA
    cache (``first_hypergradient_s``: a first run on this machine) and with the cache the
    first process filled (``first_hypergradient_warm_cache_s``: a later job of the same net).
    ``first_hypergradient_s`` is None, with ``first_hypergradient_error``, when skipped or
    failed."""
    import os
    import tempfile

    if not spec:
        return {"first_hypergradient_s": None, "first_hypergradient_error": "skipped"}
    if not Path(spec).is_file():
        return {
            "first_hypergradient_s": None,
            "first_hypergradient_error": f"spec not found: {spec}",
        }
    cmd = [sys.executable, "-c", _COLD_CHILD, spec] + ([str(steps)] if steps else [])
    with tempfile.TemporaryDirectory(prefix="revhpo-bench-xla-") as cache:
        # this process's TF_XLA_FLAGS already names the user's cache (revhpo.runtime), and the
        # children would inherit it: replaced by the new folder
        flags = [
            f
            for f in os.environ.get("TF_XLA_FLAGS", "").split()
            if not f.startswith("--tf_xla_persistent_cache_directory")
        ]
        flags.append(f"--tf_xla_persistent_cache_directory={cache}")
        env = dict(os.environ, REVHPO_XLA_CACHE=cache, TF_XLA_FLAGS=" ".join(flags))
        cold = _bench_cold_process(cmd, env, spec)
        if "error" in cold:
            return {"first_hypergradient_s": None, "first_hypergradient_error": cold["error"]}
        cold_files = sum(len(files) for _, _, files in os.walk(cache))
        warm = _bench_cold_process(cmd, env, spec)
    cold["xla_cache"] = "empty (a new folder)"
    warm["xla_cache_files"] = cold_files
    warm["xla_cache"] = "filled by the first process"
    return {
        "first_hypergradient_s": cold.pop("total_s"),
        "first_hypergradient": cold,
        "first_hypergradient_warm_cache_s": warm.pop("total_s", None),
        "first_hypergradient_warm_cache": warm,
    }


def _bench_cold_process(cmd: list[str], env: dict[str, str], spec: str) -> dict[str, Any]:
    """One cold child: its time stamps as seconds from the moment it was started."""
    import subprocess
    import time

    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "total_s": r["t_done"] - t0,
        "spec": spec,
        "steps": r["steps"],
        "exact": r["exact"],
        "imports_s": r["t_imported"] - t0,
        "build_s": r["t_built"] - r["t_imported"],
        "hypergradient_s": r["t_done"] - r["t_built"],
    }


def _print_bench(out: dict[str, Any]) -> None:
    """The human form of ``revhpo bench``'s figures: a short table."""
    plain, fast = out["plain_loop_s"], out["fastest_plain"]
    print(
        f"MLP {'-'.join(map(str, out['sizes']))} (N = {out['n_params']:,}), T = {out['steps']}, "
        f"batch {out['batch']}, alpha {out['alpha']:g}, gamma {out['gamma']:g}, {out['dtype']}; "
        f"median of {out['repeats']} interleaved rounds"
    )
    rows = [
        ("plain, whole loop (tf.while_loop)", plain["while_loop"], fast == "while_loop"),
        ("plain, whole loop, XLA", plain["xla"], fast == "xla"),
        ("plain, one compiled step per call", plain["per_step"], False),
        ("exact forward", out["forward_s"], False),
        ("exact reverse", out["reverse_s"], False),
    ]
    print(f"\n{'':36}{'time':>10}{'÷ fastest plain':>18}")
    for name, s, best in rows:
        mark = "  (fastest plain)" if best else ""
        print(f"{name:36}{s:>9.3f}s{s / out['fastest_plain_s']:>18.2f}{mark}")
    print(
        f"\nforward_over_fastest_plain {out['forward_over_fastest_plain']:.2f}   "
        f"reverse_over_fastest_plain {out['reverse_over_fastest_plain']:.2f}"
    )
    print(
        f"forward_over_plain_per_step {out['forward_over_plain_per_step']:.2f}   "
        f"reverse_over_plain_per_step {out['reverse_over_plain_per_step']:.2f}"
    )
    bob = out["bits_over_bound"]
    print(
        f"buffer: {out['bits_held']:.1f} bits/weight held, {out['info_bound_bits']:.1f} bound"
        f"   bits_over_bound {'n/a' if bob is None else f'{bob:.3f}'}"
    )
    first = out["first_hypergradient_s"]
    if first is None:
        print(f"first hypergradient (cold process): n/a ({out['notes']['first_hypergradient_s']})")
    else:
        for label, key in (("empty XLA cache", ""), ("warm XLA cache", "_warm_cache")):
            fh, total = out[f"first_hypergradient{key}"], out.get(f"first_hypergradient{key}_s")
            if total is None:
                print(f"first hypergradient (cold process, {label}): n/a ({fh.get('error')})")
                continue
            print(
                f"first hypergradient (cold process, {Path(fh['spec']).name}, T = "
                f"{fh['steps']}, {label}): {total:.1f} s (imports {fh['imports_s']:.1f} s, "
                f"data and net {fh['build_s']:.1f} s, hypergradient with tracing "
                f"{fh['hypergradient_s']:.1f} s)"
            )
    rep = out["replicas_s"]
    if rep is None:
        print(f"replicas_8_over_1: n/a ({out['notes']['replicas_8_over_1']})")
    else:
        print(
            f"replicas: 1 in {rep['1']:.3f} s, 8 together in {rep['8']:.3f} s (forward + "
            f"reverse)   replicas_8_over_1 {out['replicas_8_over_1']:.2f}"
        )
    for t, m in out["peak_memory"].items():
        print(
            f"peak RSS at T = {t:<6}  reversible {m['reversible_peak_mib']:.0f} MiB, "
            f"unrolled autodiff {m['unrolled_peak_mib']:.0f} MiB"
        )
