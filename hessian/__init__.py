"""Gradients, Hessian-vector products, mixed products and dense Hessians (forward-over-reverse).

Knows nothing of nets, optimizers or the service.
"""

from revhpo.hessian.hvp import dense_hessian, grad_and_hvp, grad_hvp_mixed, hvp

__all__ = ["dense_hessian", "grad_and_hvp", "grad_hvp_mixed", "hvp"]
