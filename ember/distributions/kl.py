"""KL divergences Pyro registers beyond torch's (Pyro's ``pyro.distributions.kl``), registered
with torch's ``register_kl`` when :mod:`ember.distributions` is imported:

* ``Delta(v)`` against any distribution: ``-q.log_prob(v)`` (a point mass's own entropy taken as 0,
  as Pyro does);
* ``Independent`` against ``Independent`` reinterpreting different numbers of dims: the shared
  dims are summed over and the rest compared (a clear error where that pair has no KL);
* ``Independent(Normal, 1)`` or ``Independent(Delta, 1)`` against ``MultivariateNormal``, and
  ``MultivariateNormal`` against ``Independent(Normal, 1)`` (closed forms).

Shapes: each KL has the broadcast batch shape of ``p`` and ``q`` (event dims summed over)."""

from __future__ import annotations

import math

import torch
import torch.distributions as _td
from torch.distributions import kl_divergence, register_kl

from ember.distributions.special import Delta
from ember.distributions.torch import Independent
from ember.distributions.util import sum_rightmost

__all__ = ["kl_divergence", "register_kl"]


def _describe(d: _td.Distribution) -> str:
    if isinstance(d, _td.Independent):
        return f"Independent({_describe(d.base_dist)}, {d.reinterpreted_batch_ndims})"
    return type(d).__name__


def _no_kl(p: _td.Distribution, q: _td.Distribution, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"No KL(p || q) for p = {_describe(p)} (batch_shape {tuple(p.batch_shape)}, event_shape "
        f"{tuple(p.event_shape)}) and q = {_describe(q)} (batch_shape {tuple(q.batch_shape)}, event_shape "
        f"{tuple(q.event_shape)}): {why}"
    )


@register_kl(Delta, _td.Distribution)
def _kl_delta(p: Delta, q: _td.Distribution) -> torch.Tensor:
    return -q.log_prob(p.v)


@register_kl(Independent, Independent)
def _kl_independent_independent(p: _td.Independent, q: _td.Independent) -> torch.Tensor:
    shared = min(p.reinterpreted_batch_ndims, q.reinterpreted_batch_ndims)
    p_rest = p.reinterpreted_batch_ndims - shared
    q_rest = q.reinterpreted_batch_ndims - shared
    p_inner = Independent(p.base_dist, p_rest) if p_rest else p.base_dist
    q_inner = Independent(q.base_dist, q_rest) if q_rest else q.base_dist
    try:
        kl = kl_divergence(p_inner, q_inner)
    except NotImplementedError as e:
        raise _no_kl(p, q, f"after summing the {shared} shared reinterpreted dims, no KL is registered for "
                           f"{_describe(p_inner)} || {_describe(q_inner)} ({e})") from None
    return sum_rightmost(kl, shared)


@register_kl(Independent, _td.MultivariateNormal)
def _kl_independent_mvn(p: _td.Independent, q: _td.MultivariateNormal) -> torch.Tensor:
    base = p.base_dist
    if p.reinterpreted_batch_ndims == 1 and isinstance(base, Delta):
        return -q.log_prob(base.v)
    if p.reinterpreted_batch_ndims == 1 and isinstance(base, _td.Normal):
        # E_p[-log q] - H(p), with E_p[(x - m)^T P (x - m)] = sum(diag(P) s^2) + (mu - m)^T P (mu - m)
        d = q.event_shape[0]
        var = base.scale**2
        cross = 0.5 * (var * q.precision_matrix.diagonal(dim1=-2, dim2=-1)).sum(-1) - q.log_prob(base.loc)
        entropy = 0.5 * d * (1 + math.log(2 * math.pi)) + base.scale.log().sum(-1)
        return cross - entropy
    raise _no_kl(p, q, "only Independent(Normal, 1) and Independent(Delta, 1) have a KL against a MultivariateNormal")


@register_kl(_td.MultivariateNormal, Independent)
def _kl_mvn_independent(p: _td.MultivariateNormal, q: _td.Independent) -> torch.Tensor:
    base = q.base_dist
    if q.reinterpreted_batch_ndims != 1 or not isinstance(base, _td.Normal):
        raise _no_kl(p, q, "only Independent(Normal, 1) has a KL from a MultivariateNormal")
    # 0.5 [tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - d + log det S1 - log det S0], S1 diagonal
    d = p.event_shape[0]
    var = base.scale**2
    trace = (p.covariance_matrix.diagonal(dim1=-2, dim2=-1) / var).sum(-1)
    maha = ((base.loc - p.loc) ** 2 / var).sum(-1)
    log_det_q = var.log().sum(-1)
    log_det_p = 2 * p.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + maha - d + log_det_q - log_det_p)
