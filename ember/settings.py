"""Global settings (Pyro's ``pyro.settings``): read, set, and set temporarily.

::

    ember.settings.get()                                   # every setting: {alias: value}
    ember.settings.get("validate_poutine")                 # one
    ember.settings.set(validate_poutine=False)             # set one or more
    with ember.settings.context(validate_poutine=False):   # temporarily (also a decorator)
        ...
    ember.settings.register("my_alias", "my.module", "SomeClass.attribute", validator)

A setting is an alias for a module attribute: ``register(alias, modulename, deepname,
validator=None)``, where ``deepname`` is a dotted path inside the module (a part that is an
integer indexes a list). The module is imported only when the setting is read or set.
``validator(value)`` is called on every value set (and on the current one when
registered) and raises on a bad one. Registered by Ember:

- ``validate_distributions_torch`` / ``validate_distributions_pyro``: argument validation of
  distributions (Ember's distributions are torch's, so the two are one switch);
- ``validate_poutine`` / ``validate_infer``: Ember's own checks (shapes, model/guide
  structure, finite losses), one switch in Ember (``ember.enable_validation`` sets both
  kinds together).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Any

__all__ = ["context", "get", "register", "set"]

# alias -> (module name, dotted path, validator or None)
_REGISTRY: dict[str, tuple[str, str, Callable | None]] = {}


def _validate_bool(alias: str) -> Callable[[Any], None]:
    def validator(value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"ember.settings: {alias} must be True or False; got {value!r}")

    return validator


def _step(obj: Any, part: str) -> Any:
    return obj[int(part)] if part.isdigit() else getattr(obj, part)


def register(alias: str, modulename: str, deepname: str, validator: Callable | None = None) -> Callable:
    """Register ``alias`` for the attribute ``deepname`` of module ``modulename``. Without
    ``validator`` it returns a decorator that registers the function it decorates as the
    validator (``@settings.register(...)\\ndef check(value): ...``)."""
    for what, v in (("alias", alias), ("modulename", modulename), ("deepname", deepname)):
        if not isinstance(v, str) or not v:
            raise TypeError(f"ember.settings.register: {what} must be a non-empty str; got {v!r}")
    _REGISTRY[alias] = (modulename, deepname, validator)
    if validator is None:
        return functools.partial(register, alias, modulename, deepname)
    validator(get(alias))
    return validator


def _lookup(alias: str) -> tuple[str, str, Callable | None]:
    try:
        return _REGISTRY[alias]
    except KeyError:
        raise KeyError(f"ember.settings: no setting named {alias!r}; registered: {sorted(_REGISTRY)}") from None


def get(alias: str | None = None) -> Any:
    """The value of setting ``alias``; without an alias, ``{alias: value}`` for every setting."""
    if alias is None:
        return {a: get(a) for a in sorted(_REGISTRY)}
    modulename, deepname, _ = _lookup(alias)
    value: Any = import_module(modulename)
    for part in deepname.split("."):
        value = _step(value, part)
    return value


def set(**kwargs: Any) -> None:
    """Set one or more settings: ``set(validate_poutine=False, ...)``; each value is checked by
    the setting's validator first."""
    for alias, value in kwargs.items():
        modulename, deepname, validator = _lookup(alias)
        if validator is not None:
            validator(value)
        *parents, last = deepname.split(".")
        target: Any = import_module(modulename)
        for part in parents:
            target = _step(target, part)
        if last.isdigit():
            target[int(last)] = value
        else:
            setattr(target, last, value)


@contextlib.contextmanager
def context(**kwargs: Any) -> Iterator[None]:
    """Set settings for the duration of a ``with`` block (or of a decorated function's call),
    then restore the old values, also on an exception."""
    old = {alias: get(alias) for alias in kwargs}
    try:
        set(**kwargs)
        yield
    finally:
        set(**old)


for _alias in ("validate_distributions_torch", "validate_distributions_pyro"):
    register(_alias, "torch.distributions.distribution", "Distribution._validate_args", _validate_bool(_alias))
for _alias in ("validate_poutine", "validate_infer"):
    register(_alias, "ember.runtime", "_VALIDATION.0", _validate_bool(_alias))
del _alias
