"""Distributions: every ``torch.distributions`` class with Ember's extensions
(``to_event``/``independent``, ``mask``, ``expand_by``, ``shape``, calling to sample),
plus :class:`Delta`, :class:`Unit`, :class:`MaskedDistribution`, :class:`Empirical`
and the distributions Pyro adds to torch's.

Layout (Pyro's paths): ``ember.distributions.torch`` (the wrapped torch classes),
``.constraints``, ``.transforms`` (with the flows), ``.util``, ``.testing.fakes``.
This package imports nothing above it (``runtime`` only), so ``ember.infer`` and the
rest can build on it.

Shapes: every distribution has a ``batch_shape`` (independent, differently parameterized copies)
and an ``event_shape`` (the shape of one draw). ``sample(sample_shape)`` returns a tensor of shape
``sample_shape + batch_shape + event_shape`` and ``log_prob`` of such a value has shape
``sample_shape + batch_shape`` (see :class:`TorchDistributionMixin`); each class's docstring says
how its parameters' shapes give the two."""

from __future__ import annotations

import torch.distributions as _td
from torch.distributions import kl_divergence, register_kl

from ember.distributions import (  # noqa: F401  (registers biject_to for the extra constraints)
    constraints,
    kl,  # noqa: F401  (registers Pyro's KL divergences)
    transforms,
    util,  # noqa: F401  (dist.util, as in Pyro)
)
from ember.distributions.conditional import ConditionalDistribution, ConditionalTransformedDistribution
from ember.distributions.continuous import (
    AffineBeta,
    AsymmetricLaplace,
    FoldedDistribution,
    ImproperUniform,
    Logistic,
    MultivariateStudentT,
    OrderedLogistic,
    SkewLogistic,
    SoftAsymmetricLaplace,
    SoftLaplace,
    TruncatedNormal,
)
from ember.distributions.directional import ProjectedNormal, SineBivariateVonMises, SineSkewed, VonMises3D
from ember.distributions.discrete import (
    BetaBinomial,
    DirichletMultinomial,
    ExtendedBetaBinomial,
    ExtendedBinomial,
    GammaPoisson,
    ZeroInflatedDistribution,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
)
from ember.distributions.empirical import Empirical
from ember.distributions.hmm import DiscreteHMM, GaussianHMM
from ember.distributions.lkj import LKJ, LKJCorrCholesky
from ember.distributions.misc import LogNormalNegativeBinomial, Rejector, Stable, StableWithLogProb
from ember.distributions.mixture import MaskedMixture, MixtureOfDiagNormals, MixtureOfDiagNormalsSharedCovariance
from ember.distributions.nanmasked import NanMaskedMultivariateNormal, NanMaskedNormal
from ember.distributions.relaxed_straight_through import (
    RelaxedBernoulliStraightThrough,
    RelaxedOneHotCategoricalStraightThrough,
)
from ember.distributions.special import Delta, Unit
from ember.distributions.torch import *  # noqa: F401,F403
from ember.distributions.torch import TORCH_NAMES as _TORCH_NAMES
from ember.distributions.torch_dist import (
    Distribution,
    ExpandedDistribution,
    MaskedDistribution,
    TorchDistribution,
    TorchDistributionMixin,
)
from ember.distributions.transforms import biject_to, transform_to
from ember.distributions.transforms.torch_transform import (
    ComposeTransformModule,
    ConditionalTransform,
    ConditionalTransformModule,
    TransformModule,
)
from ember.distributions.util import validation_enabled


def enable_validation(is_validate: bool = True) -> None:
    """Switch torch's argument/support validation of distributions on or off."""
    _td.Distribution.set_default_validate_args(bool(is_validate))


def is_validation_enabled() -> bool:
    """Whether torch's distribution argument and support checks are on (``enable_validation``)."""
    return bool(_td.Distribution._validate_args)


__all__ = [
    "AffineBeta", "ComposeTransformModule", "ConditionalTransform", "ConditionalTransformModule", "LKJCorrCholesky",
    "NanMaskedMultivariateNormal", "NanMaskedNormal", "RelaxedBernoulliStraightThrough",
    "RelaxedOneHotCategoricalStraightThrough", "SoftLaplace", "TransformModule", "validation_enabled",
    "LKJ", "AsymmetricLaplace", "BetaBinomial", "ConditionalDistribution", "ConditionalTransformedDistribution", "DirichletMultinomial", "ExtendedBetaBinomial", "ExtendedBinomial",
    "FoldedDistribution", "GammaPoisson", "ImproperUniform", "Logistic", "MaskedMixture", "MixtureOfDiagNormals", "MixtureOfDiagNormalsSharedCovariance",
    "MultivariateStudentT", "OrderedLogistic", "SkewLogistic", "SoftAsymmetricLaplace", "TruncatedNormal",
    "ZeroInflatedDistribution", "ZeroInflatedNegativeBinomial", "ZeroInflatedPoisson", "DiscreteHMM", "GaussianHMM",
    "LogNormalNegativeBinomial", "ProjectedNormal", "Rejector", "SineBivariateVonMises", "SineSkewed", "Stable", "StableWithLogProb", "VonMises3D",
    "Delta", "Distribution", "Empirical", "ExpandedDistribution", "MaskedDistribution", "TorchDistribution", "TorchDistributionMixin", "Unit",
    "biject_to", "constraints", "enable_validation", "is_validation_enabled", "kl_divergence", "register_kl",
    "transform_to", "transforms",
]
__all__ += _TORCH_NAMES
