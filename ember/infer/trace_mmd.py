"""Trace_MMD: the MMD-VAE (InfoVAE) objective, with a Maximum Mean Discrepancy between the guide's and
the prior's samples of each latent in place of the ELBO's KL term.

Each step runs the guide and replays the model against it (as the ELBO does) for the likelihood
terms, and runs the model once more on its own (latents from the prior) for the MMD's prior
samples. The particles are the only batch dim of the MMD: every other dim of a latent (plates and
event) is flattened into the kernel's feature vector, so ``num_particles`` should be large.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import ELBO, NonFiniteLossError
from ember.infer.util import in_plate
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace

__all__ = ["Trace_MMD"]


def _compute_mmd(X: torch.Tensor, Z: torch.Tensor, kernel: Callable) -> torch.Tensor:
    """The (biased, V-statistic) squared MMD of samples ``X [N, D]`` and ``Z [M, D]``:
    ``mean k(X, X) + mean k(Z, Z) - 2 mean k(X, Z)``; shape ``()``."""
    return kernel(X, X).mean() + kernel(Z, Z).mean() - 2 * kernel(X, Z).mean()


def _freeze(kernel: Any) -> Any:
    # Pyro fixes a kernel's parameters (requires_grad_(False)); any other callable is used as it is
    if isinstance(kernel, torch.nn.Module):
        kernel.requires_grad_(False)
    elif not callable(kernel):
        raise TypeError(f"Trace_MMD: a kernel must be callable as kernel(X [N, D], Z [M, D]) -> [N, M]; got {kernel!r}")
    return kernel


class Trace_MMD(ELBO):
    """Pyro's ``Trace_MMD``: ``-E_q[log p(x | z)] + mmd_scale * MMD(q(z), p(z))`` (the MMD-VAE loss).

    For each latent ``z`` of the guide the guide's particles ``[num_particles, D]`` are compared
    with as many draws from the model's prior (a second, independent run of the model) through a
    kernel: ``MMD = mean k(Xp, Xp) + mean k(Xq, Xq) - 2 mean k(Xp, Xq)``. The other sample sites of
    the model (observations, latents the guide does not have, factors) enter as the replayed model's
    log-density, averaged over the particles. Latents in both model and guide must be
    reparameterized (the error names the site).

    :param kernel: a callable ``kernel(X [N, D], Z [M, D]) -> [N, M]`` (a ``pyro.contrib.gp``
        kernel object qualifies; a ``torch.nn.Module`` kernel has its parameters frozen, as in
        Pyro), or a dict ``{latent name: kernel}``.
    :param mmd_scale: the MMD's weight, a float or a dict ``{latent name: float}``.
    :param num_particles: particles per step (default 10); the MMD's only batch dim.
    :param vectorize_particles: run the particles in one plate (default True, as Pyro recommends).
    The remaining arguments are the ELBO's.
    """

    def __init__(
        self,
        kernel: Any,
        mmd_scale: Any = 1,
        num_particles: int = 10,
        max_plate_nesting: float = math.inf,
        max_iarange_nesting: float | None = None,
        vectorize_particles: bool = True,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        retain_graph: bool | None = None,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            max_iarange_nesting=max_iarange_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            retain_graph=retain_graph,
        )
        self.kernel = kernel
        self.mmd_scale = mmd_scale

    @property
    def kernel(self) -> Any:
        """The kernel per latent (a dict, or one kernel for all)."""
        return self._kernel

    @kernel.setter
    def kernel(self, kernel: Any) -> None:
        self._kernel = {k: _freeze(v) for k, v in kernel.items()} if isinstance(kernel, dict) else _freeze(kernel)

    @property
    def mmd_scale(self) -> Any:
        """The MMD weight per latent (a dict, or one float for all)."""
        return self._mmd_scale

    @mmd_scale.setter
    def mmd_scale(self, mmd_scale: Any) -> None:
        if isinstance(mmd_scale, dict):
            self._mmd_scale = dict(mmd_scale)
        elif isinstance(mmd_scale, (int, float)) and not isinstance(mmd_scale, bool):
            self._mmd_scale = float(mmd_scale)
        else:
            raise TypeError(f"Trace_MMD: mmd_scale must be a float or a dict {{latent name: float}}; got {mmd_scale!r}")

    def _for_site(self, what: Any, name: str, label: str) -> Any:
        if not isinstance(what, dict):
            return what
        if name not in what:
            raise ValueError(f"Trace_MMD: no {label} for latent site '{name}' (the dict has {sorted(what)})")
        return what[name]

    def _vectorized(self) -> bool:
        return self.vectorize_particles and self.num_particles > 1

    def _prior_trace(self, model: Callable, args: tuple, kwargs: dict) -> Trace:
        """A run of the model on its own: its latents drawn from the prior (in the particle plate)."""
        if self._vectorized():
            model = in_plate(model, "num_particles_vectorized", self.num_particles, -int(self.max_plate_nesting) - 1)
        tm = TraceMessenger(model)
        tm(*args, **kwargs)
        return tm.trace

    def _flatten(self, value: torch.Tensor, event_dim: int) -> torch.Tensor:
        """``[num_particles, D]`` (vectorized: the particle dim moved to the front) or ``[1, D]``."""
        if not self._vectorized():
            return value.reshape(1, -1)
        particle_dim = -int(self.max_plate_nesting) - 1 - event_dim
        return value.movedim(particle_dim, 0).reshape(self.num_particles, -1)

    def _differentiable_loss_parts(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """(the replayed model's log-density averaged over the particles, the weighted MMD sum)."""
        self._check_guide(guide)
        prior_samples: dict = {}
        guide_samples: dict = {}
        loglik: Any = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            prior_trace = self._prior_trace(model, args, kwargs)
            for name, site in model_trace.nodes.items():
                if site.type != "sample":
                    continue
                if site.is_observed or name not in guide_trace.nodes:
                    loglik = loglik + site.log_prob_sum / self.num_particles
                    continue
                prior_site, guide_site = prior_trace.nodes[name], guide_trace.nodes[name]
                for who, s in (("Model", prior_site), ("Guide", guide_site)):
                    if not getattr(s.fn, "has_rsample", False):
                        raise ValueError(f"Trace_MMD: {who.lower()} site '{name}' ({type(s.fn).__name__}) is not reparameterizable")
                event_dim = len(getattr(prior_site.fn, "event_shape", ()))
                prior_samples.setdefault(name, []).append(self._flatten(prior_site.value, event_dim))
                guide_samples.setdefault(name, []).append(self._flatten(guide_site.value, event_dim))
        penalty: Any = 0.0
        for name in prior_samples:
            mmd = _compute_mmd(torch.cat(prior_samples[name]), torch.cat(guide_samples[name]), self._for_site(self._kernel, name, "kernel"))
            penalty = penalty + self._for_site(self._mmd_scale, name, "mmd_scale") * mmd
        return loglik, penalty

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``-E_q[log p(x | z)] + sum over latents of mmd_scale * MMD``: a scalar tensor (shape ``()``)."""
        loglik, penalty = self._differentiable_loss_parts(model, guide, args, kwargs)
        return torch.as_tensor(penalty - loglik)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, its gradient backpropagated."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"Trace_MMD: the loss is {value}. No gradient step was taken; the parameters are unchanged.")
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return value
