"""TensorBoard event files of a tuning run: what they hold equals the result document, a resumed
run holds every meta-iteration once, and the test set never appears."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tensorflow as tf
from revhpo.service.tuning import Cancelled, tune

from tests.test_tuning import tiny_spec


def _scalars(run_dir) -> dict[str, dict[int, list[float]]]:
    """tag -> step -> values, read back with TensorFlow's own event reader."""
    out: dict[str, dict[int, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no event file"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out[value.tag][event.step].append(float(tf.make_ndarray(value.tensor)))
    return out


def test_event_files_hold_the_run_and_a_resume_holds_each_iteration_once(tmp_path):
    spec = tiny_spec(meta={"iterations": 3, "eval_seeds": 1}, tensorboard=True)
    metas = []

    def count(event):
        metas.extend([event] if event["type"] == "meta" else [])

    with pytest.raises(Cancelled):  # meta-iterations 0 and 1 run, then a stop
        tune(spec, tmp_path, callback=count, should_stop=lambda: len(metas) >= 2)
    assert len(_scalars(tmp_path)["meta/objective"]) == 2
    result = tune(spec, tmp_path)  # resumes from the checkpoint

    tags = _scalars(tmp_path)
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["files"]["tensorboard"] == [
        str(p.relative_to(tmp_path)) for p in (tmp_path / "tensorboard").glob("events.*")
    ]
    objective = tags["meta/objective"]
    assert sorted(objective) == [rec["iteration"] for rec in result.history] == [0, 1, 2]
    for rec in result.history:  # once per iteration, the value the history records
        assert objective[rec["iteration"]] == [np.float32(rec["objective"])]
        assert tags["meta/select_loss"][rec["iteration"]] == [np.float32(rec["select_loss"])]
    layers = doc["net"]["layer_names"]
    for group in ("learning_rate", "momentum"):
        table = np.asarray(doc["hyperparameters"]["final"][group]["per_step_per_layer"])
        for j, layer in enumerate(layers):
            series = tags[f"schedule/{group}/{layer}"]
            assert sorted(series) == list(range(spec.training.steps))
            got = np.array([series[t][0] for t in range(spec.training.steps)], np.float32)
            np.testing.assert_array_equal(got, table[:, j].astype(np.float32))
    curve = tags["training/final"]
    np.testing.assert_array_equal(
        [curve[t][0] for t in sorted(curve)],
        np.asarray(doc["training_curves"]["final"], np.float32),
    )
    assert not [tag for tag in tags if "test" in tag]


def test_off_by_default_and_outside_the_spec_hash(tmp_path):
    from revhpo.service.tuning import spec_hash

    spec = tiny_spec(meta={"iterations": 1, "eval_seeds": 0})
    assert spec.tensorboard is False
    assert spec_hash(spec) == spec_hash(spec.model_copy(update={"tensorboard": True}))
    tune(spec, tmp_path)
    assert not (tmp_path / "tensorboard").exists()
    assert "tensorboard" not in json.loads((tmp_path / "result.json").read_text())["files"]
