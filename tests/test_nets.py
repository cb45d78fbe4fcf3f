"""Tier 3 for nets/: the functional contract, well-posedness, SSS structure, Keras wrappers."""

import json
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

from revhpo import nets

F64 = tf.float64

CONFIGS = {
    "mlp": ({"family": "mlp", "sizes": [7, 5]}, 8, 3),
    "implicit": ({"family": "implicit", "n": 6}, 8, 3),
    "implicit_lowrank": ({"family": "implicit", "n": 6, "rank": 2, "bias": False}, 8, 3),
    "implicit_rnn": ({"family": "implicit_rnn", "n": 4, "hidden": 3}, 16, 3),
    "implicit_autoencoder": (
        {"family": "implicit_autoencoder", "start_layer": 6, "latent_num": 3},
        8,
        8,
    ),
    "sss": ({"family": "sss", "sizes": [8], "blocks": 4, "state": 2}, 8, 3),
    "rank1": ({"family": "rank1", "sizes": [6]}, 8, 3),
}


def _x(batch, dim, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, dim)), F64)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_round_trips_through_json(case):
    cfg, d_in, d_out = CONFIGS[case]
    net = nets.build_net(cfg, d_in, d_out)
    again = nets.build_net(json.loads(json.dumps(net.config)), d_in, d_out)
    assert again.config == net.config
    assert again.param_names == net.param_names
    assert again.param_shapes == net.param_shapes
    x = _x(3, d_in)
    p = net.init_params(4)
    np.testing.assert_array_equal(net.apply(p, x).numpy(), again.apply(p, x).numpy())


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_contract_shapes_layers_and_determinism(case):
    cfg, d_in, d_out = CONFIGS[case]
    net = nets.build_net(cfg, d_in, d_out)
    p1, p2, p3 = net.init_params(1), net.init_params(1), net.init_params(2)
    assert [tuple(p.shape) for p in p1] == net.param_shapes
    assert all(p.dtype == F64 for p in p1)
    assert all(p.dtype == tf.float32 for p in net.init_params(1, dtype=tf.float32))
    for a, b in zip(p1, p2, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(p1, p3, strict=True))
    assert len(net.param_names) == len(set(net.param_names)) == len(net.param_layers)
    assert sorted(set(net.param_layers)) == list(range(len(net.layer_names)))
    assert net.num_params == sum(math.prod(s) for s in net.param_shapes)
    x = _x(5, d_in)
    y = net.apply(p1, x)
    assert tuple(y.shape) == (5, d_out) and y.dtype == F64
    np.testing.assert_array_equal(y.numpy(), net.apply(p1, x).numpy())
    assert np.isfinite(y.numpy()).all()
    assert net.task == ("reconstruction" if case == "implicit_autoencoder" else "classification")
    assert nets.family_task(cfg) == nets.family_task(cfg["family"]) == net.task


def test_parameter_counts_follow_the_formulas():
    mlp = nets.build_net({"family": "mlp", "sizes": [50, 50]}, 64, 10)
    assert mlp.num_params == 64 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10
    n, p, q = 20, 64, 10
    imp = nets.build_net({"family": "implicit", "n": n}, p, q)
    assert imp.num_params == n * n + n * p + n + q * n + q * p + q
    low = nets.build_net({"family": "implicit", "n": n, "rank": 3, "bias": False}, p, q)
    assert low.num_params == 2 * n * 3 + n * p + q * n + q * p
    rnn = nets.build_net({"family": "implicit_rnn", "n": 5, "hidden": 4}, 64, 10)
    f = 8 + 4  # 8 pixels per row and the recurrent state
    assert rnn.num_params == 25 + 5 * f + 5 + 4 * 5 + 4 * f + 4 + 4 * 10 + 10
    for k, d, m, pp in [(1, 3, 4, 5), (2, 3, 4, 5), (3, 2, 4, 4), (8, 4, 8, 32)]:
        want = k * pp * m + 2 * (k - 1) * d * (m + pp) + 2 * max(k - 2, 0) * d * d
        assert nets.sss_param_count(k, d, m, pp) == want
        shapes = nets.sss_generator_shapes(k, d, m, pp)
        assert sum(math.prod(s) for _, s in shapes) == want
    sss = nets.build_net({"family": "sss", "sizes": [256], "blocks": 8, "state": 4}, 64, 10)
    assert sss.num_params == nets.sss_param_count(8, 4, 8, 32) + 256 + 256 * 10 + 10
    r1 = nets.build_net({"family": "rank1", "sizes": [30, 20]}, 64, 10)
    assert r1.num_params == (30 + 64 + 30) + (20 + 30 + 20) + (20 * 10 + 10)
    ae = nets.build_net(
        {"family": "implicit_autoencoder", "hidden_layer_num": 2, "start_layer": 32,
         "latent_num": 8, "version": "v1"}, 64, 64,
    )  # fmt: skip
    assert nets.autoencoder_widths(2, 32, 8) == [32, 20]
    widths = [64, 32, 20, 8, 20, 32, 64]
    dense = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert ae.num_params == dense + 8 * 8
    v0 = nets.build_net({**ae.config, "version": "v0"}, 64, 64)
    assert v0.num_params == dense


@pytest.mark.parametrize(
    ("config", "dims", "match"),
    [
        ({"family": "nope"}, (4, 2), "family='nope'"),
        ({"family": "mlp", "sizez": [3]}, (4, 2), "sizez"),
        ({"family": "mlp", "activation": "gelu"}, (4, 2), "gelu"),
        ({"family": "implicit", "kappa": 1.0}, (4, 2), "kappa=1.0"),
        ({"family": "implicit", "n": 4, "rank": 5}, (4, 2), "rank=5"),
        ({"family": "implicit", "newton_steps": -1}, (4, 2), "newton_steps=-1"),
        ({"family": "implicit_rnn", "time_steps": 3}, (8, 2), "time_steps=3"),
        ({"family": "implicit_autoencoder"}, (8, 3), "output_dim=3"),
        ({"family": "implicit_autoencoder", "version": "v2"}, (8, 8), "v2"),
        ({"family": "sss", "sizes": [10], "blocks": 4}, (8, 2), "blocks=4"),
    ],
)
def test_bad_configs_are_rejected_with_what_was_received(config, dims, match):
    with pytest.raises(ValueError, match=match):
        nets.build_net(config, *dims)


def test_apply_rejects_wrong_params_and_inputs():
    net = nets.build_net({"family": "mlp", "sizes": [3]}, 4, 2)
    p = net.init_params(0)
    with pytest.raises(ValueError, match="4 tensors"):
        net.apply(p[:-1], _x(2, 4))
    with pytest.raises(ValueError, match=r"shape=\(4, 4\)"):
        net.apply([tf.zeros([4, 4], F64), *p[1:]], _x(2, 4))
    with pytest.raises(ValueError, match=r"shape=\(2, 5\)"):
        net.apply(p, _x(2, 5))


# ----- implicit models ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e6])
@pytest.mark.parametrize("rank", [None, 3])
def test_well_posed_for_arbitrary_raw_parameters(scale, rank):
    """Every raw parameter value gives ‖A‖∞ ≤ κ, and the fixed point is found and satisfied."""
    net = nets.build_net({"family": "implicit", "n": 12, "rank": rank, "activation": "tanh"}, 5, 2)
    x = _x(7, 5, seed=1)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        params = [tf.constant(scale * rng.standard_cauchy(size=s), F64) for s in net.param_shapes]
        a = net.well_posed_A(params).numpy()
        assert np.abs(a).sum(axis=1).max() <= 0.95 * (1 + 1e-12)
        m = net.core.unpack(params)
        inj = x @ tf.transpose(m["B"]) + m["b"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # must converge without a warning
            state = net.state(params, x).numpy()
        assert np.isfinite(state).all()
        resid = state - np.tanh(state @ a.T + inj.numpy())
        assert np.abs(resid).max() <= 1e-12 * max(1.0, np.abs(state).max())


def test_well_posed_is_the_identity_inside_the_ball():
    w = tf.constant([[0.2, -0.3], [0.1, 0.4]], F64)  # ‖W‖∞ = 0.5 ≤ κ
    np.testing.assert_array_equal(nets.well_posed(w, 0.95).numpy(), w.numpy())
    big = 10.0 * w
    np.testing.assert_allclose(nets.inf_norm(nets.well_posed(big, 0.95)).numpy(), 0.95)


def test_feedforward_autoencoder_v1_with_zero_latent_coupling_equals_v0():
    v1 = nets.build_net(CONFIGS["implicit_autoencoder"][0], 8, 8)
    v0 = nets.build_net({**v1.config, "version": "v0"}, 8, 8)
    p1 = v1.init_params(0)
    p0 = [p for p, n in zip(p1, v1.param_names, strict=True) if n != "latent/A"]
    p1[v1.param_names.index("latent/A")] = tf.zeros_like(p1[v1.param_names.index("latent/A")])
    x = _x(4, 8)
    np.testing.assert_allclose(v1.apply(p1, x).numpy(), v0.apply(p0, x).numpy(), rtol=1e-13)
    assert tuple(v1.latent(p1, x).shape) == (4, 3)


def test_implicit_rnn_accepts_sequences_and_reads_rows_of_square_images():
    net = nets.build_net({"family": "implicit_rnn", "n": 4, "hidden": 3}, 64, 5)
    assert (net.time_steps, net.features) == (8, 8)
    p = net.init_params(0)
    x = _x(2, 64)
    np.testing.assert_array_equal(
        net.apply(p, x).numpy(), net.apply(p, tf.reshape(x, [2, 8, 8])).numpy()
    )
    assert nets.build_net({"family": "implicit_rnn", "time_steps": 4}, 64, 5).features == 16
    assert nets.build_net({"family": "implicit_rnn"}, 10, 5).time_steps == 10


def _slow_case(**solver):
    net = nets.build_net({"family": "implicit", "n": 4, "max_iter": 3, **solver}, 3, 2)
    p = net.init_params(0)
    p[0] = tf.constant(np.full((4, 4), 1.0), F64)  # nonnegative: rate exactly κ (relu)
    p[2] = tf.constant(np.ones(4), F64)
    return net, p, tf.constant(np.ones((2, 3)), F64)


def test_nonconvergence_warns_or_raises():
    net, p, x = _slow_case()
    with pytest.warns(UserWarning, match="did not converge"):
        net.apply(p, x)
    net, p, x = _slow_case(on_nonconvergence="raise")
    with pytest.raises(nets.ConvergenceError, match="max_iter=3"):
        net.apply(p, x)
    with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
        tf.function(net.apply)(p, x)
    net, p, x = _slow_case(max_iter=3000)  # the same problem with the default cap converges
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.apply(p, x)


# ----- SSS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "d", "m", "p"), [(1, 2, 3, 4), (2, 3, 4, 2), (3, 2, 2, 3), (6, 3, 2, 5)]
)
def test_sss_matvec_equals_dense_reconstruction(k, d, m, p):
    rng = np.random.default_rng(k * 100 + d)
    gens = {
        name: tf.constant(rng.normal(size=shape), F64)
        for name, shape in nets.sss_generator_shapes(k, d, m, p)
    }
    dense = nets.sss_dense(gens, k).numpy()
    assert dense.shape == (k * p, k * m)
    x = rng.normal(size=(5, k * m))
    np.testing.assert_allclose(nets.sss_matvec(tf.constant(x), gens, k).numpy(), x @ dense.T,
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    if k >= 3:  # semiseparable: strictly lower / upper off-diagonal block parts have rank ≤ d
        lower = dense[p:, :m]  # blocks (i ≥ 1, j = 0): C_i A⋯A B_0
        assert np.linalg.matrix_rank(lower) <= d
        hankel = dense[2 * p :, : 2 * m]  # blocks (i ≥ 2, j ≤ 1) pass through state h_2
        assert np.linalg.matrix_rank(hankel) <= d


def test_sss_layer_in_the_net_is_its_dense_matrix():
    net = nets.build_net({"family": "sss", "sizes": [], "blocks": 4, "state": 3, "output": "sss"},
                         8, 12)  # fmt: skip
    p = [t + 0.1 for t in net.init_params(3)]
    x = _x(6, 8)
    dense = net.dense_matrix(p, 0)
    np.testing.assert_allclose(net.apply(p, x).numpy(), (x @ tf.transpose(dense) + p[-1]).numpy(),
                               rtol=1e-12)  # fmt: skip
    r1 = nets.build_net({"family": "rank1", "sizes": [5]}, 8, 3)
    q = r1.init_params(1)
    np.testing.assert_allclose(
        nets.rank1_matvec(x, q[0], q[1]).numpy(), (x @ tf.transpose(r1.dense_matrix(q, 0))).numpy()
    )


def test_sss_default_init_has_dense_like_scale():
    n = 256
    net = nets.build_net({"family": "sss", "sizes": [], "blocks": 16, "state": 4, "output": "sss"},
                         n, n)  # fmt: skip
    x = _x(64, n, seed=2)
    ratios = []
    for seed in range(4):
        y = net.apply(net.init_params(seed), x)
        ratios.append(float(tf.reduce_mean(tf.square(y)) / tf.reduce_mean(tf.square(x))))
    assert 0.6 < np.mean(ratios) < 1.4, ratios


# ----- Keras -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "implicit", "implicit_rnn", "implicit_autoencoder", "sss"])
def test_keras_model_computes_apply_and_round_trips(case):
    cfg, d_in, d_out = CONFIGS[case]
    net = nets.build_net(cfg, d_in, d_out)
    model = net.keras_model(dtype="float64", seed=7)
    x = _x(4, d_in)
    np.testing.assert_array_equal(model(x).numpy(), net.apply(net.init_params(7), x).numpy())
    clone = tf.keras.Sequential.from_config(model.get_config())
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())
    layer = model.layers[-1]
    assert [w.shape for w in layer.net_weights] == [tuple(s) for s in net.param_shapes]
    params = [2.0 * p for p in net.init_params(1)]
    layer.set_params(params)
    np.testing.assert_array_equal(model(x).numpy(), net.apply(params, x).numpy())


def test_keras_fit_trains_an_implicit_and_an_sss_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    for cfg in (CONFIGS["implicit"][0], CONFIGS["sss"][0]):
        model = nets.build_net(cfg, 8, 3).keras_model()
        model.compile(
            optimizer=tf.keras.optimizers.SGD(0.1),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
        assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_single_layer_keras_building_blocks():
    x = _x(3, 8)
    sss = nets.SSSDense(12, input_dim=8, blocks=4, state=2, dtype="float64")
    y = sss(x)
    assert tuple(y.shape) == (3, 12)
    again = nets.SSSDense.from_config(sss.get_config())
    again(x)
    again.set_params(sss.params())
    np.testing.assert_array_equal(again(x).numpy(), y.numpy())
    imp = nets.ImplicitDense(2, input_dim=8, n=5, activation="tanh", kappa=0.5, dtype="float64")
    z = imp(x)
    cfg = imp.get_config()
    assert cfg["kappa"] == 0.5 and cfg["activation"] == "tanh" and cfg["n"] == 5
    clone = nets.ImplicitDense.from_config(cfg)
    clone(x)
    clone.set_params(imp.params())
    np.testing.assert_array_equal(clone(x).numpy(), z.numpy())
    inputs = tf.keras.Input((8,), dtype="float64")
    out = tf.keras.layers.Dense(3, dtype="float64")(
        tf.keras.layers.Activation("tanh")(nets.SSSDense(12, 8, 4, 2, dtype="float64")(inputs))
    )
    model = tf.keras.Model(inputs, out)
    assert tuple(model(x).shape) == (3, 3)


def test_task_loss():
    ae = nets.build_net(CONFIGS["implicit_autoencoder"][0], 8, 8)
    x = _x(4, 8)
    out = ae.apply(ae.init_params(0), x)
    want = 0.5 * np.mean(np.sum((out.numpy() - x.numpy()) ** 2, axis=1))
    np.testing.assert_allclose(float(nets.task_loss(ae, out, x, None)), want, rtol=1e-14)
    mlp = nets.build_net({"family": "mlp", "sizes": [3]}, 8, 3)
    logits = mlp.apply(mlp.init_params(0), x)
    y = tf.constant([0, 1, 2, 0])
    ls = logits.numpy() - logits.numpy().max(axis=1, keepdims=True)
    logp = ls - np.log(np.exp(ls).sum(axis=1, keepdims=True))
    want = -np.mean(logp[np.arange(4), y.numpy()])
    np.testing.assert_allclose(float(nets.task_loss(mlp, logits, x, y)), want, rtol=1e-13)
    with pytest.raises(ValueError, match="y=None"):
        nets.task_loss(mlp, logits, x, None)
