"""Exact fixed-point arithmetic with a lossless, vectorised information buffer.

Knows nothing of nets, optimizers or the service.
"""

import os

# Exact reversal needs the reverse pass to recompute each gradient bit for bit. oneDNN's
# float32 CPU kernels can round differently in the forward and the reverse graph, so they are
# off unless the user chose otherwise before TensorFlow was first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from precise.array import FixedArray
from precise.buffer import (
    CHUNK_BITS,
    DEFAULT_GROUP,
    InfoBuffer,
    div_kernel,
    group_div_kernel,
    group_layout,
    group_mul_kernel,
    mul_kernel,
)
from precise.fixed import (
    DEFAULT_FRAC_BITS,
    MAGNITUDE_LIMIT,
    FixedPointOverflowError,
    in_range,
    max_abs_value,
    to_fixed,
    to_fixed_unchecked,
    to_float,
)
from precise.rational import DEFAULT_MAX_DENOMINATOR, Rational, rationalize

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
