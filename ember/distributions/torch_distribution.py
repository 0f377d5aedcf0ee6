"""Pyro's ``pyro.distributions.torch_distribution`` path: the mixin, base class and
masked wrapper (defined in :mod:`ember.distributions.torch_dist`)."""

from ember.distributions.torch_dist import ExpandedDistribution, MaskedDistribution, TorchDistribution, TorchDistributionMixin

__all__ = ["ExpandedDistribution", "MaskedDistribution", "TorchDistribution", "TorchDistributionMixin"]
