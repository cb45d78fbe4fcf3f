"""Tuned schedules out of revhpo: the export formats, the CLI, and the Keras optimizer, which
must reproduce revhpo's own plain training of the tuned hyperparameters."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from revhpo.service.tuning import build_problem

from revhpo.export import CONVENTION, ExportError, TunedSchedules, load_schedules
from revhpo.keras import ScheduledMomentum, apply_init_scales, layer_name_of
from tests.test_tuning import tiny_spec

HP = {
    "learning_rate": {"init": 0.3, "tune": True, "granularity": "per_layer_knots", "knots": 3},
    "momentum": {"init": 0.8, "tune": True, "granularity": "per_step"},
    "weight_decay": {"init": 0.01, "tune": True, "granularity": "per_layer"},
    "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
}


@pytest.fixture(scope="module")
def tuned():
    """A problem, non-trivial tuned raw values, and the result-document parts ``tune`` writes."""
    problem = build_problem(tiny_spec(hyperparameters=HP, training={"steps": 12}))
    rng = np.random.default_rng(0)
    raw = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in problem.initial_raw().items()}
    net = problem.net
    doc = {
        "spec": {"name": "tiny", "training": {"steps": problem.steps}},
        "net": {
            "layer_names": list(net.layer_names),
            "param_names": list(net.param_names),
            "param_layers": list(net.param_layers),
            "param_shapes": [list(s) for s in net.param_shapes],
        },
        "hyperparameters": {"final": problem.hypers_of(raw)},
        "selection": {"iteration": 3},
    }
    return problem, raw, doc


def _train_keras(problem, schedules, seed, **opt_kwargs):
    model = problem.net.keras_model(dtype="float64", seed=seed)
    model.build((None, problem.net.input_dim))
    apply_init_scales(model, schedules)
    opt = ScheduledMomentum(schedules, **opt_kwargs)
    x, y = problem.data.x_train, problem.data.y_train
    table = problem.minibatches(seed).numpy()
    for t in range(problem.steps):
        xb, yb = x[table[t]], y[table[t]].astype(np.int32)
        with tf.GradientTape() as tape:
            logits = model(xb)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return model


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def test_keras_optimizer_reproduces_revhpo_training(tuned):
    problem, raw, doc = tuned
    schedules = load_schedules(doc)
    seed = 7
    w_ref, _ = problem.train(raw, seed)
    model = _train_keras(problem, schedules, seed)
    weights = [v.numpy() for v in model.layers[0].net_weights]
    for got, want in zip(weights, w_ref, strict=True):
        assert _rel(got, want) <= 1e-10
    f_ref = float(problem.val_loss(w_ref))
    f = float(problem.val_loss([tf.constant(w) for w in weights]))
    assert abs(f - f_ref) <= 1e-10 * abs(f_ref)
    # and the schedules matter: untuned Keras SGD ends elsewhere
    assert _rel(weights[0], problem.train(None, seed)[0][0]) > 1e-3


def test_after_the_last_step_hold_or_repeat(tuned):
    problem, _, doc = tuned
    s = load_schedules(doc)
    hold = ScheduledMomentum(s)
    rep = ScheduledMomentum(s, after_last_step="repeat")
    for opt in (hold, rep):
        opt.iterations.assign(s.steps + 2)
    assert int(hold._step_index()) == s.steps - 1 and int(rep._step_index()) == 2
    with pytest.raises(ValueError, match="after_last_step"):
        ScheduledMomentum(s, after_last_step="loop")


def test_variables_map_to_layers_by_name_or_mapping(tuned):
    _, _, doc = tuned
    s = load_schedules(doc)
    model = tf.keras.Sequential(
        [tf.keras.Input((6,)), tf.keras.layers.Dense(5, name="hidden"), tf.keras.layers.Dense(3)]
    )
    with pytest.raises(ValueError, match="matches no tuned layer.*dense0"):
        ScheduledMomentum(s).build(model.trainable_variables)
    mapping = {v.path: ("dense0" if "hidden" in v.path else "dense1") for v in model.weights}
    opt = ScheduledMomentum(s, layer_of=mapping)
    opt.build(model.trainable_variables)
    assert [layer_name_of(v, s, mapping) for v in model.trainable_variables] == [
        "dense0",
        "dense0",
        "dense1",
        "dense1",
    ]


def test_formats_round_trip(tuned, tmp_path):
    _, _, doc = tuned
    s = load_schedules(doc)
    assert s.steps == 12 and s.layer_names == ["dense0", "dense1"]
    assert s.source["iteration"] == 3 and s.source["granularities"]["learning_rate"] == (
        "per_layer_knots"
    )
    d = s.to_dict()
    assert d["convention"] == CONVENTION and len(d["learning_rate"]["dense1"]) == 12
    back = TunedSchedules.from_dict(json.loads(json.dumps(d)))
    np.testing.assert_array_equal(back.learning_rate, s.learning_rate)
    np.testing.assert_array_equal(back.weight_decay, s.weight_decay)
    np.testing.assert_array_equal(back.init_scale, s.init_scale)
    rows = s.to_csv().splitlines()
    assert rows[0].startswith("step,layer,learning_rate") and len(rows) == 1 + 12 * 2
    assert float(rows[2].split(",")[2]) == s.learning_rate[0, 1]
    with np.load(io.BytesIO(s.to_npz_bytes())) as z:
        np.testing.assert_array_equal(z["momentum"], s.momentum)
        assert z["layer_names"].tolist() == ["dense0", "dense1"]
    assert load_schedules(s.write(tmp_path / "s.json")).layer_names == s.layer_names
    with pytest.raises(ExportError, match="hyperparameters.final"):
        load_schedules({"net": {}})


@pytest.mark.slow
def test_cli_exports_a_real_run(tmp_path, capsys):
    from revhpo.service.cli import main
    from revhpo.service.tuning import tune

    spec = tiny_spec(hyperparameters=HP, meta={"iterations": 2, "eval_seeds": 0})
    tune(spec, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 6 * 2
    assert main(["export", str(tmp_path / "run"), "-f", "npz", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["learning_rate"].shape == (6, 2)
    assert main(["export", str(tmp_path / "run"), "-f", "npz"]) == 2  # npz needs --out
    assert main(["export", str(tmp_path / "nowhere")]) == 2
