"""Reparameterizers for ``ember.poutine.reparam`` (Pyro's ``pyro.infer.reparam``): rewrite a site
in terms of auxiliary sites that inference handles better (non-centring for NUTS, ...)."""

from ember.infer.reparam.loc_scale import LocScaleReparam
from ember.infer.reparam.neutra import NeuTraReparam
from ember.infer.reparam.projected_normal import ProjectedNormalReparam
from ember.infer.reparam.reparam import Reparam
from ember.infer.reparam.softmax import GumbelSoftmaxReparam, SoftmaxReparam
from ember.infer.reparam.split import SplitReparam
from ember.infer.reparam.stable import LatentStableReparam, StableReparam, SymmetricStableReparam
from ember.infer.reparam.strategies import AutoReparam, MinimalReparam, Strategy
from ember.infer.reparam.studentt import StudentTReparam
from ember.infer.reparam.transform import TransformReparam
from ember.infer.reparam.unit_jacobian import DiscreteCosineReparam, HaarReparam, UnitJacobianReparam

__all__ = [
    "AutoReparam",
    "DiscreteCosineReparam",
    "GumbelSoftmaxReparam",
    "HaarReparam",
    "LatentStableReparam",
    "LocScaleReparam",
    "MinimalReparam",
    "NeuTraReparam",
    "ProjectedNormalReparam",
    "Reparam",
    "SoftmaxReparam",
    "SplitReparam",
    "StableReparam",
    "Strategy",
    "StudentTReparam",
    "SymmetricStableReparam",
    "TransformReparam",
    "UnitJacobianReparam",
]
