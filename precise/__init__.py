"""Exact fixed-point arithmetic with a lossless, vectorised information buffer.

Knows nothing of nets, optimizers or the service.
"""

from revhpo.precise.array import FixedArray
from revhpo.precise.buffer import (
    CHUNK_BITS,
    DEFAULT_GROUP,
    InfoBuffer,
    div_kernel,
    group_div_kernel,
    group_layout,
    group_mul_kernel,
    mul_kernel,
)
from revhpo.precise.fixed import (
    DEFAULT_FRAC_BITS,
    MAGNITUDE_LIMIT,
    FixedPointOverflowError,
    in_range,
    max_abs_value,
    to_fixed,
    to_fixed_unchecked,
    to_float,
)
from revhpo.precise.rational import DEFAULT_MAX_DENOMINATOR, Rational, rationalize

__all__ = [
    "CHUNK_BITS",
    "DEFAULT_GROUP",
    "DEFAULT_FRAC_BITS",
    "DEFAULT_MAX_DENOMINATOR",
    "MAGNITUDE_LIMIT",
    "FixedArray",
    "FixedPointOverflowError",
    "InfoBuffer",
    "Rational",
    "div_kernel",
    "group_div_kernel",
    "group_layout",
    "group_mul_kernel",
    "in_range",
    "max_abs_value",
    "mul_kernel",
    "rationalize",
    "to_fixed",
    "to_fixed_unchecked",
    "to_float",
]
