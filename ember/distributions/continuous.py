"""Univariate and multivariate continuous distributions Pyro adds to torch's (and
``TruncatedNormal``, which neither torch nor Pyro's core has; NumPyro's signature)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ember.distributions.torch import Beta, Categorical, Chi2, TransformedDistribution
from ember.distributions.torch_dist import TorchDistribution

__all__ = [
    "AffineBeta", "AsymmetricLaplace", "FoldedDistribution", "ImproperUniform", "Logistic", "MultivariateStudentT",
    "OrderedLogistic", "SkewLogistic", "SoftAsymmetricLaplace", "SoftLaplace", "TruncatedNormal",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _uniform(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Uniform draws in the open interval (0, 1)."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


class _ParamsMixin:
    """``expand`` for distributions whose parameters are tensors of the batch shape named in ``_params``."""

    # (the docstring below is what the subclasses' pages show for ``expand``)

    _params: tuple[str, ...] = ()

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """The same distribution with batch shape ``batch_shape`` (each parameter expanded to it,
        without a copy); ``batch_shape`` must broadcast from the current one."""
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(type(self), _instance)
        for name in self._params:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class TruncatedNormal(_ParamsMixin, TorchDistribution):
    """``Normal(loc, scale)`` restricted to ``[low, high]`` (either may be infinite).
    ``log_prob(x) = Normal.log_prob(x) - log(Φ(β) - Φ(α))`` with ``α = (low-loc)/scale``,
    ``β = (high-loc)/scale``; reparameterized by the inverse CDF (computed in the tail
    where it is accurate). All parameters broadcast to the batch shape."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "low": constraints.dependent, "high": constraints.dependent}
    has_rsample = True
    _params = ("loc", "scale", "low", "high")

    def __init__(self, loc: Any = 0.0, scale: Any = 1.0, *, low: Any = None, high: Any = None, validate_args: bool | None = None) -> None:
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        if validate_args is not False and bool((self.low >= self.high).any()):
            raise ValueError(f"TruncatedNormal: low must be below high; got low={self.low.tolist()}, high={self.high.tolist()}")
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def _ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardised bounds; an infinite bound stays a constant (no nan gradient)."""
        low, high = self.low, self.high
        a = torch.where(low.isinf(), low, (torch.where(low.isinf(), torch.zeros_like(low), low) - self.loc) / self.scale)
        b = torch.where(high.isinf(), high, (torch.where(high.isinf(), torch.zeros_like(high), high) - self.loc) / self.scale)
        return a, b

    def _standard_bounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α, β, flip) where flip marks batch entries computed in the mirrored (lower) tail."""
        a, b = self._ab()
        flip = a > 0
        return torch.where(flip, -b, a), torch.where(flip, -a, b), flip

    def _log_z(self) -> torch.Tensor:
        a, b, _ = self._standard_bounds()
        la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
        return lb + torch.log1p(-torch.exp(la - lb))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return -0.5 * z * z - _LOG_SQRT_2PI - self.scale.log() - self._log_z()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        a, b, flip = self._standard_bounds()
        ca, cb = torch.special.ndtr(a), torch.special.ndtr(b)
        u = _uniform(shape, self.loc)
        p = (ca + u * (cb - ca)).clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
        z = torch.special.ndtri(p)
        z = torch.where(flip, -z, z)
        x = self.loc + self.scale * z
        return torch.maximum(torch.minimum(x, self.high), self.low)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _phi_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = self._ab()
        pa = torch.exp(-0.5 * a * a - _LOG_SQRT_2PI)
        pb = torch.exp(-0.5 * b * b - _LOG_SQRT_2PI)
        z = self._log_z().exp()
        apa = torch.where(a.isinf(), torch.zeros_like(a), a * pa)
        bpb = torch.where(b.isinf(), torch.zeros_like(b), b * pb)
        return pa / z, pb / z, apa / z, bpb / z

    @property
    def mean(self) -> torch.Tensor:
        pa, pb, _, _ = self._phi_terms()
        return self.loc + self.scale * (pa - pb)

    @property
    def variance(self) -> torch.Tensor:
        pa, pb, apa, bpb = self._phi_terms()
        return self.scale.pow(2) * (1 + apa - bpb - (pa - pb).pow(2))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """The CDF at ``value``, elementwise: ``value`` broadcasts with ``batch_shape`` and the result has the broadcast shape."""
        a, b = self._ab()
        z = (value - self.loc) / self.scale
        ca, cb = torch.special.ndtr(a), torch.special.ndtr(b)
        return ((torch.special.ndtr(z) - ca) / (cb - ca)).clamp(0, 1)


class FoldedDistribution(TransformedDistribution):
    """``|X|`` for a univariate ``X ~ base_dist``: ``p(y) = p_X(y) + p_X(-y)`` for ``y >= 0``."""

    support = constraints.nonnegative

    def __init__(self, base_dist: Any, validate_args: bool | None = None) -> None:
        if base_dist.event_shape:
            raise ValueError(f"FoldedDistribution: base_dist must be univariate; got event_shape {tuple(base_dist.event_shape)}")
        super().__init__(base_dist, torch.distributions.transforms.AbsTransform(), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> FoldedDistribution:
        return FoldedDistribution(self.base_dist.expand(batch_shape), validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logaddexp(self.base_dist.log_prob(value), self.base_dist.log_prob(-value))


class AsymmetricLaplace(_ParamsMixin, TorchDistribution):
    """Laplace-like with scale ``scale * asymmetry`` left of ``loc`` and
    ``scale / asymmetry`` right of it: ``p(x) = exp(-|x-loc|/s_side) / (s_left + s_right)``.
    (SciPy's ``laplace_asymmetric(kappa=asymmetry, loc, scale)``.) ``batch_shape`` is the broadcast
    shape of ``loc``, ``scale`` and ``asymmetry``; ``event_shape`` is ``()``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "asymmetry": constraints.positive}
    support = constraints.real
    has_rsample = True
    _params = ("loc", "scale", "asymmetry")

    def __init__(self, loc: Any, scale: Any, asymmetry: Any, validate_args: bool | None = None) -> None:
        self.loc, self.scale, self.asymmetry = broadcast_all(loc, scale, asymmetry)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def left_scale(self) -> torch.Tensor:
        return self.scale * self.asymmetry

    @property
    def right_scale(self) -> torch.Tensor:
        return self.scale / self.asymmetry

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = value - self.loc
        left, right = self.left_scale, self.right_scale
        return torch.where(z < 0, z / left, -z / right) - torch.log(left + right)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        left, right = self.left_scale, self.right_scale
        p_left = left / (left + right)
        u = _uniform(shape, self.loc)
        x_left = left * torch.log(u / p_left)
        x_right = -right * torch.log((1 - u) / (1 - p_left))
        return self.loc + torch.where(u < p_left, x_left, x_right)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.right_scale - self.left_scale

    @property
    def variance(self) -> torch.Tensor:
        left, right = self.left_scale, self.right_scale
        return left.pow(2) + right.pow(2)


class SoftAsymmetricLaplace(_ParamsMixin, TorchDistribution):
    """``AsymmetricLaplace(loc, scale, asymmetry)`` plus independent
    ``Normal(0, scale * softness)`` noise (a smooth density; closed form through Φ).
    ``batch_shape`` is the broadcast shape of the four parameters; ``event_shape`` is ``()``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "asymmetry": constraints.positive, "softness": constraints.positive}
    support = constraints.real
    has_rsample = True
    _params = ("loc", "scale", "asymmetry", "softness")

    def __init__(self, loc: Any, scale: Any, asymmetry: Any = 1.0, softness: Any = 1.0, validate_args: bool | None = None) -> None:
        self.loc, self.scale, self.asymmetry, self.softness = broadcast_all(loc, scale, asymmetry, softness)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def left_scale(self) -> torch.Tensor:
        return self.scale * self.asymmetry

    @property
    def right_scale(self) -> torch.Tensor:
        return self.scale / self.asymmetry

    @property
    def soft_scale(self) -> torch.Tensor:
        return self.scale * self.softness

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = value - self.loc
        L, R, s = self.left_scale, self.right_scale, self.soft_scale
        right = -z / R + 0.5 * (s / R).pow(2) + torch.special.log_ndtr(z / s - s / R)
        left = z / L + 0.5 * (s / L).pow(2) + torch.special.log_ndtr(-z / s - s / L)
        return torch.logaddexp(left, right) - torch.log(L + R)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        al = AsymmetricLaplace(self.loc, self.scale, self.asymmetry, validate_args=False)
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return al.rsample(sample_shape) + self.soft_scale * eps

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.right_scale - self.left_scale

    @property
    def variance(self) -> torch.Tensor:
        return self.left_scale.pow(2) + self.right_scale.pow(2) + self.soft_scale.pow(2)


class Logistic(_ParamsMixin, TorchDistribution):
    """The logistic distribution: ``CDF(x) = sigmoid((x - loc) / scale)``. ``batch_shape`` is the
    broadcast shape of ``loc`` and ``scale``; ``event_shape`` is ``()``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _params = ("loc", "scale")

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return -z - 2 * F.softplus(-z) - self.scale.log()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        u = _uniform(self._extended_shape(sample_shape), self.loc)
        return self.loc + self.scale * (u.log() - (-u).log1p())

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """The CDF at ``value``, elementwise: ``value`` broadcasts with ``batch_shape`` and the result has the broadcast shape."""
        return torch.sigmoid((value - self.loc) / self.scale)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """The quantile of probability ``value``, elementwise: ``value`` broadcasts with ``batch_shape``."""
        return self.loc + self.scale * torch.logit(value)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2) * (math.pi**2 / 3)

    def entropy(self) -> torch.Tensor:
        """``log(scale) + 2``, of shape ``batch_shape``."""
        return self.scale.log() + 2


class SoftLaplace(_ParamsMixin, TorchDistribution):
    """A smooth, log-convex density with Laplace-like (exponential) tails:
    ``p(x) = 1 / (pi * scale * cosh(z))`` with ``z = (x - loc) / scale`` (the hyperbolic secant
    distribution), so ``log p = log(2/pi) - log(scale) - logaddexp(z, -z)``. Mean ``loc``, variance
    ``(pi scale / 2)^2``; reparameterized through its quantile ``loc + scale log(tan(pi u / 2))``.

    Shapes: ``batch_shape`` is the broadcast shape of ``loc`` and ``scale``; ``event_shape`` is ``()``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _params = ("loc", "scale")

    def __init__(self, loc: Any, scale: Any, *, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return math.log(2 / math.pi) - self.scale.log() - torch.logaddexp(z, -z)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.icdf(_uniform(self._extended_shape(sample_shape), self.loc))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """``(2/pi) atan(exp(z))``, elementwise: ``value`` broadcasts with ``batch_shape``."""
        return torch.atan(torch.exp((value - self.loc) / self.scale)) * (2 / math.pi)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """``loc + scale log(tan(pi value / 2))``, elementwise: ``value`` broadcasts with ``batch_shape``."""
        return self.loc + self.scale * torch.log(torch.tan(torch.as_tensor(value) * (math.pi / 2)))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return (self.scale * (math.pi / 2)).pow(2)


class AffineBeta(TransformedDistribution):
    """``loc + scale * X`` with ``X ~ Beta(concentration1, concentration0)``: a Beta on the interval
    ``(loc, loc + scale)``. Draws are kept a machine epsilon (times ``scale``) inside the interval,
    so that log-densities and gradients at them stay finite (as Pyro does).

    Shapes: ``batch_shape`` is the broadcast shape of ``concentration1``, ``concentration0``, ``loc``
    and ``scale``; ``event_shape`` is ``()``."""

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive,
                       "loc": constraints.real, "scale": constraints.positive}

    def __init__(self, concentration1: Any, concentration0: Any, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        c1, c0, loc, scale = broadcast_all(concentration1, concentration0, loc, scale)
        base = Beta(c1, c0, validate_args=validate_args)
        super().__init__(base, torch.distributions.AffineTransform(loc=loc, scale=scale), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> AffineBeta:
        """The same distribution with batch shape ``batch_shape`` (each parameter expanded to it)."""
        b = torch.Size(batch_shape)
        return AffineBeta(self.concentration1.expand(b), self.concentration0.expand(b), self.loc.expand(b),
                          self.scale.expand(b), validate_args=self._validate_args)

    def _inside(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps * self.scale
        return torch.min(torch.max(x, self.low + eps), self.high - eps)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._inside(super().rsample(sample_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    @constraints.dependent_property
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def concentration1(self) -> torch.Tensor:
        return self.base_dist.concentration1

    @property
    def concentration0(self) -> torch.Tensor:
        return self.base_dist.concentration0

    @property
    def sample_size(self) -> torch.Tensor:
        """``concentration1 + concentration0`` (shape ``batch_shape``)."""
        return self.concentration1 + self.concentration0

    @property
    def loc(self) -> torch.Tensor:
        return torch.as_tensor(self.transforms[0].loc)

    @property
    def scale(self) -> torch.Tensor:
        return torch.as_tensor(self.transforms[0].scale)

    @property
    def low(self) -> torch.Tensor:
        return self.loc

    @property
    def high(self) -> torch.Tensor:
        return self.loc + self.scale

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.scale * self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2) * self.base_dist.variance


class SkewLogistic(_ParamsMixin, TorchDistribution):
    """The skewed (type I generalized) logistic: ``CDF(x) = sigmoid(z)^asymmetry`` with
    ``z = (x - loc)/scale``; ``asymmetry = 1`` is :class:`Logistic`. (SciPy's ``genlogistic(c=asymmetry)``.)
    ``batch_shape`` is the broadcast shape of ``loc``, ``scale`` and ``asymmetry``; ``event_shape`` is ``()``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "asymmetry": constraints.positive}
    support = constraints.real
    has_rsample = True
    _params = ("loc", "scale", "asymmetry")

    def __init__(self, loc: Any, scale: Any, asymmetry: Any = 1.0, validate_args: bool | None = None) -> None:
        self.loc, self.scale, self.asymmetry = broadcast_all(loc, scale, asymmetry)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        a = self.asymmetry
        return a.log() - self.scale.log() - z - (a + 1) * F.softplus(-z)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.icdf(_uniform(self._extended_shape(sample_shape), self.loc))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """The quantile of probability ``value``, elementwise (``value`` broadcasts with
        ``batch_shape``): ``sigmoid(z)^a = u`` gives ``z = -log(u^(-1/a) - 1)``."""
        z = -torch.log(torch.expm1(-torch.as_tensor(value).log() / self.asymmetry))
        return self.loc + self.scale * z

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """The CDF at ``value``, elementwise: ``value`` broadcasts with ``batch_shape`` and the result has the broadcast shape."""
        return torch.sigmoid((value - self.loc) / self.scale).pow(self.asymmetry)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.scale * (torch.digamma(self.asymmetry) - torch.digamma(torch.ones_like(self.asymmetry)))

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2) * (math.pi**2 / 6 + torch.polygamma(1, self.asymmetry))


class MultivariateStudentT(TorchDistribution):
    """Student's t in ``d`` dims: ``loc + scale_tril @ z / sqrt(w / df)`` with ``z ~ N(0, I)``,
    ``w ~ Chi2(df)``. ``df``: ``[*batch]``; ``loc``: ``[*batch, d]``; ``scale_tril``: ``[*batch, d, d]``.

    As in Pyro, ``covariance_matrix`` is the scale matrix ``scale_tril @ scale_tril.T``, not the
    covariance (which is ``df / (df - 2)`` times it), and ``precision_matrix`` is its inverse."""

    arg_constraints = {"df": constraints.positive, "loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, df: Any, loc: torch.Tensor, scale_tril: torch.Tensor, validate_args: bool | None = None) -> None:
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()) if not isinstance(loc, torch.Tensor) else loc
        if loc.dim() < 1 or scale_tril.dim() < 2 or scale_tril.shape[-2:] != (loc.size(-1), loc.size(-1)):
            raise ValueError(f"MultivariateStudentT: loc must be [*batch, d] and scale_tril [*batch, d, d]; got {tuple(loc.shape)} and {tuple(scale_tril.shape)}")
        d = loc.size(-1)
        df = torch.as_tensor(df, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(df.shape, loc.shape[:-1], scale_tril.shape[:-2])
        self.df = df.expand(batch_shape)
        self.loc = loc.expand(batch_shape + (d,))
        self.scale_tril = scale_tril.expand(batch_shape + (d, d))
        super().__init__(batch_shape, torch.Size([d]), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MultivariateStudentT:
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return MultivariateStudentT(self.df.expand(batch_shape), self.loc.expand(batch_shape + (d,)),
                                    self.scale_tril.expand(batch_shape + (d, d)), validate_args=self._validate_args)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """The scale matrix ``scale_tril @ scale_tril.T`` (``[*batch, d, d]``), as in Pyro. NB: this
        is not the covariance of the distribution, which is ``df / (df - 2)`` times it (for
        ``df > 2``)."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    @property
    def precision_matrix(self) -> torch.Tensor:
        """The inverse of :attr:`covariance_matrix` (the scale matrix; not the inverse covariance):
        ``[*batch, d, d]``."""
        eye = torch.eye(self.event_shape[0], dtype=self.scale_tril.dtype, device=self.scale_tril.device)
        return torch.cholesky_solve(eye.expand_as(self.scale_tril), self.scale_tril)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        d = self.event_shape[0]
        diff = (value - self.loc).unsqueeze(-1)
        shape = torch.broadcast_shapes(diff.shape[:-2], self.batch_shape)
        y = torch.linalg.solve_triangular(self.scale_tril.expand(shape + (d, d)), diff.expand(shape + (d, 1)), upper=False).squeeze(-1)
        m = y.pow(2).sum(-1)
        nu = self.df
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (torch.lgamma((nu + d) / 2) - torch.lgamma(nu / 2) - 0.5 * d * torch.log(nu * math.pi)
                - half_log_det - 0.5 * (nu + d) * torch.log1p(m / nu))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        z = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        w = Chi2(self.df, validate_args=False).rsample(sample_shape)
        return self.loc + (self.scale_tril @ z.unsqueeze(-1)).squeeze(-1) * torch.rsqrt(w / self.df).unsqueeze(-1)

    @property
    def mean(self) -> torch.Tensor:
        m = self.loc.clone()
        return m.masked_fill((self.df <= 1).unsqueeze(-1).expand_as(m), float("nan"))

    @property
    def variance(self) -> torch.Tensor:
        v = self.scale_tril.pow(2).sum(-1) * (self.df / (self.df - 2)).unsqueeze(-1)
        v = v.masked_fill((self.df <= 2).unsqueeze(-1).expand_as(v), float("inf"))
        return v.masked_fill((self.df <= 1).unsqueeze(-1).expand_as(v), float("nan"))


class OrderedLogistic(Categorical):
    """An ordinal outcome ``0..K`` from a real ``predictor`` (``[*batch]``) and ``K``
    increasing ``cutpoints`` (``[*batch, K]``): ``P(y <= k) = sigmoid(cutpoints[k] - predictor)``.
    ``batch_shape`` is the broadcast of ``predictor.shape`` and ``cutpoints.shape[:-1]``;
    ``event_shape`` is ``()``: a draw is an integer in ``0..K`` of shape ``batch_shape``."""

    arg_constraints = {"predictor": constraints.real, "cutpoints": constraints.independent(constraints.real, 1)}

    def __init__(self, predictor: torch.Tensor, cutpoints: torch.Tensor, validate_args: bool | None = None) -> None:
        predictor = torch.as_tensor(predictor, dtype=cutpoints.dtype, device=cutpoints.device)
        if cutpoints.dim() < 1:
            raise ValueError(f"OrderedLogistic: cutpoints must be [*batch, K]; got shape {tuple(cutpoints.shape)}")
        if validate_args or (validate_args is None and torch.distributions.Distribution._validate_args):
            if cutpoints.size(-1) > 1 and not bool((cutpoints[..., 1:] > cutpoints[..., :-1]).all()):
                raise ValueError(f"OrderedLogistic: cutpoints must be strictly increasing along the last dim; got {cutpoints.tolist()}")
        shape = torch.broadcast_shapes(predictor.shape, cutpoints.shape[:-1])
        self.predictor = predictor.expand(shape)
        self.cutpoints = cutpoints.expand(shape + cutpoints.shape[-1:])
        cdf = torch.sigmoid(self.cutpoints - self.predictor.unsqueeze(-1))
        ones, zeros = cdf.new_ones(shape + (1,)), cdf.new_zeros(shape + (1,))
        probs = torch.cat([cdf, ones], -1) - torch.cat([zeros, cdf], -1)
        super().__init__(probs=probs.clamp_min(torch.finfo(probs.dtype).tiny), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> OrderedLogistic:
        batch_shape = torch.Size(batch_shape)
        return OrderedLogistic(self.predictor.expand(batch_shape), self.cutpoints.expand(batch_shape + self.cutpoints.shape[-1:]),
                               validate_args=self._validate_args)


class ImproperUniform(TorchDistribution):
    """The improper "uniform" over ``support``: ``log_prob`` is 0 everywhere. It cannot be
    sampled: use it for latent sites that a guide, ``condition`` or an initial value fills in.
    ``batch_shape`` and ``event_shape`` are given; ``log_prob`` of a value of shape
    ``sample_shape + batch_shape + event_shape`` is zeros of shape ``sample_shape + batch_shape``."""

    arg_constraints: dict = {}

    def __init__(self, support: constraints.Constraint, batch_shape: Any, event_shape: Any, validate_args: bool | None = None) -> None:
        self._support = support
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self._support

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[: value.dim() - len(self.event_shape)], self.batch_shape)
        return torch.zeros(shape, dtype=value.dtype if value.dtype.is_floating_point else torch.get_default_dtype(), device=value.device)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        raise NotImplementedError(
            "ImproperUniform cannot be sampled (it has no normalised density); give the site a value with a guide, "
            "poutine.condition or an init strategy"
        )

    def expand(self, batch_shape: Any, _instance: Any = None) -> ImproperUniform:
        return ImproperUniform(self._support, batch_shape, self.event_shape, validate_args=self._validate_args)
