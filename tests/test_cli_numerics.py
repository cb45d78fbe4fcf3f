"""`revhpo verify` and `revhpo bench` as a user runs them: real subprocesses, real output."""

import json
import os
import subprocess
import sys

import pytest
import yaml

# Each test here runs real TensorFlow jobs in subprocesses: the full tier only.
pytestmark = pytest.mark.slow

SPEC = {
    "name": "verify_tiny",
    "dataset": {"kind": "digits", "split": {"train": 120, "val": 60, "test": 60, "seed": 0}},
    "net": {"family": "mlp", "sizes": [8], "activation": "tanh"},
    "training": {"steps": 8, "batch_size": 20, "dtype": "float64", "seed": 0},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "tune": True, "granularity": "per_layer_per_step"},
        "momentum": {"init": 0.9, "tune": True, "granularity": "per_layer_per_step"},
        "weight_decay": {"init": 0.001, "tune": True, "granularity": "per_layer"},
        "init_scale": {"init": 1.0, "tune": True, "granularity": "per_layer"},
    },
    "meta": {"iterations": 1},
}


def _revhpo(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "revhpo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_verify_reports_exactness_and_finite_difference_agreement(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = _revhpo("verify", str(spec), "--json", "--samples", "6")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["exact_recovery"] is True and report["buffer_empty"] is True
    assert report["max_rel_error"] <= 1e-4
    names = {r["name"].split("[")[0] for r in report["hypergradients"]}
    # every tuned group is sampled at least once
    assert names == {"log_learning_rate", "logit_momentum", "log_weight_decay", "log_init_scale"}
    for row in report["hypergradients"]:
        assert set(row) == {"name", "analytic", "finite_difference", "rel_error"}


def test_verify_exits_nonzero_when_a_check_fails(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = _revhpo("verify", str(spec), "--samples", "2", "--rtol", "0")
    assert out.returncode == 1
    assert "FAILED" in out.stdout


def test_verify_names_the_bad_field(tmp_path):
    bad = dict(SPEC, training={"steps": -3, "batch_size": 20})
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(bad))
    out = _revhpo("verify", str(spec))
    assert out.returncode == 2
    assert "steps" in out.stderr


def test_bench_emits_the_documented_figures():
    out = _revhpo(
        "bench",
        "--sizes",
        "6,5,3",
        "--steps",
        "6",
        "--batch",
        "10",
        "--repeats",
        "1",
        "--memory-steps",
        "4",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    fig = json.loads(out.stdout)
    for key in ("forward_over_plain", "reverse_over_plain", "bits_over_bound"):
        assert fig[key] > 0
    assert fig["exact"] is True
    mem = fig["peak_memory"]["4"]
    assert mem["reversible_peak_mib"] > 0 and mem["unrolled_peak_mib"] > 0
