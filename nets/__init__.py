"""Model families as pure functions of a flat parameter list, plus Keras 3 wrappers.

``build_net(config, input_dim, output_dim)`` returns a ``Net`` whose ``apply(params, x)`` is
deterministic and exactly twice differentiable (gradients and Hessian-vector products), which
is what exactly reversible training needs. Knows nothing of optimizers.

The names are imported lazily (PEP 562): ``import revhpo.nets`` imports no TensorFlow, and the
typed configs (``MLPConfig``, ..., ``parse_net_config``; module ``revhpo.nets.config``) never
do. The TensorFlow modules are imported on the first access of a name that lives in them.
State-driven implicit modeling is the submodule ``revhpo.nets.sim`` (TensorFlow; its config
``SimConfig`` is TensorFlow-free).
Keras deserialisation of a saved ``NetLayer`` needs ``revhpo.nets.keras_layers`` imported
(accessing ``revhpo.nets.NetLayer`` does it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from revhpo._lazy import lazy_exports

# name -> submodule that defines it (imported on first access)
_LAZY: dict[str, str] = {
    # TensorFlow-free
    "ACTIVATIONS": "config",
    "NET_FAMILIES": "config",
    "TASKS": "config",
    "ImplicitAutoencoderConfig": "config",
    "ImplicitConfig": "config",
    "ImplicitRNNConfig": "config",
    "MLPConfig": "config",
    "NetConfig": "config",
    "NetConfigBase": "config",
    "NetConfigError": "config",
    "Rank1Config": "config",
    "SSSConfig": "config",
    "SimConfig": "config",
    "SimExplicitConfig": "config",
    "SimInitConfig": "config",
    "autoencoder_widths": "config",
    "config_class": "config",
    "default_time_steps": "config",
    "parse_net_config": "config",
    "sss_generator_shapes": "config",
    "sss_param_count": "config",
    # TensorFlow
    "Net": "base",
    "ParamSpec": "base",
    "activation_derivative": "base",
    "activation_fn": "base",
    "build_net": "base",
    "families": "base",
    "family_task": "base",
    "register_family": "base",
    "task_loss": "base",
    "ConvergenceError": "implicit",
    "EquilibriumSolver": "implicit",
    "ImplicitAutoencoder": "implicit",
    "ImplicitModel": "implicit",
    "ImplicitRNN": "implicit",
    "inf_norm": "implicit",
    "newton_step": "implicit",
    "well_posed": "implicit",
    "well_posed_lowrank": "implicit",
    "ImplicitDense": "keras_layers",
    "NetLayer": "keras_layers",
    "SSSDense": "keras_layers",
    "keras_model": "keras_layers",
    "MLP": "mlp",
    "SSSMLP": "sss",
    "Rank1MLP": "sss",
    "rank1_matvec": "sss",
    "sss_dense": "sss",
    "sss_matvec": "sss",
}

__all__ = [
    "ACTIVATIONS",
    "ConvergenceError",
    "EquilibriumSolver",
    "ImplicitAutoencoder",
    "ImplicitAutoencoderConfig",
    "ImplicitConfig",
    "ImplicitDense",
    "ImplicitModel",
    "ImplicitRNN",
    "ImplicitRNNConfig",
    "MLP",
    "MLPConfig",
    "NET_FAMILIES",
    "Net",
    "NetConfig",
    "NetConfigBase",
    "NetConfigError",
    "NetLayer",
    "ParamSpec",
    "Rank1Config",
    "Rank1MLP",
    "SSSConfig",
    "SSSDense",
    "SSSMLP",
    "SimConfig",
    "SimExplicitConfig",
    "SimInitConfig",
    "TASKS",
    "activation_derivative",
    "activation_fn",
    "autoencoder_widths",
    "build_net",
    "config_class",
    "default_time_steps",
    "families",
    "family_task",
    "inf_norm",
    "keras_model",
    "newton_step",
    "parse_net_config",
    "rank1_matvec",
    "register_family",
    "sss_dense",
    "sss_generator_shapes",
    "sss_matvec",
    "sss_param_count",
    "task_loss",
    "well_posed",
    "well_posed_lowrank",
]  # == sorted(_LAZY) (checked by tests/test_net_configs.py)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


if TYPE_CHECKING:  # the names for static analysis; at run time __getattr__ imports them
    from revhpo.nets.base import (
        Net,
        ParamSpec,
        activation_derivative,
        activation_fn,
        build_net,
        families,
        family_task,
        register_family,
        task_loss,
    )
    from revhpo.nets.config import (
        ACTIVATIONS,
        NET_FAMILIES,
        TASKS,
        ImplicitAutoencoderConfig,
        ImplicitConfig,
        ImplicitRNNConfig,
        MLPConfig,
        NetConfig,
        NetConfigBase,
        NetConfigError,
        Rank1Config,
        SimConfig,
        SimExplicitConfig,
        SimInitConfig,
        SSSConfig,
        autoencoder_widths,
        config_class,
        default_time_steps,
        parse_net_config,
        sss_generator_shapes,
        sss_param_count,
    )
    from revhpo.nets.implicit import (
        ConvergenceError,
        EquilibriumSolver,
        ImplicitAutoencoder,
        ImplicitModel,
        ImplicitRNN,
        inf_norm,
        newton_step,
        well_posed,
        well_posed_lowrank,
    )
    from revhpo.nets.keras_layers import ImplicitDense, NetLayer, SSSDense, keras_model
    from revhpo.nets.mlp import MLP
    from revhpo.nets.sss import SSSMLP, Rank1MLP, rank1_matvec, sss_dense, sss_matvec
