"""EnergyDistance: a likelihood-free loss (posterior-predictive energy score, optionally plus a prior term).

The model is run with its observations unconditioned, so each particle draws a posterior-predictive
replicate ``X_i`` of all observed data at once (latents replayed from the guide). With ``x`` the data,
the loss is the unbiased energy score of the joint observation vector::

    mean_i ||X_i - x||^beta  -  1/2 mean_{i<j} ||X_i - X_j||^beta  -  prior_scale * sum log p(Z)

where ``||.||`` is the Euclidean norm over every observed site and element (plate scales weight the
squared terms, masks drop them). Only sampling of the likelihood is needed, never its density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import check_model_guide_match
from ember.infer.util import guess_max_plate_nesting, in_plate
from ember.poutine.condition_messenger import UnconditionMessenger
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_deterministic, is_validation_enabled, scale_and_mask

__all__ = ["EnergyDistance"]


def _is_replicate(site: Message) -> bool:
    """An observation the model drew afresh under ``uncondition`` (not a deterministic record)."""
    return site.type == "sample" and bool(site.infer.get("was_observed", False)) and not is_deterministic(site)


class EnergyDistance:
    r"""Posterior-predictive energy distance with optional prior regularization (Pyro's
    ``EnergyDistance``), a likelihood-free SVI loss for models whose observations can be sampled but
    not scored.

    With ``Z, Z' ~ q`` and replicates ``X ~ p(x|Z)``, ``X' ~ p(x|Z')`` of the data ``x``::

        loss = E ||X - x||^beta - 1/2 E ||X - X'||^beta - prior_scale * E log p(Z)

    estimated with ``num_particles`` vectorized particles (the second term over the distinct pairs, so
    the estimate is unbiased). The norm runs over all observed sites together, each flattened to
    ``[num_particles, batch, event]``; a plate's subsample scale weights its squared terms and a mask
    drops them. As in Pyro, the log-prior term is summed over the particles (not averaged) and is only
    computed when ``prior_scale > 0`` (model parameters are trained only then).

    :param beta: the exponent, in the open interval (0, 2); the score is strictly proper for
        distributions with a finite ``beta``-th absolute moment (``beta < 1`` for Cauchy tails).
    :param prior_scale: weight ``>= 0`` of the log-prior term.
    :param num_particles: particles per step, at least 2.
    :param max_plate_nesting: as in Pyro, the particles run in a plate at ``dim=-max_plate_nesting``,
        so it counts the particle dim too (model plates + 1); guessed by a trial run when infinite.

    Requires a fully reparameterized guide and reparameterized likelihoods (checked when validation
    is on; the error names the site). ``factor`` sites in the model are refused (they can not be
    sampled); ``deterministic`` sites are not observations and are skipped.
    Calling the object (or :meth:`differentiable_loss`) gives a scalar tensor (shape ``()``) for SVI;
    :meth:`loss` gives its value as a float.
    """

    def __init__(self, beta: float = 1.0, prior_scale: float = 0.0, num_particles: int = 2, max_plate_nesting: float = math.inf) -> None:
        if not (isinstance(beta, (float, int)) and 0 < beta < 2):
            raise ValueError(f"EnergyDistance: expected beta in the open interval (0, 2); got {beta!r}")
        if not (isinstance(prior_scale, (float, int)) and prior_scale >= 0):
            raise ValueError(f"EnergyDistance: expected prior_scale >= 0; got {prior_scale!r}")
        if not (isinstance(num_particles, int) and num_particles >= 2):
            raise ValueError(f"EnergyDistance: expected num_particles >= 2 (the spread term needs pairs); got {num_particles!r}")
        self.beta = beta
        self.prior_scale = prior_scale
        self.num_particles = num_particles
        self.vectorize_particles = True
        self.max_plate_nesting = max_plate_nesting

    def _pow(self, squared: torch.Tensor) -> torch.Tensor:
        return squared.sqrt() if self.beta == 1 else squared.pow(self.beta / 2)

    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        # without log-densities: the likelihood may have none
        with torch.no_grad():
            guide_tm = TraceMessenger(guide)
            guide_tm(*args, **kwargs)
            model_tm = TraceMessenger(ReplayMessenger(model, trace=guide_tm.trace))
            model_tm(*args, **kwargs)
        self.max_plate_nesting = guess_max_plate_nesting(model_tm.trace, guide_tm.trace) + 1

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        if self.max_plate_nesting == math.inf:
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        dim = -int(self.max_plate_nesting)
        if dim >= 0:
            raise ValueError(f"EnergyDistance: max_plate_nesting must be >= 1 (it counts the particle plate); got {self.max_plate_nesting}")
        name, num = "num_particles_vectorized", self.num_particles
        guide_tm = TraceMessenger(in_plate(guide, name, num, dim))
        guide_tm(*args, **kwargs)
        guide_trace = guide_tm.trace
        model_tm = TraceMessenger(UnconditionMessenger(ReplayMessenger(in_plate(model, name, num, dim), trace=guide_trace)))
        model_tm(*args, **kwargs)
        model_trace = model_tm.trace
        for site in model_trace.nodes.values():
            if site.type == "sample" and site.infer.get("was_observed", False):
                site.is_observed = True
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace)
            self._check_reparameterized(model_trace, guide_trace)
        if self.prior_scale > 0:
            model_trace.max_plate_nesting = self.max_plate_nesting
            model_trace.compute_log_prob(site_filter=lambda n, s: not s.is_observed)
        return guide_trace, model_trace

    @staticmethod
    def _check_reparameterized(model_trace: Trace, guide_trace: Trace) -> None:
        for name, site in guide_trace.nodes.items():
            if site.type == "sample" and not site.is_observed and not getattr(site.fn, "has_rsample", False):
                raise ValueError(
                    f"EnergyDistance requires a fully reparameterized guide: guide site '{name}' ({type(site.fn).__name__}) "
                    f"has no rsample, so no gradient reaches the guide through it"
                )
        for name, site in model_trace.nodes.items():
            if _is_replicate(site) and not getattr(site.fn, "has_rsample", False):
                raise ValueError(
                    f"EnergyDistance requires reparameterized likelihoods: observed site '{name}' ({type(site.fn).__name__}) "
                    f"has no rsample, so its replicates carry no gradient"
                )

    def _observations(self, model_trace: Trace) -> list[tuple[str, Message]]:
        obs = []
        for name, site in model_trace.nodes.items():
            if site.type != "sample" or not site.infer.get("was_observed", False):
                continue
            if hasattr(site.fn, "log_factor"):
                raise ValueError(f"EnergyDistance can not use the model's factor site '{name}': a factor can be scored but not sampled")
            if _is_replicate(site):
                obs.append((name, site))
        if not obs:
            raise ValueError("EnergyDistance: found no observations in the model (it needs observed sample sites to replicate)")
        return obs

    def _squared_errors(self, name: str, site: Message, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[P]`` squared distances of each replicate to the data, ``[num_pairs]`` between replicates)."""
        obs = torch.as_tensor(site.infer["obs"])
        sample = site.value
        n = self.num_particles
        event_dim = len(getattr(site.fn, "event_shape", ()))
        batch_shape = obs.shape[: obs.dim() - event_dim]
        b, e = batch_shape.numel(), obs.shape[obs.dim() - event_dim :].numel()
        if sample.numel() != n * b * e:
            raise ValueError(
                f"EnergyDistance: at observed site '{name}' the replicates have shape {tuple(sample.shape)}, which is not "
                f"{n} particles of the data's shape {tuple(obs.shape)}; check the site's plates and max_plate_nesting"
            )
        sample = sample.reshape(n, b, e)
        obs = obs.reshape(b, e)
        scale, mask = site.scale, site.mask
        if isinstance(scale, torch.Tensor) and scale.dim():
            scale = scale.expand(batch_shape).reshape(-1)
        if isinstance(mask, torch.Tensor) and mask.dim():
            mask = mask.expand(batch_shape).reshape(-1)

        def weighted(diff: torch.Tensor) -> torch.Tensor:  # [K, b, e] -> [K]
            return scale_and_mask(diff.pow(2).sum(-1), scale, mask).sum(-1)

        return weighted(sample - obs), weighted(sample[pairs[:, 0]] - sample[pairs[:, 1]])

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The loss as a differentiable scalar tensor (shape ``()``)."""
        guide_trace, model_trace = self._get_traces(model, guide, args, kwargs)
        observations = self._observations(model_trace)
        pairs = torch.ones(self.num_particles, self.num_particles).tril(-1).nonzero()
        to_data: Any = 0.0
        spread: Any = 0.0
        for name, site in observations:
            d, s = self._squared_errors(name, site, pairs.to(site.value.device))
            to_data, spread = to_data + d, spread + s
        loss = self._pow(to_data).mean() - 0.5 * self._pow(spread).mean()
        if self.prior_scale > 0:
            for site in model_trace.nodes.values():
                if site.type == "sample" and not site.is_observed:
                    loss = loss - self.prior_scale * site.log_prob_sum
        return loss

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``ed(model, guide, *args)`` is :meth:`differentiable_loss`: a scalar tensor (shape ``()``),
        the loss to pass to ``SVI(model, guide, optim, loss=ed)``."""
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """An estimate of the loss as a float, without gradients (Pyro's raises NotImplementedError)."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()
