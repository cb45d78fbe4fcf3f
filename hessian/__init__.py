"""Gradients, Hessian-vector products, mixed products and dense Hessians (forward-over-reverse).

Knows nothing of nets, optimizers or the service.
"""

import os

# Exact reversal needs the reverse pass to recompute each gradient bit for bit. oneDNN's
# float32 CPU kernels can round differently in the forward and the reverse graph, so they are
# off unless the user chose otherwise before TensorFlow was first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from hessian.hvp import dense_hessian, grad_and_hvp, grad_hvp_mixed, hvp

__all__ = ["dense_hessian", "grad_and_hvp", "grad_hvp_mixed", "hvp"]
