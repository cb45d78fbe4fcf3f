"""Tuning: parametrisations, meta-optimizers, hypergradient pull-back, the loop, checkpoints,
resume, cancellation, divergence, results and plots. Tiny nets and tiny T throughout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from revhpo.optimizers import DivergenceError, MetaState, Tuner, TunerConfig
from revhpo.optimizers.hyperparams import (
    HyperGroup,
    Layout,
    Parametrization,
    from_unconstrained,
    to_unconstrained,
)
from revhpo.optimizers.meta import (
    adam,
    clip_by_global_norm,
    sgd,
    state_from_arrays,
    state_to_arrays,
)
from revhpo.optimizers.tuner import coarse_points
from revhpo.service.spec import SpecError, load_spec
from revhpo.service.tuning import Cancelled, build_problem, tune

# Two layers: kernel [3, 4] + bias [4] (layer 0), kernel [4, 2] + bias [2] (layer 1).
LAYOUT = Layout(steps=5, param_layers=(0, 0, 1, 1), param_shapes=((3, 4), (4,), (4, 2), (2,)))


def tiny_spec(**over):
    """A spec small enough for a test: synthetic blobs, MLP 6-5-3, T=6."""
    doc = {
        "name": "tiny",
        "dataset": {
            "kind": "synthetic",
            "n_samples": 90,
            "n_features": 6,
            "n_classes": 3,
            "split": {"train": 40, "val": 30, "test": 20},
        },
        "net": {"family": "mlp", "sizes": [5], "activation": "tanh"},
        "training": {"steps": 6, "batch_size": 10, "seed": 3},
        "hyperparameters": {
            "learning_rate": {"init": 0.2, "tune": True, "granularity": "per_layer_per_step"},
            "momentum": {"init": 0.8, "tune": True, "granularity": "per_step"},
            "weight_decay": {"init": 0.01, "tune": True, "granularity": "per_layer"},
            "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
        },
        "meta": {"iterations": 4, "step_size": 0.1, "eval_seeds": 2},
    }
    for key, val in over.items():
        merge = isinstance(val, dict) and key != "net"  # a net config replaces the default
        doc[key] = {**doc.get(key, {}), **val} if merge else val
    return load_spec(doc)


# ----------------------------------------------------------------------------- parametrisations
def test_unconstrained_round_trip():
    v = np.array([1e-4, 0.3, 0.9, 0.999])
    for tr in ("log", "logit"):
        back = from_unconstrained(tf.constant(to_unconstrained(v, tr)), tr).numpy()
        np.testing.assert_allclose(back, v, rtol=1e-12)


@pytest.mark.parametrize(
    "granularity, shape",
    [("scalar", ()), ("per_step", (5,)), ("per_layer", (2,)), ("per_layer_per_step", (5, 2))],
)
def test_schedule_shapes_and_layer_map(granularity, shape):
    p = Parametrization(
        {"learning_rate": HyperGroup("learning_rate", 0.1, True, granularity)}, LAYOUT
    )
    raw = p.initial_raw()
    assert raw["log_learning_rate"].shape == shape
    rng = np.random.default_rng(0)
    raw = {"log_learning_rate": rng.normal(size=shape)}
    h = p.hypers(raw)
    assert h.alpha.shape == (5, 4) and h.gamma.shape == (5, 4)
    nat = np.exp(raw["log_learning_rate"])
    full = np.broadcast_to(
        {
            "scalar": lambda: nat,
            "per_step": lambda: nat[:, None],
            "per_layer": lambda: nat[None, :],
            "per_layer_per_step": lambda: nat,
        }[granularity](),
        (5, 2) if granularity != "scalar" else (5, 2),
    )
    np.testing.assert_allclose(h.alpha.numpy(), full[:, [0, 0, 1, 1]], rtol=1e-14)
    np.testing.assert_allclose(h.gamma.numpy(), 0.9)


@pytest.mark.parametrize(
    "granularity", ["scalar", "per_step", "per_layer", "per_layer_per_step", "per_weight"]
)
def test_weight_decay_penalty_matches_numpy(granularity):
    p = Parametrization(
        {"weight_decay": HyperGroup("weight_decay", 0.1, True, granularity)}, LAYOUT
    )
    rng = np.random.default_rng(1)
    shape = LAYOUT.shape_of(granularity)
    lam = np.exp(rng.normal(size=shape))
    w = [rng.normal(size=s) for s in LAYOUT.param_shapes]
    t = 3
    got = float(p.weight_decay_penalty([tf.constant(x) for x in w], tf.constant(lam), t))
    if granularity == "per_weight":
        flat = np.concatenate([x.ravel() for x in w])
        want = 0.5 * np.sum(lam * flat**2)
    else:
        lam_t = lam[t] if granularity in ("per_step", "per_layer_per_step") else lam
        per_layer = np.broadcast_to(lam_t, (2,))
        want = 0.5 * sum(per_layer[k] * np.sum(x**2) for k, x in zip([0, 0, 1, 1], w, strict=True))
    assert math.isclose(got, want, rel_tol=1e-13)


def test_init_scale_and_untuned_groups_are_constant():
    p = Parametrization({"init_scale": HyperGroup("init_scale", 2.0, True, "per_layer")}, LAYOUT)
    assert set(p.initial_raw()) == {"log_init_scale"}
    h = p.hypers({"log_init_scale": np.log([2.0, 0.5])})
    np.testing.assert_allclose(h.scales.numpy(), [2, 2, 0.5, 0.5])
    assert h.weight_decay is None  # fixed at 0: no training-loss term
    with pytest.raises(ValueError, match="per_step"):
        HyperGroup("init_scale", 1.0, True, "per_step")
    with pytest.raises(ValueError, match="1.2"):
        HyperGroup("momentum", 1.2)


# ----------------------------------------------------------------------------- meta-optimizers
def test_adam_first_step_is_step_size_times_sign():
    opt = adam(0.1)
    params = {"a": np.array([1.0, -2.0, 3.0])}
    g = {"a": np.array([0.5, -3.0, 1e-3])}
    upd, st = opt.update(g, opt.init(params))
    np.testing.assert_allclose(upd["a"], -0.1 * np.sign(g["a"]), rtol=1e-4)
    upd2, _ = opt.update(g, st, 0.5)  # the scale halves the step
    np.testing.assert_allclose(upd2["a"], -0.05 * np.sign(g["a"]), rtol=1e-4)


def test_sgd_momentum_and_state_round_trip():
    opt = sgd(0.5, momentum=0.9)
    params = {"a": np.zeros(2), "b": np.zeros(())}
    g = {"a": np.array([1.0, 2.0]), "b": np.array(4.0)}
    st = opt.init(params)
    u1, st = opt.update(g, st)
    u2, st = opt.update(g, st)
    np.testing.assert_allclose(u1["a"], [-0.5, -1.0])
    np.testing.assert_allclose(u2["a"], 0.9 * u1["a"] - 0.5 * g["a"])
    back = state_from_arrays(opt, state_to_arrays(st))
    assert back.count == 2
    np.testing.assert_array_equal(back.velocity["a"], st.velocity["a"])
    a = adam(0.1)
    _, ast = a.update(g, a.init(params))
    back = state_from_arrays(a, state_to_arrays(ast))
    np.testing.assert_array_equal(back.nu["b"], ast.nu["b"])


def test_clip_by_global_norm():
    g = {"a": np.array([3.0]), "b": np.array([4.0])}
    c, n = clip_by_global_norm(g, 1.0)
    assert n == 5.0
    np.testing.assert_allclose(c["a"], [0.6])
    c, _ = clip_by_global_norm(g, None)
    np.testing.assert_array_equal(c["b"], [4.0])


# ----------------------------------------------------------------------------- hypergradients
@pytest.fixture(scope="module")
def problem():
    return build_problem(tiny_spec())


@pytest.mark.slow
def test_problem_contract(problem):
    assert set(problem.initial_raw()) == {
        "log_learning_rate",
        "logit_momentum",
        "log_weight_decay",
        "log_init_scale",
    }
    assert all(v.dtype == np.float64 for v in problem.initial_raw().values())
    assert problem.initial_raw()["log_learning_rate"].shape == (6, 2)
    ev = problem.evaluate(problem.initial_raw(), seed=5)
    assert set(ev.grads) == set(problem.initial_raw())
    assert ev.hyper.certificate.ok
    for k, g in ev.grads.items():
        assert g.shape == tuple(problem.initial_raw()[k].shape) and np.all(np.isfinite(g))
        assert np.any(g != 0), k
    # the exact run and plain float64 training reach the same validation loss
    assert math.isclose(
        ev.val_loss, problem.val_loss_only(problem.initial_raw(), seed=5), rel_tol=1e-9
    )


@pytest.mark.slow
def test_hypergradients_match_finite_differences(problem):
    """d f / d raw (exact reverse + pull-back) vs central differences of plain training."""
    rng = np.random.default_rng(0)
    raw = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in problem.initial_raw().items()}
    ev = problem.evaluate(raw, seed=11)
    eps = 1e-4
    for key in raw:
        d = rng.normal(size=raw[key].shape)
        d /= np.linalg.norm(d)
        plus = {**raw, key: raw[key] + eps * d}
        minus = {**raw, key: raw[key] - eps * d}
        fd = (problem.val_loss_only(plus, 11) - problem.val_loss_only(minus, 11)) / (2 * eps)
        an = float(np.sum(ev.grads[key] * d))
        assert math.isclose(an, fd, rel_tol=2e-4, abs_tol=1e-8), (key, an, fd)


def test_seed_changes_minibatches_and_init(problem):
    a = problem.val_loss_only(problem.initial_raw(), seed=1)
    b = problem.val_loss_only(problem.initial_raw(), seed=2)
    assert a != b
    assert problem.val_loss_only(problem.initial_raw(), seed=1) == a


# ----------------------------------------------------------------------------- divergence
class _Stub:
    """A problem whose training diverges on the calls listed in ``fail``."""

    def __init__(self, fail):
        self.param = Parametrization(
            {"learning_rate": HyperGroup("learning_rate", 0.1, True, "scalar")}, LAYOUT
        )
        self.steps = LAYOUT.steps
        self.calls = 0
        self.fail = fail

    def evaluate(self, raw, seed, callback=None):
        self.calls += 1
        if self.calls in self.fail:
            raise DivergenceError(2, "non-finite training loss (nan)")
        raise AssertionError("not reached in these tests")


def test_divergence_backtracks_then_stops():
    stub = _Stub(fail={1, 2, 3})
    backtrack = Tuner(stub, TunerConfig(optimizer="adam", step_size=0.1, max_backtracks=1))
    opt = backtrack.opt
    raw = {"log_learning_rate": np.array(0.0)}
    best = {"log_learning_rate": np.array(-1.0)}
    st = MetaState(
        1, raw, opt.init(raw), started=True, best_raw=best, best_opt_state=opt.init(best)
    )
    st2, rec = backtrack.step(st)
    assert rec["diverged"] and rec["action"] == "backtrack"
    assert st2.raw is best and st2.step_scale == 0.5 and st2.stop_reason is None
    st3, rec = backtrack.step(st2)  # diverged at the best iterate: nothing to go back to
    assert rec["action"] == "stop" and "step 2" in st3.stop_reason
    assert "nothing to go back to" in st3.stop_reason
    stop = Tuner(stub, TunerConfig(on_divergence="stop"))
    st4, rec = stop.step(st)
    assert st4.stop_reason and "on_divergence='stop'" in st4.stop_reason


def test_initial_weights_outside_the_fixed_point_range_are_a_divergence(problem):
    """A weight the fixed point cannot hold (here: init scale 1e12, |w0| > 2**62 / 2**52) is
    a divergence at step 0 (backtrack or stop), never an exception out of the loop."""
    tuner = Tuner(problem, TunerConfig(max_backtracks=2))
    good = problem.initial_raw()
    huge = {**good, "log_init_scale": np.full_like(good["log_init_scale"], math.log(1e12))}
    opt = tuner.opt
    st = MetaState(
        1, huge, opt.init(huge), started=True, best_raw=good, best_opt_state=opt.init(good)
    )
    st2, rec = tuner.step(st)
    assert rec["diverged"] and rec["action"] == "backtrack"
    assert rec["divergence_kind"] == "fixed_point_range" and rec["divergence_step"] == 0
    assert "fixed-point range" in rec["divergence_reason"]
    assert st2.raw is good and st2.step_scale == 0.5 and st2.stop_reason is None
    # from the initial hyperparameters there is nothing to go back to: the loop stops
    st3, rec = tuner.step(MetaState(0, huge, opt.init(huge)))
    assert rec["action"] == "stop"
    assert "fixed-point range" in st3.stop_reason and "nothing to go back to" in st3.stop_reason


@pytest.mark.slow
def test_cli_tune_refuses_initial_weights_outside_the_fixed_point_range(tmp_path, capsys):
    from revhpo.service.cli import main

    spec = tiny_spec(
        hyperparameters={"init_scale": {"init": 1e12, "tune": True, "granularity": "per_layer"}},
        meta={"iterations": 2, "eval_seeds": 1},
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    assert main(["tune", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("revhpo tune: the initial weights do not fit the fixed-point range")
    assert "hyperparameters.init_scale.init=1000000000000.0" in err
    assert "training.frac_bits=52" in err
    doc = json.loads((tmp_path / "o" / "result.json").read_text())
    assert doc["status"] == "diverged" and doc["meta_iterations"] == 1


@pytest.mark.slow
def test_diverging_job_stops_with_reason(tmp_path):
    spec = tiny_spec(
        hyperparameters={"learning_rate": {"init": 1e7, "tune": True}},
        meta={"iterations": 3, "eval_seeds": 1},
    )
    res = tune(spec, tmp_path)
    assert res.status == "diverged"
    assert "diverged at step" in res.stop_reason
    assert res.history[0]["diverged"] and res.meta_iterations == 1
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["status"] == "diverged"
    again = tune(spec, tmp_path)  # resuming a stopped run does not start training again
    assert again.status == "diverged" and again.meta_iterations == 1


# ----------------------------------------------------------------------------- the loop
def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("timings", "time_s")} for h in history]


@pytest.mark.slow
def test_tune_writes_results_plots_and_events(tmp_path):
    events = []
    spec = tiny_spec()
    res = tune(spec, tmp_path, callback=events.append)
    assert res.status == "completed" and res.meta_iterations == 4
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["schema_version"] == 1 and doc["n_hyperparameters"] == 12 + 6 + 2 + 2
    for key in ("history", "hyperparameters", "evaluation", "training_curves", "device"):
        assert key in doc
    h0 = doc["history"][0]
    for key in ("val_loss", "train_loss", "val_acc", "grad_norms", "objective", "select_loss"):
        assert key in h0
    assert not [k for k in h0 if "test" in k]  # test figures only in the final evaluation
    assert h0["certificate"]["ok"] and h0["bits_per_weight"] > 0
    assert set(h0["grad_norms"]) == {"learning_rate", "momentum", "weight_decay", "init_scale"}
    seeds = [s for h in doc["history"] for s in h["seeds"]]
    assert len(set(seeds)) == 4 * 4  # fresh training seeds (4 per meta-iteration)
    assert not set(seeds) & set(doc["evaluation"]["seeds"])  # held-out seeds never tuned on
    assert len(doc["training_curves"]["final"]) == 6
    final_lr = np.array(doc["hyperparameters"]["last"]["learning_rate"]["value"])
    assert final_lr.shape == (6, 2) and not np.allclose(final_lr, 0.2)
    sel = doc["selection"]
    assert sel["last_iteration"] == 4 and 0 <= sel["iteration"] <= 4 and sel["reason"]
    assert sel["start"]["kind"] == "coarse"
    tried = [{k: p[k] for k in ("learning_rate", "momentum")} for p in sel["start"]["points"]]
    grid = coarse_points(build_problem(tiny_spec()))  # the grid, then any edge extension
    assert tried[: len(grid)] == grid and len(tried) <= len(grid) + 3 * 4
    expanded = doc["hyperparameters"]["final"]["momentum"]["per_step_per_layer"]
    assert np.asarray(expanded).shape == (6, 2)
    for name in doc["files"]["plots"].values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [e["type"] for e in events]
    assert kinds.count("meta") == 4 and kinds.count("checkpoint") == 5 and kinds[-1] == "done"
    assert kinds.index("start") < kinds.index("meta")
    assert "step" in kinds
    meta = [e for e in events if e["type"] == "meta"]
    assert meta[-1]["eta_s"] == 0 and meta[0]["meta_iterations"] == 4
    json.dumps(events)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path):
    spec = tiny_spec(meta={"iterations": 4, "eval_seeds": 1})
    full = tune(spec, tmp_path / "full")

    metas = []

    def count(event):
        metas.extend([event] if event["type"] == "meta" else [])

    with pytest.raises(Cancelled):  # lets meta-iterations 0 and 1 run, cancels before 2
        tune(spec, tmp_path / "cut", callback=count, should_stop=lambda: len(metas) >= 2)
    assert (tmp_path / "cut" / "checkpoint.npz").exists()
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = tune(spec, tmp_path / "cut")
    assert resumed.meta_iterations == 4
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.hyperparameters == full.hyperparameters
    assert resumed.evaluation == full.evaluation
    # a checkpoint of another spec is refused
    other = tiny_spec(meta={"iterations": 4, "eval_seeds": 1, "step_size": 0.2})
    from revhpo.service.results import CheckpointError

    with pytest.raises(CheckpointError, match="different job"):
        tune(other, tmp_path / "cut")


@pytest.mark.slow
def test_wall_time_limit_stops(tmp_path):
    spec = tiny_spec(limits={"max_wall_time_s": 1e-6}, meta={"iterations": 5, "eval_seeds": 0})
    res = tune(spec, tmp_path)
    assert res.status == "stopped" and "max_wall_time_s" in res.stop_reason
    assert res.meta_iterations == 0  # the coarse start already spent the time
    assert res.selection["iteration"] == 0 and res.evaluation == {"seeds": []}


def test_limits_and_batch_checked(tmp_path):
    with pytest.raises(SpecError, match="max_params_x_steps"):
        build_problem(tiny_spec(limits={"max_params_x_steps": 10}))
    with pytest.raises(SpecError, match="batch_size"):
        build_problem(tiny_spec(training={"batch_size": 41}))


@pytest.mark.slow
def test_cli_tune_runs(tmp_path, capsys):
    from revhpo.service.cli import main

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_spec(meta={"iterations": 2}).model_dump(mode="json")))
    assert main(["tune", str(path), "--out", str(tmp_path / "o"), "--iterations", "1"]) == 0
    out = capsys.readouterr()
    assert "status: completed" in out.out and "held-out" in out.out
    assert "meta-iteration 1/1" in out.err
    assert json.loads((tmp_path / "o" / "result.json").read_text())["meta_iterations"] == 1


def test_default_spec_builds_the_digits_problem():
    problem = build_problem(load_spec({}))
    assert problem.param.n_tuned() == 2 * 4 * 3  # α and γ: 4 knots per layer, 3 layers
    assert problem.net.param_layers == [0, 0, 1, 1, 2, 2]
    assert problem.dataset_summary["n_train"] == 1000


@pytest.mark.slow
def test_per_weight_decay_and_float32_hypergradients():
    spec = tiny_spec(
        training={"steps": 4, "dtype": "float32"},
        hyperparameters={
            "learning_rate": {"init": 0.2, "tune": True, "granularity": "scalar"},
            "momentum": {"init": 0.8, "tune": False},
            "weight_decay": {"init": 0.05, "tune": True, "granularity": "per_weight"},
            "init_scale": {"init": 1.0, "tune": False, "granularity": "scalar"},
        },
    )
    problem = build_problem(spec)
    assert problem.initial_raw()["log_weight_decay"].shape == (6 * 5 + 5 + 5 * 3 + 3,)
    ev = problem.evaluate(problem.initial_raw(), seed=4)
    assert ev.hyper.certificate.ok
    g = ev.grads["log_weight_decay"]
    assert np.all(np.isfinite(g)) and np.count_nonzero(g) > g.size // 2
    # float32 net evaluation: the directional derivative agrees with differences to ~1e-2
    rng = np.random.default_rng(5)
    d = rng.normal(size=g.shape)
    d /= np.linalg.norm(d)
    raw = problem.initial_raw()
    eps = 0.05
    plus = {**raw, "log_weight_decay": raw["log_weight_decay"] + eps * d}
    minus = {**raw, "log_weight_decay": raw["log_weight_decay"] - eps * d}
    fd = (problem.val_loss_only(plus, 4) - problem.val_loss_only(minus, 4)) / (2 * eps)
    an = float(np.sum(g * d))
    assert abs(an) > 1e-5, an  # not trivially small
    assert math.isclose(an, fd, rel_tol=5e-2), (an, fd)


@pytest.mark.slow
def test_autoencoder_spec_builds_a_reconstruction_problem_and_is_exact():
    """An autoencoder's output width is the input width, not the class count."""
    spec = tiny_spec(
        net={
            "family": "implicit_autoencoder",
            "hidden_layer_num": 1,
            "start_layer": 5,
            "latent_num": 3,
        },
        training={"steps": 4},
    )
    problem = build_problem(spec)
    assert problem.net.task == "reconstruction"
    assert problem.net.output_dim == problem.net.input_dim == 6
    ev = problem.evaluate(problem.initial_raw(), seed=2)
    assert ev.hyper.certificate.ok
    assert np.isfinite(ev.val_loss)
