"""A small, deterministic MLP training problem for the optimizer tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from revhpo.optimizers import minibatch_indices


def make_problem(
    sizes=(5, 8, 6, 3),
    activation="tanh",
    n_train=48,
    n_val=24,
    batch=12,
    seed=0,
    weight_decay=True,
    table_key=False,
):
    """Returns ``(train_loss, val_loss, w0, theta)`` for an MLP on synthetic data.

    ``theta`` holds one log weight decay per layer (entering the loss as exp(θ_l)·‖W_l‖²).
    With ``table_key`` the loss is ``L(w, θ, t, batches)``: it reads step ``t``'s minibatch
    from ``batches = minibatch_table(seed + 11, T, n_train, batch)`` (the same examples it
    draws otherwise) instead of drawing it in the step.
    """
    rng = np.random.default_rng(seed)
    act = {"tanh": tf.tanh, "relu": tf.nn.relu, "softplus": tf.nn.softplus}[activation]
    x = tf.constant(rng.normal(size=(n_train, sizes[0])))
    y = tf.constant(rng.integers(0, sizes[-1], n_train))
    xv = tf.constant(rng.normal(size=(n_val, sizes[0])))
    yv = tf.constant(rng.integers(0, sizes[-1], n_val))
    n_layers = len(sizes) - 1

    def net(w, inp):
        h = inp
        for layer in range(n_layers):
            h = h @ w[2 * layer] + w[2 * layer + 1]
            if layer < n_layers - 1:
                h = act(h)
        return h

    def train_loss(w, theta, t, batches=None):
        if table_key:
            idx = tf.gather(batches, t)
        else:
            idx = minibatch_indices(seed + 11, t, n_train, batch)
        xb = tf.cast(tf.gather(x, idx), w[0].dtype)
        ce = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(y, idx), net(w, xb))
        )
        for layer, lam in enumerate(theta):
            ce = ce + tf.exp(lam) * tf.reduce_sum(tf.square(w[2 * layer]))
        return ce

    def val_loss(w):
        logits = net(w, tf.cast(xv, w[0].dtype))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yv, logits))

    w0 = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w0.append(tf.constant(rng.normal(size=(a, b)) / np.sqrt(a)))
        w0.append(tf.constant(rng.normal(size=(b,)) * 0.1))
    theta = [tf.constant(np.log(10.0 ** -(2 + layer)), tf.float64) for layer in range(n_layers)]
    return train_loss, val_loss, w0, (theta if weight_decay else [])


def schedules(n_steps, k, seed=1, alpha=(0.05, 0.4), gamma=(0.5, 0.95)):
    """Random per-step, per-tensor learning rates and momentum decays."""
    rng = np.random.default_rng(seed)
    return rng.uniform(*alpha, size=(n_steps, k)), rng.uniform(*gamma, size=(n_steps, k))


def max_rel_error(a, b):
    """max |a − b| / max |b| over all entries (b the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
