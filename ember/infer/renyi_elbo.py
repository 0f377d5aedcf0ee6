"""``RenyiELBO``: the variational Rényi bound (``alpha = 0``: the importance-weighted bound, IWAE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import ELBO, NonFiniteLossError, describe_nonfinite, is_guide_term
from ember.poutine.trace_struct import Trace, scale_and_mask

__all__ = ["RenyiELBO", "collect_particles", "log_weights", "particle_terms"]


def per_particle(lp: Any, particle_dim: int | None, n: int) -> torch.Tensor:
    """A site's log-density (any shape) summed to one value per particle: ``[n]``. With
    ``particle_dim`` None (one particle per trace) the whole sum, as ``[1]``."""
    if not isinstance(lp, torch.Tensor):
        lp = torch.as_tensor(float(lp))
    if particle_dim is None:
        return lp.sum().reshape(1)
    if lp.dim() < -particle_dim:
        return lp.sum().expand(n)
    lp = lp.movedim(particle_dim, 0)
    out = lp.reshape(lp.shape[0], -1).sum(-1)
    return out.expand(n) if out.shape[0] == 1 else out


def particle_terms(model_trace: Trace, guide_trace: Trace, particle_dim: int | None, n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(log p, log q, score)``, each ``[n]``: the model's and the guide's log-density of each
    particle (scaled and masked) and the sum of the unscaled (masked) ``log q`` of its
    non-reparameterized guide sites, whose gradient is the score function (None where every
    guide site is reparameterized)."""
    log_p: Any = torch.zeros(n)
    log_q: Any = torch.zeros(n)
    score: Any = None
    for site in model_trace.nodes.values():
        if site.type == "sample" and site.log_prob is not None:
            log_p = log_p + per_particle(site.log_prob, particle_dim, n)
    for site in guide_trace.nodes.values():
        if is_guide_term(site) and site.log_prob is not None:
            log_q = log_q + per_particle(site.log_prob, particle_dim, n)
            if not site.fn.has_rsample:
                term = per_particle(scale_and_mask(site.unscaled_log_prob, 1.0, site.mask), particle_dim, n)
                score = term if score is None else score + term
    return log_p, log_q, score


def log_weights(model_trace: Trace, guide_trace: Trace, particle_dim: int | None, n: int) -> tuple[torch.Tensor, Any]:
    """``(log w, score)``, each ``[n]``: ``log w = log p(x, z) - log q(z)`` of each particle, and
    the score (see :func:`particle_terms`)."""
    log_p, log_q, score = particle_terms(model_trace, guide_trace, particle_dim, n)
    return log_p - log_q, score


def collect_particles(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict,
                      terms: Callable = log_weights) -> tuple[list, list]:
    """``terms(model_trace, guide_trace, particle_dim, n)`` of every particle of ``elbo`` (its
    ``num_particles``, vectorized or not), and the traces."""
    out, traces = [], []
    vectorized = elbo.vectorize_particles and elbo.num_particles > 1
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        pdim = -int(elbo.max_plate_nesting) - 1 if vectorized else None
        out.append(terms(model_trace, guide_trace, pdim, elbo.num_particles if vectorized else 1))
        traces.append((model_trace, guide_trace))
    return out, traces


class _CoupledParticlesELBO(ELBO):
    """An ELBO whose loss couples the particles (Rényi, tail-adaptive): subclasses define
    ``_terms(model, guide, args, kwargs) -> (loss, surrogate, [(model_trace, guide_trace), ...])``;
    the interface (``loss``, ``differentiable_loss``, ``loss_and_grads``) is written once here."""

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any, list]:
        raise NotImplementedError

    def _loss_and_surrogate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """(loss, surrogate) as tensors (the contract of ``ELBO`` and the compiled ELBO)."""
        return self._terms(model, guide, args, kwargs)[:2]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss estimate (a float); no gradients."""
        with torch.no_grad():
            return self._terms(model, guide, args, kwargs)[0].item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A surrogate, a scalar tensor whose value is the loss and whose gradient is the estimator's."""
        return self._terms(model, guide, args, kwargs)[1]

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss (a float), with its gradient backpropagated."""
        loss, surrogate, traces = self._terms(model, guide, args, kwargs)
        value = loss.item()
        if not math.isfinite(value):
            labelled = [(label, tr) for pair in traces for label, tr in zip(("model", "guide"), pair)]
            raise NonFiniteLossError(f"The loss is {value}: {describe_nonfinite(labelled)}. No gradient step was taken.")
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        return value


class RenyiELBO(_CoupledParticlesELBO):
    """The variational Rényi bound of Li and Turner (2016), from ``K = num_particles`` draws:

        L_alpha = 1 / (1 - alpha) * log (1/K sum_k w_k ** (1 - alpha)),  w_k = p(x, z_k) / q(z_k).

    ``alpha = 0`` is the importance-weighted bound (IWAE), ``log mean_k w_k``: it increases with
    ``K`` towards ``log p(x)``. ``alpha -> 1`` gives the ELBO (``mean_k log w_k``; ``alpha=1`` is
    that limit, so it equals ``Trace_ELBO`` in expectation). For ``alpha < 1`` the bound lies
    between the ELBO and ``log p(x)``. The loss is ``-L_alpha`` (not an average of per-particle
    losses). Reparameterized guide sites get pathwise gradients; every other guide site a
    score-function term whose cost is the whole bound (the bound does not split over plates).

    :param alpha: the order, a float ``>= 0`` (Pyro's default 0).
    :param num_particles: ``K`` (default 2); ``vectorize_particles`` draws them in one batch.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: float = math.inf,
                 max_iarange_nesting: float | None = None, vectorize_particles: bool = False,
                 strict_enumeration_warning: bool = True) -> None:
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"RenyiELBO: alpha must be a finite number >= 0 (0: IWAE, 1: the ELBO); got {alpha!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         max_iarange_nesting=max_iarange_nesting, vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning)
        self.alpha = float(alpha)

    def _all_log_weights(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any, list]:
        """``(log w [K], score [K] or None, traces)`` of all particles."""
        parts, traces = collect_particles(self, model, guide, args, kwargs)
        log_w = torch.cat([w for w, _ in parts])
        if all(s is None for _, s in parts):
            return log_w, None, traces
        score = torch.cat([torch.zeros_like(w) if s is None else s.expand(w.shape) for w, s in parts])
        return log_w, score, traces

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        k = log_w.shape[0]
        if self.alpha == 1.0:
            return log_w.mean()
        one_minus = 1.0 - self.alpha
        return (torch.logsumexp(one_minus * log_w, 0) - math.log(k)) / one_minus

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any, list]:
        log_w, score, traces = self._all_log_weights(model, guide, args, kwargs)
        bound = self._bound(log_w)
        loss = -bound
        if score is None:
            return loss, loss, traces
        # score function: d/dphi E[L(z_1..z_K)] = E[L * sum_k d log q(z_k) + dL/dphi]; at alpha = 1 the
        # bound is a mean over particles and each particle's score takes its own cost only
        if self.alpha == 1.0:
            extra = (log_w.detach() * score).mean()
        else:
            extra = bound.detach() * score.sum()
        surrogate = -(bound + extra - extra.detach())
        return loss, surrogate, traces

