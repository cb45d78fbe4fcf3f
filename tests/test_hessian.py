"""Tier 2: HVPs and mixed products vs reverse-over-reverse and central differences (float64)."""

import numpy as np
import pytest
import tensorflow as tf
from revhpo.hessian import dense_hessian, grad_and_hvp, grad_hvp_mixed, hvp


def _mlp_loss(w0, b0, w1, b1):
    x = tf.constant(np.random.default_rng(3).normal(size=(7, 4)))
    y = tf.constant([0, 1, 2, 1, 0, 2, 1])
    h = tf.tanh(x @ w0 + b0)
    logits = h @ w1 + b1
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


def _point(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(4, 5), (5,), (5, 3), (3,)]
    return [tf.constant(rng.normal(size=s)) for s in shapes]


def _reverse_over_reverse(f, primals, tangents):
    with tf.GradientTape() as outer:
        outer.watch(primals)
        with tf.GradientTape() as inner:
            inner.watch(primals)
            value = f(*primals)
        grads = inner.gradient(value, primals)
        dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, tangents, strict=True)])
    return outer.gradient(dot, primals)


def _central_diff_of_grads(f, primals, tangents, eps=1e-5):
    def grads_at(s):
        p = [x + s * v for x, v in zip(primals, tangents, strict=True)]
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = f(*p)
        return tape.gradient(value, p)

    plus, minus = grads_at(eps), grads_at(-eps)
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus, strict=True)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_hvp_matches_reverse_over_reverse_and_differences(compiled):
    primals, tangents = _point(0), _point(1)
    fn = (
        tf.function(lambda p, v: hvp(_mlp_loss, p, v))
        if compiled
        else (lambda p, v: hvp(_mlp_loss, p, v))
    )
    got = fn(primals, tangents)
    ror = _reverse_over_reverse(_mlp_loss, primals, tangents)
    fd = _central_diff_of_grads(_mlp_loss, primals, tangents)
    for a, b, c in zip(got, ror, fd, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-6, atol=1e-8)


def test_fused_call_returns_value_gradient_and_hvp():
    primals, tangents = _point(2), _point(3)
    value, grads, hv = grad_and_hvp(_mlp_loss, primals, tangents)
    with tf.GradientTape() as tape:
        tape.watch(primals)
        ref_value = _mlp_loss(*primals)
    ref_grads = tape.gradient(ref_value, primals)
    assert float(value) == float(ref_value)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # same gradient, bit for bit
    for a, b in zip(hv, hvp(_mlp_loss, primals, tangents), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mixed_product_matches_finite_differences_in_theta():
    primals, tangents = _point(4), _point(5)
    theta = [tf.constant(0.3, tf.float64), tf.constant([0.1, -0.2, 0.05], tf.float64)]

    def f(w, th):
        return (
            _mlp_loss(*w)
            + tf.exp(th[0]) * tf.reduce_sum(w[0] ** 2)
            + tf.reduce_sum(th[1] * w[3] ** 3)
        )

    _, g, hu, mixed = grad_hvp_mixed(f, primals, theta, tangents)

    # (∂²f/∂θ∂w) u = ∂/∂θ (∇_w f · u): central differences in θ of the directional derivative
    def directional(th):
        with tf.GradientTape() as tape:
            tape.watch(primals)
            value = f(primals, th)
        gw = tape.gradient(value, primals)
        return float(tf.add_n([tf.reduce_sum(a * b) for a, b in zip(gw, tangents, strict=True)]))

    eps = 1e-6
    fd0 = (directional([theta[0] + eps, theta[1]]) - directional([theta[0] - eps, theta[1]])) / (
        2 * eps
    )
    np.testing.assert_allclose(float(mixed[0]), fd0, rtol=1e-6)
    for j in range(3):
        e = tf.one_hot(j, 3, dtype=tf.float64) * eps
        fd = (directional([theta[0], theta[1] + e]) - directional([theta[0], theta[1] - e])) / (
            2 * eps
        )
        np.testing.assert_allclose(float(mixed[1][j]), fd, rtol=1e-6, atol=1e-9)
    ror = _reverse_over_reverse(lambda *w: f(list(w), theta), primals, tangents)
    for a, b in zip(hu, ror, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def test_dense_hessian_is_symmetric_and_agrees_with_hvp():
    primals = _point(6)
    h = dense_hessian(_mlp_loss, primals).numpy()
    n = sum(int(np.prod(p.shape)) for p in primals)
    assert h.shape == (n, n)
    np.testing.assert_allclose(h, h.T, atol=1e-12)
    v = _point(7)
    flat_v = np.concatenate([x.numpy().ravel() for x in v])
    flat_hv = np.concatenate([x.numpy().ravel() for x in hvp(_mlp_loss, primals, v)])
    np.testing.assert_allclose(h @ flat_v, flat_hv, rtol=1e-9, atol=1e-12)
    # cross-layer blocks are present (the loss couples w0 and w1)
    assert np.abs(h[:20, 25:40]).max() > 1e-3
