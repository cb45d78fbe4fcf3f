"""Exactly reversible SGD with momentum and its hypergradients.

Forward, ``t = 0..T-1`` with ``v_0 = 0`` (hypergrad's convention), per weight tensor ``k``:

    g_t = ∇_w L(w_t, θ, t)
    v_{t+1} = γ_{t,k} v_t − (1 − γ_{t,k}) g_t        (γ applied as an exact rational n/d)
    w_{t+1} = w_t + α_{t,k} v_{t+1}

``w`` and ``v`` are int64 fixed point; the bits that ``γ`` destroys go to an
:class:`~precise.InfoBuffer`. The reverse pass starts from ``dw = ∇f(w_T)``, ``dv = 0`` and,
for ``t = T-1..0``, recovers the earlier state exactly while accumulating adjoints:

    dα_t = dw · v_{t+1}
    w_t = w_{t+1} − α_t v_{t+1}                        (exact: undoes the position update)
    dv ← dv + α_t dw                                   (v_{t+1} also moved w_{t+1})
    u = (1 − γ_t) ⊙ dv                                 (per-tensor factor, then one fused pass:)
    g_t, H u, (∂²L/∂θ∂w) u  at (w_t, θ, t)             (g_t bit-identical to the forward one)
    v_t = (v_{t+1} + (1 − γ_t) g_t) / γ_t              (exact: undoes the velocity update)
    dγ_t = dv · (v_t + g_t)
    dw ← dw − H u ;  dθ ← dθ − (∂²L/∂θ∂w) u ;  dv ← γ_t dv

and ends with ``d w_0 = dw``. Exactness is *certified*: the recovered ``w_0`` and ``v_0`` must
equal the originals bit for bit and every buffer must be empty, otherwise
:class:`ExactnessError` is raised — a hypergradient is never returned on a broken reversal.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from revhpo.hessian import grad_hvp_mixed
from revhpo.precise import (
    DEFAULT_FRAC_BITS,
    DEFAULT_GROUP,
    DEFAULT_MAX_DENOMINATOR,
    FixedPointOverflowError,
    InfoBuffer,
    Rational,
    group_div_kernel,
    group_mul_kernel,
    in_range,
    max_abs_value,
    rationalize,
    to_fixed,
    to_fixed_unchecked,
    to_float,
)

from revhpo.runtime import require_exact_ops

log = logging.getLogger(__name__)

#: ``L(w, θ, t)`` or ``L(w, θ, t, key)`` (see :func:`hypergradient`'s ``key``).
TrainLoss = Callable[..., tf.Tensor]
ValLoss = Callable[[Sequence[tf.Tensor]], tf.Tensor]
Callback = Callable[[str, int, int], None]

#: Training steps per compiled call. Each pass runs as a graph loop (``tf.while_loop``) over
#: chunks of this many steps: one host round trip per chunk (divergence check, progress,
#: moving the buffer's words to host memory), never one per step.
CHUNK_STEPS = 50
#: A chunk's table of cut words may take twice the rows its pass needs while it stays within
#: this many bytes (see `_Stepper.fit_capacity`): room for γ to move without a recompilation.
_TABLE_HEADROOM_BYTES = 16 << 20


class DivergenceError(ArithmeticError):
    """Training diverged: a non-finite loss or gradient, or a fixed-point overflow.

    Attributes:
        step: the first training step at which it happened.
        reason: a human-readable reason.
        replica: which of several replicas trained together diverged (None: a single run).
    """

    def __init__(self, step: int, reason: str, replica: int | None = None) -> None:
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason
        self.replica = replica


class ExactnessError(RuntimeError):
    """The reverse pass did not recover the initial state bit for bit."""

    def __init__(self, certificate: ExactnessCertificate, hint: str = "") -> None:
        super().__init__(f"reverse pass was not exact: {certificate}{hint}")
        self.certificate = certificate


@dataclass(frozen=True)
class ExactnessCertificate:
    """Proof that a reverse pass undid its forward pass exactly.

    Attributes:
        exact_w0: recovered initial weights equal the originals bit for bit.
        exact_v0: recovered initial velocities are exactly zero.
        buffer_empty: every information buffer returned to empty.
        bits_held: memory the buffers held between the passes (host words), bits per weight.
        info_bound_bits: the information bound ``Σ log2(d/n)`` per weight (mean over weights).
    """

    exact_w0: bool
    exact_v0: bool
    buffer_empty: bool
    bits_held: float
    info_bound_bits: float

    @property
    def ok(self) -> bool:
        """All three exactness checks passed."""
        return self.exact_w0 and self.exact_v0 and self.buffer_empty

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "ok": self.ok,
            "exact_w0": self.exact_w0,
            "exact_v0": self.exact_v0,
            "buffer_empty": self.buffer_empty,
            "bits_held": self.bits_held,
            "info_bound_bits": self.info_bound_bits,
        }


@dataclass
class HypergradResult:
    """What one forward + reverse pass returns (see ``docs/ARCHITECTURE.md``)."""

    val_loss: float
    w_final: list[tf.Tensor]
    d_alpha: tf.Tensor
    d_gamma: tf.Tensor
    d_theta: list[tf.Tensor]
    d_w0: list[tf.Tensor]
    gamma_applied: np.ndarray
    train_losses: np.ndarray
    certificate: ExactnessCertificate
    timings: dict[str, float] = field(default_factory=dict)


def minibatch_indices(seed: int | tf.Tensor, t: int | tf.Tensor, n: int, batch: int) -> tf.Tensor:
    """Indices of the minibatch for step ``t``: a stateless function of ``(seed, t)``.

    Each epoch of ``n // batch`` steps walks a fresh permutation of ``range(n)`` drawn from
    ``tf.random.stateless_uniform`` keyed on ``(seed, epoch)``, so every step sees distinct
    examples and recomputing a step's batch in the reverse pass gives the same indices.
    """
    if not 1 <= batch <= n:
        raise ValueError(f"`batch` must be in [1, n={n}]. Received: batch={batch}")
    t = tf.cast(t, tf.int64)
    per_epoch = n // batch
    epoch, j = t // per_epoch, t % per_epoch
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
    perm = tf.argsort(keys, stable=True)
    return tf.cast(perm[j * batch : (j + 1) * batch], tf.int32)


def minibatch_table(seed: int | tf.Tensor, steps: int, n: int, batch: int) -> tf.Tensor:
    """``[steps, batch]`` int32: row ``t`` is ``minibatch_indices(seed, t, n, batch)``.

    One permutation per epoch, drawn exactly as :func:`minibatch_indices` draws it, so a loss
    that reads row ``t`` of this table sees the same examples; computing the table once per
    seed keeps the per-step ``argsort`` out of the training loop.
    """
    if not 1 <= batch <= n:
        raise ValueError(f"`batch` must be in [1, n={n}]. Received: batch={batch}")
    per_epoch = n // batch
    epochs = max(1, -(-int(steps) // per_epoch))
    seed = tf.cast(seed, tf.int64)

    def permutation(epoch: tf.Tensor) -> tf.Tensor:
        keys = tf.random.stateless_uniform([n], seed=tf.stack([seed, epoch]))
        return tf.argsort(keys, stable=True)

    perms = tf.map_fn(  # [epochs, n], one permutation per epoch
        permutation, tf.range(epochs, dtype=tf.int64), fn_output_signature=tf.int32
    )
    t = tf.range(int(steps), dtype=tf.int32)
    start = (t // per_epoch) * n + (t % per_epoch) * batch
    return tf.gather(tf.reshape(perms, [-1]), start[:, None] + tf.range(batch)[None, :])


def _schedule(x: tf.Tensor | np.ndarray, name: str, k: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != k:
        raise ValueError(f"`{name}` must have shape [T, {k}]. Received: shape={arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite. Received: {name} with non-finite entries")
    return arr


def _pack(xs: Sequence[tf.Tensor]) -> tf.Tensor:
    """Tensors flattened and concatenated into one."""
    return tf.concat([tf.reshape(x, [-1]) for x in xs], 0)


def _unpack(flat: tf.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[tf.Tensor]:
    """Undo :func:`_pack` for tensors of the given shapes."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    return [tf.reshape(x, s) for x, s in zip(tf.split(flat, sizes), shapes, strict=True)]


def _unpack_state(w_p, v_p, r_p, layout) -> tuple[list, list, list]:
    """Weights, velocities and registers (one tensor per weight tensor) from their packed form."""
    shapes, _, reg_sizes = layout
    return _unpack(w_p, shapes), _unpack(v_p, shapes), tf.split(r_p, reg_sizes)


def _gather_registers(buffers: Sequence[InfoBuffer]) -> tf.Tensor:
    """The buffers' registers packed into one flat tensor."""
    return tf.concat([b.register for b in buffers], 0)


def _scatter_registers(buffers: Sequence[InfoBuffer], r_p: tf.Tensor) -> None:
    """Undo :func:`_gather_registers`: hand each buffer its registers back."""
    for b, r in zip(buffers, tf.split(r_p, [b.registers for b in buffers]), strict=True):
        b.register = r


def _rationals(gamma: np.ndarray, max_denominator: int) -> list[list[Rational]]:
    cache: dict[float, Rational] = {}
    out = []
    for row in gamma:
        rats = []
        for g in row:
            g = float(g)
            if g not in cache:
                cache[g] = rationalize(g, max_denominator)
            rats.append(cache[g])
        out.append(rats)
    return out


def _brief(exc: BaseException) -> str:
    """An exception's type and the first line of its message (TensorFlow appends the stack
    of the op's creation), at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _random_ops(graph: tf.Graph) -> list[str]:
    """Random-number op types in ``graph`` and the functions it calls (loop bodies too)."""
    graph_def = graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return sorted({n.op for n in nodes if re.search("Random|Multinomial|TruncatedNormal", n.op)})


class _Stepper:
    """Compiled forward / reverse chunks for one training problem (shared across calls).

    With ``xla`` (the default) each chunk of steps — loss, gradient, fused HVP, the exact
    integer update and the buffer's register cuts — is one XLA program: a
    ``tf.while_loop`` compiled whole, so a step costs no runtime dispatch and the schedules,
    index tables and cut words stay on the device for the chunk. The reverse pass recomputes
    every forward gradient in another program; each program is a deterministic function of
    its inputs, and the certificate checks that the two agreed bit for bit. Should a net's
    ops not compile, or a reversal not certify, :meth:`demote` falls back (once, logged) to
    the graph-runtime loop below, where the float ops are plain TensorFlow kernels and only
    the integer part of each step is compiled (integer results are exact and its float ops
    are single products, so compiling it changes no bit).
    """

    def __init__(
        self, train_loss: TrainLoss, k: int, dtype: tf.DType, frac_bits: int, xla: bool = True
    ) -> None:
        self.train_loss = train_loss
        self.k = k
        self.dtype = dtype
        self.frac_bits = frac_bits
        self.xla = xla
        self.checked = False  # the programs were checked (see `check`)
        # The static sizes the programs were last compiled for (see `fit_groups`,
        # `fit_capacity`): a tuned γ changes the plan every meta-iteration, and each new
        # shape would compile both programs again.
        self._groups: list[int] | None = None
        self._capacity = 0
        self._compiling: dict[str, Future] = {}  # see `check`
        self._build(whole=xla)

    def _build(self, whole: bool) -> None:
        """Make the compiled functions: whole chunks under XLA, or graph loops calling
        XLA-compiled integer steps (``self.xla``)."""
        self.whole = whole
        # Graph control flow is explicit (tf.while_loop, tf.cond): autograph's source
        # conversion would only add tracing time.
        if whole:  # inlined into the chunk's program
            self._update, self._undo_pos, self._undo_vel = (
                self._exact_update,
                self._undo_position,
                self._undo_velocity,
            )
        else:
            compiled = {"jit_compile": self.xla, "autograph": False}
            self._update = tf.function(self._exact_update, **compiled)
            self._undo_pos = tf.function(self._undo_position, **compiled)
            self._undo_vel = tf.function(self._undo_velocity, **compiled)
        loop = {"reduce_retracing": True, "autograph": False, "jit_compile": whole}
        self.forward_chunk = tf.function(self._forward_chunk, **loop)
        self.reverse_chunk = tf.function(self._reverse_chunk, **loop)

    def check(self, forward_args: tuple, reverse_args: tuple) -> None:
        """Once per stepper, before its first pass: trace both chunks' programs (the traces are
        the ones the passes then run), start compiling them (see :meth:`ready`), and fall back
        to graph loops when they cannot be whole.

        XLA's random-number kernels draw other streams than TensorFlow's for the same seed, so
        a training loss that draws random numbers inside a step (minibatches from
        :func:`minibatch_indices`, dropout) would train on other data under XLA than
        :class:`~revhpo.optimizers.PlainSGD` and the references do: such a loss runs as graph
        loops. (An index table made before the pass, as :class:`TuningProblem` passes it, keeps
        the programs whole.) A reverse program that cannot be built in XLA's context (a
        derivative with no XLA form: forward-mode through a loop's gradient, as with the SSS
        layer) falls back here too, before a forward pass is spent on it.
        """
        if self.checked:
            return
        self.checked = True
        if not self.whole:
            return
        # The reverse program first: it is the larger to compile, and the one that may have no
        # XLA form. XLA compiles a program at its first run: each is run here on zero steps
        # in a thread of its own, so that compiling the reverse overlaps tracing, compiling
        # and running the forward; `ready` waits for each before its first real run.
        try:
            graph = self.reverse_chunk.get_concrete_function(*reverse_args).graph
        except Exception as exc:  # noqa: BLE001 - any failure to build it means: not whole
            self.demote(f"the reverse program cannot be built ({_brief(exc)})")
            return
        if self._demote_on_random(graph):
            return
        compiler = ThreadPoolExecutor(2, thread_name_prefix="revhpo-compile")
        self._compiling["reverse"] = compiler.submit(self.reverse_chunk, *reverse_args)
        forward = self.forward_chunk.get_concrete_function(*forward_args)
        if not self._demote_on_random(forward.graph):
            self._compiling["forward"] = compiler.submit(self.forward_chunk, *forward_args)
        compiler.shutdown(wait=False)

    def _demote_on_random(self, graph: tf.Graph) -> bool:
        """Demote (True) when ``graph`` draws random numbers (see `check`)."""
        random = _random_ops(graph)
        if random:
            self.demote(f"the training loss draws random numbers in a step ({random[0]})")
        return bool(random)

    def ready(self, which: str) -> None:
        """Wait until the ``forward`` or ``reverse`` program started compiling by `check` is
        compiled; a compilation error is raised here, at the program's first real run."""
        compiling = self._compiling.pop(which, None)
        if compiling is not None:
            compiling.result()

    def fit_groups(self, best: list[int]) -> list[int]:
        """Elements per register for a pass whose schedules call for ``best`` (one per
        tensor, :func:`group_size`): the groups of the last pass while each is at least half
        of its best (the buffer's start-up overhead then stays within twice
        :data:`_OVERHEAD`), else ``best``."""
        if self._groups is None or any(2 * g < b for g, b in zip(self._groups, best, strict=True)):
            self._groups = list(best)
        return list(self._groups)

    def fit_capacity(self, need: int, most: int, row_bytes: int) -> int:
        """Rows of a chunk's cut-word table for a pass that needs ``need``: the most compiled
        so far when that suffices, else ``need`` rounded up to a power of two, and doubled
        while the table stays within :data:`_TABLE_HEADROOM_BYTES` (rows of ``row_bytes``):
        γ moves over a tuning run, and with it the cuts per chunk (12 at the digits
        example's start, up to 31 later). Never more than ``most`` (a chunk's steps: every
        need fits). A few compilations at most over a tuning run."""
        if need > self._capacity:
            rows = 1 << (need - 1).bit_length()
            if (2 * rows + 1) * row_bytes <= _TABLE_HEADROOM_BYTES:
                rows *= 2
            self._capacity = max(need, min(rows, most))
        return self._capacity

    def demote(self, why: str) -> bool:
        """Fall back from whole-chunk XLA programs to graph loops; False when already there."""
        if not self.whole:
            return False
        log.warning("exact engine: %s; running the steps as graph loops instead", why)
        self._compiling.clear()  # the whole programs' compilations: no longer waited for
        self._build(whole=False)
        return True

    def _weights(self, w_ints: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return [to_float(q, self.frac_bits, self.dtype) for q in w_ints]

    def _exact_update(self, w_ints, v_ints, regs, grads, alpha, omg, n, d, groups, shifts=None):
        """v ← γ v − (1−γ) g ; w ← w + α v on the exact state; returns an ok flag too.

        With ``shifts`` (one ``[G]`` tensor per weight tensor) the words the buffers move out
        this step are returned as a fifth output.
        """
        fb = self.frac_bits
        ok = tf.constant(True)
        new_w, new_v, new_regs, lo = [], [], [], []
        for i in range(self.k):
            if shifts is None:  # v ← γ v (bits kept)
                v, reg = group_mul_kernel(v_ints[i], regs[i], n[i], d[i], groups[i])
            else:
                v, reg, lo_i = group_mul_kernel(
                    v_ints[i], regs[i], n[i], d[i], groups[i], shifts[i]
                )
                lo.append(lo_i)
            gq, ok_g = to_fixed_unchecked(omg[i] * tf.cast(grads[i], tf.float64), fb)
            v = v - gq  # v ← v − (1−γ) g
            step, ok_s = to_fixed_unchecked(alpha[i] * to_float(v, fb), fb)
            wn = w_ints[i] + step  # w ← w + α v
            ok = ok & ok_g & ok_s & in_range(v) & in_range(wn)
            new_w.append(wn)
            new_v.append(v)
            new_regs.append(reg)
        return (new_w, new_v, new_regs, ok) + (() if shifts is None else (lo,))

    def _loss(self, w, theta, t, key):
        """``L(w, θ, t)``, or ``L(w, θ, t, key)`` when the caller passed a data key."""
        return self.train_loss(w, theta, t) if key is None else self.train_loss(w, theta, t, key)

    def _forward(self, state, row, theta, t, key, layout, shifts=None):
        """One exact step: new (w, v, registers), an ok flag, the loss [, words moved out].

        ``state = (w, v, registers)``, a list of ``K`` tensors each; ``row = (α, 1 − γ, n, d)``
        of step ``t`` (``[K]`` each); ``layout = (shapes, groups, register sizes)``, static.
        """
        w_ints, v_ints, regs = state
        groups = layout[1]
        alpha, omg, n, d = row
        w = self._weights(w_ints)
        theta = [tf.cast(x, self.dtype) for x in theta]
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = self._loss(w, theta, t, key)
        grads = tape.gradient(loss, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = self._update(w_ints, v_ints, regs, grads, alpha, omg, n, d, groups, shifts)
        ok = out[3] & tf.math.is_finite(tf.cast(loss, tf.float64))
        return (out[0], out[1], out[2], ok, loss) + tuple(out[4:])

    def _forward_chunk(self, state, t0, t1, tables, theta, key, layout, size, capacity):
        """Exact steps ``t0 .. t1−1`` as one loop (one XLA program when ``whole``).

        ``state`` is the packed ``(w, v, registers)`` and ``key`` the data key.
        ``tables = (alpha, omg, n, d, shifts, spill)``: ``[T, K]`` schedules (``omg = 1 − γ``
        as applied, ``γ = n/d``), the planned register cuts ``[T, ΣG]`` and which steps cut.
        ``size`` (static, ``≥ t1 − t0``) and ``capacity`` (static, ``≥`` the chunk's spill
        steps) size the outputs, so every chunk of a pass has one shape (one compilation).

        Returns:
            The packed state after step ``t1 − 1``, the training losses and ok flags of the
            chunk (``[size]``, the first ``t1 − t0`` meaningful), and the words cut at the
            chunk's spill steps, in step order (``[capacity + 1, L]``, one packed row of every
            buffer's ``[G, M]`` words per spill; rows past the spills are not meaningful).
        """
        alpha, omg, n, d, shifts, spill = tables
        groups = layout[1]
        width = sum(g * m for g, m in zip(groups, layout[2], strict=True))
        losses = tf.TensorArray(tf.float64, size=size)
        oks = tf.TensorArray(tf.bool, size=size)
        # Row `capacity` takes the words of steps that cut nothing when stores are
        # unconditional (a conditional store makes XLA copy the whole table each step).
        words = tf.zeros([capacity + 1, width], tf.int64)

        def body(t, state, losses, oks, words, count):
            row = (alpha[t], omg[t], n[t], d[t])
            w, v, reg, ok, loss, lo = self._forward(
                state, row, theta, t, key, layout, tf.split(shifts[t], groups)
            )
            losses = losses.write(t - t0, tf.cast(loss, tf.float64))
            oks = oks.write(t - t0, ok)
            cut = tf.ensure_shape(_pack(lo), [width])

            def store(at):
                return tf.tensor_scatter_nd_update(words, [[at]], [cut])

            if self.whole:
                words = store(tf.where(spill[t], count, capacity))
            else:
                words = tf.cond(spill[t], lambda: store(count), lambda: words)
            count += tf.cast(spill[t], tf.int32)
            return t + 1, (w, v, reg), losses, oks, words, count

        # The loop carries every tensor's state on its own; packing is per chunk, not per step.
        _, (w, v, reg), losses, oks, words, _ = tf.while_loop(
            lambda t, *_: t < t1,
            body,
            (t0, _unpack_state(*state, layout), losses, oks, words, tf.constant(0)),
        )
        return _pack(w), _pack(v), tf.concat(reg, 0), losses.stack(), oks.stack(), words

    def _reverse_chunk(self, state, t0, t1, tables, local, theta, key, layout, size):
        """Undo steps ``t1−1 .. t0`` as one loop, accumulating adjoints.

        ``state = (w, v, registers, dw, dv, dθ)`` (packed as in :meth:`_forward_chunk`, dθ a
        list); ``tables = (alpha, omg, n, d, gamma)`` (``[T, K]``); ``local = (shifts, slot,
        words)`` for the chunk's steps: the cuts ``[size, ΣG]``, the row of ``words``
        ``[capacity, L]`` holding each step's cut words (−1: nothing was cut) (``size``
        static, rows past ``t1 − t0`` unused).

        Returns:
            The packed state before step ``t0`` and the adjoints, plus ``dα`` and ``dγ`` of the
            chunk's steps (``[size, K]``, the first ``t1 − t0`` meaningful).
        """
        alpha, omg, n, d, gamma = tables
        shifts, slot, words = local
        shapes, groups, regs = layout
        d_alpha = tf.TensorArray(tf.float64, size=size)
        d_gamma = tf.TensorArray(tf.float64, size=size)
        sizes = [g * m for g, m in zip(groups, regs, strict=True)]

        # The loop carries both the step t and its row i = t − t0 of the chunk's tables, and its
        # body and condition read neither t0 nor t1: a loop that tested t0 made XLA take t0
        # for a compile-time constant, one compilation per chunk.
        def body(t, i, state, d_alpha, d_gamma):
            row = (alpha[t], omg[t], n[t], d[t], gamma[t])
            cut = tf.gather(words, tf.maximum(slot[i], 0)) * tf.cast(slot[i] >= 0, tf.int64)
            lo = [
                tf.reshape(x, [g, m])
                for x, g, m in zip(tf.split(cut, sizes), groups, regs, strict=True)
            ]
            out = self._reverse(state, row, theta, t, key, layout, tf.split(shifts[i], groups), lo)
            return t - 1, i - 1, out[:6], d_alpha.write(i, out[6]), d_gamma.write(i, out[7])

        w_p, v_p, r_p, dw_p, dv_p, dtheta = state
        unpacked = (*_unpack_state(w_p, v_p, r_p, layout), _unpack(dw_p, shapes))
        unpacked += (_unpack(dv_p, shapes), list(dtheta))
        _, _, (w, v, reg, dw, dv, dtheta), d_alpha, d_gamma = tf.while_loop(
            lambda t, i, *_: i >= 0, body, (t1 - 1, t1 - 1 - t0, unpacked, d_alpha, d_gamma)
        )
        return (
            (_pack(w), _pack(v), tf.concat(reg, 0), _pack(dw), _pack(dv), dtheta),
            d_alpha.stack(),
            d_gamma.stack(),
        )

    def _undo_position(self, w_ints, v_ints, dw, dv, alpha):
        """dα = dw·v ; w ← w − α v (exact) ; dv ← dv + α dw."""
        fb = self.frac_bits
        d_alpha, prev_w, new_dv = [], [], []
        for i in range(self.k):
            vf = to_float(v_ints[i], fb)
            d_alpha.append(tf.reduce_sum(dw[i] * vf))
            step, _ = to_fixed_unchecked(alpha[i] * vf, fb)
            prev_w.append(w_ints[i] - step)  # undo w ← w + α v
            new_dv.append(dv[i] + alpha[i] * dw[i])
        return prev_w, new_dv, tf.stack(d_alpha)

    def _undo_velocity(
        self, v_ints, regs, grads, hu, dw, dv, omg, n, d, gamma, groups, shifts=None, lo=None
    ):
        """v ← (v + (1−γ) g)/γ (exact) ; dγ = dv·(v + g) ; dw ← dw − H u ; dv ← γ dv."""
        fb = self.frac_bits
        prev_v, new_regs, d_gamma, new_dw, new_dv = [], [], [], [], []
        for i in range(self.k):
            g64 = tf.cast(grads[i], tf.float64)
            gq, _ = to_fixed_unchecked(omg[i] * g64, fb)
            # undo v ← γv − (1−γ)g, putting back the words moved out in the forward step
            v, reg = group_div_kernel(
                v_ints[i] + gq,
                regs[i],
                n[i],
                d[i],
                groups[i],
                None if shifts is None else shifts[i],
                None if lo is None else lo[i],
            )
            prev_v.append(v)
            new_regs.append(reg)
            d_gamma.append(tf.reduce_sum(dv[i] * (to_float(v, fb) + g64)))
            new_dw.append(dw[i] - tf.cast(hu[i], tf.float64))
            new_dv.append(gamma[i] * dv[i])
        return prev_v, new_regs, new_dw, new_dv, tf.stack(d_gamma)

    def _reverse(self, state, row, theta, t, key, layout, shifts=None, lo=None):
        """One exact reverse step with adjoint accumulation (see the module docstring).

        ``state = (w, v, registers, dw, dv, dθ)``, lists of tensors as in :meth:`_forward`;
        ``row = (α, 1 − γ, n, d, γ)`` of step ``t``.
        """
        w_ints, v_ints, regs, dw, dv, dtheta = state
        alpha, omg, n, d, gamma = row
        groups = layout[1]
        prev_w, dv, d_alpha = self._undo_pos(w_ints, v_ints, dw, dv, alpha)
        u = [tf.cast(omg[i] * dv[i], self.dtype) for i in range(self.k)]
        theta_c = [tf.cast(x, self.dtype) for x in theta]
        _, grads, hu, mixed = grad_hvp_mixed(
            lambda w_, th_: self._loss(w_, th_, t, key), self._weights(prev_w), theta_c, u
        )
        prev_v, new_regs, new_dw, new_dv, d_gamma = self._undo_vel(
            v_ints, regs, grads, hu, dw, dv, omg, n, d, gamma, groups, shifts, lo
        )
        new_dtheta = [dtheta[j] - tf.cast(mixed[j], tf.float64) for j in range(len(dtheta))]
        return (prev_w, prev_v, new_regs, new_dw, new_dv, new_dtheta, d_alpha, d_gamma)


@dataclass(frozen=True)
class _Schedules:
    """The ``[T, K]`` schedules as the passes take them: γ as exact rationals ``n/d`` and every
    table a tensor made once per pass."""

    alpha: np.ndarray
    gamma_applied: np.ndarray
    rats: list[list[Rational]]
    tables: tuple[tf.Tensor, ...]  # alpha, 1 − γ, n, d, γ (as applied)

    @property
    def steps(self) -> int:
        """T."""
        return self.alpha.shape[0]


def _schedules(alpha: Any, gamma: Any, k: int, max_denominator: int) -> _Schedules:
    """Validate ``[T, K]`` schedules and rationalise γ (``1 − γ`` is applied as ``(d−n)/d``)."""
    alpha_np = _schedule(alpha, "alpha", k)
    gamma_np = _schedule(gamma, "gamma", k)
    if alpha_np.shape != gamma_np.shape:
        raise ValueError(
            f"`alpha` and `gamma` must have the same shape. Received: {alpha_np.shape} "
            f"and {gamma_np.shape}"
        )
    rats = _rationals(gamma_np, max_denominator)
    n_all = np.array([[r.n for r in row] for row in rats], dtype=np.int64).reshape(gamma_np.shape)
    d_all = np.array([[r.d for r in row] for row in rats], dtype=np.int64).reshape(gamma_np.shape)
    tables = (alpha_np, (d_all - n_all) / d_all, n_all, d_all, n_all / d_all)
    return _Schedules(
        alpha=alpha_np,
        gamma_applied=n_all / d_all,
        rats=rats,
        tables=tuple(tf.constant(x) for x in tables),
    )


#: Target of the buffer's overhead (register start-up and the padding of the last word) as a
#: fraction of the information it must keep.
_OVERHEAD = 0.04


def group_size(rats: Sequence[Rational], smallest: int = DEFAULT_GROUP, largest: int = 256) -> int:
    """Elements per register for one tensor's buffer over a run of multiplications ``rats``.

    A register costs about ``log2(d·n/(d−n))`` bits to start and up to a byte of padding in its
    last word, whatever it holds; shared by ``G`` elements that is ``(start + 8)/G`` bits per
    element, against ``Σ log2(d/n)`` bits of information. ``G`` is the smallest power of two
    (at least ``smallest``, at most ``largest``) that brings the ratio to ``_OVERHEAD``; both
    passes derive it from the same rationals, so they share the layout.
    """
    info = sum(r.info_bits for r in rats)
    lossy = [r for r in rats if r.n != r.d]
    if not lossy or info <= 0:
        return smallest
    start = max(math.log2(r.d * r.n / (r.d - r.n)) for r in lossy)
    need = (start + 8) / (_OVERHEAD * info)
    g = smallest
    while g < need and g < largest:
        g *= 2
    return g


class _ExactState:
    """The packed exact state of one run: weights, velocities and buffer registers as one flat
    int64 tensor each, the buffers' host words, and the initial weights for the certificate.

    Invariant: between steps ``w_p``, ``v_p``, ``r_p`` hold the state after the last step
    (forward) or before the step just undone (reverse).
    """

    def __init__(
        self, w0: Sequence[tf.Tensor], frac_bits: int, sc: _Schedules, st: _Stepper
    ) -> None:
        w_ints = [to_fixed(tf.convert_to_tensor(x, tf.float64), frac_bits, what="w0") for x in w0]
        self.frac_bits = frac_bits
        self.shapes = tuple(tuple(int(s) for s in x.shape) for x in w_ints)
        groups = st.fit_groups([group_size([row[k] for row in sc.rats]) for k in range(len(w0))])
        self.buffers = [InfoBuffer(x.shape, g) for x, g in zip(w_ints, groups, strict=True)]
        self.layout = (
            self.shapes,
            tuple(b.group for b in self.buffers),
            tuple(b.registers for b in self.buffers),
        )
        self.w_start = w_ints  # immutable tensors: a reference is a copy
        self.w_p = _pack(w_ints)
        self.v_p = tf.zeros_like(self.w_p)  # v_0 = 0
        self.r_p = _gather_registers(self.buffers)

    def weights(self, dtype: tf.DType) -> list[tf.Tensor]:
        """The current weights as floats of ``dtype``."""
        return [to_float(q, self.frac_bits, dtype) for q in _unpack(self.w_p, self.shapes)]

    def width(self) -> int:
        """L, the int64 words one row of cut words holds (every buffer's ``[G, M]``)."""
        return sum(b.group * b.registers for b in self.buffers)

    def n_weights(self) -> int:
        """N, the number of scalar weights."""
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    def spill(self) -> tuple[float, float]:
        """Move every register's words to host memory (between the passes only host words are
        held); returns ``(bits held, information bound)`` per weight."""
        _scatter_registers(self.buffers, self.r_p)
        for b in self.buffers:
            b.flush()
        n = max(self.n_weights(), 1)
        held = sum(b.bits_held() * b.shape.num_elements() for b in self.buffers)
        bound = sum(b.info_bits * b.shape.num_elements() for b in self.buffers)
        for b in self.buffers:
            b.restore()
        self.r_p = _gather_registers(self.buffers)
        return held / n, bound / n

    def certify(self, bits_held: float, info_bound: float) -> ExactnessCertificate:
        """Compare the recovered state with the start: equal weights, zero velocities, empty
        buffers (all with equality on the integers)."""
        _scatter_registers(self.buffers, self.r_p)
        w_ints = _unpack(self.w_p, self.shapes)
        return ExactnessCertificate(
            exact_w0=all(
                bool(tf.reduce_all(a == b)) for a, b in zip(w_ints, self.w_start, strict=True)
            ),
            exact_v0=not bool(tf.reduce_any(self.v_p != 0)),
            buffer_empty=all(b.is_empty() for b in self.buffers),
            bits_held=bits_held,
            info_bound_bits=info_bound,
        )


def _divergence(
    ok: np.ndarray, losses: np.ndarray, t0: int, frac_bits: int, replica: int | None = None
) -> DivergenceError:
    """The error for the first failed step of a chunk that starts at step ``t0``."""
    i = int(np.flatnonzero(~ok)[0])
    if not np.isfinite(losses[i]):
        return DivergenceError(t0 + i, f"non-finite training loss ({losses[i]})", replica)
    return DivergenceError(
        t0 + i,
        "non-finite gradient or fixed-point overflow "
        f"(|w|, |v| must stay below {max_abs_value(frac_bits):g})",
        replica,
    )


@dataclass(frozen=True)
class _Pass:
    """What the forward and the reverse pass of one run share: the compiled steps, the
    schedules, θ, the data key, the progress callback and the chunk length."""

    st: _Stepper
    sc: _Schedules
    theta: list[tf.Tensor]
    key: tf.Tensor | None
    callback: Callback | None
    chunk: int

    def capacity(self, spill: np.ndarray) -> int:
        """The most spill steps of any chunk (``spill``: ``[T]`` bool): the static row count
        of a chunk's table of cut words."""
        return max(int(spill[t0:t1].sum()) for t0, t1 in self.chunks()) if len(spill) else 0

    def chunks(self) -> list[tuple[int, int]]:
        """``[(t0, t1), ...]`` covering ``0 .. T`` in order."""
        T = self.sc.steps
        return [(t0, min(T, t0 + self.chunk)) for t0 in range(0, T, self.chunk)]


def _plan_forward(p: _Pass, run: _ExactState) -> tuple[list[list[Any]], np.ndarray, np.ndarray]:
    """Plan every register cut of the forward pass on the host, before it runs.

    The registers' bound depends only on the rationals (every element sees the same ``n/d``),
    so which steps cut how many bits is known without reading data.

    Returns:
        The per-step, per-buffer plans (None: no cut), the cut table ``[T, ΣG]`` and the
        steps that cut ``[T]`` (bool).
    """
    T = p.sc.steps
    offsets = np.cumsum([0] + [b.group for b in run.buffers])
    shifts = np.zeros((T, offsets[-1]), np.int64)
    plans = []
    for t in range(T):
        row = [b.before_mul(p.sc.rats[t][i]) for i, b in enumerate(run.buffers)]
        for i, plan in enumerate(row):
            if plan is not None:
                shifts[t, offsets[i] : offsets[i + 1]] = plan
        plans.append(row)
    return plans, shifts, shifts.any(axis=1)


def _store_words(run: _ExactState, plans: list[list[Any]], steps: list[int], words: np.ndarray):
    """Hand the words a forward chunk cut (``[spills, L]``) to their buffers' host memory."""
    sizes = [b.group * b.registers for b in run.buffers]
    for t, row in zip(steps, words, strict=True):
        for b, plan, lo in zip(
            run.buffers, plans[t], np.split(row, np.cumsum(sizes)[:-1]), strict=True
        ):
            if plan is not None:
                b.after_mul(lo.reshape(b.group, b.registers), shifts=plan)


def _forward_pass(p: _Pass, run: _ExactState, label: int | None) -> tuple[np.ndarray, int]:
    """T exact steps ``w_t, v_t → w_{t+1}, v_{t+1}``; returns the per-step training losses and
    the most spill steps of a chunk (for the reverse pass).

    The bits each ``γ`` multiplication destroys stay in the registers; before a register could
    overflow its word, its low bytes are cut (planned on the host by :func:`_plan_forward`)
    and moved to host memory once per chunk.

    Raises:
        DivergenceError: non-finite loss or gradient, or fixed-point overflow (of replica
            ``label``).
    """
    plans, shifts, spill = _plan_forward(p, run)
    tables = (*p.sc.tables[:4], tf.constant(shifts), tf.constant(spill))
    capacity = p.st.fit_capacity(p.capacity(spill), p.chunk, 8 * run.width())
    if not p.st.checked:
        _check_programs(p, run, tables, capacity)
    p.st.ready("forward")
    losses = []
    for t0, t1 in p.chunks():
        res = p.st.forward_chunk(
            (run.w_p, run.v_p, run.r_p),
            tf.constant(t0),
            tf.constant(t1),
            tables,
            p.theta,
            p.key,
            run.layout,
            p.chunk,
            capacity,
        )
        run.w_p, run.v_p, run.r_p = res[:3]
        loss, ok = res[3].numpy()[: t1 - t0], res[4].numpy()[: t1 - t0]
        if not ok.all():
            raise _divergence(ok, loss, t0, run.frac_bits, label)
        cut = [t for t in range(t0, t1) if spill[t]]
        _store_words(run, plans, cut, res[5].numpy()[: len(cut)])
        losses.append(loss)
        if p.callback:
            p.callback("forward", t1, p.sc.steps)
    return (np.concatenate(losses) if losses else np.zeros(0)), capacity


def _check_programs(p: _Pass, run: _ExactState, tables: tuple, capacity: int) -> None:
    """:meth:`_Stepper.check` with arguments shaped as the passes will call the chunks with."""
    state = (run.w_p, run.v_p, run.r_p)
    zero = tf.zeros(run.w_p.shape, tf.float64)  # dw, dv
    local = (
        tf.zeros([p.chunk, sum(b.group for b in run.buffers)], tf.int64),
        tf.fill([p.chunk], -1),
        tf.zeros([max(capacity, 1), run.width()], tf.int64),
    )
    t0 = t1 = tf.constant(0)  # zero steps: `check` runs them to compile them
    rest = (p.theta, p.key, run.layout, p.chunk)
    p.st.check(
        (state, t0, t1, tables, *rest, capacity),
        ((*state, zero, zero, [tf.zeros_like(x) for x in p.theta]), t0, t1, p.sc.tables, local)
        + rest,
    )


def _unplan_chunk(
    p: _Pass, run: _ExactState, t0: int, t1: int, capacity: int
) -> tuple[tf.Tensor, ...]:
    """Pop the plans and words of steps ``t1−1 .. t0`` from the buffers (host memory), as the
    reverse chunk takes them: cuts ``[chunk, ΣG]``, word rows ``[chunk]``, words
    ``[max(capacity, 1), L]`` (padded to the pass's static shapes)."""
    offsets = np.cumsum([0] + [b.group for b in run.buffers])
    sizes = np.cumsum([0] + [b.group * b.registers for b in run.buffers])
    shifts = np.zeros((p.chunk, offsets[-1]), np.int64)
    slot = np.full(p.chunk, -1, np.int32)
    rows = []
    for t in reversed(range(t0, t1)):
        row = np.zeros(sizes[-1], np.int64)
        for i, b in enumerate(run.buffers):
            cut, lo = b.before_div(p.sc.rats[t][i])
            if cut is not None:
                shifts[t - t0, offsets[i] : offsets[i + 1]] = cut
                row[sizes[i] : sizes[i + 1]] = lo.reshape(-1)
        if shifts[t - t0].any():
            slot[t - t0] = len(rows)
            rows.append(row)
    if len(rows) > capacity:  # the forward plan and its undoing disagree: a bug, say so
        raise RuntimeError(f"reverse chunk {t0}..{t1} has {len(rows)} cuts, forward {capacity}")
    words = np.zeros((max(capacity, 1), sizes[-1]), np.int64)
    if rows:
        words[: len(rows)] = np.stack(rows)
    return tf.constant(shifts), tf.constant(slot), tf.constant(words)


def _validation_adjoint(
    val_loss: ValLoss, w_final: list[tf.Tensor], steps: int, replica: int | None = None
) -> tuple[float, list[tf.Tensor]]:
    """``f(w_T)`` and ``dw = ∇f(w_T)`` (float64), the reverse pass's starting adjoint
    (a non-finite ``f`` is a :class:`DivergenceError` of ``replica``)."""
    with tf.GradientTape() as tape:
        tape.watch(w_final)
        f_val = val_loss(w_final)
    grads = tape.gradient(f_val, w_final, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if not np.isfinite(float(f_val)):
        raise DivergenceError(steps, f"non-finite validation loss ({float(f_val)})", replica)
    return float(f_val), [tf.cast(g, tf.float64) for g in grads]


def _reverse_pass(
    p: _Pass, run: _ExactState, dw: list[tf.Tensor], capacity: int
) -> tuple[np.ndarray, np.ndarray, list[tf.Tensor], list[tf.Tensor]]:
    """Undo the T steps exactly, from ``dw = ∇f(w_T)``, ``dv = 0``, accumulating adjoints
    (``capacity``: the forward pass's most spill steps in a chunk).

    Returns:
        ``(d_alpha [T, K], d_gamma [T, K], d_theta, d_w0)``.
    """
    dw_p = _pack(dw)
    adjoints = (dw_p, tf.zeros_like(dw_p), [tf.zeros_like(x) for x in p.theta])
    d_alpha, d_gamma = np.zeros_like(p.sc.alpha), np.zeros_like(p.sc.alpha)
    p.st.ready("reverse")
    for t0, t1 in reversed(p.chunks()):
        state, da, dg = p.st.reverse_chunk(
            (run.w_p, run.v_p, run.r_p, *adjoints),
            tf.constant(t0),
            tf.constant(t1),
            p.sc.tables,
            _unplan_chunk(p, run, t0, t1, capacity),
            p.theta,
            p.key,
            run.layout,
            p.chunk,
        )
        (run.w_p, run.v_p, run.r_p), adjoints = state[:3], (state[3], state[4], list(state[5]))
        d_alpha[t0:t1] = da.numpy()[: t1 - t0]
        d_gamma[t0:t1] = dg.numpy()[: t1 - t0]
        if p.callback:
            p.callback("reverse", p.sc.steps - t0, p.sc.steps)
    return d_alpha, d_gamma, adjoints[2], _unpack(adjoints[0], run.shapes)


def _key_tensor(key: Any) -> tf.Tensor | None:
    """The data key as a tensor (a Python int becomes int64; a table keeps its dtype)."""
    if key is None:
        return None
    return tf.constant(key, tf.int64) if isinstance(key, int) else tf.convert_to_tensor(key)


def hypergradient(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    w0: Sequence[tf.Tensor],
    alpha: tf.Tensor | np.ndarray,
    gamma: tf.Tensor | np.ndarray,
    theta: Sequence[tf.Tensor] = (),
    *,
    key: Any = None,
    dtype: tf.DType = tf.float64,
    frac_bits: int = DEFAULT_FRAC_BITS,
    max_denominator: int = DEFAULT_MAX_DENOMINATOR,
    callback: Callback | None = None,
    stepper: _Stepper | None = None,
    chunk_steps: int = CHUNK_STEPS,
) -> HypergradResult:
    """Train exactly forward, then exactly backward, returning hypergradients of ``val_loss``.

    Args:
        train_loss: ``L(w, theta, t)``, or ``L(w, theta, t, key)`` when ``key`` is given;
            deterministic in its arguments (no hidden state).
        val_loss: ``f(w)``, the objective evaluated at the final weights.
        w0: initial weights, one tensor per parameter tensor (``K`` of them).
        alpha: learning rates, shape ``[T, K]``.
        gamma: momentum decays in (0, 1], shape ``[T, K]``; applied as exact rationals.
        theta: hyperparameters of ``train_loss`` (e.g. weight decay), differentiated too.
        key: a data key passed unchanged to ``train_loss`` as its fourth argument (an int, or
            a tensor such as the ``[T, B]`` table of :func:`minibatch_table`); changing its
            value does not recompile the steps.
        dtype: dtype the losses are evaluated in (the state is always exact int64).
        frac_bits: fractional bits of the fixed-point state.
        max_denominator: largest denominator of the rationals used for ``gamma``.
        callback: called as ``callback(phase, step, total)`` after every chunk of steps.
        stepper: reuse the compiled steps of an earlier call with the same ``train_loss``.
        chunk_steps: steps per compiled graph loop (one host round trip per chunk).

    Returns:
        A :class:`HypergradResult`; its certificate is always ``ok``.

    Note:
        Calls :func:`revhpo.runtime.require_exact_ops` (TensorFlow op determinism, process-wide):
        the reverse pass must recompute each forward gradient bit for bit.

    Raises:
        DivergenceError: non-finite loss or gradient, or fixed-point overflow (names the step).
        ExactnessError: the reversal was not bit-exact.
        ValueError: malformed schedules.
    """
    return hypergradients(
        train_loss,
        val_loss,
        [w0],
        alpha,
        gamma,
        theta,
        keys=[key],
        dtype=dtype,
        frac_bits=frac_bits,
        max_denominator=max_denominator,
        callback=callback,
        stepper=stepper,
        chunk_steps=chunk_steps,
    )[0]


def hypergradients(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    w0s: Sequence[Sequence[tf.Tensor]],
    alpha: tf.Tensor | np.ndarray,
    gamma: tf.Tensor | np.ndarray,
    theta: Sequence[tf.Tensor] = (),
    *,
    keys: Sequence[Any] | None = None,
    dtype: tf.DType = tf.float64,
    frac_bits: int = DEFAULT_FRAC_BITS,
    max_denominator: int = DEFAULT_MAX_DENOMINATOR,
    callback: Callback | None = None,
    stepper: _Stepper | None = None,
    chunk_steps: int = CHUNK_STEPS,
) -> list[HypergradResult]:
    """:func:`hypergradient` of R replicas (initial weights ``w0s[r]``, data key ``keys[r]``;
    the schedules and θ are shared), run side by side (:func:`_side_by_side`).

    Each replica has its own exact state, information buffer and certificate and runs the
    one-replica programs, so its result equals ``hypergradient(..., w0s[r], ...,
    key=keys[r])`` bit for bit; the programs are compiled once whatever R. ``timings`` are
    each replica's own.

    Raises:
        DivergenceError: a replica diverged (its index in ``replica`` when R > 1); no result
            is returned for the others.
        ExactnessError: a replica's reversal was not bit-exact.
        ValueError: malformed schedules, or ``keys`` not one per replica.
    """
    require_exact_ops()
    if not w0s:
        raise ValueError("`w0s` must hold at least one replica's initial weights. Received: []")
    keys = [None] * len(w0s) if keys is None else list(keys)
    if len(keys) != len(w0s):
        raise ValueError(
            f"`keys` must hold one key per replica. Received: {len(keys)} keys, {len(w0s)} replicas"
        )
    k = len(w0s[0])
    sc = _schedules(alpha, gamma, k, max_denominator)
    theta = [tf.convert_to_tensor(x, tf.float64) for x in theta]
    st = stepper or _Stepper(train_loss, k, dtype, frac_bits)
    chunk = max(1, int(chunk_steps))

    def one(r: int) -> HypergradResult:  # replica r alone (progress: replica 0's)
        p = _Pass(st, sc, theta, _key_tensor(keys[r]), callback if r == 0 else None, chunk)
        return _run(p, val_loss, w0s[r], r if len(w0s) > 1 else None, dtype, frac_bits)

    try:
        return _side_by_side(len(w0s), one, alone_first=not st.checked)
    except ArithmeticError:  # divergence or a fixed-point overflow: the training's, not XLA's
        raise
    except Exception as exc:
        # The whole-chunk programs could not be built (an op or a derivative with no XLA
        # form: e.g. forward-mode through a loop's gradient, found with the SSS layer), did
        # not compile, or their reversal did not certify: once per stepper, run again as
        # graph loops (which raise the error again if it is not XLA's).
        if not st.demote(f"the compiled chunks failed ({_brief(exc)})"):
            raise
    return _side_by_side(len(w0s), one, alone_first=True)


def _side_by_side(
    count: int, one: Callable[[int], HypergradResult], alone_first: bool
) -> list[HypergradResult]:
    """``[one(0), ..., one(count − 1)]``, run side by side in threads (as many as there are
    CPU cores).

    Each replica runs the one-replica programs, so its result is that of a run of its own by
    construction, and the programs compile once whatever the replica count. The programs run
    outside the interpreter lock, so replicas overlap on the cores (and on a device). Errors
    are raised after every replica has ended, the first replica's in replica order. With
    ``alone_first``, ``one(0)`` runs before the others start: a stepper's first run checks
    its programs and may switch them (`_Stepper.check`), and every replica must run one kind
    of program both ways.
    """
    if count == 1:
        return [one(0)]
    first = [one(0)] if alone_first else []
    with ThreadPoolExecutor(max_workers=min(count, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(one, r) for r in range(len(first), count)]
    for future in futures:
        if future.exception() is not None:
            raise future.exception()
    return first + [future.result() for future in futures]


def _run(
    p: _Pass,
    val_loss: ValLoss,
    w0: Sequence[tf.Tensor],
    label: int | None,
    dtype: tf.DType,
    frac_bits: int,
) -> HypergradResult:
    """One run's forward and reverse pass and its certificate (``label``: its replica index
    in errors, None for a single run)."""
    sc = p.sc
    t0 = time.perf_counter()
    try:
        run = _ExactState(w0, frac_bits, sc, p.st)
    except FixedPointOverflowError as exc:
        exc.replica = label  # which replica's initial weights
        raise
    losses, capacity = _forward_pass(p, run, label)
    t_forward = time.perf_counter() - t0
    bits_held, info_bound = run.spill()

    t1 = time.perf_counter()
    w_final = run.weights(dtype)
    f_val, dw = _validation_adjoint(val_loss, w_final, sc.steps, label)
    d_alpha, d_gamma, d_theta, d_w0 = _reverse_pass(p, run, dw, capacity)
    t_reverse = time.perf_counter() - t1

    cert = run.certify(bits_held, info_bound)
    if not cert.ok:
        raise ExactnessError(cert, _exactness_hint(dtype))
    _check_finite(sc.steps, label, d_alpha=d_alpha, d_gamma=d_gamma, d_theta=d_theta, d_w0=d_w0)
    return HypergradResult(
        val_loss=f_val,
        w_final=w_final,
        d_alpha=tf.constant(d_alpha),
        d_gamma=tf.constant(d_gamma),
        d_theta=d_theta,
        d_w0=d_w0,
        gamma_applied=sc.gamma_applied,
        train_losses=losses,
        certificate=cert,
        timings={"forward_s": t_forward, "reverse_s": t_reverse},
    )


def _check_finite(steps: int, replica: int | None, **grads: Any) -> None:
    """Raise :class:`DivergenceError` (of ``replica``) when a hypergradient has a non-finite
    entry: an exact reversal of a run whose second-order terms overflowed is still no valid
    result."""
    for name, g in grads.items():
        parts = g if isinstance(g, list) else [g]
        bad = sum(int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x)))) for x in parts)
        if bad:
            raise DivergenceError(
                steps, f"non-finite hypergradient: {bad} non-finite entries in {name}", replica
            )


def _exactness_hint(dtype: tf.DType) -> str:
    if dtype == tf.float64:
        return ""
    return (
        f". The training loss is evaluated in {dtype.name}: oneDNN's CPU kernels can "
        "round differently in the two passes; set TF_ENABLE_ONEDNN_OPTS=0 before "
        "TensorFlow is first imported (importing revhpo first does), or use float64"
    )


def make_stepper(
    train_loss: TrainLoss,
    k: int,
    dtype: tf.DType = tf.float64,
    frac_bits: int = DEFAULT_FRAC_BITS,
    xla: bool = True,
) -> _Stepper:
    """Compiled steps to pass as ``stepper=`` to repeated :func:`hypergradient` calls."""
    return _Stepper(train_loss, k, dtype, frac_bits, xla)
