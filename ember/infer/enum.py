"""Marking sites for enumeration (``config_enumerate``) and the helpers that enumerate them.

Parallel enumeration is done by :class:`ember.poutine.enum_messenger.EnumMessenger`; sequential
enumeration (one run per value, Pyro's ``iter_discrete_traces``) by ``poutine.queue``.
"""

from __future__ import annotations

import queue as _queue
from collections.abc import Callable, Iterator
from typing import Any

from ember.poutine.enum_messenger import TMC_STRATEGIES, EnumMessenger, monte_carlo_values
from ember.poutine.handlers import queue as poutine_queue
from ember.poutine.misc_messengers import InferConfigMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.poutine.util import enum_extend
from ember.runtime import Message

__all__ = ["config_enumerate", "enumerate_site", "get_enum_dims", "iter_discrete_traces"]


def config_enumerate(guide: Callable | None = None, default: str | None = "parallel", expand: bool = False,
                     num_samples: int | None = None, tmc: str = "diagonal") -> Any:
    """Mark every discrete sample site of ``guide`` (a model or a guide) for enumeration.

    Sets ``infer={"enumerate": default, "expand": expand}`` on every unobserved sample site whose
    distribution has a finite support (``has_enumerate_support``) and that has not chosen an
    ``"enumerate"`` mode itself; continuous sites are left alone. Works as ``config_enumerate(fn)``,
    ``@config_enumerate`` and ``@config_enumerate(default="sequential")``.

    With ``num_samples=n`` (Pyro's local Monte-Carlo enumeration) every unobserved sample site,
    continuous ones too, gets ``{"enumerate": default, "num_samples": n, "expand": expand, "tmc": tmc}``,
    each key only where the site has not set it itself: such a site is drawn ``n`` times along its
    enumeration dim instead of enumerated (:mod:`ember.poutine.enum_messenger`), and
    ``TraceEnum_ELBO`` averages over the draws.

    Args:
        default: ``"parallel"`` (along a tensor dim), ``"sequential"`` (one run per value; guide
            sites only) or None (leave sites alone).
        expand: whether enumerated values are expanded to the distribution's batch shape.
        num_samples: None (enumerate the support exactly) or a positive int (draw that many values;
            ``default`` must then be ``"parallel"`` or None).
        tmc: how a sampled site that depends on an enumerated or sampled site picks its ancestor
            per draw: ``"diagonal"`` (draw ``i`` takes ancestor ``i``), ``"mixture"`` (a uniformly
            random one) or ``"full"`` (no choice: the draws keep every ancestor's dim; sets ``expand``).
    """
    if default not in ("parallel", "sequential", None):
        raise ValueError(f"config_enumerate: default must be 'parallel', 'sequential' or None; got {default!r}")
    if not isinstance(expand, bool):
        raise ValueError(f"config_enumerate: expand must be a bool; got {expand!r}")
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"config_enumerate: num_samples must be None or a positive integer; got {num_samples!r}")
        if default == "sequential":
            raise ValueError("config_enumerate: num_samples (Monte-Carlo enumeration) draws its samples in parallel; "
                             "use default='parallel', not 'sequential'")
        if tmc not in TMC_STRATEGIES:
            raise ValueError(f"config_enumerate: tmc must be one of {TMC_STRATEGIES}; got {tmc!r}")
        if tmc == "full" and num_samples > 1:
            expand = True

    def config_fn(msg: Message) -> dict:
        if msg.type != "sample" or msg.is_observed or default is None:
            return {}
        if num_samples is not None:
            infer = msg.infer
            return {"enumerate": infer.get("enumerate", default), "num_samples": infer.get("num_samples", num_samples),
                    "expand": infer.get("expand", expand), "tmc": infer.get("tmc", tmc)}
        if msg.infer.get("enumerate") is None and getattr(msg.fn, "has_enumerate_support", False):
            return {"enumerate": default, "expand": expand}
        return {}

    if guide is not None:
        if not callable(guide):
            raise TypeError(f"config_enumerate: expected a model or guide function; got {guide!r}")
        return InferConfigMessenger(guide, config_fn=config_fn)
    return lambda fn: InferConfigMessenger(fn, config_fn=config_fn)


def enumerate_site(msg: Message) -> Any:
    """The values a site enumerates: ``msg.fn.enumerate_support(expand=msg.infer.get("expand"))``,
    or, where its ``infer`` has ``num_samples``, that many draws (``(n,) + batch_shape + event_shape``,
    see :func:`ember.poutine.enum_messenger.monte_carlo_values`)."""
    if msg.infer.get("num_samples") is not None:
        return monte_carlo_values(msg)
    return msg.fn.enumerate_support(expand=bool(msg.infer.get("expand", False)))


def get_enum_dims(trace: Trace) -> dict[str, int]:
    """``{site: dim}`` of the parallel-enumerated sites of ``trace``."""
    return {n: s.infer["_enumerate_dim"] for n, s in trace.nodes.items() if s.type == "sample" and "_enumerate_dim" in s.infer}


def _sequential_escape(partial: Trace, msg: Message) -> bool:
    return (msg.type == "sample" and not msg.is_observed and msg.name not in partial
            and msg.infer.get("enumerate") == "sequential")


def iter_discrete_traces(graph_type: str, fn: Callable, *args: Any, first_available_dim: int | None = None,
                         **kwargs: Any) -> Iterator[Trace]:
    """Every trace of ``fn(*args, **kwargs)``, one per joint value of its sites marked
    ``infer={"enumerate": "sequential"}`` (sites marked ``"parallel"`` are enumerated in parallel when
    ``first_available_dim`` is given). ``graph_type`` is accepted for Pyro compatibility."""
    q: _queue.LifoQueue = _queue.LifoQueue()
    q.put(Trace())
    wrapped = fn if first_available_dim is None else EnumMessenger(fn, first_available_dim)
    runner = poutine_queue(wrapped, queue=q, escape_fn=_sequential_escape, extend_fn=enum_extend)
    while not q.empty():
        tm = TraceMessenger(runner)
        tm(*args, **kwargs)
        yield tm.trace


