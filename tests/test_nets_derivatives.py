"""Tier 2 (float64): gradients and Hessian-vector products of every net family.

Each family's training loss is checked three ways: the gradient against a central difference
of the loss, the forward-over-reverse HVP against reverse-over-reverse (nested tapes) and
against a central difference of gradients. (HVPs under ``tf.function`` are checked for every
family in test_nets_hypergrad.py: the reverse pass computes them compiled, forward-over-reverse,
and must match eager reverse-over-reverse autodiff through the unrolled training loop.)
"""

import numpy as np
import pytest
import tensorflow as tf

from revhpo import nets

F64 = tf.float64


def _data(input_dim, output_dim, batch=4, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, input_dim))
    if positive:
        x = np.abs(x) + 0.5
    y = rng.integers(0, output_dim, size=batch)
    return tf.constant(x, F64), tf.constant(y, tf.int32)


def _loss(net, x, y):
    def f(*params):
        return nets.task_loss(net, net.apply(list(params), x), x, y)

    return f


def _grad(f, params):
    with tf.GradientTape() as tape:
        tape.watch(params)
        val = f(*params)
    return tape.gradient(val, params)


def _hvp_fwd_rev(f, params, v):
    """H·v by forward-over-reverse (a JVP of the gradient)."""
    with tf.autodiff.ForwardAccumulator(params, v) as acc:
        g = _grad(f, params)
    return [acc.jvp(gi) for gi in g]


def _hvp_rev_rev(f, params, v):
    """H·v by reverse-over-reverse: the gradient of <∇f, v>."""
    with tf.GradientTape() as outer:
        outer.watch(params)
        g = _grad(f, params)
        gv = tf.add_n([tf.reduce_sum(gi * vi) for gi, vi in zip(g, v, strict=True)])
    return outer.gradient(gv, params)


def _shift(params, v, eps):
    return [p + eps * vi for p, vi in zip(params, v, strict=True)]


def _flat(ts):
    return np.concatenate([np.ravel(t.numpy()) for t in ts])


def _rel(a, b):
    a, b = _flat(a) if isinstance(a, list) else a, _flat(b) if isinstance(b, list) else b
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _direction(params, seed):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=p.shape), F64) for p in params]


def check_function(f, params, seed=0, eps_g=1e-6, eps_h=1e-5, fd_tol=1e-6):
    """Assert the gradient and HVP of the scalar ``f(*params)`` are exact (module docstring)."""
    v = _direction(params, seed + 1)
    g = _grad(f, params)
    assert all(gi is not None for gi in g)
    # Gradient: <∇f, v> vs a central difference of f along v.
    gv = float(np.dot(_flat(g), _flat(v)))
    fd = (float(f(*_shift(params, v, eps_g))) - float(f(*_shift(params, v, -eps_g)))) / (2 * eps_g)
    assert abs(gv - fd) <= fd_tol * max(1.0, abs(gv)), (gv, fd)
    # HVP: forward-over-reverse vs reverse-over-reverse vs central difference of gradients.
    h_fr = _hvp_fwd_rev(f, params, v)
    h_rr = _hvp_rev_rev(f, params, v)
    assert _rel(h_fr, h_rr) < 1e-10, _rel(h_fr, h_rr)
    g_plus, g_minus = _grad(f, _shift(params, v, eps_h)), _grad(f, _shift(params, v, -eps_h))
    h_fd = (_flat(g_plus) - _flat(g_minus)) / (2 * eps_h)
    err = _rel(_flat(h_fr), h_fd)
    assert err < fd_tol, err
    assert np.linalg.norm(h_fd) > 0
    return err


def check_derivatives(net, x, y, seed=0, params=None, **kwargs):
    """``check_function`` on the net's task loss (default params: ``init_params(seed)``)."""
    params = params if params is not None else net.init_params(seed)
    return check_function(_loss(net, x, y), params, seed=seed, **kwargs)


FAMILY_CASES = {
    "mlp_tanh": ({"family": "mlp", "sizes": [7, 5], "activation": "tanh"}, 6, 3),
    "mlp_relu": ({"family": "mlp", "sizes": [7], "activation": "relu"}, 6, 3),
    "mlp_softplus": ({"family": "mlp", "sizes": [5], "activation": "softplus"}, 6, 3),
    "mlp_sigmoid": ({"family": "mlp", "sizes": [5], "activation": "sigmoid"}, 6, 3),
    "implicit_relu": ({"family": "implicit", "n": 7, "activation": "relu"}, 5, 3),
    "implicit_tanh": ({"family": "implicit", "n": 7, "activation": "tanh"}, 5, 3),
    "implicit_softplus_lowrank": (
        {"family": "implicit", "n": 6, "activation": "softplus", "rank": 2},
        5,
        3,
    ),
    "implicit_sigmoid_nobias": (
        {"family": "implicit", "n": 6, "activation": "sigmoid", "bias": False},
        5,
        3,
    ),
    "implicit_rnn": ({"family": "implicit_rnn", "n": 5, "hidden": 3}, 4, 3),
    "implicit_autoencoder_v0": (
        {
            "family": "implicit_autoencoder",
            "hidden_layer_num": 1,
            "start_layer": 6,
            "latent_num": 3,
            "version": "v0",
        },
        8,
        8,
    ),  # fmt: skip
    "implicit_autoencoder_v1": (
        {
            "family": "implicit_autoencoder",
            "hidden_layer_num": 2,
            "start_layer": 6,
            "latent_num": 3,
            "version": "v1",
        },
        8,
        8,
    ),  # fmt: skip
    "sss": ({"family": "sss", "sizes": [12], "blocks": 3, "state": 2}, 6, 3),
    "sss_output": (
        {"family": "sss", "sizes": [8], "blocks": 4, "state": 2, "output": "sss"},
        8,
        4,
    ),
    "rank1": ({"family": "rank1", "sizes": [6, 5]}, 6, 3),
}


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_gradient_and_hvp_exact(case):
    cfg, d_in, d_out = FAMILY_CASES[case]
    net = nets.build_net(cfg, d_in, d_out)
    x, y = _data(d_in, d_out, seed=3)
    check_derivatives(net, x, y, seed=5)


def _pf_matrix(n, kappa, rng, spread=0.0):
    """Nonnegative ``n×n`` with row ``i`` summing to ``kappa·(1 − spread·i)``."""
    w = rng.uniform(0.1, 1.0, size=(n, n))
    return kappa * (1.0 - spread * np.arange(n))[:, None] * w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hard_fixed_point_exact(activation):
    """The solver itself at the hard case: nonnegative A with every row summing to κ
    (Perron–Frobenius root exactly κ) and positive injections, so for relu every unit is active
    and Picard converges at exactly rate κ. Derivatives w.r.t. A and the injection."""
    n, kappa = 6, 0.95
    rng = np.random.default_rng(0)
    a = tf.constant(_pf_matrix(n, kappa, rng), F64)
    np.testing.assert_allclose(np.max(np.abs(np.linalg.eigvals(a.numpy()))), kappa, rtol=1e-12)
    # Small positive injections keep tanh near its linear regime (rate close to κ too).
    inj = tf.constant(rng.uniform(0.01, 0.05, size=(3, n)), F64)
    r = tf.constant(rng.normal(size=(3, n)), F64)
    solver = nets.EquilibriumSolver(activation)
    _, iters, _ = solver.picard(a, inj)
    assert int(iters) > (300 if activation == "relu" else 100), int(iters)
    if activation == "relu":
        exact = np.linalg.solve(np.eye(n) - a.numpy(), inj.numpy().T).T  # X* = (I − A)⁻¹ inj
        np.testing.assert_allclose(solver(a, inj).numpy(), exact, rtol=1e-13)

    def f(a, inj):
        x = solver(a, inj)
        return tf.reduce_sum(r * x) + 0.5 * tf.reduce_sum(x * x)

    check_function(f, [a, inj])


def _hard_implicit(activation, n=6, p=4, q=3, kappa=0.95, seed=0):
    """The hard case inside the net: raw W nonnegative with row sums 3·(1 − 1e-4·i), so the
    scaling is active, its maximising row is unique (the parametrisation is smooth there: at
    exactly tied rows ``‖W‖∞`` has a kink) and A's Perron–Frobenius root is within 5e-4 of κ."""
    net = nets.build_net(
        {"family": "implicit", "n": n, "activation": activation, "kappa": kappa}, p, q
    )
    rng = np.random.default_rng(seed)
    params = net.init_params(seed)
    params[0] = tf.constant(_pf_matrix(n, 3.0, rng, spread=1e-4), F64)
    params[1] = tf.constant(rng.uniform(0.1, 1.0, size=(n, p)), F64)  # B > 0
    params[2] = tf.constant(rng.uniform(0.1, 1.0, size=(n,)), F64)  # b > 0
    return net, params


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hard_implicit_net_exact(activation):
    net, params = _hard_implicit(activation)
    x, y = _data(4, 3, seed=1, positive=True)
    a = net.well_posed_A(params).numpy()
    assert (a >= 0).all() and abs(a.sum(axis=1).max() - 0.95) < 1e-14
    rho = np.max(np.abs(np.linalg.eigvals(a)))
    assert 0.95 * (1 - 5e-4) <= rho <= 0.95 + 1e-14, rho
    if activation == "relu":
        assert net.solve_info(params, x)["iterations"] > 300
    check_derivatives(net, x, y, params=params)


def test_one_newton_step_gives_exact_gradient_but_wrong_hvp():
    """The checks above can fail: with one Newton step the tanh HVP misses −N_XX[X′, X′]."""
    cfg, d_in, d_out = FAMILY_CASES["implicit_tanh"]
    net2 = nets.build_net(cfg, d_in, d_out)
    net1 = nets.build_net({**net2.config, "newton_steps": 1}, d_in, d_out)
    x, y = _data(d_in, d_out, seed=3)
    params = [3.0 * p for p in net2.init_params(5)]  # away from tanh's linear regime
    f1, f2 = _loss(net1, x, y), _loss(net2, x, y)
    v = _direction(params, 9)
    assert _rel(_grad(f1, params), _grad(f2, params)) < 1e-9  # gradients agree
    err = _rel(_hvp_fwd_rev(f1, params, v), _hvp_fwd_rev(f2, params, v))
    assert err > 1e-3, err  # but one-step HVPs are measurably wrong
    with pytest.raises(AssertionError):
        check_derivatives(net1, x, y, params=params)


def test_apply_is_deterministic():
    for case in ("implicit_relu", "implicit_rnn", "sss", "implicit_autoencoder_v1"):
        cfg, d_in, d_out = FAMILY_CASES[case]
        net = nets.build_net(cfg, d_in, d_out)
        x, y = _data(d_in, d_out, seed=3)
        params = net.init_params(1)
        f = _loss(net, x, y)
        g1, g2 = _grad(f, params), _grad(f, params)
        for a, b in zip(g1, g2, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
