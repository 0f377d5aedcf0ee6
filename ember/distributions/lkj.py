"""``LKJ``: the LKJ distribution over correlation matrices (Pyro's ``pyro.distributions.LKJ``),
``p(C) ∝ det(C)^(concentration - 1)``, built on torch's ``LKJCholesky``."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ember.distributions import constraints
from ember.distributions.torch import LKJCholesky
from ember.distributions.torch_dist import TorchDistribution
from ember.distributions.transforms.basic import CorrMatrixCholeskyTransform

__all__ = ["LKJ", "LKJCorrCholesky"]


class LKJ(TorchDistribution):
    """Correlation matrices ``[*batch, dim, dim]``: ``C = L L^T`` for ``L ~ LKJCholesky(dim,
    concentration)``; ``log p(C) = log p_L(chol C) + log|dL/dC|``. ``concentration``: ``[*batch]``."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.corr_matrix

    def __init__(self, dim: int, concentration: Any = 1.0, validate_args: bool | None = None) -> None:
        if dim < 2:
            raise ValueError(f"LKJ: dim must be at least 2; got dim={dim}")
        self._chol = LKJCholesky(dim, concentration, validate_args=validate_args)
        self.concentration = self._chol.concentration
        self.dim = dim
        super().__init__(self._chol.batch_shape, torch.Size([dim, dim]), validate_args=validate_args)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        L = self._chol.sample(sample_shape)
        return L @ L.transpose(-1, -2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        L = torch.linalg.cholesky(value)
        return self._chol.log_prob(L) + CorrMatrixCholeskyTransform().log_abs_det_jacobian(value, L)

    @property
    def mean(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=self.concentration.dtype, device=self.concentration.device).expand(self.batch_shape + (self.dim, self.dim))

    def expand(self, batch_shape: Any, _instance: Any = None) -> LKJ:
        batch_shape = torch.Size(batch_shape)
        return LKJ(self.dim, self.concentration.expand(batch_shape), validate_args=self._validate_args)


class LKJCorrCholesky(LKJCholesky):
    """Pyro's deprecated name for :class:`LKJCholesky` with its old argument names:
    ``LKJCorrCholesky(d, eta)`` is ``LKJCholesky(d, concentration=eta)`` (it warns with a
    ``FutureWarning``, as Pyro does).

    Shapes: ``batch_shape`` is the shape of ``eta``; ``event_shape`` is ``(d, d)``: a draw is the
    lower Cholesky factor of a ``d x d`` correlation matrix."""

    def __init__(self, d: int, eta: Any, validate_args: bool | None = None) -> None:
        warnings.warn("LKJCorrCholesky(d, eta) is deprecated; use LKJCholesky(dim, concentration) instead",
                      FutureWarning, stacklevel=2)
        super().__init__(d, concentration=eta, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> LKJCorrCholesky:
        """The same distribution with batch shape ``batch_shape`` (``eta`` expanded to it)."""
        new = _instance if _instance is not None else type(self).__new__(type(self))
        return super().expand(batch_shape, _instance=new)
