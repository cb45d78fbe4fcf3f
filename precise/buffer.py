"""A vectorised, lossless information buffer for exact multiplication by rates ``n/d``.

Multiplying a fixed-point integer by ``n/d < 1`` destroys about ``log2(d/n)`` bits. We keep
them in arithmetic-coding registers ``reg`` (int64, ``reg >= 0``):

* forward (:func:`mul_kernel`): pop ``s = reg mod n``; with ``y = x*n + s`` set
  ``x <- y // d`` and push ``y mod d`` (``reg <- reg*d + y mod d``);
* reverse (:func:`div_kernel`): pop ``r = reg mod d``; with ``y = x*d + r`` set
  ``x <- y // n`` and push ``y mod n``. Each line undoes its forward twin exactly.

Both maps are bijections on the integers, so exactness never depends on the data.

**Groups.** A register that serves one element wastes about ``log2(d·n/(d−n))`` bits on
start-up (its bound grows by up to ``d`` per push while it is small: 13 bits at ``γ = 0.99``,
where a step carries only 0.0145 bits). So one register serves a *group* of ``G`` elements
(default 16): the tensor is flattened, zero-padded to ``G·M`` and cut into ``G`` rows of
``M``; a multiplication runs :func:`mul_kernel` on row 0, 1, …, G−1 in turn against the same
``M`` registers (:func:`group_mul_kernel`), and the reverse runs the rows backwards. Start-up
and word padding are then shared by ``G`` elements.

**Bounds and words.** Every element sees the same ``n, d``, so the buffer keeps one *shared*
upper bound ``U`` (``reg < U`` for every register) as a Python int, known without reading any
data. Before a row's push could exceed ``2**62``, the low ``8k`` bits of every register are
moved out (leaving 8 to 16 bits of ``U``): the host plans the shifts, the compiled kernel cuts
the bits (``lo``), and the host stores them as ``k`` bytes per register (``uint8`` arrays in
host memory, so a GPU run keeps device memory flat); the reverse kernel puts them back. At the
end of a forward pass :meth:`InfoBuffer.flush` moves the registers out too. The information
bound is ``sum log2(d/n)`` per element; what is held exceeds it by the start-up and the
padding of the last word, both divided by ``G``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from revhpo.precise.rational import Rational

CHUNK_BITS = 8  # words move out in whole bytes
DEFAULT_GROUP = 16  # elements per register
REGISTER_LIMIT = 2**62  # reg values stay <= REGISTER_LIMIT - 1 (a bit of headroom for divmod)
_KEEP_BITS = 8  # a spill leaves 8 to 16 bits of bound in the register


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


def group_layout(num_elements: int, group: int = DEFAULT_GROUP) -> tuple[int, int]:
    """``(G, M)``: rows and registers for ``num_elements`` elements, ``G <= group``.

    ``M = ceil(num_elements / group)`` registers; ``G = ceil(num_elements / M)`` rows, so no row
    is all padding.
    """
    if group < 1:
        raise ValueError(f"`group` must be at least 1. Received: group={group}")
    if num_elements <= 0:
        return 1, 0
    m = _ceil_div(num_elements, group)
    return _ceil_div(num_elements, m), m


def _row_matrix(x: tf.Tensor, g: int, m: tf.Tensor) -> tf.Tensor:
    """``x`` flattened, zero-padded to ``g*m`` and reshaped to ``[g, m]``."""
    flat = tf.reshape(x, [-1])
    flat = tf.pad(flat, [[0, g * m - tf.size(flat, tf.int64)]])
    return tf.reshape(flat, tf.stack([tf.constant(g, tf.int64), m]))


def _unrows(mat: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.reshape(mat, [-1])[: tf.size(like)], tf.shape(like))


def _over_rows(step, x: tf.Tensor, reg: tf.Tensor, g: int, extras, reverse: bool, cut: bool):
    """Run ``step(row, reg, extra_j) -> (row, reg, lo_row)`` over the rows of ``x`` in order.

    A graph loop (not unrolled in Python), so the compiled step stays small whatever ``g``.
    """
    m = tf.size(reg, tf.int64)
    mat = _row_matrix(x, g, m)
    rows_in = tf.TensorArray(tf.int64, size=g, element_shape=[None]).unstack(mat)
    rows_out = tf.TensorArray(tf.int64, size=g, element_shape=[None])
    lo_out = tf.TensorArray(tf.int64, size=g if cut else 0, element_shape=[None])

    def body(i, reg, rows_out, lo_out):
        j = g - 1 - i if reverse else i
        row, reg, lo_row = step(rows_in.read(j), reg, [e[j] for e in extras])
        rows_out = rows_out.write(j, row)
        if cut:
            lo_out = lo_out.write(j, lo_row)
        return i + 1, reg, rows_out, lo_out

    _, reg, rows_out, lo_out = tf.while_loop(
        lambda i, *_: i < g,
        body,
        (tf.constant(0), reg, rows_out, lo_out),
        maximum_iterations=g,
    )
    out = _unrows(rows_out.stack(), x)
    return out, reg, (lo_out.stack() if cut else None)


def group_mul_kernel(
    x: tf.Tensor,
    reg: tf.Tensor,
    n: tf.Tensor,
    d: tf.Tensor,
    g: int,
    shifts: tf.Tensor | None = None,
) -> tuple[tf.Tensor, ...]:
    """Exact ``x <- x * n/d`` with ``g`` rows of ``x`` sharing the registers ``reg`` ``[M]``.

    Row ``j`` (elements ``j*M .. j*M+M-1`` of the flattened, zero-padded ``x``) is multiplied
    by :func:`mul_kernel` after row ``j - 1``. With ``shifts`` (``[g]`` int64, multiples of 8),
    the low ``shifts[j]`` bits of every register are cut out before row ``j`` and returned as
    ``lo`` ``[g, M]``: the result is then ``(x, reg, lo)``, else ``(x, reg)``. Padding stays
    zero (``s < n <= d``), so nothing is lost by dropping it.
    """
    one = tf.constant(1, tf.int64)

    def step(row, reg, extra):
        lo_row = None
        if shifts is not None:
            (s,) = extra
            lo_row = tf.bitwise.bitwise_and(reg, tf.bitwise.left_shift(one, s) - one)
            reg = tf.bitwise.right_shift(reg, s)
        row, reg = mul_kernel(row, reg, n, d)
        return row, reg, lo_row

    cut = shifts is not None
    out, reg, lo = _over_rows(step, x, reg, g, [shifts] if cut else [], False, cut)
    return (out, reg, lo) if cut else (out, reg)


def group_div_kernel(
    x: tf.Tensor,
    reg: tf.Tensor,
    n: tf.Tensor,
    d: tf.Tensor,
    g: int,
    shifts: tf.Tensor | None = None,
    lo: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact inverse of :func:`group_mul_kernel` (pass back its ``shifts`` and ``lo``)."""

    def step(row, reg, extra):
        row, reg = div_kernel(row, reg, n, d)
        if shifts is not None:
            s, lo_row = extra
            reg = tf.bitwise.bitwise_or(tf.bitwise.left_shift(reg, s), lo_row)
        return row, reg, None

    extras = [shifts, lo] if shifts is not None else []
    out, reg, _ = _over_rows(step, x, reg, g, extras, True, False)
    return out, reg


def _to_bytes(values: np.ndarray, nbytes: int) -> np.ndarray:
    """The low ``nbytes`` bytes of non-negative int64 values, as ``uint8`` ``[M, nbytes]``."""
    return values.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbytes].copy()


def _from_bytes(words: np.ndarray) -> np.ndarray:
    """Undo :func:`_to_bytes`."""
    full = np.zeros((words.shape[0], 8), np.uint8)
    full[:, : words.shape[1]] = words
    return full.view("<u8").reshape(-1).astype(np.int64)


def _bytes_for(bound: int) -> int:
    """Bytes that hold any value below ``bound``."""
    return _ceil_div((bound - 1).bit_length(), CHUNK_BITS)


class InfoBuffer:
    """Registers shared by groups of elements, with one shared bound, plus words in host memory.

    The registers are advanced by :func:`group_mul_kernel` / :func:`group_div_kernel`, usually
    inside the caller's compiled step; this object does the host-side planning around them:

    * forward: ``shifts = buf.before_mul(rat)``; run the kernel (with ``shifts`` when not
      None); ``buf.register = reg``; ``buf.after_mul(lo)`` when ``shifts`` was not None;
    * reverse: ``shifts, lo = buf.before_div(rat)``; run the inverse kernel with them;
      ``buf.register = reg``.

    The invariant is ``0 <= register < bound`` elementwise.

    Args:
        shape: shape of the tensor whose multiplications are recorded.
        group: elements per register (1 = one register per element).
    """

    def __init__(self, shape: tf.TensorShape | tuple[int, ...], group: int = DEFAULT_GROUP) -> None:
        self.shape = tf.TensorShape(shape)
        self.num_elements = int(self.shape.num_elements())
        self.group, self.registers = group_layout(self.num_elements, group)
        self.register: tf.Tensor | None = tf.zeros([self.registers], tf.int64)
        self.bound = 1
        # per live multiplication: the bound before it and its shifts (None: no spill)
        self._history: list[tuple[int, np.ndarray | None]] = []
        self._words: list[np.ndarray] = []  # uint8 [M, k] arrays, in the order cut
        self._flushed: list[tuple[int, np.ndarray]] = []  # (bound, words) per flush()
        self.info_bits = 0.0  # information bound per element: sum of log2(d/n)

    def plan(self, bound: int, rat: Rational) -> tuple[int, np.ndarray | None]:
        """Bound after a multiplication by ``rat`` from ``bound``, and the spill shifts."""
        shifts = np.zeros(self.group, np.int64)
        for j in range(self.group):
            if _ceil_div(bound, rat.n) * rat.d > REGISTER_LIMIT:
                k = 1
                while _ceil_div(bound, 1 << (CHUNK_BITS * (k + 1))) >= 1 << _KEEP_BITS:
                    k += 1
                shifts[j] = CHUNK_BITS * k
                bound = _ceil_div(bound, 1 << (CHUNK_BITS * k))
            bound = _ceil_div(bound, rat.n) * rat.d
        return bound, (shifts if shifts.any() else None)

    def before_mul(self, rat: Rational) -> np.ndarray | None:
        """Plan a multiplication by ``rat``; returns the shifts for the kernel (None: no spill)."""
        new_bound, shifts = self.plan(self.bound, rat)
        self._history.append((self.bound, shifts))
        self.bound = new_bound
        self.info_bits += rat.info_bits
        return shifts

    def after_mul(self, lo: tf.Tensor | np.ndarray, shifts: np.ndarray | None = None) -> None:
        """Store the words the kernel cut (its ``lo``) in host memory.

        ``shifts`` are the cuts :meth:`before_mul` planned for that multiplication (default:
        the last one planned); words must be stored in the order of their multiplications.
        """
        shifts = self._history[-1][1] if shifts is None else shifts
        lo = np.asarray(lo)
        for j in np.flatnonzero(shifts):
            self._words.append(_to_bytes(lo[j], int(shifts[j]) // CHUNK_BITS))

    def before_div(self, rat: Rational) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Plan undoing the last multiplication: ``(shifts, lo)`` for the inverse kernel
        (int64 arrays ``[G]`` and ``[G, M]``; both None when it cut nothing)."""
        if not self._history:
            raise RuntimeError("InfoBuffer: div without a matching mul (buffer is empty)")
        bound, shifts = self._history.pop()
        self.bound = bound
        self.info_bits -= rat.info_bits
        if shifts is None:
            return None, None
        lo = np.zeros((self.group, self.registers), np.int64)
        for j in reversed(np.flatnonzero(shifts)):
            lo[j] = _from_bytes(self._words.pop())
        return shifts, lo

    def flush(self) -> None:
        """Move the registers to host memory; see :meth:`restore`.

        Between a forward and a reverse pass the device then holds nothing for the buffer.
        """
        words = _to_bytes(self.register.numpy(), _bytes_for(self.bound))
        self._flushed.append((self.bound, words))
        self.register = None
        self.bound = 1

    def restore(self) -> None:
        """Undo the last :meth:`flush`: the registers and their bound come back exactly."""
        self.bound, words = self._flushed.pop()
        self.register = tf.constant(_from_bytes(words))

    @property
    def n_ops(self) -> int:
        """Multiplications currently recorded (not yet undone)."""
        return len(self._history)

    @property
    def n_words(self) -> int:
        """Word arrays held in host memory (each ``[M, k]`` bytes)."""
        return len(self._words) + len(self._flushed)

    def _host_bytes_per_register(self) -> int:
        return sum(w.shape[1] for w in self._words) + sum(w.shape[1] for _, w in self._flushed)

    def bits_held(self) -> float:
        """Bits of memory held per element: host words plus the live 64-bit registers."""
        live = 64 if self.register is not None else 0
        per_register = CHUNK_BITS * self._host_bytes_per_register() + live
        return per_register * self.registers / max(self.num_elements, 1)

    def bits_in_use(self) -> float:
        """Bits of capacity in use per element: host words plus ``log2(bound)``."""
        per_register = CHUNK_BITS * self._host_bytes_per_register() + math.log2(self.bound)
        return per_register * self.registers / max(self.num_elements, 1)

    def nbytes(self) -> int:
        """Bytes of memory held in total (host words plus the device registers)."""
        words = sum(w.nbytes for w in self._words) + sum(w.nbytes for _, w in self._flushed)
        return words + (self.registers * 8 if self.register is not None else 0)

    def is_empty(self) -> bool:
        """True when every recorded multiplication has been undone and the registers are 0."""
        return (
            not self._history
            and not self._words
            and not self._flushed
            and self.bound == 1
            and self.register is not None
            and not bool(tf.reduce_any(self.register != 0))
        )
