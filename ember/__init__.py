"""Ember: a deep probabilistic programming language on PyTorch.

Write models and guides as ordinary Python functions with ``sample``, ``param``,
``module`` and ``plate``; transform them with the handlers of ``ember.poutine``; fit
them with ``ember.infer``. Code written for Pyro 1.x runs with ``import ember as pyro``.
"""

from ember import distributions, infer, optim, params, poutine  # noqa: E402  (pyro.infer / pyro.optim after a bare `import pyro`)
from ember.poutine import condition, do
from ember.primitives import (
    clear_param_store,
    deterministic,
    enable_validation,
    factor,
    get_param_store,
    iarange,
    irange,
    module,
    param,
    plate,
    random_module,
    sample,
    set_rng_seed,
    validation_enabled,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "clear_param_store",
    "condition",
    "deterministic",
    "distributions",
    "infer",
    "optim",
    "do",
    "enable_validation",
    "factor",
    "get_param_store",
    "iarange",
    "irange",
    "module",
    "param",
    "params",
    "plate",
    "poutine",
    "random_module",
    "sample",
    "set_rng_seed",
    "validation_enabled",
]

# Pyro's top-level names added by issue 11 point 7 (module layout)
from ember import settings  # noqa: E402
from ember.primitives import plate_stack, subsample  # noqa: E402

__all__ += ["plate_stack", "settings", "subsample"]

# Enumeration (issue 13): ember.markov, as pyro.markov
from ember.poutine.markov_messenger import markov  # noqa: E402

__all__ += ["markov"]

# issue 14: the picture of a model
from ember.infer.inspect import render_model  # noqa: E402

__all__ += ["render_model"]

from ember.primitives import barrier  # noqa: E402

__all__ += ["barrier"]

from ember.logger import log  # noqa: E402

__all__ += ["log"]
