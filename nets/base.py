"""The functional net contract shared by every family.

A net is a plain description (``config``) plus pure functions of a flat list of tensors:
``init_params(seed)`` makes the list, ``apply(params, x)`` evaluates the net. The reversible
optimizer sees only that list; Keras layers (``nets.keras``) wrap the same functions.

Configs are validated by the family's typed model (``revhpo.nets.config``, no TensorFlow),
which holds every key's default and check; the families build from the validated values.
"""

from __future__ import annotations

import abc
import copy
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import tensorflow as tf
from revhpo.nets.config import (  # noqa: F401 (re-exported: they used to live here)
    ACTIVATIONS,
    TASKS,
    NetConfigBase,
    NetConfigError,
    check_positive_int,
    check_sizes,
    parse_net_config,
)


def activation_fn(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The activation φ named ``name`` (all are 1-Lipschitz).

    Args:
        name: one of ``ACTIVATIONS``.

    Returns:
        The elementwise function.

    Raises:
        ValueError: for an unknown name.
    """
    fns = {"tanh": tf.tanh, "relu": tf.nn.relu, "softplus": tf.nn.softplus, "sigmoid": tf.sigmoid}
    if name not in fns:
        raise ValueError(
            f"`activation` must be one of {ACTIVATIONS}. Received: activation={name!r}"
        )
    return fns[name]


def activation_derivative(name: str, z: tf.Tensor) -> tf.Tensor:
    """φ′(z), written as a differentiable expression of ``z`` (so that φ″ is exact too).

    ReLU's derivative is the step function ``z > 0`` (0 at 0, as TensorFlow's own gradient);
    its derivative is 0 almost everywhere.
    """
    if name == "tanh":
        t = tf.tanh(z)
        return 1.0 - t * t
    if name == "relu":
        return tf.cast(z > 0, z.dtype)
    if name == "sigmoid":
        s = tf.sigmoid(z)
        return s * (1.0 - s)
    if name == "softplus":
        return tf.sigmoid(z)
    raise ValueError(f"`activation` must be one of {ACTIVATIONS}. Received: activation={name!r}")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its name, shape, layer index and default initial scale.

    The default initial value is ``std * N(0, 1)`` (``std == 0`` means zeros), drawn from a
    stateless RNG keyed on ``(seed, index)``.
    """

    name: str
    shape: tuple[int, ...]
    layer: int
    std: float

    @property
    def size(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)


class Net(abc.ABC):
    """A functional net: ``apply(params, x)`` is a pure, deterministic, twice-differentiable
    function of the flat parameter list.

    Subclasses set ``family`` (and ``config_class``, the family's typed config model), call
    ``self.take_config(cfg)`` in ``__init__`` (which validates the config and fills
    ``self._config`` with every default explicit), fill ``self._specs``, and implement ``apply``.

    Attributes:
        input_dim: features per example (the flat width of ``x``).
        output_dim: logits (or reconstructed features) per example.
        task: ``"classification"`` (``apply`` returns logits) or ``"reconstruction"``
            (``apply`` returns a reconstruction of its input; ``output_dim == input_dim``).
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[NetConfigBase] | None] = None
    task: str = "classification"

    def __init__(self, input_dim: int, output_dim: int) -> None:
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.output_dim = check_positive_int(output_dim, "output_dim")
        self._config: dict[str, Any] = {"family": self.family}
        self._specs: list[ParamSpec] = []
        self._layer_names: list[str] = []
        self._typed_config: NetConfigBase | None = None

    def take_config(self, cfg: Mapping[str, Any] | NetConfigBase) -> Any:
        """Validate ``cfg`` through ``config_class`` and record it as this net's config.

        Args:
            cfg: the family's config model, or a dict of its keys (``family`` optional).

        Returns:
            The validated model (every default filled in); ``self.config`` is its dump.

        Raises:
            ValueError: unknown keys, invalid values, or dimensions the config cannot be built
                with (the message names the field and the value received).
        """
        if self.config_class is None:
            raise TypeError(f"{type(self).__name__} has no `config_class`")
        typed = parse_net_config(cfg, family=self.family)
        typed.check_dims(self.input_dim, self.output_dim)
        self._typed_config = typed
        self._config = typed.model_dump()
        return typed

    # ----- description -------------------------------------------------------------------
    @property
    def typed_config(self) -> NetConfigBase | None:
        """The validated config model (``revhpo.nets.config``), or None for a family without
        one."""
        return self._typed_config

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able dict with every default made explicit; ``build_net`` round-trips it."""
        return copy.deepcopy(self._config)

    @property
    def param_specs(self) -> list[ParamSpec]:
        """One ``ParamSpec`` per parameter tensor, in ``apply``'s order."""
        return list(self._specs)

    @property
    def param_names(self) -> list[str]:
        """One name per parameter tensor (``"<layer>/<tensor>"``)."""
        return [s.name for s in self._specs]

    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        """One shape per parameter tensor."""
        return [s.shape for s in self._specs]

    @property
    def param_layers(self) -> list[int]:
        """The layer index of each tensor (an index into ``layer_names``)."""
        return [s.layer for s in self._specs]

    @property
    def layer_names(self) -> list[str]:
        """One name per layer (the unit of per-layer hyperparameters)."""
        return list(self._layer_names)

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(s.size for s in self._specs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(config={json.dumps(self._config)}, "
            f"input_dim={self.input_dim}, output_dim={self.output_dim})"
        )

    # ----- parameters ---------------------------------------------------------------------
    def init_params(self, seed: int, dtype: tf.DType = tf.float64) -> list[tf.Tensor]:
        """The default initial parameters (init scale 1), deterministic in ``seed``.

        Args:
            seed: an integer; tensor ``i`` is drawn from a stateless RNG keyed on ``(seed, i)``.
            dtype: float dtype of the tensors.

        Returns:
            One tensor per entry of ``param_specs``.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        out = []
        for i, spec in enumerate(self._specs):
            if spec.std == 0.0:
                out.append(tf.zeros(spec.shape, dtype))
            else:
                key = tf.constant([seed, i], tf.int64)
                z = tf.random.stateless_normal(spec.shape, seed=key, dtype=tf.float64)
                out.append(tf.cast(spec.std * z, dtype))
        return out

    def check_params(self, params: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Validate the number and static shapes of ``params``; return them as tensors."""
        params = list(params)
        if len(params) != len(self._specs):
            raise ValueError(
                f"`params` must hold {len(self._specs)} tensors {self.param_names}. "
                f"Received: {len(params)} tensors"
            )
        out = []
        for p, spec in zip(params, self._specs, strict=True):
            t = tf.convert_to_tensor(p)
            if t.shape.rank is not None and tuple(t.shape) != spec.shape:
                raise ValueError(
                    f"parameter `{spec.name}` must have shape {spec.shape}. "
                    f"Received: shape={tuple(t.shape)}"
                )
            out.append(t)
        return out

    def check_inputs(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """``x`` as a ``[batch, input_dim]`` tensor of the parameters' dtype."""
        x = tf.convert_to_tensor(x)
        dtype = params[0].dtype if params else x.dtype
        if x.dtype != dtype:
            x = tf.cast(x, dtype)
        if x.shape.rank is not None and (x.shape.rank != 2 or x.shape[-1] != self.input_dim):
            raise ValueError(
                f"`x` must have shape [batch, {self.input_dim}]. Received: shape={tuple(x.shape)}"
            )
        return x

    # ----- evaluation ---------------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Evaluate the net.

        Args:
            params: one tensor per entry of ``param_specs`` (any float dtype; ``x`` is cast to it).
            x: ``[batch, input_dim]`` inputs.

        Returns:
            ``[batch, output_dim]``: logits (classification) or the reconstruction.
        """

    def keras_model(self, dtype: str = "float32", seed: int = 0) -> Any:
        """A Keras 3 model computing ``apply`` with its own weights (for ``model.fit``).

        Args:
            dtype: the Keras dtype policy of the model (``"float32"`` or ``"float64"``).
            seed: the weights start at ``init_params(seed)``.

        Returns:
            A ``tf.keras.Sequential`` whose single layer is a ``nets.NetLayer`` wrapping this net.
        """
        from revhpo.nets.keras_layers import keras_model  # local import: Keras is only needed here

        return keras_model(self, dtype=dtype, seed=seed)


_REGISTRY: dict[str, type[Net]] = {}
_BUILTIN_MODULES = ("revhpo.nets.mlp", "revhpo.nets.implicit", "revhpo.nets.sss")


def _load_builtin_families() -> None:
    """Import the modules of the built-in families (they register themselves on import)."""
    for name in _BUILTIN_MODULES:
        importlib.import_module(name)


def register_family(cls: type[Net]) -> type[Net]:
    """Class decorator: make ``cls`` buildable by ``build_net`` under ``cls.family``.

    A family with a ``config_class`` receives its validated config model; one without receives
    the plain dict of its keys (without ``family``) and validates it itself.
    """
    _REGISTRY[cls.family] = cls
    return cls


def families() -> list[str]:
    """The registered family names."""
    _load_builtin_families()
    return sorted(_REGISTRY)


def family_task(config: Mapping[str, Any] | NetConfigBase | str) -> str:
    """The task of a family before building it: ``"classification"`` or ``"reconstruction"``.

    Reconstruction nets (autoencoders) need ``output_dim == input_dim``.

    Args:
        config: a net config (``{"family": ...}`` or a config model) or a family name.
    """
    if isinstance(config, NetConfigBase):
        return config.task
    family = config.get("family") if isinstance(config, Mapping) else config
    _load_builtin_families()
    if family not in _REGISTRY:
        raise ValueError(f"`family` must be one of {families()}. Received: family={family!r}")
    return _REGISTRY[family].task


def build_net(config: Mapping[str, Any] | NetConfigBase, input_dim: int, output_dim: int) -> Net:
    """Build a net from its plain config.

    The config is validated by the family's typed model (``revhpo.nets.config``): defaults,
    checks and the exact parameter count (``num_params``) all come from there.

    Args:
        config: ``{"family": <name>, ...}`` (see docs/nets.md for each family's keys), or a
            config model such as ``MLPConfig(sizes=[32])``.
        input_dim: features per example.
        output_dim: logits per example (== ``input_dim`` for autoencoders).

    Returns:
        The net; ``build_net(net.config, input_dim, output_dim)`` builds the same net.

    Raises:
        ValueError: unknown family, unknown keys, or invalid values (the message echoes them).
    """
    if isinstance(config, NetConfigBase):
        family: Any = config.family
    elif isinstance(config, Mapping):
        family = config.get("family")
    else:
        raise ValueError(f"`config` must be a dict. Received: config={config!r}")
    _load_builtin_families()
    if family not in _REGISTRY:
        raise ValueError(f"`family` must be one of {families()}. Received: family={family!r}")
    cls = _REGISTRY[family]
    if cls.config_class is not None:
        return cls(parse_net_config(config, family=family), input_dim, output_dim)
    if isinstance(config, NetConfigBase):
        config = config.model_dump()
    cfg = {k: v for k, v in config.items() if k != "family"}
    return cls(cfg, input_dim, output_dim)


def take_config(cfg: dict[str, Any], defaults: dict[str, Any], family: str) -> dict[str, Any]:
    """Merge ``cfg`` over ``defaults``; raise ValueError on keys the family does not know.

    For families without a typed config model (the built-in ones use ``Net.take_config``).
    """
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown config keys {unknown} for family {family!r}; "
            f"known keys: {sorted(defaults)}. Received: config={cfg!r}"
        )
    out = copy.deepcopy(defaults)
    out.update(copy.deepcopy(cfg))
    return out


@tf.autograph.experimental.do_not_convert
def task_loss(net: Net, outputs: tf.Tensor, x: tf.Tensor, y: tf.Tensor | None) -> tf.Tensor:
    """The mean per-example loss of the net's task.

    Classification: softmax cross-entropy of ``outputs`` (logits) against integer labels ``y``.
    Reconstruction: half the mean squared error of ``outputs`` against ``x`` (``y`` is ignored).

    Args:
        net: the net (for ``net.task``).
        outputs: ``net.apply(params, x)``.
        x: the inputs.
        y: integer labels ``[batch]`` (classification) or None.

    Returns:
        A scalar of the outputs' dtype.
    """
    if net.task == "reconstruction":
        x = tf.cast(x, outputs.dtype)
        return 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(outputs - x), axis=-1))
    if y is None:
        raise ValueError("classification needs integer labels `y`. Received: y=None")
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=outputs)
    return tf.reduce_mean(ce)
