"""Job spec: parsing (YAML, JSON, dict, file), validation messages, schema, examples, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from revhpo.service.spec import JobSpec, SpecError, json_schema, load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_defaults_are_valid_and_round_trip():
    spec = load_spec({})
    assert spec.dataset.kind == "digits"
    assert spec.training.steps == 100
    again = load_spec(spec.model_dump(mode="json"))
    assert again == spec


def test_yaml_json_dict_and_file_agree(tmp_path):
    doc = {
        "name": "x",
        "training": {"steps": 7, "batch_size": 5},
        "hyperparameters": {"momentum": {"init": 0.5, "tune": True, "granularity": "per_step"}},
    }
    from_dict = load_spec(doc)
    from_yaml = load_spec(yaml.safe_dump(doc))
    from_json = load_spec(json.dumps(doc))
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(doc))
    from_file = load_spec(f)
    from_str_path = load_spec(str(f))
    assert from_dict == from_yaml == from_json == from_file == from_str_path
    assert from_dict.hyperparameters.momentum.granularity == "per_step"


@pytest.mark.parametrize(
    "doc, field, value",
    [
        ({"hyperparameters": {"momentum": {"init": 1.5}}}, "hyperparameters.momentum", "1.5"),
        ({"hyperparameters": {"learning_rate": {"init": -0.1}}}, "learning_rate", "-0.1"),
        (
            {"hyperparameters": {"init_scale": {"init": 1, "granularity": "per_step"}}},
            "init_scale",
            "per_step",
        ),
        (
            {"hyperparameters": {"learning_rate": {"init": 0.1, "granularity": "per_weight"}}},
            "learning_rate",
            "per_weight",
        ),
        ({"hyperparameters": {"weight_decay": {"init": 0, "tune": True}}}, "weight_decay", "0"),
        ({"training": {"steps": 0}}, "training.steps", "0"),
        ({"training": {"dtype": "float16"}}, "training.dtype", "float16"),
        ({"meta": {"optimizer": "lbfgs"}}, "meta.optimizer", "lbfgs"),
        ({"meta": {"step_size": -1}}, "meta.step_size", "-1"),
        ({"dataset": {"kind": "digitz"}}, "dataset", "digitz"),
        ({"dataset": {"kind": "uploaded", "id": "../etc"}}, "dataset.uploaded.id", "../etc"),
        ({"dataset": {"split": {"train": 1.5}}}, "train", "1.5"),
        ({"trainig": {"steps": 3}}, "trainig", "steps"),
        ({"limits": {"max_wall_time_s": 0}}, "limits.max_wall_time_s", "0"),
    ],
)
def test_invalid_specs_name_field_and_value(doc, field, value):
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    msg = str(info.value)
    assert field in msg, msg
    assert value in msg, msg


def test_unparseable_and_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="mapping"):
        load_spec("- a\n- b\n")
    with pytest.raises(SpecError, match="YAML"):
        load_spec("a: [1, 2\nb: 3\n")


def test_net_config_passes_through():
    spec = load_spec({"net": {"family": "sss", "sizes": [64], "blocks": 8}})
    assert spec.net.config() == {"family": "sss", "sizes": [64], "blocks": 8}


def test_schema_is_json_and_lists_sections():
    schema = json_schema()
    text = json.dumps(schema)
    assert json.loads(text)["title"] == "revhpo job spec"
    for key in ("dataset", "net", "training", "hyperparameters", "meta", "limits"):
        assert key in schema["properties"]
    assert JobSpec.model_json_schema()["properties"].keys() == schema["properties"].keys()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path):
    spec = load_spec(path)
    assert spec.hyperparameters.learning_rate.tune


def test_required_examples_exist():
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"mlp_digits.yaml", "quick_digits.yaml", "implicit_digits.yaml"} <= names
    assert "sss_digits.yaml" in names


def test_cli_schema_and_check(capsys):
    from revhpo.service.cli import main

    assert main(["tune", "--schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["properties"]["meta"]
    assert main(["tune", str(EXAMPLES / "quick_digits.yaml"), "--check"]) == 0
    assert "valid" in capsys.readouterr().out


def test_cli_invalid_spec_names_field(tmp_path, capsys):
    from revhpo.service.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("meta:\n  iterations: -3\n")
    assert main(["tune", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "meta.iterations" in err and "-3" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- numerics checks
@pytest.mark.parametrize(
    "gamma, max_den, effect",
    [
        (0.9, 2, "= 1"),  # rounds to 1: training frozen
        (0.9, 4, "= 1"),
        (1 - 1 / (2 * 2**16) + 1e-9, 2**16, "= 1"),  # just above 1 − 1/(2·max_denominator)
        (0.9999999, 2**16, "= 1"),
        (0.9, 8, "25%"),  # applied as 7/8: 1 − γ off by 25 %
        (0.99999, 2**16, "52.6%"),  # applied as 65535/65536: 1 − γ off by 53 %
        (1e-6, 2**16, "1.43e+03%"),  # applied as 1/65536
    ],
)
def test_momentum_that_rounds_badly_is_refused(gamma, max_den, effect):
    doc = {
        "training": {"max_denominator": max_den},
        "hyperparameters": {"momentum": {"init": gamma, "tune": True}},
    }
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    msg = str(info.value)
    for part in ("hyperparameters.momentum.init", "training.max_denominator", effect):
        assert part in msg, msg
    assert f"Received: hyperparameters.momentum.init={gamma!r}" in msg
    assert f"training.max_denominator={max_den}" in msg
    # untuned, the momentum is applied at its init all the same
    doc["hyperparameters"]["momentum"]["tune"] = False
    with pytest.raises(SpecError):
        load_spec(doc)


def test_momentum_refusal_names_a_denominator_that_works():
    from revhpo.service.spec import momentum_rounding_problem

    msg = momentum_rounding_problem(0.9, 2)
    assert "at least 16" in msg  # 0.9 → 7/8 (off) with 8, 9/10 with 16
    assert momentum_rounding_problem(0.9, 16) is None


@pytest.mark.parametrize("max_den", [2**8, 2**16, 2**24])
def test_momentum_applied_within_one_percent_is_accepted(max_den):
    """The check never refuses a momentum its rational represents faithfully."""
    from fractions import Fraction

    from revhpo.service.spec import rationalize_momentum

    accepted = 0
    for gamma in [*np.linspace(0.01, 0.99, 99), 0.995, 0.999, 0.9995]:
        n, d = rationalize_momentum(float(gamma), max_den)
        err = abs(Fraction(n, d) - Fraction(float(gamma)))
        faithful = n != d and err <= 0.01 * min(Fraction(float(gamma)), 1 - Fraction(float(gamma)))
        doc = {
            "training": {"max_denominator": max_den},
            "hyperparameters": {"momentum": {"init": float(gamma)}},
        }
        if faithful:
            load_spec(doc)  # does not raise
            accepted += 1
        else:
            with pytest.raises(SpecError):
                load_spec(doc)
    assert accepted >= 99  # with 2**8, 0.995 and above round badly; everything else is fine


def test_spec_rounding_is_the_engines_rationalize():
    """``rationalize_momentum`` (TensorFlow-free) gives the very n/d ``revhpo.precise`` uses."""
    from revhpo.precise import rationalize
    from revhpo.service.spec import rationalize_momentum

    rng = np.random.default_rng(0)
    values = [
        *rng.uniform(0, 1, 3000),
        *(1 - 10 ** rng.uniform(-9, -1, 1000)),
        *(10 ** rng.uniform(-9, -1, 500)),
        0.5,
        0.9,
        0.99,
        1.0,
        5e-324,
    ]
    bounds = [2, 3, 7, 8, 255, 1000, 2**16, 2**16 + 1, 2**20, 2**24]
    checked = 0
    for v in values:
        if not 0 < v <= 1:
            continue
        for d in bounds:
            assert tuple(rationalize(float(v), d)) == rationalize_momentum(float(v), d), (v, d)
            checked += 1
    assert checked > 40_000


def test_low_frac_bits_warns_with_the_size_of_the_effect(tmp_path, capsys):
    from revhpo.service.cli import main
    from revhpo.service.spec import spec_warnings

    assert spec_warnings(load_spec({})) == []
    assert spec_warnings(load_spec({"training": {"frac_bits": 32}})) == []
    (w,) = spec_warnings(load_spec({"training": {"frac_bits": 16, "steps": 100}}))
    for part in ("training.frac_bits=16", "2^-16", "1.5e-05", "1.5e-03", "relative"):
        assert part in w, w
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"training": {"frac_bits": 16}}))
    assert main(["tune", str(path), "--check"]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    assert "warning: training.frac_bits=16" in captured.err and "2^-16" in captured.err
    assert main(["tune", str(EXAMPLES / "quick_digits.yaml"), "--check"]) == 0
    assert "warning" not in capsys.readouterr().err
