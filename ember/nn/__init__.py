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
