"""Every ``torch.distributions`` class with Ember's :class:`TorchDistributionMixin`
(Pyro's ``pyro.distributions.torch``): the same names, the same mathematics, plus
``to_event``, ``mask``, ``expand_by``, ``shape`` and calling to sample."""

from __future__ import annotations

from typing import Any

import torch
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


# The shape of each class's parameters, batch and event, appended to torch's docstring (a sample
# has shape ``sample_shape + batch_shape + event_shape``, log_prob ``sample_shape + batch_shape``).
_SCALAR = ("``batch_shape`` is the broadcast shape of {}; ``event_shape`` is ``()``, so a draw has the "
           "parameters' broadcast shape and ``log_prob`` returns one value per element.")
_SHAPES = {
    "Bernoulli": _SCALAR.format("``probs`` (or ``logits``)"),
    "Beta": _SCALAR.format("``concentration1`` and ``concentration0``"),
    "Binomial": _SCALAR.format("``total_count`` and ``probs`` (or ``logits``)"),
    "Categorical": ("``probs`` (or ``logits``) has shape ``batch_shape + (K,)`` over ``K`` categories; "
                    "``event_shape`` is ``()``: a draw is an integer index of shape ``batch_shape``."),
    "Cauchy": _SCALAR.format("``loc`` and ``scale``"),
    "Chi2": _SCALAR.format("``df``"),
    "ContinuousBernoulli": _SCALAR.format("``probs`` (or ``logits``)"),
    "Dirichlet": ("``concentration`` has shape ``batch_shape + (K,)``; ``event_shape`` is ``(K,)``: a draw is "
                  "a probability vector on the last dim and ``log_prob`` consumes that dim."),
    "Exponential": _SCALAR.format("``rate``"),
    "FisherSnedecor": _SCALAR.format("``df1`` and ``df2``"),
    "Gamma": _SCALAR.format("``concentration`` and ``rate``"),
    "GeneralizedPareto": _SCALAR.format("``loc``, ``scale`` and ``concentration``"),
    "Geometric": _SCALAR.format("``probs`` (or ``logits``)"),
    "Gumbel": _SCALAR.format("``loc`` and ``scale``"),
    "HalfCauchy": _SCALAR.format("``scale``"),
    "HalfNormal": _SCALAR.format("``scale``"),
    "Independent": ("From ``base_distribution`` with batch shape ``B + R`` (``R`` its rightmost "
                    "``reinterpreted_batch_ndims`` dims) and event shape ``E``: ``batch_shape`` is ``B`` and "
                    "``event_shape`` is ``R + E``; ``log_prob`` sums over ``R``. Usually built by ``.to_event(n)``."),
    "InverseGamma": _SCALAR.format("``concentration`` and ``rate``"),
    "Kumaraswamy": _SCALAR.format("``concentration1`` and ``concentration0``"),
    "LKJCholesky": ("``batch_shape`` is the shape of ``concentration``; ``event_shape`` is ``(dim, dim)``: a draw "
                    "is a lower Cholesky factor of a ``dim x dim`` correlation matrix."),
    "Laplace": _SCALAR.format("``loc`` and ``scale``"),
    "LogNormal": _SCALAR.format("``loc`` and ``scale``"),
    "LogisticNormal": ("``loc`` and ``scale`` broadcast to ``batch_shape + (K - 1,)``; ``event_shape`` is ``(K,)``: "
                       "a draw is a probability vector with one more entry than ``loc``."),
    "LowRankMultivariateNormal": ("``loc`` has shape ``batch_shape + (D,)``, ``cov_factor`` ``batch_shape + (D, R)`` "
                                  "and ``cov_diag`` ``batch_shape + (D,)`` (each broadcasting); ``event_shape`` is ``(D,)``."),
    "MixtureSameFamily": ("``mixture_distribution`` is a ``Categorical`` of batch shape ``batch_shape`` over ``K`` "
                          "components; ``component_distribution`` has batch shape ``batch_shape + (K,)`` and event "
                          "shape ``E``; the mixture has ``batch_shape`` and ``event_shape`` ``E``."),
    "Multinomial": ("``probs`` (or ``logits``) has shape ``batch_shape + (K,)``; ``event_shape`` is ``(K,)``: a draw "
                    "is a vector of counts summing to ``total_count``."),
    "MultivariateNormal": ("``loc`` has shape ``batch_shape + (D,)`` and ``covariance_matrix`` / ``precision_matrix`` / "
                           "``scale_tril`` ``batch_shape + (D, D)`` (each broadcasting); ``event_shape`` is ``(D,)``, so "
                           "``log_prob`` of a ``(..., D)`` value has shape ``(...)``."),
    "NegativeBinomial": _SCALAR.format("``total_count`` and ``probs`` (or ``logits``)"),
    "Normal": _SCALAR.format("``loc`` and ``scale``"),
    "OneHotCategorical": ("``probs`` (or ``logits``) has shape ``batch_shape + (K,)``; ``event_shape`` is ``(K,)``: a "
                          "draw is a one-hot vector."),
    "OneHotCategoricalStraightThrough": ("``probs`` (or ``logits``) has shape ``batch_shape + (K,)``; ``event_shape`` "
                                         "is ``(K,)``: a draw is a one-hot vector, with straight-through gradients."),
    "Pareto": _SCALAR.format("``scale`` and ``alpha``"),
    "RelaxedBernoulli": _SCALAR.format("``temperature`` and ``probs`` (or ``logits``)"),
    "RelaxedOneHotCategorical": ("``probs`` (or ``logits``) has shape ``batch_shape + (K,)``; ``event_shape`` is "
                                 "``(K,)``: a draw is a point of the simplex."),
    "StudentT": _SCALAR.format("``df``, ``loc`` and ``scale``"),
    "Poisson": _SCALAR.format("``rate``"),
    "Uniform": _SCALAR.format("``low`` and ``high``"),
    "VonMises": _SCALAR.format("``loc`` and ``concentration``"),
    "Weibull": _SCALAR.format("``scale`` and ``concentration``"),
    "Wishart": ("the scale matrix (``covariance_matrix``, ``precision_matrix`` or ``scale_tril``) has shape "
                "``(..., D, D)``; ``batch_shape`` is the broadcast of ``df.shape`` and its leading dims; "
                "``event_shape`` is ``(D, D)``."),
    "TransformedDistribution": ("the event takes as many rightmost dims as the base's event or the transforms' "
                                "``event_dim`` need, whichever is more (a ``Normal`` of batch shape ``(N, D)`` through "
                                "a flow over vectors has batch shape ``(N,)`` and event shape ``(D,)``), sized as the "
                                "transforms map them; ``batch_shape`` is what remains on the left."),
}


def _wrap(name: str) -> type:
    base = getattr(_td, name)
    doc = (base.__doc__ or "") + ("\n\n    Shapes: " + _SHAPES[name] if name in _SHAPES else "")
    return type(name, (TorchDistributionMixin, base), {"__module__": __name__, "__doc__": doc, "__qualname__": name})


_g = globals()
for _name in TORCH_NAMES:
    if hasattr(_td, _name):
        _g[_name] = _wrap(_name)
del _g, _name

from ember.distributions.fast import Bernoulli, HalfCauchy, HalfNormal, Normal  # noqa: E402,F401  (lean log_prob; same math as torch)


class TransformedDistribution(TorchDistributionMixin, _td.TransformedDistribution):  # type: ignore[no-redef]
    __doc__ = _td.TransformedDistribution.__doc__ + "\n\n    Shapes: " + _SHAPES["TransformedDistribution"]

    def clear_cache(self) -> None:
        """Forget every transform's cached values (Pyro's flow-training loop calls this after
        each step, since the same data tensor is transformed again)."""
        from ember.distributions.transforms.torch_transform import clear_cache

        for t in self.transforms:
            clear_cache(t)


class Poisson(TorchDistributionMixin, _td.Poisson):  # type: ignore[no-redef]
    __doc__ = _td.Poisson.__doc__ + (
        "\n\n    ``is_sparse=True`` (Pyro's keyword) computes ``log_prob`` only where the value is nonzero "
        "(``-rate`` elsewhere): the same numbers, cheaper for mostly-zero counts."
        "\n\n    Shapes: " + _SHAPES["Poisson"])

    def __init__(self, rate: Any, *, is_sparse: bool = False, validate_args: bool | None = None) -> None:
        self.is_sparse = bool(is_sparse)
        super().__init__(rate, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Poisson:
        """The same distribution with batch shape ``batch_shape`` (``rate`` expanded to it)."""
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new = super().expand(batch_shape, _instance=new)
        new.is_sparse = self.is_sparse
        return new

    def log_prob(self, value: Any) -> Any:
        if not self.is_sparse:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        rate, value = torch.broadcast_tensors(self.rate, torch.as_tensor(value, dtype=self.rate.dtype))
        nonzero = value > 0
        r, v = rate[nonzero], value[nonzero]
        return torch.zeros_like(rate).sub(rate).index_put((nonzero,), v * r.log() - (v + 1).lgamma(), accumulate=True)


__all__ = [n for n in TORCH_NAMES if n in globals()]
