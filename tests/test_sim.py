"""State-driven implicit modeling (``revhpo.nets.sim``): the batched TensorFlow solver against
the cvxpy reference, exact well-posedness, the exact MLP embedding, Keras state collection,
and SIM weights through the tuning path.

Tolerances:

* objective values of the batched solver and cvxpy agree to 1e-6 relative: CLARABEL stops at a
  relative duality gap of 1e-8 and the batched solver is run to a relative step of 1e-11
  (measured agreement: a few 1e-9). A constraint violation of the reference up to 1e-7 is
  its interior-point feasibility tolerance; the batched solver's ‖A‖∞ ≤ κ is exact (``<=``).
* float64 forwards that take different but equivalent paths (a matmul on a block matrix vs
  the layer-by-layer MLP; a Newton solve with a unit-triangular Jacobian) agree to 1e-12
  relative: a few dozen roundings of 2⁻⁵³ each on O(1) values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from revhpo.nets import build_net, inf_norm, well_posed
from revhpo.nets import sim as S
from revhpo.nets.config import NetConfigError, parse_net_config

cp = pytest.importorskip("cvxpy")

RTOL_OBJ = 1e-6


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x[:600].mean(0)) / (x[:600].std(0) + 1e-8)
    return x[:600], y[:600], x[1400:1600], y[1400:1600]


@pytest.fixture(scope="module")
def small_mlp(digits):
    x, y, _, _ = digits
    cfg = {"sizes": [6, 5], "steps": 150, "batch_size": 50, "learning_rate": 0.3}
    return S.train_explicit(x, y, cfg, n_classes=10)


# ----------------------------------------------------------------------------- proximal maps
def test_l1_ball_projection_is_the_sort_based_projection():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 9)) * rng.uniform(0.1, 3, size=(40, 1))
    radius = 0.7
    thr = S._row_thresholds(tf.constant(v), tf.constant(radius, tf.float64)).numpy()
    ours = np.sign(v) * np.maximum(np.abs(v) - thr, 0)
    for row, got in zip(v, ours, strict=True):  # Duchi et al.'s algorithm, written out
        a = np.abs(row)
        if a.sum() <= radius:
            np.testing.assert_array_equal(got, row)
            continue
        u = np.sort(a)[::-1]
        css = np.cumsum(u)
        rho = np.nonzero(u - (css - radius) / np.arange(1, len(u) + 1) > 0)[0][-1]
        theta = (css[rho] - radius) / (rho + 1)
        np.testing.assert_allclose(got, np.sign(row) * np.maximum(a - theta, 0), atol=1e-15)


def test_prox_of_the_induced_inf_norm_solves_its_program():
    rng = np.random.default_rng(1)
    for weight in (0.05, 0.7, 4.0, 80.0):
        v = rng.normal(size=(7, 5))
        ours = S._prox_linf(tf.constant(v), tf.constant(weight, tf.float64)).numpy()

        def f(r: np.ndarray, v=v, weight=weight) -> float:
            return 0.5 * np.sum((r - v) ** 2) + weight * np.max(np.abs(r).sum(1))

        r = cp.Variable(v.shape)
        cp.Problem(
            cp.Minimize(0.5 * cp.sum_squares(r - v) + weight * cp.max(cp.sum(cp.abs(r), 1)))
        ).solve(solver="CLARABEL")
        assert f(ours) <= f(r.value) * (1 + 1e-9)  # ours is optimal (to rounding)
        assert _rel(f(ours), f(r.value)) < 1e-7


def test_certify_inf_norm_bounds_every_summation_order():
    kappa = 0.95
    n = 200
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(5, n))
    a *= kappa / a.sum(1, keepdims=True)  # row sums at κ, give or take an ulp
    a[0] *= 1 + 1e-15  # slightly above
    out = S.certify_inf_norm(a, kappa)
    for row in np.abs(out):
        assert math.fsum(row.tolist()) <= kappa
        assert (
            row.sum() <= kappa and np.sort(row).sum() <= kappa and np.sort(row)[::-1].sum() <= kappa
        )
        assert float(tf.reduce_sum(tf.constant(row))) <= kappa
    assert np.all(np.abs(out) <= np.abs(a))  # only ever shrinks


# ----------------------------------------------------------------------------- solver vs cvxpy
def _random_problems(seed: int):
    rng = np.random.default_rng(seed)
    m, n, p, q = 60, 7, 5, 3
    x = np.maximum(rng.normal(size=(m, n)), 0.0)
    u = rng.normal(size=(m, p))
    y = rng.normal(size=(m, q))
    for obj in S.OBJECTIVES:
        yield f"state-{obj}", S.state_problem(x, u, obj, 0.5, 1e-2)
        yield f"output-{obj}", S.output_problem(x, u, y, obj, 1e-2)


def _check_against_reference(problem: S.Problem, max_iter: int = 50_000) -> dict:
    ours = S.solve_batched(problem, tol=1e-11, max_iter=max_iter)
    ref = S.solve_reference(problem, "CLARABEL")
    assert ref.info["status"] == "optimal"
    assert _rel(ours.info["objective"], ref.info["objective"]) <= RTOL_OBJ, (ours.info, ref.info)
    assert ours.info["constraint_violation"] == 0.0
    assert ref.info["constraint_violation"] <= 1e-7
    for a, b, kind in problem.blocks:
        if kind.startswith("ball"):
            assert np.max(np.sum(np.abs(ours.w[:, a:b]), axis=1)) <= problem.kappa
    for key in ("rms", "max_abs", "relative_rms"):
        assert np.isfinite(ours.info["residual"][key])
    return ours.info


@pytest.mark.parametrize("name", [n for n, _ in _random_problems(0)])
def test_batched_solver_matches_cvxpy_on_random_problems(name):
    problem = dict(_random_problems(0))[name]
    assert _check_against_reference(problem)["converged"]


@pytest.mark.parametrize(
    "objective",
    ["sparsity", pytest.param("robustness", marks=pytest.mark.slow)],  # ~6 s unloaded
)
def test_batched_solver_matches_cvxpy_on_mlp_states(small_mlp, digits, objective):
    mlp, w = small_mlp
    x = digits[0][:60]
    states = S.collect_states(mlp, w, x)
    exps = S.state_exponents(mlp, w, 0.9)
    xs = S._scaled_x(states, exps)
    # The iterates of the robustness program converge slowly (only the largest rows of B are
    # penalised; the others are ill-conditioned least squares), its objective well within
    # 20,000 iterations (measured 6e-8 relative).
    sp = S.state_problem(xs, states.u, objective, 0.9, 1e-3)
    _check_against_reference(sp, max_iter=20_000)
    op = S.output_problem(xs, states.u, states.y, objective, 1e-3)
    _check_against_reference(op, max_iter=20_000)


# ----------------------------------------------------------------------------- MLP embedding
def test_mlp_embedding_is_exact_and_well_posed(small_mlp, digits):
    mlp, w = small_mlp
    kappa = 0.9
    params, exps = S.embed_mlp(mlp, w, kappa)
    A, B, b, C, D, c = params
    k1 = np.asarray(w[2]).T  # hidden 1 -> hidden 2 kernel, as rows of A
    # every block is the explicit weight times a power of two: exactly
    np.testing.assert_array_equal(A[6:, :6], np.ldexp(k1, exps[1] - exps[0]))
    np.testing.assert_array_equal(B[:6], np.ldexp(np.asarray(w[0]).T, exps[0]))
    assert np.all(A[:6] == 0) and np.all(A[6:, 6:] == 0)  # strictly block lower triangular
    assert np.max(np.abs(A).sum(1)) <= kappa
    assert np.all(np.linalg.matrix_power(A, 2) == 0)  # nilpotent (two hidden layers)
    # the implicit family with these weights computes the MLP
    net = build_net({"family": "implicit", "n": 11, "activation": "relu", "kappa": kappa}, 64, 10)
    tp = [tf.constant(p) for p in params]
    np.testing.assert_array_equal(net.well_posed_A(tp).numpy(), A)  # W = A exactly
    x = tf.constant(digits[2][:50])
    got, want = net.apply(tp, x).numpy(), mlp.apply(w, x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    states = S.collect_states(mlp, w, digits[2][:50])
    np.testing.assert_allclose(
        net.state(tp, x).numpy(), S._scaled_x(states, exps), rtol=1e-12, atol=1e-13
    )
    # a feasible point of the state program with zero state-matching residual
    sp = S.state_problem(S._scaled_x(states, exps), states.u, "sparsity", kappa, 1e-3)
    wrow = np.concatenate([A, B, b[:, None]], axis=1)
    assert S.state_residual(sp, wrow)["max_abs"] <= 1e-12
    assert S.constraint_violation(sp, wrow) == 0.0


# ----------------------------------------------------------------------------- Keras
def test_keras_sequential_states_match_ours(small_mlp, digits):
    keras = tf.keras
    mlp, w = small_mlp
    model = keras.Sequential(
        [
            keras.Input((64,), dtype="float64"),
            keras.layers.Dense(6, activation="relu", dtype="float64"),
            keras.layers.Dense(5, activation="relu", dtype="float64"),
            keras.layers.Dense(10, dtype="float64"),
        ]
    )
    for i, layer in enumerate(model.layers):
        layer.set_weights([np.asarray(w[2 * i]), np.asarray(w[2 * i + 1])])
    net2, w2 = S.mlp_from_keras(model)
    assert net2.config == mlp.config
    for a, b in zip(w, w2, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = digits[2][:40]
    ours, theirs = S.collect_states(mlp, w, x), S.collect_states_keras(model, x)
    assert ours.widths == theirs.widths == (6, 5)
    np.testing.assert_array_equal(ours.u, theirs.u)
    np.testing.assert_allclose(theirs.x, ours.x, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(theirs.y, ours.y, rtol=1e-14, atol=1e-14)
    bad = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(10)]
    )
    with pytest.raises(ValueError, match="activation 'relu'"):
        S.collect_states_keras(bad, x)


# ----------------------------------------------------------------------------- SIM result
@pytest.mark.parametrize("objective", S.OBJECTIVES)
def test_sim_result_is_an_implicit_net_of_ours(small_mlp, digits, objective):
    mlp, w = small_mlp
    kappa = 0.8
    res = S.fit_mlp(
        mlp,
        w,
        digits[0][:150],
        objective=objective,
        kappa=kappa,
        lambda1=1e-3,
        tol=1e-6,
        max_iter=3000,
    )
    A = res.params[0]
    assert np.max(np.sum(np.abs(A), axis=1)) <= kappa  # exact, no tolerance
    net = res.implicit_net()
    tp = res.tensors()
    assert float(inf_norm(tf.constant(A))) <= kappa
    np.testing.assert_array_equal(well_posed(tf.constant(A), kappa).numpy(), A)  # W = A
    assert net.param_names == build_net(res.config, 64, 10).param_names
    # the family's forward = SIM's model, evaluated independently by Picard iteration
    x = digits[2][:60]
    B, b, C, D, c = res.params[1:]
    z = np.zeros((len(x), A.shape[0]))
    for _ in range(2000):
        z_new = np.maximum(z @ A.T + x @ B.T + b, 0)
        if np.max(np.abs(z_new - z)) <= 1e-15 * max(1, np.max(np.abs(z_new))):
            break
        z = z_new
    want = z_new @ C.T + x @ D.T + c
    got = net.apply(tp, tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    rep = S.sim_report(res, mlp, w, digits[2], digits[3], eps=[0.1], pgd_steps=2)
    assert rep["well_posedness"]["holds"] and rep["well_posedness"]["family_W_equals_A"]
    assert rep["accuracy"]["implicit"] > 0.5 and rep["accuracy"]["explicit"] > 0.5
    assert 0 <= rep["sparsity"]["zero_fraction"] <= 1
    rob = rep["robustness"]
    assert rob["implicit_pgd"][0] <= rep["accuracy"]["implicit"]
    assert rob["implicit_certified"][0] <= rob["implicit_pgd"][0]  # certified ≤ empirical


# ----------------------------------------------------------------------------- config
def test_sim_section_is_validated_without_tensorflow():
    ok = parse_net_config(
        {"family": "implicit", "n": 11, "init": {"sim": {"from": {"sizes": [6, 5]}}}}
    )
    assert ok.init.sim.source.sizes == [6, 5]
    assert ok.model_dump()["init"]["sim"]["from"]["sizes"] == [6, 5]  # the spec's spelling
    assert parse_net_config(ok.model_dump()) == ok
    for bad, words in (
        ({"n": 10}, "n must equal"),
        ({"activation": "tanh", "n": 11}, "activation must be relu"),
        (
            {"n": 11, "kappa": 0.5, "init": {"sim": {"from": {"sizes": [6, 5]}, "kappa": 0.9}}},
            "at most the net's kappa",
        ),
        (
            {"n": 11, "init": {"sim": {"from": {"sizes": [6, 5]}, "objective": "speed"}}},
            "objective",
        ),
    ):
        doc = {"family": "implicit", "init": {"sim": {"from": {"sizes": [6, 5]}}}, **bad}
        with pytest.raises(NetConfigError, match=words):
            parse_net_config(doc)
    net = build_net(ok.model_dump(), 64, 10)
    with pytest.raises(ValueError, match="initialise"):
        net.init_params(0)


def _tiny_spec() -> dict:
    return {
        "name": "sim_tiny",
        "dataset": {"kind": "digits", "split": {"train": 300, "val": 100, "test": 100}},
        "net": {
            "family": "implicit",
            "n": 8,
            "kappa": 0.9,
            "init": {
                "sim": {
                    "from": {"sizes": [4, 4], "steps": 60},
                    "fraction": 0.3,
                    "tol": 1e-6,
                    "max_iter": 2000,
                }
            },
        },
        "training": {"steps": 4, "batch_size": 20},
        "hyperparameters": {
            "learning_rate": {"init": 0.01, "tune": True, "granularity": "scalar"},
            "momentum": {"init": 0.5, "tune": False},
            "weight_decay": {"init": 0.0},
            "init_scale": {"init": 1.0},
        },
        "meta": {
            "iterations": 1,
            "start": "init",
            "seeds_per_iteration": 1,
            "select_seeds": 1,
            "eval_seeds": 1,
            "patience": 0,
        },
    }


@pytest.fixture(scope="module")
def tiny_problem():
    from revhpo.service.tuning import build_problem

    return build_problem(_tiny_spec())


def test_sim_weights_start_the_tuning_path(tiny_problem):
    problem = tiny_problem
    net = problem.net
    assert net.sim_report["well_posedness"]["holds"]
    w0 = net.init_params(0)
    for a, b in zip(w0, net.init_params(7), strict=True):  # the same for every seed
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(inf_norm(w0[0])) <= 0.9
    np.testing.assert_array_equal(net.well_posed_A(w0).numpy(), w0[0].numpy())
    # init scale 1: training starts exactly at SIM's weights, and trains from there
    _, start, _ = problem._inputs(problem._raw_tensors(None), 0)
    for a, b in zip(start, w0, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    w, losses = problem.train(None, 0)
    assert np.all(np.isfinite(losses)) and not np.array_equal(w[1].numpy(), w0[1].numpy())


def test_tuning_problem_starts_at_sims_own_model(tiny_problem):
    """The tuning problem's plain training at α = 0 is SIM's own model: the same float64
    weights bit for bit, in the same layout and parametrisation (``A = W``), and to float64
    precision the logits of SIM's own net, its validation loss and, at every step t, its loss
    on minibatch t (so a training curve that rises from SIM's weights is the training's doing,
    not a different start)."""
    from revhpo.nets.base import task_loss
    from revhpo.nets.config import SimConfig

    problem = tiny_problem
    net, data = problem.net, problem.data
    sim = SimConfig.model_validate(net.config["init"]["sim"])
    result, _, _ = S._fit_from_config(sim, 0.9, data.x_train, data.y_train, net.output_dim)
    own, own_params = result.implicit_net(), result.tensors()
    for got, want in zip(net.init_params(3), result.params, strict=True):
        assert got.dtype == tf.float64
        np.testing.assert_array_equal(got.numpy(), want)

    raw = problem.initial_raw()
    raw["log_learning_rate"] = np.full_like(raw["log_learning_rate"], -1000.0)  # α = 0
    w, losses = problem.train(raw, 3)
    for got, want in zip(w, result.params, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(net.well_posed_A(w).numpy(), result.params[0])

    def own_loss(x: np.ndarray, y: np.ndarray) -> float:
        xt = tf.constant(x, tf.float64)
        return float(task_loss(own, own.apply(own_params, xt), xt, tf.constant(y, tf.int32)))

    x_val = tf.constant(data.x_val, tf.float64)
    # the same ops on the same float64 values: equal (measured: bit for bit) up to a few ulps,
    # which a graph rewrite of the compiled training loop could introduce
    np.testing.assert_allclose(
        net.apply(w, x_val).numpy(), own.apply(own_params, x_val).numpy(), rtol=1e-15, atol=0
    )
    assert problem.metrics(w)["val_loss"] == pytest.approx(own_loss(data.x_val, data.y_val), 1e-15)
    table = problem.minibatches(3).numpy()
    want = [own_loss(data.x_train[idx], data.y_train[idx]) for idx in table]
    np.testing.assert_allclose(losses, want, rtol=1e-15, atol=0)


@pytest.mark.slow
def test_sim_weights_are_tuned_by_the_tuning_path(tmp_path):
    from revhpo.service.tuning import tune

    result = tune(_tiny_spec(), tmp_path)
    assert result.status == "completed", result.status
    assert result.net["config"]["init"]["sim"]["from"]["sizes"] == [4, 4]
    doc = json.loads((tmp_path / "result.json").read_text())  # SIM's report is in the result
    well_posed = doc["net"]["sim"]["well_posedness"]
    assert well_posed["holds"] and well_posed["inf_norm_A"] <= well_posed["kappa"]
    assert np.isfinite(result.evaluation["final"]["val_loss_mean"])


def test_cli_sim_prints_a_json_report(capsys, tmp_path):
    import json

    from revhpo.service.cli import main

    out = tmp_path / "sim.json"
    code = main(
        [
            "sim",
            "--sizes",
            "6",
            "--steps",
            "60",
            "--fraction",
            "0.1",
            "--eps",
            "0.1",
            "--pgd-steps",
            "2",
            "--max-iter",
            "1500",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["well_posedness"]["holds"]
    assert report["well_posedness"]["inf_norm_A"] <= report["kappa"]
    assert report["dims"] == {"n": 6, "p": 64, "q": 10}
    assert main(["sim", "--fraction", "2"]) == 2
