"""Fixed-point numbers on int64 tensors: exact addition, checked range.

A real ``x`` is held as the integer ``trunc(x * 2**frac_bits)`` (rounded toward zero). Every
stored integer obeys ``|q| < 2**62`` (:data:`MAGNITUDE_LIMIT`), so the sum of two of them never
wraps int64 and an overflow is *detected* and reported instead of silently wrapping.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_FRAC_BITS = 52
MAGNITUDE_LIMIT = 2**62


class FixedPointOverflowError(ArithmeticError):
    """A value left the fixed-point range or was not finite."""


def check_frac_bits(frac_bits: int) -> int:
    """Validate a fractional-bit count (1..60) and return it as an int."""
    if not isinstance(frac_bits, int) or not 1 <= frac_bits <= 60:
        raise ValueError(
            f"`frac_bits` must be an int in [1, 60]. Received: frac_bits={frac_bits!r}"
        )
    return frac_bits


def max_abs_value(frac_bits: int) -> float:
    """Largest magnitude a fixed-point number with ``frac_bits`` fractional bits can hold."""
    return MAGNITUDE_LIMIT / 2.0**frac_bits


def to_fixed_unchecked(x: tf.Tensor, frac_bits: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Round ``x`` to fixed point; return ``(q, ok)`` with ``ok`` False on overflow or NaN.

    The conversion (``x * 2**frac_bits`` in float64, truncated toward zero: an error below one
    unit of 2**-frac_bits, and about twice as fast as round-half-even) is a pure function of
    the float bits of ``x``, so converting the same ``x`` again gives the same integers: this
    is what lets :func:`sub` undo :func:`add` exactly. Out-of-range entries become 0.
    """
    scaled = tf.cast(x, tf.float64) * (2.0**frac_bits)
    in_range = tf.abs(scaled) < float(MAGNITUDE_LIMIT)  # False for NaN and +-inf
    ok = tf.reduce_all(in_range)
    q = tf.cast(tf.where(in_range, scaled, tf.zeros_like(scaled)), tf.int64)
    return q, ok


def in_range(q: tf.Tensor) -> tf.Tensor:
    """Scalar bool: every entry of the int64 tensor ``q`` obeys ``|q| < 2**62``."""
    limit = tf.constant(MAGNITUDE_LIMIT, tf.int64)
    return tf.reduce_all((q < limit) & (q > -limit))


def to_float(q: tf.Tensor, frac_bits: int, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """The real value of fixed-point ``q`` as ``dtype`` (nearest representable)."""
    return tf.cast(tf.cast(q, tf.float64) * (2.0**-frac_bits), dtype)


def to_fixed(x: tf.Tensor, frac_bits: int = DEFAULT_FRAC_BITS, *, what: str = "value") -> tf.Tensor:
    """Eager conversion of ``x`` to fixed point that raises on overflow or non-finite input.

    Raises:
        FixedPointOverflowError: naming the bound and the offending value.
    """
    q, ok = to_fixed_unchecked(x, frac_bits)
    if not bool(ok):
        xf = tf.cast(x, tf.float64)
        bad = tf.boolean_mask(xf, ~(tf.abs(xf) < max_abs_value(frac_bits)))
        raise FixedPointOverflowError(
            f"{what} is not representable in fixed point with {frac_bits} fractional bits "
            f"(|x| must be < {max_abs_value(frac_bits):g} and finite). "
            f"Received: {what}={bad.numpy().ravel()[0]!r}"
        )
    return q
