"""Fully connected networks with Pyro's constructor signatures, used as hypernetworks by
the coupling flows. This module imports only torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConditionalDenseNN", "DenseNN"]


class ConditionalDenseNN(nn.Module):
    """An MLP ``f(inputs, context)`` on ``cat([context, inputs], -1)`` whose output is split
    into the parameters of ``param_dims``: each ``[..., param_dim]`` (a tensor when there is one
    parameter, a tuple otherwise)."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int],
        param_dims: Sequence[int] = (1, 1),
        nonlinearity: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input_dim, self.context_dim, self.hidden_dims = input_dim, context_dim, list(hidden_dims)
        self.param_dims = list(param_dims)
        self.count_params = len(self.param_dims)
        self.output_multiplier = sum(self.param_dims)
        sizes = [input_dim + context_dim] + self.hidden_dims + [self.output_multiplier]
        self.layers = nn.ModuleList([nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)])
        self.f = nonlinearity if nonlinearity is not None else nn.ReLU()

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``inputs`` of shape ``(..., input_dim)`` and ``context`` of shape ``(..., context_dim)``
        (expanded to the inputs' batch dims) to one tensor of shape ``(..., param_dim)`` per entry of
        ``param_dims`` (a tensor when there is one, a tuple otherwise)."""
        h = _run_layers(self, inputs, context)
        if self.count_params == 1:
            return h
        return tuple(h.split(self.param_dims, dim=-1))


class DenseNN(ConditionalDenseNN):
    """An MLP ``f(inputs)`` (see :class:`ConditionalDenseNN`)."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], param_dims: Sequence[int] = (1, 1), nonlinearity: nn.Module | None = None) -> None:
        super().__init__(input_dim, 0, hidden_dims, param_dims, nonlinearity)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:  # type: ignore[override]
        """``inputs`` of shape ``(..., input_dim)`` to one tensor of shape ``(..., param_dim)`` per entry
        of ``param_dims`` (a tensor when there is one, a tuple otherwise)."""
        return super().forward(inputs, None)


def _run_layers(net: nn.Module, inputs: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``net.layers`` (``nn.Linear``, ``net.f`` between them) on ``inputs`` ``(..., input_dim)``,
    with ``context`` ``(..., context_dim)`` expanded to the inputs' batch dims and put in front
    when ``net.context_dim``: the output of the last layer, ``(..., out_features)``."""
    if net.context_dim:
        if context is None:
            raise ValueError(f"{type(net).__name__}: this network needs a context of size {net.context_dim}")
        context = context.expand(inputs.shape[:-1] + context.shape[-1:])
        h = torch.cat([context, inputs], dim=-1)
    else:
        h = inputs
    for layer in net.layers[:-1]:
        h = net.f(layer(h))
    return net.layers[-1](h)
