"""Pyro's ``pyro.distributions.torch_distribution`` path: the mixin, base class and
masked wrapper (defined in :mod:`ember.distributions.torch_dist`)."""

from ember.distributions.torch_dist import MaskedDistribution, TorchDistribution, TorchDistributionMixin

__all__ = ["MaskedDistribution", "TorchDistribution", "TorchDistributionMixin"]
