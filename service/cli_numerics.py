"""``revhpo verify SPEC`` and ``revhpo bench``: the numerics, checked and timed by the user."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "run_bench", "run_verify", "verify_spec"]


def register(subparsers: Any) -> None:
    """Add the ``verify`` and ``bench`` subcommands."""
    p = subparsers.add_parser(
        "verify",
        help="check exact reversal and hypergradients of a job spec against finite differences",
        description="Runs the exact forward and reverse pass of the training a SPEC describes "
        "(its initial hyperparameters), checks bit-exact recovery of the initial state, and "
        "compares a random subset of hypergradients with central finite differences of the "
        "validation loss after plain float64 training. Exit status 1 when a check fails.",
    )
    p.add_argument("spec", help="job spec file (.yaml/.yml/.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--samples", type=int, default=8, help="hypergradients to check")
    p.add_argument("--eps", type=float, default=1e-5, help="finite-difference step (raw scale)")
    p.add_argument("--rtol", type=float, default=1e-4, help="largest relative error accepted")
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
        help="time exact reversible training against plain SGD-momentum",
        description="Measures, in one process, the exact forward pass and the reverse pass as "
        "ratios to plain float SGD-momentum with the same gradient function, the buffer's bits "
        "over the information bound, and peak memory of the reversible method vs autodiff "
        "through the unrolled loop (each in a fresh subprocess).",
    )
    b.add_argument("--sizes", default="784,50,50,10", help="MLP layer sizes (N≈42k weights)")
    b.add_argument("--steps", type=int, default=100, help="training steps T")
    b.add_argument("--batch", type=int, default=200, help="minibatch size")
    b.add_argument("--gamma", type=float, default=0.9, help="momentum decay")
    b.add_argument("--alpha", type=float, default=0.1, help="learning rate")
    b.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="float type of the net"
    )
    b.add_argument("--repeats", type=int, default=3, help="timed repeats (the minimum is kept)")
    b.add_argument(
        "--memory-steps",
        default="100,1000",
        help="T values for the peak-memory comparison, comma-separated ('' to skip)",
    )
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    b.set_defaults(func=run_bench)


def _rel_error(analytic: float, fd: float, floor: float) -> float:
    return abs(analytic - fd) / max(abs(fd), abs(analytic), floor)


def verify_spec(
    spec: Any,
    *,
    samples: int = 8,
    eps: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
    steps: int | None = None,
    dataset_dir: str | None = None,
) -> dict[str, Any]:
    """Check one spec's exact reversal and hypergradients; returns the report (JSON-able).

    Entries are drawn at random from every tuned raw array. Relative errors use the scale
    ``max(|fd|, |analytic|, 1e-6 · max |hypergradient|)`` so that entries whose gradient is
    zero to rounding do not divide by nothing.
    """
    import numpy as np
    from revhpo.optimizers import DivergenceError, ExactnessError
    from revhpo.service.spec import load_spec
    from revhpo.service.tuning import build_problem

    spec = load_spec(spec)
    if steps is not None:
        data = spec.model_dump()
        data["training"]["steps"] = int(steps)
        spec = load_spec(data)
    problem = build_problem(spec, dataset_dir=dataset_dir)
    report: dict[str, Any] = {
        "spec": spec.name if hasattr(spec, "name") else None,
        "steps": problem.steps,
        "exact_recovery": False,
        "buffer_empty": False,
        "max_rel_error": None,
        "hypergradients": [],
        "ok": False,
    }
    try:
        ev = problem.evaluate(seed=seed)
    except ExactnessError as exc:
        cert = exc.certificate
        report.update(
            exact_recovery=cert.exact_w0 and cert.exact_v0,
            buffer_empty=cert.buffer_empty,
            error=str(exc),
        )
        return report
    except DivergenceError as exc:
        report["error"] = str(exc)
        return report
    cert = ev.hyper.certificate
    report.update(
        exact_recovery=cert.exact_w0 and cert.exact_v0,
        buffer_empty=cert.buffer_empty,
        val_loss=ev.val_loss,
        bits_held_per_weight=cert.bits_held,
        info_bound_bits_per_weight=cert.info_bound_bits,
    )
    raw = problem.initial_raw()
    entries = [(k, i) for k in sorted(raw) for i in range(raw[k].size)]
    if not entries:
        report["error"] = "the spec tunes no hyperparameter: nothing to compare"
        return report
    rng = np.random.default_rng(seed)
    # one entry of every tuned array first, then random entries from all of them
    picks: list[int] = []
    start = 0
    for k in sorted(raw):
        if len(picks) < samples:
            picks.append(start + int(rng.integers(raw[k].size)))
        start += raw[k].size
    rest = [j for j in range(len(entries)) if j not in set(picks)]
    extra = max(0, min(samples, len(entries)) - len(picks))
    picks += [int(j) for j in rng.choice(rest, size=extra, replace=False)] if extra else []
    scale = max(float(np.max(np.abs(g))) for g in ev.grads.values()) if ev.grads else 0.0
    floor = max(1e-6 * scale, 1e-300)
    rows = []
    for j in sorted(picks):
        name, flat = entries[j]
        shape = raw[name].shape
        idx = np.unravel_index(flat, shape) if shape else ()

        def at(delta: float, name: str = name, idx: Any = idx) -> float:
            moved = {k: v.copy() for k, v in raw.items()}
            moved[name][idx] += delta
            return problem.val_loss_only(moved, seed)

        fd = (at(eps) - at(-eps)) / (2 * eps)
        analytic = float(ev.grads[name][idx])
        rows.append(
            {
                "name": f"{name}[{','.join(str(int(i)) for i in idx)}]" if shape else name,
                "analytic": analytic,
                "finite_difference": fd,
                "rel_error": _rel_error(analytic, fd, floor),
            }
        )
    report["hypergradients"] = rows
    report["max_rel_error"] = max(r["rel_error"] for r in rows)
    report["ok"] = bool(
        report["exact_recovery"] and report["buffer_empty"] and report["max_rel_error"] <= rtol
    )
    return report


def run_verify(args: argparse.Namespace) -> int:
    """CLI handler for ``revhpo verify``."""
    from revhpo.service.spec import SpecError

    from revhpo.runtime import import_tensorflow

    import_tensorflow()  # quietly, before revhpo.service.tuning imports it

    try:
        report = verify_spec(
            args.spec,
            samples=args.samples,
            eps=args.eps,
            rtol=args.rtol,
            seed=args.seed,
            steps=args.steps,
            dataset_dir=args.dataset_dir,
        )
    except SpecError as exc:
        print(f"revhpo verify: invalid spec: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    print(f"exact recovery of w0 and v0 : {'yes' if report['exact_recovery'] else 'NO'}")
    print(f"buffer empty after reverse  : {'yes' if report['buffer_empty'] else 'NO'}")
    if "bits_held_per_weight" in report:
        print(
            f"buffer bits per weight      : {report['bits_held_per_weight']:.2f} held, "
            f"{report['info_bound_bits_per_weight']:.2f} information bound"
        )
    if report.get("error"):
        print(f"error                       : {report['error']}")
    if report["hypergradients"]:
        print(f"\n{'hyperparameter':<34}{'analytic':>14}{'finite diff':>14}{'rel err':>10}")
        for r in report["hypergradients"]:
            print(
                f"{r['name']:<34}{r['analytic']:>14.6e}{r['finite_difference']:>14.6e}"
                f"{r['rel_error']:>10.1e}"
            )
        print(f"\nmax relative error {report['max_rel_error']:.2e} (tolerance {args.rtol:g})")
    print("OK" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


def run_bench(args: argparse.Namespace) -> int:
    """CLI handler for ``revhpo bench``."""
    from revhpo.runtime import import_tensorflow, require_exact_ops

    import_tensorflow()  # quietly, before its first import
    import tensorflow as tf
    from revhpo.optimizers.benchmark import measure, mlp_problem, peak_memory

    require_exact_ops()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        mem_steps = [int(s) for s in args.memory_steps.split(",") if s.strip()]
    except ValueError:
        print(
            f"revhpo bench: --sizes and --memory-steps take comma-separated integers. "
            f"Received: --sizes={args.sizes!r} --memory-steps={args.memory_steps!r}",
            file=sys.stderr,
        )
        return 2
    dtype = tf.float64 if args.dtype == "float64" else tf.float32
    train_loss, val_loss, w0 = mlp_problem(sizes, batch=args.batch, dtype=dtype)
    out = measure(
        train_loss,
        val_loss,
        w0,
        args.steps,
        alpha=args.alpha,
        gamma=args.gamma,
        dtype=dtype,
        repeats=args.repeats,
    )
    out.update(sizes=sizes, batch=args.batch, gamma=args.gamma, dtype=args.dtype)
    memory = {}
    for t in mem_steps:
        rev = peak_memory("reversible", sizes, t, args.batch)["peak_mib"]
        unr = peak_memory("unrolled", sizes, t, args.batch)["peak_mib"]
        memory[str(t)] = {"reversible_peak_mib": rev, "unrolled_peak_mib": unr}
    out["peak_memory"] = memory
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"MLP {'-'.join(map(str, sizes))} (N = {out['n_params']:,}), T = {args.steps}, "
        f"batch {args.batch}, gamma {args.gamma}, {args.dtype}"
    )
    print(f"plain SGD-momentum      {out['plain_s']:.3f} s")
    print(
        f"exact forward           {out['forward_s']:.3f} s   forward_over_plain "
        f"{out['forward_over_plain']:.2f}"
    )
    print(
        f"exact reverse           {out['reverse_s']:.3f} s   reverse_over_plain "
        f"{out['reverse_over_plain']:.2f}"
    )
    print(
        f"buffer                  {out['bits_held']:.1f} bits/weight held, "
        f"{out['info_bound_bits']:.1f} bound   bits_over_bound {out['bits_over_bound']:.3f}"
    )
    for t, m in memory.items():
        print(
            f"peak RSS at T = {t:<6}  reversible {m['reversible_peak_mib']:.0f} MiB, "
            f"unrolled autodiff {m['unrolled_peak_mib']:.0f} MiB"
        )
    return 0
