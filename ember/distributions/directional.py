"""Directional distributions Pyro adds: on the sphere (VonMises3D, ProjectedNormal) and on
the torus (SineBivariateVonMises, SineSkewed)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ember.distributions import constraints as _constraints
from ember.distributions.torch import VonMises
from ember.distributions.torch_dist import TorchDistribution

__all__ = ["ProjectedNormal", "SineBivariateVonMises", "SineSkewed", "VonMises3D"]

_LOG_2PI = math.log(2 * math.pi)


def _householder_to(mu: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Map ``v`` (drawn around the last axis ``e_d``) to vectors drawn around ``mu``
    (unit, ``[..., d]``) by the reflection that swaps ``e_d`` and ``mu``."""
    e = torch.zeros_like(mu)
    e[..., -1] = 1
    u = e - mu
    norm2 = u.pow(2).sum(-1, keepdim=True)
    safe = norm2 > 1e-12
    u = torch.where(safe, u / norm2.clamp_min(1e-12).sqrt(), torch.zeros_like(u))
    return v - 2 * (v * u).sum(-1, keepdim=True) * u


class VonMises3D(TorchDistribution):
    """The von Mises-Fisher distribution on the unit sphere in 3-D:
    ``p(x) ∝ exp(concentration · x)``. ``concentration``: ``[*batch, 3]`` (direction times
    kappa = its norm). ``log C(kappa) = log(4 pi sinh(kappa) / kappa)``. Sampled with
    Wood's (1994) exact method."""

    arg_constraints = {"concentration": constraints.real_vector}
    support = _constraints.sphere

    def __init__(self, concentration: torch.Tensor, validate_args: bool | None = None) -> None:
        if concentration.dim() < 1 or concentration.size(-1) != 3:
            raise ValueError(f"VonMises3D: concentration must be [*batch, 3]; got shape {tuple(concentration.shape)}")
        self.concentration = concentration
        super().__init__(concentration.shape[:-1], concentration.shape[-1:], validate_args=validate_args)

    def _kappa(self) -> torch.Tensor:
        return self.concentration.norm(dim=-1)

    def log_normalizer(self) -> torch.Tensor:
        """``log C(kappa)``, one value per direction: shape ``batch_shape``."""
        k = self._kappa()
        # log(4 pi sinh k / k) = log(2 pi) + k + log1p(-exp(-2k)) - log k
        return _LOG_2PI + k + torch.log(-torch.expm1(-2 * k)) - k.log()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (self.concentration * value).sum(-1) - self.log_normalizer()

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = self._kappa().expand(shape[:-1])
            mu = (self.concentration / self._kappa().unsqueeze(-1)).expand(shape)
            u = torch.rand(shape[:-1], dtype=k.dtype, device=k.device).clamp_min(torch.finfo(k.dtype).tiny)
            w = 1 + torch.log(u + (1 - u) * torch.exp(-2 * k)) / k  # cos of the angle to the mean direction
            w = w.clamp(-1, 1)
            phi = 2 * math.pi * torch.rand_like(w)
            r = torch.sqrt((1 - w.pow(2)).clamp_min(0))
            v = torch.stack([r * torch.cos(phi), r * torch.sin(phi), w], -1)
            return _householder_to(mu, v)

    @property
    def mean(self) -> torch.Tensor:
        k = self._kappa()
        a = 1 / torch.tanh(k) - 1 / k
        return self.concentration / k.unsqueeze(-1) * a.unsqueeze(-1)

    def expand(self, batch_shape: Any, _instance: Any = None) -> VonMises3D:
        batch_shape = torch.Size(batch_shape)
        return VonMises3D(self.concentration.expand(batch_shape + (3,)), validate_args=self._validate_args)


class ProjectedNormal(TorchDistribution):
    """The direction ``x / |x|`` of ``x ~ Normal(concentration, I)`` (``concentration``:
    ``[*batch, d]``, ``d >= 2``). Reparameterized. ``log_prob`` is in closed form through the
    normal CDF and a recurrence in ``d`` (it loses precision for ``mu · x`` far below 0, where the
    density is tiny)."""

    arg_constraints = {"concentration": constraints.real_vector}
    support = _constraints.sphere
    has_rsample = True

    def __init__(self, concentration: torch.Tensor, validate_args: bool | None = None) -> None:
        if concentration.dim() < 1 or concentration.size(-1) < 2:
            raise ValueError(f"ProjectedNormal: concentration must be [*batch, d] with d >= 2; got shape {tuple(concentration.shape)}")
        self.concentration = concentration
        super().__init__(concentration.shape[:-1], concentration.shape[-1:], validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        x = self.concentration + torch.randn(shape, dtype=self.concentration.dtype, device=self.concentration.device)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(x) = -d/2 log 2pi - |mu|^2/2 + log ∫_0^inf r^(d-1) exp(-r^2/2 + r t) dr``, ``t = mu·x``,
        for unit vectors ``value`` of shape ``sample_shape + batch_shape + (d,)``: shape ``sample_shape + batch_shape``."""
        if self._validate_args:
            self._validate_sample(value)
        d = self.event_shape[0]
        mu = self.concentration
        t = (mu * value).sum(-1)
        # I_1 = ∫ exp(-r^2/2 + r t) dr = sqrt(2 pi) exp(t^2/2) Phi(t); by parts
        # I_{k+1} = t I_k + (k - 1) I_{k-1} with I_2 = 1 + t I_1. With J_k = I_k / I_1 (no overflow):
        log_i1 = 0.5 * _LOG_2PI + 0.5 * t.pow(2) + torch.special.log_ndtr(t)
        j_prev, j = torch.ones_like(t), torch.exp(-log_i1) + t
        for k in range(2, d):
            j_prev, j = j, t * j + (k - 1) * j_prev
        log_int = log_i1 + torch.log(j)
        return -0.5 * d * _LOG_2PI - 0.5 * mu.pow(2).sum(-1) + log_int

    @property
    def mean(self) -> torch.Tensor:
        """The centroid on the sphere, ``concentration / |concentration|`` (``[*batch, d]``), as
        Pyro defines it (the point minimizing the expected squared geodesic distance); a zero
        concentration gives ``(1, 0, ..., 0)``."""
        return _safe_normalize(self.concentration)

    @property
    def mode(self) -> torch.Tensor:
        """``concentration / |concentration|`` (``[*batch, d]``), ``(1, 0, ..., 0)`` for zero."""
        return _safe_normalize(self.concentration)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ProjectedNormal:
        batch_shape = torch.Size(batch_shape)
        return ProjectedNormal(self.concentration.expand(batch_shape + self.event_shape), validate_args=self._validate_args)


def _safe_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` along the last dim, with the zero vector sent to ``(1, 0, ..., 0)``."""
    norm = x.norm(dim=-1, keepdim=True)
    first = torch.zeros_like(x)
    first[..., 0] = 1
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), first)


def _log_bessel_i(order: torch.Tensor, x: torch.Tensor, terms: int = 120) -> torch.Tensor:
    """``log I_order(x)`` for integer orders ``>= 0`` by its power series (``terms`` terms;
    accurate for ``x`` up to about ``terms / 2``)."""
    k = torch.arange(terms, dtype=x.dtype, device=x.device)
    order, x = order.unsqueeze(-1), x.unsqueeze(-1)
    logs = (2 * k + order) * torch.log(x / 2) - torch.lgamma(k + 1) - torch.lgamma(k + order + 1)
    return torch.logsumexp(logs, -1)


class SineBivariateVonMises(TorchDistribution):
    """A distribution of two angles ``(phi, psi)`` on the torus (Singh et al. 2002):
    ``p ∝ exp(k1 cos(phi - mu) + k2 cos(psi - nu) + rho sin(phi - mu) sin(psi - nu))``.
    Give ``correlation`` (rho) or ``weighted_correlation`` (``w`` in [0, 1], ``rho = w sqrt(k1 k2)``).
    The normaliser is the series ``4 pi^2 sum_m C(2m, m) (rho^2 / (4 k1 k2))^m I_m(k1) I_m(k2)``
    (``max_terms`` terms); sampling draws ``phi`` from its marginal by rejection from a
    von Mises proposal, then ``psi | phi`` (a von Mises) exactly. Event shape ``[2]``."""

    arg_constraints = {
        "phi_loc": constraints.real, "psi_loc": constraints.real, "phi_concentration": constraints.positive,
        "psi_concentration": constraints.positive, "correlation": constraints.real,
    }
    support = constraints.independent(constraints.interval(-math.pi, math.pi), 1)
    max_sample_iter = 1000

    def __init__(self, phi_loc: Any, psi_loc: Any, phi_concentration: Any, psi_concentration: Any, correlation: Any = None,
                 weighted_correlation: Any = None, validate_args: bool | None = None) -> None:
        if (correlation is None) == (weighted_correlation is None):
            raise ValueError("SineBivariateVonMises: give exactly one of correlation= or weighted_correlation=")
        if weighted_correlation is not None:
            wc = torch.as_tensor(weighted_correlation, dtype=torch.get_default_dtype()) if not isinstance(weighted_correlation, torch.Tensor) else weighted_correlation
            if bool(((wc < 0) | (wc > 1)).any()):
                raise ValueError(f"SineBivariateVonMises: weighted_correlation must be in [0, 1]; got {wc.tolist()}")
            k1, k2 = broadcast_all(phi_concentration, psi_concentration)
            correlation = wc * (k1 * k2).sqrt()
        self.phi_loc, self.psi_loc, self.phi_concentration, self.psi_concentration, self.correlation = broadcast_all(
            phi_loc, psi_loc, phi_concentration, psi_concentration, correlation
        )
        super().__init__(self.phi_loc.shape, torch.Size([2]), validate_args=validate_args)

    @property
    def norm_const(self) -> torch.Tensor:
        """``log`` of the normaliser (shape ``batch_shape``)."""
        k1, k2, rho = self.phi_concentration, self.psi_concentration, self.correlation
        m = torch.arange(50, dtype=k1.dtype, device=k1.device).view((-1,) + (1,) * k1.dim())
        ratio = rho.pow(2) / (4 * k1 * k2)
        log_binom = torch.lgamma(2 * m + 1) - 2 * torch.lgamma(m + 1)
        log_ratio = torch.where(ratio > 0, m * ratio.clamp_min(torch.finfo(k1.dtype).tiny).log(), torch.where(m == 0, 0.0, -math.inf))
        terms = log_binom + log_ratio + _log_bessel_i(m.expand((-1,) + k1.shape), k1.expand((50,) + k1.shape)) \
            + _log_bessel_i(m.expand((-1,) + k2.shape), k2.expand((50,) + k2.shape))
        return 2 * _LOG_2PI + torch.logsumexp(terms, 0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b = value[..., 0] - self.phi_loc, value[..., 1] - self.psi_loc
        return (self.phi_concentration * torch.cos(a) + self.psi_concentration * torch.cos(b)
                + self.correlation * torch.sin(a) * torch.sin(b) - self.norm_const)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():
            k1, k2, rho = (t.expand(shape) for t in (self.phi_concentration, self.psi_concentration, self.correlation))
            mu, nu = self.phi_loc.expand(shape), self.psi_loc.expand(shape)
            bound = torch.sqrt(k2.pow(2) + rho.pow(2))
            a = torch.zeros(shape, dtype=k1.dtype, device=k1.device)
            todo = torch.ones(shape, dtype=torch.bool, device=k1.device)
            for _ in range(self.max_sample_iter):
                prop = VonMises(torch.zeros_like(k1), k1, validate_args=False).sample()
                b = torch.sqrt(k2.pow(2) + rho.pow(2) * torch.sin(prop).pow(2))
                # accept with I0(b) / I0(bound) (<= 1), computed with the scaled i0e
                log_acc = torch.log(torch.special.i0e(b)) + b - torch.log(torch.special.i0e(bound)) - bound
                acc = todo & (torch.rand_like(k1).log() < log_acc)
                a = torch.where(acc, prop, a)
                todo = todo & ~acc
                if not bool(todo.any()):
                    break
            else:
                raise RuntimeError(f"SineBivariateVonMises.sample: {int(todo.sum())} draws not accepted after {self.max_sample_iter} rounds")
            s = torch.sin(a)
            psi_mode = torch.atan2(rho * s, k2)
            psi_conc = torch.sqrt(k2.pow(2) + rho.pow(2) * s.pow(2))
            bb = VonMises(psi_mode, psi_conc, validate_args=False).sample()
            phi = torch.remainder(a + mu + math.pi, 2 * math.pi) - math.pi
            psi = torch.remainder(bb + nu + math.pi, 2 * math.pi) - math.pi
            return torch.stack([phi, psi], -1)

    @property
    def mean(self) -> torch.Tensor:
        """The circular means (the locations)."""
        return torch.stack([self.phi_loc, self.psi_loc], -1)

    def expand(self, batch_shape: Any, _instance: Any = None) -> SineBivariateVonMises:
        batch_shape = torch.Size(batch_shape)
        return SineBivariateVonMises(self.phi_loc.expand(batch_shape), self.psi_loc.expand(batch_shape),
                                     self.phi_concentration.expand(batch_shape), self.psi_concentration.expand(batch_shape),
                                     correlation=self.correlation.expand(batch_shape), validate_args=self._validate_args)


class SineSkewed(TorchDistribution):
    """Sine-skewing (Ameijeiras-Alonso & Ley 2022) of a distribution on the torus that is
    symmetric about its ``mean`` (``[*batch, d]``, angles in ``[-pi, pi)``):
    ``p(x) = base(x) (1 + sum_i skewness_i sin(x_i - mean_i))`` with ``sum |skewness| <= 1``.
    Sampled by reflecting a base draw about the mean with the right probability."""

    arg_constraints = {"skewness": constraints.independent(constraints.interval(-1.0, 1.0), 1)}
    support = constraints.independent(constraints.interval(-math.pi, math.pi), 1)

    def __init__(self, base_dist: Any, skewness: torch.Tensor, validate_args: bool | None = None) -> None:
        if len(base_dist.event_shape) != 1 or skewness.shape[-1:] != base_dist.event_shape:
            raise ValueError(
                f"SineSkewed: base_dist must have event_shape [d] and skewness [*batch, d]; got {tuple(base_dist.event_shape)} and {tuple(skewness.shape)}"
            )
        if bool((skewness.abs().sum(-1) > 1 + 1e-6).any()):
            raise ValueError(f"SineSkewed: the total |skewness| along the event must be <= 1; got sums {skewness.abs().sum(-1).tolist()}")
        batch_shape = torch.broadcast_shapes(base_dist.batch_shape, skewness.shape[:-1])
        self.base_dist = base_dist.expand(batch_shape) if base_dist.batch_shape != batch_shape else base_dist
        self.skewness = skewness.expand(batch_shape + skewness.shape[-1:])
        super().__init__(batch_shape, base_dist.event_shape, validate_args=validate_args)

    def _center(self) -> torch.Tensor:
        return self.base_dist.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        skew = (self.skewness * torch.sin(value - self._center())).sum(-1)
        return self.base_dist.log_prob(value) + torch.log1p(skew)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            y = self.base_dist.sample(sample_shape)
            mu = self._center()
            keep_p = (1 + (self.skewness * torch.sin(y - mu)).sum(-1)) / 2
            keep = torch.rand_like(keep_p) < keep_p
            reflected = torch.remainder(2 * mu - y + math.pi, 2 * math.pi) - math.pi
            return torch.where(keep.unsqueeze(-1), y, reflected)

    def expand(self, batch_shape: Any, _instance: Any = None) -> SineSkewed:
        batch_shape = torch.Size(batch_shape)
        return SineSkewed(self.base_dist.expand(batch_shape), self.skewness.expand(batch_shape + self.event_shape), validate_args=self._validate_args)
