"""Helpers for handlers and trace-based inference (Pyro's ``pyro.poutine.util``).

- :func:`enum_extend`, :func:`mc_extend`, :func:`discrete_escape`, :func:`all_escape`: the
  pieces of :func:`ember.poutine.queue`, Pyro's sequential enumeration by a queue of partial traces.
- :func:`prune_subsample_sites`: a copy of a trace without the plates' index sites.
- :func:`site_is_subsample`, :func:`site_is_factor`, :func:`site_is_deterministic`: site roles.
- :func:`enable_validation`, :func:`is_validation_enabled`: Ember's own checks (one switch for
  handlers and inference in Ember).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ember.poutine.trace_struct import Trace, site_is_subsample
from ember.runtime import _VALIDATION, Message, is_validation_enabled

__all__ = [
    "all_escape",
    "discrete_escape",
    "enable_validation",
    "enum_extend",
    "is_validation_enabled",
    "mc_extend",
    "prune_subsample_sites",
    "site_is_deterministic",
    "site_is_factor",
    "site_is_subsample",
]


def enable_validation(is_validate: bool) -> None:
    """Switch Ember's own checks (shapes, model/guide structure, finite losses) on or off; torch's
    distribution validation is left alone (``ember.enable_validation`` switches both)."""
    _VALIDATION[0] = bool(is_validate)


def site_is_factor(site: Message) -> bool:
    """Whether ``site`` was made by ``ember.factor`` (an observed site whose log-density is the factor)."""
    return site.type == "sample" and bool(site.is_observed) and hasattr(site.fn, "log_factor")


def site_is_deterministic(site: Message) -> bool:
    """Whether ``site`` was made by ``ember.deterministic`` (a recorded value, never scored)."""
    return site.type == "sample" and bool(site.infer.get("_deterministic", False))


def prune_subsample_sites(trace: Trace) -> Trace:
    """A copy of ``trace`` without the sites in which plates record their subsample indices."""
    pruned = trace.copy()
    for name, site in list(pruned.nodes.items()):
        if site_is_subsample(site):
            pruned.remove_node(name)
    return pruned


def _as_message(msg: Any, who: str) -> Message:
    """``msg`` as a :class:`Message`: a Message as it is, a Pyro-style dict message (with at least
    ``type`` and ``name``) copied into one."""
    if isinstance(msg, Message):
        return msg
    if isinstance(msg, Mapping) and "type" in msg and "name" in msg:
        new = Message(msg["type"], msg["name"])
        new.update({k: v for k, v in msg.items() if k not in ("type", "name")})
        return new
    raise TypeError(f"{who}: expected a site message (an ember Message, or a dict with 'type' and 'name'); got {type(msg).__name__} {msg!r:.80}")


def _is_fresh_sample(trace: Trace, msg: Any) -> bool:
    msg = _as_message(msg, "escape_fn")
    return msg.type == "sample" and not msg.is_observed and msg.name not in trace.nodes


def discrete_escape(trace: Trace, msg: Message) -> bool:
    """Whether ``msg`` is an unobserved sample site, not yet in ``trace``, whose distribution
    can enumerate its support (the sites :func:`ember.poutine.queue` branches on by default)."""
    return _is_fresh_sample(trace, msg) and bool(getattr(_as_message(msg, "discrete_escape").fn, "has_enumerate_support", False))


def all_escape(trace: Trace, msg: Message) -> bool:
    """Whether ``msg`` is an unobserved sample site not yet in ``trace``."""
    return _is_fresh_sample(trace, msg)


def enum_extend(trace: Trace, msg: Message, num_samples: int | None = None) -> list[Trace]:
    """One copy of ``trace`` per value in the support of site ``msg``, each with the site
    added at that value (at most ``num_samples`` copies; ``None`` or a negative number: all).

    ``msg.fn.enumerate_support()`` gives the values: a tensor ``[support_size, *batch_shape,
    *event_shape]``; copy ``i`` holds its ``i``-th entry. A site whose distribution cannot enumerate raises ``TypeError``.
    """
    msg = _as_message(msg, "enum_extend")
    fn = msg.fn
    if not getattr(fn, "has_enumerate_support", False):
        raise TypeError(
            f"enum_extend: site '{msg.name}' has a {type(fn).__name__}, which cannot enumerate its support; "
            f"use escape_fn=discrete_escape so that only discrete sites are enumerated"
        )
    if num_samples is None:
        num_samples = -1
    support = fn.enumerate_support()
    if num_samples >= 0:
        support = support[:num_samples]
    return [_with_site(trace, msg, value) for value in support]


def mc_extend(trace: Trace, msg: Message, num_samples: int | None = None) -> list[Trace]:
    """``num_samples`` (default 1) copies of ``trace``, each with site ``msg`` added at a fresh
    draw of its distribution (a Monte Carlo alternative to :func:`enum_extend`)."""
    msg = _as_message(msg, "mc_extend")
    if num_samples is None:
        num_samples = 1
    return [_with_site(trace, msg, msg.fn(*msg.args, **msg.kwargs)) for _ in range(num_samples)]


def _with_site(trace: Trace, msg: Message, value: Any) -> Trace:
    """A copy of ``trace`` with a copy of site ``msg`` added at ``value`` (done, to be replayed)."""
    site = msg.copy()
    site.value = value
    site.done = True
    site.stop = False
    site.continuation = None
    new = trace.copy()
    new.nodes[msg.name] = site
    return new


def _dist_device_dtype(fn: Any) -> tuple:
    seen = 0
    while fn is not None and seen < 8:
        seen += 1
        for v in vars(fn).values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v.device, v.dtype
        fn = getattr(fn, "base_dist", None)
    return None, torch.get_default_dtype()


def _obs_to_tensor(obs: Any, fn: Any) -> torch.Tensor:
    """Accept Python numbers, lists and numpy arrays as observations."""
    device, dtype = _dist_device_dtype(fn)
    if isinstance(obs, np.ndarray) and not np.issubdtype(obs.dtype, np.floating):
        return torch.as_tensor(obs, device=device)
    if isinstance(obs, (bool, numbers.Number)):
        return torch.as_tensor(float(obs), dtype=dtype, device=device)
    return torch.as_tensor(obs, dtype=dtype, device=device)
