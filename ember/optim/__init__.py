"""Optimizers for Ember's parameter store (Pyro 1.x compatible names).

``ember.optim.Adam({"lr": 1e-3})`` wraps ``torch.optim.Adam``; every optimizer class of
``torch.optim`` has such a wrapper, plus :class:`ClippedAdam`. Any torch optimizer can
be wrapped with ``PyroOptim(torch.optim.Adam, {"lr": 1e-3})``. The LR schedulers of
``torch.optim.lr_scheduler`` are wrapped likewise (``ExponentialLR``, ``StepLR``, ...),
taking ``{"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, **scheduler_kwargs}``.
"""

from ember.optim import adagrad_rmsprop, clipped_adam
from ember.optim.lr_scheduler import (
    SCHEDULER_WRAPPERS,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    EmberLRScheduler,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    PyroLRScheduler,
    ReduceLROnPlateau,
    StepLR,
)
from ember.optim.optim import (
    ASGD,
    LBFGS,
    OPTIMIZER_WRAPPERS,
    SGD,
    Adadelta,
    Adagrad,
    AdagradRMSProp,
    Adam,
    Adamax,
    AdamW,
    ClippedAdam,
    EmberOptim,
    NAdam,
    NonFiniteParameterError,
    PyroOptim,
    RAdam,
    RMSprop,
    Rprop,
    SparseAdam,
)

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "AdagradRMSProp",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "ClippedAdam",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "EmberLRScheduler",
    "EmberOptim",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "NAdam",
    "NonFiniteParameterError",
    "OneCycleLR",
    "PolynomialLR",
    "PyroLRScheduler",
    "PyroOptim",
    "RAdam",
    "RMSprop",
    "ReduceLROnPlateau",
    "Rprop",
    "SparseAdam",
    "StepLR",
    "adagrad_rmsprop",
    "clipped_adam",
]

# wrappers of optimizers and schedulers that only newer torch versions have (e.g. Adafactor)
for _name, _wrapper in {**OPTIMIZER_WRAPPERS, **SCHEDULER_WRAPPERS}.items():
    if _name not in globals():
        globals()[_name] = _wrapper
        __all__.append(_name)
del _name, _wrapper
