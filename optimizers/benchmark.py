"""Cost of exactness: reversible training vs plain SGD-momentum on the same gradient function.

Used by ``revhpo bench`` and the benchmark scripts. Every figure is a ratio measured in one
process, so the machine's speed cancels out.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from revhpo.optimizers.reversible import (
    TrainLoss,
    ValLoss,
    hypergradient,
    make_stepper,
    minibatch_indices,
)
from revhpo.optimizers.unrolled import PlainSGD, unrolled_hypergradient


def mlp_problem(
    sizes: Sequence[int] = (784, 50, 50, 10),
    n_train: int = 1000,
    n_val: int = 500,
    batch: int = 200,
    seed: int = 0,
    dtype: tf.DType = tf.float64,
) -> tuple[TrainLoss, ValLoss, list[tf.Tensor]]:
    """A tanh MLP on synthetic teacher-labelled data (no download): ``(L, f, w0)``."""
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

    def train_loss(w, theta, t):
        idx = minibatch_indices(seed, t, n_train, batch)
        logits = net(w, tf.cast(tf.gather(xt, idx), w[0].dtype))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(yt, idx), logits)
        return tf.reduce_mean(ce)

    def val_loss(w):
        logits = net(w, tf.cast(xv, w[0].dtype))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yv, logits))

    w0 = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w0.append(tf.constant(rng.normal(size=(a, b)) / np.sqrt(a)))
        w0.append(tf.zeros([b], tf.float64))
    return train_loss, val_loss, w0


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
    train_loss, val_loss, w0 = mlp_problem(sizes, batch=batch)
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
