"""``CSIS``: compiled sequential importance sampling (Le, Baydin and Wood, 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import check_model_guide_match, is_guide_term
from ember.infer.importance import Importance
from ember.infer.util import trace_params
from ember.poutine.condition_messenger import UnconditionMessenger
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import is_validation_enabled

__all__ = ["CSIS"]


class CSIS(Importance):
    """Compiled sequential importance sampling: train an amortized guide (the "inference
    compilation") on draws ``(z, x)`` of the model itself, then use it as the proposal of
    importance sampling for the real data.

    The model and the guide take the observations as the keyword argument ``observations`` (a dict
    ``{site: value}``; Pyro's convention). :meth:`step` draws ``training_batch_size`` joint samples
    from the model with its observations unconditioned, runs the guide with
    ``observations=`` those draws, replaying the model's latent values, and takes one optimizer
    step on ``-mean log q(z | x)`` (the guide's parameters only). :meth:`run`
    (``Importance.run``) then samples with the trained guide; pass the real data as
    ``observations=``.

    :param model, guide: as above.
    :param optim: an ``ember.optim`` optimizer.
    :param num_inference_samples: importance samples of :meth:`run` (default 10).
    :param training_batch_size: joint samples per :meth:`step` (default 10).
    :param validation_batch_size: joint samples of :meth:`validation_loss` (default 20).
    """

    def __init__(self, model: Callable, guide: Callable, optim: Any, num_inference_samples: int = 10,
                 training_batch_size: int = 10, validation_batch_size: int = 20) -> None:
        super().__init__(model, guide, num_samples=num_inference_samples)
        for name, v in (("training_batch_size", training_batch_size), ("validation_batch_size", validation_batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CSIS: {name} must be a positive integer; got {v!r}")
        if not callable(optim):
            raise TypeError(f"CSIS: optim must be an ember.optim optimizer; got {type(optim).__name__}")
        self.optim = optim
        self.training_batch_size = training_batch_size
        self.validation_batch_size = validation_batch_size
        self.validation_batch: list[Trace] | None = None

    # ---- joint samples and the guide's loss ------------------------------------------------------------
    def _sample_from_joint(self, *args: Any, **kwargs: Any) -> Trace:
        """One trace of the model with its observed sites drawn afresh."""
        with torch.no_grad():
            tm = TraceMessenger(UnconditionMessenger(self.model))
            tm(*args, **kwargs)
        for site in tm.trace.nodes.values():
            if site.type == "sample" and site.infer.get("was_observed"):
                site.is_observed = True  # drawn, but data to the guide (not a latent it must sample)
        return tm.trace

    def _matched_guide_trace(self, model_trace: Trace, args: tuple, kwargs: dict) -> Trace:
        observations = {name: site.value for name, site in model_trace.nodes.items()
                        if site.type == "sample" and site.infer.get("was_observed")}
        if not observations:
            raise ValueError("CSIS: the model observes no site; the guide is trained on the model's draws of its observed "
                             "sites, passed to it as observations=")
        kwargs = {**kwargs, "observations": observations}
        tm = TraceMessenger(ReplayMessenger(self.guide, trace=model_trace))
        tm(*args, **kwargs)
        guide_trace = tm.trace
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace)
        guide_trace.compute_log_prob()
        return guide_trace

    def _batch_loss(self, batch: list, args: tuple, kwargs: dict) -> torch.Tensor:
        total: Any = 0.0
        for model_trace in batch:
            guide_trace = self._matched_guide_trace(model_trace, args, kwargs)
            for site in guide_trace.nodes.values():
                if is_guide_term(site) and site.log_prob_sum is not None:
                    total = total - site.log_prob_sum
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(float(total))
        return total / len(batch)

    def loss_and_grads(self, grads: bool, batch: list | None, *args: Any, **kwargs: Any) -> float:
        """``-mean log q(z | x)`` over ``batch`` (default: ``training_batch_size`` new joint
        samples), backpropagated into the guide's parameters when ``grads``."""
        if batch is None:
            batch = [self._sample_from_joint(*args, **kwargs) for _ in range(self.training_batch_size)]
        loss = self._batch_loss(batch, args, kwargs)
        if grads and loss.requires_grad:
            loss.backward()
        return loss.item()

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One optimizer step on the guide's parameters; returns the loss before it."""
        with TraceMessenger(param_only=True) as capture:
            loss = self.loss_and_grads(True, None, *args, **kwargs)
        params = list(trace_params(capture.trace).values())
        try:
            self.optim(params)
        finally:
            for p in params:
                p.grad = None
        return loss

    def set_validation_batch(self, *args: Any, **kwargs: Any) -> None:
        """Draw (once) the ``validation_batch_size`` joint samples :meth:`validation_loss` uses."""
        self.validation_batch = [self._sample_from_joint(*args, **kwargs) for _ in range(self.validation_batch_size)]

    def validation_loss(self, *args: Any, **kwargs: Any) -> float:
        """The guide's loss on the fixed validation batch (drawn on first use)."""
        if self.validation_batch is None:
            self.set_validation_batch(*args, **kwargs)
        with torch.no_grad():
            return self.loss_and_grads(False, self.validation_batch, *args, **kwargs)
