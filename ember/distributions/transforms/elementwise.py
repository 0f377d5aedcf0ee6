"""Small fixed transforms Pyro adds: ``ELUTransform``, ``LeakyReLUTransform``,
``CholeskyTransform`` (positive-definite matrix to its Cholesky factor), the
``CorrLCholeskyTransform`` name, ``DiscreteCosineTransform``, ``HaarTransform`` and the ``iterated`` helper."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.transforms import CorrCholeskyTransform, Transform

from ember.distributions.transforms.torch_transform import ComposeTransformModule, _VolumePreservingFromDim

__all__ = [
    "CholeskyTransform", "CorrLCholeskyTransform", "DiscreteCosineTransform", "ELUTransform", "HaarTransform", "LeakyReLUTransform",
    "PositivePowerTransform", "SimplexToOrderedTransform", "elu", "haar_transform", "inverse_haar_transform", "iterated",
    "leaky_relu",
]

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
        """``log|dy/dx|`` elementwise (``event_dim = 0``): a tensor of the shape of ``x``."""
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
        """``log|dy/dx|`` elementwise (``event_dim = 0``): a tensor of the shape of ``x``."""
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
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (n, n)``: one value per matrix, of shape ``batch_shape``."""
        n = y.size(-1)
        order = torch.arange(n, 0, -1, dtype=y.dtype, device=y.device)
        return -(n * math.log(2) + (order * y.diagonal(dim1=-2, dim2=-1).log()).sum(-1))


def iterated(repeats: int, base_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ComposeTransformModule:
    """``repeats`` independent transforms ``base_fn(*args, **kwargs)`` composed (their
    parameters registered in one module)."""
    if repeats < 1:
        raise ValueError(f"iterated: repeats must be >= 1; got {repeats}")
    return ComposeTransformModule([base_fn(*args, **kwargs) for _ in range(repeats)])


class DiscreteCosineTransform(_VolumePreservingFromDim, Transform):
    """The orthonormal DCT-II along dimension ``dim`` (negative), its ``k``-th output weighted by
    the frequency ``(k + 1/2) ** smooth`` divided by the weights' geometric mean (as Pyro does),
    so ``log|det J| = 0``: with ``smooth = 0`` white noise stays white; with ``smooth = 1``
    Brownian noise becomes white."""

    def __init__(self, dim: int = -1, smooth: float = 0.0, cache_size: int = 0) -> None:
        self._set_dim(dim)
        self.smooth = float(smooth)
        self._mats: dict = {}
        super().__init__(cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiscreteCosineTransform) and other.dim == self.dim and other.smooth == self.smooth

    def _weights(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``(k + 1/2) ** smooth`` over ``k < n``, normalised to geometric mean 1."""
        w = (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5).pow(self.smooth)
        return w / w.log().mean().exp()

    def _matrix(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``M[k, j] = sqrt(2/n) c_k cos(pi (j + 1/2) k / n)`` times the smoothing weight of ``k``."""
        key = (n, like.dtype, like.device)
        m = self._mats.get(key)
        if m is None:
            k = torch.arange(n, dtype=like.dtype, device=like.device).unsqueeze(-1)
            j = torch.arange(n, dtype=like.dtype, device=like.device)
            m = torch.cos(math.pi * (j + 0.5) * k / n) * math.sqrt(2.0 / n)
            m[0] = m[0] / math.sqrt(2.0)
            m = m * self._weights(n, like).unsqueeze(-1)
            self._mats[key] = m
        return m

    def _apply(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        x = x.movedim(self.dim, -1)
        n = x.size(-1)
        m = self._matrix(n, x)
        if inverse:
            w = self._weights(n, x)
            y = (x / w) @ (m / w.unsqueeze(-1))  # the orthonormal DCT's inverse is its transpose
        else:
            y = x @ m.T
        return y.movedim(-1, self.dim)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, False)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, True)

    def with_cache(self, cache_size: int = 1) -> DiscreteCosineTransform:
        if self._cache_size == cache_size:
            return self
        return DiscreteCosineTransform(self.dim, self.smooth, cache_size=cache_size)


_ROOT_HALF = math.sqrt(0.5)


def haar_transform(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal discrete Haar transform along the last dim (any length): neighbours
    ``(x[2i], x[2i+1])`` become ``lo = (a + b)/√2`` and ``hi = (a - b)/√2``; the ``lo`` half is
    transformed again; an odd last element is kept. Output ``[lo..., hi, leftover]``."""
    n = x.size(-1) // 2
    a, b, rest = x[..., 0 : 2 * n : 2], x[..., 1 : 2 * n : 2], x[..., 2 * n :]
    lo, hi = _ROOT_HALF * (a + b), _ROOT_HALF * (a - b)
    if n >= 2:
        lo = haar_transform(lo)
    return torch.cat([lo, hi, rest], dim=-1)


def inverse_haar_transform(y: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`haar_transform` (its transpose: the transform is orthonormal)."""
    n = y.size(-1) // 2
    lo, hi, rest = y[..., :n], y[..., n : 2 * n], y[..., 2 * n :]
    if n >= 2:
        lo = inverse_haar_transform(lo)
    a, b = _ROOT_HALF * (lo + hi), _ROOT_HALF * (lo - hi)
    pairs = torch.stack([a, b], dim=-1).flatten(-2)
    return torch.cat([pairs, rest], dim=-1)


class HaarTransform(_VolumePreservingFromDim, Transform):
    """The orthonormal Haar wavelet transform along dimension ``dim`` (negative), after reversing
    that dimension when ``flip``; volume preserving (``log|det J| = 0``)."""

    def __init__(self, dim: int = -1, flip: bool = False, cache_size: int = 0) -> None:
        self._set_dim(dim)
        self.flip = bool(flip)
        super().__init__(cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HaarTransform) and other.dim == self.dim and other.flip == self.flip

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(self.dim, -1)
        if self.flip:
            x = x.flip(-1)
        return haar_transform(x).movedim(-1, self.dim)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = inverse_haar_transform(y.movedim(self.dim, -1))
        if self.flip:
            x = x.flip(-1)
        return x.movedim(-1, self.dim)

    def with_cache(self, cache_size: int = 1) -> HaarTransform:
        if self._cache_size == cache_size:
            return self
        return HaarTransform(self.dim, self.flip, cache_size=cache_size)


class SimplexToOrderedTransform(Transform):
    """A probability vector ``x`` (``[..., K]``) to ``K - 1`` increasing cutpoints
    ``y_i = logit(x_0 + ... + x_i) + anchor_point`` (Betancourt's ordinal-regression prior on
    cutpoints, with :class:`~ember.distributions.OrderedLogistic`). On the ``K - 1`` free
    coordinates ``log|det J| = sum_i [softplus(z_i) + softplus(-z_i)]``, ``z = y - anchor_point``."""

    domain = constraints.simplex
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, anchor_point: torch.Tensor | float | None = None) -> None:
        self.anchor_point = torch.as_tensor(0.0 if anchor_point is None else anchor_point)
        super().__init__()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimplexToOrderedTransform) and torch.equal(self.anchor_point, other.anchor_point)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cumsum(x[..., :-1], dim=-1)
        return torch.logit(s) + self.anchor_point.to(x).unsqueeze(-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(y - self.anchor_point.to(y).unsqueeze(-1))
        s = torch.cat([torch.zeros_like(s[..., :1]), s, torch.ones_like(s[..., :1])], dim=-1)
        return s[..., 1:] - s[..., :-1]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` of shape ``batch_shape + (K,)`` and ``y`` of shape ``batch_shape + (K - 1,)``: shape ``batch_shape``."""
        z = y - self.anchor_point.to(y).unsqueeze(-1)
        return (F.softplus(z) + F.softplus(-z)).sum(-1)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(shape[:-1] + (shape[-1] - 1,))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(shape[:-1] + (shape[-1] + 1,))


class PositivePowerTransform(Transform):
    """``y = x ** exponent`` on the positive reals (``exponent > 0``);
    ``log|dy/dx| = log(exponent) + (exponent - 1) log x``. Elementwise (``event_dim = 0``):
    ``exponent`` is a number or a tensor that broadcasts with ``x``."""

    domain = constraints.positive
    codomain = constraints.positive
    bijective = True
    sign = +1

    def __init__(self, exponent: torch.Tensor | float, cache_size: int = 0) -> None:
        exponent = torch.as_tensor(exponent)
        if not bool((exponent > 0).all()):
            raise ValueError(f"PositivePowerTransform: exponent must be positive; got {exponent.tolist()}")
        self.exponent = exponent
        super().__init__(cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositivePowerTransform) and torch.equal(self.exponent, other.exponent)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(self.exponent.to(x))

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.pow(1 / self.exponent.to(y))

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|dy/dx|`` elementwise (``event_dim = 0``): a tensor of the shape of ``x``."""
        e = self.exponent.to(x)
        return torch.log(e) + (e - 1) * torch.log(x)

    def with_cache(self, cache_size: int = 1) -> PositivePowerTransform:
        if self._cache_size == cache_size:
            return self
        return PositivePowerTransform(self.exponent, cache_size=cache_size)


def elu() -> ELUTransform:
    """An :class:`ELUTransform` (Pyro's helper, like the flows' lower-case builders): elementwise,
    ``y`` has the shape of ``x``."""
    return ELUTransform()


def leaky_relu() -> LeakyReLUTransform:
    """A :class:`LeakyReLUTransform` (Pyro's helper): elementwise, ``y`` has the shape of ``x``."""
    return LeakyReLUTransform()
