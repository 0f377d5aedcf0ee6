"""Distributions: every ``torch.distributions`` class with Ember's extensions
(``to_event``/``independent``, ``mask``, ``expand_by``, ``shape``, calling to sample),
plus :class:`Delta`, :class:`Unit` and :class:`MaskedDistribution`."""

from __future__ import annotations

import torch.distributions as _td
from torch.distributions import biject_to, constraints, kl_divergence, register_kl, transform_to, transforms

from ember.distributions.special import Delta, Unit
from ember.distributions.torch_dist import MaskedDistribution, TorchDistribution, TorchDistributionMixin

_TORCH_NAMES = [
    "Bernoulli", "Beta", "Binomial", "Categorical", "Cauchy", "Chi2", "ContinuousBernoulli", "Dirichlet",
    "Exponential", "FisherSnedecor", "Gamma", "GeneralizedPareto", "Geometric", "Gumbel", "HalfCauchy",
    "HalfNormal", "Independent", "InverseGamma", "Kumaraswamy", "LKJCholesky", "Laplace", "LogNormal",
    "LogisticNormal", "LowRankMultivariateNormal", "MixtureSameFamily", "Multinomial", "MultivariateNormal",
    "NegativeBinomial", "Normal", "OneHotCategorical", "OneHotCategoricalStraightThrough", "Pareto",
    "RelaxedBernoulli", "RelaxedOneHotCategorical", "StudentT", "Poisson", "Uniform", "VonMises", "Weibull",
    "Wishart", "TransformedDistribution",
]


def _wrap(name: str) -> type:
    base = getattr(_td, name)
    return type(name, (TorchDistributionMixin, base), {"__module__": __name__, "__doc__": base.__doc__, "__qualname__": name})


_g = globals()
for _name in _TORCH_NAMES:
    if hasattr(_td, _name):
        _g[_name] = _wrap(_name)
del _g, _name

from ember.distributions.fast import HalfCauchy, Normal  # noqa: E402,F401  (lean log_prob; same math as torch)

Distribution = _td.Distribution


def __getattr__(name: str) -> type:
    # Empirical lives with importance sampling (it needs the inference code); Pyro exports it here
    if name == "Empirical":
        from ember.infer.importance import Empirical

        return Empirical
    raise AttributeError(f"module 'ember.distributions' has no attribute {name!r}")


def enable_validation(is_validate: bool = True) -> None:
    """Switch torch's argument/support validation of distributions on or off."""
    _td.Distribution.set_default_validate_args(bool(is_validate))


def is_validation_enabled() -> bool:
    return bool(_td.Distribution._validate_args)


__all__ = _TORCH_NAMES + [
    "Delta", "Distribution", "Empirical", "MaskedDistribution", "TorchDistribution", "TorchDistributionMixin", "Unit",
    "biject_to", "constraints", "enable_validation", "is_validation_enabled", "kl_divergence", "register_kl",
    "transform_to", "transforms",
]
