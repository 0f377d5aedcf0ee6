"""Every ``torch.distributions`` class with Ember's :class:`TorchDistributionMixin`
(Pyro's ``pyro.distributions.torch``): the same names, the same mathematics, plus
``to_event``, ``mask``, ``expand_by``, ``shape`` and calling to sample."""

from __future__ import annotations

import torch.distributions as _td

from ember.distributions.torch_dist import TorchDistributionMixin

TORCH_NAMES = [
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
for _name in TORCH_NAMES:
    if hasattr(_td, _name):
        _g[_name] = _wrap(_name)
del _g, _name

from ember.distributions.fast import HalfCauchy, Normal  # noqa: E402,F401  (lean log_prob; same math as torch)


class TransformedDistribution(TorchDistributionMixin, _td.TransformedDistribution):  # type: ignore[no-redef]
    __doc__ = _td.TransformedDistribution.__doc__

    def clear_cache(self) -> None:
        """Forget every transform's cached values (Pyro's flow-training loop calls this after
        each step, since the same data tensor is transformed again)."""
        from ember.distributions.transforms.torch_transform import clear_cache

        for t in self.transforms:
            clear_cache(t)

__all__ = [n for n in TORCH_NAMES if n in globals()]
