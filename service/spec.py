"""The job spec: one document (YAML or JSON) describing a tuning run.

The same document is accepted by `revhpo tune SPEC` and by the HTTP API. Every model forbids
unknown fields, so a typo fails loudly with the field's name and the value received.
Hyperparameters are given in their natural units (learning rate, momentum decay, weight decay,
init scale); the tuner optimises them in unconstrained form (log α, logit γ, log λ, log scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from revhpo.nets.config import MLPConfig, NetConfig
from revhpo.optimizers.granularity import (
    ALL_GRANULARITIES,
    DEFAULT_KNOTS,
    KNOT_GRANULARITIES,
    check_granularity,
)

__all__ = [
    "CsvDataset",
    "DigitsDataset",
    "HyperparameterSpec",
    "HyperparametersSpec",
    "IdxDataset",
    "JobSpec",
    "LimitsSpec",
    "MetaSpec",
    "NetSpec",
    "NpzDataset",
    "SpecError",
    "SplitSpec",
    "SyntheticDataset",
    "TrainingSpec",
    "UploadedDataset",
    "format_validation_error",
    "json_schema",
    "load_spec",
    "momentum_rounding_problem",
    "rationalize_momentum",
    "spec_warnings",
]

Granularity = Literal[ALL_GRANULARITIES]  # type: ignore[valid-type]  # the table's words

#: Largest relative change of γ, or of 1 − γ, that rounding the momentum to an exact rational
#: ``n/d`` (``d ≤ training.max_denominator``) may make before the spec is refused.
MOMENTUM_ROUNDING_RTOL = 0.01
#: Below this many fractional bits the spec loader warns about the fixed-point rounding.
FRAC_BITS_WARN_BELOW = 32
#: The engine's largest supported denominator (``revhpo.precise.rational``).
_MAX_SUPPORTED_DENOMINATOR = 2**24


class SpecError(ValueError):
    """A job spec that cannot be read or validated; the message names the field and value."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- datasets
class SplitSpec(_Model):
    """Deterministic train/validation/test split drawn from a seed.

    Each of ``train``, ``val``, ``test`` is either a count of examples (an integer ≥ 1) or a
    fraction of the dataset (a number in (0, 1)). Counts and fractions may be mixed; together
    they must not exceed the dataset.
    """

    train: int | float = Field(1000, gt=0, description="training examples (count, or fraction < 1)")
    val: int | float = Field(397, gt=0, description="validation examples (count, or fraction < 1)")
    test: int | float = Field(400, gt=0, description="test examples (count, or fraction < 1)")
    seed: int = Field(0, ge=0, description="seed of the permutation that makes the split")

    @field_validator("train", "val", "test")
    @classmethod
    def _count_or_fraction(cls, v: int | float) -> int | float:
        if v >= 1 and v != int(v):
            raise ValueError(
                f"must be an integer count ≥ 1 or a fraction in (0, 1). Received: {v!r}"
            )
        return v


class _DatasetBase(_Model):
    split: SplitSpec = Field(default_factory=SplitSpec, description="train/val/test split")
    standardize: bool = Field(
        True, description="subtract the training mean and divide by the training std per feature"
    )


class DigitsDataset(_DatasetBase):
    """scikit-learn's 8×8 digits (1,797 images, 10 classes); the data ships with the package."""

    kind: Literal["digits"] = "digits"


class SyntheticDataset(_DatasetBase):
    """A synthetic classification task generated from a seed (no files)."""

    kind: Literal["synthetic"] = "synthetic"
    task: Literal["blobs", "xor", "spirals"] = Field("blobs", description="which generator")
    n_samples: int = Field(1200, ge=10, le=1_000_000)
    n_features: int = Field(16, ge=2, le=100_000, description="input dimension")
    n_classes: int = Field(4, ge=2, le=1000, description="classes (xor: always 2)")
    noise: float = Field(1.0, ge=0, description="noise scale")
    seed: int = Field(0, ge=0, description="seed of the generator")
    split: SplitSpec = Field(default_factory=lambda: SplitSpec(train=0.6, val=0.2, test=0.2))


class NpzDataset(_DatasetBase):
    """A NumPy ``.npz`` file with a feature array and an integer label array."""

    kind: Literal["npz"] = "npz"
    path: str = Field(..., min_length=1, description="path of the .npz file")
    x_key: str = Field("x", description="name of the feature array ([n, ...], flattened)")
    y_key: str = Field("y", description="name of the label array ([n])")


class CsvDataset(_DatasetBase):
    """A ``.csv`` file: one example per row, numeric features and one label column."""

    kind: Literal["csv"] = "csv"
    path: str = Field(..., min_length=1, description="path of the .csv file")
    label_column: str | int = Field(
        -1, description="label column: its header name, or its index (negative from the end)"
    )
    header: bool = Field(True, description="whether the first row holds column names")
    delimiter: str = Field(",", min_length=1, max_length=1)


class IdxDataset(_DatasetBase):
    """MNIST-format IDX files (optionally gzipped): an image file and a label file."""

    kind: Literal["idx"] = "idx"
    images: str = Field(..., min_length=1, description="path of the IDX image file")
    labels: str = Field(..., min_length=1, description="path of the IDX label file")
    scale: float = Field(1 / 255, gt=0, description="multiplier applied to the raw pixels")


class UploadedDataset(_DatasetBase):
    """A dataset uploaded to the service, referenced by its id (resolved under dataset_dir)."""

    kind: Literal["uploaded"] = "uploaded"
    id: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the dataset id")
    label_column: str | int = Field(-1, description="label column, when the upload is a .csv")


DatasetSpec = Annotated[
    DigitsDataset | SyntheticDataset | NpzDataset | CsvDataset | IdxDataset | UploadedDataset,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------- net, training
NetSpec = NetConfig
"""The net section: one typed model per family (``revhpo.nets.config``), told apart by
``family``. Unknown keys and invalid values are refused when the spec is loaded, naming the
field (``net.mlp.activaton: Extra inputs are not permitted``); ``spec.net.config()`` is the
dict handed to ``nets.build_net`` and ``spec.net.num_params(d, c)`` the exact parameter count.
"""


class TrainingSpec(_Model):
    """The inner training run: SGD with momentum for ``steps`` steps."""

    steps: int = Field(100, ge=1, le=100_000, description="training steps T")
    batch_size: int = Field(50, ge=1, le=1_000_000, description="minibatch size")
    dtype: Literal["float32", "float64"] = Field(
        "float64", description="dtype the net is evaluated in (weights are exact fixed point)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="base training seed (init + minibatches)")
    frac_bits: int = Field(52, ge=16, le=60, description="fractional bits of the fixed point")
    max_denominator: int = Field(
        2**16, ge=2, le=2**24, description="largest denominator of the rational momentum decays"
    )


# ----------------------------------------------------------------------------- hyperparameters
class HyperparameterSpec(_Model):
    """One hyperparameter group: its initial value, whether it is tuned, and its granularity."""

    init: float = Field(..., description="initial value in natural units")
    tune: bool = Field(False, description="tune it by hypergradient descent")
    granularity: Granularity = Field(
        "scalar",
        description="how many independent values: scalar; knots / per_layer_knots (a schedule "
        "given at `knots` evenly spaced steps, linear in between; shared by the layers or one "
        "per layer); per_step; per_layer; per_layer_per_step; per_weight (weight decay only)",
    )
    knots: int = Field(
        DEFAULT_KNOTS,
        ge=1,
        le=10_000,
        description="knots of a knots / per_layer_knots schedule (1: constant in time; at most "
        "training.steps)",
    )


def _hp(init: float, tune: bool, granularity: str) -> Any:
    return Field(
        default_factory=lambda: HyperparameterSpec(init=init, tune=tune, granularity=granularity)
    )


class HyperparametersSpec(_Model):
    """The four groups. Tuned in unconstrained form: log α, logit γ, log λ, log scale.

    The default tunes a learning-rate and a momentum schedule per layer, each given at
    ``knots`` points in time (a few values that many steps share: low-noise hypergradients).
    """

    learning_rate: HyperparameterSpec = _hp(0.3, True, "per_layer_knots")
    momentum: HyperparameterSpec = _hp(0.9, True, "per_layer_knots")
    weight_decay: HyperparameterSpec = _hp(1e-4, False, "scalar")
    init_scale: HyperparameterSpec = _hp(1.0, False, "per_layer")

    @field_validator("learning_rate", "momentum", "weight_decay", "init_scale")
    @classmethod
    def _check_group(cls, hp: HyperparameterSpec, info: ValidationInfo) -> HyperparameterSpec:
        name = info.field_name
        check_granularity(name, hp.granularity)
        v = hp.init
        ok, what = {
            "learning_rate": (v > 0, "> 0"),
            "momentum": (0 < v < 1, "in (0, 1)"),
            "init_scale": (v > 0, "> 0"),
            "weight_decay": (
                v > 0 if hp.tune else v >= 0,
                "> 0 when tuned (it is tuned as log λ), ≥ 0 otherwise",
            ),
        }[name]
        if not ok or not math.isfinite(v):
            raise ValueError(f"`init` of {name} must be {what}. Received: init={v!r}")
        return hp


# ----------------------------------------------------------------------------- meta, limits
class MetaSpec(_Model):
    """The outer loop: gradient descent on the unconstrained hyperparameters."""

    iterations: int = Field(
        20, ge=0, le=100_000, description="meta-iterations (at most; see patience)"
    )
    optimizer: Literal["adam", "sgd", "snr"] = Field(
        "adam",
        description="meta-optimizer on the raw values: adam; sgd (heavy-ball); snr (each value "
        "moves by at most step_size, less the noisier its hypergradient is across the "
        "iteration's seeds)",
    )
    step_size: float = Field(
        0.1, gt=0, le=100, description="meta step size (Adam: about the change of log α per step)"
    )
    step_decay: Literal["none", "cosine"] = Field(
        "cosine",
        description="cosine: the step size falls from step_size to a tenth of it over the "
        "meta-iterations; none: constant",
    )
    seeds_per_iteration: int = Field(
        4,
        ge=1,
        le=64,
        description="training seeds each hypergradient is averaged over (lower variance, "
        "proportionally more compute)",
    )
    start: Literal["coarse", "init"] = Field(
        "coarse",
        description="coarse: first train a small grid of constant (α, γ) around the init "
        "values (each on coarse_seeds selection seeds, the best 4 then on all of them) and "
        "descend from the best; init: descend from the init values",
    )
    select_fraction: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="part of the validation set kept out of the hypergradient and used only "
        "to select the returned iterate (0: select on the whole validation set)",
    )
    select_seeds: int = Field(
        20,
        ge=1,
        le=100,
        description="held-out training seeds the selection estimate averages over (never "
        "used by a hypergradient nor by the final evaluation)",
    )
    coarse_seeds: int = Field(
        3,
        ge=1,
        le=100,
        description="how many of the selection seeds each point of the coarse start trains on",
    )
    patience: int = Field(
        8,
        ge=0,
        le=100_000,
        description="stop when the selection estimate has not improved for this many "
        "meta-iterations (0: run every iteration)",
    )
    backtrack_tol: float = Field(
        0.1,
        gt=0,
        description="when an iterate's selection estimate is worse than the best one's by "
        "more than this fraction, return to the best iterate and halve the meta step",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD meta-momentum (sgd only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam β1")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam β2")
    objective: Literal["val_loss"] = Field("val_loss", description="what is minimised")
    clip_norm: float | None = Field(
        10.0, gt=0, description="clip the meta-gradient to this global norm (null: no clipping)"
    )
    on_divergence: Literal["stop", "backtrack"] = Field(
        "backtrack",
        description="on a diverged training run (NaN/Inf, fixed-point overflow) or a "
        "non-finite hypergradient: stop, or restore the previous hyperparameters, halve the "
        "meta step size and go on (up to max_backtracks times, then stop)",
    )
    max_backtracks: int = Field(5, ge=0, le=100)
    fresh_seed: bool = Field(
        True,
        description="draw a fresh training seed (init + minibatches) every meta-iteration; "
        "with false every meta-iteration trains with training.seed and the hyperparameters "
        "overfit that one seed",
    )
    eval_seeds: int = Field(
        5, ge=0, le=1000, description="held-out training seeds for the final evaluation"
    )


class LimitsSpec(_Model):
    """Guards that keep one job from exhausting a worker."""

    max_params_x_steps: int = Field(
        200_000_000, ge=1, description="largest (net parameters × training steps) accepted"
    )
    max_wall_time_s: float | None = Field(
        3600.0, gt=0, description="stop (status 'stopped') once tuning has run this long"
    )
    max_hyperparameters: int = Field(10_000_000, ge=1, description="largest tuned count")


class JobSpec(_Model):
    """A tuning job: data, model, inner training, hyperparameters, outer loop and limits."""

    version: Literal[1] = Field(1, description="spec format version")
    name: str = Field("tuning", max_length=200, description="free-form job name")
    dataset: DatasetSpec = Field(default_factory=DigitsDataset)
    net: NetSpec = Field(
        default_factory=lambda: MLPConfig(family="mlp", sizes=[50, 50], activation="tanh"),
        description="the model: a family and its keys (see docs/nets.md)",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    meta: MetaSpec = Field(default_factory=MetaSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard event files (validation and selection losses per "
        "meta-iteration, the returned schedules per layer, training curves); a job's event "
        "file is one of its artifacts",
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _default_kind(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and "kind" not in v:
            return {**v, "kind": "digits"}
        return v

    @field_validator("hyperparameters")
    @classmethod
    def _momentum_representable(
        cls, hp: HyperparametersSpec, info: ValidationInfo
    ) -> HyperparametersSpec:
        """Refuse a momentum init that the exact rational rounding changes noticeably.

        Every entry of the momentum starts at ``init`` (tuned or not), and the engine applies it
        as ``n/d`` with ``d ≤ training.max_denominator``; a γ that rounds to 1 freezes training.
        """
        training = info.data.get("training")  # absent when `training` itself is invalid
        if training is not None:
            problem = momentum_rounding_problem(hp.momentum.init, training.max_denominator)
            if problem:
                raise ValueError(problem)
            for name in ("learning_rate", "momentum"):
                g = getattr(hp, name)
                if g.granularity in KNOT_GRANULARITIES and g.knots > training.steps:
                    raise ValueError(
                        f"{name}.knots must be at most training.steps={training.steps}. "
                        f"Received: knots={g.knots}"
                    )
        return hp


# ----------------------------------------------------------------------------- numerics checks
def rationalize_momentum(rate: float, max_denominator: int) -> tuple[int, int]:
    """``(n, d)``: the rational ``revhpo.precise.rationalize(rate, max_denominator)`` applies.

    The same rounding without TensorFlow (``revhpo.precise`` imports it; this module must
    not): the closest fraction with ``d ≤ max_denominator``, and ``1/max_denominator`` when
    that closest fraction is 0. The tests compare the two over many values.
    """
    frac = Fraction(float(rate)).limit_denominator(int(max_denominator))
    if frac.numerator == 0:
        frac = Fraction(1, int(max_denominator))
    return frac.numerator, frac.denominator


def _rounding_errors(gamma: float, max_denominator: int) -> tuple[int, int, float, float]:
    """``(n, d, relative change of γ, relative change of 1 − γ)``."""
    n, d = rationalize_momentum(gamma, max_denominator)
    err = abs(Fraction(n, d) - Fraction(gamma))
    return n, d, float(err / Fraction(gamma)), float(err / (1 - Fraction(gamma)))


def momentum_rounding_problem(gamma: float, max_denominator: int) -> str | None:
    """Why momentum ``gamma`` cannot be applied faithfully with ``max_denominator``, or None.

    Refused: γ rounds to 1 (``1 − γ = 0``: the gradient never enters the velocity and the
    weights never move), or rounding changes γ or ``1 − γ`` (the weight of each gradient in
    the velocity) by more than :data:`MOMENTUM_ROUNDING_RTOL`.
    """
    if not (math.isfinite(gamma) and 0 < gamma < 1):
        return None  # the group's own validation names it
    n, d, rel_g, rel_1mg = _rounding_errors(gamma, max_denominator)
    if n != d and max(rel_g, rel_1mg) <= MOMENTUM_ROUNDING_RTOL:
        return None
    fix = _smallest_denominator(gamma)
    advice = (
        f"raise training.max_denominator to at least {fix}"
        if fix is not None
        else "no training.max_denominator up to 2**24 applies it within "
        f"{MOMENTUM_ROUNDING_RTOL:.0%}"
    ) + " or choose another momentum init"
    received = (
        f"Received: hyperparameters.momentum.init={gamma!r}, "
        f"training.max_denominator={max_denominator}"
    )
    if n == d:
        return (
            f"hyperparameters.momentum.init={gamma!r} rounds to the exact rational {n}/{d} = 1 "
            f"with training.max_denominator={max_denominator} (every γ above "
            f"1 − 1/(2·max_denominator) = {1 - 1 / (2 * max_denominator):.10g} does): "
            "1 − γ = 0, so no gradient ever enters the velocity and training does not move; "
            f"{advice}. {received}"
        )
    return (
        f"hyperparameters.momentum.init={gamma!r} is applied as the exact rational {n}/{d} = "
        f"{n / d:.10g} with training.max_denominator={max_denominator}: γ changes by "
        f"{_pct(rel_g)} and 1 − γ (the weight of each gradient in the velocity) by "
        f"{_pct(rel_1mg)}, more than the {MOMENTUM_ROUNDING_RTOL:.0%} allowed; {advice}. "
        f"{received}"
    )


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _smallest_denominator(gamma: float) -> int | None:
    """The smallest power of two bound that applies ``gamma`` within the tolerance (the
    rounding error never grows with the bound: the candidate fractions only grow)."""
    for k in range(1, _MAX_SUPPORTED_DENOMINATOR.bit_length()):
        n, d, rel_g, rel_1mg = _rounding_errors(gamma, 2**k)
        if n != d and max(rel_g, rel_1mg) <= MOMENTUM_ROUNDING_RTOL:
            return 2**k
    return None


def spec_warnings(spec: JobSpec) -> list[str]:
    """Warnings about a valid spec that the user should see (``revhpo tune`` prints them).

    Today: ``training.frac_bits`` below 32, with the expected size of the rounding effect.
    """
    out = []
    fb, steps = spec.training.frac_bits, spec.training.steps
    if fb < FRAC_BITS_WARN_BELOW:
        unit = 2.0**-fb
        out.append(
            f"training.frac_bits={fb}: the weights and velocities are rounded to multiples of "
            f"2^-{fb} ≈ {unit:.1e} at every step: a rounding error of about {unit:.1e} "
            f"relative to the weights' scale per step (for weights of order 1; more for smaller "
            f"ones), up to ~{unit * steps:.1e} over training.steps={steps}. The exact "
            "hypergradients are those of this rounded training and can differ from float "
            "training's by ~0.1-1% (measured at 16 bits). Use frac_bits ≥ "
            f"{FRAC_BITS_WARN_BELOW} (default 52) unless that is intended."
        )
    return out


# ----------------------------------------------------------------------------- loading
def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``field.path: message (received: value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ())) or "(spec)"
        value = e.get("input")
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{loc}: {e['msg']} (received: {shown})")
    return "\n".join(lines)


def load_spec(source: str | Path | Mapping[str, Any] | JobSpec) -> JobSpec:
    """Read and validate a job spec.

    Args:
        source: a path to a ``.yaml``/``.yml``/``.json`` file, the YAML or JSON text itself, a
            mapping, or an existing :class:`JobSpec`.

    Returns:
        The validated :class:`JobSpec`.

    Raises:
        SpecError: the file cannot be read, the text does not parse, or validation fails; the
            message names each offending field and the value received.
    """
    if isinstance(source, JobSpec):
        return source
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        text = None
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and not source.lstrip().startswith("{")
        ):
            path = Path(source)
            if not path.is_file():
                raise SpecError(f"spec file not found. Received: path={str(source)!r}")
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise SpecError(f"spec is neither valid YAML nor JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise SpecError(
            f"spec must be a mapping (an object). Received: {type(data).__name__} {data!r:.80}"
        )
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError("invalid job spec:\n" + format_validation_error(exc)) from exc


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of :class:`JobSpec`."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "revhpo job spec"
    return schema
