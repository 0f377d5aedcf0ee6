"""Learnable transforms: a ``torch.distributions.Transform`` that is also an
``nn.Module`` (Pyro's ``TransformModule``), and conditional ones that build a transform
from a context tensor (``ConditionalTransformModule.condition(context)``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions.transforms import ComposeTransform, Transform

__all__ = ["clear_cache", "ComposeTransformModule", "ConditionalTransform", "ConditionalTransformModule", "TransformModule"]


class TransformModule(Transform, torch.nn.Module):
    """A transform with learnable parameters: register it with ``ember.module`` (or put
    it inside an ``nn.Module``) so that SVI/optimizers see its parameters.

    Shapes, as for every ``torch.distributions`` transform: the rightmost ``event_dim`` dims of
    ``x`` form one event (``event_dim = 1`` for the flows over vectors, ``x`` of shape
    ``batch_shape + (D,)``; 0 for elementwise ones); ``t(x)`` and ``t.inv(y)`` keep the shape
    (unless the transform says otherwise) and ``t.log_abs_det_jacobian(x, y)`` has shape
    ``batch_shape``, ``x.shape[:x.dim() - event_dim]``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def __hash__(self) -> int:
        return torch.nn.Module.__hash__(self)

    def clear_cache(self) -> None:
        """Forget the cached ``(x, y)`` pair and log-determinant. Call it after each
        optimisation step when the same data tensor is transformed again (otherwise the
        cache hands back values from the previous step's freed graph)."""
        clear_cache(self)


def clear_cache(t: Transform) -> None:
    """Forget what transform ``t`` (and its parts) cached."""
    if getattr(t, "_cache_size", 0):
        t._cached_x_y = (None, None)
    for name in ("_cache_logdet", "_cached_log_scale"):
        if getattr(t, name, None) is not None:
            setattr(t, name, None)
    for part in getattr(t, "parts", ()):
        clear_cache(part)
    if isinstance(t, torch.distributions.transforms._InverseTransform):
        clear_cache(t._inv)


class ComposeTransformModule(ComposeTransform, torch.nn.ModuleList):
    """A composition of transforms (``parts``) that registers the learnable ones as submodules."""

    def __init__(self, parts: list, cache_size: int = 0) -> None:
        super().__init__(parts, cache_size=cache_size)
        for part in parts:
            if isinstance(part, torch.nn.Module):
                self.append(part)

    def __hash__(self) -> int:
        return torch.nn.Module.__hash__(self)

    def with_cache(self, cache_size: int = 1) -> ComposeTransformModule:
        if cache_size == self._cache_size:
            return self
        return ComposeTransformModule(self.parts, cache_size=cache_size)


class ConditionalTransform:
    """Something that becomes a transform once given a context: ``condition(context)``."""

    def condition(self, context: torch.Tensor) -> Transform:
        """The transform given ``context``, a tensor of shape ``(..., context_dim)`` whose leading
        dims broadcast with the batch dims of the ``x`` it will map; the result has this object's
        ``event_dim`` (1 for the flows over vectors: ``x`` of shape ``(..., D)``)."""
        raise NotImplementedError(f"{type(self).__name__}.condition(context) is not implemented")


class ConditionalTransformModule(ConditionalTransform, torch.nn.Module):
    """A learnable conditional transform: ``condition(context)`` returns a ``Transform``
    whose parameters are computed from ``context`` (``[..., context_dim]``)."""

    def __hash__(self) -> int:
        return torch.nn.Module.__hash__(self)
