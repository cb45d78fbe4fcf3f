"""`FixedArray`: an exactly reversible array of reals (add, sub, mul, div)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from revhpo.precise.buffer import DEFAULT_GROUP, InfoBuffer, group_div_kernel, group_mul_kernel
from revhpo.precise.fixed import (
    DEFAULT_FRAC_BITS,
    FixedPointOverflowError,
    check_frac_bits,
    in_range,
    max_abs_value,
    to_fixed,
    to_float,
)
from revhpo.precise.rational import DEFAULT_MAX_DENOMINATOR, Rational, rationalize

# XLA fuses the ~30 elementwise integer ops of a kernel into one pass over memory; integer
# results are exact, so compiling cannot change a single bit.
_mul = tf.function(group_mul_kernel, jit_compile=True, reduce_retracing=True)
_div = tf.function(group_div_kernel, jit_compile=True, reduce_retracing=True)
_add = tf.function(lambda a, b: (a + b, in_range(a + b)), reduce_retracing=True)
_sub = tf.function(lambda a, b: (a - b, in_range(a - b)), reduce_retracing=True)


class FixedArray:
    """A tensor of reals held exactly as int64 fixed point, with an information buffer.

    ``sub(x)`` exactly undoes ``add(x)`` and ``div(r)`` exactly undoes ``mul(r)`` (in the
    reverse order of the forward operations): the integer state returns bit for bit and the
    buffer returns to empty.

    Args:
        values: the initial reals (any float tensor or array).
        frac_bits: fractional bits of the fixed-point representation (default 52).
        max_denominator: largest denominator of the rationals used by :meth:`mul`.
        group: elements per buffer register (see :mod:`precise.buffer`).
    """

    def __init__(
        self,
        values: tf.Tensor | np.ndarray,
        frac_bits: int = DEFAULT_FRAC_BITS,
        max_denominator: int = DEFAULT_MAX_DENOMINATOR,
        group: int = DEFAULT_GROUP,
    ) -> None:
        self.frac_bits = check_frac_bits(frac_bits)
        self.max_denominator = int(max_denominator)
        self.ints = to_fixed(tf.convert_to_tensor(values), self.frac_bits, what="values")
        self.buffer = InfoBuffer(self.ints.shape, group)

    @classmethod
    def from_ints(cls, ints: tf.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> FixedArray:
        """Wrap an existing int64 fixed-point tensor (with a fresh, empty buffer)."""
        out = cls.__new__(cls)
        out.frac_bits = check_frac_bits(frac_bits)
        out.max_denominator = DEFAULT_MAX_DENOMINATOR
        out.ints = tf.convert_to_tensor(ints, tf.int64)
        out.buffer = InfoBuffer(out.ints.shape)
        return out

    def value(self, dtype: tf.DType = tf.float64) -> tf.Tensor:
        """The reals held, as ``dtype``."""
        return to_float(self.ints, self.frac_bits, dtype)

    def _checked(self, result: tuple[tf.Tensor, tf.Tensor], op: str) -> None:
        ints, ok = result
        if not bool(ok):
            raise FixedPointOverflowError(
                f"`{op}` overflowed the fixed-point range |x| < {max_abs_value(self.frac_bits):g} "
                f"({self.frac_bits} fractional bits)"
            )
        self.ints = ints

    def _fixed_like(self, x: tf.Tensor | np.ndarray | float) -> tf.Tensor:
        """``x`` broadcast to this array's shape and rounded to its fixed point."""
        return to_fixed(
            tf.broadcast_to(tf.convert_to_tensor(x, tf.float64), self.ints.shape),
            self.frac_bits,
            what="x",
        )

    def add(self, x: tf.Tensor | np.ndarray | float) -> None:
        """``self += x`` exactly (``x`` rounded to fixed point first); undone by :meth:`sub`."""
        self._checked(_add(self.ints, self._fixed_like(x)), "add")

    def sub(self, x: tf.Tensor | np.ndarray | float) -> None:
        """``self -= x`` exactly; undoes :meth:`add` of the same ``x``."""
        self._checked(_sub(self.ints, self._fixed_like(x)), "sub")

    def rational(self, rate: float | Rational) -> Rational:
        """The exact rational applied for ``rate`` (validated)."""
        if isinstance(rate, Rational):
            if not 0 < rate.n <= rate.d:
                raise ValueError(f"`rate` must be in (0, 1]. Received: rate={rate.n}/{rate.d}")
            return rate
        return rationalize(rate, self.max_denominator)

    def mul(self, rate: float | Rational) -> Rational:
        """``self *= rate`` exactly, keeping the lost bits; returns the rational really applied."""
        rat = self.rational(rate)
        if rat.n == rat.d:
            return rat
        n, d = tf.constant(rat.n, tf.int64), tf.constant(rat.d, tf.int64)
        shifts = self.buffer.before_mul(rat)
        g = self.buffer.group
        if shifts is None:
            self.ints, self.buffer.register = _mul(self.ints, self.buffer.register, n, d, g)
        else:
            self.ints, self.buffer.register, lo = _mul(
                self.ints, self.buffer.register, n, d, g, tf.constant(shifts)
            )
            self.buffer.after_mul(lo.numpy())
        return rat

    def div(self, rate: float | Rational) -> Rational:
        """Undo the last :meth:`mul` by the same ``rate`` exactly."""
        rat = self.rational(rate)
        if rat.n == rat.d:
            return rat
        if self.buffer.n_ops == 0:
            raise RuntimeError("FixedArray.div: no multiplication left to undo (buffer is empty)")
        shifts, lo = self.buffer.before_div(rat)
        n, d = tf.constant(rat.n, tf.int64), tf.constant(rat.d, tf.int64)
        g = self.buffer.group
        if shifts is None:
            ints, self.buffer.register = _div(self.ints, self.buffer.register, n, d, g)
        else:
            ints, self.buffer.register = _div(
                self.ints, self.buffer.register, n, d, g, tf.constant(shifts), tf.constant(lo)
            )
        self._checked((ints, in_range(ints)), "div")
        return rat
