"""Implicit families: ``"implicit"``, ``"implicit_rnn"`` and ``"implicit_autoencoder"``.

An implicit layer's state solves the fixed-point equation ``X = φ(X Aᵀ + U Bᵀ + b)`` (one row
per example). Two things make it usable inside exactly reversible training:

* **Well-posedness by parametrisation.** ``A = W · min(1, κ/‖W‖∞)`` (``κ < 1``) for every raw
  ``W``, so ``X ↦ φ(X Aᵀ + c)`` is a κ-contraction in the ∞-norm for every 1-Lipschitz φ: the
  fixed point exists, is unique and Picard iteration converges at rate ≤ κ. No projection step.
* **Exact first and second derivatives.** The fixed point is found by Picard iteration outside
  autodiff (``stop_gradient``) and then *re-attached* by ``newton_steps`` differentiable Newton
  steps ``X ← X − J⁻¹(X − φ(Z))``, ``J = I − diag(φ′(Z)) A`` (one batched dense solve per
  step). Let ``N(X, θ)`` be the Newton map. At the fixed point ``∂N/∂X = 0``, hence

  - one step gives ``dX/dθ = ∂N/∂θ``, the implicit-function-theorem derivative (exact
    gradient), but its second derivative misses ``−N_XX[X′, X′]`` (wrong Hessian-vector
    products);
  - two steps give ``d²X/dθ² = N_XX[X′,X′] + 2 N_Xθ[X′] + N_θθ`` exactly as differentiating
    ``X* = N(X*, θ)`` twice does (the ``N_X X″`` term vanishes), so gradients *and* HVPs are
    exact up to the solver tolerance.

  Cost: each Newton step forms ``[batch, n, n]`` Jacobians and solves them (``O(batch·n³)``),
  which bounds this method to a few hundred states per implicit layer.
"""

from __future__ import annotations

import abc
import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from revhpo.nets.base import (
    Net,
    ParamSpec,
    activation_derivative,
    activation_fn,
    register_family,
)
from revhpo.nets.config import (  # noqa: F401 (SOLVER_DEFAULTS and the widths re-exported)
    SOLVER_DEFAULTS,
    ImplicitAutoencoderConfig,
    ImplicitConfig,
    ImplicitRNNConfig,
    NetConfigBase,
    autoencoder_widths,
    default_time_steps,
)
from revhpo.nets.mlp import dense


class ConvergenceError(RuntimeError):
    """The fixed-point iteration did not reach its tolerance within ``max_iter`` iterations."""


def inf_norm(w: tf.Tensor) -> tf.Tensor:
    """The induced ∞-norm ``max_i Σ_j |W_ij|`` (largest absolute row sum)."""
    return tf.reduce_max(tf.reduce_sum(tf.abs(w), axis=-1))


def well_posed(w: tf.Tensor, kappa: float) -> tf.Tensor:
    """``A = W · min(1, κ/‖W‖∞)``: ``‖A‖∞ ≤ κ`` for every ``W``; ``A = W`` when ``‖W‖∞ ≤ κ``.

    Written as ``W · κ / max(‖W‖∞, κ)`` so that ``W = 0`` has a finite derivative. Smooth
    wherever the maximising row is unique and no entry of that row is zero (almost everywhere).
    """
    kappa_t = tf.constant(kappa, w.dtype)
    return w * (kappa_t / tf.maximum(inf_norm(w), kappa_t))


def well_posed_lowrank(left: tf.Tensor, right: tf.Tensor, kappa: float) -> tf.Tensor:
    """``A = L Rᵀ · min(1, κ/‖L Rᵀ‖∞)`` (the bound is κ, on the product itself)."""
    return well_posed(tf.matmul(left, right, transpose_b=True), kappa)


def _picard_impl(
    a: tf.Tensor, inj: tf.Tensor, activation: str, tol: float, max_iter: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Picard iteration ``X ← φ(X Aᵀ + inj)`` from ``X = 0`` until the relative change
    ``‖ΔX‖∞ / max(1, ‖X‖∞)`` is ≤ tol or ``max_iter`` iterations. Returns (X, iterations, change).
    """
    phi = activation_fn(activation)
    x0 = phi(inj)
    one = tf.constant(1.0, inj.dtype)

    def cond(i, x, change):
        return tf.logical_and(i < max_iter, change > tol)

    def body(i, x, change):
        xn = phi(tf.matmul(x, a, transpose_b=True) + inj)
        scale = tf.maximum(one, tf.reduce_max(tf.abs(xn)))
        return i + 1, xn, tf.reduce_max(tf.abs(xn - x)) / scale

    inf = tf.constant(math.inf, inj.dtype)
    i, x, change = tf.while_loop(cond, body, (tf.constant(1), x0, inf))
    return x, i, change


_picard = tf.function(_picard_impl, reduce_retracing=True, autograph=False)


def newton_step(x: tf.Tensor, a: tf.Tensor, inj: tf.Tensor, activation: str) -> tf.Tensor:
    """One Newton step on ``F(X) = X − φ(X Aᵀ + inj) = 0``, row by row:
    ``x ← x − J⁻¹ F(x)`` with ``J = I − diag(φ′(z)) A``, a batched dense solve (differentiable
    twice). Computed as ``x ← J⁻¹(φ(z) − φ′(z) ⊙ (A x))`` (the same value: ``J x − F(x)``),
    which reads ``x`` once, so no gradient here is a sum of three or more terms whose order a
    graph rewrite could change.
    """
    phi = activation_fn(activation)
    ax = tf.matmul(x, a, transpose_b=True)
    z = ax + inj
    dphi = activation_derivative(activation, z)
    n = a.shape[-1]
    jac = tf.eye(n, dtype=a.dtype)[None] - dphi[:, :, None] * a[None]
    return tf.linalg.solve(jac, (phi(z) - dphi * ax)[:, :, None])[:, :, 0]


@dataclass(frozen=True)
class EquilibriumSolver:
    """Solve ``X = φ(X Aᵀ + inj)`` (``‖A‖∞ < 1``) with exact first and second derivatives.

    Attributes:
        activation: φ, one of ``ACTIVATIONS``.
        tol: relative ∞-norm change at which Picard iteration stops (raised to 64 machine
            epsilons for float32).
        max_iter: Picard iteration cap.
        newton_steps: differentiable Newton steps that re-attach the fixed point to the graph
            (2: exact gradient and HVP; 1: exact gradient only; 0: no derivative through X).
        on_nonconvergence: ``"warn"`` (Python warning when eager, a message on stderr inside
            ``tf.function``), ``"raise"`` (``ConvergenceError`` when eager,
            ``tf.errors.InvalidArgumentError`` inside ``tf.function``) or ``"ignore"``.
    """

    activation: str
    tol: float = 1e-10
    max_iter: int = 3000
    newton_steps: int = 2
    on_nonconvergence: str = "warn"

    def effective_tol(self, dtype: tf.DType) -> float:
        """The tolerance actually used for ``dtype``."""
        return max(self.tol, 64.0 * _eps(dtype))

    def picard(self, a: tf.Tensor, inj: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The stop-gradient Picard phase: ``(X, iterations, last relative change)``."""
        tol = self.effective_tol(inj.dtype)
        # Eagerly, a compiled loop; inside a graph, the loop inline (no nested function to
        # re-trace for every derivative the caller takes).
        fn = _picard if tf.executing_eagerly() else _picard_impl
        return fn(tf.stop_gradient(a), tf.stop_gradient(inj), self.activation, tol, self.max_iter)

    def __call__(self, a: tf.Tensor, inj: tf.Tensor) -> tf.Tensor:
        """The equilibrium ``X`` ``[batch, n]`` for ``A`` ``[n, n]`` and ``inj`` ``[batch, n]``."""
        x, iters, change = self.picard(a, inj)
        self._report(iters, change, self.effective_tol(inj.dtype))
        x = tf.stop_gradient(x)
        for _ in range(self.newton_steps):
            x = newton_step(x, a, inj, self.activation)
        return x

    def _report(self, iters: tf.Tensor, change: tf.Tensor, tol: float) -> None:
        if self.on_nonconvergence == "ignore":
            return
        msg = (
            f"implicit layer: fixed-point iteration did not converge to tol={tol:g} "
            f"within max_iter={self.max_iter} iterations"
        )
        if tf.executing_eagerly():
            if float(change) > tol:
                if self.on_nonconvergence == "raise":
                    raise ConvergenceError(f"{msg}; last relative change {float(change):.3g}")
                warnings.warn(f"{msg}; last relative change {float(change):.3g}", stacklevel=3)
            return
        if self.on_nonconvergence == "raise":
            tf.debugging.assert_less_equal(change, tf.constant(tol, change.dtype), message=msg)
        else:

            def _warn() -> tf.Tensor:
                tf.print(msg, "; last relative change", change, output_stream=sys.stderr)
                return tf.constant(0)

            tf.cond(change > tol, _warn, lambda: tf.constant(0))


def _eps(dtype: tf.DType) -> float:
    return {tf.float64: 2.0**-52, tf.float32: 2.0**-23, tf.float16: 2.0**-10}.get(dtype, 2.0**-23)


def solver_from_config(
    cfg: ImplicitConfig | ImplicitRNNConfig | ImplicitAutoencoderConfig,
) -> EquilibriumSolver:
    """The solver of a validated implicit config (its ``activation`` and solver keys)."""
    return EquilibriumSolver(
        activation=cfg.activation,
        tol=cfg.tol,
        max_iter=cfg.max_iter,
        newton_steps=cfg.newton_steps,
        on_nonconvergence=cfg.on_nonconvergence,
    )


class _ImplicitNet(Net):
    """What the implicit families share: ``__init__`` validates the config and builds its
    equilibrium solver (``self.solver``), then ``_build`` makes the parameters."""

    def __init__(
        self, cfg: NetConfigBase | Mapping[str, Any], input_dim: int, output_dim: int
    ) -> None:
        super().__init__(input_dim, output_dim)
        c = self.take_config(cfg)
        self.solver = solver_from_config(c)
        self._build(c)

    @abc.abstractmethod
    def _build(self, c: Any) -> None:
        """Fill ``_specs`` and ``_layer_names`` from the validated config ``c``."""


class _ImplicitCore:
    """The parameters and map of one implicit model ``u ↦ C X + D u + c``, ``X = φ(A X + B u + b)``.

    Parameter order: ``W`` (or ``L``, ``R``), ``B``, [``b``], ``C``, ``D``, [``c``].
    """

    def __init__(
        self,
        prefix: str,
        n: int,
        p: int,
        q: int,
        rank: int | None,
        bias: bool,
        layer0: int,
        solver: EquilibriumSolver,
        kappa: float,
    ) -> None:
        self.n, self.p, self.q, self.rank, self.bias = n, p, q, rank, bias
        self.solver, self.kappa = solver, kappa
        s = []
        if rank is None:
            s.append(ParamSpec(f"{prefix}/W", (n, n), layer0, 1.0 / math.sqrt(n)))
        else:
            s.append(ParamSpec(f"{prefix}/L", (n, rank), layer0, 1.0 / math.sqrt(n)))
            s.append(ParamSpec(f"{prefix}/R", (n, rank), layer0, 1.0 / math.sqrt(rank)))
        s.append(ParamSpec(f"{prefix}/B", (n, p), layer0 + 1, 1.0 / math.sqrt(p)))
        if bias:
            s.append(ParamSpec(f"{prefix}/b", (n,), layer0 + 1, 0.0))
        s.append(ParamSpec(f"{prefix}/C", (q, n), layer0 + 2, 1.0 / math.sqrt(n)))
        s.append(ParamSpec(f"{prefix}/D", (q, p), layer0 + 2, 1.0 / math.sqrt(p)))
        if bias:
            s.append(ParamSpec(f"{prefix}/c", (q,), layer0 + 2, 0.0))
        self.specs = s

    def unpack(self, params: Sequence[tf.Tensor]) -> dict[str, tf.Tensor | None]:
        it = iter(params)
        out: dict[str, tf.Tensor | None] = {}
        if self.rank is None:
            out["A"] = well_posed(next(it), self.kappa)
        else:
            left, right = next(it), next(it)
            out["A"] = well_posed_lowrank(left, right, self.kappa)
        out["B"] = next(it)
        out["b"] = next(it) if self.bias else None
        out["C"] = next(it)
        out["D"] = next(it)
        out["c"] = next(it) if self.bias else None
        return out

    def state(self, m: dict[str, tf.Tensor | None], u: tf.Tensor) -> tf.Tensor:
        inj = tf.matmul(u, m["B"], transpose_b=True)
        if m["b"] is not None:
            inj = inj + m["b"]
        return self.solver(m["A"], inj)

    def __call__(self, params: Sequence[tf.Tensor], u: tf.Tensor) -> tf.Tensor:
        m = self.unpack(params)
        x = self.state(m, u)
        y = tf.matmul(x, m["C"], transpose_b=True) + tf.matmul(u, m["D"], transpose_b=True)
        return y if m["c"] is None else y + m["c"]


@register_family
class ImplicitModel(_ImplicitNet):
    """Family ``"implicit"``: ``X = φ(A X + B U + b)``, ``Ŷ = C X + D U + c`` (El Ghaoui et al.).

    Config keys (defaults): ``n`` (64) hidden states; ``activation`` ("relu"); ``rank`` (None:
    full ``A = well_posed(W)``; an int r: ``A = well_posed(L Rᵀ)``); ``bias`` (True);
    ``kappa`` (0.95) the ∞-norm bound of A; solver keys ``tol`` (1e-10), ``max_iter`` (3000),
    ``newton_steps`` (2), ``on_nonconvergence`` ("warn") (``nets.config.ImplicitConfig``).
    Layers: ``A`` (W or L, R), ``B`` (B, b), ``readout`` (C, D, c).
    """

    family = "implicit"
    config_class = ImplicitConfig

    def _build(self, c: ImplicitConfig) -> None:
        self.core = _ImplicitCore(
            "implicit", c.n, self.input_dim, self.output_dim, c.rank, c.bias, 0, self.solver,
            c.kappa,
        )  # fmt: skip
        self._specs = list(self.core.specs)
        self._layer_names = ["A", "B", "readout"]
        self._initial: list[tf.Tensor] | None = None

    def set_initial_params(self, params: Sequence[tf.Tensor]) -> None:
        """Make ``init_params`` return ``params`` for every seed (SIM's weights: see
        ``revhpo.nets.sim.initialise``); they are kept as float64."""
        self._initial = [tf.cast(p, tf.float64) for p in self.check_params(params)]

    def init_params(self, seed: int, dtype: tf.DType = tf.float64) -> list[tf.Tensor]:
        """As ``Net.init_params``; with ``init.sim`` in the config, the weights set by
        ``set_initial_params`` (the same for every seed).

        Raises:
            ValueError: the config asks for SIM weights and none were set.
        """
        if self._initial is None and self._config.get("init") is not None:
            raise ValueError(
                "this implicit net's config has `init.sim`: its initial weights come from SIM "
                "on the training data; call revhpo.nets.sim.initialise(net, x_train, y_train) "
                "first (the tuning path does)"
            )
        if self._initial is None:
            return super().init_params(seed, dtype)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        return [tf.cast(p, dtype) for p in self._initial]

    def well_posed_A(self, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """The matrix ``A`` that ``params`` define (``‖A‖∞ ≤ kappa``)."""
        return self.core.unpack(self.check_params(params))["A"]

    def state(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The equilibrium state ``X`` ``[batch, n]``."""
        params = self.check_params(params)
        return self.core.state(self.core.unpack(params), self.check_inputs(x, params))

    def solve_info(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> dict[str, float]:
        """Picard statistics for ``x``: ``{"iterations", "change"}`` (no Newton steps)."""
        params = self.check_params(params)
        m = self.core.unpack(params)
        u = self.check_inputs(x, params)
        inj = tf.matmul(u, m["B"], transpose_b=True) + (0.0 if m["b"] is None else m["b"])
        _, iters, change = self.solver.picard(m["A"], inj)
        return {"iterations": int(iters), "change": float(change)}

    @tf.autograph.experimental.do_not_convert
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Logits ``Ŷ`` ``[batch, output_dim]`` of ``x`` ``[batch, input_dim]``."""
        params = self.check_params(params)
        return self.core(params, self.check_inputs(x, params))


@register_family
class ImplicitRNN(_ImplicitNet):
    """Family ``"implicit_rnn"``: ``h_t = Implicit([x_t; h_{t−1}])``, ``y = Linear(h_T)``.

    The flat input ``[batch, input_dim]`` is read as ``time_steps`` steps of
    ``input_dim / time_steps`` features (``[batch, time, features]`` is accepted too).

    Config keys (defaults): ``hidden`` (16) the recurrent state h; ``n`` (32) implicit states
    per cell; ``time_steps`` (None: ``default_time_steps(input_dim)``, 8 for 64 inputs);
    ``activation`` ("tanh"), ``rank``, ``bias``, ``kappa`` and solver keys as ``"implicit"``
    (``nets.config.ImplicitRNNConfig``). Layers: ``cell/A``, ``cell/B``, ``cell/readout``,
    ``readout``.
    """

    family = "implicit_rnn"
    config_class = ImplicitRNNConfig

    def _build(self, c: ImplicitRNNConfig) -> None:
        self.time_steps, self.features = c.steps_and_features(self.input_dim)
        h = c.hidden
        self.cell = _ImplicitCore(
            "cell", c.n, self.features + h, h, c.rank, c.bias, 0, self.solver, c.kappa
        )
        self._specs = list(self.cell.specs)
        self._specs.append(ParamSpec("readout/kernel", (h, self.output_dim), 3, 1 / math.sqrt(h)))
        self._specs.append(ParamSpec("readout/bias", (self.output_dim,), 3, 0.0))
        self._layer_names = ["cell/A", "cell/B", "cell/readout", "readout"]

    @tf.autograph.experimental.do_not_convert
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Logits ``[batch, output_dim]`` of ``x`` ``[batch, input_dim]`` or
        ``[batch, time_steps, features]``."""
        params = self.check_params(params)
        x = tf.convert_to_tensor(x)
        if x.shape.rank == 3:
            if tuple(x.shape[1:]) != (self.time_steps, self.features):
                raise ValueError(
                    f"`x` must have shape [batch, {self.time_steps}, {self.features}]. "
                    f"Received: shape={tuple(x.shape)}"
                )
            x = tf.reshape(x, [-1, self.input_dim])
        x = self.check_inputs(x, params)
        seq = tf.reshape(x, [-1, self.time_steps, self.features])
        cell_params, (kernel, bias) = params[:-2], params[-2:]
        h = tf.zeros([tf.shape(x)[0], self._config["hidden"]], x.dtype)
        for t in range(self.time_steps):
            h = self.cell(cell_params, tf.concat([seq[:, t], h], axis=1))
        return dense(h, kernel, bias)


@register_family
class ImplicitAutoencoder(_ImplicitNet):
    """Family ``"implicit_autoencoder"``: the (hidden_layer_num; start_layer; latent_num) family.

    Encoder: ``hidden_layer_num`` dense layers (widths from ``start_layer`` linearly towards
    ``latent_num``), then the latent layer of ``latent_num`` units, then the mirrored decoder
    and a linear reconstruction of the input (``task == "reconstruction"``).

    * ``version="v0"``: feed-forward, ``z = φ(h W + b)``. As an implicit model its ``A`` is
      strictly block-triangular (nilpotent), so it is evaluated directly.
    * ``version="v1"``: all-to-all connections among the latent units,
      ``z = φ(A z + h W + b)`` with ``A = well_posed(A_raw)`` (``‖A‖∞ ≤ kappa``): the whole net
      is then a genuinely implicit model (its other blocks stay triangular, so it is
      well-posed exactly when the latent block is), solved like ``"implicit"``.

    Config keys (defaults): ``hidden_layer_num`` (1), ``start_layer`` (32), ``latent_num`` (8),
    ``version`` ("v1"), ``activation`` ("tanh"), ``kappa`` and solver keys as ``"implicit"``
    (``nets.config.ImplicitAutoencoderConfig``).
    """

    family = "implicit_autoencoder"
    config_class = ImplicitAutoencoderConfig
    task = "reconstruction"

    def _build(self, c: ImplicitAutoencoderConfig) -> None:
        self._phi = activation_fn(c.activation)
        hl = c.hidden_layer_num
        self.encoder_widths = c.encoder_widths()
        names = [f"enc{i}" for i in range(hl)] + ["latent"]
        names += [f"dec{i}" for i in range(hl)] + ["out"]
        widths = c.widths(self.input_dim)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            self._specs.append(ParamSpec(f"{names[i]}/kernel", (a, b), i, 1.0 / math.sqrt(a)))
            self._specs.append(ParamSpec(f"{names[i]}/bias", (b,), i, 0.0))
            if names[i] == "latent" and c.version == "v1":
                self._specs.append(ParamSpec("latent/A", (b, b), i, 1.0 / math.sqrt(b)))
        self._layer_names = names
        self._latent_index = hl

    def _hidden(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, n_layers: int
    ) -> tuple[tf.Tensor, Iterator[tf.Tensor]]:
        """The activations after the first ``n_layers`` (non-readout) layers, and the
        parameters of the layers after them."""
        params = self.check_params(params)
        h = self.check_inputs(x, params)
        it = iter(params)
        for i in range(n_layers):
            kernel, bias = next(it), next(it)
            pre = dense(h, kernel, bias)
            if i == self._latent_index and self._config["version"] == "v1":
                h = self.solver(well_posed(next(it), self._config["kappa"]), pre)
            else:
                h = self._phi(pre)
        return h, it

    @tf.autograph.experimental.do_not_convert
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The reconstruction ``[batch, input_dim]`` of ``x`` ``[batch, input_dim]``."""
        h, it = self._hidden(params, x, len(self._layer_names) - 1)
        kernel, bias = next(it), next(it)
        return dense(h, kernel, bias)

    def latent(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The latent code ``[batch, latent_num]`` of ``x``."""
        return self._hidden(params, x, self._latent_index + 1)[0]
