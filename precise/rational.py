"""Exact rational rates: the value a multiplication really applies."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

DEFAULT_MAX_DENOMINATOR = 2**16
#: Largest denominator the buffer can carry (a register bound times ``d`` must fit 63 bits).
MAX_SUPPORTED_DENOMINATOR = 2**24


class Rational(NamedTuple):
    """A rate ``n / d`` with ``0 < n <= d``, as applied exactly by :func:`precise.mul`."""

    n: int
    d: int

    @property
    def value(self) -> float:
        """The rate really applied, as the nearest float64 (``n / d``)."""
        return self.n / self.d

    @property
    def info_bits(self) -> float:
        """Bits of information one multiplication by this rate destroys: ``log2(d / n)``."""
        return math.log2(self.d / self.n)


def rationalize(rate: float, max_denominator: int = DEFAULT_MAX_DENOMINATOR) -> Rational:
    """Best rational approximation ``n / d`` of ``rate`` with ``d <= max_denominator``.

    Args:
        rate: a finite number in (0, 1].
        max_denominator: the largest denominator allowed (at most 2**24).

    Returns:
        The closest :class:`Rational` to ``rate`` with that denominator bound; never 0.

    Raises:
        ValueError: when ``rate`` is not finite or outside (0, 1], or the bound is invalid.
    """
    rate = float(rate)
    if not math.isfinite(rate) or not 0.0 < rate <= 1.0:
        raise ValueError(f"`rate` must be a finite number in (0, 1]. Received: rate={rate!r}")
    if not 1 <= int(max_denominator) <= MAX_SUPPORTED_DENOMINATOR:
        raise ValueError(
            f"`max_denominator` must be in [1, {MAX_SUPPORTED_DENOMINATOR}]. "
            f"Received: max_denominator={max_denominator!r}"
        )
    frac = Fraction(rate).limit_denominator(int(max_denominator))
    if frac.numerator == 0:  # rate smaller than 1/(2*max_denominator): smallest positive rate
        frac = Fraction(1, int(max_denominator))
    return Rational(frac.numerator, frac.denominator)
