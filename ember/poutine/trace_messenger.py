"""``trace``: record every site of an execution in a :class:`Trace`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.poutine.messenger import Messenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message

_EMPTY = Trace()


class TraceMessenger(Messenger):
    """Record sample and param sites (``param_only=True``: param sites only).

    Use as ``with trace() as tr: ...; tr.trace`` or ``trace(fn).get_trace(*args)``.
    Sites are recorded as the message objects themselves, after every handler inside
    this one has processed them; ``_INPUT`` and ``_RETURN`` hold the arguments and the
    return value when a function is run through the handler.
    """

    def __init__(self, fn: Callable | None = None, graph_type: str | None = None, param_only: bool | None = None) -> None:
        super().__init__(fn)
        self.graph_type = graph_type or "flat"
        self.param_only = bool(param_only)
        self.trace = _EMPTY

    def __enter__(self) -> TraceMessenger:
        self.trace = Trace(self.graph_type)
        return super().__enter__()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            return super().__call__(*args, **kwargs)
        with self:
            nodes = self.trace.nodes
            nodes["_INPUT"] = Message("args", "_INPUT", None, args, kwargs)
            ret = self.fn(*args, **kwargs)
            if "_RETURN" in nodes:
                raise RuntimeError("a site named '_RETURN' is reserved for the return value")
            nodes["_RETURN"] = Message("return", "_RETURN", None, (), None, ret)
        return ret

    def _reset(self) -> None:
        """Forget the sites of a run left early (``poutine.escape``, ``poutine.queue``): the next
        try records afresh; ``_INPUT`` is kept."""
        nodes = self.trace.nodes  # cleared in place: a run in progress keeps writing to it
        inp = nodes.get("_INPUT")
        nodes.clear()
        if inp is not None:
            nodes["_INPUT"] = inp

    def get_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """Run the function and return its trace."""
        self(*args, **kwargs)
        return self.trace

    def _postprocess_message(self, msg: Message) -> None:  # every type: trace records them all
        t = msg.type
        if t == "sample" or t == "param":
            if self.param_only and t != "param":
                return
            nodes = self.trace.nodes
            name = msg.name
            if name in nodes:
                self.trace._add_site(msg)  # the duplicate-site rules live in Trace
            else:
                nodes[name] = msg
        elif not self.param_only and msg.name is not None:
            self.trace._add_site(msg)

    # Pyro's hooks, for subclasses that extend them (``super()._pyro_post_sample(msg)``): recording
    def _pyro_post_sample(self, msg: Message) -> None:
        TraceMessenger._postprocess_message(self, msg)

    _pyro_post_param = _pyro_post_sample


def trace(fn: Callable | None = None, graph_type: str | None = None, param_only: bool | None = None) -> TraceMessenger:
    """Record the sites of ``fn``'s execution; see :class:`TraceMessenger`."""
    return TraceMessenger(fn, graph_type=graph_type, param_only=param_only)
