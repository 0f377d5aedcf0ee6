"""Small fixed transforms Pyro adds: ``ELUTransform``, ``LeakyReLUTransform``,
``CholeskyTransform`` (positive-definite matrix to its Cholesky factor), the
``CorrLCholeskyTransform`` name, and the ``iterated`` helper."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.transforms import CorrCholeskyTransform, Transform

from ember.distributions.transforms.torch_transform import ComposeTransformModule

__all__ = ["CholeskyTransform", "CorrLCholeskyTransform", "ELUTransform", "LeakyReLUTransform", "iterated"]

CorrLCholeskyTransform = CorrCholeskyTransform  # Pyro's name for the same map


class ELUTransform(Transform):
    """``y = elu(x)`` (``x`` for ``x > 0``, ``exp(x) - 1`` below); ``log|dy/dx| = min(x, 0)``."""

    domain = constraints.real
    codomain = constraints.greater_than(-1.0)
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ELUTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y > 0, y, torch.log1p(y.clamp_min(-1 + torch.finfo(y.dtype).eps)))

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.relu(-x)


class LeakyReLUTransform(Transform):
    """``y = leaky_relu(x, 0.01)``; ``log|dy/dx|`` is 0 above zero and ``log 0.01`` below."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeakyReLUTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.01)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(y, 100.0)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.zeros_like(x), torch.full_like(x, math.log(0.01)))


class CholeskyTransform(Transform):
    """A positive-definite matrix ``S`` (``[..., n, n]``) to its lower Cholesky factor ``L``. On the
    free coordinates (lower triangles), ``log|det dL/dS| = -(n log 2 + sum_j (n - j) log L_jj)``
    (``j`` from 0)."""

    domain = constraints.positive_definite
    codomain = constraints.lower_cholesky
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CholeskyTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cholesky(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y @ y.transpose(-1, -2)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = y.size(-1)
        order = torch.arange(n, 0, -1, dtype=y.dtype, device=y.device)
        return -(n * math.log(2) + (order * y.diagonal(dim1=-2, dim2=-1).log()).sum(-1))


def iterated(repeats: int, base_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ComposeTransformModule:
    """``repeats`` independent transforms ``base_fn(*args, **kwargs)`` composed (their
    parameters registered in one module)."""
    if repeats < 1:
        raise ValueError(f"iterated: repeats must be >= 1; got {repeats}")
    return ComposeTransformModule([base_fn(*args, **kwargs) for _ in range(repeats)])
