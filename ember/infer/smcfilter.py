"""``SMCFilter``: a sequential Monte Carlo (particle) filter for state-space models."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import is_guide_term
from ember.infer.renyi_elbo import per_particle
from ember.infer.util import in_plate
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger

__all__ = ["SMCFilter", "SMCFailed"]

_PLATE = "smc_particles"


class SMCFailed(ValueError):
    """Every particle has zero weight (or a weight is NaN): the filter cannot continue."""


class SMCState(dict):
    """The filter's state: a dict ``{name: tensor [N, ...]}`` (one row per particle) that the model's
    and guide's ``init``/``step`` methods read and write, with the particles' log-weights."""

    def __init__(self, num_particles: int) -> None:
        super().__init__()
        self._num_particles = num_particles
        self._log_weights = torch.zeros(num_particles)

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            n = self._num_particles
            if value.dim() == 0 or value.shape[0] != n:
                raise ValueError(
                    f"SMCFilter: state['{key}'] must have the particles as its leading dim (size {n}), got shape "
                    f"{tuple(value.shape)}; with max_plate_nesting = m the particle plate is at dim -m-1, so values of a "
                    f"site with event dims E come out [N, ..., *E] only if the site has exactly m batch dims"
                )
        super().__setitem__(key, value)


class SMCFilter:
    """A particle filter: ``model`` and ``guide`` are objects with methods ``init(state, *args,
    **kwargs)`` and ``step(state, *args, **kwargs)``; the guide's sample sites propose the model's
    latent sites of the same names (Pyro's interface). Each :meth:`init`/:meth:`step` runs the guide
    and then the model on all particles at once (in a plate of ``num_particles`` at dim
    ``-max_plate_nesting - 1``), adds ``log p - log q`` of what was drawn and observed to each
    particle's log-weight, and resamples (systematically) when the effective sample size falls below
    ``ess_threshold * num_particles``.

    :meth:`get_values_and_log_weights` returns the state and the log-weights ``[N]``;
    :meth:`get_empirical` the weighted particles of each state entry as ``Empirical`` distributions;
    ``log_evidence`` the running estimate of ``log p(y_1..t)``.
    """

    def __init__(self, model: Any, guide: Any, num_particles: int, max_plate_nesting: int, *, ess_threshold: float = 0.5) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"SMCFilter: num_particles must be a positive integer; got {num_particles!r}")
        if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int) or max_plate_nesting < 0:
            raise ValueError(f"SMCFilter: max_plate_nesting must be a non-negative integer; got {max_plate_nesting!r}")
        if not 0.0 < float(ess_threshold) <= 1.0:
            raise ValueError(f"SMCFilter: ess_threshold must lie in (0, 1]; got {ess_threshold!r}")
        for who, obj in (("model", model), ("guide", guide)):
            missing = [m for m in ("init", "step") if not callable(getattr(obj, m, None))]
            if missing:
                raise TypeError(f"SMCFilter: the {who} needs methods init(state, ...) and step(state, ...); {type(obj).__name__} lacks {missing}")
        self.model = model
        self.guide = guide
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting
        self.ess_threshold = float(ess_threshold)
        self.state = SMCState(num_particles)
        self.log_evidence = torch.zeros(())

    def init(self, *args: Any, **kwargs: Any) -> None:
        """Start the filter: fresh state and weights, then the model's and guide's ``init``."""
        self.state = SMCState(self.num_particles)
        self.log_evidence = torch.zeros(())
        self._advance(self.model.init, self.guide.init, args, kwargs)

    def step(self, *args: Any, **kwargs: Any) -> None:
        """One step of the model and guide (e.g. with the next observation)."""
        self._advance(self.model.step, self.guide.step, args, kwargs)

    def _advance(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        n, dim = self.num_particles, -self.max_plate_nesting - 1
        with torch.no_grad(), BlockMessenger():
            guide_tm = TraceMessenger(in_plate(guide, _PLATE, n, dim))
            guide_tm(self.state, *args, **kwargs)
            model_tm = TraceMessenger(ReplayMessenger(in_plate(model, _PLATE, n, dim), trace=guide_tm.trace))
            model_tm(self.state, *args, **kwargs)
            model_trace, guide_trace = model_tm.trace, guide_tm.trace
            model_trace.max_plate_nesting = guide_trace.max_plate_nesting = self.max_plate_nesting + 1
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
            log_w: Any = torch.zeros(n)
            for site in model_trace.nodes.values():
                if site.type == "sample" and site.log_prob is not None:
                    log_w = log_w + per_particle(site.log_prob, dim, n)
            for site in guide_trace.nodes.values():
                if is_guide_term(site) and site.log_prob is not None:
                    log_w = log_w - per_particle(site.log_prob, dim, n)
            self._update_weights(log_w)

    def _update_weights(self, log_w: torch.Tensor) -> None:
        old = self.state._log_weights
        new = old + log_w
        if bool(torch.isnan(new).any()) or bool(torch.isneginf(new).all()):
            raise SMCFailed("SMCFilter: every particle has zero weight (or a weight is NaN) after this step: the guide "
                            "proposes where the model has no mass, or an observation is impossible under the model")
        # log p(y_t | y_<t) ~ log sum_k w~_k(old) * w_k(step)
        self.log_evidence = self.log_evidence + torch.logsumexp(new, 0) - torch.logsumexp(old, 0)
        self.state._log_weights = new
        probs = torch.softmax(new, 0)
        ess = 1.0 / (probs * probs).sum()
        if ess < self.ess_threshold * self.num_particles:
            self._resample(probs)

    def _resample(self, probs: torch.Tensor) -> None:
        """Systematic resampling: ancestors at the quantiles ``(u + k) / N`` of the weights."""
        n = self.num_particles
        u = (torch.rand(()) + torch.arange(n, dtype=probs.dtype)) / n
        cdf = probs.cumsum(0)
        cdf[-1] = 1.0
        ancestors = torch.searchsorted(cdf, u).clamp(max=n - 1)
        for key, value in list(self.state.items()):
            if isinstance(value, torch.Tensor):
                dict.__setitem__(self.state, key, value[ancestors])
        self.state._log_weights = torch.full((n,), -math.log(n), dtype=probs.dtype) + torch.logsumexp(self.state._log_weights, 0)

    def get_values_and_log_weights(self) -> tuple[SMCState, torch.Tensor]:
        """``(state, log_weights [N])``."""
        return self.state, self.state._log_weights

    def get_empirical(self) -> dict:
        """``{state entry: Empirical}`` over the weighted particles."""
        from ember.distributions.empirical import Empirical

        return {k: Empirical(v, self.state._log_weights) for k, v in self.state.items() if isinstance(v, torch.Tensor)}
