"""Tiers 1 and 2 for optimizers/: exact reversal and hypergradients proved against references."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from mlp_problem import make_problem, max_rel_error, schedules
from revhpo.optimizers import (
    DivergenceError,
    ExactnessError,
    PlainSGD,
    hypergradient,
    hypergradients,
    make_stepper,
    minibatch_indices,
    minibatch_table,
    unrolled_hypergradient,
)
from revhpo.optimizers.reversible import group_size
from revhpo.precise import rationalize

RTOL_UNROLLED = 1e-6
RTOL_FD = 1e-4


def _check_against_unrolled(problem, alpha, gamma, dtype=tf.float64):
    train_loss, val_loss, w0, theta = problem
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, dtype=dtype)
    assert res.certificate.ok
    ref = unrolled_hypergradient(train_loss, val_loss, w0, alpha, res.gamma_applied, theta)
    assert res.val_loss == pytest.approx(ref["val_loss"], rel=1e-12)
    assert max_rel_error(res.d_alpha, ref["d_alpha"]) <= RTOL_UNROLLED
    assert max_rel_error(res.d_gamma, ref["d_gamma"]) <= RTOL_UNROLLED
    for a, b in zip(res.d_theta, ref["d_theta"], strict=True):
        assert max_rel_error(a, b) <= RTOL_UNROLLED
    for a, b in zip(res.d_w0, ref["d_w0"], strict=True):
        assert max_rel_error(a, b) <= RTOL_UNROLLED
    return res


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_per_layer_per_step_hypergradients_equal_unrolled_autodiff(activation):
    problem = make_problem(activation=activation, sizes=(5, 8, 7, 3))
    alpha, gamma = schedules(40, len(problem[2]))
    _check_against_unrolled(problem, alpha, gamma)


@pytest.mark.slow
def test_two_hundred_steps_equal_unrolled_autodiff():
    problem = make_problem(sizes=(4, 6, 3), n_train=36, batch=9)
    alpha, gamma = schedules(200, len(problem[2]), alpha=(0.05, 0.2), gamma=(0.8, 0.95))
    _check_against_unrolled(problem, alpha, gamma)


@pytest.mark.slow
def test_scalar_schedule_gradients_are_sums_of_the_per_step_ones():
    # a scalar alpha is a broadcast of the [T, K] schedule: its gradient is the sum
    problem = make_problem(sizes=(4, 6, 3))
    k = len(problem[2])
    a = tf.Variable(0.2, dtype=tf.float64)
    with tf.GradientTape() as tape:
        alpha = a * tf.ones([25, k], tf.float64)
    res = hypergradient(*problem[:3], alpha.numpy(), np.full((25, k), 0.9), problem[3])
    d_a = tape.gradient(alpha, a, output_gradients=res.d_alpha)
    assert float(d_a) == pytest.approx(float(tf.reduce_sum(res.d_alpha)), rel=1e-12)


@pytest.mark.slow
def test_init_scale_gradient_by_chain_rule_matches_finite_differences():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    alpha, gamma = schedules(20, len(w0))
    scales = tf.Variable([1.0, 0.7], dtype=tf.float64)
    with tf.GradientTape() as tape:
        scaled = [w * scales[i // 2] for i, w in enumerate(w0)]
    res = hypergradient(train_loss, val_loss, scaled, alpha, gamma, theta)
    d_scales = tape.gradient(scaled, scales, output_gradients=res.d_w0).numpy()

    def f(s):
        w = [x * s[i // 2] for i, x in enumerate(w0)]
        return float(val_loss(PlainSGD(train_loss).run(w, alpha, res.gamma_applied, theta)[0]))

    eps = 1e-6
    for j in range(2):
        e = np.eye(2)[j] * eps
        fd = (f(scales.numpy() + e) - f(scales.numpy() - e)) / (2 * eps)
        assert d_scales[j] == pytest.approx(fd, rel=RTOL_FD)


@pytest.mark.slow
def test_hypergradients_match_central_finite_differences():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    k = len(w0)
    alpha, gamma = schedules(20, k)
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta)
    gam = res.gamma_applied

    def f(a, g, th):
        return float(val_loss(PlainSGD(train_loss).run(w0, a, g, th)[0]))

    eps = 1e-6
    rng = np.random.default_rng(5)
    for _ in range(3):
        t, i = int(rng.integers(20)), int(rng.integers(k))
        e = np.zeros_like(alpha)
        e[t, i] = eps
        fd_a = (f(alpha + e, gam, theta) - f(alpha - e, gam, theta)) / (2 * eps)
        assert float(res.d_alpha[t, i]) == pytest.approx(fd_a, rel=RTOL_FD, abs=1e-9)
        fd_g = (f(alpha, gam + e, theta) - f(alpha, gam - e, theta)) / (2 * eps)
        assert float(res.d_gamma[t, i]) == pytest.approx(fd_g, rel=RTOL_FD, abs=1e-9)
    th_p = [theta[0] + eps, *theta[1:]]
    th_m = [theta[0] - eps, *theta[1:]]
    fd_t = (f(alpha, gam, th_p) - f(alpha, gam, th_m)) / (2 * eps)
    assert float(res.d_theta[0]) == pytest.approx(fd_t, rel=RTOL_FD)


@pytest.mark.slow
def test_float32_evaluation_is_still_exact():
    problem = make_problem(sizes=(5, 8, 3))
    alpha, gamma = schedules(30, len(problem[2]))
    res = hypergradient(*problem[:3], alpha, gamma, problem[3], dtype=tf.float32)
    assert res.certificate.ok
    assert res.w_final[0].dtype == tf.float32


@pytest.mark.slow
def test_exact_recovery_after_ten_thousand_steps():
    train_loss, val_loss, w0, theta = make_problem(sizes=(3, 4, 2), n_train=16, batch=4)
    n_steps = 10_000
    alpha = np.full((n_steps, len(w0)), 0.1)
    gamma = np.full((n_steps, len(w0)), 0.9)
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta)
    # hypergradient raises ExactnessError unless w0, v0 and the buffers come back exactly
    assert res.certificate.ok
    assert res.certificate.info_bound_bits == pytest.approx(n_steps * np.log2(10 / 9))
    assert res.certificate.bits_held <= 1.02 * res.certificate.info_bound_bits


def test_divergence_names_the_step():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    alpha = np.full((60, len(w0)), 1e6)
    gamma = np.full((60, len(w0)), 0.5)
    with pytest.raises(DivergenceError) as info:
        hypergradient(train_loss, val_loss, w0, alpha, gamma, theta)
    assert 0 <= info.value.step < 60
    assert f"step {info.value.step}" in str(info.value)


def test_nan_loss_names_the_step():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))

    def poisoned(w, th, t):
        loss = train_loss(w, th, t)
        return tf.where(t >= 7, tf.constant(np.nan, loss.dtype), loss)

    with pytest.raises(DivergenceError, match="step 7: non-finite training loss"):
        hypergradient(poisoned, val_loss, w0, *schedules(20, len(w0)), theta)


@pytest.mark.slow
def test_hidden_state_in_the_loss_is_caught_by_the_certificate():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3), weight_decay=False)
    calls = tf.Variable(0.0, dtype=tf.float64)

    def stateful(w, th, t):  # a loss that changes between the forward and reverse pass
        calls.assign_add(1.0)
        return train_loss(w, th, t) + 1e-3 * calls * tf.reduce_sum(w[0])

    with pytest.raises(ExactnessError, match="not exact"):
        hypergradient(stateful, val_loss, w0, *schedules(10, len(w0)), theta)


def test_malformed_schedule_is_rejected_with_its_shape():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    with pytest.raises(ValueError, match=r"shape=\(5, 3\)"):
        hypergradient(train_loss, val_loss, w0, np.ones((5, 3)), np.ones((5, 3)), theta)


def test_minibatches_are_stateless_and_cover_each_epoch():
    a = minibatch_indices(3, 5, 40, 8).numpy()
    b = minibatch_indices(3, 5, 40, 8).numpy()
    np.testing.assert_array_equal(a, b)
    epoch = np.concatenate([minibatch_indices(3, t, 40, 8).numpy() for t in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))
    assert not np.array_equal(minibatch_indices(4, 5, 40, 8).numpy(), a)


@pytest.mark.parametrize("n,batch,steps", [(16, 4, 9), (10, 3, 7), (50, 50, 3), (7, 1, 20)])
def test_minibatch_table_rows_equal_the_per_step_indices(n, batch, steps):
    table = minibatch_table(5, steps, n, batch).numpy()
    assert table.shape == (steps, batch) and table.dtype == np.int32
    for t in range(steps):
        np.testing.assert_array_equal(table[t], minibatch_indices(5, t, n, batch).numpy())


@pytest.mark.slow
def test_chunked_passes_are_exact_and_equal_to_one_chunk():
    """Chunk boundaries (with register cuts inside and across them) change no bit."""
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    alpha, gamma = schedules(23, len(w0))
    gamma = np.full_like(gamma, 0.97)  # small per-step information: cuts land mid-run
    whole = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, chunk_steps=1000)
    for chunk in (1, 5, 7):
        res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, chunk_steps=chunk)
        assert res.certificate.ok
        np.testing.assert_array_equal(res.d_alpha.numpy(), whole.d_alpha.numpy())
        np.testing.assert_array_equal(res.d_gamma.numpy(), whole.d_gamma.numpy())
        for a, b in zip(res.d_w0, whole.d_w0, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("gamma,steps", [(0.99, 500), (0.9, 100), (0.99, 100)])
def test_buffer_holds_within_ten_percent_of_the_information_bound(gamma, steps):
    """Registers shared by enough elements that start-up and word padding stay small."""
    train_loss, val_loss, w0, theta = make_problem(sizes=(20, 50, 10), n_train=200, batch=20)
    k = len(w0)
    res = hypergradient(
        train_loss, val_loss, w0, np.full((steps, k), 0.05), np.full((steps, k), gamma), theta
    )
    cert = res.certificate
    assert cert.ok
    assert cert.info_bound_bits <= cert.bits_held <= 1.10 * cert.info_bound_bits


def test_group_size_grows_when_little_information_per_step_is_kept():
    few = [rationalize(0.99, 2**16)] * 500
    many = [rationalize(0.5, 2**16)] * 500
    assert group_size(many) == 16 < group_size(few) <= 256
    assert group_size([rationalize(1.0, 2**16)] * 10) == 16  # nothing lost: default


# ------------------------------------------------------------------------------------ replicas
def _tiny_problem(steps=30):
    from revhpo.service.spec import load_spec
    from revhpo.service.tuning import build_problem

    doc = {
        "dataset": {"kind": "synthetic", "n_samples": 90, "n_features": 6, "n_classes": 3},
        "net": {"family": "mlp", "sizes": [5], "activation": "tanh"},
        "training": {"steps": steps, "batch_size": 10},
        "hyperparameters": {
            "learning_rate": {"init": 0.3, "tune": True, "granularity": "per_layer_per_step"},
            "momentum": {"init": 0.95, "tune": True, "granularity": "per_step"},
            "weight_decay": {"init": 0.01, "tune": True, "granularity": "per_layer"},
            "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
        },
    }
    return build_problem(load_spec(doc))


def test_replicas_equal_separate_runs_bit_for_bit():
    """R seeds trained and reversed together: every replica's hypergradients, final weights,
    losses and certificate equal its own separate run's, with equality on every bit."""
    problem = _tiny_problem()
    raw = problem.initial_raw()
    seeds = [3, 11, 4]
    together = problem.evaluate_many(raw, seeds)
    for seed, ev in zip(seeds, together, strict=True):
        alone = problem.evaluate(raw, seed)
        assert ev.hyper.certificate.ok and ev.hyper.certificate == alone.hyper.certificate
        assert ev.val_loss == alone.val_loss
        assert sorted(ev.grads) == sorted(alone.grads)
        for k in ev.grads:
            np.testing.assert_array_equal(ev.grads[k], alone.grads[k])
        for a, b in zip(ev.hyper.w_final, alone.hyper.w_final, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ev.hyper.train_losses, alone.hyper.train_losses)
    assert together[0].val_loss != together[1].val_loss  # the replicas did differ


def test_a_diverging_replica_is_named():
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))

    def poisoned(w, th, t, key):  # replica 1 (key 2) turns non-finite at step 7
        loss = train_loss(w, th, t)
        return tf.where((t >= 7) & (key == 2), tf.constant(np.nan, loss.dtype), loss)

    alpha, gamma = schedules(20, len(w0))
    with pytest.raises(DivergenceError, match="step 7: non-finite training loss") as info:
        hypergradients(poisoned, val_loss, [w0, w0, w0], alpha, gamma, theta, keys=[1, 2, 3])
    assert info.value.replica == 1
    ok = hypergradients(poisoned, val_loss, [w0, w0], alpha, gamma, theta, keys=[1, 3])
    assert [r.certificate.ok for r in ok] == [True, True]
    with pytest.raises(ValueError, match="one key per replica"):
        hypergradients(poisoned, val_loss, [w0, w0], alpha, gamma, theta, keys=[1])


def _table_problem(activation="tanh", steps=60):
    """The MLP problem reading its minibatches from an index table made before the passes."""
    train_loss, val_loss, w0, theta = make_problem(
        activation=activation, sizes=(5, 8, 7, 3), table_key=True
    )
    return train_loss, val_loss, w0, theta, minibatch_table(11, steps, 48, 12)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_whole_chunk_programs_equal_unrolled_autodiff(activation):
    # 60 steps: a whole chunk and a short one, both through the one compiled program
    train_loss, val_loss, w0, theta, table = _table_problem(activation)
    alpha, gamma = schedules(60, len(w0))
    st = make_stepper(train_loss, len(w0))
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, key=table, stepper=st)
    assert st.whole and res.certificate.ok  # the programs compiled, certified and stayed whole
    ref = unrolled_hypergradient(
        train_loss, val_loss, w0, alpha, res.gamma_applied, theta, key=table
    )
    assert res.val_loss == pytest.approx(ref["val_loss"], rel=1e-12)
    for name in ("d_alpha", "d_gamma"):
        assert max_rel_error(getattr(res, name), ref[name]) <= RTOL_UNROLLED
    for a, b in zip([*res.d_theta, *res.d_w0], [*ref["d_theta"], *ref["d_w0"]], strict=True):
        assert max_rel_error(a, b) <= RTOL_UNROLLED
    # a second call reuses the compiled programs and gives the same bits
    again = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, key=table, stepper=st)
    np.testing.assert_array_equal(again.d_alpha.numpy(), res.d_alpha.numpy())


def test_a_loss_that_draws_random_numbers_in_a_step_runs_as_graph_loops(caplog):
    # XLA's random streams differ from TensorFlow's: the engine must train on the data the
    # loss draws in TensorFlow (as PlainSGD does), so it keeps such a loss out of XLA
    train_loss, val_loss, w0, theta = make_problem(sizes=(4, 6, 3))
    alpha, gamma = schedules(12, len(w0))
    st = make_stepper(train_loss, len(w0))
    with caplog.at_level("WARNING", logger="revhpo.optimizers.reversible"):
        res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, stepper=st)
    assert not st.whole and "draws random numbers" in caplog.text
    w_plain = PlainSGD(train_loss).run(w0, alpha, res.gamma_applied, theta)[0]
    assert res.val_loss == pytest.approx(float(val_loss(w_plain)), rel=1e-10)


def test_a_loss_xla_cannot_compile_runs_as_graph_loops(caplog):
    train_loss, val_loss, w0, theta, table = _table_problem(steps=12)

    def host_factor(w, th, t, batches):  # numpy_function has no XLA kernel
        one = tf.numpy_function(lambda: np.float64(1.0), [], tf.float64, stateful=False)
        return train_loss(w, th, t, batches) * tf.reshape(one, [])

    alpha, gamma = schedules(12, len(w0))
    st = make_stepper(host_factor, len(w0))
    with caplog.at_level("WARNING", logger="revhpo.optimizers.reversible"):
        res = hypergradient(host_factor, val_loss, w0, alpha, gamma, theta, key=table, stepper=st)
    assert not st.whole and "compiled chunks failed" in caplog.text
    ref = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, key=table)
    assert res.certificate.ok
    assert max_rel_error(res.d_alpha, ref.d_alpha) <= 1e-9


def test_a_stepper_reused_over_changing_schedules_compiles_its_programs_a_few_times_only():
    # the tuner changes γ every meta-iteration, and with it the register plan and the
    # buffer's groups: the programs' static sizes are kept while they fit
    train_loss, val_loss, w0, theta, table = _table_problem(steps=20)
    alpha, gamma = schedules(20, len(w0))
    st = make_stepper(train_loss, len(w0))
    # these change the most cuts in a chunk (16, 15, 16, 14) and the groups the schedules
    # call for (one tensor 64 → 128, then all 64, then all 128)
    for scale in (1.0, 1.03, 0.9, 1.06):
        g = np.minimum(gamma * scale, 0.97)
        res = hypergradient(train_loss, val_loss, w0, alpha, g, theta, key=table, stepper=st)
        assert res.certificate.ok
    assert st.forward_chunk.experimental_get_tracing_count() == 1
    assert st.reverse_chunk.experimental_get_tracing_count() == 1
    # the rules themselves, on a new stepper: capacities grow to powers of two, doubled while
    # the table is small (at most a chunk's steps), and are kept; groups are kept while each
    # is at least half of what the schedules call for
    fresh = make_stepper(train_loss, len(w0))
    assert [fresh.fit_capacity(n, 50, 8) for n in (3, 2, 8, 9, 16, 40, 50)] == [
        *(8, 8, 8),
        *(32, 32),
        *(50, 50),
    ]
    large = make_stepper(train_loss, len(w0))  # rows of 8 MiB: no room to double
    assert [large.fit_capacity(n, 50, 8 << 20) for n in (3, 4, 5)] == [4, 4, 8]
    assert fresh.fit_groups([16, 32]) == [16, 32]
    assert fresh.fit_groups([32, 64]) == [16, 32]
    assert fresh.fit_groups([64, 32]) == [64, 32]


_COMPILE_COUNT_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from mlp_problem import make_problem, schedules
from revhpo.optimizers import hypergradient, make_stepper, minibatch_table

train_loss, val_loss, w0, theta = make_problem(sizes=(5, 8, 7, 3), table_key=True)
alpha, gamma = schedules(40, len(w0))
st = make_stepper(train_loss, len(w0))
# as the tuner moves γ: other cuts (14 in a chunk of 20 steps, then 18), other groups
for scale in (0.7, 0.6, 0.8, 0.9):
    res = hypergradient(train_loss, val_loss, w0, alpha, np.minimum(gamma * scale, 0.97),
                        theta, key=minibatch_table(11, 40, 48, 12), chunk_steps=20, stepper=st)
    assert res.certificate.ok
"""


@pytest.mark.slow
def test_passes_of_many_chunks_over_moving_schedules_compile_two_programs(tmp_path):
    # every chunk of a pass runs the same two XLA programs: a chunk's first step must not be
    # a compile-time constant (it was for the reverse, once: one compilation per chunk, ~3 s
    # each for the digits MLP); and a tuner's next γ must not change their static shapes.
    # Counted as the entries a fresh process writes to a new persistent XLA cache: one per
    # compilation.
    cache = tmp_path / "xla"
    cache.mkdir()
    env = dict(
        os.environ,
        REVHPO_XLA_CACHE=str(cache),
        TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={cache}",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_COUNT_CHILD, tests],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2, entries  # 4 passes of 2 chunks: 2 programs
