"""Family ``"mlp"``: dense layers with a smooth or piecewise-linear activation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from revhpo.nets.base import Net, ParamSpec, activation_fn, register_family
from revhpo.nets.config import MLPConfig


def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
    """``x @ kernel + bias`` (``kernel`` is ``[fan_in, fan_out]``)."""
    y = tf.matmul(x, kernel)
    return y if bias is None else y + bias


@register_family
class MLP(Net):
    """A multilayer perceptron: ``sizes`` hidden layers, then a linear readout.

    Config keys (defaults; ``nets.config.MLPConfig``): ``sizes`` ([50, 50]) hidden widths;
    ``activation`` ("tanh") one of tanh, relu, softplus, sigmoid. Parameters:
    ``dense{i}/kernel`` ``[fan_in, fan_out]`` (default init N(0, 1/fan_in)) and
    ``dense{i}/bias`` (zeros); one layer per dense layer.
    """

    family = "mlp"
    config_class = MLPConfig

    def __init__(self, cfg: MLPConfig | dict[str, Any], input_dim: int, output_dim: int) -> None:
        super().__init__(input_dim, output_dim)
        c: MLPConfig = self.take_config(cfg)
        self._phi = activation_fn(c.activation)
        widths = c.widths(self.input_dim, self.output_dim)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            self._layer_names.append(f"dense{i}")
            self._specs.append(ParamSpec(f"dense{i}/kernel", (a, b), i, 1.0 / math.sqrt(a)))
            self._specs.append(ParamSpec(f"dense{i}/bias", (b,), i, 0.0))

    @tf.autograph.experimental.do_not_convert
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Logits ``[batch, output_dim]`` of ``x`` ``[batch, input_dim]``."""
        params = self.check_params(params)
        h = self.check_inputs(x, params)
        n_layers = len(params) // 2
        for i in range(n_layers):
            h = dense(h, params[2 * i], params[2 * i + 1])
            if i < n_layers - 1:
                h = self._phi(h)
        return h
