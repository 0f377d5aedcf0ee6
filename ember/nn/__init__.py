"""Neural-network building blocks (Pyro's ``pyro.nn``).

* :mod:`ember.nn.auto_reg_nn`: ``AutoRegressiveNN``, ``ConditionalAutoRegressiveNN`` (MADE masks);
* :mod:`ember.nn.dense_nn`: ``DenseNN``, ``ConditionalDenseNN``.

These import only torch: the flows in ``ember.distributions.transforms`` build on them.
"""

from ember.nn.auto_reg_nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, MaskedLinear
from ember.nn.dense_nn import ConditionalDenseNN, DenseNN

__all__ = ["AutoRegressiveNN", "ConditionalAutoRegressiveNN", "ConditionalDenseNN", "DenseNN", "MaskedLinear"]

# --- PyroModule, PyroParam, PyroSample (ember.nn.module) -------------------------------------
# Added here by the module issue's owner. ember.nn.module sits in the infer layer (it needs
# ember.primitives), so import it lazily or below this line without pulling ember.primitives
# into the networks above (ember.distributions imports ember.nn.auto_reg_nn).

_MODULE_NAMES = ("PyroModule", "PyroModuleList", "PyroParam", "PyroSample", "pyro_method", "to_pyro_module_")
__all__ += list(_MODULE_NAMES)


def __getattr__(name: str):  # PEP 562: ember.nn.module imports ember.primitives only when asked for
    if name in _MODULE_NAMES or name == "module":
        import importlib

        mod = importlib.import_module("ember.nn.module")
        return mod if name == "module" else getattr(mod, name)
    raise AttributeError(f"module 'ember.nn' has no attribute {name!r}")


def __dir__() -> list:  # the lazy names are listed too (dir(pyro.nn) shows PyroModule, ...)
    return sorted(set(globals()) | set(_MODULE_NAMES) | {"module"})
