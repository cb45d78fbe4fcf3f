"""`revhpo verify`'s comparison with finite differences can fail: a wrong hypergradient is
reported as wrong, whatever finite-difference step or extrapolation it is compared with."""

from __future__ import annotations

import numpy as np
import pytest
from revhpo.service.cli_numerics import FD_STEPS, _compare, _fd_steps, _pick_entries
from revhpo.service.spec import load_spec
from revhpo.service.tuning import build_problem

TINY = {
    "name": "compare_tiny",
    "dataset": {"kind": "digits", "split": {"train": 120, "val": 60, "test": 60, "seed": 0}},
    "net": {"family": "mlp", "sizes": [8], "activation": "tanh"},
    "training": {"steps": 6, "batch_size": 20, "dtype": "float64", "seed": 0},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "tune": True, "granularity": "per_layer"},
        "momentum": {"init": 0.9, "tune": True, "granularity": "scalar"},
        "weight_decay": {"init": 0.001, "tune": True, "granularity": "scalar"},
        "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
    },
}


def _rows(problem, ev, entries, *, factor=1.0, shift=0.0, rtol=1e-4, floor_rel=1e-6):
    raw = problem.initial_raw()
    scale = max(float(np.max(np.abs(g))) for g in ev.grads.values())
    return [
        _compare(
            problem,
            raw,
            float(ev.grads[name][idx]) * factor + shift * scale,
            name,
            idx,
            seed=0,
            floor=floor_rel * scale,
            rtol=rtol,
            steps=_fd_steps(1e-5),
        )
        for name, idx in entries
    ]


def test_fd_steps_start_with_eps_then_nearest():
    assert _fd_steps(1e-5) == [1e-5, 1e-6, 1e-4, 1e-7, 1e-3]
    assert _fd_steps(3e-4)[0] == 3e-4 and sorted(_fd_steps(3e-4)[1:]) == sorted(FD_STEPS)


@pytest.mark.slow
def test_compare_accepts_the_true_value_and_rejects_perturbed_ones():
    problem = build_problem(load_spec(TINY))
    ev = problem.evaluate(seed=0)
    raw = problem.initial_raw()
    entries = _pick_entries(raw, 7, np.random.default_rng(0))
    assert {n for n, _ in entries} == set(raw)
    for row in _rows(problem, ev, entries):
        assert row["ok"] and row["rel_error"] <= 1e-4, row
        assert row["steps_tried"] == 1 and row["step"] == 1e-5  # smooth net: eps agrees
    for factor in (1 + 1e-2, 1 - 1e-2, -1.0, 0.0):
        for row in _rows(problem, ev, entries, factor=factor):
            assert not row["ok"] and row["rel_error"] > 1e-4, (factor, row)
            assert row["steps_tried"] == len(FD_STEPS)  # every step and Richardson tried
    # the float32 tolerance (1e-2, errors relative to at least 1e-3 of the largest entry)
    # refuses 5 % off on the entries above its floor and 2 % of the largest entry on all
    scale = max(float(np.max(np.abs(g))) for g in ev.grads.values())
    big = [(n, i) for n, i in entries if abs(ev.grads[n][i]) > 1e-2 * scale]
    assert len(big) >= 3
    for row in _rows(problem, ev, big, factor=1.05, rtol=1e-2, floor_rel=1e-3):
        assert not row["ok"], row
    for row in _rows(problem, ev, entries, shift=2e-2, rtol=1e-2, floor_rel=1e-3):
        assert not row["ok"], row


@pytest.mark.slow
def test_compare_rejects_a_perturbed_value_on_a_relu_net_with_kinks():
    """On a ReLU net the steps disagree with each other (kinks); a value 1 % off must still
    fail, while the true value passes."""
    doc = {
        **TINY,
        "dataset": {"kind": "digits", "split": {"train": 1000, "val": 397, "test": 400}},
        "net": {"family": "mlp", "sizes": [64], "activation": "relu"},
        "training": {"steps": 20, "batch_size": 100, "dtype": "float64", "seed": 0},
    }
    problem = build_problem(load_spec(doc))
    ev = problem.evaluate(seed=0)
    entries = [("log_init_scale", (0,)), ("log_init_scale", (1,)), ("log_learning_rate", (0,))]
    for row in _rows(problem, ev, entries):
        assert row["ok"], row
    for factor in (1 + 1e-2, 1 - 1e-2):
        for row in _rows(problem, ev, entries, factor=factor):
            assert not row["ok"], (factor, row)


@pytest.mark.parametrize(
    "flag, value",
    [("--eps", "0"), ("--rtol", "-1"), ("--rtol-float32", "-0.1"), ("--samples", "0")],
)
def test_verify_refuses_bad_options_naming_them(tmp_path, capsys, flag, value):
    from revhpo.service.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    assert main(["verify", str(spec), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and f"Received: {flag}=" in err
