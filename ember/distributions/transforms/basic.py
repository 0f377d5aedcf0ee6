"""Fixed (parameter-free or fixed-parameter) transforms Pyro adds to torch's, and the
``biject_to``/``transform_to`` registrations of Ember's extra constraints."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import biject_to, transform_to
from torch.distributions import constraints as _tc
from torch.distributions.transforms import ComposeTransform, CorrCholeskyTransform, ExpTransform, SoftplusTransform, Transform

from ember.distributions import constraints
from ember.distributions.transforms.torch_transform import _VolumePreservingFromDim

__all__ = [
    "CorrMatrixCholeskyTransform", "LowerCholeskyAffine", "Normalize", "OrderedTransform", "Permute",
    "SoftplusLowerCholeskyTransform", "UnitLowerCholeskyTransform",
]


class OrderedTransform(Transform):
    """Real vectors ``x`` (last dim) to strictly increasing ones:
    ``y[0] = x[0]``, ``y[i] = y[i-1] + exp(x[i])``. ``log|det J| = sum(x[1:])`` (shape ``x.shape[:-1]``)."""

    domain = _tc.real_vector
    codomain = constraints.ordered_vector
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrderedTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x[..., :1], x[..., 1:].exp()], dim=-1)
        return torch.cumsum(z, dim=-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y[..., :1], (y[..., 1:] - y[..., :-1]).log()], dim=-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        return x[..., 1:].sum(-1)


class CorrMatrixCholeskyTransform(Transform):
    """A correlation matrix ``C`` (``[..., n, n]``) to its Cholesky factor ``L``.
    On the ``n(n-1)/2`` free coordinates (strict lower triangles),
    ``log|det dL/dC| = -sum_j (n-1-j) log L_jj``."""

    domain = constraints.corr_matrix
    codomain = _tc.corr_cholesky
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorrMatrixCholeskyTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cholesky(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y @ y.transpose(-1, -2)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (n, n)``: one value per matrix, of shape ``batch_shape``."""
        n = y.size(-1)
        order = torch.arange(n - 1, -1, -1, dtype=y.dtype, device=y.device)
        return -(order * y.diagonal(dim1=-2, dim2=-1).log()).sum(-1)


class SoftplusLowerCholeskyTransform(Transform):
    """Square matrices to lower Cholesky factors: the strict lower triangle is kept, the
    diagonal goes through a softplus. ``log|det J| = sum log sigmoid(x_ii)``."""

    domain = _tc.independent(_tc.real, 2)
    codomain = constraints.softplus_lower_cholesky
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftplusLowerCholeskyTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        diag = torch.nn.functional.softplus(x.diagonal(dim1=-2, dim2=-1))
        return x.tril(-1) + torch.diag_embed(diag)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        d = y.diagonal(dim1=-2, dim2=-1)
        return y.tril(-1) + torch.diag_embed(d + torch.log(-torch.expm1(-d)))

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (n, n)``: one value per matrix, of shape ``batch_shape``."""
        return torch.nn.functional.logsigmoid(x.diagonal(dim1=-2, dim2=-1)).sum(-1)


class UnitLowerCholeskyTransform(Transform):
    """Square matrices to unit lower-triangular ones (strict lower triangle kept, ones
    on the diagonal). Volume preserving on the free coordinates: ``log|det J| = 0``."""

    domain = _tc.independent(_tc.real, 2)
    codomain = constraints.unit_lower_cholesky
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitLowerCholeskyTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x.tril(-1) + torch.eye(x.size(-1), dtype=x.dtype, device=x.device)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.tril(-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (n, n)``: one value per matrix, of shape ``batch_shape``."""
        return x.new_zeros(x.shape[:-2])


class Normalize(Transform):
    """Vectors to the unit ``p``-sphere: ``y = x / ||x||_p`` (not bijective; the
    ``transform_to`` of ``constraints.sphere``)."""

    domain = _tc.real_vector
    codomain = constraints.sphere
    bijective = False

    def __init__(self, p: float = 2, cache_size: int = 0) -> None:
        if not p > 0:
            raise ValueError(f"Normalize: p must be positive; got p={p}")
        self.p = float(p)
        super().__init__(cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normalize) and other.p == self.p

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.linalg.vector_norm(x, ord=self.p, dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y


class Permute(_VolumePreservingFromDim, Transform):
    """Permute the entries of dimension ``dim`` (default ``-1``, the event dim):
    ``y = x[..., permutation]``. Volume preserving: ``log|det J| = 0``. ``x`` keeps its shape; the
    dims from ``dim`` rightwards are one event (``event_dim = -dim``)."""

    bijective = True
    volume_preserving = True

    def __init__(self, permutation: torch.Tensor, *, dim: int = -1, cache_size: int = 1) -> None:
        self._set_dim(dim)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if permutation.dim() != 1 or not torch.equal(permutation.sort().values, torch.arange(permutation.numel())):
            raise ValueError(f"Permute: permutation must be a permutation of 0..n-1; got {permutation.tolist()}")
        self.permutation = permutation
        super().__init__(cache_size=cache_size)

    @property
    def inv_permutation(self) -> torch.Tensor:
        return torch.argsort(self.permutation)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(self.dim, self.permutation.to(x.device))

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.index_select(self.dim, self.inv_permutation.to(y.device))

    def with_cache(self, cache_size: int = 1) -> Permute:
        if self._cache_size == cache_size:
            return self
        return Permute(self.permutation, dim=self.dim, cache_size=cache_size)


class LowerCholeskyAffine(Transform):
    """``y = loc + scale_tril @ x`` for vectors ``x`` (``[..., n]``) with a lower
    Cholesky ``scale_tril`` (``[n, n]``). ``log|det J| = sum log diag(scale_tril)``."""

    domain = _tc.real_vector
    codomain = _tc.real_vector
    bijective = True
    volume_preserving = False

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor, cache_size: int = 0) -> None:
        if scale_tril.dim() < 2 or scale_tril.size(-1) != scale_tril.size(-2) or loc.size(-1) != scale_tril.size(-1):
            raise ValueError(f"LowerCholeskyAffine: scale_tril must be [n, n] and loc [n]; got {tuple(scale_tril.shape)} and {tuple(loc.shape)}")
        self.loc = loc
        self.scale_tril = scale_tril
        super().__init__(cache_size=cache_size)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        rhs = (y - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(rhs.shape[:-2] + self.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(tril, rhs, upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        ld = self.scale_tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        return ld.expand(x.shape[:-1])

    def with_cache(self, cache_size: int = 1) -> LowerCholeskyAffine:
        if self._cache_size == cache_size:
            return self
        return LowerCholeskyAffine(self.loc, self.scale_tril, cache_size=cache_size)


# ---------------------------------------------------------------- registrations
@biject_to.register(constraints.ordered_vector)
@transform_to.register(constraints.ordered_vector)
def _to_ordered(constraint: Any) -> Transform:
    return OrderedTransform()


@biject_to.register(constraints.positive_ordered_vector)
@transform_to.register(constraints.positive_ordered_vector)
def _to_positive_ordered(constraint: Any) -> Transform:
    return ComposeTransform([OrderedTransform(), ExpTransform()])


@transform_to.register(constraints.sphere)
def _to_sphere(constraint: Any) -> Transform:
    return Normalize()


@biject_to.register(constraints.corr_matrix)
@transform_to.register(constraints.corr_matrix)
def _to_corr_matrix(constraint: Any) -> Transform:
    return ComposeTransform([CorrCholeskyTransform(), CorrMatrixCholeskyTransform().inv])


@biject_to.register(constraints.softplus_positive)
@transform_to.register(constraints.softplus_positive)
def _to_softplus_positive(constraint: Any) -> Transform:
    return SoftplusTransform()


@biject_to.register(constraints.softplus_lower_cholesky)
@transform_to.register(constraints.softplus_lower_cholesky)
def _to_softplus_lower_cholesky(constraint: Any) -> Transform:
    return SoftplusLowerCholeskyTransform()


@biject_to.register(constraints.unit_lower_cholesky)
@transform_to.register(constraints.unit_lower_cholesky)
def _to_unit_lower_cholesky(constraint: Any) -> Transform:
    return UnitLowerCholeskyTransform()


