"""The parameter store (constrained values over unconstrained tensors) and safe checkpoint files."""

from ember.params.param_store import (
    ParamStoreDict,
    module_from_param_with_module_name,
    param_with_module_name,
    user_param_name,
)
from ember.params.serialize import CheckpointError, atomic_save, safe_load

# The global parameter store: here, below the handlers and the language that read it.
_PARAM_STORE = ParamStoreDict()


def get_param_store() -> ParamStoreDict:
    """The global parameter store."""
    return _PARAM_STORE


def clear_param_store() -> None:
    """Remove every parameter from the global store."""
    _PARAM_STORE.clear()


__all__ = [
    "CheckpointError",
    "ParamStoreDict",
    "atomic_save",
    "clear_param_store",
    "get_param_store",
    "module_from_param_with_module_name",
    "param_with_module_name",
    "safe_load",
    "user_param_name",
]
