"""Transforms: every ``torch.distributions.transforms`` name plus Pyro's fixed
transforms, learnable flows (``TransformModule``s) with Pyro's helper constructors,
and the ``biject_to``/``transform_to`` registrations of Ember's extra constraints.

The flows are written here rather than wrapped from a flow library (zuko was
considered): Pyro's flows are ``Transform`` objects that are also ``nn.Module``s with
Pyro's parameter names, caching and ``condition(context)``, which the libraries
shape differently; the mathematics is short and each is tested against autograd.

Shapes: a transform acts on the rightmost ``event_dim`` dims of ``x`` as one event (0 for the
elementwise transforms, 1 for the flows over vectors, whose ``x`` has shape ``batch_shape + (D,)``);
``t(x)`` and ``t.inv(y)`` keep the shape unless the transform says otherwise, and
``t.log_abs_det_jacobian(x, y)`` has shape ``batch_shape``, one value per event. A conditional
transform's ``condition(context)`` takes ``context`` of shape ``(..., context_dim)``."""

from __future__ import annotations

from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import *  # noqa: F401,F403
from torch.distributions.transforms import __all__ as _torch_all

from ember.distributions.transforms.affine_autoregressive import (
    AffineAutoregressive,
    AffineCoupling,
    ConditionalAffineAutoregressive,
    ConditionalAffineCoupling,
    affine_autoregressive,
    affine_coupling,
    conditional_affine_autoregressive,
    conditional_affine_coupling,
)
from ember.distributions.transforms.basic import (
    CorrMatrixCholeskyTransform,
    LowerCholeskyAffine,
    Normalize,
    OrderedTransform,
    Permute,
    SoftplusLowerCholeskyTransform,
    UnitLowerCholeskyTransform,
)
from ember.distributions.transforms.block_autoregressive import BlockAutoregressive, block_autoregressive
from ember.distributions.transforms.elementwise import (
    CholeskyTransform,
    CorrLCholeskyTransform,
    DiscreteCosineTransform,
    ELUTransform,
    HaarTransform,
    LeakyReLUTransform,
    PositivePowerTransform,
    SimplexToOrderedTransform,
    elu,
    iterated,
    leaky_relu,
)
from ember.distributions.transforms.generalized_channel_permute import (
    ConditionalGeneralizedChannelPermute,
    GeneralizedChannelPermute,
    conditional_generalized_channel_permute,
    generalized_channel_permute,
)
from ember.distributions.transforms.simple_flows import (
    BatchNorm,
    ConditionalHouseholder,
    ConditionalMatrixExponential,
    ConditionalNeuralAutoregressive,
    ConditionalPlanar,
    ConditionalRadial,
    Householder,
    MatrixExponential,
    NeuralAutoregressive,
    Planar,
    Polynomial,
    Radial,
    Sylvester,
    batchnorm,
    conditional_householder,
    conditional_matrix_exponential,
    conditional_neural_autoregressive,
    conditional_planar,
    conditional_radial,
    householder,
    matrix_exponential,
    neural_autoregressive,
    permute,
    planar,
    polynomial,
    radial,
    sylvester,
)
from ember.distributions.transforms.spline import (
    ConditionalSpline,
    ConditionalSplineAutoregressive,
    Spline,
    SplineAutoregressive,
    SplineCoupling,
    conditional_spline,
    conditional_spline_autoregressive,
    spline,
    spline_autoregressive,
    spline_coupling,
)
from ember.distributions.transforms.torch_transform import (
    ComposeTransformModule,
    ConditionalTransform,
    ConditionalTransformModule,
    TransformModule,
)

__all__ = list(_torch_all) + [
    "ConditionalHouseholder", "ConditionalMatrixExponential", "ConditionalNeuralAutoregressive", "ConditionalRadial",
    "MatrixExponential", "Polynomial", "polynomial", "conditional_householder", "conditional_matrix_exponential", "conditional_neural_autoregressive",
    "conditional_radial", "matrix_exponential",
    "ConditionalGeneralizedChannelPermute", "GeneralizedChannelPermute", "conditional_generalized_channel_permute",
    "generalized_channel_permute",
    "AffineAutoregressive", "AffineCoupling", "BatchNorm", "CholeskyTransform", "CorrLCholeskyTransform", "DiscreteCosineTransform", "HaarTransform", "PositivePowerTransform", "SimplexToOrderedTransform", "ELUTransform", "LeakyReLUTransform", "elu", "leaky_relu", "iterated", "BlockAutoregressive", "block_autoregressive", "ComposeTransformModule", "ConditionalAffineAutoregressive",
    "ConditionalAffineCoupling", "ConditionalPlanar", "ConditionalSpline", "ConditionalSplineAutoregressive",
    "ConditionalTransform", "ConditionalTransformModule", "CorrMatrixCholeskyTransform", "Householder", "LowerCholeskyAffine",
    "NeuralAutoregressive", "Normalize", "OrderedTransform", "Permute", "Planar", "Radial", "SoftplusLowerCholeskyTransform",
    "Spline", "SplineAutoregressive", "SplineCoupling", "Sylvester", "TransformModule", "UnitLowerCholeskyTransform",
    "affine_autoregressive", "affine_coupling", "batchnorm", "biject_to", "conditional_affine_autoregressive",
    "conditional_affine_coupling", "conditional_planar", "conditional_spline", "conditional_spline_autoregressive",
    "householder", "neural_autoregressive", "permute", "planar", "radial", "spline", "spline_autoregressive",
    "spline_coupling", "sylvester", "transform_to",
]
