"""Winning tuning: knot schedules (and their exact hypergradients), seed-averaged
hypergradients, the coarse start, selection of the returned iterate and the stopping rule.

The loop tests use the real tiny problem and script only its selection estimate, so each rule
is checked on numbers the test chooses."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf
from revhpo.optimizers import EVAL_SEED_OFFSET, MetaState, Tuner, TunerConfig
from revhpo.optimizers.checkpoint import from_bytes, to_bytes
from revhpo.optimizers.hyperparams import HyperGroup, Layout, Parametrization, knot_matrix
from revhpo.optimizers.meta import global_norm
from revhpo.optimizers.problem import SELECT_SEED_OFFSET
from revhpo.optimizers.tuner import coarse_points
from revhpo.optimizers.unrolled import unrolled_hypergradient
from revhpo.service.spec import SpecError, load_spec
from revhpo.service.tuning import build_problem

from tests.test_tuning import tiny_spec

KNOTS = {
    "learning_rate": {"init": 0.2, "tune": True, "granularity": "per_layer_knots", "knots": 3},
    "momentum": {"init": 0.8, "tune": True, "granularity": "knots", "knots": 2},
    "weight_decay": {"init": 0.01, "tune": True, "granularity": "per_layer"},
    "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
}


# ----------------------------------------------------------------------------- knot schedules
@pytest.mark.parametrize(("steps", "knots"), [(1, 1), (6, 1), (6, 2), (6, 3), (100, 4), (7, 7)])
def test_knot_matrix_interpolates(steps, knots):
    m = knot_matrix(steps, knots)
    assert m.shape == (steps, knots) and np.all(m >= 0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    # a linear function of t is reproduced exactly between the knots
    if knots > 1:
        pos = np.linspace(0, steps - 1, knots)
        np.testing.assert_allclose(m @ (3 * pos - 1), 3 * np.arange(steps) - 1, atol=1e-12)
        for q, p in enumerate(pos):
            if p == int(p):
                assert m[int(p), q] == 1.0  # a knot on a step takes its value exactly


def test_knot_counts_are_checked():
    with pytest.raises(ValueError, match="knots"):
        knot_matrix(5, 6)
    layout = Layout(5, (0, 1), ((2, 2), (2,)))
    with pytest.raises(ValueError, match="knots"):
        Parametrization(
            {"learning_rate": HyperGroup("learning_rate", 0.1, True, "knots", 6)}, layout
        )
    with pytest.raises(SpecError, match="knots must be at most training.steps"):
        load_spec(
            tiny_spec().model_dump(mode="json")
            | {
                "hyperparameters": {
                    "learning_rate": {"init": 0.1, "tune": True, "granularity": "knots", "knots": 7}
                }
            }
        )


def test_knot_schedules_expand_to_every_step_and_layer():
    layout = Layout(6, (0, 0, 1, 1), ((3, 4), (4,), (4, 2), (2,)))
    p = Parametrization(
        {
            "learning_rate": HyperGroup("learning_rate", 0.2, True, "per_layer_knots", 3),
            "momentum": HyperGroup("momentum", 0.8, True, "knots", 2),
        },
        layout,
    )
    raw = p.initial_raw()
    assert raw["log_learning_rate"].shape == (3, 2) and raw["logit_momentum"].shape == (2,)
    raw["log_learning_rate"] = np.log([[0.1, 1.0], [0.2, 2.0], [0.4, 4.0]])
    raw["logit_momentum"] = np.log([0.5 / 0.5, 0.9 / 0.1])
    h = p.hypers({k: tf.constant(v) for k, v in raw.items()})
    m3, m2 = knot_matrix(6, 3), knot_matrix(6, 2)
    per_layer = m3 @ np.array([[0.1, 1.0], [0.2, 2.0], [0.4, 4.0]])
    np.testing.assert_allclose(h.alpha.numpy(), per_layer[:, [0, 0, 1, 1]], rtol=1e-14)
    np.testing.assert_allclose(h.gamma.numpy()[:, 0], m2 @ [0.5, 0.9], rtol=1e-14)
    d = p.describe(raw)
    assert d["learning_rate"]["knots"] == 3
    np.testing.assert_allclose(d["learning_rate"]["per_step_per_layer"], per_layer, rtol=1e-14)
    assert np.asarray(d["momentum"]["per_step_per_layer"]).shape == (6, 2)
    assert np.asarray(d["weight_decay"]["per_step_per_layer"]).shape == (6, 2)


@pytest.fixture(scope="module")
def knot_problem():
    return build_problem(tiny_spec(hyperparameters=KNOTS))


@pytest.mark.slow
def test_knot_hypergradients_match_unrolled_autodiff_and_finite_differences(knot_problem):
    """d f / d knots: the exact engine's pull-back vs (1) reverse-mode autodiff through the
    unrolled float loop, pulled back to the knots by the interpolation matrix in NumPy, and
    (2) central differences of plain float64 training."""
    problem, seed = knot_problem, 4
    rng = np.random.default_rng(3)
    raw = {k: v + 0.2 * rng.normal(size=v.shape) for k, v in problem.initial_raw().items()}
    ev = problem.evaluate(raw, seed)
    assert ev.hyper.certificate.ok

    # (1) unrolled autodiff at the applied (rational) momentum, chain rule by hand
    raw_t = {k: tf.constant(v) for k, v in raw.items()}
    h, w0, theta = problem._inputs(raw_t, seed)
    ref = unrolled_hypergradient(
        problem.train_loss,
        problem.val_loss,
        w0,
        h.alpha,
        ev.hyper.gamma_applied,
        theta,
        key=problem.minibatches(seed),
    )
    layers = np.asarray(problem.net.param_layers)
    onehot = np.eye(layers.max() + 1)[layers]  # [K, L]
    d_alpha_layer = np.asarray(ref["d_alpha"]) @ onehot  # [T, L]
    alpha_knots = np.exp(raw["log_learning_rate"])
    want_lr = (knot_matrix(6, 3).T @ d_alpha_layer) * alpha_knots
    d_gamma_step = np.asarray(ref["d_gamma"]).sum(axis=1)  # [T]: shared by every tensor
    s = 1 / (1 + np.exp(-raw["logit_momentum"]))
    want_mom = (knot_matrix(6, 2).T @ d_gamma_step) * s * (1 - s)
    np.testing.assert_allclose(ev.grads["log_learning_rate"], want_lr, rtol=1e-6, atol=1e-12)
    # γ: the engine differentiates at the unrounded γ, the reference at the rational one
    np.testing.assert_allclose(ev.grads["logit_momentum"], want_mom, rtol=1e-3, atol=1e-9)

    # (2) finite differences along a random direction of each knot array
    eps = 1e-4
    for key in ("log_learning_rate", "logit_momentum"):
        d = rng.normal(size=raw[key].shape)
        d /= np.linalg.norm(d)
        plus = problem.val_loss_only({**raw, key: raw[key] + eps * d}, seed)
        minus = problem.val_loss_only({**raw, key: raw[key] - eps * d}, seed)
        fd = (plus - minus) / (2 * eps)
        an = float(np.sum(ev.grads[key] * d))
        assert math.isclose(an, fd, rel_tol=1e-3, abs_tol=1e-8), (key, an, fd)


# ----------------------------------------------------------------------------- the loop
class Scripted:
    """Replaces a problem's selection estimate by scripted values; records every call."""

    def __init__(self, problem, values=None, of_raw=None):
        self.problem, self.values, self.of_raw, self.calls = problem, list(values or []), of_raw, []

    def __enter__(self):
        self.saved = self.problem.selection_loss
        self.problem.selection_loss = self
        return self

    def __exit__(self, *exc):
        self.problem.selection_loss = self.saved

    def __call__(self, raw, seeds, whole=False):
        raw_copy = {k: np.array(v) for k, v in raw.items()}
        self.calls.append(([int(s) for s in seeds], raw_copy, whole))
        return self.of_raw(raw) if self.of_raw else self.values.pop(0)


@pytest.fixture(scope="module")
def problem():
    return build_problem(tiny_spec())


def config(**over):
    base = TunerConfig(
        iterations=4,
        step_size=0.1,
        seed=3,
        eval_seeds=0,
        start="init",
        seeds_per_iteration=1,
        select_seeds=2,
        patience=0,
        backtrack_tol=0.1,
        step_decay="none",
    )
    return replace(base, **over)


def test_returns_the_best_iterate_and_goes_back_to_it_when_much_worse(problem):
    # estimates: start 1.0; iterate 1: 0.8 (best); 2: 0.85 (within 10%: go on);
    # 3: 1.5 (> 10% worse: back to iterate 1, half step); 4: 0.82
    with Scripted(problem, [1.0, 0.8, 0.85, 1.5, 0.82]) as sel:
        out = Tuner(problem, config()).run()
    hist = out.state.history
    assert [h["select_loss"] for h in hist] == [1.0, 0.8, 0.85, 0.8]
    assert [h.get("action") for h in hist] == [None, None, "back_to_best", None]
    assert [h["improved"] for h in hist] == [True, False, False, False]
    assert hist[3]["step_scale"] == 0.5  # halved by the backtrack
    iterate1 = sel.calls[1][1]
    np.testing.assert_array_equal(
        hist[3]["hypers"]["learning_rate"]["mean"], hist[1]["hypers"]["learning_rate"]["mean"]
    )
    for k, v in out.raw.items():
        np.testing.assert_array_equal(v, iterate1[k])
    assert any(not np.array_equal(out.last_raw[k], out.raw[k]) for k in out.raw)
    s = out.selection
    assert s["iteration"] == 1 and s["select_loss"] == 0.8 and s["last_iteration"] == 4
    assert s["last_select_loss"] == 0.82 and not s["stopped_early"]
    assert "iterate 1 of 4" in s["reason"]
    # every estimate uses the same held-out selection seeds
    assert {tuple(c[0]) for c in sel.calls} == {(3 + SELECT_SEED_OFFSET, 4 + SELECT_SEED_OFFSET)}


def test_stops_when_the_estimate_stops_improving(problem):
    with Scripted(problem, [0.5, 0.6, 0.55, 0.52, 0.9]) as sel:
        out = Tuner(problem, config(iterations=10, patience=3, backtrack_tol=10)).run()
    assert out.state.iteration == 3 and len(sel.calls) == 4
    assert out.status == "completed" and out.selection["stopped_early"]
    assert out.selection["iteration"] == 0 and "the start" in out.selection["reason"]
    assert "3 meta-iterations without improvement" in out.selection["reason"]
    for k, v in out.raw.items():  # nothing beat the start: the start is returned
        np.testing.assert_array_equal(v, problem.initial_raw()[k])


def test_coarse_start_picks_the_best_constant_point(problem):
    target = math.log(0.2 * 4.0)  # α = 4 × init, γ = 1 − 2 (1 − init)

    def estimate(raw):
        lr, mom = np.mean(raw["log_learning_rate"]), np.mean(raw["logit_momentum"])
        return abs(lr - target) + abs(mom - math.log(0.6 / 0.4))

    points = coarse_points(problem)
    assert len(points) == 7 * 4 and {"learning_rate": 0.2, "momentum": 0.8} in points
    with Scripted(problem, of_raw=estimate) as sel:
        out = Tuner(problem, config(iterations=0, start="coarse", coarse_seeds=1)).run()
    start = out.selection["start"]
    assert start["kind"] == "coarse" and len(start["points"]) == 28
    assert start["chosen"]["learning_rate"] == pytest.approx(0.8)
    assert start["chosen"]["momentum"] == pytest.approx(0.6)
    # 28 points on 1 seed, a race of the best 4 on both, all on the whole validation set;
    # then the start's estimate on the select part, which later iterates must beat
    assert [len(c[0]) for c in sel.calls] == [1] * 28 + [2] * 4 + [2]
    assert [c[2] for c in sel.calls] == [True] * 32 + [False]
    finalists = start["finalists"]
    assert len(finalists) == 4 and finalists[0]["val_loss"] == min(f["val_loss"] for f in finalists)
    np.testing.assert_allclose(out.raw["log_learning_rate"], target)
    assert out.raw["log_weight_decay"] == pytest.approx(problem.initial_raw()["log_weight_decay"])


@pytest.mark.parametrize(
    ("alpha", "n_points"),
    [(0.2 * 8 * 4, 28 + 3 * 4), (0.2 * 0.1 / 2.5, 28 + 2 * 4)],  # 3 doublings; 2 ÷ 2.5
    ids=["past-the-top", "below-the-bottom"],
)
def test_coarse_start_grows_past_the_edge_its_best_point_is_on(problem, alpha, n_points):
    def estimate(raw):  # best at `alpha` and γ = 0.6, beyond the grid's α range
        lr, mom = np.mean(raw["log_learning_rate"]), np.mean(raw["logit_momentum"])
        return abs(lr - math.log(alpha)) + abs(mom - math.log(0.6 / 0.4))

    with Scripted(problem, of_raw=estimate):
        out = Tuner(problem, config(iterations=0, start="coarse", coarse_seeds=1)).run()
    start = out.selection["start"]
    assert len(start["points"]) == n_points
    assert start["chosen"]["learning_rate"] == pytest.approx(alpha)
    assert start["chosen"]["momentum"] == pytest.approx(0.6)


def test_whole_validation_loss_is_the_example_weighted_mean_of_its_parts():
    spec = tiny_spec(meta={"select_fraction": 0.5})
    prob = build_problem(spec)
    assert 0 < prob.select_fraction < 1
    raw, seed = prob.initial_raw(), 7
    w, _ = prob.train(raw, seed)
    fit, sel = prob._fit, prob._select  # the two parts, and their sizes
    n_fit, n_sel = int(fit[1].shape[0]), int(sel[1].shape[0])
    fit_loss = float(prob.val_loss(w))
    sel_loss = prob.selection_loss(raw, [seed])
    whole = prob.selection_loss(raw, [seed], whole=True)
    assert whole != sel_loss
    assert math.isclose(
        whole, (n_fit * fit_loss + n_sel * sel_loss) / (n_fit + n_sel), rel_tol=1e-12
    )


def test_edge_points():
    from revhpo.optimizers.tuner import COARSE_MIN_MOMENTUM, edge_points

    rows = [
        {"learning_rate": a, "momentum": m, "val_loss": loss}
        for a, m, loss in [(0.1, 0.5, 3.0), (0.1, 0.9, 2.0), (1.0, 0.5, 1.0), (1.0, 0.9, 1.5)]
    ]
    # best (1.0, 0.5): the largest α and the smallest γ → α doubles; 1 − γ doubles to 0
    # (clamped to the smallest γ) at the best α and its neighbour
    assert edge_points(rows) == [
        {"learning_rate": 2.0, "momentum": 0.5},
        {"learning_rate": 2.0, "momentum": 0.9},
        {"learning_rate": 0.1, "momentum": COARSE_MIN_MOMENTUM},
        {"learning_rate": 1.0, "momentum": COARSE_MIN_MOMENTUM},
    ]
    interior = [*rows, {"learning_rate": 2.0, "momentum": 0.5, "val_loss": 5.0}]
    interior += [{"learning_rate": 1.0, "momentum": 0.3, "val_loss": 5.0}]
    assert edge_points(interior) == []
    diverged = [{**r, "val_loss": math.inf} for r in rows]
    assert edge_points(diverged) == []
    assert edge_points([{"learning_rate": 0.3, "val_loss": 1.0}]) == [{"learning_rate": 0.6}]


def test_hypergradients_are_averaged_over_disjoint_seeds(problem):
    seen, batches = [], []
    evaluate_many = problem.evaluate_many

    def recording(raw, seeds, callback=None):
        evs = evaluate_many(raw, seeds, callback)
        batches.append(list(seeds))
        seen.extend((seed, ev.grads) for seed, ev in zip(seeds, evs, strict=True))
        return evs

    problem.evaluate_many = recording
    try:
        with Scripted(problem, of_raw=lambda raw: 1.0):
            out = Tuner(problem, config(iterations=2, seeds_per_iteration=3, clip_norm=None)).run()
    finally:
        problem.evaluate_many = evaluate_many
    assert batches == [[3, 4, 5], [6, 7, 8]]  # one pass of 3 replicas per meta-iteration
    h0 = out.state.history[0]
    assert h0["seeds"] == [3, 4, 5]
    mean = {k: np.mean([g[k] for _, g in seen[:3]], axis=0) for k in seen[0][1]}
    assert h0["grad_norm"] == pytest.approx(global_norm(mean), rel=1e-12)
    cfg = config(seeds_per_iteration=3, select_seeds=5, eval_seeds=5)
    tuning = {s for i in range(cfg.iterations) for s in cfg.tuning_seeds(i)}
    assert not tuning & set(cfg.select_seed_list()) and not tuning & set(cfg.eval_seed_list())
    assert not set(cfg.select_seed_list()) & set(cfg.eval_seed_list())
    assert min(cfg.eval_seed_list()) == 3 + EVAL_SEED_OFFSET


def test_progress_never_shows_test_figures(problem):
    events = []
    out = Tuner(problem, config(iterations=2, eval_seeds=1), callback=events.append).run()
    shown = [e for e in events if e["type"] != "evaluation"]
    assert {e["type"] for e in shown} >= {"start", "meta", "step"}
    for e in shown:
        assert not [k for k in e if "test" in k], e
    for rec in out.state.history:
        assert not [k for k in rec if "test" in k], rec
    assert "test_loss_mean" in out.evaluation["final"]  # only the final report has them
    metas = [e for e in events if e["type"] == "meta"]
    assert len(metas) == 2 and all(e["duration_s"] > 0 for e in metas)


def test_checkpoint_keeps_the_best_iterate(problem):
    tuner = Tuner(problem, config())
    raw = problem.initial_raw()
    best = {k: v + 1 for k, v in raw.items()}
    st = replace(
        tuner.initial_state(),
        iteration=3,
        started=True,
        start={"kind": "init"},
        select_loss=float("inf"),
        best_raw=best,
        best_opt_state=tuner.opt.init(best),
        best_iteration=2,
        best_select_loss=0.25,
        since_best=1,
    )
    back = from_bytes(to_bytes(st, tag="t"), tuner.opt, tag="t")
    assert isinstance(back, MetaState) and back.started and back.start == {"kind": "init"}
    assert back.select_loss == math.inf and back.best_select_loss == 0.25
    assert back.best_iteration == 2 and back.since_best == 1
    for k in best:
        np.testing.assert_array_equal(back.best_raw[k], best[k])


def test_select_fraction_splits_the_validation_set():
    spec = tiny_spec(meta={"select_fraction": 0.4})
    p = build_problem(spec)
    fit, sel = p._fit, p._select
    assert len(fit[1]) + len(sel[1]) == 30 and len(sel[1]) == 12
    assert build_problem(spec)._select[0].numpy().tolist() == sel[0].numpy().tolist()
    whole = build_problem(tiny_spec(meta={"select_fraction": 0.0}))
    assert len(whole._fit[1]) == len(whole._select[1]) == 30


def test_noise_normalized_direction_and_snr_steps():
    from revhpo.optimizers.meta import make_meta_optimizer, noise_normalized

    # coordinate 0: the same sign on every seed (clear); 1: mean within noise; 2: all zero
    per_seed = [
        {"a": np.array([1.0, 1.0, 0.0])},
        {"a": np.array([1.2, -1.0, 0.0])},
        {"a": np.array([0.8, 1.2, 0.0])},
        {"a": np.array([1.0, -1.0, 0.0])},
    ]
    d, share = noise_normalized(per_seed, z=2.0)
    g = np.stack([p["a"] for p in per_seed])
    se = g.std(axis=0, ddof=1) / 2
    assert d["a"][0] == 1.0 and share == pytest.approx(1 / 3)
    assert d["a"][1] == pytest.approx(g[:, 1].mean() / (2 * se[1])) and abs(d["a"][1]) < 0.1
    assert d["a"][2] == 0.0
    one, _ = noise_normalized(per_seed[1:2])
    np.testing.assert_array_equal(one["a"], [1.0, -1.0, 0.0])  # one seed: the sign
    opt = make_meta_optimizer("snr", 0.1)
    updates, state = opt.update(d, opt.init({"a": np.zeros(3)}), 0.5)
    np.testing.assert_allclose(updates["a"], -0.05 * d["a"])
    assert state.count == 1


def test_snr_tuner_records_the_significant_share(problem):
    with Scripted(problem, of_raw=lambda raw: 1.0):
        out = Tuner(problem, config(iterations=1, optimizer="snr", seeds_per_iteration=2)).run()
    rec = out.state.history[0]
    assert 0 <= rec["significant_share"] <= 1 and rec["update_norm"] > 0
