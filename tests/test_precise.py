"""Tier 1: exactness of precise/ (integer state compared with equality, never allclose)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from revhpo.precise import (
    FixedArray,
    FixedPointOverflowError,
    Rational,
    div_kernel,
    group_layout,
    mul_kernel,
    rationalize,
    to_fixed,
)

rates = st.floats(min_value=1e-4, max_value=1.0, exclude_min=True, allow_nan=False)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("mul"), rates),
        st.tuples(st.just("add"), st.floats(-50, 50, allow_nan=False)),
        st.tuples(st.just("sub"), st.floats(-50, 50, allow_nan=False)),
    ),
    min_size=1,
    max_size=60,
)
shapes = st.lists(st.integers(1, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    seq=ops,
    seed=st.integers(0, 2**31 - 1),
    maxden=st.sampled_from([16, 2**16]),
    group=st.sampled_from([1, 3, 16]),
)
def test_random_op_sequences_reverse_exactly(shape, seq, seed, maxden, group):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(scale=10.0, size=shape)
    a = FixedArray(x0, max_denominator=maxden, group=group)
    start = a.ints.numpy().copy()
    applied = []
    for op, arg in seq:
        if op == "mul":
            applied.append((op, a.mul(arg)))
        else:
            noise = rng.normal(scale=abs(arg) + 1e-3, size=shape)
            getattr(a, op)(noise)
            applied.append((op, noise))
    for op, arg in reversed(applied):
        {"mul": a.div, "add": a.sub, "sub": a.add}[op](arg)
    np.testing.assert_array_equal(a.ints.numpy(), start)
    assert a.buffer.is_empty()


@pytest.mark.slow
def test_long_run_ten_thousand_steps_exact():
    x0 = np.random.default_rng(1).normal(size=10_000)
    a = FixedArray(x0)
    start = a.ints.numpy().copy()
    for _ in range(10_000):
        a.mul(0.9)
    info = a.buffer.info_bits
    assert info == pytest.approx(10_000 * math.log2(10 / 9))
    # memory held within 1% of the information bound at this length
    a.buffer.flush()
    assert a.buffer.bits_held() <= 1.01 * info
    a.buffer.restore()
    for _ in range(10_000):
        a.div(0.9)
    np.testing.assert_array_equal(a.ints.numpy(), start)
    assert a.buffer.is_empty()


def test_one_hand_computed_multiplication():
    # x = 7 units, rate 2/3: y = 7*2 + s(=0, empty register) = 14 -> x = 4, push 14 mod 3 = 2
    x, reg = mul_kernel(
        tf.constant([7, -7], tf.int64),
        tf.zeros([2], tf.int64),
        tf.constant(2, tf.int64),
        tf.constant(3, tf.int64),
    )
    np.testing.assert_array_equal(x.numpy(), [4, -5])  # floor(-14/3) = -5, rem 1
    np.testing.assert_array_equal(reg.numpy(), [2, 1])
    back, reg = div_kernel(x, reg, tf.constant(2, tf.int64), tf.constant(3, tf.int64))
    np.testing.assert_array_equal(back.numpy(), [7, -7])
    np.testing.assert_array_equal(reg.numpy(), [0, 0])


def test_spills_words_to_host_and_restores_them():
    # 40 elements, 16 per register: 3 registers, 14 rows. A rate of 1/65535 destroys 16 bits
    # per element, so every step moves words out between rows, inside the kernel.
    a = FixedArray(np.linspace(-3.0, 3.0, 40))
    assert (a.buffer.group, a.buffer.registers) == (14, 3)
    start = a.ints.numpy().copy()
    rate = Rational(1, 65535)
    for _ in range(12):
        a.mul(rate)
    assert a.buffer.n_words >= 12 * 14 * 16 // 56  # at most 56 bits per word array
    assert a.buffer.bound <= 2**62
    info = a.buffer.info_bits
    assert info == pytest.approx(12 * math.log2(65535))
    assert a.buffer.bits_in_use() <= 1.01 * info * (14 * 3) / 40  # padding rows count too
    for _ in range(12):
        a.div(rate)
    np.testing.assert_array_equal(a.ints.numpy(), start)
    assert a.buffer.is_empty()


def test_group_layout():
    assert group_layout(100_000, 16) == (16, 6250)
    assert group_layout(10, 16) == (10, 1)
    assert group_layout(40, 16) == (14, 3)
    assert group_layout(7, 1) == (1, 7)
    with pytest.raises(ValueError, match="group"):
        group_layout(5, 0)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_memory_held_is_within_ten_percent_of_the_information_bound(rate):
    a = FixedArray(np.random.default_rng(3).normal(size=4096))
    for _ in range(1000):
        a.mul(rate)
    a.buffer.flush()
    assert a.buffer.bits_held() <= 1.10 * a.buffer.info_bits
    a.buffer.restore()


def test_rationalize_exposes_applied_value():
    r = rationalize(0.9)
    assert (r.n, r.d) == (9, 10)
    r = rationalize(math.pi / 4, max_denominator=100)
    assert r.d <= 100 and abs(r.value - math.pi / 4) < 1e-3
    assert FixedArray([1.0]).mul(0.5) == Rational(1, 2)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_rate_outside_unit_interval_raises_with_value(rate):
    with pytest.raises(ValueError, match=r"rate="):
        FixedArray([1.0]).mul(rate)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300])
def test_non_finite_or_huge_input_raises(bad):
    with pytest.raises(FixedPointOverflowError, match="fractional bits"):
        to_fixed(tf.constant(np.array([0.0, bad])))


def test_overflow_of_addition_raises_naming_the_bound():
    a = FixedArray([1000.0])
    with pytest.raises(FixedPointOverflowError, match="1024"):
        a.add([100.0])  # 1100 > 2**62 / 2**52 = 1024


def test_div_on_empty_buffer_raises():
    with pytest.raises(RuntimeError, match="empty"):
        FixedArray([1.0]).div(0.5)


def test_works_inside_tf_function():
    @tf.function
    def roundtrip(x, reg):
        n, d = tf.constant(9, tf.int64), tf.constant(10, tf.int64)
        y, reg = mul_kernel(x, reg, n, d)
        return div_kernel(y, reg, n, d)

    x = to_fixed(tf.constant(np.linspace(-3, 3, 11)))
    back, reg = roundtrip(x, tf.zeros_like(x))
    np.testing.assert_array_equal(back.numpy(), x.numpy())
    assert not np.any(reg.numpy())


def test_flush_moves_the_register_out_and_restore_brings_it_back():
    a = FixedArray(np.random.default_rng(2).normal(size=50))
    start = a.ints.numpy().copy()
    for _ in range(100):
        a.mul(0.9)
    reg = a.buffer.register.numpy().copy()
    bound = a.buffer.bound
    scale = a.buffer.registers / 50  # per register -> per element
    before = a.buffer.bits_held()  # host words + the live 64-bit registers
    a.buffer.flush()
    assert a.buffer.register is None and a.buffer.bound == 1
    # the live registers became whole host words: 8 * ceil(log2(bound) / 8) bits per register
    flushed = 8 * math.ceil(math.log2(bound) / 8)
    assert a.buffer.bits_held() == pytest.approx(before + (flushed - 64) * scale)
    a.buffer.restore()
    np.testing.assert_array_equal(a.buffer.register.numpy(), reg)
    for _ in range(100):
        a.div(0.9)
    np.testing.assert_array_equal(a.ints.numpy(), start)
    assert a.buffer.is_empty()


@pytest.mark.parametrize("d", [1, 2, 3, 9, 10, 100, 65521, 2**16, 2**24])
def test_floor_divmod_is_exact_over_the_whole_range(d):
    from revhpo.precise.buffer import floor_divmod

    rng = np.random.default_rng(d)
    edges = [2**62 - 1, -(2**62) + 1, 0, -1, 1, d, -d, d - 1, 1 - d, 2**53 + 1, -(2**53) - 1]
    x = np.concatenate([rng.integers(-(2**62) + 1, 2**62 - 1, 100_000), edges]).astype(np.int64)
    q, r = floor_divmod(tf.constant(x), tf.constant(d, tf.int64))
    np.testing.assert_array_equal(q.numpy(), x // d)
    np.testing.assert_array_equal(r.numpy(), x % d)


@pytest.mark.parametrize("d", [1, 3, 10, 65521, 2**16, 2**24])
def test_small_floor_divmod_is_exact_below_two_to_the_48(d):
    from revhpo.precise.buffer import _small_floor_divmod

    rng = np.random.default_rng(d)
    top = min(2**48, d * 2**24)
    edges = [0, 1, d - 1, d, d + 1, top - 1, (top // d) * d, (top // d) * d - 1]
    t = np.concatenate([rng.integers(0, top, 100_000), edges]).astype(np.int64)
    q, r = _small_floor_divmod(tf.constant(t), tf.constant(d, tf.int64))
    np.testing.assert_array_equal(q.numpy(), t // d)
    np.testing.assert_array_equal(r.numpy(), t % d)
