"""What vectorized inference shares: how many batch dims a model uses, and running a function
inside one more plate to the left of them (particles of an ELBO, importance samples,
Predictive's samples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.params import get_param_store
from ember.poutine.plate_messenger import PlateMessenger
from ember.poutine.trace_struct import Trace

__all__ = ["guess_max_plate_nesting", "in_plate", "trace_params"]


def trace_params(trace: Trace) -> dict:
    """``{name: unconstrained tensor}`` of the store parameters whose param sites ``trace``
    recorded (``poutine.trace(param_only=True)`` around a step): what the step may update.
    Sites whose name is not in the store (substituted values) are left out."""
    store = get_param_store()
    out = {}
    for name, site in trace.nodes.items():
        if site.type == "param":
            u = store.unconstrained(name)
            if u is not None:
                out[name] = u
    return out


def guess_max_plate_nesting(*traces: Trace) -> int:
    """How many batch dims the sample sites of ``traces`` use: the deepest vectorized plate,
    and also any batch dims no plate declares (a distribution with batch_shape (3,) outside
    every plate, an observation of shape (5,) under a scalar distribution). A plate put left
    of that many dims never collides with a dim of the model's own."""
    n = 0
    for tr in traces:
        for site in tr.nodes.values():
            if site.type != "sample":
                continue
            for f in site.cond_indep_stack:
                if f.dim is not None:
                    n = max(n, -f.dim)
            fn = site.fn
            event_dim = len(getattr(fn, "event_shape", ()))
            batch_shape = getattr(fn, "batch_shape", None)
            if batch_shape is not None:
                n = max(n, len(batch_shape))
            v = site.value
            if isinstance(v, torch.Tensor):
                n = max(n, v.dim() - event_dim)
    return n


def in_plate(fn: Callable, name: str, size: int, dim: int) -> Callable:
    """``fn`` run inside ``plate(name, size, dim=dim)``."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with PlateMessenger(name, size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped
