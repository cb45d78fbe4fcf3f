"""precise/: buffer memory vs the information bound, and the cost of an exact update.

Run: .venv/bin/python benchmarks/bench_precise.py [--elements 100000] [--steps 1000]
Prints a Markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from revhpo.precise import (  # noqa: E402
    DEFAULT_GROUP,
    FixedArray,
    group_layout,
    group_mul_kernel,
    to_fixed,
    to_fixed_unchecked,
    to_float,
)


def buffer_ratio(rate: float, elements: int, steps: int, group: int = DEFAULT_GROUP) -> dict:
    """Multiply ``steps`` times by ``rate``, flush, and compare memory with the bound."""
    a = FixedArray(np.random.default_rng(0).normal(size=elements), group=group)
    start = a.ints.numpy().copy()
    for _ in range(steps):
        a.mul(rate)
    live = a.buffer.bits_held()  # words + the 64-bit registers, during training
    a.buffer.flush()
    held = a.buffer.bits_held()  # between the passes: host words only
    bound = a.buffer.info_bits
    a.buffer.restore()
    for _ in range(steps):
        a.div(rate)
    exact = bool(np.array_equal(a.ints.numpy(), start)) and a.buffer.is_empty()
    return {
        "rate": rate,
        "steps": steps,
        "elements": elements,
        "group": group,
        "bound_bits": bound,
        "held_bits": held,
        "held_over_bound": held / bound,
        "live_bits": live,
        "live_over_bound": live / bound,
        "exact": exact,
    }


def update_ratio(elements: int, repeats: int = 20, group: int = DEFAULT_GROUP) -> dict:
    """Time of one exact momentum update (mul, sub, add) ÷ the float64 update, same sizes."""
    rng = np.random.default_rng(1)
    w = tf.constant(rng.normal(size=elements))
    v = tf.constant(rng.normal(size=elements))
    g = tf.constant(rng.normal(size=elements))
    wi, vi = to_fixed(w), to_fixed(v)
    g_rows, registers = group_layout(elements, group)
    reg = tf.zeros([registers], tf.int64)
    n, d = tf.constant(9, tf.int64), tf.constant(10, tf.int64)
    alpha, omg, gamma = (tf.constant(x, tf.float64) for x in (0.1, 0.1, 0.9))

    @tf.function(jit_compile=True)
    def exact(wi, vi, reg, g):
        vi, reg = group_mul_kernel(vi, reg, n, d, g_rows)
        gq, _ = to_fixed_unchecked(omg * g, 52)
        vi = vi - gq
        step, _ = to_fixed_unchecked(alpha * to_float(vi, 52), 52)
        return wi + step, vi, reg

    @tf.function
    def plain(w, v, g):
        v = gamma * v - omg * g
        return w + alpha * v, v

    @tf.function(jit_compile=True)
    def plain_xla(w, v, g):
        v = gamma * v - omg * g
        return w + alpha * v, v

    def timeit(fn, *args):
        fn(*args)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = fn(*args)
            _ = out[0].numpy()
            best = min(best, (time.perf_counter() - t0) / repeats)
        return best

    te = timeit(exact, wi, vi, reg, g)
    tp = timeit(plain, w, v, g)
    tx = timeit(plain_xla, w, v, g)
    return {
        "elements": elements,
        "group": group,
        "exact_ms": te * 1e3,
        "float64_ms": tp * 1e3,
        "float64_xla_ms": tx * 1e3,
        "exact_over_float64": te / tp,
        "exact_over_float64_xla": te / tx,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--elements", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--update-elements", type=int, default=1_000_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [buffer_ratio(r, args.elements, args.steps) for r in (0.5, 0.9, 0.99)]
    rows.append(buffer_ratio(0.99, max(args.elements // 10, 1), 10 * args.steps))
    rows += [buffer_ratio(r, args.elements, args.steps, group=1) for r in (0.9, 0.99)]
    upd = update_ratio(args.update_elements)
    if args.json:
        print(json.dumps({"buffer": rows, "update": upd}, indent=2))
        return
    print(
        "| rate | steps | elements | elements per register | bound (bits/elt) "
        "| held between passes | held/bound | live during training | live/bound | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rate']} | {r['steps']:,} | {r['elements']:,} | {r['group']} "
            f"| {r['bound_bits']:.1f} | {r['held_bits']:.1f} | {r['held_over_bound']:.3f} "
            f"| {r['live_bits']:.1f} | {r['live_over_bound']:.3f} | {r['exact']} |"
        )
    print(
        f"\nExact momentum update (mul, sub, add) on {upd['elements']:,} elements: "
        f"{upd['exact_ms']:.2f} ms; float64 TF {upd['float64_ms']:.2f} ms "
        f"(ratio {upd['exact_over_float64']:.2f}); float64 XLA {upd['float64_xla_ms']:.2f} ms "
        f"(ratio {upd['exact_over_float64_xla']:.2f})"
    )


if __name__ == "__main__":
    main()
