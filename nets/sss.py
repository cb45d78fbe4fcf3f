"""Structured weight layers: sequentially semiseparable (SSS) and rank-1; families ``"sss"`` and
``"rank1"``.

An SSS matrix ``M`` (``K·p × K·m``, ``K`` blocks, state dimension ``d``; Kissel et al.,
"Backpropagation Through States") has blocks

* ``M_kk = D_k``,
* ``M_kj = C_k A_{k−1} ⋯ A_{j+1} B_j`` for ``j < k`` (causal part),
* ``M_kj = G_k E_{k+1} ⋯ E_{j−1} H_j`` for ``j > k`` (anti-causal part),

and ``y = M x`` is computed by two state recursions, never forming ``M``:
``h_{k+1} = A_k h_k + B_k x_k`` (forward in k), ``g_{k−1} = E_k g_k + H_k x_k`` (backward in k),
``y_k = C_k h_k + D_k x_k + G_k g_k``: ``O(K(d² + d(m + p) + mp))`` per vector.

Only the generators that the recursions use are parameters (no dead weights):
``D`` ``[K, p, m]``; ``B``, ``H`` ``[K−1, d, m]``; ``C``, ``G`` ``[K−1, p, d]``; ``A``, ``E``
``[K−2, d, d]`` (``A`` and ``E`` only when ``K ≥ 3``; only ``D`` when ``K = 1``). Hence
``count = K·p·m + 2(K−1)·d·(m + p) + 2·max(K−2, 0)·d²``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from revhpo.nets.base import Net, ParamSpec, activation_fn, register_family
from revhpo.nets.config import (  # noqa: F401 (the count and the shapes re-exported)
    Rank1Config,
    SSSConfig,
    sss_generator_shapes,
    sss_param_count,
)
from revhpo.nets.mlp import dense

# Default init: each dense-equivalent entry has variance ≈ 1/fan_in on the diagonal and next
# blocks, decaying by RHO² per block of distance (so E‖y‖² ≈ ‖x‖²·fan_out/fan_in, like a
# 1/√fan_in dense layer): half of the variance on the diagonal, a quarter on each side.
RHO = 0.5


def _sss_std(name: str, state: int, m: int) -> float:
    return {
        "D": 1.0 / math.sqrt(2.0 * m),
        "B": 1.0 / math.sqrt(state),
        "H": 1.0 / math.sqrt(state),
        "C": math.sqrt((1.0 - RHO**2) / (4.0 * m)),
        "G": math.sqrt((1.0 - RHO**2) / (4.0 * m)),
        "A": RHO / math.sqrt(state),
        "E": RHO / math.sqrt(state),
    }[name]


def sss_matvec(x: tf.Tensor, gens: dict[str, tf.Tensor], blocks: int) -> tf.Tensor:
    """``y = x Mᵀ`` for a batch of rows ``x`` ``[batch, K·m]`` by the two state recursions.

    Args:
        x: ``[batch, K·m]``.
        gens: the generators ``D`` and, for ``K ≥ 2``, ``B, C, H, G`` (and ``A, E`` for K ≥ 3).
        blocks: K.

    Returns:
        ``[batch, K·p]``.
    """
    k = blocks
    dd = gens["D"]
    p, m = dd.shape[1], dd.shape[2]
    # Block-major layout [K, batch, ·]: every block product is one batched matmul. Every tensor
    # has at most two consumers and every sum of three or more terms happens inside a matmul,
    # so the gradient's accumulation order cannot depend on how the surrounding graph is
    # rewritten (reversible training recomputes it and needs the same bits).
    xs = tf.transpose(tf.reshape(x, [-1, k, m]), [1, 0, 2])
    if k == 1:
        return tf.reshape(tf.transpose(tf.matmul(xs, dd, transpose_b=True), [1, 0, 2]), [-1, p])
    d = gens["B"].shape[1]
    zero_in = tf.zeros([1, d, m], x.dtype)
    # Injections B_k x_k (k < K−1) and H_k x_k (k ≥ 1) from one matmul per block.
    w_in = tf.concat(
        [tf.concat([gens["B"], zero_in], 0), tf.concat([zero_in, gens["H"]], 0)], axis=1
    )
    bx, hx = tf.split(tf.matmul(xs, w_in, transpose_b=True), [d, d], axis=2)
    bx, hx = tf.unstack(bx), tf.unstack(hx)
    a_blocks = tf.unstack(gens["A"]) if k >= 3 else []
    e_blocks = tf.unstack(gens["E"]) if k >= 3 else []
    # Causal: h_1 = B_0 x_0, h_{k+1} = A_k h_k + B_k x_k.
    hs = [bx[0]]
    for j in range(1, k - 1):
        hs.append(tf.matmul(hs[-1], a_blocks[j - 1], transpose_b=True) + bx[j])
    # Anti-causal: g_{K−2} = H_{K−1} x_{K−1}, g_{k−1} = E_k g_k + H_k x_k.
    gs = [hx[k - 1]]
    for j in range(k - 2, 0, -1):
        gs.append(tf.matmul(gs[-1], e_blocks[j - 1], transpose_b=True) + hx[j])
    zero_state = tf.zeros_like(bx[0])
    states_h = tf.stack([zero_state, *hs])  # h_0 = 0, h_1 .. h_{K−1}
    states_g = tf.stack([*gs[::-1], zero_state])  # g_0 .. g_{K−2}, g_{K−1} = 0
    # y_k = D_k x_k + C_k h_k + G_k g_k as one matmul per block.
    zero_out = tf.zeros([1, p, d], x.dtype)
    w_out = tf.concat(
        [dd, tf.concat([zero_out, gens["C"]], 0), tf.concat([gens["G"], zero_out], 0)], axis=2
    )
    y = tf.matmul(tf.concat([xs, states_h, states_g], axis=2), w_out, transpose_b=True)
    return tf.reshape(tf.transpose(y, [1, 0, 2]), [-1, k * p])


def sss_dense(gens: dict[str, tf.Tensor], blocks: int) -> tf.Tensor:
    """The dense matrix ``M`` ``[K·p, K·m]`` of the generators, block by block (for tests)."""
    k = blocks
    dd = gens["D"]
    p, m = dd.shape[1], dd.shape[2]
    rows = []
    for i in range(k):
        row = []
        for j in range(k):
            if i == j:
                blk = dd[i]
            elif j < i:  # C_i A_{i−1} ⋯ A_{j+1} B_j
                blk = gens["B"][j]
                for t in range(j + 1, i):
                    blk = tf.matmul(gens["A"][t - 1], blk)
                blk = tf.matmul(gens["C"][i - 1], blk)
            else:  # G_i E_{i+1} ⋯ E_{j−1} H_j
                blk = gens["H"][j - 1]
                for t in range(j - 1, i, -1):
                    blk = tf.matmul(gens["E"][t - 1], blk)
                blk = tf.matmul(gens["G"][i], blk)
            row.append(tf.reshape(blk, [p, m]))
        rows.append(tf.concat(row, axis=1))
    return tf.concat(rows, axis=0)


def rank1_matvec(x: tf.Tensor, u: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """``y = x (u vᵀ)ᵀ = (x v) uᵀ`` for ``W = u vᵀ`` ``[out, in]``: ``O(in + out)`` per vector."""
    return tf.matmul(x, v[:, None]) * u[None, :]


class _StructuredMLP(Net):
    """Hidden layers with a structured weight matrix, an activation, and a readout."""

    structure = ""

    def _hidden_specs(self, i: int, fan_in: int, fan_out: int) -> list[ParamSpec]:
        raise NotImplementedError

    def _hidden_apply(self, i: int, params: list[tf.Tensor], h: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _build(self, c: SSSConfig | Rank1Config) -> None:
        self._phi = activation_fn(c.activation)
        layers = c.layers(self.input_dim, self.output_dim)
        n_struct = c.n_structured()
        self._groups: list[list[int]] = []
        for i, (a, b, structured) in enumerate(layers):
            start = len(self._specs)
            if structured:
                self._layer_names.append(f"{self.structure}{i}")
                self._specs += self._hidden_specs(i, a, b)
                self._specs.append(ParamSpec(f"{self.structure}{i}/bias", (b,), i, 0.0))
            else:
                self._layer_names.append(f"dense{i}")
                self._specs.append(ParamSpec(f"dense{i}/kernel", (a, b), i, 1 / math.sqrt(a)))
                self._specs.append(ParamSpec(f"dense{i}/bias", (b,), i, 0.0))
            self._groups.append(list(range(start, len(self._specs))))
        self._n_struct = n_struct

    def layer_params(self, params: Sequence[tf.Tensor], layer: int) -> list[tf.Tensor]:
        """The tensors of layer ``layer`` (weights first, bias last)."""
        params = self.check_params(params)
        return [params[j] for j in self._groups[layer]]

    @tf.autograph.experimental.do_not_convert
    def apply(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Logits ``[batch, output_dim]`` of ``x`` ``[batch, input_dim]``."""
        params = self.check_params(params)
        h = self.check_inputs(x, params)
        last = len(self._groups) - 1
        for i, group in enumerate(self._groups):
            p = [params[j] for j in group]
            if i < self._n_struct:
                h = self._hidden_apply(i, p[:-1], h) + p[-1]
            else:
                h = dense(h, p[0], p[1])
            if i < last:
                h = self._phi(h)
        return h


@register_family
class SSSMLP(_StructuredMLP):
    """Family ``"sss"``: hidden layers whose weight matrices are sequentially semiseparable.

    Config keys (defaults; ``nets.config.SSSConfig``): ``sizes`` ([256, 256]) hidden widths;
    ``blocks`` (8) K; ``state`` (4) d; ``activation`` ("tanh"); ``output`` ("dense": a dense
    readout; "sss": the readout is SSS too). Every SSS layer's fan-in and fan-out must be
    divisible by ``blocks``. Parameters of SSS layer i: ``sss{i}/D, B, C, A, H, G, E`` (see
    the module docstring) and ``sss{i}/bias``.
    """

    family = "sss"
    config_class = SSSConfig
    structure = "sss"

    def __init__(self, cfg: SSSConfig | dict[str, Any], input_dim: int, output_dim: int) -> None:
        super().__init__(input_dim, output_dim)
        c: SSSConfig = self.take_config(cfg)  # checks that `blocks` divides every SSS width
        self.blocks, self.state = c.blocks, c.state
        self._build(c)

    def _hidden_specs(self, i: int, fan_in: int, fan_out: int) -> list[ParamSpec]:
        k = self.blocks
        m, p = fan_in // k, fan_out // k
        return [
            ParamSpec(f"sss{i}/{name}", shape, i, _sss_std(name, self.state, m))
            for name, shape in sss_generator_shapes(k, self.state, m, p)
        ]

    def generators(self, params: Sequence[tf.Tensor], layer: int) -> dict[str, tf.Tensor]:
        """The SSS generators of layer ``layer`` as ``{"D": ..., "B": ..., ...}``."""
        if not 0 <= layer < self._n_struct:
            raise ValueError(
                f"`layer` must index an SSS layer in [0, {self._n_struct}). Received: layer={layer}"
            )
        tensors = self.layer_params(params, layer)[:-1]
        names = [self._specs[j].name.split("/")[1] for j in self._groups[layer][:-1]]
        return dict(zip(names, tensors, strict=True))

    def dense_matrix(self, params: Sequence[tf.Tensor], layer: int) -> tf.Tensor:
        """The dense weight matrix ``M`` ``[fan_out, fan_in]`` of SSS layer ``layer`` (tests
        only: it costs ``O(fan_in·fan_out)`` memory). The layer computes ``x Mᵀ + bias``."""
        return sss_dense(self.generators(params, layer), self.blocks)

    def _hidden_apply(self, i: int, params: list[tf.Tensor], h: tf.Tensor) -> tf.Tensor:
        names = [self._specs[j].name.split("/")[1] for j in self._groups[i][:-1]]
        return sss_matvec(h, dict(zip(names, params, strict=True)), self.blocks)


@register_family
class Rank1MLP(_StructuredMLP):
    """Family ``"rank1"``: hidden layers with rank-1 weights ``W = u vᵀ`` (the SSS baseline).

    Config keys (defaults; ``nets.config.Rank1Config``): ``sizes`` ([256, 256]);
    ``activation`` ("tanh"). Parameters of hidden layer i: ``rank1{i}/u`` ``[fan_out]`` (init
    N(0, 1)), ``rank1{i}/v`` ``[fan_in]`` (init N(0, 1/fan_in)), ``rank1{i}/bias``; the
    readout is dense.
    """

    family = "rank1"
    config_class = Rank1Config
    structure = "rank1"

    def __init__(self, cfg: Rank1Config | dict[str, Any], input_dim: int, output_dim: int) -> None:
        super().__init__(input_dim, output_dim)
        self._build(self.take_config(cfg))

    def _hidden_specs(self, i: int, fan_in: int, fan_out: int) -> list[ParamSpec]:
        return [
            ParamSpec(f"rank1{i}/u", (fan_out,), i, 1.0),
            ParamSpec(f"rank1{i}/v", (fan_in,), i, 1.0 / math.sqrt(fan_in)),
        ]

    def dense_matrix(self, params: Sequence[tf.Tensor], layer: int) -> tf.Tensor:
        """The dense weight ``u vᵀ`` ``[fan_out, fan_in]`` of hidden layer ``layer``."""
        u, v = self.layer_params(params, layer)[:2]
        return tf.tensordot(u, v, axes=0)

    def _hidden_apply(self, i: int, params: list[tf.Tensor], h: tf.Tensor) -> tf.Tensor:
        return rank1_matvec(h, params[0], params[1])
