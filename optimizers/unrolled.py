"""Plain float SGD-momentum and autodiff through the unrolled loop (the references).

``PlainSGD`` is what a user would run without reversal: the speed baseline and the
finite-difference oracle. ``unrolled_hypergradient`` differentiates the whole float training
loop with a tape (O(T·N) memory): an independent check of :func:`optimizers.hypergradient`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from revhpo.optimizers.reversible import TrainLoss, ValLoss, _schedule


def _momentum_step(train_loss: TrainLoss, w, v, theta, alpha_t, gamma_t, t, dtype, key=None):
    """One float step in hypergrad's convention; returns ``(w, v, loss)``.

    ``key`` (the data key of :func:`~revhpo.optimizers.hypergradient`) is passed to the loss
    as its fourth argument when it is not None.
    """
    wc = [tf.cast(x, dtype) for x in w]
    thc = [tf.cast(x, dtype) for x in theta]
    with tf.GradientTape() as tape:
        tape.watch(wc)
        loss = train_loss(wc, thc, t) if key is None else train_loss(wc, thc, t, key)
    grads = tape.gradient(loss, wc, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    new_v = [
        gamma_t[i] * v[i] - (1.0 - gamma_t[i]) * tf.cast(grads[i], v[i].dtype)
        for i in range(len(w))
    ]
    new_w = [w[i] + alpha_t[i] * new_v[i] for i in range(len(w))]
    return new_w, new_v, loss


class PlainSGD:
    """Compiled plain float SGD with momentum (same convention as the exact optimizer).

    The whole T-step loop is one graph loop in one ``tf.function`` (traced once per
    ``train_loss`` and shape): the plain trainer a TensorFlow user would write for speed.
    """

    def __init__(self, train_loss: TrainLoss, dtype: tf.DType = tf.float64) -> None:
        self.train_loss = train_loss
        self.dtype = dtype
        self._loop = tf.function(self._train, reduce_retracing=True, autograph=False)

    def _train(self, w, theta, alpha, gamma, key):
        steps = tf.shape(alpha)[0]
        losses = tf.TensorArray(tf.float64, size=steps)

        def body(t, w, v, losses):
            w, v, loss = _momentum_step(
                self.train_loss, w, v, theta, alpha[t], gamma[t], t, self.dtype, key
            )
            return t + 1, w, v, losses.write(t, tf.cast(loss, tf.float64))

        v = [tf.zeros_like(x) for x in w]
        _, w, _, losses = tf.while_loop(lambda t, *_: t < steps, body, (0, w, v, losses))
        return w, losses.stack()

    def run(
        self,
        w0: Sequence[tf.Tensor],
        alpha: tf.Tensor | np.ndarray,
        gamma: tf.Tensor | np.ndarray,
        theta: Sequence[tf.Tensor] = (),
        key: int | tf.Tensor | None = None,
    ) -> tuple[list[tf.Tensor], np.ndarray]:
        """Train; returns the final weights (``dtype``) and the training losses."""
        k = len(w0)
        dt = self.dtype.as_numpy_dtype
        alpha_np = _schedule(alpha, "alpha", k).astype(dt)
        gamma_np = _schedule(gamma, "gamma", k).astype(dt)
        w = [tf.cast(x, self.dtype) for x in w0]
        theta = [tf.convert_to_tensor(x, tf.float64) for x in theta]
        key = None if key is None else tf.convert_to_tensor(key)
        w, losses = self._loop(w, theta, tf.constant(alpha_np), tf.constant(gamma_np), key)
        return list(w), losses.numpy()


def unrolled_hypergradient(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    w0: Sequence[tf.Tensor],
    alpha: tf.Tensor | np.ndarray,
    gamma: tf.Tensor | np.ndarray,
    theta: Sequence[tf.Tensor] = (),
    *,
    dtype: tf.DType = tf.float64,
    key: int | tf.Tensor | None = None,
) -> dict[str, object]:
    """Hypergradients by reverse-mode autodiff through the unrolled float training loop.

    Returns:
        ``{"val_loss", "d_alpha", "d_gamma", "d_theta", "d_w0"}`` (float64 tensors).
    """
    k = len(w0)
    alpha_t = tf.constant(_schedule(alpha, "alpha", k))
    gamma_t = tf.constant(_schedule(gamma, "gamma", k))
    w0 = [tf.convert_to_tensor(x, tf.float64) for x in w0]
    theta = [tf.convert_to_tensor(x, tf.float64) for x in theta]
    if key is not None and not isinstance(key, tf.Tensor):  # a seed; a table keeps its dtype
        key = tf.convert_to_tensor(key, tf.int64)
    with tf.GradientTape() as tape:
        tape.watch([alpha_t, gamma_t, *w0, *theta])
        w = list(w0)
        v = [tf.zeros_like(x) for x in w]
        for t in range(int(alpha_t.shape[0])):
            w, v, _ = _momentum_step(
                train_loss,
                w,
                v,
                theta,
                alpha_t[t],
                gamma_t[t],
                tf.constant(t, tf.int32),
                dtype,
                key,
            )
        f = tf.cast(val_loss([tf.cast(x, dtype) for x in w]), tf.float64)
    grads = tape.gradient(
        f, [alpha_t, gamma_t, w0, theta], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return {
        "val_loss": float(f),
        "d_alpha": grads[0],
        "d_gamma": grads[1],
        "d_w0": grads[2],
        "d_theta": grads[3],
    }
