"""Autoregressive networks (MADE, Germain et al. 2015) with Pyro's constructor
signatures: output ``j`` depends only on inputs that come before ``j`` in a permutation.
This module imports only torch (it sits below the distributions in Ember's layers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ember.nn.dense_nn import _run_layers

__all__ = ["AutoRegressiveNN", "ConditionalAutoRegressiveNN", "MaskedLinear", "create_mask", "sample_mask_indices"]


def sample_mask_indices(input_dim: int, hidden_dim: int) -> torch.Tensor:
    """Degrees of ``hidden_dim`` hidden units, spread evenly over ``0..input_dim-2``: a hidden
    unit of degree ``m`` may see the inputs ranked ``<= m`` in the ordering. Shape ``(hidden_dim,)``."""
    return torch.arange(hidden_dim) % max(1, input_dim - 1)


def create_mask(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int], permutation: torch.Tensor, output_dim_multiplier: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The MADE masks for ``input_dim`` inputs (plus ``context_dim`` context inputs that every
    hidden unit may see). ``permutation[r]`` is the input ranked ``r``. Returns
    (one mask of shape ``(out_features, in_features)`` per hidden layer, the output layer's mask ``[input_dim * mult, hidden]``,
    the direct input-to-output mask ``[input_dim * mult, input_dim]``). Output row ``p * input_dim + j``
    belongs to input ``j``."""
    rank = torch.empty(input_dim, dtype=torch.long)
    rank[permutation] = torch.arange(input_dim)
    degrees = [sample_mask_indices(input_dim, h) for h in hidden_dims]
    masks = []
    in_mask = (rank.unsqueeze(0) <= degrees[0].unsqueeze(1)).float()  # [h0, input_dim]
    if context_dim:
        in_mask = torch.cat([torch.ones(hidden_dims[0], context_dim), in_mask], dim=1)
    masks.append(in_mask)
    for prev, cur in zip(degrees[:-1], degrees[1:]):
        masks.append((prev.unsqueeze(0) <= cur.unsqueeze(1)).float())
    out_rank = rank.repeat(output_dim_multiplier)  # [input_dim * mult]
    out_mask = (degrees[-1].unsqueeze(0) < out_rank.unsqueeze(1)).float()
    skip_mask = (rank.unsqueeze(0) < out_rank.unsqueeze(1)).float()
    return masks, out_mask, skip_mask


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` of the weight's shape
    ``(out_features, in_features)``."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", mask.data)

    def forward(self, _input: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` to ``(..., out_features)`` through the masked weight."""
        return nn.functional.linear(_input, self.mask * self.weight, self.bias)


class ConditionalAutoRegressiveNN(nn.Module):
    """A MADE network ``f(inputs, context)``. ``inputs``: ``[..., input_dim]``; ``context``:
    ``[..., context_dim]`` (broadcast against the inputs' batch dims). When every entry of
    ``param_dims`` is 1 each parameter comes out as ``[..., input_dim]``; otherwise each is
    ``[..., param_dim, input_dim]``. One parameter comes back as a tensor, several as a tuple. ``permutation`` (default: a random one)
    sets the autoregressive order."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int],
        param_dims: Sequence[int] = (1, 1),
        permutation: torch.Tensor | None = None,
        skip_connections: bool = False,
        nonlinearity: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"AutoRegressiveNN: input_dim must be >= 1; got {input_dim}")
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("AutoRegressiveNN: hidden_dims must name at least one hidden layer")
        for h in hidden_dims:
            if h < input_dim - 1:
                raise ValueError(f"AutoRegressiveNN: each hidden layer needs at least input_dim - 1 = {input_dim - 1} units; got hidden_dims={hidden_dims}")
        self.input_dim, self.context_dim, self.hidden_dims = input_dim, context_dim, hidden_dims
        self.param_dims = list(param_dims)
        self.count_params = len(self.param_dims)
        self.output_multiplier = sum(self.param_dims)
        self.all_ones = all(p == 1 for p in self.param_dims)
        if permutation is None:
            permutation = torch.randperm(input_dim)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if permutation.shape != (input_dim,) or not torch.equal(permutation.sort().values, torch.arange(input_dim)):
            raise ValueError(f"AutoRegressiveNN: permutation must be a permutation of 0..{input_dim - 1}; got {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        masks, out_mask, skip_mask = create_mask(input_dim, context_dim, hidden_dims, permutation, self.output_multiplier)
        sizes = [input_dim + context_dim] + hidden_dims
        self.layers = nn.ModuleList([MaskedLinear(sizes[i], sizes[i + 1], masks[i]) for i in range(len(hidden_dims))])
        self.layers.append(MaskedLinear(hidden_dims[-1], input_dim * self.output_multiplier, out_mask))
        self.skip_layer = MaskedLinear(input_dim, input_dim * self.output_multiplier, skip_mask, bias=False) if skip_connections else None
        self.f = nonlinearity if nonlinearity is not None else nn.ReLU()

    def get_permutation(self) -> torch.Tensor:
        """The autoregressive order, a tensor of shape ``(input_dim,)``: ``permutation[r]`` is the input ranked ``r``."""
        return self.permutation

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``inputs`` of shape ``(..., input_dim)`` and ``context`` of shape ``(..., context_dim)`` to
        the parameters: each of shape ``(..., input_dim)`` when every ``param_dims`` entry is 1, else
        ``(..., param_dim, input_dim)`` (a tensor for one parameter, a tuple for several)."""
        h = _run_layers(self, inputs, context)
        if self.skip_layer is not None:
            h = h + self.skip_layer(inputs)
        if self.output_multiplier == 1:
            return h
        h = h.reshape(inputs.shape[:-1] + (self.output_multiplier, self.input_dim))
        if self.count_params == 1:
            return h
        if self.all_ones:
            return tuple(h.unbind(-2))
        out, start = [], 0
        for p in self.param_dims:  # mixed sizes: each [..., p, input_dim], a size-1 one too (as in Pyro)
            out.append(h[..., start : start + p, :])
            start += p
        return tuple(out)


class AutoRegressiveNN(ConditionalAutoRegressiveNN):
    """A MADE network ``f(inputs)`` without context (see :class:`ConditionalAutoRegressiveNN`).
    ``hidden_dims`` defaults to Pyro's helpers' ``[3 * input_dim + 1]`` when given as None.
    ``inputs`` have shape ``(..., input_dim)``; the outputs' shapes are those of
    :class:`ConditionalAutoRegressiveNN`."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        param_dims: Sequence[int] = (1, 1),
        permutation: torch.Tensor | None = None,
        skip_connections: bool = False,
        nonlinearity: nn.Module | None = None,
    ) -> None:
        super().__init__(input_dim, 0, hidden_dims, param_dims, permutation, skip_connections, nonlinearity)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:  # type: ignore[override]
        """``inputs`` of shape ``(..., input_dim)`` to the parameters, each ``(..., input_dim)`` or
        ``(..., param_dim, input_dim)`` as in :class:`ConditionalAutoRegressiveNN`."""
        return super().forward(inputs, None)
