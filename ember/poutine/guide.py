"""Effect-based guides (Pyro's ``pyro.poutine.guide``): a guide that runs the model itself.

A :class:`GuideMessenger` is a handler around the model. Each latent site's distribution is
replaced, as the model reaches it, by the posterior that :meth:`GuideMessenger.get_posterior`
returns for it (given the prior, itself conditioned on the values drawn upstream), so one run
of the model yields both traces: the guide's (latent sites under their posteriors) and the
model's (the same values, scored under their priors, and the observations). The ELBOs call
such a guide once per particle instead of tracing the guide and replaying the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ember.distributions import Delta
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_auxiliary, is_subsample

__all__ = ["GuideMessenger"]

# the fields a copied site must not inherit: its log-densities are its own trace's to compute
_SCORES = ("log_prob", "unscaled_log_prob", "log_prob_sum", "score_parts")


def _fresh_copy(site: Message) -> Message:
    new = site.copy()
    for k in _SCORES:
        setattr(new, k, None)
    return new


class GuideMessenger(TraceMessenger, ABC):
    """The base of effect-based guides: subclasses define :meth:`get_posterior`.

    ``guide(*args, **kwargs)`` runs ``model(*args, **kwargs)`` under the guide, each latent site
    drawn from its posterior, and returns ``{name: value}`` of every sample site (latent,
    observed and deterministic). Afterwards :meth:`get_traces` gives ``(model_trace,
    guide_trace)`` of that run. Observed and deterministic sites are the model's: the guide
    leaves them alone, and handlers outside the guide see them as they see the latents.
    Sample sites that :meth:`get_posterior` draws itself should be marked
    ``infer={"is_auxiliary": True}``: they belong to the guide's trace only.
    """

    def __init__(self, model: Callable) -> None:
        super().__init__()
        self._model = (model,)  # a tuple: a PyroModule subclass must not adopt the model as a submodule

    @property
    def model(self) -> Callable:
        """The model the guide runs."""
        return self._model[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("trace", None)  # the last run's trace is not part of the guide
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.trace = Trace()

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Run the model under the guide; ``{name: value}`` of every sample site of the run, each value
        of the site's shape in the model."""
        self.args_kwargs = args, kwargs
        try:
            with self:
                self.model(*args, **kwargs)
        finally:
            del self.args_kwargs
        return {name: site.value for name, site in self.trace.nodes.items()
                if site.type == "sample" and not is_auxiliary(site)}

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed or msg.infer.get("is_auxiliary"):
            return  # the model's observations and deterministic values; the guide's own auxiliaries
        prior = msg.fn
        msg.infer = {**msg.infer, "prior": prior}  # (a copy: the user's infer dict stays as it was)
        posterior = self.get_posterior(msg.name, prior)
        if isinstance(posterior, torch.Tensor):
            posterior = Delta(posterior, event_dim=len(prior.event_shape))
        if posterior.batch_shape != prior.batch_shape:
            posterior = posterior.expand(prior.batch_shape)
        msg.fn = posterior

    def _pyro_post_sample(self, msg: Message) -> None:
        # plates outside the guide (vectorized particles) broadcast the posterior after the
        # prior was kept: broadcast the prior alike
        prior = msg.infer.get("prior")
        if prior is not None and prior.batch_shape != msg.fn.batch_shape:
            msg.infer["prior"] = prior.expand(msg.fn.batch_shape)
        super()._pyro_post_sample(msg)

    @abstractmethod
    def get_posterior(self, name: str, prior: Any) -> Any:
        """The posterior of site ``name``: a distribution, or a value (a point mass).

        ``prior`` is the model's distribution at the site, conditioned on the values drawn
        upstream. ``param`` and (auxiliary) ``sample`` statements may be used here; so may
        :meth:`upstream_value`, ``self.trace`` (the sites so far) and ``self.args_kwargs`` (the
        model's inputs)."""
        raise NotImplementedError

    def upstream_value(self, name: str) -> torch.Tensor:
        """The value of a sample or deterministic site drawn earlier in this run, of that site's shape
        (``fn.batch_shape + fn.event_shape``)."""
        site = self.trace.nodes.get(name)
        if site is None:
            raise KeyError(f"{type(self).__name__}.upstream_value('{name}'): no site '{name}' has run yet; the sites so "
                           f"far are {list(self.trace.nodes)}")
        return site.value

    def get_traces(self) -> tuple[Trace, Trace]:
        """``(model_trace, guide_trace)`` of the last run (call the guide first).

        The guide's trace holds its latent (and auxiliary) sites under their posteriors; the
        model's holds every site of the run (params, observations, deterministic sites) with
        each latent scored under its prior, kept in ``infer["prior"]``. Both are copies: the last
        run's own trace is left as it was."""
        graph_type = self.trace.graph_type
        model_trace, guide_trace = Trace(graph_type), Trace(graph_type)
        model_nodes: OrderedDict = model_trace.nodes
        guide_nodes: OrderedDict = guide_trace.nodes
        for name, site in self.trace.nodes.items():
            if is_subsample(site):
                continue
            if site.type == "sample" and not site.is_observed:
                guide_nodes[name] = _fresh_copy(site)
                prior = site.infer.get("prior")
                if prior is None:
                    continue  # an auxiliary site of the guide: not the model's
                site = _fresh_copy(site)
                site.fn = prior
                model_nodes[name] = site
            else:
                model_nodes[name] = _fresh_copy(site)
        return model_trace, guide_trace
