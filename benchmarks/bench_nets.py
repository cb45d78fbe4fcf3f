"""Benchmarks of the implicit and semiseparable families (BENCHMARKS.md, section "nets").

Run: ``TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_nets.py [--quick] [--write]``.
``--write`` replaces the body of the section "## nets: implicit and semiseparable families" of
BENCHMARKS.md with the tables printed; ``--quick`` runs a reduced set (smoke test).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revhpo.hessian import grad_and_hvp  # noqa: E402

from revhpo import nets  # noqa: E402
from revhpo.runtime import require_exact_ops  # noqa: E402

HEADING = "## nets: implicit and semiseparable families"
COMMAND = "TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_nets.py --write"


def best_times(
    fns: list[Callable[[], object]], rounds: int = 7, min_time: float = 0.05
) -> list[float]:
    """Seconds per call of each (already traced) function: the minimum over ``rounds`` rounds,
    the functions interleaved within each round so that they see the same machine load."""
    numbers = []
    for fn in fns:
        fn()
        number = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            if time.perf_counter() - t0 >= min_time or number >= 1024:
                break
            number *= 2
        numbers.append(number)
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, (fn, number) in enumerate(zip(fns, numbers, strict=True)):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / number)
    return best


def _sync(x: object) -> object:
    for t in tf.nest.flatten(x):
        t.numpy()
    return x


# ----- SSS vs dense ------------------------------------------------------------------------


def _dense_times(x: tf.Tensor, n: int) -> tuple[Callable, Callable]:
    w = tf.Variable(np.random.default_rng(1).normal(size=(n, n)) / np.sqrt(n), dtype=tf.float32)
    matvec = tf.function(lambda: tf.matmul(x, w))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(tf.matmul(x, w)))
        w.assign_sub(1e-6 * tape.gradient(loss, w))
        return loss

    return lambda: _sync(matvec()), lambda: _sync(step())


def _sss_times(x: tf.Tensor, n: int, k: int, d: int) -> tuple[Callable, Callable]:
    net = nets.build_net(
        {"family": "sss", "sizes": [], "blocks": k, "state": d, "output": "sss"}, n, n
    )
    params = [tf.Variable(p) for p in net.init_params(0, dtype=tf.float32)[:-1]]
    names = [s.name.split("/")[1] for s in net.param_specs[:-1]]

    def gens() -> dict[str, tf.Variable]:
        return dict(zip(names, params, strict=True))

    matvec = tf.function(lambda: nets.sss_matvec(x, gens(), k))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(nets.sss_matvec(x, gens(), k)))
        for p, g in zip(params, tape.gradient(loss, params), strict=True):
            p.assign_sub(1e-6 * g)
        return loss

    return lambda: _sync(matvec()), lambda: _sync(step())


def bench_sss(sizes: list[int], states: list[int], batch: int, block: int) -> list[str]:
    """SSS layer vs dense layer: matvec and training step (forward + gradient), float32."""
    rows = [
        f"SSS layer (K = n/{block} blocks of {block}, float32, batch {batch}) vs a dense n×n "
        "layer. *Step* = loss ½‖layer(x)‖², its gradient w.r.t. the layer's weights, and an SGD "
        "update, compiled with `tf.function`.",
        "",
        "| n | d | params dense | params SSS | matvec dense | matvec SSS | step dense "
        "| step SSS | step speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        x = tf.constant(np.random.default_rng(0).normal(size=(batch, n)), tf.float32)
        dense_fns = _dense_times(x, n)
        for d in states:
            k = n // block
            t_mv_d, t_st_d, t_mv_s, t_st_s = best_times([*dense_fns, *_sss_times(x, n, k, d)])
            n_sss = nets.sss_param_count(k, d, block, block)
            rows.append(
                f"| {n:,} | {d} | {n * n:,} | {n_sss:,} | {t_mv_d * 1e3:.2f} ms | "
                f"{t_mv_s * 1e3:.2f} ms | {t_st_d * 1e3:.2f} ms | {t_st_s * 1e3:.2f} ms | "
                f"{t_st_d / t_st_s:.1f}× |"
            )
            print(rows[-1], flush=True)
    return rows


# ----- implicit: iterations and derivative costs --------------------------------------------


def bench_iterations(kappas: list[float], n: int, batch: int) -> list[str]:
    """Picard iterations to the default tolerance (1e-10 relative) vs κ."""
    rng = np.random.default_rng(0)
    x = tf.constant(np.abs(rng.normal(size=(batch, 64))) + 0.1, tf.float64)
    rows = [
        f"Picard iterations to the default tolerance (relative change ≤ 1e-10), n = {n}, "
        f"batch {batch}, 64 inputs, float64. *Worst case*: nonnegative A with every row sum κ "
        "(Perron–Frobenius root κ), positive injections, relu (every unit active: the rate is "
        "exactly κ). *Random*: the default init scaled up so that ‖A‖∞ = κ.",
        "",
        "| κ | worst case relu | worst case tanh | random relu | random tanh "
        "| bound ⌈log(1e-10)/log κ⌉ |",
        "|---|---|---|---|---|---|",
    ]
    for kappa in kappas:
        cells = []
        for kind in ("worst", "random"):
            for act in ("relu", "tanh"):
                net = nets.build_net(
                    {"family": "implicit", "n": n, "activation": act, "kappa": kappa,
                     "max_iter": 100000}, 64, 10,
                )  # fmt: skip
                p = net.init_params(0)
                if kind == "worst":
                    w = rng.uniform(0.1, 1.0, size=(n, n))
                    p[0] = tf.constant(2.0 * w / w.sum(axis=1, keepdims=True), tf.float64)
                    # Small injections (≈ 0.01): tanh stays near its linear regime.
                    p[1] = tf.constant(rng.uniform(0.0, 2e-4, size=(n, 64)), tf.float64)
                    p[2] = tf.constant(rng.uniform(0.0, 2e-4, size=(n,)), tf.float64)
                else:
                    p[0] = 100.0 * p[0]  # ‖W‖∞ ≫ κ: A = κ W / ‖W‖∞
                cells.append(str(net.solve_info(p, x)["iterations"]))
        bound = int(np.ceil(np.log(1e-10) / np.log(kappa)))
        rows.append(f"| {kappa} | {' | '.join(cells)} | {bound} |")
        print(rows[-1], flush=True)
    return rows


def bench_derivative_costs(configs: list[tuple[str, dict]], batch: int) -> list[str]:
    """Time of loss, gradient and fused gradient+HVP (forward-over-reverse), float64."""
    rows = [
        f"Cost of the gradient and of gradient + HVP (one fused forward-over-reverse pass, "
        f"`hessian.grad_and_hvp`) ÷ the forward pass (loss), float64, batch {batch}, 64 inputs, "
        "10 classes, `tf.function`, random init.",
        "",
        "| net | params | forward | gradient ÷ forward | gradient+HVP ÷ forward |",
        "|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 64)), tf.float64)
    y = tf.constant(rng.integers(0, 10, batch), tf.int32)
    for label, cfg in configs:
        net = nets.build_net(cfg, 64, 10)
        t_f, t_g, t_h = _derivative_times(net, x, y, rng)
        rows.append(
            f"| {label} | {net.num_params:,} | {t_f * 1e3:.2f} ms | {t_g / t_f:.2f} | "
            f"{t_h / t_f:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def _derivative_times(
    net: nets.Net, x: tf.Tensor, y: tf.Tensor, rng: np.random.Generator
) -> tuple[float, float, float]:
    params = net.init_params(0)
    v = [tf.constant(rng.normal(size=p.shape), tf.float64) for p in params]

    def f(*p: tf.Tensor) -> tf.Tensor:
        return nets.task_loss(net, net.apply(list(p), x), x, y)

    fwd = tf.function(lambda p: f(*p))

    @tf.function
    def grad(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            val = f(*p)
        return tape.gradient(val, p)

    ghvp = tf.function(lambda p, w: grad_and_hvp(f, p, w))
    t_f, t_g, t_h = best_times(
        [lambda: _sync(fwd(params)), lambda: _sync(grad(params)), lambda: _sync(ghvp(params, v))]
    )
    return t_f, t_g, t_h


# ----- hypergradient cost ratios -----------------------------------------------------------


def bench_hypergradient(configs: list[tuple[str, dict]], steps: int, batch: int) -> list[str]:
    """``optimizers.benchmark.measure`` on digits for ~40k-parameter nets."""
    try:
        from revhpo.optimizers import minibatch_indices
        from revhpo.optimizers.benchmark import measure
    except ImportError as exc:  # pragma: no cover - depends on the optimizers package
        return [f"(skipped: optimizers.benchmark.measure is not available: {exc})"]
    from sklearn.datasets import load_digits

    data = load_digits()
    xs = (data.data / 16.0).astype(np.float64)
    ys = data.target.astype(np.int32)
    x_tr, y_tr = tf.constant(xs[:1000]), tf.constant(ys[:1000])
    x_va, y_va = tf.constant(xs[1000:1397]), tf.constant(ys[1000:1397])
    rows = [
        f"Digits (1000 train / 397 validation), T = {steps}, batch {batch}, float64, α = 0.1, "
        "γ = 0.9, `optimizers.benchmark.measure` (minimum of 2 repeats after an untimed "
        "tracing run). Ratios to plain float SGD-momentum on the same net.",
        "",
        "| net | params | plain | exact forward ÷ plain | exact reverse ÷ plain | "
        "buffer bits / bound |",
        "|---|---|---|---|---|---|",
    ]
    for label, cfg in configs:
        net = nets.build_net(cfg, 64, 10)

        def train_loss(w, theta, t, net=net):
            idx = minibatch_indices(0, t, 1000, batch)
            xb = tf.cast(tf.gather(x_tr, idx), w[0].dtype)
            return nets.task_loss(net, net.apply(w, xb), xb, tf.gather(y_tr, idx))

        def val_loss(w, net=net):
            xv = tf.cast(x_va, w[0].dtype)
            return nets.task_loss(net, net.apply(w, xv), xv, y_va)

        m = measure(train_loss, val_loss, net.init_params(0), steps, repeats=2)
        rows.append(
            f"| {label} | {net.num_params:,} | {m['plain_s']:.2f} s | "
            f"{m['forward_over_plain']:.2f} | {m['reverse_over_plain']:.2f} | "
            f"{m['bits_over_bound']:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def write_section(body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the tables of the nets section of BENCHMARKS.md (up to the next ``## ``),
    keeping a hand-written paragraph that starts with a line ``Reading:``, if any."""
    text = path.read_text()
    start = text.index(HEADING) + len(HEADING)
    nxt = re.search(r"^## ", text[start:], flags=re.M)
    end = start + nxt.start() if nxt else len(text)
    reading = re.search(r"^Reading:.*", text[start:end], flags=re.M | re.S)
    kept = "\n\n" + reading.group(0).strip() if reading else ""
    path.write_text(text[:start] + "\n\n" + body.strip() + kept + "\n\n" + text[end:])


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks, print markdown, optionally write it into BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a reduced set (smoke test)")
    ap.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    ap.add_argument("--skip-hyper", action="store_true", help="skip the hypergradient ratios")
    ap.add_argument("--only-hyper", action="store_true", help="only the hypergradient ratios")
    args = ap.parse_args(argv)
    require_exact_ops()
    quick = args.quick
    parts = [
        f"Command: `{COMMAND}` ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU threads, TensorFlow {tf.__version__}; the machine was shared, "
        "so absolute times are noisy, ratios less so).",
        "",
    ]
    if not args.only_hyper:
        parts += ["### SSS vs dense layers", ""]
        parts += bench_sss([1024] if quick else [1024, 4096], [4, 16], batch=64, block=64)
        parts += ["", "### Implicit models: fixed-point iterations vs κ", ""]
        kappas = [0.5, 0.95] if quick else [0.5, 0.8, 0.9, 0.95, 0.99]
        parts += bench_iterations(kappas, 100, 50)
        parts += ["", "### Implicit models: derivative costs", ""]
        deriv = [
            ("mlp 64-50-50-10", {"family": "mlp", "sizes": [50, 50]}),
            ("implicit n=32", {"family": "implicit", "n": 32}),
            ("implicit n=128", {"family": "implicit", "n": 128}),
            ("implicit n=128 tanh", {"family": "implicit", "n": 128, "activation": "tanh"}),
            ("implicit n=128 rank 16", {"family": "implicit", "n": 128, "rank": 16}),
            ("sss 256-256, K=8, d=4", {"family": "sss", "sizes": [256, 256]}),
        ]
        parts += bench_derivative_costs(deriv[:3] if quick else deriv, batch=50)
    if not args.skip_hyper:
        parts += ["", "### Hypergradient cost ratios (~40k parameters)", ""]
        hyper = [
            ("mlp 64-300-10 (reference)", {"family": "mlp", "sizes": [300]}),
            ("implicit n=160 relu", {"family": "implicit", "n": 160}),
            ("sss 384-384, K=16, d=8", {"family": "sss", "sizes": [384, 384], "blocks": 16,
                                        "state": 8}),
        ]  # fmt: skip
        parts += bench_hypergradient(hyper, steps=10 if quick else 50, batch=50)
    body = "\n".join(parts)
    print(body)
    if args.write:
        write_section(body)


if __name__ == "__main__":
    main()
