"""A vectorised, lossless information buffer for exact multiplication by rates ``n/d``.

Multiplying a fixed-point integer by ``n/d < 1`` destroys about ``log2(d/n)`` bits. We keep
them, per element, in an arithmetic-coding register ``reg`` (an int64 tensor, ``reg >= 0``):

* forward (:func:`mul_kernel`): pop ``s = reg mod n``; with ``y = x*n + s`` set
  ``x <- y // d`` and push ``y mod d`` (``reg <- reg*d + y mod d``);
* reverse (:func:`div_kernel`): pop ``r = reg mod d``; with ``y = x*d + r`` set
  ``x <- y // n`` and push ``y mod n``. Each line undoes its forward twin exactly.

Both maps are bijections on the integers, so exactness never depends on the data. What does
depend on bounds is whether ``reg`` fits 63 bits; because every element sees the same ``n, d``
the buffer keeps one *shared* upper bound ``U`` (``reg < U`` for every element) as a Python int,
known without reading any data. When the next push could exceed ``2**63`` the low 8 bits of
every register are moved to host memory as a ``uint8`` array, all elements in lockstep, and
restored in reverse order. At the end of a forward pass :meth:`InfoBuffer.flush` moves the
register out too, so what is held between the passes is ``8 * chunks`` bits per element
(``8 * ceil(log2(U) / 8)`` in all); the information bound is ``sum log2(d/n)``. The bound is a
worst case over the data, so it exceeds the information bound by the rounding of the first
few steps (about ``log2(d)`` bits) and by at most 8 bits of padding in the last word.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from precise.rational import Rational

CHUNK_BITS = 8
_CHUNK_MASK = (1 << CHUNK_BITS) - 1
REGISTER_LIMIT = 2**62  # reg values stay <= REGISTER_LIMIT - 1 (a bit of headroom for divmod)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def floor_divmod(x: tf.Tensor, d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact ``(x // d, x mod d)`` with floor semantics, from one integer division.

    Integer division dominates an exact step, so the quotient and the remainder share one
    truncating division and a sign fix (``tf.math.floordiv`` plus ``floormod`` would divide
    twice). Float reciprocals are no faster here: int64<->float64 conversion is not vectorised
    on common CPUs.
    """
    q = tf.truncatediv(x, d)
    r = x - q * d
    neg = r < 0
    return tf.where(neg, q - 1, q), tf.where(neg, r + d, r)


def _small_floor_divmod(t: tf.Tensor, d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(t // d, t mod d)`` for ``0 <= t < 2**48``, ``1 <= d <= 2**24`` through float64.

    ``t`` and ``d`` are exact in float64 and ``fl(t / d)`` is within ``2**-53 · t/d`` of
    ``t / d``; that is less than ``1/d`` (the gap between ``t / d`` and the next integer when
    ``t / d`` is not one), so the floor of the rounded quotient is the exact floor.
    """
    q = tf.cast(tf.floor(tf.cast(t, tf.float64) / tf.cast(d, tf.float64)), tf.int64)
    return q, t - q * d


def mul_kernel(
    x: tf.Tensor, reg: tf.Tensor, n: tf.Tensor, d: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact ``x <- x * n/d`` (floor, remainder pushed to ``reg``); undone by :func:`div_kernel`.

    ``x*n`` is never formed (it could overflow int64): with ``x = q*d + rem`` we have
    ``y = x*n + s = q*n*d + t`` where ``t = rem*n + s`` lies in ``[0, n*d)``.
    """
    reg, s = floor_divmod(reg, n)  # pop s in [0, n)
    q, rem = floor_divmod(x, d)
    tq, tr = _small_floor_divmod(rem * n + s, d)  # rem*n + s < n*d <= 2**48
    return q * n + tq, reg * d + tr  # push y mod d


def div_kernel(
    x: tf.Tensor, reg: tf.Tensor, n: tf.Tensor, d: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact inverse of :func:`mul_kernel`: ``x <- x * d/n`` using the bits kept in ``reg``."""
    reg, r = floor_divmod(reg, d)  # undo the push of y mod d
    q, rem = floor_divmod(x, n)
    tq, tr = _small_floor_divmod(rem * d + r, n)  # y = q*n*d + rem*d + r, rem*d + r < n*d
    return q * d + tq, reg * n + tr  # undo the pop of s = y mod n


def spill_kernel(reg: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Move the low 8 bits of every register out: returns ``(reg >> 8, low bits as uint8)``."""
    chunk = tf.cast(tf.bitwise.bitwise_and(reg, tf.constant(_CHUNK_MASK, tf.int64)), tf.uint8)
    return tf.bitwise.right_shift(reg, tf.constant(CHUNK_BITS, tf.int64)), chunk


def unspill_kernel(reg: tf.Tensor, chunk: tf.Tensor) -> tf.Tensor:
    """Undo :func:`spill_kernel`: ``(reg << 8) | chunk``."""
    shifted = tf.bitwise.left_shift(reg, tf.constant(CHUNK_BITS, tf.int64))
    return tf.bitwise.bitwise_or(shifted, tf.cast(chunk, tf.int64))


_spill = tf.function(spill_kernel, reduce_retracing=True)
_unspill = tf.function(unspill_kernel, reduce_retracing=True)


class InfoBuffer:
    """Per-element registers with one shared bound, plus spilled 8-bit words in host memory.

    The register tensor is advanced by :func:`mul_kernel` / :func:`div_kernel`, usually inside
    the caller's compiled step; this object does the host-side planning around each of them:
    :meth:`before_mul` spills full words and records the bound, :meth:`after_div` restores
    them. The invariant is ``0 <= register < bound`` elementwise.
    """

    def __init__(self, shape: tf.TensorShape | tuple[int, ...]) -> None:
        self.shape = tf.TensorShape(shape)
        self.register: tf.Tensor | None = tf.zeros(self.shape, tf.int64)
        self.bound = 1
        self._history: list[int] = []  # bound before each mul, popped by the matching div
        self._chunks: list[np.ndarray] = []
        self._flushed: list[int] = []  # the bound before each flush(), popped by restore()
        self.info_bits = 0.0  # information bound: sum of log2(d/n) over live multiplications

    @staticmethod
    def _spills_needed(bound: int, rat: Rational) -> list[int]:
        """Bounds after each spill needed before a mul by ``rat`` starting at ``bound``."""
        out = []
        while _ceil_div(bound, rat.n) * rat.d > REGISTER_LIMIT:
            bound = _ceil_div(bound, 1 << CHUNK_BITS)
            out.append(bound)
        return out

    def before_mul(self, rat: Rational) -> None:
        """Plan a multiplication by ``rat``: spill words as needed; the kernel runs next."""
        self._history.append(self.bound)
        for new_bound in self._spills_needed(self.bound, rat):
            self.register, chunk = _spill(self.register)
            self._chunks.append(chunk.numpy())  # host memory
            self.bound = new_bound
        self.bound = _ceil_div(self.bound, rat.n) * rat.d
        self.info_bits += rat.info_bits

    def after_div(self, rat: Rational) -> None:
        """Finish the inverse of the last multiplication (its kernel has just run)."""
        if not self._history:
            raise RuntimeError("InfoBuffer: div without a matching mul (buffer is empty)")
        bound = self._history.pop()
        for _ in self._spills_needed(bound, rat):
            self.register = _unspill(self.register, tf.constant(self._chunks.pop()))
        self.bound = bound
        self.info_bits -= rat.info_bits

    def flush(self) -> None:
        """Move the whole register to host memory (until ``bound == 1``); see :meth:`restore`.

        Between a forward and a reverse pass the device then holds nothing for the buffer.
        """
        self._flushed.append(self.bound)
        while self.bound > 1:
            self.register, chunk = _spill(self.register)
            self._chunks.append(chunk.numpy())
            self.bound = _ceil_div(self.bound, 1 << CHUNK_BITS)
        self.register = None  # all zeros now: free it

    def restore(self) -> None:
        """Undo the last :meth:`flush`: the register and its bound come back exactly."""
        bound = self._flushed.pop()
        count, b = 0, bound
        while b > 1:
            b = _ceil_div(b, 1 << CHUNK_BITS)
            count += 1
        self.register = tf.zeros(self.shape, tf.int64)
        for _ in range(count):
            self.register = _unspill(self.register, tf.constant(self._chunks.pop()))
        self.bound = bound

    @property
    def n_ops(self) -> int:
        """Multiplications currently recorded (not yet undone)."""
        return len(self._history)

    @property
    def n_chunks(self) -> int:
        """8-bit words spilled to host memory, per element."""
        return len(self._chunks)

    def bits_held(self) -> int:
        """Bits of memory held per element: spilled words plus the live 64-bit register."""
        return CHUNK_BITS * len(self._chunks) + (64 if self.register is not None else 0)

    def bits_in_use(self) -> float:
        """Bits of capacity in use per element: spilled words plus ``log2(bound)``."""
        return CHUNK_BITS * len(self._chunks) + math.log2(self.bound)

    def nbytes(self) -> int:
        """Bytes of memory held in total (host words plus the device register)."""
        words = sum(c.nbytes for c in self._chunks)
        return words + (self.shape.num_elements() * 8 if self.register is not None else 0)

    def is_empty(self) -> bool:
        """True when every recorded multiplication has been undone and the registers are 0."""
        return (
            not self._history
            and not self._chunks
            and not self._flushed
            and self.bound == 1
            and self.register is not None
            and not bool(tf.reduce_any(self.register != 0))
        )
