"""Model families as pure functions of a flat parameter list, plus Keras 3 wrappers.

``build_net(config, input_dim, output_dim)`` returns a ``Net`` whose ``apply(params, x)`` is
deterministic and exactly twice differentiable (gradients and Hessian-vector products), which
is what exactly reversible training needs. Knows nothing of optimizers.
"""

import os

# Exact reversal needs the reverse pass to recompute each gradient bit for bit. oneDNN's
# float32 CPU kernels can round differently in the forward and the reverse graph, so they are
# off unless the user chose otherwise before TensorFlow was first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from nets.base import (
    ACTIVATIONS,
    TASKS,
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
from nets.implicit import (
    ConvergenceError,
    EquilibriumSolver,
    ImplicitAutoencoder,
    ImplicitModel,
    ImplicitRNN,
    autoencoder_widths,
    default_time_steps,
    inf_norm,
    newton_step,
    well_posed,
    well_posed_lowrank,
)
from nets.keras_layers import ImplicitDense, NetLayer, SSSDense, keras_model
from nets.mlp import MLP
from nets.sss import (
    SSSMLP,
    Rank1MLP,
    rank1_matvec,
    sss_dense,
    sss_generator_shapes,
    sss_matvec,
    sss_param_count,
)

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "SSSMLP",
    "TASKS",
    "ConvergenceError",
    "EquilibriumSolver",
    "ImplicitAutoencoder",
    "ImplicitDense",
    "ImplicitModel",
    "ImplicitRNN",
    "Net",
    "NetLayer",
    "ParamSpec",
    "Rank1MLP",
    "SSSDense",
    "activation_derivative",
    "activation_fn",
    "autoencoder_widths",
    "build_net",
    "default_time_steps",
    "families",
    "family_task",
    "inf_norm",
    "keras_model",
    "newton_step",
    "rank1_matvec",
    "register_family",
    "sss_dense",
    "sss_generator_shapes",
    "sss_matvec",
    "sss_param_count",
    "task_loss",
    "well_posed",
    "well_posed_lowrank",
]
