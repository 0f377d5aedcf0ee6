"""Distributions that become ordinary ones once given a context (Pyro's
``pyro.distributions.conditional``): ``ConditionalTransformedDistribution(base, transforms)
.condition(context)`` is a ``TransformedDistribution`` whose conditional transforms are
conditioned on ``context``."""

from __future__ import annotations

from typing import Any

import torch

from ember.distributions.torch import TransformedDistribution
from ember.distributions.transforms.torch_transform import ConditionalTransform

__all__ = ["ConditionalDistribution", "ConditionalTransformedDistribution"]


class ConditionalDistribution:
    """Something with ``condition(context) -> Distribution``."""

    def condition(self, context: torch.Tensor) -> Any:
        """The distribution given ``context``, a tensor of shape ``(..., context_dim)`` whose
        leading dims broadcast with the batch dims of the values it will score or draw."""
        raise NotImplementedError(f"{type(self).__name__}.condition(context) is not implemented")


class ConditionalTransformedDistribution(ConditionalDistribution):
    """``base_dist`` (a distribution, or a conditional one) pushed through ``transforms``
    (transforms and/or conditional transforms, applied in order)."""

    def __init__(self, base_dist: Any, transforms: Any) -> None:
        self.base_dist = base_dist
        self.transforms = list(transforms) if isinstance(transforms, (list, tuple)) else [transforms]

    def condition(self, context: torch.Tensor) -> TransformedDistribution:
        """A ``TransformedDistribution``: the base (conditioned on ``context`` if it is
        conditional) pushed through the transforms, each conditional one conditioned on
        ``context`` (shape ``(..., context_dim)``, its leading dims broadcasting with the batch
        dims of the values). The event shape is the base's (for flows over vectors ``(D,)``)."""
        base = self.base_dist.condition(context) if isinstance(self.base_dist, ConditionalDistribution) else self.base_dist
        ts = [t.condition(context) if isinstance(t, ConditionalTransform) else t for t in self.transforms]
        return TransformedDistribution(base, ts)

    def clear_cache(self) -> None:
        """Forget the cached values of the unconditional transforms (the conditioned ones are
        built afresh by each ``condition``), as ``TransformedDistribution.clear_cache`` does."""
        from ember.distributions.transforms.torch_transform import clear_cache

        for t in self.transforms:
            if not isinstance(t, ConditionalTransform):
                clear_cache(t)
