"""Train your own Keras model with a tuned revhpo schedule.

:class:`ScheduledMomentum` is a Keras 3 optimizer that applies per-layer, per-step learning
rates α, momentum decays γ and weight decays λ exactly as revhpo trained with them (the
convention in :mod:`revhpo.export`)::

    from revhpo.export import load_schedules
    from revhpo.keras import ScheduledMomentum, apply_init_scales

    schedules = load_schedules("runs/mlp")               # a run directory or result.json
    apply_init_scales(model, schedules)                  # w0 ← init_scale[layer] · w0
    model.compile(optimizer=ScheduledMomentum(schedules),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=50, epochs=...)          # weight decay is the optimizer's

Each trainable variable is matched to a tuned layer by name: the first component of its path
(``dense0/kernel``) or of its name split at ``__`` (``dense0__kernel``, revhpo's own Keras
layers) that is a layer name of the schedules; pass ``layer_of`` (a mapping from variable
path to layer name, or a function of the variable) for other models. A variable that matches
no layer is an error naming it and the known layers. After step T the schedules hold their
last value (``after_last_step="hold"``) or start over (``"repeat"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from revhpo.export import TunedSchedules, load_schedules

__all__ = ["ScheduledMomentum", "apply_init_scales", "layer_name_of"]

keras = tf.keras

LayerOf = Mapping[str, str] | Callable[[Any], str] | None


def layer_name_of(variable: Any, schedules: TunedSchedules, layer_of: LayerOf = None) -> str:
    """The tuned layer a Keras variable belongs to (see the module docstring).

    Raises:
        ValueError: no layer matches (the message names the variable and the layers).
    """
    path = str(getattr(variable, "path", None) or variable.name)
    if callable(layer_of):
        name = layer_of(variable)
    elif layer_of is not None:
        name = layer_of.get(path) or layer_of.get(str(variable.name))
    else:
        parts = [q for p in path.split("/") for q in p.split("__")]
        name = next((p for p in parts if p in schedules.layer_names), None)
    if name not in schedules.layer_names:
        raise ValueError(
            f"variable {path!r} matches no tuned layer; layers: {schedules.layer_names} "
            "(pass `layer_of` to map variables to layers). "
            f"Received: layer={name!r}"
        )
    return str(name)


def apply_init_scales(
    model_or_variables: Any, schedules: TunedSchedules | str | Path, layer_of: LayerOf = None
) -> None:
    """Multiply every trainable variable by its layer's tuned init scale (in place)."""
    schedules = _schedules(schedules)
    variables = getattr(model_or_variables, "trainable_variables", model_or_variables)
    for v in variables:
        i = schedules.layer_index(layer_name_of(v, schedules, layer_of))
        v.assign(v * tf.cast(schedules.init_scale[i], v.dtype))


def _schedules(s: TunedSchedules | str | Path | Mapping[str, Any]) -> TunedSchedules:
    return s if isinstance(s, TunedSchedules) else load_schedules(s)


@keras.utils.register_keras_serializable(package="revhpo")
class ScheduledMomentum(keras.optimizers.Optimizer):
    """SGD with momentum under tuned per-layer, per-step α, γ, λ (revhpo's convention)::

        v ← γ[t, l] v − (1 − γ[t, l]) (g + λ[t, l] w);   w ← w + α[t, l] v

    Args:
        schedules: :class:`~revhpo.export.TunedSchedules`, or what
            :func:`~revhpo.export.load_schedules` reads (a run directory, ``result.json``,
            or an exported schedules JSON).
        layer_of: how variables map to tuned layers (see the module docstring).
        after_last_step: ``"hold"`` the last step's values, or ``"repeat"`` the schedule.
        name: the optimizer's name.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (no ``learning_rate``: the
            schedules are the learning rates).
    """

    def __init__(
        self,
        schedules: TunedSchedules | str | Path | Mapping[str, Any],
        layer_of: LayerOf = None,
        after_last_step: str = "hold",
        name: str = "scheduled_momentum",
        **kwargs: Any,
    ) -> None:
        if after_last_step not in ("hold", "repeat"):
            raise ValueError(
                "`after_last_step` must be 'hold' or 'repeat'. "
                f"Received: after_last_step={after_last_step!r}"
            )
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self.schedules = _schedules(schedules)
        self.layer_of = layer_of
        self.after_last_step = after_last_step

    def build(self, var_list: list[Any]) -> None:
        """Velocity slots, and each variable's layer and weight-decay values."""
        if self.built:
            return
        super().build(var_list)
        s = self.schedules
        self._velocities = [self.add_variable_from_reference(v, "velocity") for v in var_list]
        self._layers: dict[str, int] = {}
        self._per_weight: dict[str, np.ndarray] = {}
        for v in var_list:
            key = self._var_key(v)
            self._layers[key] = s.layer_index(layer_name_of(v, s, self.layer_of))
            if s.weight_decay is None and s.weight_decay_per_weight is not None:
                self._per_weight[key] = self._weight_decay_of(v)

    def _weight_decay_of(self, variable: Any) -> np.ndarray:
        s = self.schedules
        assert s.weight_decay_per_weight is not None
        path = str(getattr(variable, "path", None) or variable.name)
        for pname, lam in s.weight_decay_per_weight.items():
            if path.replace("__", "/").endswith(pname):
                return lam.reshape(tuple(variable.shape))
        raise ValueError(
            f"per-weight weight decay: variable {path!r} matches none of "
            f"{sorted(s.weight_decay_per_weight)}"
        )

    def _step_index(self) -> tf.Tensor:
        t, T = tf.cast(self.iterations, tf.int64), self.schedules.steps
        return tf.minimum(t, T - 1) if self.after_last_step == "hold" else t % T

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step of the convention for one variable."""
        s, key = self.schedules, self._var_key(variable)
        layer, dtype = self._layers[key], variable.dtype
        t = self._step_index()
        alpha = tf.cast(tf.gather(s.learning_rate[:, layer], t), dtype)
        gamma = tf.cast(tf.gather(s.momentum[:, layer], t), dtype)
        g = tf.cast(gradient, dtype)
        if s.weight_decay is not None:
            g = g + tf.cast(tf.gather(s.weight_decay[:, layer], t), dtype) * variable
        elif key in self._per_weight:
            g = g + tf.constant(self._per_weight[key], dtype) * variable
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(v, gamma * v - (1.0 - gamma) * g)
        self.assign_add(variable, alpha * v)

    def get_config(self) -> dict[str, Any]:
        """Serialisable config (the schedules as their JSON document)."""
        config = super().get_config()
        config.pop("learning_rate", None)
        config.update(schedules=self.schedules.to_dict(), after_last_step=self.after_last_step)
        return config
