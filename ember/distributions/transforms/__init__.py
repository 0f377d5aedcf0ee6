"""Transforms: every ``torch.distributions.transforms`` name plus Pyro's fixed
transforms, learnable flows (``TransformModule``s) with Pyro's helper constructors,
and the ``biject_to``/``transform_to`` registrations of Ember's extra constraints."""

from __future__ import annotations

from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import *  # noqa: F401,F403
from torch.distributions.transforms import __all__ as _torch_all

from ember.distributions.transforms.basic import (
    CorrMatrixCholeskyTransform,
    LowerCholeskyAffine,
    Normalize,
    OrderedTransform,
    Permute,
    SoftplusLowerCholeskyTransform,
    UnitLowerCholeskyTransform,
)
from ember.distributions.transforms.torch_transform import (
    ComposeTransformModule,
    ConditionalTransform,
    ConditionalTransformModule,
    TransformModule,
)

__all__ = list(_torch_all) + [
    "ComposeTransformModule", "ConditionalTransform", "ConditionalTransformModule", "CorrMatrixCholeskyTransform",
    "LowerCholeskyAffine", "Normalize", "OrderedTransform", "Permute", "SoftplusLowerCholeskyTransform",
    "TransformModule", "UnitLowerCholeskyTransform", "biject_to", "transform_to",
]
