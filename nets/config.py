"""Typed net configs: one pydantic model per family, and exact parameter counts.

This module is the one source of truth for every family's keys, defaults and validation:
``build_net`` validates its config here, the job spec (``revhpo.service.spec``) embeds the
models, so the published JSON Schema describes every family, and the API server counts a net's
parameters exactly (``num_params``) before queueing a job. It is pure Python: importing it
does not import TensorFlow.

```python
from revhpo.nets.config import parse_net_config

cfg = parse_net_config({"family": "implicit_rnn", "n": 20})   # an ImplicitRNNConfig
cfg.num_params(64, 10)    # exactly build_net(cfg.model_dump(), 64, 10).num_params
cfg.model_dump()          # every default explicit (what ``net.config`` holds)
```

Checks that need the data's dimensions (``time_steps`` must divide ``input_dim``, SSS ``blocks``
must divide every SSS layer's widths, an autoencoder's ``output_dim`` equals its ``input_dim``)
are made by ``check_dims(input_dim, output_dim)``, which ``num_params`` and the build both call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

__all__ = [
    "ACTIVATIONS",
    "NET_FAMILIES",
    "SOLVER_DEFAULTS",
    "TASKS",
    "ImplicitAutoencoderConfig",
    "ImplicitConfig",
    "ImplicitRNNConfig",
    "MLPConfig",
    "NetConfig",
    "NetConfigBase",
    "NetConfigError",
    "Rank1Config",
    "SSSConfig",
    "SimConfig",
    "SimExplicitConfig",
    "SimInitConfig",
    "autoencoder_widths",
    "check_positive_int",
    "check_sizes",
    "config_class",
    "config_table",
    "default_time_steps",
    "parse_net_config",
    "sss_generator_shapes",
    "sss_param_count",
]

Activation = Literal["tanh", "relu", "softplus", "sigmoid"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
TASKS = ("classification", "reconstruction")


class NetConfigError(ValueError):
    """A net config that does not validate; the message names each field and the value received."""


# ----------------------------------------------------------------------------- pure helpers
def check_positive_int(value: Any, what: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ValueError echoing it when it is not >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{what}` must be an integer >= {minimum}. Received: {what}={value!r}")
    return int(value)


def check_sizes(value: Any, what: str = "sizes") -> list[int]:
    """Return a list of positive layer widths, or raise ValueError echoing ``value``."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"`{what}` must be a list of positive integers. Received: {what}={value!r}"
        )
    return [check_positive_int(v, what) for v in value]


def default_time_steps(input_dim: int) -> int:
    """Rows of a square image when ``input_dim`` is a perfect square (8 for 64 = 8×8 digits),
    otherwise one feature per time step."""
    r = math.isqrt(input_dim)
    return r if r * r == input_dim else input_dim


def autoencoder_widths(hidden_layer_num: int, start_layer: int, latent_num: int) -> list[int]:
    """Encoder widths: ``hidden_layer_num`` layers from ``start_layer`` linearly towards
    ``latent_num`` (exclusive); the latent layer and the mirrored decoder follow."""
    h = hidden_layer_num
    return [round(start_layer + (latent_num - start_layer) * i / h) for i in range(h)]


def sss_generator_shapes(blocks: int, state: int, m: int, p: int) -> list[tuple[str, tuple]]:
    """The generator tensors of one SSS matrix, in parameter order: ``(name, shape)``."""
    k, d = blocks, state
    out: list[tuple[str, tuple]] = [("D", (k, p, m))]
    if k >= 2:
        out += [("B", (k - 1, d, m)), ("C", (k - 1, p, d))]
        if k >= 3:
            out.append(("A", (k - 2, d, d)))
        out += [("H", (k - 1, d, m)), ("G", (k - 1, p, d))]
        if k >= 3:
            out.append(("E", (k - 2, d, d)))
    return out


def sss_param_count(blocks: int, state: int, m: int, p: int) -> int:
    """``K·p·m + 2(K−1)·d·(m + p) + 2·max(K−2, 0)·d²`` (generators only, no bias)."""
    k, d = blocks, state
    return k * p * m + 2 * (k - 1) * d * (m + p) + 2 * max(k - 2, 0) * d * d


def _dense_count(widths: list[int]) -> int:
    """Kernels and biases of dense layers between consecutive ``widths``."""
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def _implicit_count(n: int, p: int, q: int, rank: int | None, bias: bool) -> int:
    """``A`` (n² or 2·n·r) + ``B`` n·p + ``C`` q·n + ``D`` q·p + biases ``b``, ``c`` (n + q)."""
    a = n * n if rank is None else 2 * n * rank
    return a + n * p + q * n + q * p + (n + q if bias else 0)


# ----------------------------------------------------------------------------- field types
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Sizes = Annotated[
    list[PositiveInt], Field(description="hidden widths (positive integers), input to output")
]


def _activation(default: str) -> Any:
    return Field(default, description="φ: `tanh`, `relu`, `softplus` or `sigmoid` (1-Lipschitz)")


_KAPPA = "the bound ‖A‖∞ ≤ κ < 1 of the implicit matrix (κ-contraction)"
_TOL = "Picard stops when ‖ΔX‖∞ ≤ tol·max(1, ‖X‖∞) (at least 64 ulp of the dtype)"
_MAX_ITER = "Picard iteration cap"
_NEWTON = "differentiable Newton steps; 2 is needed for exact HVPs, 1 gives exact gradients"
_ON_NONCONV = "`warn`, `raise` or `ignore` when `max_iter` is reached before `tol`"
Kappa = Annotated[float, Strict(), Field(gt=0, lt=1, description=_KAPPA)]
Tol = Annotated[float, Strict(), Field(gt=0, description=_TOL)]
MaxIter = Annotated[int, Strict(), Field(ge=1, description=_MAX_ITER)]
NewtonSteps = Annotated[int, Strict(), Field(ge=0, description=_NEWTON)]
OnNonconvergence = Annotated[Literal["warn", "raise", "ignore"], Field(description=_ON_NONCONV)]


def _check_rank(rank: int | None, info: ValidationInfo) -> int | None:
    n = info.data.get("n")
    if rank is not None and n is not None and rank > n:
        raise ValueError(f"`rank` must be <= n={n} (or None for full rank). Received: rank={rank}")
    return rank


Rank = Annotated[
    PositiveInt | None,
    AfterValidator(_check_rank),  # at most `n` (a field declared before `rank`)
    Field(description="`null`: `A` from a full `W` [n, n]; an int r ≤ n: `A` from `L Rᵀ` [n, r]"),
]
Bias = Annotated[bool, Strict(), Field(description="the biases `b` and `c`")]


# ----------------------------------------------------------------------------- models
def _family_required(schema: dict[str, Any]) -> None:
    # `family` has a default in Python (MLPConfig(sizes=[8]) works), but a document must name
    # it: it is what tells the families apart.
    required = schema.setdefault("required", [])
    if "family" not in required:
        required.insert(0, "family")


class NetConfigBase(BaseModel):
    """Common behaviour of the family configs (not a family itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_family_required)

    family: str
    task: ClassVar[str] = "classification"
    """``"classification"`` (outputs are logits over ``output_dim`` classes) or
    ``"reconstruction"`` (outputs reconstruct the input: ``output_dim == input_dim``)."""

    def config(self) -> dict[str, Any]:
        """The dict handed to ``build_net``: ``family`` and the keys that were given (the
        defaults of the others are filled when the net is built; ``model_dump()`` has all)."""
        return {"family": self.family, **self.model_dump(exclude_unset=True, exclude={"family"})}

    def output_dim_for(self, input_dim: int, n_classes: int) -> int:
        """The net's ``output_dim`` on data of ``input_dim`` features and ``n_classes`` classes."""
        return input_dim if self.task == "reconstruction" else n_classes

    def check_dims(self, input_dim: int, output_dim: int) -> tuple[int, int]:
        """Validate the dimensions against this config; returns them as ints.

        Raises:
            ValueError: a non-positive dimension, or one this config cannot be built with.
        """
        return check_positive_int(input_dim, "input_dim"), check_positive_int(
            output_dim, "output_dim"
        )

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """The exact number of scalar parameters of the net built on these dimensions.

        Args:
            input_dim: features per example.
            output_dim: logits per example (``== input_dim`` for reconstruction families).

        Raises:
            ValueError: as ``check_dims``.
        """
        raise NotImplementedError


class MLPConfig(NetConfigBase):
    """Family `mlp`: dense layers with an activation, then a linear readout."""

    family: Literal["mlp"] = "mlp"
    sizes: Sizes = [50, 50]  # pydantic copies a mutable default per instance
    activation: Activation = _activation("tanh")

    def widths(self, input_dim: int, output_dim: int) -> list[int]:
        """``[input_dim, *sizes, output_dim]``."""
        d, c = self.check_dims(input_dim, output_dim)
        return [d, *self.sizes, c]

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """``Σᵢ (wᵢ + 1)·wᵢ₊₁`` over the widths ``w = [input_dim, *sizes, output_dim]``."""
        return _dense_count(self.widths(input_dim, output_dim))


class _SimModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True
    )


class SimExplicitConfig(_SimModel):
    """The explicit ReLU MLP that SIM starts from, and its plain float SGD-momentum training
    (the convention of ``revhpo.optimizers.PlainSGD``: ``v ← γ v − (1 − γ) g``, ``w ← w + α v``)
    on the job's training set."""

    family: Literal["mlp"] = Field("mlp", description="the explicit net's family (ReLU MLP)")
    sizes: Sizes = [50, 50]
    steps: int = Field(400, ge=1, le=100_000, description="plain training steps")
    batch_size: PositiveInt = Field(50, description="minibatch size")
    learning_rate: float = Field(0.3, gt=0, description="α")
    momentum: float = Field(0.9, ge=0, lt=1, description="γ")
    weight_decay: float = Field(1e-4, ge=0, description="λ of the penalty ½ λ ‖w‖²")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="initial weights and minibatches")


class SimConfig(_SimModel):
    """State-driven implicit modeling (Tsai et al. 2022): fit ``(A, B, C, D)`` to the states of
    a trained explicit net by convex programs, under ``‖A‖∞ ≤ kappa`` (``revhpo.nets.sim``)."""

    source: SimExplicitConfig = Field(
        default_factory=SimExplicitConfig,
        alias="from",
        description="the explicit ReLU MLP (its `sizes` must sum to the implicit net's `n`) "
        "and its plain training",
    )
    objective: Literal["sparsity", "robustness"] = Field(
        "sparsity",
        description="`sparsity`: λ₁ times the ℓ1 norm of A, B, C, D; `robustness`: λ₁ "
        "times the induced ∞-norms ‖B‖∞ + ‖C‖∞ + ‖D‖∞ (the ℓ∞ sensitivity bound's factors)",
    )
    kappa: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="‖A‖∞ ≤ kappa; null: the net's `kappa` (a value above it is refused)",
    )
    lambda1: float = Field(1e-3, ge=0, description="weight λ₁ of the objective's penalty")
    fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the training set whose states are fitted"
    )
    tol: float = Field(
        1e-7, gt=0, description="the solver stops when the relative change of (A, B) is ≤ tol"
    )
    max_iter: int = Field(5000, ge=1, le=1_000_000, description="solver iteration cap")


class SimInitConfig(_SimModel):
    """Where an implicit net's initial weights come from (instead of its random init)."""

    sim: SimConfig = Field(description="state-driven implicit modeling of a trained explicit net")


class ImplicitConfig(NetConfigBase):
    """Family `implicit`: X = φ(A X + B U + b), Ŷ = C X + D U + c (El Ghaoui et al.)."""

    family: Literal["implicit"] = "implicit"
    n: PositiveInt = Field(64, description="hidden states")
    activation: Activation = _activation("relu")
    rank: Rank = None
    bias: Bias = True
    kappa: Kappa = 0.95
    tol: Tol = 1e-10
    max_iter: MaxIter = 3000
    newton_steps: NewtonSteps = 2
    on_nonconvergence: OnNonconvergence = "warn"
    init: SimInitConfig | None = Field(
        None,
        description="`null`: random initial weights; `{sim: {...}}`: the weights SIM fits to "
        "a trained explicit ReLU MLP (then activation relu, bias true, rank null, n = the "
        "sum of its sizes)",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        # `init: null` is left out of dumps, so a net without SIM has the config (and a job
        # spec the hash, hence resumable checkpoints) it had before `init` existed.
        data = handler(self)
        if isinstance(data, dict) and "init" in data and data["init"] is None:
            del data["init"]
        return data

    @model_validator(mode="after")
    def _check_sim_init(self) -> ImplicitConfig:
        if self.init is None:
            return self
        sim = self.init.sim
        problems = []
        if self.activation != "relu":
            problems.append(f"activation must be relu (received {self.activation!r})")
        if not self.bias:
            problems.append("bias must be true (received false)")
        if self.rank is not None:
            problems.append(f"rank must be null (received {self.rank})")
        if self.n != sum(sim.source.sizes):
            problems.append(
                f"n must equal the sum of init.sim.from.sizes {sim.source.sizes} = "
                f"{sum(sim.source.sizes)} (received n={self.n})"
            )
        if sim.kappa is not None and sim.kappa > self.kappa:
            problems.append(
                f"init.sim.kappa must be at most the net's kappa={self.kappa} "
                f"(received {sim.kappa})"
            )
        if problems:
            raise ValueError("an implicit net initialised by SIM: " + "; ".join(problems))
        return self

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """``n² (or 2·n·rank) + n·d + c·n + c·d + bias·(n + c)`` for d inputs, c outputs."""
        d, c = self.check_dims(input_dim, output_dim)
        return _implicit_count(self.n, d, c, self.rank, self.bias)


class ImplicitRNNConfig(NetConfigBase):
    """Family `implicit_rnn`: hₜ = Implicit([xₜ; hₜ₋₁]), y = Linear(h_T)."""

    family: Literal["implicit_rnn"] = "implicit_rnn"
    hidden: PositiveInt = Field(16, description="size of the recurrent state h (the cell's output)")
    n: PositiveInt = Field(32, description="implicit states inside the cell")
    time_steps: PositiveInt | None = Field(
        None,
        description="`null`: √input_dim when that is an integer, else input_dim (one feature "
        "per step); an int must divide input_dim",
    )
    activation: Activation = _activation("tanh")
    rank: Rank = None
    bias: Bias = True
    kappa: Kappa = 0.95
    tol: Tol = 1e-10
    max_iter: MaxIter = 3000
    newton_steps: NewtonSteps = 2
    on_nonconvergence: OnNonconvergence = "warn"

    def steps_and_features(self, input_dim: int) -> tuple[int, int]:
        """``(time_steps, features per step)`` on ``input_dim`` inputs.

        Raises:
            ValueError: ``time_steps`` does not divide ``input_dim``.
        """
        d = check_positive_int(input_dim, "input_dim")
        steps = default_time_steps(d) if self.time_steps is None else self.time_steps
        if d % steps:
            raise ValueError(
                f"`time_steps` must divide input_dim={d}. Received: time_steps={steps}"
            )
        return steps, d // steps

    def check_dims(self, input_dim: int, output_dim: int) -> tuple[int, int]:
        """As the base, and ``time_steps`` must divide ``input_dim``."""
        d, c = super().check_dims(input_dim, output_dim)
        self.steps_and_features(d)
        return d, c

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """The cell (an implicit model from ``f + hidden`` to ``hidden``, f = input_dim /
        time_steps) plus the readout ``(hidden + 1)·output_dim``."""
        d, c = self.check_dims(input_dim, output_dim)
        _, f = self.steps_and_features(d)
        h = self.hidden
        return _implicit_count(self.n, f + h, h, self.rank, self.bias) + (h + 1) * c


class ImplicitAutoencoderConfig(NetConfigBase):
    """Family `implicit_autoencoder`: the (hidden_layer_num; start_layer; latent_num) family;
    reconstructs its input (`output_dim == input_dim`)."""

    task: ClassVar[str] = "reconstruction"
    family: Literal["implicit_autoencoder"] = "implicit_autoencoder"
    hidden_layer_num: PositiveInt = Field(
        1, description="encoder layers before the latent layer (the decoder mirrors them)"
    )
    start_layer: PositiveInt = Field(
        32, description="width of the first encoder layer; widths go linearly towards latent_num"
    )
    latent_num: PositiveInt = Field(8, description="latent units")
    version: Literal["v0", "v1"] = Field(
        "v1", description="`v0` feed-forward; `v1` all-to-all connections among the latent units"
    )
    activation: Activation = _activation("tanh")
    kappa: Kappa = 0.95
    tol: Tol = 1e-10
    max_iter: MaxIter = 3000
    newton_steps: NewtonSteps = 2
    on_nonconvergence: OnNonconvergence = "warn"

    def check_dims(self, input_dim: int, output_dim: int) -> tuple[int, int]:
        """As the base, and ``output_dim`` must equal ``input_dim``."""
        d, c = super().check_dims(input_dim, output_dim)
        if c != d:
            raise ValueError(
                "an autoencoder reconstructs its input: `output_dim` must equal `input_dim`. "
                f"Received: input_dim={input_dim}, output_dim={output_dim}"
            )
        return d, c

    def encoder_widths(self) -> list[int]:
        """``autoencoder_widths(hidden_layer_num, start_layer, latent_num)``."""
        return autoencoder_widths(self.hidden_layer_num, self.start_layer, self.latent_num)

    def widths(self, input_dim: int) -> list[int]:
        """``[input_dim, *encoder, latent_num, *reversed(encoder), input_dim]``."""
        d, _ = self.check_dims(input_dim, input_dim)
        enc = self.encoder_widths()
        return [d, *enc, self.latent_num, *enc[::-1], d]

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """``Σᵢ (wᵢ + 1)·wᵢ₊₁`` over ``widths(input_dim)``, plus ``latent_num²`` for v1."""
        d, _ = self.check_dims(input_dim, output_dim)
        extra = self.latent_num**2 if self.version == "v1" else 0
        return _dense_count(self.widths(d)) + extra


class _StructuredConfig(NetConfigBase):
    structure: ClassVar[str] = ""

    def n_structured(self) -> int:
        """How many layers (from the first) have the structured weight."""
        return len(self.sizes)  # type: ignore[attr-defined]

    def layers(self, input_dim: int, output_dim: int) -> list[tuple[int, int, bool]]:
        """``(fan_in, fan_out, structured)`` of every layer, input to output."""
        d, c = self.check_dims(input_dim, output_dim)
        widths = [d, *self.sizes, c]  # type: ignore[attr-defined]
        k = self.n_structured()
        pairs = zip(widths[:-1], widths[1:], strict=True)
        return [(a, b, i < k) for i, (a, b) in enumerate(pairs)]


class SSSConfig(_StructuredConfig):
    """Family `sss`: hidden layers whose weight matrices are sequentially semiseparable."""

    structure: ClassVar[str] = "sss"
    family: Literal["sss"] = "sss"
    sizes: Sizes = [256, 256]
    blocks: PositiveInt = Field(
        8, description="K: every SSS layer's fan-in and fan-out must be divisible by K"
    )
    state: PositiveInt = Field(4, description="d, the state dimension")
    activation: Activation = _activation("tanh")
    output: Literal["dense", "sss"] = Field(
        "dense", description="`dense` readout, or `sss` (then output_dim must be divisible by K)"
    )

    def n_structured(self) -> int:
        """The hidden layers, and the readout when ``output == "sss"``."""
        return len(self.sizes) + (1 if self.output == "sss" else 0)

    def check_dims(self, input_dim: int, output_dim: int) -> tuple[int, int]:
        """As the base, and ``blocks`` must divide every SSS layer's fan-in and fan-out."""
        d, c = super().check_dims(input_dim, output_dim)
        widths = [d, *self.sizes, c]
        k = self.blocks
        for i in range(self.n_structured()):
            a, b = widths[i], widths[i + 1]
            if a % k or b % k:
                raise ValueError(
                    f"`blocks` must divide the fan-in and fan-out of every SSS layer; layer {i} "
                    f"is {a} -> {b}. Received: blocks={k}"
                )
        return d, c

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """Per SSS layer ``sss_param_count(K, state, fan_in/K, fan_out/K) + fan_out`` (bias);
        per dense layer ``(fan_in + 1)·fan_out``."""
        k = self.blocks
        total = 0
        for a, b, structured in self.layers(input_dim, output_dim):
            if structured:
                total += sss_param_count(k, self.state, a // k, b // k) + b
            else:
                total += (a + 1) * b
        return total


class Rank1Config(_StructuredConfig):
    """Family `rank1`: hidden layers with rank-1 weights W = u vᵀ (the SSS baseline)."""

    structure: ClassVar[str] = "rank1"
    family: Literal["rank1"] = "rank1"
    sizes: Sizes = [256, 256]
    activation: Activation = _activation("tanh")

    def num_params(self, input_dim: int, output_dim: int) -> int:
        """Per hidden layer ``fan_in + 2·fan_out`` (``v``, ``u``, bias); the readout is dense,
        ``(fan_in + 1)·output_dim``."""
        return sum(
            a + 2 * b if structured else (a + 1) * b
            for a, b, structured in self.layers(input_dim, output_dim)
        )


NetConfig = Annotated[
    MLPConfig
    | ImplicitConfig
    | ImplicitRNNConfig
    | ImplicitAutoencoderConfig
    | SSSConfig
    | Rank1Config,
    Field(discriminator="family"),
]
"""Any family's config, told apart by ``family`` (a pydantic discriminated union)."""

_CLASSES: dict[str, type[NetConfigBase]] = {
    cls.model_fields["family"].default: cls
    for cls in (
        MLPConfig,
        ImplicitConfig,
        ImplicitRNNConfig,
        ImplicitAutoencoderConfig,
        SSSConfig,
        Rank1Config,
    )
}
NET_FAMILIES: tuple[str, ...] = tuple(_CLASSES)
SOLVER_DEFAULTS: dict[str, Any] = {
    k: ImplicitConfig.model_fields[k].default
    for k in ("kappa", "tol", "max_iter", "newton_steps", "on_nonconvergence")
}


def config_class(family: str) -> type[NetConfigBase]:
    """The config model of ``family``.

    Raises:
        NetConfigError: an unknown family.
    """
    if family not in _CLASSES:
        raise NetConfigError(
            f"`family` must be one of {sorted(_CLASSES)}. Received: family={family!r}"
        )
    return _CLASSES[family]


def _field_name(loc: tuple) -> str:
    head, *rest = [str(p) for p in loc] or ["config"]
    return head + "".join(f"[{p}]" for p in rest)


def describe_errors(err: ValidationError, cls: type[NetConfigBase]) -> str:
    """One sentence per problem, naming the field and the value received."""
    family = cls.model_fields["family"].default
    out = []
    for e in err.errors():
        field = _field_name(e.get("loc", ()))
        received = e.get("input")
        if e["type"] == "extra_forbidden":
            known = sorted(k for k in cls.model_fields if k != "family")
            out.append(
                f"unknown config key `{field}` for family {family!r}; known keys: {known}. "
                f"Received: {field}={received!r}"
            )
        elif e["type"] == "value_error":
            out.append(str(e["ctx"]["error"]))
        else:
            out.append(f"`{field}`: {e['msg']}. Received: {field}={received!r}")
    return "; ".join(out)


def parse_net_config(config: Mapping[str, Any] | NetConfigBase, family: str | None = None) -> Any:
    """Validate a net config into its family's model (defaults filled in).

    Args:
        config: ``{"family": <name>, ...}`` (see docs/nets.md), or a config model (returned
            as is).
        family: the expected family; fills ``config["family"]`` when that is missing.

    Returns:
        The family's config model (one of the members of ``NetConfig``).

    Raises:
        NetConfigError: (a ValueError) unknown family, unknown keys or invalid values; the
            message names each field and the value received.
    """
    if isinstance(config, NetConfigBase):
        if family is not None and config.family != family:
            raise NetConfigError(f"`family` must be {family!r}. Received: family={config.family!r}")
        return config
    if not isinstance(config, Mapping):
        raise NetConfigError(f"`config` must be a dict. Received: config={config!r}")
    data = dict(config)
    if family is not None:
        data.setdefault("family", family)
        if data["family"] != family:
            raise NetConfigError(
                f"`family` must be {family!r}. Received: family={data['family']!r}"
            )
    cls = config_class(data.get("family"))  # type: ignore[arg-type]
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise NetConfigError(describe_errors(exc, cls)) from exc


def config_table(cls: type[NetConfigBase]) -> str:
    """The markdown table ``| key | default | meaning |`` of a family (used by docs/nets.md)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, info in cls.model_fields.items():
        if name == "family":
            continue
        default = info.get_default(call_default_factory=True)
        meaning = info.description or ""
        rows.append(f"| `{name}` | `{json.dumps(default)}` | {meaning} |")
    return "\n".join(rows)
