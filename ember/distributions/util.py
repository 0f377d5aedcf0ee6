"""Shape and masking helpers shared by distributions and inference (Pyro's
``pyro.distributions.util``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "lean_biject_to",
    "broadcast_shape", "sum_rightmost", "sum_leftmost", "scale_and_mask", "is_identically_zero",
    "is_identically_one", "eye_like", "logsumexp", "clamp_probs", "detach", "deep_to", "copy_docs_from",
    "enable_validation", "is_validation_enabled", "validation_enabled",
]


def enable_validation(is_validate: bool = True) -> None:
    """Switch the distributions' argument and support validation on or off (torch's default)."""
    torch.distributions.Distribution.set_default_validate_args(bool(is_validate))


def is_validation_enabled() -> bool:
    """Whether distributions validate their arguments and values by default."""
    return bool(torch.distributions.Distribution._validate_args)


@contextmanager
def validation_enabled(is_validate: bool = True) -> Iterator[None]:
    """``with validation_enabled(False): ...`` switches distribution validation for the block."""
    old = is_validation_enabled()
    enable_validation(is_validate)
    try:
        yield
    finally:
        enable_validation(old)


def broadcast_shape(*shapes: Any, strict: bool = False) -> tuple[int, ...]:
    """The shape that ``shapes`` broadcast to (numpy rules). With ``strict=True`` a size-1
    dim does not broadcast against a larger one (sizes must be equal or absent).
    Raises ``ValueError`` naming the shapes that do not broadcast."""
    reversed_shape: list[int] = []
    for shape in shapes:
        for i, size in enumerate(reversed(tuple(shape))):
            if i >= len(reversed_shape):
                reversed_shape.append(size)
            elif reversed_shape[i] == 1 and not strict:
                reversed_shape[i] = size
            elif reversed_shape[i] != size and (size != 1 or strict):
                raise ValueError(f"shape mismatch: objects cannot be broadcast to a single shape: {' vs '.join(str(tuple(s)) for s in shapes)}")
    return tuple(reversed(reversed_shape))


def sum_rightmost(value: Any, dim: int) -> Any:
    """Sum out the ``dim`` rightmost dims of ``value`` (all but the leftmost ``-dim`` when
    ``dim`` is negative): shape ``(2, 3, 4)`` becomes ``(2,)`` with ``dim=2`` or ``dim=-1``. A number is
    returned unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    if dim < 0:
        dim += value.dim()
    if dim == 0:
        return value
    if dim > value.dim():
        raise ValueError(f"sum_rightmost: cannot sum {dim} dims of a tensor of shape {tuple(value.shape)}")
    return value.reshape(value.shape[: value.dim() - dim] + (-1,)).sum(-1)


def sum_leftmost(value: Any, dim: int) -> Any:
    """Sum out the ``dim`` leftmost dims of ``value`` (all but the rightmost ``-dim`` when negative):
    shape ``(2, 3, 4)`` becomes ``(3, 4)`` with ``dim=1`` and ``(4,)`` with ``dim=-1``."""
    if not isinstance(value, torch.Tensor):
        return value
    if dim < 0:
        dim += value.dim()
    if dim == 0:
        return value
    return value.reshape((-1,) + value.shape[dim:]).sum(0)


def is_identically_zero(x: Any) -> bool:
    """True only for the Python number ``0`` (a tensor, of any shape, is never inspected: no sync)."""
    return isinstance(x, numbers.Number) and x == 0


def is_identically_one(x: Any) -> bool:
    """True only for the Python number ``1`` (a tensor, of any shape, never counts)."""
    return isinstance(x, numbers.Number) and x == 1


def scale_and_mask(tensor: Any, scale: Any = 1.0, mask: Any = None) -> Any:
    """``tensor * scale`` with entries where the boolean ``mask`` is False set to 0 (not
    multiplied: a masked ``-inf`` or ``nan`` becomes 0, as a masked log-density must). ``scale`` and
    ``mask`` broadcast with ``tensor``; the result has the broadcast shape."""
    if is_identically_zero(tensor) or (mask is None and is_identically_one(scale)):
        return tensor
    if mask is None:
        return tensor * scale
    if isinstance(mask, bool):
        if not mask:
            return torch.zeros_like(tensor) if isinstance(tensor, torch.Tensor) else 0.0
        return tensor * scale
    return torch.where(mask, tensor * scale, tensor.new_zeros(()))


def eye_like(value: torch.Tensor, m: int, n: int | None = None) -> torch.Tensor:
    """An identity matrix of shape ``(m, n)`` (``n = m`` by default) with ``value``'s dtype and device."""
    n = m if n is None else n
    return torch.eye(m, n, dtype=value.dtype, device=value.device)


def logsumexp(tensor: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp`` that returns ``-inf`` (not ``nan``) when every entry is ``-inf``: the shape of
    ``tensor`` without ``dim`` (or with size 1 there when ``keepdim``)."""
    return torch.logsumexp(tensor, dim=dim, keepdim=keepdim)


def clamp_probs(probs: torch.Tensor) -> torch.Tensor:
    """Clamp probabilities into ``[eps, 1 - eps]`` of their dtype, elementwise (the shape is kept)."""
    eps = torch.finfo(probs.dtype).eps
    return probs.clamp(min=eps, max=1 - eps)


def detach(obj: Any) -> Any:
    """Detach every tensor inside ``obj`` (tensors, lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach(x) for x in obj)
    if isinstance(obj, dict):
        return {k: detach(v) for k, v in obj.items()}
    return obj


def deep_to(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Apply ``.to(*args, **kwargs)`` to every tensor inside ``obj``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(*args, **kwargs)
    if isinstance(obj, (list, tuple)):
        return type(obj)(deep_to(x, *args, **kwargs) for x in obj)
    if isinstance(obj, dict):
        return {k: deep_to(v, *args, **kwargs) for k, v in obj.items()}
    return obj


def copy_docs_from(source_class: type, full_text: bool = False) -> Any:
    """Class/function decorator copying the docstring of the same-named attribute of ``source_class``."""

    def decorator(destin: Any) -> Any:
        if destin.__doc__ is None:
            src = getattr(source_class, destin.__name__, source_class)
            destin.__doc__ = src.__doc__
        return destin

    return decorator


def lean_biject_to(support: Any) -> Any:
    """``torch.distributions.biject_to(support)`` without identity steps: the map from real
    numbers onto ``support`` that autoguides and MCMC use for a latent site. torch maps
    ``nonnegative`` (the support of HalfNormal and HalfCauchy) to ``exp`` followed by ``x + 0``,
    whose second step only adds operations (and their backward) to every evaluation; this drops
    such ``AffineTransform(0, 1)`` parts. Elementwise transforms keep the value's shape."""
    from torch.distributions import biject_to
    from torch.distributions.transforms import AffineTransform, ComposeTransform, identity_transform

    def identity_affine(t: Any) -> bool:
        return (isinstance(t, AffineTransform) and isinstance(t.loc, numbers.Number) and t.loc == 0
                and isinstance(t.scale, numbers.Number) and t.scale == 1)

    t = biject_to(support)
    if isinstance(t, ComposeTransform):
        parts = [p for p in t.parts if not identity_affine(p)]
        if len(parts) != len(t.parts):
            t = parts[0] if len(parts) == 1 else ComposeTransform(parts) if parts else identity_transform
    return t
