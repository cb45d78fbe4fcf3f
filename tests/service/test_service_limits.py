"""The job-size estimate the API applies before queueing (no TensorFlow in the API process)
is an upper bound on the parameters of the net each family really builds."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.limits import estimate_params


@pytest.mark.parametrize(
    "config",
    [
        {"family": "mlp", "sizes": [8, 4], "activation": "tanh"},
        {"family": "mlp"},
        {"family": "implicit", "n": 8},
        {"family": "implicit", "n": 6, "rank": 2},
        {"family": "sss", "sizes": [16, 16], "blocks": 4, "state": 2},
        {"family": "rank1", "sizes": [12]},
    ],
)
def test_estimate_bounds_the_real_parameter_count(config):
    from nets import build_net

    d, c = 8, 4
    net = build_net(config, d, c)
    real = sum(int(np.prod(p.shape)) for p in net.init_params(0))
    est = estimate_params(config, d, c)
    assert est >= real
    if config["family"] == "mlp":
        assert est == real
