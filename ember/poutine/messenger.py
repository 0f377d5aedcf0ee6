"""The base class of every effect handler."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ember.runtime import _STACK, Message


class Messenger:
    """An effect handler: a context manager, a decorator and a higher-order function.

    Subclasses override ``_pyro_sample``, ``_pyro_param``, ... (called with the message
    before the default action) and ``_pyro_post_sample``, ... (after it), or, on the hot
    path, ``_process_message`` / ``_postprocess_message`` directly.
    """

    # Whether this handler needs to see the auxiliary site in which a plate records its
    # indices (trace and replay do). A plate under handlers that all say no skips the site.
    _wants_subsample_site = True

    def __init__(self, fn: Callable | None = None) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.fn
        if fn is None:
            # used as a decorator with arguments given first: handler(...)(fn)
            if len(args) == 1 and not kwargs and callable(args[0]):
                return self._wrap(args[0])
            raise TypeError(f"{type(self).__name__} has no function to run; use it as handler(fn) or as a context manager")
        with self:
            return fn(*args, **kwargs)

    def _wrap(self, fn: Callable) -> Messenger:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.fn = fn
        functools.update_wrapper(new, fn, updated=())
        return new

    def __enter__(self) -> Messenger:
        if self in _STACK:
            raise ValueError(
                f"this {type(self).__name__} is already active; a handler instance cannot be entered twice "
                f"(for a recursive function, apply the handler to the outer call only)"
            )
        _STACK.append(self)
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if _STACK and _STACK[-1] is self:
            _STACK.pop()
        elif self in _STACK:
            # exiting out of order (an exception unwound several handlers): drop this
            # handler and every handler entered after it
            loc = len(_STACK) - 1 - _STACK[::-1].index(self)
            del _STACK[loc:]

    def _reset(self) -> None:
        pass

    def _process_message(self, msg: Message) -> None:
        method = getattr(self, "_pyro_" + msg.type, None)
        if method is not None:
            method(msg)

    def _postprocess_message(self, msg: Message) -> None:
        method = getattr(self, "_pyro_post_" + msg.type, None)
        if method is not None:
            method(msg)

    # Pyro-compatible spelling
    process_message = _process_message
    postprocess_message = _postprocess_message
