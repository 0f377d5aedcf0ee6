"""``Empirical``: the weighted empirical distribution of a set of samples (Pyro's
``pyro.distributions.Empirical``). It lives with the distributions so that this layer
imports nothing above it; ``ember.infer`` re-exports it beside ``EmpiricalMarginal``."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints

from ember.distributions.torch_dist import TorchDistribution

__all__ = ["Empirical"]


class Empirical(TorchDistribution):
    """The weighted empirical distribution of ``samples`` (``[N, *event_shape]``) with
    unnormalized ``log_weights`` (``[N]``). Its batch shape is ``()``, its event shape
    ``samples.shape[1:]``; ``sample()`` picks one of the samples with probability
    proportional to its weight; ``mean`` and ``variance`` are the weighted moments
    (the variance divides by the total weight, as Pyro's does)."""

    arg_constraints: dict = {}
    support = constraints.real
    has_enumerate_support = True

    def __init__(self, samples: torch.Tensor, log_weights: torch.Tensor, validate_args: bool | None = None) -> None:
        samples = torch.as_tensor(samples)
        log_weights = torch.as_tensor(log_weights)
        if samples.dim() < 1 or log_weights.dim() != 1 or log_weights.shape[0] != samples.shape[0]:
            raise ValueError(
                f"Empirical: samples ([N, *event_shape]) and log_weights ([N]) must agree on N; got shapes "
                f"{tuple(samples.shape)} and {tuple(log_weights.shape)}"
            )
        if samples.shape[0] == 0:
            raise ValueError("Empirical: no samples")
        wdtype = samples.dtype if samples.dtype.is_floating_point else torch.get_default_dtype()
        self._samples = samples
        self._log_weights = log_weights.to(dtype=wdtype, device=samples.device)
        self._categorical = torch.distributions.Categorical(logits=self._log_weights)
        super().__init__(torch.Size(), samples.shape[1:], validate_args=validate_args)

    @property
    def sample_size(self) -> int:
        return self._samples.shape[0]

    @property
    def log_weights(self) -> torch.Tensor:
        return self._log_weights

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self._log_weights, 0).to(like.dtype)
        return w.reshape((-1,) + (1,) * (like.dim() - 1))

    def _float_samples(self) -> torch.Tensor:
        s = self._samples
        return s if s.dtype.is_floating_point else s.to(torch.get_default_dtype())

    @property
    def mean(self) -> torch.Tensor:
        s = self._float_samples()
        return (self._weights(s) * s).sum(0)

    @property
    def variance(self) -> torch.Tensor:
        s = self._float_samples()
        w = self._weights(s)
        mean = (w * s).sum(0)
        return (w * (s - mean) ** 2).sum(0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        idx = self._categorical.sample(torch.Size(sample_shape))
        return self._samples[idx]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log of the total normalized weight of the samples equal to ``value``
        (``-inf`` where none is): shape ``value.shape[:-event_dim]``."""
        value = torch.as_tensor(value, dtype=self._samples.dtype, device=self._samples.device)
        ed = len(self.event_shape)
        if value.shape[value.dim() - ed :] != self.event_shape:
            raise ValueError(f"Empirical.log_prob: value of shape {tuple(value.shape)} does not end in the event shape {tuple(self.event_shape)}")
        batch = value.shape[: value.dim() - ed]
        flat = value.reshape((-1, 1) + tuple(self.event_shape))
        eq = flat == self._samples.unsqueeze(0)
        if ed:
            eq = eq.reshape(eq.shape[:2] + (-1,)).all(-1)
        log_w_norm = self._log_weights - torch.logsumexp(self._log_weights, 0)
        lp = torch.where(eq, log_w_norm, log_w_norm.new_full((), -math.inf))
        return torch.logsumexp(lp, -1).reshape(batch)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self._samples
