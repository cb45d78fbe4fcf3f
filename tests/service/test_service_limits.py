"""The job-size limit the API applies before queueing uses the exact parameter count of the
net each family builds (counted by the config models, without TensorFlow in the API process).

The API cases run on a real uvicorn server, one per backend (SQLite and PostgreSQL).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from revhpo.nets.config import parse_net_config
from revhpo.service.api.limits import DIGITS_SHAPE, job_cost, net_params
from revhpo.service.spec import load_spec
from svc_helpers import BACKENDS

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    "config",
    [
        {"family": "mlp", "sizes": [8, 4], "activation": "tanh"},
        {"family": "mlp"},
        {"family": "implicit", "n": 8},
        {"family": "implicit", "n": 6, "rank": 2},
        {"family": "implicit_rnn", "n": 5, "hidden": 3},
        {"family": "implicit_rnn", "n": 4, "hidden": 2, "time_steps": 2, "bias": False},
        {"family": "implicit_autoencoder", "start_layer": 6, "latent_num": 3},
        {"family": "implicit_autoencoder", "hidden_layer_num": 2, "version": "v0"},
        {"family": "sss", "sizes": [16, 16], "blocks": 4, "state": 2},
        {"family": "sss", "sizes": [8], "blocks": 4, "output": "sss"},
        {"family": "rank1", "sizes": [12]},
    ],
)
def test_net_params_is_the_exact_count_of_the_built_net(config):
    from revhpo.nets import build_net, family_task

    d, c = 8, 4
    out = d if family_task(config) == "reconstruction" else c
    real = build_net(config, d, out).num_params
    assert net_params(config, d, c) == real
    assert net_params(parse_net_config(config), d, c) == real


def test_job_cost_uses_the_exact_count():
    spec = load_spec({"net": {"family": "implicit_rnn", "n": 20_000}, "training": {"steps": 5}})
    cost, params = job_cost(spec, DIGITS_SHAPE)
    # cell: n² + n·(8 + 16) + 16·n + 16·(8 + 16) + biases (n + 16); readout 16·10 + 10
    n, h, f, c = 20_000, 16, 8, 10
    assert params == n * n + n * (f + h) + h * n + h * (f + h) + n + h + (h + 1) * c
    runs = 3 * spec.meta.iterations + spec.meta.eval_seeds + 1
    assert cost == float(params) * 5 * runs


def test_net_params_rejects_a_net_the_dataset_cannot_build():
    with pytest.raises(ValueError, match="time_steps=3"):
        net_params({"family": "implicit_rnn", "time_steps": 3}, 64, 10)
    with pytest.raises(ValueError, match="blocks=8"):
        net_params({"family": "sss", "sizes": [12]}, 64, 10)


# ----------------------------------------------------------------------------- over the API
_server = pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")


def _client(server) -> httpx.Client:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    key = create_key(get_engine(server.db_url), f"user-{uuid.uuid4().hex[:8]}")
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def client(shared_server):
    with _client(shared_server) as c:
        yield c


def _digits_spec(net: dict) -> dict:
    return {
        "name": "limits",
        "dataset": {"kind": "digits"},
        "net": net,
        "training": {"steps": 5, "batch_size": 20},
        "meta": {"iterations": 1, "eval_seeds": 1},
    }


def _problem(resp: httpx.Response) -> dict:
    assert resp.headers["content-type"].startswith(PROBLEM), resp.text
    doc = resp.json()
    assert doc["status"] == resp.status_code
    return doc


@_server
@pytest.mark.parametrize(
    "net",
    [
        {"family": "implicit_rnn", "n": 20_000},  # ~4e8 weights (the cell's A alone is n²)
        {"family": "implicit_autoencoder", "start_layer": 2_000_000},  # 64 -> 2e6 -> 8 -> ...
    ],
    ids=["implicit_rnn", "implicit_autoencoder"],
)
def test_large_implicit_nets_are_refused_like_a_large_mlp(client, net):
    mlp = client.post("/v1/jobs", json=_digits_spec({"family": "mlp", "sizes": [20_000] * 2}))
    assert mlp.status_code == 422, mlp.text
    mlp_doc = _problem(mlp)
    resp = client.post("/v1/jobs", json=_digits_spec(net))
    assert resp.status_code == mlp.status_code, resp.text
    doc = _problem(resp)
    assert (doc["title"], doc["field"]) == (mlp_doc["title"], mlp_doc["field"])
    cfg = parse_net_config(net)
    d = DIGITS_SHAPE[1]
    exact = cfg.num_params(d, cfg.output_dim_for(d, DIGITS_SHAPE[2]))
    assert exact * 5 > 200_000_000  # over the spec's default limits.max_params_x_steps
    assert f"{exact} parameters" in doc["detail"], doc
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was queued


@_server
def test_a_small_implicit_rnn_is_queued_and_a_bad_one_names_the_net(client):
    ok = client.post("/v1/jobs", json=_digits_spec({"family": "implicit_rnn", "n": 8}))
    assert ok.status_code == 202, ok.text
    bad = client.post("/v1/jobs", json=_digits_spec({"family": "implicit_rnn", "time_steps": 3}))
    assert bad.status_code == 422, bad.text
    doc = _problem(bad)
    assert doc["field"] == "net" and "time_steps=3" in doc["detail"], doc
    typo = client.post("/v1/jobs", json=_digits_spec({"family": "mlp", "activaton": "relu"}))
    assert typo.status_code == 422, typo.text
    doc = _problem(typo)
    assert doc["field"] == "net.mlp.activaton", doc
    neg = client.post("/v1/jobs", json=_digits_spec({"family": "mlp", "sizes": [50, -3]}))
    assert neg.status_code == 422 and _problem(neg)["field"] == "net.mlp.sizes.1", neg.text
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [ok.json()["id"]]


@_server
def test_openapi_describes_every_net_family(client):
    from revhpo.nets.config import NET_FAMILIES

    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    net = schemas["JobSpec"]["properties"]["net"]
    mapping = net["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(NET_FAMILIES)
    for family, ref in mapping.items():
        name = ref.rsplit("/", 1)[-1]
        model = schemas[name]
        assert model["properties"]["family"]["const"] == family
        assert model["additionalProperties"] is False
        assert "family" in model["required"]
    assert schemas["MLPConfig"]["properties"]["activation"]["enum"] == [
        "tanh",
        "relu",
        "softplus",
        "sigmoid",
    ]


def _sim_net(max_iter: int, sizes: list[int]) -> dict:
    return {
        "family": "implicit",
        "n": sum(sizes),
        "activation": "relu",
        "init": {"sim": {"from": {"sizes": sizes, "steps": 100}, "max_iter": max_iter}},
    }


def test_job_cost_counts_the_sim_initialisation():
    spec = load_spec({"net": _sim_net(2000, [20, 10]), "training": {"steps": 5, "batch_size": 20}})
    n_examples, d, c = DIGITS_SHAPE
    cost, params = job_cost(spec, DIGITS_SHAPE)
    runs = 3 * spec.meta.iterations + spec.meta.eval_seeds + 1
    explicit = net_params({"family": "mlp", "sizes": [20, 10], "activation": "relu"}, d, c)
    fitted = round(0.5 * n_examples)  # the default fraction
    solver = 2000 * (30 + c) * (30 + d + 1) * 4 * fitted / (6 * 20)
    assert cost == pytest.approx(params * 5 * runs + explicit * 100 + solver, rel=1e-12)
    plain = load_spec({"net": {"family": "implicit", "n": 30}, "training": {"steps": 5}})
    assert job_cost(plain, DIGITS_SHAPE)[0] == plain_cost(plain)


def plain_cost(spec) -> float:  # noqa: ANN001
    params = net_params(spec.net, DIGITS_SHAPE[1], DIGITS_SHAPE[2])
    return (
        float(params) * spec.training.steps * (3 * spec.meta.iterations + spec.meta.eval_seeds + 1)
    )


@_server
def test_a_sim_initialisation_over_the_cost_limit_is_refused_naming_it(client):
    """A SIM fit of the example's size is queued; a million solver iterations on a 2,000-state
    fit are not (the server's limit here is 1e9), and the problem says why."""
    ok = client.post("/v1/jobs", json=_digits_spec(_sim_net(1000, [50, 50])))
    assert ok.status_code == 202, ok.text
    resp = client.post("/v1/jobs", json=_digits_spec(_sim_net(1_000_000, [1000, 1000])))
    doc = _problem(resp)
    assert resp.status_code == 422 and doc["title"] == "Job too large", doc
    assert doc["field"] == "net.init.sim.max_iter" and "SIM" in doc["detail"], doc
