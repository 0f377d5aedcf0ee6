"""Constraints: every ``torch.distributions.constraints`` name plus those Pyro adds
(``ordered_vector``, ``positive_ordered_vector``, ``sphere``, ``corr_matrix``,
``softplus_positive``, ``softplus_lower_cholesky``, ``unit_lower_cholesky``,
``integer``, ``positive_integer``). Their ``biject_to``/``transform_to``
registrations live in :mod:`ember.distributions.transforms`."""

from __future__ import annotations

import torch
from torch.distributions.constraints import *  # noqa: F401,F403
from torch.distributions.constraints import Constraint, _GreaterThan, _LowerCholesky, corr_cholesky, positive_definite
from torch.distributions.constraints import __all__ as _torch_all

__all__ = list(_torch_all) + [
    "corr_cholesky_constraint", "corr_matrix", "integer", "ordered_vector", "positive_ordered_vector", "softplus_lower_cholesky",
    "softplus_positive", "sphere", "unit_lower_cholesky",
]


class _Integer(Constraint):
    """Integer values (any sign)."""

    is_discrete = True

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return value % 1 == 0


class _OrderedVector(Constraint):
    """Real vectors whose entries strictly increase along the last dim."""

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        if value.size(-1) <= 1:
            return torch.ones_like(value[..., 0] if value.dim() else value, dtype=torch.bool)
        return (value[..., 1:] > value[..., :-1]).all(-1)


class _PositiveOrderedVector(_OrderedVector):
    """Positive real vectors whose entries strictly increase along the last dim."""

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return super().check(value) & (value > 0).all(-1)


class _Sphere(Constraint):
    """Vectors of Euclidean norm 1 (along the last dim)."""

    event_dim = 1
    reltol = 10.0

    def check(self, value: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(value.dtype).eps
        norm = torch.linalg.vector_norm(value, dim=-1)
        return (norm - 1).abs() <= eps * self.reltol * max(1, value.size(-1))

    def __repr__(self) -> str:
        return "Sphere"


class _CorrMatrix(Constraint):
    """Correlation matrices: symmetric, positive definite, unit diagonal."""

    event_dim = 2

    def check(self, value: torch.Tensor) -> torch.Tensor:
        tol = torch.finfo(value.dtype).eps * value.size(-1) * 10
        unit_diag = ((value.diagonal(dim1=-2, dim2=-1) - 1).abs() <= tol).all(-1)
        return positive_definite.check(value) & unit_diag


class _SoftplusPositive(_GreaterThan):
    """Positive reals, whose ``biject_to`` is the softplus rather than exp."""

    def __init__(self) -> None:
        super().__init__(lower_bound=0.0)


class _SoftplusLowerCholesky(_LowerCholesky):
    """Lower Cholesky factors, whose ``biject_to`` puts a softplus on the diagonal."""


class _UnitLowerCholesky(Constraint):
    """Lower-triangular square matrices with ones on the diagonal."""

    event_dim = 2

    def check(self, value: torch.Tensor) -> torch.Tensor:
        lower = (value.tril() == value).flatten(-2).all(-1)
        ones = (value.diagonal(dim1=-2, dim2=-1) == 1).all(-1)
        return lower & ones


integer = _Integer()
ordered_vector = _OrderedVector()
positive_ordered_vector = _PositiveOrderedVector()
sphere = _Sphere()
corr_matrix = _CorrMatrix()
softplus_positive = _SoftplusPositive()
softplus_lower_cholesky = _SoftplusLowerCholesky()
unit_lower_cholesky = _UnitLowerCholesky()
corr_cholesky_constraint = corr_cholesky  # Pyro's deprecated name for the same constraint
