"""Cost of exactness: reversible training vs plain float SGD-momentum on the same problem.

Used by ``revhpo bench`` and the benchmark scripts. Every figure is a ratio measured in one
process, so the machine's speed cancels out.

:func:`measure_engine` (``revhpo bench``) builds the plain loop a TensorFlow user writing for
speed would write — the whole ``T``-step loop in one ``tf.function`` over a ``[T, B]``
minibatch index table made before the loop, with and without XLA (:class:`WholeLoopSGD`) —
and divides the exact passes' times by the faster of the two; one compiled step per Python
call (:class:`PerStepSGD`) is timed too, for comparison with earlier figures.
:func:`measure` (``benchmarks/bench_nets.py``) compares with
:class:`~revhpo.optimizers.PlainSGD` on any ``L(w, θ, t)``.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from revhpo.optimizers.reversible import (
    TrainLoss,
    ValLoss,
    hypergradient,
    hypergradients,
    make_stepper,
    minibatch_indices,
    minibatch_table,
)
from revhpo.optimizers.unrolled import PlainSGD, unrolled_hypergradient

#: The two sizes of ``revhpo bench``: the default (N = 42,310) and ``--large`` (N ≈ 1.8M).
DEFAULT_SIZES = (784, 50, 50, 10)
LARGE_SIZES = (784, 1000, 1000, 10)
LARGE_STEPS = 20

#: ``loss(w, x_batch, y_batch)``: the training loss on one minibatch of data.
BatchLoss = Callable[[Sequence[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class BenchProblem:
    """One benchmark problem, seen by the exact engine and by hand-written plain loops.

    The same loss three ways: ``train_loss(w, θ, t)`` draws step ``t``'s minibatch itself
    (:func:`~revhpo.optimizers.minibatch_indices`); ``table_loss(w, θ, t, batches)`` reads row
    ``t`` of the run's index table (:meth:`table`, passed to the engine as its data ``key``, as
    :class:`~revhpo.optimizers.TuningProblem` does); ``batch_loss(w, x_b, y_b)`` takes a
    minibatch already gathered.
    """

    sizes: tuple[int, ...]
    train_loss: TrainLoss
    table_loss: TrainLoss
    val_loss: ValLoss
    batch_loss: BatchLoss
    w0: list[tf.Tensor]
    x_train: tf.Tensor
    y_train: tf.Tensor
    batch: int
    seed: int
    dtype: tf.DType

    @property
    def n_train(self) -> int:
        """Training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_params(self) -> int:
        """Weights in all (``N``)."""
        return int(sum(int(x.shape.num_elements()) for x in self.w0))

    def table(self, steps: int) -> tf.Tensor:
        """The run's ``[steps, batch]`` int32 minibatch indices, made once (one sort per
        epoch): row ``t`` equals ``minibatch_indices(seed, t, n_train, batch)``."""
        return minibatch_table(self.seed, steps, self.n_train, self.batch)


def mlp_bench_problem(
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_train: int = 1000,
    n_val: int = 500,
    batch: int = 200,
    seed: int = 0,
    dtype: tf.DType = tf.float64,
) -> BenchProblem:
    """A tanh MLP on synthetic teacher-labelled data (generated here: no download)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_val, sizes[0]))
    teacher = rng.normal(size=(sizes[0], sizes[-1]))
    y = np.argmax(x @ teacher, axis=1)
    xt, yt = tf.constant(x[:n_train], dtype), tf.constant(y[:n_train])
    xv, yv = tf.constant(x[n_train:], dtype), tf.constant(y[n_train:])
    n_layers = len(sizes) - 1

    def net(w, h):
        for i in range(n_layers):
            h = h @ w[2 * i] + w[2 * i + 1]
            if i < n_layers - 1:
                h = tf.tanh(h)
        return h

    def batch_loss(w, xb, yb):
        logits = net(w, tf.cast(xb, w[0].dtype))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))

    def train_loss(w, theta, t):
        idx = minibatch_indices(seed, t, n_train, batch)
        return batch_loss(w, tf.gather(xt, idx), tf.gather(yt, idx))

    def table_loss(w, theta, t, batches):
        idx = tf.gather(batches, t)
        return batch_loss(w, tf.gather(xt, idx), tf.gather(yt, idx))

    def val_loss(w):
        logits = net(w, tf.cast(xv, w[0].dtype))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yv, logits))

    w0 = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w0.append(tf.constant(rng.normal(size=(a, b)) / np.sqrt(a)))
        w0.append(tf.zeros([b], tf.float64))
    return BenchProblem(
        tuple(int(s) for s in sizes),
        train_loss,
        table_loss,
        val_loss,
        batch_loss,
        w0,
        xt,
        yt,
        batch,
        seed,
        dtype,
    )


class WholeLoopSGD:
    """Plain float SGD-momentum, the whole ``T``-step loop in one compiled call.

    hypergrad's convention, as :class:`~revhpo.optimizers.PlainSGD`: ``v ← γv − (1−γ)∇L``,
    ``w ← w + αv`` with per-tensor ``α``, ``γ`` (schedules ``[T, K]``). The loop is one
    ``tf.while_loop`` inside one ``tf.function`` (XLA-compiled with ``jit_compile=True``); the
    minibatches are gathered from the run's index table (:meth:`BenchProblem.table`), made
    before the loop. One trace per ``T`` (the trip count is static, which XLA needs).
    """

    def __init__(self, problem: BenchProblem, *, jit_compile: bool = False) -> None:
        self.problem = problem
        self.jit_compile = jit_compile
        x, y, loss_fn, dtype = problem.x_train, problem.y_train, problem.batch_loss, problem.dtype

        def loop(w0, alpha, gamma, table):
            steps = int(table.shape[0])
            k = len(w0)

            def body(t, w, v, losses):
                idx = table[t]
                xb, yb = tf.gather(x, idx), tf.gather(y, idx)
                with tf.GradientTape() as tape:
                    tape.watch(w)
                    loss = loss_fn(w, xb, yb)
                g = tape.gradient(loss, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                a, c = alpha[t], gamma[t]
                v = [c[i] * v[i] - (1.0 - c[i]) * g[i] for i in range(k)]
                w = [w[i] + a[i] * v[i] for i in range(k)]
                return t + 1, w, v, losses.write(t, loss)

            init = (
                tf.constant(0, tf.int32),
                list(w0),
                [tf.zeros_like(wi) for wi in w0],
                tf.TensorArray(dtype, size=steps),
            )
            _, w, v, losses = tf.while_loop(
                lambda t, *_: t < steps, body, init, maximum_iterations=steps
            )
            return w, losses.stack()

        self._loop = tf.function(loop, jit_compile=jit_compile, autograph=False)

    def run(
        self,
        w0: Sequence[tf.Tensor],
        alpha: np.ndarray | tf.Tensor,
        gamma: np.ndarray | tf.Tensor,
        table: tf.Tensor | None = None,
    ) -> tuple[list[tf.Tensor], np.ndarray]:
        """Train from ``w0``; returns the final weights (``dtype``) and the training losses.

        ``table``: the run's index table (made here when not given).
        """
        dtype = self.problem.dtype
        alpha = tf.convert_to_tensor(np.asarray(alpha, np.float64), dtype)
        gamma = tf.convert_to_tensor(np.asarray(gamma, np.float64), dtype)
        if table is None:
            table = self.problem.table(int(alpha.shape[0]))
        w, losses = self._loop([tf.cast(x, dtype) for x in w0], alpha, gamma, table)
        return list(w), losses.numpy()


class PerStepSGD:
    """Plain float SGD-momentum dispatching one compiled step per Python call.

    Same convention and minibatches as :class:`WholeLoopSGD`; the step is a ``tf.function``
    (no XLA) whose concrete function is called directly, with the schedule rows and the table
    rows made once before the loop: the dispatch the plain baseline (and the exact engine)
    used before whole loops were compiled, kept for comparison with those figures.
    """

    def __init__(self, problem: BenchProblem) -> None:
        self.problem = problem
        x, y, loss_fn = problem.x_train, problem.y_train, problem.batch_loss

        def step(w, v, a, c, idx):
            with tf.GradientTape() as tape:
                tape.watch(w)
                loss = loss_fn(w, tf.gather(x, idx), tf.gather(y, idx))
            g = tape.gradient(loss, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            v = [c[i] * v[i] - (1.0 - c[i]) * g[i] for i in range(len(w))]
            w = [w[i] + a[i] * v[i] for i in range(len(w))]
            return w, v, loss

        self._step = tf.function(step, autograph=False)

    def run(
        self,
        w0: Sequence[tf.Tensor],
        alpha: np.ndarray | tf.Tensor,
        gamma: np.ndarray | tf.Tensor,
        table: tf.Tensor | None = None,
    ) -> tuple[list[tf.Tensor], np.ndarray]:
        """Train from ``w0``; returns the final weights (``dtype``) and the training losses."""
        dtype = self.problem.dtype
        steps = int(np.shape(alpha)[0])
        if table is None:
            table = self.problem.table(steps)
        a_rows = tf.unstack(tf.convert_to_tensor(np.asarray(alpha, np.float64), dtype))
        c_rows = tf.unstack(tf.convert_to_tensor(np.asarray(gamma, np.float64), dtype))
        idx_rows = tf.unstack(table)
        w = [tf.cast(x, dtype) for x in w0]
        v = [tf.zeros_like(x) for x in w]
        losses, fn = [], None
        for t in range(steps):
            args = (w, v, a_rows[t], c_rows[t], idx_rows[t])
            fn = fn or self._step.get_concrete_function(*args)
            w, v, loss = fn(*args)
            losses.append(loss)
        return list(w), np.array([float(x) for x in losses])


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


#: The plain loops of :func:`measure_engine`, in its output's order.
PLAIN_VARIANTS = ("while_loop", "xla", "per_step")


def measure_engine(
    problem: BenchProblem,
    steps: int = 100,
    *,
    alpha: float = 0.1,
    gamma: float = 0.9,
    repeats: int = 5,
    replicas: bool = True,
) -> dict:
    """Time the exact forward and reverse against three plain float loops, interleaved.

    Plain loops (same net, data, batch, ``T``, dtype, convention): ``while_loop`` (the whole
    loop in one ``tf.function``), ``xla`` (the same, ``jit_compile=True``), ``per_step``
    (:class:`PerStepSGD`, one compiled step per Python call). The exact engine reads the same
    minibatch index table (its data ``key``, as :class:`~revhpo.optimizers.TuningProblem`
    passes it). The table is made once before the timed runs, for all four (its cost,
    ``index_table_s``, is in none of the times). Each of the four runs once untimed (tracing,
    compiling: ``warmup_s``), then ``repeats`` rounds run each once, in an order rotated every
    round; every figure is the median over the rounds (``samples_s`` has them all). With
    ``replicas``, also one forward + reverse of 1 and of 8 replicas trained together
    (``replicas_s``, ``replicas_8_over_1``; None without).

    Returns:
        A JSON-able dict: ``plain_loop_s`` (per variant), ``fastest_plain``,
        ``fastest_plain_s``, ``forward_s``, ``reverse_s``, ``forward_over_fastest_plain``,
        ``reverse_over_fastest_plain``, ``forward_over_plain_per_step``,
        ``reverse_over_plain_per_step``, ``per_step_over_fastest_plain``, ``bits_held``,
        ``info_bound_bits``, ``bits_over_bound``, ``exact``, ``warmup_s``, ``samples_s``,
        ``index_table_s``, ``n_params``, ``steps``, ``repeats``.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1. Received: repeats={repeats}")
    k, dtype, w0 = len(problem.w0), problem.dtype, problem.w0
    a = np.full((steps, k), alpha)
    g = np.full((steps, k), gamma)
    problem.table(steps)  # eager kernels warmed
    t0 = time.perf_counter()
    table = problem.table(steps)
    table_s = time.perf_counter() - t0
    loop = WholeLoopSGD(problem)
    xla = WholeLoopSGD(problem, jit_compile=True)
    per_step = PerStepSGD(problem)
    stepper = make_stepper(problem.table_loss, k, dtype)
    exact: list = []

    def run_exact() -> None:
        exact.append(
            hypergradient(
                problem.table_loss,
                problem.val_loss,
                w0,
                a,
                g,
                key=table,
                dtype=dtype,
                stepper=stepper,
            )
        )

    runs: dict[str, Callable[[], object]] = {
        "while_loop": lambda: loop.run(w0, a, g, table),
        "xla": lambda: xla.run(w0, a, g, table),
        "per_step": lambda: per_step.run(w0, a, g, table),
        "exact": run_exact,
    }
    names = list(runs)
    warmup = {name: _seconds(fn) for name, fn in runs.items()}
    exact.clear()
    samples: dict[str, list[float]] = {name: [] for name in (*PLAIN_VARIANTS, "forward", "reverse")}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name == "exact":
                runs[name]()
                samples["forward"].append(exact[-1].timings["forward_s"])
                samples["reverse"].append(exact[-1].timings["reverse_s"])
            else:
                samples[name].append(_seconds(runs[name]))
    plain = {name: _median(samples[name]) for name in PLAIN_VARIANTS}
    fastest = min(("while_loop", "xla"), key=plain.__getitem__)
    fwd, rev = _median(samples["forward"]), _median(samples["reverse"])
    cert = exact[-1].certificate
    bound = float(cert.info_bound_bits)
    replicas = _replicas_cost(problem, a, g, stepper, repeats) if replicas else None
    return {
        "n_params": problem.n_params,
        "steps": steps,
        "repeats": repeats,
        "plain_loop_s": plain,
        "fastest_plain": fastest,
        "fastest_plain_s": plain[fastest],
        "forward_s": fwd,
        "reverse_s": rev,
        "forward_over_fastest_plain": fwd / plain[fastest],
        "reverse_over_fastest_plain": rev / plain[fastest],
        "forward_over_plain_per_step": fwd / plain["per_step"],
        "reverse_over_plain_per_step": rev / plain["per_step"],
        "per_step_over_fastest_plain": plain["per_step"] / plain[fastest],
        "bits_held": float(cert.bits_held),
        "info_bound_bits": bound,
        "bits_over_bound": float(cert.bits_held) / bound if bound > 0 else None,
        "exact": bool(cert.ok),
        "replicas_s": replicas,
        "replicas_8_over_1": replicas["8"] / replicas["1"] if replicas else None,
        "index_table_s": table_s,
        "warmup_s": warmup,
        "samples_s": samples,
    }


def _replicas_cost(
    problem: BenchProblem, a: np.ndarray, g: np.ndarray, stepper: Any, repeats: int
) -> dict[str, float]:
    """Median seconds of one exact forward + reverse of 1 and of 8 replicas together
    (:func:`hypergradients`; 8 different minibatch orders, the same initial weights: the work
    does not depend on the values), after an untimed run of each (tracing)."""
    tables = [
        minibatch_table(problem.seed + r, a.shape[0], problem.n_train, problem.batch)
        for r in range(8)
    ]
    out = {}
    for count in (1, 8):

        def run(count: int = count) -> None:
            hypergradients(
                problem.table_loss,
                problem.val_loss,
                [problem.w0] * count,
                a,
                g,
                keys=tables[:count],
                dtype=problem.dtype,
                stepper=stepper,
            )

        run()
        out[str(count)] = _median([_seconds(run) for _ in range(repeats)])
    return out


def measure(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    w0: Sequence[tf.Tensor],
    steps: int = 100,
    *,
    alpha: float = 0.1,
    gamma: float = 0.9,
    theta: Sequence[tf.Tensor] = (),
    dtype: tf.DType = tf.float64,
    repeats: int = 3,
) -> dict[str, float]:
    """Time plain training, exact forward and exact reverse on the same problem.

    Each is run once untimed (tracing), then ``repeats`` times; the minimum is kept.

    Returns:
        ``plain_s``, ``forward_s``, ``reverse_s``, ``forward_over_plain``,
        ``reverse_over_plain``, ``bits_held``, ``info_bound_bits``, ``bits_over_bound``,
        ``n_params``, ``steps``.
    """
    k = len(w0)
    a = np.full((steps, k), alpha)
    g = np.full((steps, k), gamma)
    plain = PlainSGD(train_loss, dtype)
    stepper = make_stepper(train_loss, k, dtype)
    plain.run(w0, a[:2], g[:2], theta)
    hypergradient(train_loss, val_loss, w0, a[:2], g[:2], theta, dtype=dtype, stepper=stepper)
    plain_s, fwd_s, rev_s = [], [], []
    res = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain.run(w0, a, g, theta)
        plain_s.append(time.perf_counter() - t0)
        res = hypergradient(train_loss, val_loss, w0, a, g, theta, dtype=dtype, stepper=stepper)
        fwd_s.append(res.timings["forward_s"])
        rev_s.append(res.timings["reverse_s"])
    p, f, r = min(plain_s), min(fwd_s), min(rev_s)
    cert = res.certificate
    return {
        "n_params": int(sum(int(x.shape.num_elements()) for x in w0)),
        "steps": steps,
        "plain_s": p,
        "forward_s": f,
        "reverse_s": r,
        "forward_over_plain": f / p,
        "reverse_over_plain": r / p,
        "bits_held": cert.bits_held,
        "info_bound_bits": cert.info_bound_bits,
        "bits_over_bound": cert.bits_held / cert.info_bound_bits,
        "exact": cert.ok,
    }


def _peak_rss_child(method: str, sizes: Sequence[int], steps: int, batch: int) -> None:
    """Run one hypergradient in this process and print its peak RSS in MiB as JSON."""
    p = mlp_bench_problem(sizes, batch=batch)
    train_loss, val_loss, w0 = p.train_loss, p.val_loss, p.w0
    k = len(w0)
    a, g = np.full((steps, k), 0.1), np.full((steps, k), 0.9)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if method == "reversible":
        hypergradient(train_loss, val_loss, w0, a, g)
    elif method == "unrolled":
        unrolled_hypergradient(train_loss, val_loss, w0, a, g)
    else:  # "plain": the cost of training alone
        PlainSGD(train_loss).run(w0, a, g)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "before_mib": base / 1024}))


def peak_memory(method: str, sizes: Sequence[int], steps: int, batch: int = 200) -> dict:
    """Peak resident memory (MiB) of one run of ``method`` in a fresh subprocess."""
    code = (
        "import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','2');"
        "from revhpo.optimizers.benchmark import _peak_rss_child as c;"
        f"c({method!r}, {list(sizes)!r}, {steps}, {batch})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=3600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
