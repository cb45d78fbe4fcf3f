"""Job spec: parsing (YAML, JSON, dict, file), validation messages, schema, examples, CLI."""

from __future__ import annotations

import json
from pathlib import Path

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
