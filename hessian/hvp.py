"""Gradients, Hessian-vector products and mixed second derivatives of scalar losses.

All products are forward-over-reverse: a :class:`tf.autodiff.ForwardAccumulator` pushes the
tangent through the reverse-mode gradient computation, so one pass gives the gradient ``g``
and the directional derivative of ``g``, i.e. ``H v``. Public TF 2 APIs only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

Tensors = Sequence[tf.Tensor]


def _zeros_for_none(values: Sequence[tf.Tensor | None], like: Tensors) -> list[tf.Tensor]:
    return [tf.zeros_like(x) if v is None else v for v, x in zip(values, like, strict=True)]


def grad_and_hvp(
    f: Callable[..., tf.Tensor], primals: Tensors, tangents: Tensors
) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
    """Value, gradient and Hessian-vector product of ``f(*primals)`` from one fused pass.

    Args:
        f: scalar function of the tensors in ``primals``.
        primals: the point ``x`` (a list of tensors).
        tangents: the vector ``v``, shaped like ``primals``.

    Returns:
        ``(f(x), ∇f(x), H(x) v)`` where ``H v = d/dε ∇f(x + ε v)`` at ``ε = 0``.
    """
    primals = [tf.convert_to_tensor(p) for p in primals]
    with tf.autodiff.ForwardAccumulator(primals, list(tangents)) as acc:
        with tf.GradientTape() as tape:
            tape.watch(primals)
            value = f(*primals)
        grads = _zeros_for_none(tape.gradient(value, primals), primals)
    hvps = acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads, list(hvps)


def hvp(f: Callable[..., tf.Tensor], primals: Tensors, tangents: Tensors) -> list[tf.Tensor]:
    """Hessian-vector product ``H(x) v`` of scalar ``f`` at ``x = primals``."""
    return grad_and_hvp(f, primals, tangents)[2]


def grad_hvp_mixed(
    f: Callable[[Tensors, Tensors], tf.Tensor],
    w: Tensors,
    theta: Tensors,
    u: Tensors,
) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
    """One pass giving ``f``, ``∇_w f``, ``(∂²f/∂w²) u`` and ``(∂²f/∂θ∂w) u``.

    The tangent ``u`` moves ``w`` only, so the JVP of ``∇_θ f`` is the mixed product
    ``d/dε ∇_θ f(w + ε u, θ) = (∂²f/∂θ∂w) u`` and the JVP of ``∇_w f`` is ``H_ww u``.

    Args:
        f: scalar function ``f(w, theta)`` of two lists of tensors.
        w: the weights.
        theta: hyperparameters that enter ``f`` (may be empty).
        u: tangent for ``w``.

    Returns:
        ``(value, grad_w, hvp_w, mixed_theta)``.
    """
    w = [tf.convert_to_tensor(x) for x in w]
    theta = [tf.convert_to_tensor(x) for x in theta]
    with tf.autodiff.ForwardAccumulator(w, list(u)) as acc:
        with tf.GradientTape() as tape:
            tape.watch(w)
            tape.watch(theta)
            value = f(w, theta)
        grads = _zeros_for_none(tape.gradient(value, w + theta), w + theta)
    jvps = acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    n = len(w)
    return value, grads[:n], list(jvps[:n]), list(jvps[n:])


def dense_hessian(f: Callable[..., tf.Tensor], primals: Tensors) -> tf.Tensor:
    """The full Hessian of scalar ``f`` w.r.t. all ``primals`` flattened and concatenated.

    Reverse-over-reverse with a Jacobian of the gradient; for small models (diagnostics and
    tests): cost and memory are O(N²).
    """
    primals = [tf.convert_to_tensor(p) for p in primals]
    with tf.GradientTape() as outer:
        outer.watch(primals)
        with tf.GradientTape() as inner:
            inner.watch(primals)
            value = f(*primals)
        grads = _zeros_for_none(inner.gradient(value, primals), primals)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    jac = outer.jacobian(flat, primals, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.concat([tf.reshape(j, [tf.shape(flat)[0], -1]) for j in jac], axis=1)
