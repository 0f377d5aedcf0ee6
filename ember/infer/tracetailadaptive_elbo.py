"""``TraceTailAdaptive_ELBO``: the tail-adaptive f-divergence objective (Wang, Liu and Liu, 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import is_guide_term
from ember.infer.renyi_elbo import _CoupledParticlesELBO, collect_particles, per_particle
from ember.infer.trace_elbo import Trace_ELBO
from ember.infer.util import in_plate
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace, scale_and_mask

__all__ = ["TraceTailAdaptive_ELBO"]


def tail_adaptive_weights(log_w: torch.Tensor, beta: float) -> torch.Tensor:
    """``gamma [K]``: ``gamma_k`` proportional to ``F_k ** beta``, ``F_k`` the fraction of particles
    whose log-weight is at least ``log_w[k]`` (the empirical tail probability), normalised to sum to
    one. With ``beta < 0`` the heaviest weights count most, without the variance of the weights themselves."""
    k = log_w.shape[0]
    tail = (log_w[None, :] >= log_w[:, None]).sum(-1).to(log_w.dtype) / k  # F_k
    g = tail.pow(beta)
    return g / g.sum()


def _direct_log_q(guide: Callable, guide_trace: Trace, args: tuple, kwargs: dict, particle_dim: int, n: int) -> torch.Tensor:
    """``[n]``: each particle's ``log q_phi(z)`` with every draw held fixed, its inputs included (the
    guide replayed at its own detached values): its gradient is the direct part of
    ``d log q / d phi``, the dependence on the guide's parameters alone. In a guide whose later
    sites depend on earlier draws (``q(u) q(z | u)``), the draw ``u`` in ``q(z | u)`` is held fixed
    too, so the path through ``u`` stays in the gradient as it should."""
    fixed = guide_trace.copy().detach_()
    tm = TraceMessenger(ReplayMessenger(in_plate(guide, "num_particles_vectorized", n, particle_dim), trace=fixed))
    tm(*args, **kwargs)
    direct: Any = 0.0
    for name, site in tm.trace.nodes.items():
        if not is_guide_term(site):
            continue
        if not site.fn.has_rsample:
            raise ValueError(
                f"TraceTailAdaptive_ELBO: guide site '{name}' ({type(site.fn).__name__}) is not reparameterizable; "
                f"this objective needs every guide site to have rsample (use RenyiELBO or Trace_ELBO instead)"
            )
        lq = scale_and_mask(site.fn.log_prob(site.value), site.scale, site.mask)
        direct = direct + per_particle(lq, particle_dim, n)
    if not isinstance(direct, torch.Tensor):
        return torch.zeros(n)
    return direct


class TraceTailAdaptive_ELBO(_CoupledParticlesELBO, Trace_ELBO):
    """Variational inference with the tail-adaptive f-divergence: the guide's gradient is
    ``-sum_k gamma_k d/dphi log w_k`` over ``K = num_particles`` reparameterized draws, with the rank
    weights ``gamma`` of :func:`tail_adaptive_weights` (``tail_adaptive_beta``, default -1), which
    give mass-covering fits like alpha-divergences while staying stable for heavy-tailed weights.

    In ``log w_k`` only the path through the draws ``z_k = T_phi(eps_k)`` carries gradient (``log q``
    is differentiated with the guide's parameters held fixed, as in the "sticking the landing"
    estimator): the direct term ``-d/dphi log q_phi(z)``, weighted by ranks, does not average out and
    keeps the update from settling (on a Student-t target a Normal guide's location drifts away).

    It needs ``vectorize_particles=True``, ``num_particles > 1`` and a fully reparameterized guide.
    Its ``loss`` is the usual ELBO estimate ``-mean_k log w_k`` (the objective itself has no closed
    value); ``loss_and_grads`` returns that and leaves the tail-adaptive gradient.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: float = math.inf, max_iarange_nesting: float | None = None,
                 vectorize_particles: bool = True, strict_enumeration_warning: bool = True, tail_adaptive_beta: float = -1.0,
                 **kwargs: Any) -> None:
        if not vectorize_particles or num_particles < 2:
            raise ValueError(
                f"TraceTailAdaptive_ELBO needs vectorize_particles=True and num_particles > 1 (it ranks particles against "
                f"each other); got vectorize_particles={vectorize_particles}, num_particles={num_particles}"
            )
        if not isinstance(tail_adaptive_beta, (int, float)) or tail_adaptive_beta >= 0:
            raise ValueError(f"TraceTailAdaptive_ELBO: tail_adaptive_beta must be negative (Wang et al. use -1); got {tail_adaptive_beta!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, max_iarange_nesting=max_iarange_nesting,
                         vectorize_particles=vectorize_particles, strict_enumeration_warning=strict_enumeration_warning, **kwargs)
        self.tail_adaptive_beta = float(tail_adaptive_beta)

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, list]:
        parts, traces = collect_particles(self, model, guide, args, kwargs)
        log_w = torch.cat([w for w, _ in parts])
        n = self.num_particles
        direct = _direct_log_q(guide, traces[0][1], args, kwargs, -int(self.max_plate_nesting) - 1, n)
        # in log w only the path through the draws carries gradient: + direct - direct.detach()
        # cancels the gradient of log q's direct dependence on the guide's parameters
        path_log_w = log_w + direct - direct.detach()
        loss = -log_w.mean()
        gamma = tail_adaptive_weights(log_w.detach(), self.tail_adaptive_beta)
        surrogate = -(gamma * path_log_w).sum()
        return loss, surrogate - surrogate.detach() + loss.detach(), traces
