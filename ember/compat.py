"""Run code written for Pyro unchanged: ``import pyro.X`` gives ``ember.X``.

::

    import ember.compat
    ember.compat.alias_pyro()

    import pyro                                  # ember
    import pyro.distributions as dist            # ember.distributions
    from pyro.infer import SVI, Trace_ELBO       # ember.infer
    from pyro.poutine.runtime import effectful   # ember.poutine.runtime

:func:`alias_pyro` puts an import hook first on ``sys.meta_path``: every module name
``pyro`` or ``pyro.<path>`` is served by the module ``ember`` or ``ember.<path>`` (the same
module object, imported on first use; ``sys.modules`` holds it under both names). A path that
Ember lacks raises ``ModuleNotFoundError`` naming the Ember module that was looked for. An
installed pyro-ppl is shadowed while the alias is active; :func:`unalias_pyro` removes it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["alias_pyro", "unalias_pyro", "is_pyro_aliased"]

_ALIAS, _TARGET = "pyro", "ember"


class _AliasLoader(importlib.abc.Loader):
    """Hands the import system an already imported Ember module, unchanged."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias' spec on the module: give it back its own
        module.__spec__ = self.spec


class _PyroAliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``pyro[.X]`` as ``ember[.X]``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _ALIAS and not fullname.startswith(_ALIAS + "."):
            return None
        real = _TARGET + fullname[len(_ALIAS) :]
        try:
            module = importlib.import_module(real)
        except ModuleNotFoundError as e:
            if e.name is not None and (e.name == real or real.startswith(e.name + ".")):
                raise ModuleNotFoundError(f"No module named {fullname!r}: Ember has no {real!r} (pyro.* is aliased to ember.*)", name=fullname) from None
            raise
        is_package = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=is_package)


_FINDER = _PyroAliasFinder()


def is_pyro_aliased() -> bool:
    """Whether :func:`alias_pyro` is active."""
    return _FINDER in sys.meta_path


def alias_pyro() -> None:
    """Make ``import pyro`` / ``import pyro.<path>`` import ``ember`` / ``ember.<path>`` (see the
    module docstring). Idempotent. If a real ``pyro`` module was already imported in this
    process it raises ``RuntimeError``: code holding it would mix the two libraries."""
    loaded = sys.modules.get(_ALIAS)
    if loaded is not None and loaded is not sys.modules.get(_TARGET) and not is_pyro_aliased():
        raise RuntimeError(
            f"alias_pyro: a module 'pyro' is already imported ({getattr(loaded, '__file__', loaded)!r}); call "
            f"ember.compat.alias_pyro() before anything imports pyro"
        )
    if not is_pyro_aliased():
        sys.meta_path.insert(0, _FINDER)


def unalias_pyro() -> None:
    """Undo :func:`alias_pyro`: remove the hook and the ``pyro`` / ``pyro.*`` names it put in
    ``sys.modules`` (the Ember modules themselves stay imported)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in [n for n in sys.modules if n == _ALIAS or n.startswith(_ALIAS + ".")]:
        module = sys.modules[name]
        if getattr(module, "__name__", "").startswith(_TARGET):
            del sys.modules[name]
