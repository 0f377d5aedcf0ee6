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
    return MaskMessenger(fn, mask=mask)
