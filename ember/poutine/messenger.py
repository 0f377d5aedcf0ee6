"""The base class of every effect handler."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ember.runtime import _STACK, Message


class _EveryType:
    """A dispatch table that answers the same function for every message type (a handler
    that overrides ``_process_message`` / ``_postprocess_message`` itself)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def get(self, _type: str, _default: Any = None) -> Callable:
        return self.fn


class _Layered:
    """A dispatch table for a subclass that adds ``_pyro_<type>`` hooks to a handler overriding
    ``_process_message`` / ``_postprocess_message`` itself (a user's ``TraceMessenger`` subclass with
    its own ``_pyro_post_sample``, as Pyro allows): the subclass's hook for its types, the
    inherited method for the rest."""

    __slots__ = ("table", "fn")

    def __init__(self, table: dict, fn: Callable) -> None:
        self.table = table
        self.fn = fn

    def get(self, _type: str, _default: Any = None) -> Callable:
        return self.table.get(_type, self.fn)


def _hooks(cls: type, prefix: str, stop: type | None = None) -> dict:
    """``{type: hook}`` of the ``prefix<type>`` methods of ``cls`` (those of the classes above
    ``stop`` in its MRO left out)."""
    table: dict = {}
    for klass in cls.__mro__:
        if klass is stop:
            break
        for attr in klass.__dict__:
            if attr.startswith(prefix) and callable(getattr(cls, attr)):
                mtype = attr[len(prefix):]
                if prefix == "_pyro_" and mtype.startswith("post_"):
                    continue
                table.setdefault(mtype, getattr(cls, attr))
    return table


def _build_dispatch(cls: type, prefix: str, override: str) -> Any:
    method = getattr(cls, override)
    if method is not getattr(Messenger, override):
        owner = next(k for k in cls.__mro__ if override in k.__dict__)
        added = _hooks(cls, prefix, stop=owner)
        return _Layered(added, method) if added else _EveryType(method)
    return _hooks(cls, prefix)


class _WarnsUnusedNames:
    """For handlers given data by site name (``condition``, ``substitute``): after the first
    run through the handler, warn once about names in the data that no site used."""

    _unused: set | None = None
    _who: str = ""

    def _watch_names(self, names: Any, who: str) -> None:
        self._unused = set(names) or None
        self._who = who

    def _used(self, name: str) -> None:
        unused = self._unused
        if unused is not None:
            unused.discard(name)

    def _report_unused(self) -> None:
        unused, self._unused = self._unused, None
        if unused:
            import warnings

            warnings.warn(
                f"{self._who}: the data names {sorted(unused)[:10]}, but no site of that name was reached in the run "
                f"(a typo, or a site the model skips or hides with block?); those values had no effect",
                UserWarning,
                stacklevel=3,
            )


class Messenger:
    """An effect handler: a context manager, a decorator and a higher-order function.

    One way to write a handler: define ``_pyro_<type>(self, msg)`` (called with the message
    before the default action, innermost handler first) and ``_pyro_post_<type>(self, msg)``
    (after it, outermost first) for the message types it acts on (``sample``, ``param``,
    ``subsample``, ...). Each class builds its dispatch tables once, when it is defined;
    ``apply_stack`` looks a message's type up there, so a handler costs nothing for the types
    it ignores. A handler that acts on every type alike (``block``, ``trace``) overrides
    ``_process_message`` / ``_postprocess_message`` instead (Pyro's ``process_message`` /
    ``postprocess_message`` spellings are honoured too).
    """

    _pre: Any = {}
    _post: Any = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Pyro-style overrides of the public names count as overrides of the hooks
        if "process_message" in cls.__dict__ and "_process_message" not in cls.__dict__:
            cls._process_message = cls.__dict__["process_message"]
        if "postprocess_message" in cls.__dict__ and "_postprocess_message" not in cls.__dict__:
            cls._postprocess_message = cls.__dict__["postprocess_message"]
        cls._pre = _build_dispatch(cls, "_pyro_", "_process_message")
        cls._post = _build_dispatch(cls, "_pyro_post_", "_postprocess_message")

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
        f = self._pre.get(msg.type)
        if f is not None:
            f(self, msg)

    def _postprocess_message(self, msg: Message) -> None:
        f = self._post.get(msg.type)
        if f is not None:
            f(self, msg)

    # Pyro-compatible spelling
    def process_message(self, msg: Message) -> None:
        self._process_message(msg)

    def postprocess_message(self, msg: Message) -> None:
        self._postprocess_message(msg)
