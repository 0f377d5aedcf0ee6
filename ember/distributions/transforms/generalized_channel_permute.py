"""``GeneralizedChannelPermute`` (Glow's invertible 1x1 convolution, Kingma & Dhariwal 2018):
a learnable invertible mixing of the channels of ``[..., C, H, W]`` images, parameterised by
an LU decomposition ``W = P L U`` (fixed permutation ``P``, unit lower ``L``, upper ``U``), so
``log|det J| = H W sum log|diag U|`` and the inverse is two triangular solves."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import constraints

from ember.distributions.transforms.torch_transform import ConditionalTransformModule, TransformModule
from ember.nn.dense_nn import DenseNN

__all__ = ["ConditionalGeneralizedChannelPermute", "GeneralizedChannelPermute", "conditional_generalized_channel_permute",
           "generalized_channel_permute"]


def _weight(P: torch.Tensor, L_raw: torch.Tensor, U_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W = P L U, L, U) from the raw parameters (the strict lower part of ``L_raw``, the upper part of ``U_raw``)."""
    C = P.size(-1)
    eye = torch.eye(C, dtype=L_raw.dtype, device=L_raw.device)
    L = L_raw.tril(-1) + eye
    U = U_raw.triu()
    return P @ L @ U, L, U


def _mix(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``y[..., i, h, w] = sum_j W[..., i, j] x[..., j, h, w]``."""
    return torch.einsum("...ij,...jhw->...ihw", W, x)


class GeneralizedChannelPermute(TransformModule):
    """An invertible 1x1 convolution over ``channels`` of ``[..., C, H, W]`` inputs (event dim 3).
    ``permutation`` (default random) fixes ``P``; ``L`` and ``U`` are learnable, ``U``'s diagonal
    starting at 1 (the transform starts as the permutation)."""

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True

    def __init__(self, channels: int = 3, permutation: torch.Tensor | None = None) -> None:
        super().__init__(cache_size=1)
        perm = torch.randperm(channels) if permutation is None else torch.as_tensor(permutation, dtype=torch.long)
        if perm.shape != (channels,) or not torch.equal(perm.sort().values, torch.arange(channels)):
            raise ValueError(f"GeneralizedChannelPermute: permutation must be a permutation of 0..{channels - 1}; got {perm.tolist()}")
        self.register_buffer("permutation", torch.eye(channels)[perm])
        self.channels = channels
        self.LU = nn.Parameter(torch.eye(channels) + 0.01 * torch.randn(channels, channels).tril(-1))

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        P = self.permutation.to(self.LU.dtype)
        return P, self.LU, self.LU

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 3 or x.size(-3) != self.channels:
            raise ValueError(f"GeneralizedChannelPermute: input must be [..., {self.channels}, H, W]; got shape {tuple(x.shape)}")

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        W, _, _ = _weight(*self._params())
        return _mix(x, W)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        P, L_raw, U_raw = self._params()
        _, L, U = _weight(P, L_raw, U_raw)
        # x = U^-1 L^-1 P^T y, by two triangular solves on the flattened pixels
        z = _mix(y, P.transpose(-1, -2))
        flat = z.flatten(-2)  # [..., C, HW]
        flat = torch.linalg.solve_triangular(L.expand(flat.shape[:-2] + L.shape[-2:]), flat, upper=False, unitriangular=True)
        flat = torch.linalg.solve_triangular(U.expand(flat.shape[:-2] + U.shape[-2:]), flat, upper=True)
        return flat.reshape(y.shape)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``H * W * log|det W|`` for images ``x``, ``y`` of shape ``batch_shape + (C, H, W)``: one value per image, of shape ``batch_shape``."""
        _, _, U_raw = self._params()
        hw = x.size(-1) * x.size(-2)
        ld = hw * U_raw.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        return ld.expand(x.shape[:-3]) if ld.dim() == 0 else ld


class ConditionalGeneralizedChannelPermute(ConditionalTransformModule):
    """:class:`GeneralizedChannelPermute` whose LU parameters come from ``nn(context)``, as in Pyro:
    ``nn`` returns ``C * C`` numbers (e.g. ``DenseNN(context_dim, [20], param_dims=[C * C])``),
    read as a ``C x C`` matrix ``LU`` whose strict lower triangle (plus the identity) is ``L`` and
    whose upper triangle, diagonal included, is ``U``; ``W = P L U``. Maps images of shape
    ``(..., C, H, W)``; ``context`` has shape ``(..., context_dim)`` (its batch dims broadcast
    with the images')."""

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True
    event_dim = 3

    def __init__(self, nn: Any, channels: int = 3, permutation: torch.Tensor | None = None) -> None:
        super().__init__()
        self.nn, self.channels = nn, channels
        perm = torch.randperm(channels) if permutation is None else torch.as_tensor(permutation, dtype=torch.long)
        self.register_buffer("permutation", torch.eye(channels)[perm])

    def condition(self, context: torch.Tensor) -> GeneralizedChannelPermute:
        LU = self.nn(context)
        if isinstance(LU, (tuple, list)) and len(LU) == 1:
            LU = LU[0]
        C = self.channels
        if not isinstance(LU, torch.Tensor) or LU.dim() < 1 or LU.size(-1) != C * C:
            got = f"shape {tuple(LU.shape)}" if isinstance(LU, torch.Tensor) else f"{type(LU).__name__} of {len(LU)}" if isinstance(LU, (tuple, list)) else type(LU).__name__
            raise ValueError(
                f"ConditionalGeneralizedChannelPermute: nn(context) must return one tensor of shape (..., {C * C}) "
                f"(C * C LU parameters for C = {C} channels, e.g. DenseNN(..., param_dims=[{C * C}])); got {got}"
            )
        LU = LU.reshape(LU.shape[:-1] + (C, C))
        t = GeneralizedChannelPermute.__new__(GeneralizedChannelPermute)
        TransformModule.__init__(t, cache_size=1)
        t.channels = C
        P = self.permutation.to(LU.dtype)
        t._params = lambda: (P, LU, LU)  # type: ignore[method-assign]
        return t


def generalized_channel_permute(channels: int = 3, permutation: torch.Tensor | None = None) -> GeneralizedChannelPermute:
    """A :class:`GeneralizedChannelPermute` on ``channels`` channels: inputs of shape
    ``(..., channels, H, W)``."""
    return GeneralizedChannelPermute(channels, permutation)


def conditional_generalized_channel_permute(context_dim: int, channels: int = 3, hidden_dims: list[int] | None = None) -> ConditionalGeneralizedChannelPermute:
    """A :class:`ConditionalGeneralizedChannelPermute` with Pyro's network: ``DenseNN(context_dim,
    hidden_dims, param_dims=[channels * channels])``, hidden ``[10 * channels, 10 * channels]`` by
    default (so Pyro's state_dicts load). Inputs ``(..., channels, H, W)``, context ``(..., context_dim)``."""
    hidden = [channels * 10, channels * 10] if hidden_dims is None else list(hidden_dims)
    return ConditionalGeneralizedChannelPermute(DenseNN(context_dim, hidden, param_dims=[channels * channels]), channels)
