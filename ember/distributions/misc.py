"""LogNormalNegativeBinomial, Rejector (rejection sampling as a distribution) and Stable
(Lévy alpha-stable; sampling only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ember.distributions.torch import NegativeBinomial
from ember.distributions.torch_dist import TorchDistribution

__all__ = ["LogNormalNegativeBinomial", "Rejector", "Stable"]


class LogNormalNegativeBinomial(TorchDistribution):
    """``NegativeBinomial(total_count, logits=logits + eps)`` with
    ``eps ~ Normal(0, multiplicative_noise_scale)`` integrated out by Gauss-Hermite
    quadrature of ``num_quad_points`` points. ``mean = total_count exp(logits + s^2/2)``."""

    arg_constraints = {"total_count": constraints.positive, "logits": constraints.real, "multiplicative_noise_scale": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, total_count: Any, logits: Any, multiplicative_noise_scale: Any, *, num_quad_points: int = 8,
                 validate_args: bool | None = None) -> None:
        if num_quad_points < 1:
            raise ValueError(f"LogNormalNegativeBinomial: num_quad_points must be >= 1; got {num_quad_points}")
        self.total_count, self.logits, self.multiplicative_noise_scale = broadcast_all(total_count, logits, multiplicative_noise_scale)
        self.num_quad_points = num_quad_points
        x, w = np.polynomial.hermite.hermgauss(num_quad_points)
        self._quad_x = torch.tensor(x, dtype=self.logits.dtype, device=self.logits.device) * math.sqrt(2)
        self._quad_logw = torch.tensor(np.log(w / math.sqrt(math.pi)), dtype=self.logits.dtype, device=self.logits.device)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        s = self.multiplicative_noise_scale.unsqueeze(-1)
        logits = self.logits.unsqueeze(-1) + s * self._quad_x
        nb = NegativeBinomial(self.total_count.unsqueeze(-1), logits=logits, validate_args=False)
        return torch.logsumexp(nb.log_prob(value.unsqueeze(-1)) + self._quad_logw, -1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            eps = torch.randn(shape, dtype=self.logits.dtype, device=self.logits.device) * self.multiplicative_noise_scale
            return NegativeBinomial(self.total_count.expand(shape), logits=self.logits + eps, validate_args=False).sample()

    @property
    def mean(self) -> torch.Tensor:
        return self.total_count * torch.exp(self.logits + 0.5 * self.multiplicative_noise_scale.pow(2))

    @property
    def variance(self) -> torch.Tensor:
        r, l, s2 = self.total_count, self.logits, self.multiplicative_noise_scale.pow(2)
        return r * torch.exp(l + s2 / 2) + r * torch.exp(2 * l + 2 * s2) + r.pow(2) * (torch.exp(2 * l + 2 * s2) - torch.exp(2 * l + s2))

    def expand(self, batch_shape: Any, _instance: Any = None) -> LogNormalNegativeBinomial:
        batch_shape = torch.Size(batch_shape)
        return LogNormalNegativeBinomial(self.total_count.expand(batch_shape), self.logits.expand(batch_shape),
                                         self.multiplicative_noise_scale.expand(batch_shape), num_quad_points=self.num_quad_points,
                                         validate_args=self._validate_args)


class Rejector(TorchDistribution):
    """The distribution of ``propose`` draws accepted with probability
    ``exp(log_prob_accept(x))``: ``log p(x) = propose.log_prob(x) + log_prob_accept(x) - log_scale``
    where ``log_scale`` is the log of the total acceptance probability (``[*batch]`` or a number).
    ``sample`` draws until every element is accepted (``max_tries`` rounds at most)."""

    arg_constraints: dict = {}
    max_tries = 10000

    def __init__(self, propose: Any, log_prob_accept: Callable[[torch.Tensor], torch.Tensor], log_scale: Any, *,
                 batch_shape: Any = None, event_shape: Any = None, validate_args: bool | None = None) -> None:
        self.propose = propose
        self.log_prob_accept = log_prob_accept
        self.log_scale = log_scale
        batch_shape = propose.batch_shape if batch_shape is None else torch.Size(batch_shape)
        event_shape = propose.event_shape if event_shape is None else torch.Size(event_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.propose.support

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return False

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.propose.log_prob(value) + self.log_prob_accept(value) - self.log_scale

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        batch = shape[: len(shape) - len(self.event_shape)]
        with torch.no_grad():
            x = None
            done = None
            for _ in range(self.max_tries):
                prop = self.propose.sample(sample_shape)
                acc = torch.rand(batch, dtype=prop.dtype if prop.dtype.is_floating_point else torch.get_default_dtype(),
                                 device=prop.device).log() < self.log_prob_accept(prop)
                if x is None:
                    x, done = prop.clone(), acc
                else:
                    new = acc & ~done
                    x = torch.where(new.reshape(new.shape + (1,) * len(self.event_shape)), prop, x)
                    done = done | acc
                if bool(done.all()):
                    return x
            raise RuntimeError(f"Rejector.sample: {int((~done).sum())} draws not accepted after {self.max_tries} rounds; is log_prob_accept ever > -inf?")

    def expand(self, batch_shape: Any, _instance: Any = None) -> Rejector:
        batch_shape = torch.Size(batch_shape)
        ls = self.log_scale.expand(batch_shape) if isinstance(self.log_scale, torch.Tensor) else self.log_scale
        return Rejector(self.propose.expand(batch_shape), self.log_prob_accept, ls, validate_args=self._validate_args)


class Stable(TorchDistribution):
    """Lévy alpha-stable with ``stability`` (alpha in (0, 2]), ``skew`` (beta in [-1, 1]),
    ``scale`` and ``loc``, in Nolan's ``coords="S0"`` (continuous in alpha; default) or
    ``"S1"``. Reparameterized sampling by Chambers-Mallows-Stuck. ``log_prob`` has no closed
    form and is not implemented (Pyro reparameterizes Stable sites away, ``StableReparam``)."""

    arg_constraints = {"stability": constraints.interval(0, 2), "skew": constraints.interval(-1, 1), "scale": constraints.positive, "loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, stability: Any, skew: Any, scale: Any = 1.0, loc: Any = 0.0, coords: str = "S0", validate_args: bool | None = None) -> None:
        if coords not in ("S0", "S1"):
            raise ValueError(f"Stable: coords must be 'S0' or 'S1'; got coords={coords!r}")
        self.stability, self.skew, self.scale, self.loc = broadcast_all(stability, skew, scale, loc)
        self.coords = coords
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Stable.log_prob has no closed form and is not implemented; reparameterize the site "
                                  "(Pyro's StableReparam) or use it only for sampling")

    def _standard_s1(self, shape: torch.Size) -> torch.Tensor:
        """Chambers-Mallows-Stuck draw of a standard (scale 1, loc 0) S1 stable."""
        a, b = self.stability, self.skew
        eps = torch.finfo(a.dtype).eps
        u = (torch.rand(shape, dtype=a.dtype, device=a.device) - 0.5) * math.pi * (1 - 2 * eps)
        w = torch.empty(shape, dtype=a.dtype, device=a.device).exponential_().clamp_min(eps)
        near_one = (a - 1).abs() < 1e-6
        a_ = torch.where(near_one, torch.full_like(a, 0.5), a)  # keep the alpha != 1 branch finite
        t = b * torch.tan(math.pi * a_ / 2)
        B = torch.atan(t) / a_
        S = (1 + t.pow(2)).pow(1 / (2 * a_))
        x = S * torch.sin(a_ * (u + B)) / torch.cos(u).pow(1 / a_) * (torch.cos(u - a_ * (u + B)) / w).pow((1 - a_) / a_)
        half_pi_bu = math.pi / 2 + b * u
        x1 = (2 / math.pi) * (half_pi_bu * torch.tan(u) - b * torch.log((math.pi / 2) * w * torch.cos(u) / half_pi_bu))
        return torch.where(near_one, x1, x)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        x = self._standard_s1(shape)
        a, b, g, d = self.stability, self.skew, self.scale, self.loc
        near_one = (a - 1).abs() < 1e-6
        shift = torch.where(near_one, torch.zeros_like(a), b * torch.tan(math.pi * torch.where(near_one, torch.full_like(a, 0.5), a) / 2))
        if self.coords == "S0":
            return g * (x - shift) + d
        return g * x + d + torch.where(near_one, (2 / math.pi) * b * g * g.log(), torch.zeros_like(g))

    @property
    def mean(self) -> torch.Tensor:
        a = self.stability
        m = self.loc if self.coords == "S1" else self.loc - self.skew * self.scale * torch.tan(math.pi * a / 2)
        return torch.where(a > 1, m, torch.full_like(m, float("nan")))

    @property
    def variance(self) -> torch.Tensor:
        return torch.where(self.stability == 2, 2 * self.scale.pow(2), torch.full_like(self.scale, float("inf")))

    def expand(self, batch_shape: Any, _instance: Any = None) -> Stable:
        batch_shape = torch.Size(batch_shape)
        return Stable(self.stability.expand(batch_shape), self.skew.expand(batch_shape), self.scale.expand(batch_shape),
                      self.loc.expand(batch_shape), coords=self.coords, validate_args=self._validate_args)
