"""Learnable transforms: a ``torch.distributions.Transform`` that is also an
``nn.Module`` (Pyro's ``TransformModule``), and conditional ones that build a transform
from a context tensor (``ConditionalTransformModule.condition(context)``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import constraints
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


class _EventFromDim:
    """A transform of the dims from ``dim`` (a negative int) rightwards, which form one event
    (``event_dim = -dim``): call :meth:`_set_dim` in ``__init__``."""

    dim: int

    def _set_dim(self, dim: int) -> None:
        if not isinstance(dim, int) or dim >= 0:
            raise ValueError(f"{type(self).__name__}: dim must be a negative integer (counted from the right); got dim={dim!r}")
        self.dim = dim

    @property
    def event_dim(self) -> int:  # type: ignore[override]
        return -self.dim

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return constraints.independent(constraints.real, -self.dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.real, -self.dim)


class _VolumePreservingFromDim(_EventFromDim):
    """An :class:`_EventFromDim` transform that preserves volume (``log|det J| = 0``)."""

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Zero, of shape ``x.shape[:dim]``: the dims from ``dim`` rightwards form one event (``event_dim = -dim``) and the transform preserves volume."""
        return x.new_zeros(x.shape[: x.dim() + self.dim])


class _LogDetCache:
    """``_call``, ``_inverse`` and ``log_abs_det_jacobian`` of a bijection written as one
    ``_with_logdet(v, inverse) -> (output, log|det|)``; the last log-determinant is cached with
    the input it belongs to (a flow computes it on the way, and the ELBO asks for it next)."""

    _cache_logdet: tuple[torch.Tensor, torch.Tensor] | None = None

    def _with_logdet(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, ld = self._with_logdet(x, False)
        self._cache_logdet = (x, ld)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x, ld = self._with_logdet(y, True)
        self._cache_logdet = (x, -ld)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)``: shape ``x.shape[:x.dim() - self.event_dim]``
        (elementwise for an elementwise flow, one value per vector for a flow of vectors)."""
        c = self._cache_logdet
        if c is not None and c[0] is x:
            return c[1]
        return self._with_logdet(x, False)[1]


class _ForwardOnly(_LogDetCache):
    """A :class:`_LogDetCache` flow without a closed-form inverse: ``_forward(x) -> (y, log|det|)``;
    only values it produced itself can be inverted (torch's transform cache)."""

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _with_logdet(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if inverse:
            name = type(self).__name__
            raise NotImplementedError(
                f"{name} has no closed-form inverse; only values it produced itself (cached) can be inverted. "
                f"Use it in the sampling direction (e.g. a guide or TransformedDistribution.rsample).")
        return self._forward(v)


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
