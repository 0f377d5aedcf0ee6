"""Relaxed (Gumbel-softmax / concrete) distributions with straight-through draws (Pyro's
``RelaxedBernoulliStraightThrough`` and ``RelaxedOneHotCategoricalStraightThrough``): ``rsample``
returns the quantized draw (0/1, or one-hot) while the gradient is the relaxed draw's, and
``log_prob`` of such a draw scores the relaxed value it came from."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions.utils import clamp_probs

from ember.distributions.torch import RelaxedBernoulli, RelaxedOneHotCategorical

__all__ = ["RelaxedBernoulliStraightThrough", "RelaxedOneHotCategoricalStraightThrough"]


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized value given; backward: the gradient passed to the relaxed one."""

    @staticmethod
    def forward(ctx: Any, soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return hard

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    out = _StraightThrough.apply(soft, hard)
    out._unquantize = soft  # log_prob scores the relaxed value this draw came from
    return out


class RelaxedBernoulliStraightThrough(RelaxedBernoulli):
    """:class:`RelaxedBernoulli` whose ``rsample`` rounds the relaxed draw to 0 or 1, with the
    relaxed draw's gradient (straight-through); ``log_prob`` of such a draw is the relaxed value's.

    Shapes: ``batch_shape`` is the broadcast shape of ``temperature`` and ``probs`` (or ``logits``);
    ``event_shape`` is ``()``."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        soft = clamp_probs(super().rsample(sample_shape))
        return _straight_through(soft, soft.detach().round())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(getattr(value, "_unquantize", value))


class RelaxedOneHotCategoricalStraightThrough(RelaxedOneHotCategorical):
    """:class:`RelaxedOneHotCategorical` whose ``rsample`` is the one-hot vector of the relaxed
    draw's largest entry, with the relaxed draw's gradient (straight-through); ``log_prob`` of such a
    draw is the relaxed value's.

    Shapes: ``probs`` (or ``logits``) has shape ``batch_shape + (K,)``; ``event_shape`` is ``(K,)``."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        soft = clamp_probs(super().rsample(sample_shape))
        hard = torch.nn.functional.one_hot(soft.detach().argmax(-1), soft.size(-1)).to(soft.dtype)
        return _straight_through(soft, hard)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(getattr(value, "_unquantize", value))
