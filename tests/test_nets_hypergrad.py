"""Every net family under exactly reversible training (float64, tiny problems).

(Low-rank implicit models and the feed-forward autoencoder are left to the derivative tests in
test_nets_derivatives.py: each case here mostly costs the optimizer's tracing time.)

For each family: the reversal is bit-exact (``res.certificate.ok``) and the hypergradients
(learning rates, momentum decays, weight decay, initial weights) equal reverse-mode autodiff
through the unrolled float training loop to relative error ≤ 1e-6.
"""

import numpy as np
import pytest
import tensorflow as tf
from revhpo.optimizers import (
    ExactnessError,
    hypergradient,
    make_stepper,
    minibatch_indices,
    minibatch_table,
    unrolled_hypergradient,
)

from revhpo import nets

RTOL_UNROLLED = 1e-6
N_STEPS = 10
BATCH = 6

CASES = {
    "mlp": ({"family": "mlp", "sizes": [6], "activation": "tanh"}, 6, 3),
    "implicit_relu": ({"family": "implicit", "n": 5, "activation": "relu"}, 6, 3),
    "implicit_rnn": ({"family": "implicit_rnn", "n": 4, "hidden": 3, "time_steps": 2}, 6, 3),
    "implicit_autoencoder_v1": (
        {"family": "implicit_autoencoder", "start_layer": 5, "latent_num": 3, "version": "v1"},
        6,
        6,
    ),
    "sss": ({"family": "sss", "sizes": [9], "blocks": 3, "state": 2}, 6, 3),
    "rank1": ({"family": "rank1", "sizes": [5]}, 6, 3),
}


def make_problem(net, n_train=24, n_val=12, seed=0, table=None):
    """``(train_loss, val_loss, w0, theta)``: the net's task loss on synthetic data, minibatches
    from ``minibatch_indices(seed, t, ...)``, and a weight decay ``exp(θ)·Σ‖w‖²``. With
    ``table`` (``minibatch_table(seed + 7, ...)``) the loss is ``L(w, θ, t, batches)`` and reads
    step ``t``'s minibatch from its key, as the tuner passes it (the same examples)."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(n_train, net.input_dim)))
    y = tf.constant(rng.integers(0, net.output_dim, n_train), tf.int32)
    xv = tf.constant(rng.normal(size=(n_val, net.input_dim)))
    yv = tf.constant(rng.integers(0, net.output_dim, n_val), tf.int32)

    def train_loss(w, theta, t, batches=None):
        if table is None:
            idx = minibatch_indices(seed + 7, t, n_train, BATCH)
        else:
            idx = tf.gather(batches, t)
        xb = tf.cast(tf.gather(x, idx), w[0].dtype)
        loss = nets.task_loss(net, net.apply(w, xb), xb, tf.gather(y, idx))
        decay = tf.add_n([tf.reduce_sum(tf.square(wi)) for wi in w])
        return loss + tf.exp(tf.cast(theta[0], w[0].dtype)) * decay

    def val_loss(w):
        xc = tf.cast(xv, w[0].dtype)
        return nets.task_loss(net, net.apply(w, xc), xc, yv)

    theta = [tf.constant(np.log(1e-3), tf.float64)]
    return train_loss, val_loss, net.init_params(seed), theta


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_reversible_training_is_exact_and_matches_unrolled(case):
    cfg, d_in, d_out = CASES[case]
    net = nets.build_net(cfg, d_in, d_out)
    train_loss, val_loss, w0, theta = make_problem(net)
    k = len(w0)
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.05, 0.3, size=(N_STEPS, k))
    gamma = rng.uniform(0.5, 0.95, size=(N_STEPS, k))
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta)
    assert res.certificate.ok
    ref = unrolled_hypergradient(train_loss, val_loss, w0, alpha, res.gamma_applied, theta)
    assert res.val_loss == pytest.approx(float(ref["val_loss"]), rel=1e-12)
    assert _max_rel(res.d_alpha, ref["d_alpha"]) <= RTOL_UNROLLED
    assert _max_rel(res.d_gamma, ref["d_gamma"]) <= RTOL_UNROLLED
    assert _max_rel(res.d_theta[0], ref["d_theta"][0]) <= RTOL_UNROLLED
    for a, b in zip(res.d_w0, ref["d_w0"], strict=True):
        assert _max_rel(a, b) <= RTOL_UNROLLED
    assert np.max(np.abs(res.d_alpha)) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            marks=pytest.mark.xfail(
                strict=True,
                raises=ExactnessError,
                reason="known: the implicit RNN's gradient is not recomputed bit for bit in "
                "the graph-loop fallback on this data (the solver's gradient rounds "
                "differently in the fused HVP pass); refused with ExactnessError, never a "
                "wrong result",
            ),
        )
        if case == "implicit_rnn"
        else case
        for case in sorted(CASES)
    ],
)
def test_every_family_through_the_whole_chunk_programs_or_their_fallback(case):
    """The index-table key the tuner passes: the engine builds whole-chunk XLA programs, or
    falls back to graph loops (the SSS layer: a derivative with no XLA form; the implicit RNN:
    an op XLA cannot compile); either way the hypergradients equal unrolled autodiff."""
    cfg, d_in, d_out = CASES[case]
    net = nets.build_net(cfg, d_in, d_out)
    table = minibatch_table(7, N_STEPS, 24, BATCH)
    train_loss, val_loss, w0, theta = make_problem(net, table=table)
    k = len(w0)
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.05, 0.3, size=(N_STEPS, k))
    gamma = rng.uniform(0.5, 0.95, size=(N_STEPS, k))
    st = make_stepper(train_loss, k)
    res = hypergradient(train_loss, val_loss, w0, alpha, gamma, theta, key=table, stepper=st)
    assert res.certificate.ok
    ref = unrolled_hypergradient(
        train_loss, val_loss, w0, alpha, res.gamma_applied, theta, key=table
    )
    assert res.val_loss == pytest.approx(float(ref["val_loss"]), rel=1e-12)
    for name in ("d_alpha", "d_gamma"):
        assert _max_rel(getattr(res, name), ref[name]) <= RTOL_UNROLLED
    for a, b in zip([*res.d_theta, *res.d_w0], [*ref["d_theta"], *ref["d_w0"]], strict=True):
        assert _max_rel(a, b) <= RTOL_UNROLLED
    if case == "mlp":
        assert st.whole  # the plain net stays on the compiled programs
