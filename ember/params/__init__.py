from ember.params.param_store import (
    ParamStoreDict,
    module_from_param_with_module_name,
    param_with_module_name,
    user_param_name,
)
from ember.params.serialize import CheckpointError, atomic_save, safe_load

__all__ = [
    "CheckpointError",
    "ParamStoreDict",
    "atomic_save",
    "module_from_param_with_module_name",
    "param_with_module_name",
    "safe_load",
    "user_param_name",
]
