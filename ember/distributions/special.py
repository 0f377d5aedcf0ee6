"""Distributions Ember adds to torch's: Delta and Unit."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import constraints

from ember.distributions.torch_dist import TorchDistribution

__all__ = ["Delta", "Unit"]


class Delta(TorchDistribution):
    """A point mass at ``v`` (whose rightmost ``event_dim`` dims form the event), with
    an optional ``log_density`` added to the log-probability of ``v`` itself.
    Reparameterized: gradients flow from samples back into ``v``."""

    has_rsample = True
    arg_constraints = {"v": constraints.dependent, "log_density": constraints.real}

    def __init__(self, v: Any, log_density: Any = 0.0, event_dim: int = 0, validate_args: bool | None = None) -> None:
        v = torch.as_tensor(v, dtype=torch.get_default_dtype()) if not isinstance(v, torch.Tensor) else v
        if event_dim > v.dim():
            raise ValueError(f"Delta: event_dim {event_dim} exceeds v.dim() = {v.dim()}")
        batch_dim = v.dim() - event_dim
        batch_shape = v.shape[:batch_dim]
        event_shape = v.shape[batch_dim:]
        if isinstance(log_density, (int, float)):
            # a point mass on integers (a discrete site's value) still has a real log-density
            dtype = v.dtype if v.is_floating_point() else torch.get_default_dtype()
            log_density = torch.full(batch_shape, float(log_density), dtype=dtype, device=v.device)
        elif log_density.shape != batch_shape:
            log_density = log_density.expand(batch_shape)
        self.v = v
        self.log_density = log_density
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.real, self.event_dim)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Delta:
        batch_shape = torch.Size(batch_shape)
        return Delta(self.v.expand(batch_shape + self.event_shape), self.log_density.expand(batch_shape), self.event_dim)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if not sample_shape:
            return self.v  # the point itself, so that log_prob can recognise its own sample
        shape = torch.Size(sample_shape) + self.v.shape
        return self.v.expand(shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.rsample(sample_shape).detach()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x is self.v:  # a guide's own draw (autoguides score every site so): no comparison needed
            return self.log_density
        v = self.v.expand(self.shape())
        eq = x == v
        if self.event_dim:
            eq = eq.reshape(eq.shape[: eq.dim() - self.event_dim] + (-1,)).all(-1)
        ld = self.log_density
        lp = torch.where(eq, torch.zeros((), dtype=ld.dtype, device=v.device), torch.full((), float("-inf"), dtype=ld.dtype, device=v.device))
        return lp + self.log_density

    @property
    def mean(self) -> torch.Tensor:
        return self.v

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.v)


class Unit(TorchDistribution):
    """A distribution over the empty value whose log-probability is ``log_factor``:
    what ``ember.factor`` samples from to add an arbitrary term to the log-density.

    ``has_rsample`` (as Pyro's): whether ``log_factor`` arose from reparameterized sampling, which
    a factor in a guide must say; given, it is an instance attribute (kept by ``expand``), and its
    presence there is how the ELBOs tell a guide factor that said so. Without it the class default
    (True) applies."""

    arg_constraints = {"log_factor": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, log_factor: Any, *, has_rsample: bool | None = None, validate_args: bool | None = None) -> None:
        log_factor = torch.as_tensor(log_factor, dtype=torch.get_default_dtype()) if not isinstance(log_factor, torch.Tensor) else log_factor
        self.log_factor = log_factor
        if has_rsample is not None:
            if not isinstance(has_rsample, bool):
                raise TypeError(f"Unit: has_rsample must be True, False or None; got {has_rsample!r}")
            self.has_rsample = has_rsample
        super().__init__(log_factor.shape, torch.Size([0]), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Unit:
        return Unit(self.log_factor.expand(torch.Size(batch_shape)), has_rsample=self.__dict__.get("has_rsample"))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.log_factor.new_empty(torch.Size(sample_shape) + self.batch_shape + (0,))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(self.batch_shape, value.shape[:-1])
        return self.log_factor.expand(shape)
