"""State-driven implicit modeling (SIM; Tsai, Decugis, El Ghaoui & Atamtürk 2022).

SIM turns a trained explicit ReLU network into an implicit model ``X = relu(A X + B U + b)``,
``Ŷ = C X + D U + c`` (family ``"implicit"``) by convex programs on recorded states, instead
of by gradient training:

1. **States.** The explicit MLP is run on a fraction of the training set; its hidden
   activations, stacked, are the implicit state ``X`` (``n = Σ widths``), its input is ``U``,
   its logits ``Ŷ``. (:func:`collect_states` for a net of ours, :func:`collect_states_keras`
   for a Keras ``Sequential`` of ``Dense`` layers.)
2. **Rescaling by powers of two.** ReLU is positively homogeneous, so multiplying layer ``l``'s
   states by ``2^{e_l}`` changes nothing but the weights' scale (exactly, in floating point).
   The exponents are chosen so that the explicit net's own embedding — a strictly
   block-lower-triangular (nilpotent) ``A`` — has ``‖A‖∞ ≤ κ`` (:func:`embed_mlp`): the
   explicit net is then a feasible point of every program below.
3. **Convex fits, one row at a time.** With ``Φ = [X; U; 1]`` (samples × features) and the
   row ``w_i = [a_i, b_i, β_i]`` of ``[A | B | b]``, ``z_i = Φ w_i`` must equal ``X_i`` where
   ``X_i > 0`` (active units) and be ``≤ 0`` where ``X_i = 0`` (inactive ones). That relaxation
   of ``X = relu(Z)`` is imposed by a quadratic penalty (the *state-matching residual*,
   reported)::

       minimise   (1/2m) Σ_ij ρ_ij(z_ij) + λ₁ R(A, B)     subject to  ‖a_i‖₁ ≤ κ  (every i)
       ρ_ij(z) = (z − X_ij)²  if X_ij > 0,   max(z, 0)²  if X_ij = 0

   ``R`` is ``‖A‖₁ + ‖B‖₁`` (entrywise; objective ``sparsity``) or ``r·‖B‖∞`` (``robustness``:
   the induced ∞-norm, the factor of the ℓ∞ sensitivity bound, scaled by the number of rows
   ``r`` so that λ₁ weighs a row as in ``sparsity``). Then ``[C | D | c]`` is fitted by
   least squares to the logits on the fitted model's own equilibrium states, with
   ``λ₁ (‖C‖₁ + ‖D‖₁)`` or ``λ₁ q (‖C‖∞ + ‖D‖∞)``. Every program but the ``robustness`` one
   separates by rows; that one couples them only through a scalar (the largest row norm).
4. **Two solvers of the same programs.** :func:`solve_batched`: accelerated proximal gradient
   (FISTA with adaptive restart) on every row at once, in TensorFlow (GPU when present): the
   gradient is two matmuls, the proximal map is a soft threshold, an exact sort-based
   projection of each row of ``A`` onto the ℓ1 ball, or (for ``‖·‖∞``) a bisection on the
   common row bound. :func:`solve_reference`: the same program in cvxpy (CLARABEL or SCS), for
   tests and benchmarks.
5. **Exact well-posedness.** The rows of ``A`` are projected onto a ball of radius
   ``κ (1 − 2⁻³⁰)``; :func:`certify_inf_norm` then checks, from the exactly rounded row sums
   (``math.fsum``), that every floating-point summation of ``|a_i|`` (in any order, in float64)
   is ``≤ κ``, and shrinks a row that would not be (never seen; kept as a guarantee). So
   ``‖A‖∞ ≤ κ`` holds with ``<=`` on any computed row sum, and the family's parametrisation
   ``A = W·min(1, κ/‖W‖∞)`` gives back ``A`` exactly from ``W = A``.

```python
from revhpo.nets.sim import fit_mlp, sim_report, train_explicit

mlp, w = train_explicit(x_train, y_train, {"sizes": [50, 50], "steps": 400}, n_classes=10)
result = fit_mlp(mlp, w, x_train[:500], objective="sparsity", kappa=0.95, lambda1=1e-3)
net, params = result.implicit_net(), result.params          # family "implicit", W = A
report = sim_report(result, mlp, w, x_test, y_test, eps=[0.05, 0.1])
```
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from revhpo.nets.base import Net, build_net, task_loss
from revhpo.nets.config import SimConfig, SimExplicitConfig

__all__ = [
    "OBJECTIVES",
    "Problem",
    "SimResult",
    "Solution",
    "States",
    "certify_inf_norm",
    "collect_states",
    "collect_states_keras",
    "embed_mlp",
    "fit_mlp",
    "initialise",
    "mlp_from_keras",
    "objective_value",
    "output_problem",
    "pgd_accuracy",
    "run_sim",
    "sim_report",
    "solve_batched",
    "solve_reference",
    "state_exponents",
    "state_problem",
    "train_explicit",
]

OBJECTIVES = ("sparsity", "robustness")
#: Relative margin of the ℓ1 balls the rows of A are projected onto: κ(1 − 2⁻³⁰).
BALL_MARGIN = 2.0**-30
_U64 = 2.0**-53  # unit roundoff of float64


# ----------------------------------------------------------------------------- explicit nets
def _check_relu_mlp(net: Net) -> None:
    if net.family != "mlp" or net.config["activation"] != "relu":
        raise ValueError(
            "SIM needs an explicit ReLU MLP (family `mlp`, activation `relu`). "
            f"Received: config={net.config}"
        )


def train_explicit(
    x: np.ndarray,
    y: np.ndarray,
    config: SimExplicitConfig | Mapping[str, Any],
    n_classes: int,
) -> tuple[Net, list[tf.Tensor]]:
    """Train the explicit ReLU MLP SIM starts from, by revhpo's plain float SGD-momentum.

    Args:
        x, y: training features ``[N, d]`` and integer labels.
        config: ``SimExplicitConfig`` (or its dict): sizes and the training hyperparameters.
        n_classes: logits of the net.

    Returns:
        ``(net, params)``: the MLP and its trained float64 weights. The loss is the mean
        cross-entropy of the minibatch plus ``½ λ ‖w‖²``; minibatches are
        ``revhpo.optimizers.minibatch_table(seed, steps, N, batch_size)``.
    """
    from revhpo.optimizers import PlainSGD, minibatch_table

    cfg = config if isinstance(config, SimExplicitConfig) else SimExplicitConfig(**config)
    net = build_net({"family": "mlp", "sizes": list(cfg.sizes), "activation": "relu"},
                    int(x.shape[1]), int(n_classes))  # fmt: skip
    if cfg.batch_size > len(x):
        raise ValueError(
            f"`batch_size` must be at most the training set size {len(x)}. "
            f"Received: batch_size={cfg.batch_size}"
        )
    xt = tf.constant(np.asarray(x, np.float64))
    yt = tf.constant(np.asarray(y).astype(np.int32))
    lam = tf.constant(cfg.weight_decay, tf.float64)

    def train_loss(w, theta, t, batches):
        idx = tf.gather(batches, t)
        xb, yb = tf.gather(xt, idx), tf.gather(yt, idx)
        decay = 0.5 * lam * tf.add_n([tf.reduce_sum(tf.square(p)) for p in w])
        return task_loss(net, net.apply(w, xb), xb, yb) + decay

    k = len(net.param_specs)
    alpha = np.full((cfg.steps, k), cfg.learning_rate)
    gamma = np.full((cfg.steps, k), cfg.momentum)
    table = minibatch_table(cfg.seed, cfg.steps, len(x), cfg.batch_size)
    w, _ = PlainSGD(train_loss, tf.float64).run(net.init_params(cfg.seed), alpha, gamma, (), table)
    return net, [tf.identity(p) for p in w]


def mlp_from_keras(model: Any) -> tuple[Net, list[tf.Tensor]]:
    """Our MLP and its weights from a Keras ``Sequential`` of ``Dense`` layers (ReLU hidden
    layers, a linear output layer, biases on).

    Raises:
        ValueError: another layer type, activation, or a layer without bias.
    """
    dense = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if not dense:
        raise ValueError("the Keras model has no Dense layer")
    params: list[tf.Tensor] = []
    for i, layer in enumerate(dense):
        if type(layer).__name__ != "Dense":
            raise ValueError(
                f"SIM reads a Sequential of Dense layers. Received: layer {i} "
                f"{type(layer).__name__} ({layer.name})"
            )
        conf = layer.get_config()
        want = "linear" if i == len(dense) - 1 else "relu"
        if conf.get("activation") != want or not conf.get("use_bias", True):
            raise ValueError(
                f"Dense layer {i} ({layer.name}) must have activation {want!r} and a bias. "
                f"Received: activation={conf.get('activation')!r}, "
                f"use_bias={conf.get('use_bias')!r}"
            )
        kernel, bias = (np.asarray(v, np.float64) for v in layer.get_weights())
        params += [tf.constant(kernel), tf.constant(bias)]
    widths = [int(params[0].shape[0])] + [int(p.shape[1]) for p in params[0::2]]
    net = build_net(
        {"family": "mlp", "sizes": widths[1:-1], "activation": "relu"}, widths[0], widths[-1]
    )
    return net, params


# ----------------------------------------------------------------------------- states
@dataclass(frozen=True)
class States:
    """What the explicit net computes on ``m`` examples (float64, examples along rows).

    Attributes:
        u: inputs ``[m, p]``.
        x: hidden activations of every hidden layer, concatenated ``[m, n]`` (unscaled).
        y: logits ``[m, q]``.
        widths: the hidden widths (``sum(widths) == n``).
    """

    u: np.ndarray
    x: np.ndarray
    y: np.ndarray
    widths: tuple[int, ...]


def collect_states(net: Net, params: Sequence[tf.Tensor], x: np.ndarray) -> States:
    """Run an explicit ReLU MLP of ours and record its states (see :class:`States`)."""
    _check_relu_mlp(net)
    params = [tf.cast(p, tf.float64) for p in net.check_params(params)]
    h = tf.constant(np.asarray(x, np.float64))
    u = h
    hidden = []
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = tf.matmul(h, params[2 * i]) + params[2 * i + 1]
        if i < n_layers - 1:
            h = tf.nn.relu(h)
            hidden.append(h.numpy())
    return States(
        u=u.numpy(),
        x=np.concatenate(hidden, axis=1),
        y=h.numpy(),
        widths=tuple(int(a.shape[1]) for a in hidden),
    )


def collect_states_keras(model: Any, x: np.ndarray) -> States:
    """Record the states of a Keras ``Sequential`` of ``Dense`` layers by running the Keras
    layers themselves (in float64), one at a time."""
    mlp_from_keras(model)  # validates the layer types and activations
    h = tf.constant(np.asarray(x, np.float64))
    u = h.numpy()
    dense = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    hidden = []
    for i, layer in enumerate(dense):
        kernel, bias = (tf.constant(np.asarray(v, np.float64)) for v in layer.get_weights())
        pre = tf.matmul(h, kernel) + bias
        if i < len(dense) - 1:
            h = layer.activation(pre)
            hidden.append(np.asarray(h, np.float64))
        else:
            h = layer.activation(pre)
    return States(
        u=u,
        x=np.concatenate(hidden, axis=1),
        y=np.asarray(h, np.float64),
        widths=tuple(a.shape[1] for a in hidden),
    )


def _inf_norm_np(w: np.ndarray) -> float:
    return float(np.max(np.sum(np.abs(w), axis=-1))) if w.size else 0.0


def state_exponents(net: Net, params: Sequence[tf.Tensor], kappa: float) -> list[int]:
    """Exponents ``e_l`` of the power-of-two state scaling ``X_l ← 2^{e_l} X_l``.

    ``e_{l} − e_{l−1} = −k_l`` with ``k_l ≥ 0`` the smallest integer such that
    ``2^{−k_l} ‖W_l‖∞ ≤ κ (1 − 2⁻³⁰)`` (``W_l`` the kernel from hidden layer ``l − 1`` to
    ``l``); the offset makes the exponents symmetric about 0 (``e_1 = ⌈K/2⌉``, ``K = Σ k_l``),
    so that neither ``B`` nor ``C`` absorbs the whole scale.
    """
    _check_relu_mlp(net)
    kernels = [np.asarray(p, np.float64) for p in net.check_params(params)[0::2]]
    bound = kappa * (1.0 - BALL_MARGIN)
    ks = []
    for w in kernels[1:-1]:  # hidden-to-hidden kernels [fan_in, fan_out]: rows of A are w.T
        norm, k = _inf_norm_np(w.T), 0
        while math.ldexp(norm, -k) > bound:
            k += 1
        ks.append(k)
    e = [int(math.ceil(sum(ks) / 2))]
    for k in ks:
        e.append(e[-1] - k)
    return e


def embed_mlp(
    net: Net, params: Sequence[tf.Tensor], kappa: float
) -> tuple[list[np.ndarray], list[int]]:
    """The explicit ReLU MLP as an exact implicit model (strictly block-lower-triangular,
    nilpotent ``A``), in the parameter layout of family ``implicit`` (``W=A, B, b, C, D, c``).

    States are scaled by ``2^{e_l}`` (:func:`state_exponents`), so ``‖A‖∞ ≤ κ(1 − 2⁻³⁰)``; every
    block is the explicit kernel times a power of two, hence exact.

    Returns:
        ``(params, exponents)``.
    """
    e = state_exponents(net, params, kappa)
    w = [np.asarray(p, np.float64) for p in net.check_params(params)]
    kernels, biases = w[0::2], w[1::2]
    widths = [k.shape[1] for k in kernels[:-1]]
    n, p, q = sum(widths), kernels[0].shape[0], kernels[-1].shape[1]
    offs = np.concatenate([[0], np.cumsum(widths)])
    A, B, b = np.zeros((n, n)), np.zeros((n, p)), np.zeros(n)
    B[: widths[0]] = np.ldexp(kernels[0].T, e[0])
    for layer in range(len(widths)):
        rows = slice(offs[layer], offs[layer + 1])
        b[rows] = np.ldexp(biases[layer], e[layer])
        if layer:
            cols = slice(offs[layer - 1], offs[layer])
            A[rows, cols] = np.ldexp(kernels[layer].T, e[layer] - e[layer - 1])
    C = np.zeros((q, n))
    C[:, offs[-2] :] = np.ldexp(kernels[-1].T, -e[-1])
    D, c = np.zeros((q, p)), biases[-1].copy()
    return [A, B, b, C, D, c], e


def _scaled_x(states: States, exponents: Sequence[int]) -> np.ndarray:
    offs = np.concatenate([[0], np.cumsum(states.widths)])
    out = states.x.copy()
    for layer, ex in enumerate(exponents):
        out[:, offs[layer] : offs[layer + 1]] = np.ldexp(out[:, offs[layer] : offs[layer + 1]], ex)
    return out


# ----------------------------------------------------------------------------- programs
@dataclass(frozen=True)
class Problem:
    """One batch of row problems ``min_W (1/2m) Σ ρ(W Φᵀ − T) + penalties``.

    Attributes:
        features: ``Φ`` ``[m, f]`` (samples × features).
        targets: ``T`` ``[r, m]``.
        loss: ``"relu"`` (``ρ`` as in the module docstring: targets are ReLU states) or
            ``"ls"`` (plain least squares).
        blocks: ``(start, stop, kind)`` column blocks of ``W``; kind is ``"ball"`` (row ℓ1
            ball of radius kappa), ``"ball_l1"`` (ball and ``λ‖·‖₁``), ``"l1"`` (``λ‖·‖₁``),
            ``"linf"`` (``λ r max_i ‖w_i‖₁``) or ``"free"``.
        lam: λ₁.
        kappa: the radius of the ``"ball"`` blocks (``inf`` when there is none).
    """

    features: np.ndarray
    targets: np.ndarray
    loss: str
    blocks: tuple[tuple[int, int, str], ...]
    lam: float
    kappa: float = math.inf

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows r, features f)`` of ``W``."""
        return int(self.targets.shape[0]), int(self.features.shape[1])


def _blocks_for(objective: str, sizes: Sequence[int], ball: bool) -> tuple:
    """Column blocks ``[first | second | bias]``: the first is A (a ball block) when ``ball``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}. Received: {objective!r}")
    pen = "l1" if objective == "sparsity" else "linf"
    kinds = [pen, pen]
    if ball:
        kinds[0] = "ball_l1" if objective == "sparsity" else "ball"
    out, start = [], 0
    for size, kind in zip(sizes, kinds, strict=True):
        out.append((start, start + int(size), kind))
        start += int(size)
    out.append((start, start + 1, "free"))  # the bias column
    return tuple(out)


def state_problem(
    x: np.ndarray, u: np.ndarray, objective: str, kappa: float, lambda1: float
) -> Problem:
    """The ``[A | B | b]`` program on states ``x`` ``[m, n]`` (ReLU outputs) and inputs ``u``."""
    m = x.shape[0]
    phi = np.concatenate([x, u, np.ones((m, 1))], axis=1)
    blocks = _blocks_for(objective, [x.shape[1], u.shape[1]], ball=True)
    return Problem(phi, np.ascontiguousarray(x.T), "relu", blocks, float(lambda1), float(kappa))


def output_problem(
    x: np.ndarray, u: np.ndarray, y: np.ndarray, objective: str, lambda1: float
) -> Problem:
    """The ``[C | D | c]`` least-squares program on states ``x``, inputs ``u``, logits ``y``."""
    m = x.shape[0]
    phi = np.concatenate([x, u, np.ones((m, 1))], axis=1)
    blocks = _blocks_for(objective, [x.shape[1], u.shape[1]], ball=False)
    return Problem(phi, np.ascontiguousarray(y.T), "ls", blocks, float(lambda1))


def _residual_np(problem: Problem, w: np.ndarray) -> np.ndarray:
    z = w @ problem.features.T
    t = problem.targets
    if problem.loss == "ls":
        return z - t
    return np.where(t > 0, z - t, np.maximum(z, 0.0))


def objective_value(problem: Problem, w: np.ndarray) -> float:
    """The program's objective at ``w`` (float64, NumPy; constraints not included)."""
    r = _residual_np(problem, w)
    m = problem.features.shape[0]
    val = 0.5 * float(np.sum(r * r)) / m
    rows = problem.shape[0]
    for a, b, kind in problem.blocks:
        blk = np.abs(w[:, a:b])
        if kind in ("l1", "ball_l1"):
            val += problem.lam * float(np.sum(blk))
        elif kind == "linf":
            val += problem.lam * rows * float(np.max(np.sum(blk, axis=1)))
    return val


def constraint_violation(problem: Problem, w: np.ndarray) -> float:
    """``max(0, max_i ‖a_i‖₁ − κ)`` over the ball blocks (0 when feasible)."""
    worst = 0.0
    for a, b, kind in problem.blocks:
        if kind.startswith("ball"):
            worst = max(worst, _inf_norm_np(w[:, a:b]) - problem.kappa)
    return max(worst, 0.0)


def state_residual(problem: Problem, w: np.ndarray) -> dict[str, float]:
    """The state-matching residual of ``w``: RMS and largest violation of ``z = X`` on active
    units and ``z ≤ 0`` on inactive ones (for ``"ls"``: of ``z = T``), and the RMS relative
    to the RMS of the targets."""
    r = _residual_np(problem, w)
    rms = float(np.sqrt(np.mean(r * r)))
    scale = float(np.sqrt(np.mean(problem.targets**2)))
    return {
        "rms": rms,
        "max_abs": float(np.max(np.abs(r))),
        "relative_rms": rms / scale if scale > 0 else rms,
    }


@dataclass
class Solution:
    """A solved program: ``w`` ``[r, f]`` (float64) and what the solver reports."""

    w: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- batched solver
def _row_thresholds(v: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """``θ_i = max(0, max_k (S_ik − radius)/k)``: the soft threshold that projects row ``v_i``
    onto the ℓ1 ball of ``radius`` (``S_ik`` the sum of its ``k`` largest magnitudes; exact
    sort-based projection, Duchi et al. 2008). ``radius`` broadcasts against ``[r, 1]``."""
    s = tf.math.cumsum(tf.sort(tf.abs(v), axis=-1, direction="DESCENDING"), axis=-1)
    k = tf.range(1, tf.shape(v)[-1] + 1, dtype=v.dtype)
    return tf.maximum(tf.reduce_max((s - radius) / k, axis=-1, keepdims=True), 0.0)


def _soft(v: tf.Tensor, thr: tf.Tensor) -> tf.Tensor:
    return tf.sign(v) * tf.maximum(tf.abs(v) - thr, 0.0)


def _prox_linf(v: tf.Tensor, weight: tf.Tensor, max_steps: int = 200) -> tf.Tensor:
    """``argmin_R ½‖R − V‖² + weight · max_i ‖r_i‖₁``.

    For a common row bound τ the rows are projections onto the ℓ1 ball of radius τ, with
    thresholds ``θ_i(τ) = max(0, max_k (S_ik − τ)/k)``; the optimal τ solves
    ``g(τ) = Σ_i θ_i(τ) − weight = 0`` (0 when ``g(0) ≤ 0``). ``g`` is convex, decreasing and
    piecewise linear, so Newton's method from τ = 0 increases monotonically to the root and
    stops after finitely many pieces (at most ``max_steps``; an exact root in a few steps)."""
    s = tf.math.cumsum(tf.sort(tf.abs(v), axis=-1, direction="DESCENDING"), axis=-1)
    k = tf.range(1, tf.shape(v)[-1] + 1, dtype=v.dtype)
    zero = tf.zeros([], v.dtype)

    def pieces(tau):
        vals = (s - tau) / k
        best = tf.argmax(vals, axis=-1)
        theta = tf.maximum(tf.reduce_max(vals, axis=-1), 0.0)
        inv_k = tf.where(theta > 0, 1.0 / tf.gather(k, best), zero)
        return theta, tf.reduce_sum(theta) - weight, tf.reduce_sum(inv_k)

    def cond(i, tau, moved):
        return tf.logical_and(i < max_steps, moved)

    def body(i, tau, moved):
        _, g, slope = pieces(tau)
        step = tf.where(tf.logical_and(g > 0, slope > 0), g / tf.maximum(slope, 1e-300), zero)
        new = tau + step
        return i + 1, new, new > tau

    _, tau, _ = tf.while_loop(cond, body, (tf.constant(0), zero, tf.constant(True)))
    theta, _, _ = pieces(tau)
    return _soft(v, theta[:, None])


def _prox(problem: Problem, v: tf.Tensor, step: tf.Tensor, radius: float) -> tf.Tensor:
    lam = tf.constant(problem.lam, v.dtype)
    rows = problem.shape[0]
    parts = []
    for a, b, kind in problem.blocks:
        blk = v[:, a:b]
        if kind == "free":
            parts.append(blk)
        elif kind == "l1":
            parts.append(_soft(blk, step * lam))
        elif kind == "linf":
            parts.append(_prox_linf(blk, step * lam * rows))
        else:  # ball / ball_l1: soft threshold by max(step·λ, the ball's own threshold)
            thr = _row_thresholds(blk, tf.constant(radius, v.dtype))
            if kind == "ball_l1":
                thr = tf.maximum(thr, step * lam)
            parts.append(_soft(blk, thr))
    return tf.concat(parts, axis=1)


def _device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name


def solve_batched(
    problem: Problem,
    *,
    tol: float = 1e-7,
    max_iter: int = 5000,
    dtype: tf.DType = tf.float64,
    w0: np.ndarray | None = None,
) -> Solution:
    """Solve every row of ``problem`` at once: FISTA with adaptive (gradient) restart.

    Step ``1/L`` with ``L = λ_max(ΦᵀΦ)/m``, the Lipschitz constant of the penalty's gradient
    (``max(z, 0)²`` has curvature ≤ 1, as ``z²``). Stops when
    ``‖W_{k+1} − W_k‖_F ≤ tol · max(1, ‖W_{k+1}‖_F)`` or after ``max_iter`` iterations.
    Ball blocks are projected onto radius ``κ(1 − 2⁻³⁰)`` and then certified
    (:func:`certify_inf_norm`), so ``‖A‖∞ ≤ κ`` exactly.

    Returns:
        :class:`Solution` with ``info``: iterations, converged, change, seconds, objective,
        device, residual (:func:`state_residual`), constraint_violation.
    """
    t0 = time.perf_counter()
    phi = tf.constant(problem.features, dtype)
    target = tf.constant(problem.targets, dtype)
    m = problem.features.shape[0]
    relu = problem.loss == "relu"
    active = tf.cast(target > 0, dtype)
    gram = tf.matmul(phi, phi, transpose_a=True) / m
    lip = float(tf.reduce_max(tf.linalg.eigvalsh(tf.cast(gram, tf.float64))))
    lip = max(lip, 1e-12) * (1.0 + 1e-6)
    step = tf.constant(1.0 / lip, dtype)
    radius = problem.kappa * (1.0 - BALL_MARGIN) if math.isfinite(problem.kappa) else math.inf
    r, f = problem.shape
    w_init = tf.zeros((r, f), dtype) if w0 is None else tf.constant(w0, dtype)
    w_init = _prox(problem, w_init, tf.constant(0.0, dtype), radius)

    def grad(w):
        z = tf.matmul(w, phi, transpose_b=True)
        res = active * (z - target) + (1.0 - active) * tf.nn.relu(z) if relu else z - target
        return tf.matmul(res, phi) / m

    one = tf.constant(1.0, dtype)

    def body(i, w, w_prev, t, change):
        beta = (t - 1.0) / (0.5 * (1.0 + tf.sqrt(1.0 + 4.0 * t * t)))
        y = w + beta * (w - w_prev)
        wn = _prox(problem, y - step * grad(y), step, radius)
        restart = tf.reduce_sum((y - wn) * (wn - w)) > 0.0
        t_next = tf.where(restart, one, 0.5 * (1.0 + tf.sqrt(1.0 + 4.0 * t * t)))
        # after a restart the next extrapolation starts from w (no momentum)
        w_keep = tf.where(restart, wn, w)
        scale = tf.maximum(one, tf.norm(wn))
        return i + 1, wn, w_keep, t_next, tf.norm(wn - w) / scale

    def cond(i, w, w_prev, t, change):
        return tf.logical_and(i < max_iter, change > tol)

    @tf.function(autograph=False, jit_compile=True)
    def run(w):
        inf = tf.constant(math.inf, dtype)
        return tf.while_loop(cond, body, (tf.constant(0), w, w, one, inf))

    iters, w, _, _, change = run(w_init)
    w_np = np.asarray(w.numpy(), np.float64)
    for a, b, kind in problem.blocks:
        if kind.startswith("ball"):
            w_np[:, a:b] = certify_inf_norm(w_np[:, a:b], problem.kappa)
    info = {
        "solver": "batched FISTA (TensorFlow)",
        "device": _device(),
        "dtype": dtype.name,
        "iterations": int(iters),
        "change": float(change),
        "converged": bool(float(change) <= tol),
        "tol": tol,
        "seconds": time.perf_counter() - t0,
        "objective": objective_value(problem, w_np),
        "residual": state_residual(problem, w_np),
        "constraint_violation": constraint_violation(problem, w_np),
    }
    return Solution(w_np, info)


def certify_inf_norm(a: np.ndarray, kappa: float) -> np.ndarray:
    """``a`` with every row's ℓ1 norm provably ``≤ kappa`` under any float64 summation.

    ``math.fsum`` gives the correctly rounded sum ``s`` of a row's magnitudes, so the exact sum
    is at most ``s (1 + 2⁻⁵³)``, and any floating-point summation order of ``n`` non-negative
    terms returns at most ``exact · (1 + 2⁻⁵³)^(n−1)``. A row whose bound
    ``s · (1 + (n + 4)·2⁻⁵²)`` exceeds ``kappa`` is multiplied by ``1 − 2⁻²⁰`` until it does not
    (never needed after the solver's ``κ(1 − 2⁻³⁰)`` projection; a guarantee, not a repair).
    """
    out = np.array(a, np.float64, copy=True)
    n = out.shape[1]
    grow = 1.0 + (n + 4) * 2.0 * _U64
    for i in range(out.shape[0]):
        while math.fsum(np.abs(out[i]).tolist()) * grow > kappa:
            out[i] *= 1.0 - 2.0**-20
    return out


# ----------------------------------------------------------------------------- reference
def solve_reference(problem: Problem, solver: str = "CLARABEL", **kwargs: Any) -> Solution:
    """The same program in cvxpy (all rows in one problem), solved by an open solver.

    Args:
        problem: the program.
        solver: ``"CLARABEL"`` (interior point, default) or ``"SCS"``.
        kwargs: passed to ``cvxpy.Problem.solve``.

    Raises:
        ImportError: cvxpy is not installed (``pip install revhpo[sim-reference]``).
    """
    import cvxpy as cp

    t0 = time.perf_counter()
    r, f = problem.shape
    m = problem.features.shape[0]
    w = cp.Variable((r, f))
    z = w @ problem.features.T
    t = problem.targets
    if problem.loss == "ls":
        fit = cp.sum_squares(z - t)
    else:
        act = (t > 0).astype(np.float64)
        fit = cp.sum_squares(cp.multiply(act, z - t)) + cp.sum_squares(
            cp.pos(cp.multiply(1.0 - act, z))
        )
    obj = fit / (2.0 * m)
    cons = []
    for a, b, kind in problem.blocks:
        blk = w[:, a:b]
        if kind in ("l1", "ball_l1"):
            obj = obj + problem.lam * cp.sum(cp.abs(blk))
        if kind == "linf":
            obj = obj + problem.lam * r * cp.max(cp.sum(cp.abs(blk), axis=1))
        if kind.startswith("ball"):
            cons.append(cp.sum(cp.abs(blk), axis=1) <= problem.kappa)
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=solver, **kwargs)
    if w.value is None:
        raise RuntimeError(f"cvxpy ({solver}) found no solution: status {prob.status}")
    w_np = np.asarray(w.value, np.float64)
    return Solution(
        w_np,
        {
            "solver": f"cvxpy {solver}",
            "status": prob.status,
            "seconds": time.perf_counter() - t0,
            "objective": objective_value(problem, w_np),
            "solver_objective": float(prob.value),
            "residual": state_residual(problem, w_np),
            "constraint_violation": constraint_violation(problem, w_np),
        },
    )


# ----------------------------------------------------------------------------- the fit
@dataclass
class SimResult:
    """SIM's implicit model and how it was fitted.

    Attributes:
        params: ``[W, B, b, C, D, c]`` float64 arrays, the layout of family ``implicit``
            (``W = A``: ``‖A‖∞ ≤ kappa`` exactly, so the family's ``A = W·min(1, κ/‖W‖∞)`` is
            ``A`` itself).
        config: the ``implicit`` net config (``n``, ``kappa``, relu, bias) to build it with.
        input_dim, output_dim: its dimensions.
        exponents: the power-of-two state scaling of the explicit states.
        state, output: the two solved programs' reports.
        problems: the two programs (for re-solving, e.g. by :func:`solve_reference`).
    """

    params: list[np.ndarray]
    config: dict[str, Any]
    input_dim: int
    output_dim: int
    exponents: list[int]
    state: dict[str, Any]
    output: dict[str, Any]
    problems: dict[str, Problem]
    objective: str
    kappa: float
    lambda1: float

    def implicit_net(self, **overrides: Any) -> Net:
        """The ``implicit`` net of this result (config keys may be overridden)."""
        return build_net({**self.config, **overrides}, self.input_dim, self.output_dim)

    def tensors(self, dtype: tf.DType = tf.float64) -> list[tf.Tensor]:
        """``params`` as tensors."""
        return [tf.constant(p, dtype) for p in self.params]


def _equilibrium(params: Sequence[np.ndarray], u: np.ndarray, kappa: float) -> np.ndarray:
    n = params[0].shape[0]
    net = build_net(
        {"family": "implicit", "n": n, "activation": "relu", "kappa": kappa,
         "on_nonconvergence": "raise", "newton_steps": 0},
        u.shape[1], params[3].shape[0],
    )  # fmt: skip
    return net.state([tf.constant(p) for p in params], tf.constant(u)).numpy()


def fit_states(
    states: States,
    exponents: Sequence[int],
    *,
    objective: str = "sparsity",
    kappa: float = 0.95,
    lambda1: float = 1e-3,
    tol: float = 1e-7,
    max_iter: int = 5000,
    solver: str = "batched",
    dtype: tf.DType = tf.float64,
) -> SimResult:
    """SIM on recorded states: the ``[A | B | b]`` program, then ``[C | D | c]`` on the
    fitted model's own equilibrium states.

    Args:
        states: the explicit net's states (:func:`collect_states`).
        exponents: their power-of-two scaling (:func:`state_exponents`).
        objective: ``"sparsity"`` or ``"robustness"``.
        kappa: ``‖A‖∞ ≤ kappa < 1``.
        lambda1: λ₁.
        tol, max_iter: the batched solver's stopping rule.
        solver: ``"batched"`` (:func:`solve_batched`) or ``"CLARABEL"`` / ``"SCS"``
            (:func:`solve_reference`).
        dtype: the batched solver's dtype.
    """
    if not 0 < kappa < 1:
        raise ValueError(f"`kappa` must be in (0, 1). Received: kappa={kappa!r}")
    if lambda1 < 0:
        raise ValueError(f"`lambda1` must be >= 0. Received: lambda1={lambda1!r}")

    def solve(problem: Problem) -> Solution:
        if solver == "batched":
            return solve_batched(problem, tol=tol, max_iter=max_iter, dtype=dtype)
        return solve_reference(problem, solver=solver)

    x = _scaled_x(states, exponents)
    n, p, q = x.shape[1], states.u.shape[1], states.y.shape[1]
    sp = state_problem(x, states.u, objective, kappa, lambda1)
    s_sol = solve(sp)
    A, B, b = s_sol.w[:, :n], s_sol.w[:, n : n + p], s_sol.w[:, -1]
    A = certify_inf_norm(A, kappa)
    zeros = [np.zeros((q, n)), np.zeros((q, p)), np.zeros(q)]
    x_eq = _equilibrium([A, B, b, *zeros], states.u, kappa)
    op = output_problem(x_eq, states.u, states.y, objective, lambda1)
    o_sol = solve(op)
    C, D, c = o_sol.w[:, :n], o_sol.w[:, n : n + p], o_sol.w[:, -1]
    gap = x_eq - x
    s_info = dict(s_sol.info)
    s_info["equilibrium_gap"] = {
        "rms": float(np.sqrt(np.mean(gap**2))),
        "relative_rms": float(np.sqrt(np.mean(gap**2)) / max(np.sqrt(np.mean(x**2)), 1e-300)),
    }
    config = {"family": "implicit", "n": n, "activation": "relu", "kappa": kappa, "bias": True}
    return SimResult(
        params=[A, B, b, C, D, c],
        config=config,
        input_dim=p,
        output_dim=q,
        exponents=list(exponents),
        state=s_info,
        output=dict(o_sol.info),
        problems={"state": sp, "output": op},
        objective=objective,
        kappa=kappa,
        lambda1=lambda1,
    )


def fit_mlp(
    net: Net,
    params: Sequence[tf.Tensor],
    x: np.ndarray,
    *,
    objective: str = "sparsity",
    kappa: float = 0.95,
    lambda1: float = 1e-3,
    **kwargs: Any,
) -> SimResult:
    """SIM of an explicit ReLU MLP of ours on inputs ``x`` (see :func:`fit_states`)."""
    states = collect_states(net, params, x)
    exps = state_exponents(net, params, kappa)
    return fit_states(states, exps, objective=objective, kappa=kappa, lambda1=lambda1, **kwargs)


# ----------------------------------------------------------------------------- evaluation
def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))


def pgd_accuracy(
    net: Net,
    params: Sequence[tf.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    steps: int = 10,
    batch: int = 200,
) -> float:
    """Accuracy under an ℓ∞ PGD attack of radius ``eps`` (through ``net.apply``'s gradient).

    ``steps`` signed-gradient ascent steps of size ``2.5·eps/steps`` on the cross-entropy, from
    the clean input, each projected back onto the ``eps`` box; an example counts as robust
    when the clean one and every iterate are classified correctly. An empirical *upper*
    bound on the true robust accuracy (a stronger attack can only lower it).
    """
    params = [tf.cast(p, tf.float64) for p in params]
    yt = tf.constant(np.asarray(y).astype(np.int32))
    x = np.asarray(x, np.float64)
    if eps == 0:
        return _accuracy(net.apply(params, tf.constant(x)).numpy(), y)
    alpha = 2.5 * eps / steps

    @tf.function(autograph=False, reduce_retracing=True)
    def attack(x0, y0):
        xa = x0
        ok = tf.ones_like(y0, tf.bool)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(xa)
                logits = net.apply(params, xa)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y0, logits=logits)
                )
            ok = tf.logical_and(ok, tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y0))
            g = tape.gradient(loss, xa)
            xa = tf.clip_by_value(xa + alpha * tf.sign(g), x0 - eps, x0 + eps)
        logits = net.apply(params, xa)
        return tf.logical_and(ok, tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y0))

    hits = []
    for i in range(0, len(x), batch):
        hits.append(attack(tf.constant(x[i : i + batch]), yt[i : i + batch]).numpy())
    return float(np.mean(np.concatenate(hits)))


def _certified(logits: np.ndarray, y: np.ndarray, lip: float, eps: float) -> float:
    """Fraction of examples whose margin exceeds ``2·lip·eps`` (provably robust: no ℓ∞
    perturbation of radius eps moves any logit by more than ``lip·eps``)."""
    y = np.asarray(y)
    true = logits[np.arange(len(y)), y]
    other = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits).max(axis=1)
    return float(np.mean(true - other > 2.0 * lip * eps))


def _sparsity(params: Sequence[np.ndarray]) -> dict[str, Any]:
    names = ["A", "B", "C", "D"]
    blocks = [params[0], params[1], params[3], params[4]]
    out: dict[str, Any] = {}
    total = zeros = 0
    for name, blk in zip(names, blocks, strict=True):
        z = int(np.sum(blk == 0.0))
        out[name] = {"zeros": z, "size": int(blk.size), "zero_fraction": z / max(blk.size, 1)}
        total += blk.size
        zeros += z
    out["zero_fraction"] = zeros / total
    out["nonzeros"] = int(total - zeros)
    out["size"] = int(total)
    return out


def implicit_bound(params: Sequence[np.ndarray]) -> float:
    """The ℓ∞ Lipschitz bound of ``u ↦ Ŷ``: ``‖C‖∞ ‖B‖∞ / (1 − ‖A‖∞) + ‖D‖∞`` (ReLU is
    1-Lipschitz and ``‖A‖∞ < 1``)."""
    a, b, _, c, d, _ = params
    return _inf_norm_np(c) * _inf_norm_np(b) / (1.0 - _inf_norm_np(a)) + _inf_norm_np(d)


def mlp_bound(params: Sequence[tf.Tensor]) -> float:
    """The ℓ∞ Lipschitz bound of an MLP: the product of its kernels' induced ∞-norms."""
    return float(np.prod([_inf_norm_np(np.asarray(k).T) for k in params[0::2]]))


def magnitude_prune(params: Sequence[tf.Tensor], keep: int) -> list[tf.Tensor]:
    """The MLP with all but its ``keep`` largest-magnitude kernel weights set to 0 (global
    magnitude pruning over every kernel; biases kept)."""
    kernels = [np.asarray(p, np.float64) for p in params[0::2]]
    mags = np.sort(np.concatenate([np.abs(k).ravel() for k in kernels]))[::-1]
    keep = int(min(max(keep, 0), mags.size))
    thr = mags[keep - 1] if keep > 0 else np.inf
    out = []
    for i, p in enumerate(params):
        a = np.asarray(p, np.float64)
        out.append(tf.constant(np.where(np.abs(a) >= thr, a, 0.0) if i % 2 == 0 else a))
    return out


def sim_report(
    result: SimResult,
    mlp: Net,
    mlp_params: Sequence[tf.Tensor],
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    eps: Sequence[float] = (),
    pgd_steps: int = 10,
    split: str = "test",
) -> dict[str, Any]:
    """The JSON-able report of a SIM result against its explicit net.

    Well-posedness (``‖A‖∞`` computed as NumPy's row sums, asserted ``<= kappa``), the two
    programs' solver reports and residuals, held-out accuracy of both models on
    ``(x_eval, y_eval)``, sparsity (exact zeros of A, B, C, D; the explicit net's kernel
    count; its magnitude pruning to SIM's nonzero count), and robustness for every ε in
    ``eps``: PGD accuracy (:func:`pgd_accuracy`) and certified accuracy from the ℓ∞
    Lipschitz bounds (:func:`implicit_bound`, :func:`mlp_bound`).
    """
    a_norm = _inf_norm_np(result.params[0])
    assert a_norm <= result.kappa, (a_norm, result.kappa)  # exact, by certify_inf_norm
    net = result.implicit_net()
    tp = result.tensors()
    a_net = float(tf.reduce_max(tf.reduce_sum(tf.abs(net.well_posed_A(tp)), axis=-1)))
    w_is_a = bool(np.array_equal(net.well_posed_A(tp).numpy(), result.params[0]))
    xe = tf.constant(np.asarray(x_eval, np.float64))
    imp_logits = net.apply(tp, xe).numpy()
    exp_logits = mlp.apply([tf.cast(p, tf.float64) for p in mlp_params], xe).numpy()
    sparsity = _sparsity(result.params)
    explicit_nnz = int(sum(int(np.sum(np.asarray(k) != 0)) for k in mlp_params[0::2]))
    pruned = magnitude_prune(mlp_params, sparsity["nonzeros"])
    pruned_logits = mlp.apply(pruned, xe).numpy()
    embed_size = sparsity["size"]
    lip_imp, lip_exp = implicit_bound(result.params), mlp_bound(mlp_params)
    rob: dict[str, Any] = {
        "attack": f"PGD ℓ∞, {pgd_steps} signed-gradient steps of 2.5·ε/{pgd_steps} from the "
        "clean input, through each model's forward (an upper bound on true robust accuracy)",
        "eps": [float(e) for e in eps],
        "implicit_pgd": [],
        "explicit_pgd": [],
        "certified": "margin > 2·L·ε with L the ℓ∞ Lipschitz bound (a lower bound)",
        "lipschitz_bound": {"implicit": lip_imp, "explicit": lip_exp},
        "implicit_certified": [],
        "explicit_certified": [],
    }
    for e in eps:
        rob["implicit_pgd"].append(pgd_accuracy(net, tp, x_eval, y_eval, e, pgd_steps))
        rob["explicit_pgd"].append(pgd_accuracy(mlp, mlp_params, x_eval, y_eval, e, pgd_steps))
        rob["implicit_certified"].append(_certified(imp_logits, y_eval, lip_imp, e))
        rob["explicit_certified"].append(_certified(exp_logits, y_eval, lip_exp, e))
    return {
        "objective": result.objective,
        "kappa": result.kappa,
        "lambda1": result.lambda1,
        "dims": {"n": result.config["n"], "p": result.input_dim, "q": result.output_dim},
        "state_exponents": result.exponents,
        "fitted_examples": int(result.problems["state"].features.shape[0]),
        "well_posedness": {
            "inf_norm_A": a_norm,
            "inf_norm_A_tensorflow": a_net,
            "kappa": result.kappa,
            "holds": a_norm <= result.kappa and a_net <= result.kappa,
            "family_W_equals_A": w_is_a,
        },
        "state_fit": result.state,
        "output_fit": result.output,
        "accuracy": {
            "split": split,
            "n": int(len(y_eval)),
            "explicit": _accuracy(exp_logits, y_eval),
            "implicit": _accuracy(imp_logits, y_eval),
            "explicit_pruned_to_same_nonzeros": _accuracy(pruned_logits, y_eval),
            "logit_rms_gap": float(np.sqrt(np.mean((imp_logits - exp_logits) ** 2))),
        },
        "sparsity": {
            **sparsity,
            "explicit_nonzeros": explicit_nnz,
            "explicit_zero_fraction_as_implicit": 1.0 - explicit_nnz / embed_size,
        },
        "robustness": rob,
    }


# ----------------------------------------------------------------------------- job helpers
def _subset(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    n = len(x)
    k = max(1, min(n, round(fraction * n)))
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    return x[idx], y[idx]


def _fit_from_config(
    cfg: SimConfig, kappa: float, x_train: np.ndarray, y_train: np.ndarray, n_classes: int
) -> tuple[SimResult, Net, list[tf.Tensor]]:
    mlp, w = train_explicit(x_train, y_train, cfg.source, n_classes)
    xs, _ = _subset(x_train, y_train, cfg.fraction, cfg.source.seed)
    result = fit_mlp(
        mlp, w, xs, objective=cfg.objective, kappa=kappa, lambda1=cfg.lambda1,
        tol=cfg.tol, max_iter=cfg.max_iter,
    )  # fmt: skip
    return result, mlp, w


def initialise(
    net: Net,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> dict[str, Any]:
    """Give an ``implicit`` net whose config has ``init.sim`` its SIM initial weights.

    Trains the explicit MLP of ``init.sim.from``, fits SIM on ``init.sim.fraction`` of the
    training set, and sets the weights (``net.init_params(seed)`` returns them for every
    seed; the tuner's init scales then multiply them, per layer A, B, readout). Deterministic
    in the config.

    Returns:
        The SIM report on ``(x_val, y_val)`` (accuracy, sparsity, well-posedness; no attack),
        or on the training set when no validation set is given.
    """
    cfg = net.config.get("init")
    if net.family != "implicit" or not cfg:
        raise ValueError(f"`net` must be an implicit net with init.sim. Received: {net!r}")
    sim = SimConfig.model_validate(cfg["sim"])
    kappa = sim.kappa if sim.kappa is not None else float(net.config["kappa"])
    result, mlp, w = _fit_from_config(sim, kappa, x_train, y_train, net.output_dim)
    net.set_initial_params(result.tensors())  # type: ignore[attr-defined]
    xe, ye = (x_val, y_val) if x_val is not None and len(x_val) else (x_train, y_train)
    return sim_report(result, mlp, w, xe, ye, split="val" if x_val is not None else "train")


def run_sim(
    data: Any,
    cfg: SimConfig | Mapping[str, Any],
    *,
    eps: Sequence[float] = (0.05, 0.1, 0.2),
    pgd_steps: int = 10,
) -> tuple[dict[str, Any], SimResult]:
    """SIM on a dataset (``x_train``, ``y_train``, ``x_test``, ``y_test``, ``n_classes``): train
    the explicit net, fit, report on the test set (``revhpo sim``).

    ``cfg.kappa`` null means 0.95 (the implicit family's default).
    """
    sim = cfg if isinstance(cfg, SimConfig) else SimConfig.model_validate(cfg)
    kappa = sim.kappa if sim.kappa is not None else 0.95
    t0 = time.perf_counter()
    result, mlp, w = _fit_from_config(sim, kappa, data.x_train, data.y_train, data.n_classes)
    fit_s = time.perf_counter() - t0
    report = sim_report(result, mlp, w, data.x_test, data.y_test, eps=eps, pgd_steps=pgd_steps)
    report["config"] = sim.model_dump(mode="json")
    report["seconds"] = {"train_explicit_and_fit": fit_s, "total": time.perf_counter() - t0}
    return report, result
