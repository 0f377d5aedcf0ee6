"""Helpers for automatic guides (Pyro's ``pyro.infer.autoguide.utils``): the entropy of a
mean-field model, clearer errors for sites that continuous guides cannot handle, and setting a
dotted attribute path on a module."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Iterator
from typing import Any

import torch

from ember import poutine
from ember.nn.module import PyroModule
from ember.poutine.util import site_is_subsample

__all__ = ["deep_setattr", "helpful_support_errors", "mean_field_entropy"]


def deep_setattr(obj: Any, key: str, val: Any) -> None:
    """Set the dotted attribute path ``key`` (``"a.b.c"``) of ``obj`` to ``val``, creating each
    missing intermediate attribute as an empty :class:`~ember.nn.PyroModule`."""
    *parents, leaf = key.split(".")
    for name in parents:
        child = getattr(obj, name, None)
        if child is None:
            child = PyroModule()
            setattr(obj, name, child)
            child = getattr(obj, name)
        obj = child
    setattr(obj, leaf, val)


def mean_field_entropy(model: Callable, args: tuple, whitelist: Container[str] | None = None) -> torch.Tensor | float:
    """The entropy of ``model(*args)`` taken as mean-field (all sample sites independent): the sum
    of ``site["fn"].entropy()`` over its sample sites (observed ones included, subsample sites
    excluded), or over those named in ``whitelist``. Each site's entropy has the site's
    ``batch_shape``; the sum broadcasts them (a scalar for scalar sites; ``0.0`` without sites)."""
    trace = poutine.trace(model).get_trace(*args)
    entropy: torch.Tensor | float = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if whitelist is None or name in whitelist:
            entropy = entropy + site["fn"].entropy()
    return entropy


@contextlib.contextmanager
def helpful_support_errors(site: Any) -> Iterator[None]:
    """Turn a ``NotImplementedError`` raised inside the context while a continuous guide handles
    ``site`` (a sample site's message) into a ``ValueError`` that names the site and the fix: a
    discrete site is to be enumerated or hidden from the autoguide; a spherical one reparametrized
    with ``ProjectedNormalReparam``. Other errors pass unchanged."""
    try:
        yield
    except NotImplementedError as e:
        support = site["fn"].support
        name = site["name"]
        if support.is_discrete:
            raise ValueError(
                f"Continuous inference cannot handle discrete sample site '{name}'. Consider enumerating that variable "
                "as documented in https://pyro.ai/examples/enumeration.html . If you are already enumerating, take care "
                "to hide this site when constructing an autoguide, e.g. "
                f"guide = AutoNormal(poutine.block(model, hide=['{name}']))."
            ) from None
        if "sphere" in repr(support).lower():
            raise ValueError(
                f"Continuous inference cannot handle spherical sample site '{name}'. Consider using ProjectedNormal "
                "distribution together with a reparameterizer, e.g. "
                f"poutine.reparam(config={{'{name}': ProjectedNormalReparam()}})."
            ) from None
        raise e from None
