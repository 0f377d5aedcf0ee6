"""Count distributions Pyro adds to torch's: over-dispersed (GammaPoisson, BetaBinomial,
DirichletMultinomial), zero-inflated, and the "extended" ones whose ``log_prob`` is
``-inf`` (not an error) outside the support."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property, logits_to_probs, probs_to_logits

from ember.distributions import constraints as _constraints
from ember.distributions.torch import Beta, Binomial, Dirichlet, Gamma, NegativeBinomial, Poisson
from ember.distributions.torch_dist import TorchDistribution

__all__ = [
    "BetaBinomial", "DirichletMultinomial", "ExtendedBetaBinomial", "ExtendedBinomial", "GammaPoisson",
    "ZeroInflatedDistribution", "ZeroInflatedNegativeBinomial", "ZeroInflatedPoisson",
]


def _lbeta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def _expand_params(d: Any, new: Any, names: tuple[str, ...], batch_shape: torch.Size) -> Any:
    for name in names:
        setattr(new, name, getattr(d, name).expand(batch_shape))
    return new


class GammaPoisson(TorchDistribution):
    """``Poisson(rate)`` with ``rate ~ Gamma(concentration, rate)`` integrated out (a
    negative binomial): ``P(k) = Γ(k+α)/(Γ(α) k!) · (β/(1+β))^α · (1+β)^-k``.
    Parameters broadcast to the batch shape; values are counts of that shape."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, concentration: Any, rate: Any, validate_args: bool | None = None) -> None:
        self.concentration, self.rate = broadcast_all(concentration, rate)
        super().__init__(self.concentration.shape, validate_args=validate_args)

    @lazy_property
    def _gamma(self) -> Gamma:
        return Gamma(self.concentration, self.rate, validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.poisson(self._gamma.sample(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration, self.rate
        return (torch.lgamma(value + a) - torch.lgamma(a) - torch.lgamma(value + 1)
                + a * torch.log(b) - (value + a) * torch.log1p(b))

    @property
    def mean(self) -> torch.Tensor:
        return self.concentration / self.rate

    @property
    def variance(self) -> torch.Tensor:
        return self.concentration / self.rate.pow(2) * (1 + self.rate)

    def expand(self, batch_shape: Any, _instance: Any = None) -> GammaPoisson:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(GammaPoisson, _instance)
        _expand_params(self, new, ("concentration", "rate"), batch_shape)
        super(GammaPoisson, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class BetaBinomial(TorchDistribution):
    """``Binomial(total_count, p)`` with ``p ~ Beta(concentration1, concentration0)``
    integrated out: ``P(k) = C(n, k) B(k+α, n-k+β) / B(α, β)``."""

    arg_constraints = {
        "concentration1": constraints.positive,
        "concentration0": constraints.positive,
        "total_count": constraints.nonnegative_integer,
    }
    has_enumerate_support = True

    def __init__(self, concentration1: Any, concentration0: Any, total_count: Any = 1, validate_args: bool | None = None) -> None:
        self.concentration1, self.concentration0, self.total_count = broadcast_all(concentration1, concentration0, total_count)
        super().__init__(self.concentration1.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.total_count)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            p = Beta(self.concentration1, self.concentration0, validate_args=False).sample(sample_shape)
            return Binomial(self.total_count.expand(p.shape), p, validate_args=False).sample()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n, a, b = self.total_count, self.concentration1, self.concentration0
        log_choose = torch.lgamma(n + 1) - torch.lgamma(value + 1) - torch.lgamma(n - value + 1)
        return log_choose + _lbeta(value + a, n - value + b) - _lbeta(a, b)

    @property
    def mean(self) -> torch.Tensor:
        return self.total_count * self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def variance(self) -> torch.Tensor:
        a, b, n = self.concentration1, self.concentration0, self.total_count
        s = a + b
        return n * a * b * (s + n) / (s.pow(2) * (s + 1))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        """``[n+1, *batch_shape]`` values ``0..n`` (``total_count`` must be one number across the batch)."""
        n = self.total_count
        if not bool((n == n.reshape(-1)[0]).all()):
            raise NotImplementedError(f"{type(self).__name__}.enumerate_support: total_count must be the same for the whole batch; got {n.unique().tolist()}")
        values = torch.arange(1 + int(n.reshape(-1)[0]), dtype=n.dtype, device=n.device)
        values = values.view((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values

    def expand(self, batch_shape: Any, _instance: Any = None) -> BetaBinomial:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(BetaBinomial, _instance)
        _expand_params(self, new, ("concentration1", "concentration0", "total_count"), batch_shape)
        super(BetaBinomial, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class DirichletMultinomial(TorchDistribution):
    """``Multinomial(total_count, p)`` with ``p ~ Dirichlet(concentration)`` integrated out.
    ``concentration``: ``[*batch, K]``; values are count vectors ``[*batch, K]`` summing to
    ``total_count``. With ``is_sparse=True`` (Pyro's option) zero counts are skipped in ``log_prob``."""

    arg_constraints = {"concentration": constraints.independent(constraints.positive, 1), "total_count": constraints.nonnegative_integer}

    def __init__(self, concentration: torch.Tensor, total_count: Any = 1, is_sparse: bool = False, validate_args: bool | None = None) -> None:
        if not isinstance(concentration, torch.Tensor) or concentration.dim() < 1:
            raise ValueError("DirichletMultinomial: concentration must be a tensor of shape [*batch, K] with K >= 1")
        batch_shape = concentration.shape[:-1]
        if not isinstance(total_count, torch.Tensor):
            total_count = torch.tensor(float(total_count), dtype=concentration.dtype, device=concentration.device)
        batch_shape = torch.broadcast_shapes(batch_shape, total_count.shape)
        self.concentration = concentration.expand(batch_shape + concentration.shape[-1:])
        self.total_count = total_count.expand(batch_shape)
        self.is_sparse = is_sparse
        super().__init__(batch_shape, concentration.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.multinomial(self.total_count)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A Dirichlet draw of the probabilities, then the counts as a chain of binomials
        (so each batch element can have its own ``total_count``): count vectors of shape
        ``sample_shape + batch_shape + (K,)``."""
        with torch.no_grad():
            p = Dirichlet(self.concentration, validate_args=False).sample(sample_shape)
            remaining = self.total_count.expand(p.shape[:-1]).clone()
            left = torch.ones_like(remaining)
            counts = []
            for k in range(p.size(-1) - 1):
                q = (p[..., k] / left).clamp(0, 1).nan_to_num(0.0)
                c = Binomial(remaining, q, validate_args=False).sample()
                counts.append(c)
                remaining = remaining - c
                left = (left - p[..., k]).clamp_min(0)
            counts.append(remaining)
            return torch.stack(counts, -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        alpha = self.concentration
        a0 = alpha.sum(-1)
        n = value.sum(-1)
        terms = torch.lgamma(value + alpha) - torch.lgamma(alpha) - torch.lgamma(value + 1)
        if self.is_sparse:
            terms = torch.where(value > 0, terms, terms.new_zeros(()))
        return torch.lgamma(a0) + torch.lgamma(n + 1) - torch.lgamma(n + a0) + terms.sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.concentration / self.concentration.sum(-1, keepdim=True) * self.total_count.unsqueeze(-1)

    @property
    def variance(self) -> torch.Tensor:
        a0 = self.concentration.sum(-1, keepdim=True)
        p = self.concentration / a0
        n = self.total_count.unsqueeze(-1)
        return n * p * (1 - p) * (n + a0) / (1 + a0)

    def expand(self, batch_shape: Any, _instance: Any = None) -> DirichletMultinomial:
        batch_shape = torch.Size(batch_shape)
        return DirichletMultinomial(self.concentration.expand(batch_shape + self.event_shape), self.total_count.expand(batch_shape),
                                    is_sparse=self.is_sparse, validate_args=self._validate_args)


class ZeroInflatedDistribution(TorchDistribution):
    """A mixture of a point mass at 0 (weight ``gate``) and ``base_dist`` (weight ``1 - gate``).
    Give exactly one of ``gate`` (probabilities) or ``gate_logits``; both broadcast with the
    base's batch shape. ``log P(0) = log(gate + (1-gate) p_base(0))``."""

    arg_constraints = {"gate": constraints.unit_interval, "gate_logits": constraints.real}

    def __init__(self, base_dist: Any, *, gate: Any = None, gate_logits: Any = None, validate_args: bool | None = None) -> None:
        if (gate is None) == (gate_logits is None):
            raise ValueError(f"{type(self).__name__}: give exactly one of gate= or gate_logits=; got gate={gate!r}, gate_logits={gate_logits!r}")
        if base_dist.event_shape:
            raise ValueError(f"{type(self).__name__}: base_dist must be univariate; got event_shape {tuple(base_dist.event_shape)}")
        param = gate if gate is not None else gate_logits
        param = torch.as_tensor(param, dtype=torch.get_default_dtype()) if not isinstance(param, torch.Tensor) else param
        batch_shape = torch.broadcast_shapes(param.shape, base_dist.batch_shape)
        if gate is not None:
            self.gate = param.expand(batch_shape)
        else:
            self.gate_logits = param.expand(batch_shape)
        if base_dist.batch_shape != batch_shape:
            base_dist = base_dist.expand(batch_shape)
        self.base_dist = base_dist
        super().__init__(batch_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.base_dist.support

    @lazy_property
    def gate(self) -> torch.Tensor:  # noqa: F811
        return logits_to_probs(self.gate_logits, is_binary=True)

    @lazy_property
    def gate_logits(self) -> torch.Tensor:  # noqa: F811
        return probs_to_logits(self.gate, is_binary=True)

    def _log_gates(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "gate_logits" in self.__dict__:
            lg = self.gate_logits
            return -F.softplus(-lg), -F.softplus(lg)
        g = self.gate
        return g.log(), (-g).log1p()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_gate, log_1m_gate = self._log_gates()
        base_lp = self.base_dist.log_prob(value)
        zero_lp = torch.logaddexp(log_gate, log_1m_gate + base_lp)
        return torch.where(value == 0, zero_lp, log_1m_gate + base_lp)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            zero = torch.bernoulli(self.gate.expand(shape)).bool()
            x = self.base_dist.sample(sample_shape)
            return torch.where(zero, x.new_zeros(()), x)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.gate) * self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        m = self.base_dist.mean
        return (1 - self.gate) * (self.base_dist.variance + m.pow(2)) - ((1 - self.gate) * m).pow(2)

    def _gate_kwargs(self, batch_shape: torch.Size) -> dict:
        if "gate_logits" in self.__dict__:
            return {"gate_logits": self.gate_logits.expand(batch_shape)}
        return {"gate": self.gate.expand(batch_shape)}

    def expand(self, batch_shape: Any, _instance: Any = None) -> ZeroInflatedDistribution:
        batch_shape = torch.Size(batch_shape)
        return ZeroInflatedDistribution(self.base_dist.expand(batch_shape), validate_args=self._validate_args, **self._gate_kwargs(batch_shape))


class ZeroInflatedPoisson(ZeroInflatedDistribution):
    """``Poisson(rate)`` inflated at 0 by ``gate`` (or ``gate_logits``)."""

    arg_constraints = {"rate": constraints.nonnegative, "gate": constraints.unit_interval, "gate_logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, rate: Any, *, gate: Any = None, gate_logits: Any = None, validate_args: bool | None = None) -> None:
        base = Poisson(rate, validate_args=False)
        super().__init__(base, gate=gate, gate_logits=gate_logits, validate_args=validate_args)

    @property
    def rate(self) -> torch.Tensor:
        return self.base_dist.rate

    def expand(self, batch_shape: Any, _instance: Any = None) -> ZeroInflatedPoisson:
        batch_shape = torch.Size(batch_shape)
        return ZeroInflatedPoisson(self.rate.expand(batch_shape), validate_args=self._validate_args, **self._gate_kwargs(batch_shape))


class ZeroInflatedNegativeBinomial(ZeroInflatedDistribution):
    """``NegativeBinomial(total_count, probs=/logits=)`` inflated at 0 by ``gate`` (or ``gate_logits``).
    ``batch_shape`` is the broadcast shape of the parameters; ``event_shape`` is ``()``."""

    arg_constraints = {
        "total_count": constraints.greater_than_eq(0), "probs": constraints.half_open_interval(0.0, 1.0),
        "logits": constraints.real, "gate": constraints.unit_interval, "gate_logits": constraints.real,
    }
    support = constraints.nonnegative_integer

    def __init__(self, total_count: Any, *, probs: Any = None, logits: Any = None, gate: Any = None, gate_logits: Any = None,
                 validate_args: bool | None = None) -> None:
        base = NegativeBinomial(total_count, probs=probs, logits=logits, validate_args=validate_args)
        super().__init__(base, gate=gate, gate_logits=gate_logits, validate_args=validate_args)

    total_count = property(lambda self: self.base_dist.total_count)
    probs = property(lambda self: self.base_dist.probs)
    logits = property(lambda self: self.base_dist.logits)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ZeroInflatedNegativeBinomial:
        batch_shape = torch.Size(batch_shape)
        return ZeroInflatedNegativeBinomial(self.total_count.expand(batch_shape), logits=self.logits.expand(batch_shape),
                                            validate_args=self._validate_args, **self._gate_kwargs(batch_shape))


class _ImpossibleOutsideCount:
    """``log_prob`` is ``-inf`` for integers outside ``[0, total_count]`` instead of an error."""

    support = _constraints.integer

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The base class's ``log_prob`` inside ``[0, total_count]``, ``-inf`` outside; elementwise:
        ``value`` broadcasts with ``batch_shape`` and the result has the broadcast shape."""
        inside = (value >= 0) & (value <= self.total_count)
        v = torch.where(inside, value, value.new_zeros(()))
        old = self._validate_args
        self._validate_args = False
        try:
            out = super().log_prob(v)  # type: ignore[misc]
        finally:
            self._validate_args = old
        return torch.where(inside, out, out.new_full((), -float("inf")))

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """The same distribution (same class) with batch shape ``batch_shape``."""
        cls = type(self)
        return super().expand(batch_shape, _instance=self._get_checked_instance(cls, _instance))  # type: ignore[misc]


class ExtendedBinomial(_ImpossibleOutsideCount, Binomial):
    """``Binomial`` whose ``log_prob`` is ``-inf`` for integers outside ``[0, total_count]``
    instead of an error (support: all integers)."""

    arg_constraints = {"total_count": constraints.nonnegative_integer, "probs": constraints.unit_interval, "logits": constraints.real}


class ExtendedBetaBinomial(_ImpossibleOutsideCount, BetaBinomial):
    """``BetaBinomial`` whose ``log_prob`` is ``-inf`` for integers outside ``[0, total_count]``
    instead of an error (support: all integers)."""
