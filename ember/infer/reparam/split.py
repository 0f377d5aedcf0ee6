"""``SplitReparam``: a site split along one event dim into auxiliary sites, as ``torch.split``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import constraints

from ember.infer.reparam.reparam import Reparam

__all__ = ["SplitReparam", "default_support", "real_support", "same_support"]


def same_support(fn: Any, *args: Any) -> Any:
    """The support of every part: the site's own."""
    return fn.support


def real_support(fn: Any, *args: Any) -> Any:
    """The support of every part: the reals, with the site's event dims."""
    return constraints.independent(constraints.real, len(fn.event_shape))


def default_support(fn: Any, part: slice, dim: int) -> Any:
    """The support of the part ``part`` of the site's value along ``dim``: the site's support, with a
    ``stack``/``cat`` constraint along ``dim`` cut to the part (each part keeps its own constraints)."""
    support = fn.support
    wrappers = []
    while isinstance(support, constraints.independent):
        wrappers.append(support.reinterpreted_batch_ndims)
        support = support.base_constraint
    if isinstance(support, constraints.stack) and support.dim == dim:
        support = constraints.stack(support.cseq[part], dim)
    elif isinstance(support, constraints.cat) and support.dim == dim:
        support = constraints.cat(support.cseq[part], dim, support.lengths[part])
    for n in reversed(wrappers):
        support = constraints.independent(support, n)
    return support


class SplitReparam(Reparam):
    """Split a site's value along the event dim ``dim`` into parts of sizes ``sections``, each an
    auxiliary site ``{name}_split_{i}`` (an improper uniform over its support: the parts carry no
    density of their own); the site becomes the point mass at their concatenation, scored with the
    site's own ``log_prob``. So the parts can be given different reparameterizers, guides or
    mass-matrix blocks (a time series' low frequencies in ``full_mass`` beside the globals).

    :param sections: the size of each part, summing to the size of the site along ``dim``.
    :param dim: a negative dim, counted from the right of the value, that must be an event dim.
    :param support_fn: ``(fn, part_slice, dim) -> support`` of a part (:func:`default_support`,
        :func:`same_support` or :func:`real_support`).
    """

    def __init__(self, sections: list[int], dim: int, support_fn: Callable = default_support) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim >= 0:
            raise ValueError(f"SplitReparam: dim must be a negative integer (counted from the right); got {dim!r}")
        if not isinstance(sections, (list, tuple)) or not sections or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sections):
            raise ValueError(f"SplitReparam: sections must be a list of positive integers; got {sections!r}")
        self.event_dim = -dim
        self.sections = list(sections)
        self.support_fn = support_fn

    def apply(self, msg: dict) -> dict:
        from ember.distributions import ImproperUniform
        from ember.poutine.runtime import get_mask
        from ember.primitives import sample

        name, fn, value, is_observed = msg["name"], msg["fn"], msg["value"], msg["is_observed"]
        event_dim = len(fn.event_shape)
        if event_dim < self.event_dim:
            raise ValueError(
                f"SplitReparam at site '{name}': dim {-self.event_dim} is not an event dim of the site (event_shape "
                f"{tuple(fn.event_shape)}); make it one with .to_event(n)")
        dim = event_dim - self.event_dim  # the split dim, as an index into event_shape
        size = fn.event_shape[dim]
        if sum(self.sections) != size:
            raise ValueError(
                f"SplitReparam at site '{name}': sections {self.sections} sum to {sum(self.sections)}, but the site has "
                f"size {size} along dim {-self.event_dim}")
        parts: list[Any] = list(value.split(self.sections, -self.event_dim)) if value is not None else [None] * len(self.sections)
        left, right = fn.event_shape[:dim], fn.event_shape[dim + 1:]
        start = 0
        for i, n in enumerate(self.sections):
            part_fn = ImproperUniform(self.support_fn(fn, slice(start, start + n), -self.event_dim), fn.batch_shape,
                                      left + (n,) + right)
            if parts[i] is None:
                parts[i] = sample(f"{name}_split_{i}", part_fn)
            elif is_observed:
                sample(f"{name}_split_{i}", part_fn, obs=parts[i])
            else:
                from ember.poutine.misc_messengers import _SubstituteValuesMessenger

                with _SubstituteValuesMessenger(data={f"{name}_split_{i}": parts[i]}):
                    sample(f"{name}_split_{i}", part_fn)
            start += n
        if value is None:
            shape = torch.broadcast_shapes(*(p.shape[:p.dim() - self.event_dim] for p in parts))
            parts = [p.expand(shape + p.shape[p.dim() - self.event_dim:]) for p in parts]
            value = torch.cat(parts, dim=-self.event_dim)
        log_density = 0.0 if get_mask() is False else fn.log_prob(value)
        return self._observed(value, event_dim, log_density)
