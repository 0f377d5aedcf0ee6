"""Pyro's function-style handlers (``pyro.poutine.handlers``), in one module.

Each handler works as ``handler(fn, ...)`` (a new function), as a decorator and as a context
manager (``with handler(...):``); they compose freely, e.g.
``trace(replay(model, trace=guide_trace))``. The handler classes live in their own modules
(``ember.poutine.*_messenger``); this module gathers the function-style names and adds the
composite ones: :func:`queue` (sequential enumeration through a queue of partial traces) and
:func:`unwrap`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ember.poutine.block_messenger import block
from ember.poutine.broadcast_messenger import broadcast
from ember.poutine.condition_messenger import condition, do, uncondition
from ember.poutine.messenger import Messenger
from ember.poutine.misc_messengers import escape, infer_config, lift
from ember.poutine.replay_messenger import replay
from ember.poutine.scale_messenger import mask, scale
from ember.poutine.seed_messenger import seed
from ember.poutine.substitute_messenger import substitute
from ember.poutine.trace_messenger import trace
from ember.poutine.util import discrete_escape, enum_extend
from ember.runtime import NonlocalExit

__all__ = [
    "block",
    "broadcast",
    "condition",
    "do",
    "escape",
    "infer_config",
    "lift",
    "mask",
    "queue",
    "replay",
    "scale",
    "seed",
    "substitute",
    "trace",
    "uncondition",
    "unwrap",
]


def queue(
    fn: Callable | None = None,
    queue: Any = None,
    max_tries: int | None = None,
    extend_fn: Callable | None = None,
    escape_fn: Callable | None = None,
    num_samples: int | None = None,
) -> Callable:
    """Run ``fn`` to completion on a partial trace taken from ``queue``, enumerating the sites
    the partial trace lacks.

    Each call takes a partial trace from ``queue`` (a ``queue.Queue`` or anything with
    ``get``/``put``/``empty``) and runs ``fn`` replaying it. At the first site the trace lacks
    for which ``escape_fn(partial_trace, msg)`` is true (default :func:`discrete_escape`: an
    unobserved site with an enumerable distribution), the run stops, ``extend_fn(trace, msg,
    num_samples)`` (default :func:`enum_extend`: one extension per support value) puts the
    extended partial traces back in the queue, and the next one is tried. The first run that
    completes returns ``fn``'s value; after ``max_tries`` (default 10**6) incomplete runs it
    raises ``ValueError``. Start with ``queue.put(Trace())``; wrapped in ``trace`` and called
    until the queue is empty, it visits every complete execution once (Pyro's ``Search``).
    """
    if queue is None:
        raise ValueError("poutine.queue needs queue= (e.g. q = queue.Queue(); q.put(poutine.Trace()))")
    if max_tries is None:
        max_tries = int(1e6)
    if extend_fn is None:
        extend_fn = enum_extend
    if escape_fn is None:
        escape_fn = discrete_escape
    if num_samples is None:
        num_samples = -1

    def wrapper(wrapped: Callable) -> Callable:
        @functools.wraps(wrapped)
        def _fn(*args: Any, **kwargs: Any) -> Any:
            for _ in range(max_tries):
                if queue.empty():
                    raise ValueError(
                        "poutine.queue: the queue of partial traces is empty; put a poutine.Trace() in it before the "
                        "first call, and stop calling once it is empty (every execution has been visited)"
                    )
                next_trace = queue.get()
                tr = trace(escape(replay(wrapped, trace=next_trace), escape_fn=functools.partial(escape_fn, next_trace)))
                try:
                    return tr(*args, **kwargs)
                except NonlocalExit as exit_:
                    exit_.reset_stack()
                    for extended in extend_fn(tr.trace.copy(), exit_.site, num_samples=num_samples):
                        queue.put(extended)
            raise ValueError(f"poutine.queue: no complete execution after max_tries={max_tries} tries")

        _fn._ember_unwrap = wrapped  # type: ignore[attr-defined]
        return _fn

    return wrapper(fn) if fn is not None else wrapper


def unwrap(fn: Callable) -> Callable:
    """The function under the handlers applied to ``fn`` as ``handler(fn, ...)`` (and
    :func:`queue`), recursively: ``unwrap(trace(block(model)))`` is ``model``. A function
    that is not a wrapped handler is returned as it is."""
    while True:
        if isinstance(fn, Messenger) and fn.fn is not None:
            fn = fn.fn
        elif callable(fn) and getattr(fn, "_ember_unwrap", None) is not None:
            fn = fn._ember_unwrap
        else:
            return fn

# issue 14: reparameterization
from ember.poutine.reparam_messenger import reparam  # noqa: E402

__all__ += ["reparam"]


# Enumeration (issue 13)
from ember.poutine.enum_messenger import enum  # noqa: E402
from ember.poutine.markov_messenger import markov  # noqa: E402

__all__ += ["enum", "markov"]

from ember.poutine.equalize_messenger import collapse, equalize  # noqa: E402

__all__ += ["collapse", "equalize"]
