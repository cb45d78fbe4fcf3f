"""`revhpo bench`'s baselines: the plain loops train exactly as `PlainSGD` does, on the same
minibatches, and the CLI prints every documented figure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from revhpo.optimizers import PlainSGD, minibatch_indices
from revhpo.optimizers.benchmark import PerStepSGD, WholeLoopSGD, mlp_bench_problem

STEPS = 13  # more than two epochs of 47 // 10 = 4 steps: the table crosses epoch boundaries

#: The figures `revhpo bench --json` documents (service/cli_numerics.py, BENCHMARKS.md).
DOCUMENTED_RATIOS = (
    "forward_over_fastest_plain",
    "reverse_over_fastest_plain",
    "forward_over_plain_per_step",
    "reverse_over_plain_per_step",
    "per_step_over_fastest_plain",
    "bits_over_bound",
)
DOCUMENTED_KEYS = (
    *DOCUMENTED_RATIOS,
    "plain_loop_s",
    "fastest_plain",
    "fastest_plain_s",
    "forward_s",
    "reverse_s",
    "first_hypergradient_s",
    "first_hypergradient",
    "first_hypergradient_warm_cache_s",
    "first_hypergradient_warm_cache",
    "replicas_8_over_1",
    "notes",
    "bits_held",
    "info_bound_bits",
    "exact",
    "n_params",
    "steps",
    "repeats",
    "sizes",
    "batch",
    "dtype",
    "warmup_s",
    "samples_s",
    "index_table_s",
    "peak_memory",
)


def _problem():
    return mlp_bench_problem((6, 5, 3), n_train=47, n_val=10, batch=10, seed=3)


def _schedules(k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.uniform(0.05, 0.3, (STEPS, k)), rng.uniform(0.5, 0.95, (STEPS, k))


@pytest.mark.parametrize("variant", ["while_loop", "xla", "per_step"])
def test_plain_loops_train_as_plain_sgd(variant):
    p = _problem()
    alpha, gamma = _schedules(len(p.w0))
    ref_w, ref_losses = PlainSGD(p.train_loss, tf.float64).run(p.w0, alpha, gamma)
    loop = {
        "while_loop": lambda: WholeLoopSGD(p),
        "xla": lambda: WholeLoopSGD(p, jit_compile=True),
        "per_step": lambda: PerStepSGD(p),
    }[variant]()
    w, losses = loop.run(p.w0, alpha, gamma)
    assert len(w) == len(ref_w)
    for got, ref in zip(w, ref_w, strict=True):
        assert got.dtype == tf.float64
        scale = float(tf.reduce_max(tf.abs(ref)))
        assert float(tf.reduce_max(tf.abs(got - ref))) <= 1e-12 * scale
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    assert float(tf.reduce_max(tf.abs(w[0] - p.w0[0]))) > 1e-3  # it did train


@pytest.mark.parametrize(("steps", "n", "batch"), [(STEPS, 47, 10), (5, 50, 50), (9, 7, 2)])
def test_index_table_rows_are_minibatch_indices(steps, n, batch):
    p = mlp_bench_problem((6, 3), n_train=n, n_val=4, batch=batch, seed=5)
    table = p.table(steps)
    assert table.dtype == tf.int32 and table.shape == (steps, batch)
    for t in range(steps):
        np.testing.assert_array_equal(table[t].numpy(), minibatch_indices(5, t, n, batch).numpy())


@pytest.mark.slow
def test_bench_json_prints_every_documented_figure():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [
        sys.executable,
        "-m",
        "revhpo",
        "bench",
        "--json",
        "--steps",
        "4",
        "--sizes",
        "6,5,3",
        "--batch",
        "10",
        "--repeats",
        "2",
        "--memory-steps",
        "4",
        "--cold-steps",
        "4",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    fig = json.loads(out.stdout)
    missing = [k for k in DOCUMENTED_KEYS if k not in fig]
    assert not missing, missing
    for key in DOCUMENTED_RATIOS:
        assert math.isfinite(fig[key]) and fig[key] > 0, (key, fig[key])
    assert set(fig["plain_loop_s"]) == {"while_loop", "xla", "per_step"}
    assert all(math.isfinite(s) and s > 0 for s in fig["plain_loop_s"].values())
    assert fig["fastest_plain"] in ("while_loop", "xla")
    mem = fig["peak_memory"]["4"]  # reversible vs unrolled autodiff, each in a fresh process
    assert mem["reversible_peak_mib"] > 0 and mem["unrolled_peak_mib"] > 0
    assert fig["fastest_plain_s"] == min(
        fig["plain_loop_s"]["while_loop"], fig["plain_loop_s"]["xla"]
    )
    assert fig["forward_over_fastest_plain"] == pytest.approx(
        fig["forward_s"] / fig["fastest_plain_s"]
    )
    assert fig["bits_over_bound"] == pytest.approx(fig["bits_held"] / fig["info_bound_bits"])
    assert fig["first_hypergradient_s"] > 0
    assert fig["first_hypergradient"]["exact"] is True
    assert fig["first_hypergradient"]["steps"] == 4
    assert fig["first_hypergradient_warm_cache_s"] > 0
    assert fig["first_hypergradient_warm_cache"]["exact"] is True
    rep = fig["replicas_s"]
    assert set(rep) == {"1", "8"} and all(math.isfinite(v) and v > 0 for v in rep.values())
    assert fig["replicas_8_over_1"] == pytest.approx(rep["8"] / rep["1"])
    assert fig["exact"] is True and fig["steps"] == 4 and fig["sizes"] == [6, 5, 3]
    assert all(len(v) == 2 for v in fig["samples_s"].values())
