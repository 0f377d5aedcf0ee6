"""``scale`` and ``mask``: reweight or switch off log-densities."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from ember.poutine.messenger import Messenger
from ember.runtime import Message, is_validation_enabled


class ScaleMessenger(Messenger):
    """Multiply the log-density of every sample site inside by ``scale`` (> 0): a
    number or a tensor that broadcasts against the sites' batch shapes."""

    def __init__(self, fn: Callable | None = None, scale: Any = 1.0) -> None:
        super().__init__(fn)
        if isinstance(scale, torch.Tensor):
            if is_validation_enabled() and not bool((scale > 0).all()):
                raise ValueError(f"poutine.scale expects a positive scale; got a tensor with min {scale.min().item()}")
        elif isinstance(scale, numbers.Number):
            if not scale > 0:
                raise ValueError(f"poutine.scale expects a positive scale; got {scale!r}")
            scale = float(scale)
        else:
            raise TypeError(f"poutine.scale expects a positive number or tensor; got {type(scale).__name__}")
        self.scale = scale

    def _pyro_sample(self, msg: Message) -> None:
        s = msg.scale
        msg.scale = self.scale if (type(s) is float and s == 1.0) else s * self.scale


def scale(fn: Callable | None = None, scale: Any = 1.0) -> ScaleMessenger:
    """Multiply the log-density of every sample site inside by ``scale`` (a positive float, or a
    tensor that broadcasts against each site's batch shape). A handler: ``scale(fn, scale=...)``,
    a decorator or a context manager."""
    return ScaleMessenger(fn, scale=scale)


class MaskMessenger(Messenger):
    """Switch off (``False``) the log-density of sample sites inside, per element of a
    boolean tensor that broadcasts against the sites' batch shapes, or wholesale."""

    def __init__(self, fn: Callable | None = None, mask: Any = None) -> None:
        super().__init__(fn)
        if not isinstance(mask, bool):
            from ember.distributions.torch_dist import as_bool_mask

            mask = as_bool_mask(mask, "poutine.mask")
        self.mask = mask

    def _pyro_sample(self, msg: Message) -> None:
        m = msg.mask
        msg.mask = self.mask if m is None else (m & self.mask)


def mask(fn: Callable | None = None, mask: Any = None) -> MaskMessenger:
    """Switch off the log-density of the sample sites inside where ``mask`` is False: a bool, or a
    bool tensor that broadcasts against each site's batch shape (combined with ``&`` with masks
    already there). A handler: ``mask(fn, mask=...)``, a decorator or a context manager."""
    return MaskMessenger(fn, mask=mask)
