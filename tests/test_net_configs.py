"""The typed net configs (revhpo.nets.config): exact parameter counts against the built nets,
defaults, validation through the job spec and the CLI, the published schema, the docs, and
that neither the configs nor the spec import TensorFlow."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from revhpo.nets import config as C
from revhpo.service.spec import SpecError, json_schema, load_spec

from revhpo import nets

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

CLASSES = {
    "mlp": C.MLPConfig,
    "implicit": C.ImplicitConfig,
    "implicit_rnn": C.ImplicitRNNConfig,
    "implicit_autoencoder": C.ImplicitAutoencoderConfig,
    "sss": C.SSSConfig,
    "rank1": C.Rank1Config,
}


def _grid(family: str, dims: list[tuple[int, int]], **options: list) -> list:
    keys = list(options)
    return [
        ({"family": family, **dict(zip(keys, values, strict=True))}, d, c)
        for values in itertools.product(*(options[k] for k in keys))
        for d, c in dims
    ]


GRID = (
    _grid(
        "mlp",
        [(8, 3), (5, 1)],
        sizes=[[], [3], [7, 5], [4, 4, 4]],
        activation=["tanh", "relu"],
    )
    + _grid("implicit", [(8, 3), (1, 5)], n=[1, 3, 6], rank=[None, 1, 3], bias=[True, False])
    + _grid(
        "implicit_rnn",
        [(16, 3), (9, 2), (7, 1)],
        n=[2, 5],
        hidden=[1, 3],
        time_steps=[None, 1, 2, 4],
        rank=[None, 2],
        bias=[True, False],
    )
    + _grid(
        "implicit_autoencoder",
        [(8, 8), (5, 5), (6, 2)],
        hidden_layer_num=[1, 2, 3],
        start_layer=[6, 2],
        latent_num=[3, 1],
        version=["v0", "v1"],
    )
    + _grid(
        "sss",
        [(8, 4), (8, 3), (12, 6)],
        sizes=[[], [8], [8, 16]],
        blocks=[1, 2, 4],
        state=[1, 3],
        output=["dense", "sss"],
    )
    + _grid("rank1", [(8, 3), (1, 1)], sizes=[[], [5], [6, 2]], activation=["relu"])
    + [({"family": f}, 64, 64 if f == "implicit_autoencoder" else 10) for f in CLASSES]
)


def _case_id(case) -> str:
    cfg, d, c = case
    rest = ",".join(f"{k}={v}" for k, v in cfg.items() if k != "family")
    return f"{cfg['family']}[{rest}]({d}->{c})"


@pytest.mark.parametrize("case", GRID, ids=[_case_id(c) for c in GRID])
def test_num_params_is_exact(case):
    """The pure-Python count equals the built net's; where the config is invalid (rank > n)
    or the dimensions do not fit it, both refuse with the same message."""
    cfg, d, c = case
    try:
        model = C.parse_net_config(cfg)
    except C.NetConfigError as exc:
        with pytest.raises(ValueError) as info:
            nets.build_net(cfg, d, c)
        assert str(info.value) == str(exc)
        return
    assert isinstance(model, CLASSES[cfg["family"]])
    try:
        net = nets.build_net(cfg, d, c)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            model.num_params(d, c)
        assert str(info.value) == str(exc)
        return
    assert model.num_params(d, c) == net.num_params
    assert net.typed_config == model
    assert nets.build_net(model, d, c).param_shapes == net.param_shapes


def test_the_grid_builds_many_nets_of_every_family():
    built: dict[str, int] = dict.fromkeys(CLASSES, 0)
    for cfg, d, c in GRID:
        try:
            nets.build_net(cfg, d, c)
        except ValueError:
            continue
        built[cfg["family"]] += 1
    assert all(n >= 5 for n in built.values()), built


# Each family's defaults as the families applied them before the typed models existed.
OLD_DEFAULTS = {
    "mlp": {"sizes": [50, 50], "activation": "tanh"},
    "implicit": {
        "n": 64, "activation": "relu", "rank": None, "bias": True, "kappa": 0.95, "tol": 1e-10,
        "max_iter": 3000, "newton_steps": 2, "on_nonconvergence": "warn",
    },
    "implicit_rnn": {
        "n": 32, "hidden": 16, "time_steps": None, "activation": "tanh", "rank": None,
        "bias": True, "kappa": 0.95, "tol": 1e-10, "max_iter": 3000, "newton_steps": 2,
        "on_nonconvergence": "warn",
    },
    "implicit_autoencoder": {
        "hidden_layer_num": 1, "start_layer": 32, "latent_num": 8, "version": "v1",
        "activation": "tanh", "kappa": 0.95, "tol": 1e-10, "max_iter": 3000, "newton_steps": 2,
        "on_nonconvergence": "warn",
    },
    "sss": {"sizes": [256, 256], "blocks": 8, "state": 4, "activation": "tanh", "output": "dense"},
    "rank1": {"sizes": [256, 256], "activation": "tanh"},
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_defaults_are_those_of_the_built_net(family):
    cls = CLASSES[family]
    d, c = 64, (64 if cls.task == "reconstruction" else 10)
    net = nets.build_net({"family": family}, d, c)
    assert cls().model_dump() == net.config == {"family": family, **OLD_DEFAULTS[family]}
    assert nets.family_task(family) == cls.task == net.task
    again = nets.build_net(json.loads(json.dumps(net.config)), d, c)
    assert again.config == net.config and again.param_shapes == net.param_shapes


def test_build_net_messages_name_the_field_and_value():
    cases = [
        ({"family": "mlp", "sizes": [50, -3]}, ["sizes[1]", "-3"]),
        ({"family": "mlp", "activaton": "relu"}, ["activaton", "'relu'", "known keys"]),
        ({"family": "implicit", "activation": "gelu"}, ["activation", "'gelu'"]),
        ({"family": "implicit", "bias": 1}, ["bias", "=1"]),
        ({"family": "implicit_rnn", "n": 2.0}, ["`n`", "n=2.0"]),
        ({"family": "sss", "output": "rank1"}, ["output", "'rank1'"]),
        ({"family": "implicit_autoencoder", "tol": 0}, ["tol", "tol=0"]),
    ]
    for cfg, parts in cases:
        with pytest.raises(ValueError) as info:
            nets.build_net(cfg, 8, 8)
        for part in parts:
            assert part in str(info.value), (cfg, str(info.value))
    with pytest.raises(C.NetConfigError, match="family='mlpp'"):
        C.parse_net_config({"family": "mlpp"})


def test_configs_are_validated_by_the_model_before_the_family_sees_them():
    cfg = C.MLPConfig(sizes=[4], activation="relu")
    net = nets.MLP(cfg, 3, 2)
    assert net.config == cfg.model_dump() and net.typed_config is cfg
    assert nets.MLP({"sizes": [4]}, 3, 2).config["activation"] == "tanh"
    with pytest.raises(ValueError, match="family='sss'"):
        nets.MLP({"family": "sss"}, 3, 2)
    assert C.ImplicitConfig(n=3, rank=3).rank == 3
    with pytest.raises(ValueError, match="rank=4"):
        C.ImplicitConfig(n=3, rank=4)


# ----------------------------------------------------------------------------- job spec
@pytest.mark.parametrize("family", sorted(CLASSES))
@pytest.mark.parametrize(
    ("key", "value", "field", "shown"),
    [
        ("activaton", "relu", "activaton", "Extra inputs are not permitted"),
        ("sizes", [50, -3], "sizes.1", "-3"),
        ("n", -4, "n", "-4"),
        ("activation", "gelu", "activation", "gelu"),
    ],
)
def test_load_spec_rejects_bad_net_configs_naming_the_field(family, key, value, field, shown):
    cls = CLASSES[family]
    if key in ("sizes", "n", "activation") and key not in cls.model_fields:
        field, shown = key, "Extra inputs are not permitted"  # not one of this family's keys
    with pytest.raises(SpecError) as info:
        load_spec({"net": {"family": family, key: value}})
    msg = str(info.value)
    assert f"net.{family}.{field}:" in msg, msg
    assert shown in msg, msg


def test_spec_net_config_is_what_build_net_takes():
    spec = load_spec({"net": {"family": "implicit_rnn", "n": 6, "hidden": 2}})
    assert isinstance(spec.net, C.ImplicitRNNConfig)
    assert spec.net.config() == {"family": "implicit_rnn", "n": 6, "hidden": 2}
    net = nets.build_net(spec.net.config(), 64, 10)
    assert net.config == spec.net.model_dump()
    assert spec.net.num_params(64, 10) == net.num_params
    default = load_spec({}).net
    assert default.config() == {"family": "mlp", "sizes": [50, 50], "activation": "tanh"}
    again = load_spec(load_spec({"net": {"family": "sss"}}).model_dump(mode="json"))
    assert again.net == C.SSSConfig()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_nets_load_and_count_exactly(path):
    spec = load_spec(path)
    d, classes = 64, 10  # every example trains on the digits
    assert spec.dataset.kind == "digits"
    out = spec.net.output_dim_for(d, classes)
    assert spec.net.num_params(d, out) == nets.build_net(spec.net.config(), d, out).num_params


def test_schema_describes_every_family():
    schema = json_schema()
    net = schema["properties"]["net"]
    mapping = net["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(CLASSES) == sorted(C.NET_FAMILIES)
    for family, cls in CLASSES.items():
        sub = schema["$defs"][cls.__name__]
        assert mapping[family] == f"#/$defs/{cls.__name__}"
        assert sub["additionalProperties"] is False and "family" in sub["required"]
        assert set(sub["properties"]) == set(cls.model_fields)
        assert all(p.get("description") for k, p in sub["properties"].items() if k != "family")
    mlp = schema["$defs"]["MLPConfig"]["properties"]
    assert mlp["sizes"]["items"] == {"minimum": 1, "type": "integer"}
    assert mlp["activation"]["enum"] == list(C.ACTIVATIONS)


def _run_check(tmp_path: Path, net: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({"net": net, "meta": {"iterations": 1}}))
    return subprocess.run(
        [sys.executable, "-m", "revhpo", "tune", "--check", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )


def test_cli_check_refuses_a_misspelt_key(tmp_path):
    bad = _run_check(tmp_path, {"family": "mlp", "activaton": "relu"})
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "net.mlp.activaton" in bad.stderr and "Extra inputs" in bad.stderr, bad.stderr
    good = _run_check(tmp_path, {"family": "mlp", "activation": "relu"})
    assert good.returncode == 0 and "valid" in good.stdout, (good.stdout, good.stderr)


# ----------------------------------------------------------------------------- no TensorFlow
def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=str(REPO),
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_configs_and_spec_import_no_tensorflow():
    mods = _modules_after("import revhpo.nets.config, revhpo.service.spec, revhpo.nets")
    assert "tensorflow" not in mods
    assert "revhpo.nets.base" not in mods
    mods = _modules_after("from revhpo.nets import MLPConfig, parse_net_config, ACTIVATIONS")
    assert "tensorflow" not in mods
    # The check can fail: the TensorFlow names of the package do import it, on first access.
    mods = _modules_after("from revhpo.nets import build_net")
    assert "tensorflow" in mods


def test_lazy_package_keeps_every_public_name():
    from revhpo.nets import _LAZY

    assert nets.__all__ == sorted(_LAZY)
    for name in nets.__all__:
        assert getattr(nets, name) is getattr(
            __import__(f"revhpo.nets.{_LAZY[name]}", fromlist=[name]), name
        )
    assert set(nets.__all__) <= set(dir(nets))
    with pytest.raises(AttributeError, match="no_such_name"):
        nets.no_such_name  # noqa: B018
    assert nets.families() == sorted(CLASSES)


# ----------------------------------------------------------------------------- docs
def test_docs_list_every_family_table_from_the_models():
    text = (REPO / "docs" / "nets.md").read_text(encoding="utf-8")
    for cls in CLASSES.values():
        assert C.config_table(cls) in text, f"docs/nets.md: regenerate the table of {cls}"
