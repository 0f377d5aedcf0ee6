"""``ReweightedWakeSleep``: reweighted wake-sleep (Bornschein and Bengio 2015; Le et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import ELBO, NonFiniteLossError, describe_nonfinite, is_guide_term
from ember.infer.renyi_elbo import particle_terms
from ember.infer.util import in_plate
from ember.poutine.condition_messenger import UnconditionMessenger
from ember.poutine.messenger import Messenger
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_guide_latent

__all__ = ["ReweightedWakeSleep"]


class _FixedDraws(Messenger):
    """The guide's draws reach the rest of the guide detached: reweighted wake-sleep never
    differentiates a draw, also where a later site's parameters are computed from an earlier draw
    (``q(u) q(z | u)``: the gradient of ``log q(z | u)`` is taken at ``u`` fixed)."""

    def _postprocess_message(self, msg: Message) -> None:
        if msg.type == "sample" and not msg.is_observed and isinstance(msg.value, torch.Tensor):
            msg.value = msg.value.detach()


class ReweightedWakeSleep(ELBO):
    """Reweighted wake-sleep: the model and the guide get separate objectives from ``K`` importance
    samples ``z_k ~ q(z | x)`` with weights ``w_k = p(x, z_k) / q(z_k | x)``.

    * wake-theta (the model's parameters): ``-log (1/K sum_k w_k)``, the IWAE bound, with the
      draws and ``q`` held fixed;
    * wake-phi (the guide's parameters): ``-sum_k w~_k log q(z_k | x)``, ``w~`` the normalised
      weights (held fixed): the guide chases the importance-weighted posterior, an inclusive
      ``KL(p || q)``. The draws are never differentiated, so discrete latents need no score
      function and no baseline;
    * sleep-phi (with ``insomnia < 1``): ``-log q(z | x)`` at ``num_sleep_particles`` draws ``(z, x)``
      of the model run without its observations (the guide runs with the same arguments).

    ``phi_loss = insomnia * wake_phi + (1 - insomnia) * sleep_phi``. :meth:`loss` and
    :meth:`loss_and_grads` return ``(wake_theta_loss, phi_loss)`` as floats (Pyro's convention);
    ``loss_and_grads`` backpropagates both, the first into the model's parameters only (with
    ``model_has_params=False`` it is not computed and returned as 0) and the second into the
    guide's only.

    :param num_particles: ``K`` (default 2).
    :param insomnia: the wake share of the guide's objective, in ``[0, 1]`` (default 1: wake only).
    :param num_sleep_particles: draws for the sleep phase (default ``num_particles``).
    :param vectorize_particles: draw the ``K`` particles in one batch (default True).
    """

    def __init__(self, num_particles: int = 2, insomnia: float = 1.0, model_has_params: bool = True,
                 num_sleep_particles: int | None = None, vectorize_particles: bool = True, max_plate_nesting: float = math.inf,
                 strict_enumeration_warning: bool = True) -> None:
        if not 0.0 <= float(insomnia) <= 1.0:
            raise ValueError(f"ReweightedWakeSleep: insomnia must lie in [0, 1] (1: wake phase only); got {insomnia!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, strict_enumeration_warning=strict_enumeration_warning)
        self.insomnia = float(insomnia)
        self.model_has_params = model_has_params
        self.num_sleep_particles = num_particles if num_sleep_particles is None else int(num_sleep_particles)
        if self.num_sleep_particles < 1:
            raise ValueError(f"ReweightedWakeSleep: num_sleep_particles must be >= 1; got {num_sleep_particles!r}")

    # ---- traces ------------------------------------------------------------------------------------
    def _wake_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, Trace, int | None, int]:
        vectorized = self.vectorize_particles and self.num_particles > 1
        pdim = None
        if vectorized:
            if self.max_plate_nesting == math.inf:
                self.max_plate_nesting = self._guess_max_plate_nesting(model, guide, args, kwargs)
            pdim = -int(self.max_plate_nesting) - 1
            model = in_plate(model, "num_particles_vectorized", self.num_particles, pdim)
            guide = in_plate(guide, "num_particles_vectorized", self.num_particles, pdim)
        guide_tm = TraceMessenger(_FixedDraws(guide))
        guide_tm(*args, **kwargs)
        guide_trace = guide_tm.trace
        for site in guide_trace.nodes.values():
            if is_guide_latent(site) and isinstance(site.value, torch.Tensor):
                site.value = site.value.detach()  # the draws are never differentiated
        model_tm = TraceMessenger(ReplayMessenger(model, trace=guide_trace))
        model_tm(*args, **kwargs)
        model_trace = model_tm.trace
        nesting = -pdim if pdim is not None else self.max_plate_nesting
        model_trace.max_plate_nesting = guide_trace.max_plate_nesting = nesting
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        return model_trace, guide_trace, pdim, (self.num_particles if vectorized else 1)

    def _wake(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """``(log p [K], log q [K], traces)``."""
        log_p, log_q, traces = [], [], []
        runs = 1 if (self.vectorize_particles and self.num_particles > 1) else self.num_particles
        for _ in range(runs):
            mt, gt, pdim, n = self._wake_traces(model, guide, args, kwargs)
            lp, lq, _ = particle_terms(mt, gt, pdim, n)
            log_p.append(lp)
            log_q.append(lq)
            traces.append((mt, gt))
        return torch.cat(log_p), torch.cat(log_q), traces

    def _sleep(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``-mean log q(z | x)`` at draws ``(z, x)`` of the model without its observations."""
        n = self.num_sleep_particles
        nesting = 0 if self.max_plate_nesting == math.inf else int(self.max_plate_nesting)
        if self.max_plate_nesting == math.inf:
            with torch.no_grad():
                nesting = self._guess_max_plate_nesting(model, guide, args, kwargs)
        dim = -nesting - 1
        with torch.no_grad():
            model_tm = TraceMessenger(UnconditionMessenger(in_plate(model, "num_sleep_particles", n, dim)))
            model_tm(*args, **kwargs)
        model_trace = model_tm.trace
        for site in model_trace.nodes.values():
            if site.type == "sample" and isinstance(site.value, torch.Tensor):
                site.value = site.value.detach()
        guide_tm = TraceMessenger(ReplayMessenger(in_plate(guide, "num_sleep_particles", n, dim), trace=model_trace))
        guide_tm(*args, **kwargs)
        guide_trace = guide_tm.trace
        guide_trace.max_plate_nesting = nesting + 1
        guide_trace.compute_log_prob()
        total: Any = 0.0
        for site in guide_trace.nodes.values():
            if is_guide_term(site) and site.log_prob_sum is not None:
                total = total + site.log_prob_sum
        return -total / n

    # ---- losses ------------------------------------------------------------------------------------
    def _losses(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, torch.Tensor, list]:
        log_p, log_q, traces = self._wake(model, guide, args, kwargs)
        k = log_p.shape[0]
        log_w = log_p - log_q
        wake_theta: Any = 0.0
        if self.model_has_params:
            wake_theta = -(torch.logsumexp(log_p - log_q.detach(), 0) - math.log(k))
        weights = torch.softmax(log_w.detach(), 0)
        phi = -(weights * log_q).sum()
        if self.insomnia < 1.0:
            phi = self.insomnia * phi + (1.0 - self.insomnia) * self._sleep(model, guide, args, kwargs)
        self._last_log_w = log_w.detach()
        return wake_theta, phi, traces

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[float, float]:
        """``(wake_theta_loss, phi_loss)`` as floats; no gradients."""
        with torch.no_grad():
            theta, phi, _ = self._losses(model, guide, args, kwargs)
        return float(theta), float(phi)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``wake_theta_loss + phi_loss`` as one scalar tensor whose gradient is each objective's in its own parameters."""
        theta, phi, _ = self._losses(model, guide, args, kwargs)
        return theta + phi

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[float, float]:
        """Backpropagate both objectives; return ``(wake_theta_loss, phi_loss)`` as floats."""
        theta, phi, traces = self._losses(model, guide, args, kwargs)
        values = (float(theta.detach()) if isinstance(theta, torch.Tensor) else float(theta), phi.item())
        if not all(math.isfinite(v) for v in values):
            labelled = [(label, tr) for pair in traces for label, tr in zip(("model", "guide"), pair)]
            raise NonFiniteLossError(f"The losses are {values}: {describe_nonfinite(labelled)}. No gradient step was taken.")
        total = theta + phi
        if isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward(retain_graph=self.retain_graph)
        return values
