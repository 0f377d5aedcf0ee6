"""Pyro's ``pyro.poutine.runtime``: the handler stack and ``apply_stack``, under Pyro's names.

The implementation is :mod:`ember.runtime` (the one hot path; its docstring is the message
protocol). This module gives it Pyro's names and adds what Pyro's runtime has beside it:

- ``_PYRO_STACK``: the live handler stack itself (the same list, outermost handler first);
- :func:`am_i_wrapped`, :func:`effectful` (make any function an effect site),
  :func:`get_mask` and :func:`get_plates` (what the enclosing ``mask``/``plate`` handlers do);
- :func:`get_param_store` and ``_PYRO_PARAM_STORE``: the global parameter store;
- ``InferDict``: the typed keys of a site's ``infer`` dict.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, TypedDict

import torch

from ember.poutine.plate_messenger import CondIndepStackFrame, PlateMessenger
from ember.poutine.scale_messenger import MaskMessenger
from ember.runtime import _STACK, Message, NonlocalExit, apply_stack, default_process_message, get_stack, is_validation_enabled

__all__ = [
    "CondIndepStackFrame",
    "InferDict",
    "Message",
    "NonlocalExit",
    "am_i_wrapped",
    "apply_stack",
    "default_process_message",
    "effectful",
    "get_mask",
    "get_param_store",
    "get_plates",
    "get_stack",
    "is_validation_enabled",
]

_PYRO_STACK: list = _STACK  # the live stack, not a copy


class InferDict(TypedDict, total=False):
    """The keys of a site's ``infer`` dict that Ember reads (see :mod:`ember.runtime`)."""

    enumerate: Literal["sequential", "parallel"]
    expand: bool
    is_auxiliary: bool
    is_observed: bool
    num_samples: int
    obs: torch.Tensor | None
    was_observed: bool
    baseline: dict
    _deterministic: bool


def am_i_wrapped() -> bool:
    """Whether any handler is active (a primitive called now goes through :func:`apply_stack`)."""
    return len(_STACK) > 0


def effectful(fn: Callable | None = None, type: str | None = None) -> Callable:
    """Make ``fn`` an effect site of message type ``type``: under handlers, each call
    ``f(*args, name=..., infer=..., obs=..., **kwargs)`` builds a :class:`Message` (``fn``,
    ``args``, ``kwargs``; ``value=obs``) and runs it through :func:`apply_stack`, so that
    handlers can record (``trace``, when ``name`` is given), replace (a ``_pyro_<type>``
    hook setting ``msg.value``) or observe the call; the result is the message's value.
    Outside any handler it is a plain call of ``fn(*args, **kwargs)``. Usable as
    ``effectful(fn, type="my_op")`` or as ``@effectful(type="my_op")``."""
    if fn is None:
        return functools.partial(effectful, type=type)
    if getattr(fn, "_is_effectful", False):
        return fn
    if not isinstance(type, str) or not type:
        raise ValueError(f"effectful({getattr(fn, '__name__', fn)!r}): give the message type, e.g. effectful(fn, type='my_op')")
    if type == "message":
        raise ValueError("effectful: 'message' cannot be a message type")

    @functools.wraps(fn)
    def _fn(*args: Any, name: str | None = None, infer: dict | None = None, obs: Any = None, **kwargs: Any) -> Any:
        if not _STACK:
            return fn(*args, **kwargs)
        msg = Message(type, name, fn, args, kwargs, value=obs, is_observed=obs is not None, infer=infer)
        apply_stack(msg)
        return msg.value

    _fn._is_effectful = True  # type: ignore[attr-defined]
    return _fn


def _inspect(kinds: tuple) -> Message:
    """A probe sample message run, innermost handler first, through the enclosing handlers
    of the given classes (and only those: nothing is recorded or drawn)."""
    msg = Message("sample", "_pyro_inspect", None, infer={"_do_not_trace": True})
    for handler in reversed(_STACK):
        if isinstance(handler, kinds):
            handler._process_message(msg)
    return msg


def get_mask() -> bool | torch.Tensor | None:
    """The combined mask of the enclosing ``poutine.mask`` handlers: ``None`` when there is
    none, else a bool or a bool tensor (broadcastable against the sites' batch shapes).
    Lets a model skip an expensive ``factor`` whose log-density would be masked out:
    ``if poutine.get_mask() is not False: ember.factor("f", expensive())``."""
    return _inspect((MaskMessenger,)).mask


def get_plates() -> tuple[CondIndepStackFrame, ...]:
    """The frames (name, dim, size, ...) of the plates enclosing the caller, outermost first,
    as a sample site there would record them in ``cond_indep_stack``."""
    frames = _inspect((PlateMessenger,)).cond_indep_stack
    return tuple(f for f in frames if f is not None)


def get_param_store() -> Any:
    """The global parameter store (``ember.get_param_store()``)."""
    from ember.params import get_param_store as _get

    return _get()


def __getattr__(name: str) -> Any:
    if name == "_PYRO_PARAM_STORE":
        return get_param_store()
    raise AttributeError(f"module 'ember.poutine.runtime' has no attribute {name!r}")
