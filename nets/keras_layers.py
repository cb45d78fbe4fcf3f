"""Keras 3 layers around the functional nets (``tf.keras``; no maths of their own).

``NetLayer`` owns one Keras variable per tensor of ``net.param_specs`` and calls ``net.apply``
on them, so ``model.fit`` trains exactly the function that reversible training differentiates.
``SSSDense`` and ``ImplicitDense`` are the single-layer building blocks for larger Keras models.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from revhpo.nets.base import Net, build_net

keras = tf.keras


def _variable_name(param_name: str) -> str:
    return param_name.replace("/", "__")  # Keras 3 variable names may not contain "/"


@keras.utils.register_keras_serializable(package="revhpo")
class NetLayer(keras.layers.Layer):
    """A Keras layer computing ``build_net(net_config, input_dim, output_dim).apply``.

    Args:
        net_config: the net's config (``{"family": ..., ...}``).
        input_dim: features per example.
        output_dim: outputs per example.
        seed: the weights start at ``net.init_params(seed)``.
        **kwargs: Keras ``Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(
        self, net_config: dict[str, Any], input_dim: int, output_dim: int, seed: int = 0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.net: Net = build_net(net_config, input_dim, output_dim)
        self.seed = int(seed)
        self.net_weights: list[Any] = []

    def build(self, input_shape: Any) -> None:
        """Create one weight per parameter tensor, initialised to ``init_params(seed)``."""
        values = self.net.init_params(self.seed, dtype=tf.as_dtype(self.variable_dtype))
        for spec, value in zip(self.net.param_specs, values, strict=True):
            w = self.add_weight(
                shape=spec.shape,
                initializer="zeros",
                dtype=self.variable_dtype,
                name=_variable_name(spec.name),
            )
            w.assign(value)
            self.net_weights.append(w)

    def params(self) -> list[tf.Tensor]:
        """The current weights as tensors, in ``net.param_names`` order."""
        return [tf.convert_to_tensor(w) for w in self.net_weights]

    def set_params(self, params: list[tf.Tensor]) -> None:
        """Assign ``params`` (a list like ``net.init_params(...)``) to the weights."""
        params = self.net.check_params(params)
        for w, p in zip(self.net_weights, params, strict=True):
            w.assign(tf.cast(p, w.dtype))

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """``net.apply(weights, inputs)``."""
        return self.net.apply(self.params(), inputs)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """``(batch, output_dim)``."""
        return (input_shape[0], self.net.output_dim)

    def get_config(self) -> dict[str, Any]:
        """Round-trips through ``from_config``."""
        cfg = super().get_config()
        cfg.update(
            {
                "net_config": self.net.config,
                "input_dim": self.net.input_dim,
                "output_dim": self.net.output_dim,
                "seed": self.seed,
            }
        )
        return cfg


@keras.utils.register_keras_serializable(package="revhpo")
class SSSDense(NetLayer):
    """A dense layer with a sequentially semiseparable weight matrix (no activation).

    Args:
        units: outputs (divisible by ``blocks``); the input width must be divisible too.
        input_dim: inputs.
        blocks: K.
        state: d.
        seed: initial weights from ``init_params(seed)``.
    """

    def __init__(
        self, units: int, input_dim: int, blocks: int = 8, state: int = 4, seed: int = 0, **kwargs
    ) -> None:
        for k in ("net_config", "output_dim"):
            kwargs.pop(k, None)
        cfg = {"family": "sss", "sizes": [], "blocks": blocks, "state": state, "output": "sss"}
        super().__init__(cfg, input_dim, units, seed=seed, **kwargs)
        self.units, self.blocks, self.state = units, blocks, state

    def get_config(self) -> dict[str, Any]:
        """Round-trips through ``from_config``."""
        cfg = super().get_config()
        for k in ("net_config", "output_dim"):
            cfg.pop(k)
        cfg.update({"units": self.units, "blocks": self.blocks, "state": self.state})
        return cfg


@keras.utils.register_keras_serializable(package="revhpo")
class ImplicitDense(NetLayer):
    """An implicit layer ``Ŷ = C X + D U + c``, ``X = φ(A X + B U + b)`` (family "implicit").

    Args:
        units: outputs.
        input_dim: inputs.
        n: hidden states.
        seed: initial weights from ``init_params(seed)``.
        **kwargs: other "implicit" config keys (``activation``, ``kappa``, ``rank``, ...) and
            Keras ``Layer`` arguments.
    """

    _KEYS = ("activation", "rank", "bias", "kappa", "tol", "max_iter", "newton_steps")

    def __init__(self, units: int, input_dim: int, n: int = 64, seed: int = 0, **kwargs) -> None:
        for k in ("net_config", "output_dim"):
            kwargs.pop(k, None)
        cfg: dict[str, Any] = {"family": "implicit", "n": n}
        for k in (*self._KEYS, "on_nonconvergence"):
            if k in kwargs:
                cfg[k] = kwargs.pop(k)
        super().__init__(cfg, input_dim, units, seed=seed, **kwargs)
        self.units = units

    def get_config(self) -> dict[str, Any]:
        """Round-trips through ``from_config``."""
        cfg = super().get_config()
        net_cfg = cfg.pop("net_config")
        cfg.pop("output_dim")
        cfg["units"] = self.units
        for k in ("n", *self._KEYS, "on_nonconvergence"):
            cfg[k] = net_cfg[k]
        return cfg


def keras_model(net: Net, dtype: str = "float32", seed: int = 0) -> Any:
    """A ``tf.keras.Sequential`` model computing ``net.apply`` (see ``Net.keras_model``)."""
    dtype = tf.as_dtype(dtype).name
    return keras.Sequential(
        [
            keras.Input(shape=(net.input_dim,), dtype=dtype),
            NetLayer(net.config, net.input_dim, net.output_dim, seed=seed, dtype=dtype),
        ],
        name=f"{net.family}_net",
    )
