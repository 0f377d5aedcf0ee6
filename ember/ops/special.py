"""Special functions (Pyro's ``pyro.ops.special``): a log with finite gradients at zero, the log
Beta function and log binomial coefficient (exact, or by a shifted Stirling series within a chosen
error bound), log modified Bessel functions of the first kind, Gauss-Hermite quadrature, and the
multinomial log-likelihood of a sparse count vector."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["get_quad_rule", "log_I1", "log_beta", "log_binomial", "safe_log", "sparse_multinomial_likelihood"]

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class _LogClampedGrad(torch.autograd.Function):
    """``log(x)`` whose backward divides by ``max(x, eps)`` instead of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.log(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad / torch.clamp(x, min=torch.finfo(x.dtype).eps)


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """``torch.log(x)`` (same shape as ``x``) whose gradient stays finite at ``x = 0``: the
    derivative ``1 / x`` is computed as ``1 / max(x, finfo.eps)``."""
    return _LogClampedGrad.apply(x)


def _check_tol(tol: float, where: str) -> None:
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or tol < 0:
        raise ValueError(f"{where}: tol must be a number >= 0; got {tol!r}")


def log_beta(x: torch.Tensor, y: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """The log Beta function ``lgamma(x) + lgamma(y) - lgamma(x + y)`` of positive tensors ``x``
    and ``y`` (broadcast together; the result has their broadcast shape).

    With ``tol >= 0.02`` it uses Stirling's series ``lgamma(z) ~ (z - 1/2) log z - z + log(2 pi)/2``
    after shifting each argument up ``n = ceil(0.082 / tol)`` times by ``lgamma(z) = lgamma(z + 1) -
    log z``, which bounds the absolute error by ``0.082 / n <= tol`` (cheaper than ``lgamma``
    when ``tol`` is loose). Below ``0.02`` it is exact.
    """
    _check_tol(tol, "log_beta")
    if tol < 0.02:
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)
    n = int(math.ceil(0.082 / tol))
    # log B(x, y) = log B(x + n, y + n) + sum_i log((x + y + i) / ((x + i) (y + i))), i < n
    ratio = 1.0
    for i in range(n):
        ratio = ratio * ((x + y + i) / ((x + i) * (y + i)))
    xs, ys, zs = x + n, y + n, x + y + n
    stirling = (xs - 0.5) * torch.log(xs) + (ys - 0.5) * torch.log(ys) - (zs - 0.5) * torch.log(zs)
    # Stirling's linear terms -xs - ys + zs add up to -n; its constant enters once (2 - 1 gammas)
    return torch.log(ratio) + stirling + (_HALF_LOG_TWO_PI - n)


@torch.no_grad()
def log_binomial(n: torch.Tensor, k: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """``log(n choose k)`` for integer-valued tensors ``n >= 0`` and ``0 <= k <= n`` (broadcast
    together; the result has their broadcast shape), without gradients. With ``tol >= 0.02`` it
    goes through the approximate :func:`log_beta`: ``-log(n + 1) - log_beta(k + 1, n - k + 1)``."""
    _check_tol(tol, "log_binomial")
    if tol < 0.02:
        return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return -torch.log(n + 1) - log_beta(k + 1, n - k + 1, tol=tol)


def log_I1(orders: int, value: torch.Tensor, terms: int = 250) -> torch.Tensor:
    r"""``log I_v(value)`` for every order ``v = 0, 1, ..., orders`` of the modified Bessel function
    of the first kind, from its series truncated after ``terms`` terms:

    .. math:: \log I_v(z) = \log \sum_{k \ge 0} \exp\big((2k + v) \log(z/2) - \log k! - \log \Gamma(v + k + 1)\big)

    :param orders: the largest order (an int ``>= 0``).
    :param value: positive arguments, any shape ``S`` (a scalar counts as shape ``(1,)``).
    :returns: shape ``(orders + 1, *S)``; row ``v`` holds ``log I_v``.
    """
    shape = value.shape if value.dim() > 0 else torch.Size([1])
    z = value.reshape(-1, 1)  # (N, 1)
    k = torch.arange(terms, device=value.device, dtype=z.dtype)  # (T,)
    v = torch.arange(orders + 1, device=value.device, dtype=z.dtype).unsqueeze(-1)  # (V, 1)
    log_half_z = torch.log(z / 2)  # (N, 1)
    # (V, N, T): (2k + v) log(z/2) - lgamma(k + 1) - lgamma(v + k + 1)
    terms_ = ((2 * k + v).unsqueeze(1) * log_half_z.unsqueeze(0)
              - torch.lgamma(k + 1) - torch.lgamma(v + k + 1).unsqueeze(1))
    return torch.logsumexp(terms_, dim=-1).reshape((orders + 1,) + tuple(shape))


def get_quad_rule(num_quad: int, prototype_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite quadrature for a standard normal: ``(points, log_weights)``, both of shape
    ``(num_quad,)``, with the dtype and device of ``prototype_tensor``, such that
    ``E[f(Z)] ~ sum(exp(log_weights) * f(points))`` for ``Z ~ Normal(0, 1)``. For
    ``Normal(0, s)`` scale the points by ``s``."""
    nodes, weights = np.polynomial.hermite.hermgauss(num_quad)
    points = torch.as_tensor(nodes * math.sqrt(2.0))
    log_weights = torch.as_tensor(np.log(weights) - 0.5 * math.log(math.pi))
    like = dict(dtype=prototype_tensor.dtype, device=prototype_tensor.device)
    return points.to(**like), log_weights.to(**like)


def sparse_multinomial_likelihood(total_count: torch.Tensor, nonzero_logits: torch.Tensor,
                                  nonzero_value: torch.Tensor) -> torch.Tensor:
    """The multinomial log-likelihood of a count vector given only at its nonzero entries:
    ``sum(lgamma(total_count + 1)) - sum(lgamma(nonzero_value + 1)) + nonzero_logits . nonzero_value``
    (a scalar). ``nonzero_logits`` and ``nonzero_value`` have shape ``(K,)``: the normalized logits
    (``logits - logits.logsumexp(-1)``) and counts at the ``K`` nonzero cells (``value[nnz]``);
    ``total_count`` holds the row totals (``value.sum(-1)``, any shape). Equals
    ``Multinomial(logits=logits).log_prob(value).sum()`` for the dense ``value``."""
    return (torch.lgamma(total_count + 1).sum() - torch.lgamma(nonzero_value + 1).sum()
            + torch.dot(nonzero_logits, nonzero_value))
