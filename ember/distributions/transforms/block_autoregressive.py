"""Block neural autoregressive flow (De Cao et al. 2019), Pyro's ``BlockAutoregressive``:
a stack of block-lower-triangular linear layers whose diagonal blocks are positive (so each
output is monotone in its own input and depends only on earlier inputs), with monotone
activations between them. The log-Jacobian of each coordinate is carried through the layers as
a small log-matrix per coordinate and combined with ``logsumexp``. Forward only (no closed-form
inverse; the cached inverse of its own outputs works)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ember.distributions.transforms.torch_transform import TransformModule, _ForwardOnly

__all__ = ["BlockAutoregressive", "MaskedBlockLinear", "block_autoregressive"]

_LOG2 = math.log(2.0)


class MaskedBlockLinear(nn.Module):
    """``y = W x + b`` with ``W`` (``[dim * out_per, dim * in_per]``) block lower triangular in
    ``dim x dim`` blocks, its diagonal blocks positive (``exp`` of the raw weight), and each row
    weight-normalised with a learned positive gain. ``forward`` returns ``y`` and the log of the
    diagonal blocks, ``[dim, out_per, in_per]``."""

    def __init__(self, in_features: int, out_features: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        if in_features % dim or out_features % dim:
            raise ValueError(f"MaskedBlockLinear: in_features={in_features} and out_features={out_features} must be multiples of dim={dim}")
        self.in_features, self.out_features, self.dim = in_features, out_features, dim
        ip, op = in_features // dim, out_features // dim
        weight = torch.zeros(out_features, in_features)
        mask_d = torch.zeros_like(weight)
        mask_o = torch.zeros_like(weight)
        for i in range(dim):
            block = torch.empty(op, (i + 1) * ip)
            nn.init.xavier_uniform_(block)
            weight[i * op : (i + 1) * op, : (i + 1) * ip] = block
            mask_d[i * op : (i + 1) * op, i * ip : (i + 1) * ip] = 1
            mask_o[i * op : (i + 1) * op, : i * ip] = 1
        self._weight = nn.Parameter(weight)
        self._diag_weight = nn.Parameter(torch.rand(out_features, 1).log())
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-1 / math.sqrt(op), 1 / math.sqrt(op))) if bias else None
        self.register_buffer("mask_d", mask_d)
        self.register_buffer("mask_o", mask_o)
        self._shape = (dim, op, ip)

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the weight matrix, the log of its diagonal blocks ``[dim, out_per, in_per]``)."""
        w = torch.exp(self._weight) * self.mask_d + self._weight * self.mask_o
        sq_norm = w.pow(2).sum(-1, keepdim=True)
        w = torch.exp(self._diag_weight) * w * torch.rsqrt(sq_norm)
        log_diag = self._diag_weight + self._weight - 0.5 * torch.log(sq_norm)
        return w, log_diag[self.mask_d.bool()].view(self._shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, log_diag = self.get_weights()
        return F.linear(x, w, self.bias), log_diag


def _log_derivative(kind: str, pre: torch.Tensor) -> torch.Tensor:
    if kind == "tanh":
        return 2 * (_LOG2 - pre - F.softplus(-2 * pre))
    if kind == "sigmoid":
        return F.logsigmoid(pre) + F.logsigmoid(-pre)
    if kind == "ELU":
        return torch.where(pre > 0, torch.zeros_like(pre), pre)
    return torch.where(pre > 0, torch.zeros_like(pre), torch.full_like(pre, math.log(0.01)))  # LeakyReLU


_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "ELU": F.elu, "LeakyReLU": lambda x: F.leaky_relu(x, 0.01)}


class BlockAutoregressive(_ForwardOnly, TransformModule):
    """A block neural autoregressive flow on ``[..., input_dim]`` with hidden layers of
    ``input_dim * h`` units for ``h`` in ``hidden_factors`` and ``activation`` in
    ``tanh``/``sigmoid``/``ELU``/``LeakyReLU`` between them. ``residual``: None, ``"normal"``
    (``y = x + f(x)``) or ``"gated"`` (``y = a f(x) + (1 - a) x`` with a learned ``a`` in (0, 1)).
    ``log|det J|`` is exact (the Jacobian is triangular): shape ``x.shape[:-1]``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True

    def __init__(self, input_dim: int, hidden_factors: list[int] = (8, 8), activation: str = "tanh", residual: str | None = None) -> None:  # type: ignore[assignment]
        super().__init__(cache_size=1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"BlockAutoregressive: activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}")
        if residual not in (None, "normal", "gated"):
            raise ValueError(f"BlockAutoregressive: residual must be None, 'normal' or 'gated'; got {residual!r}")
        if any(h < 1 for h in hidden_factors):
            raise ValueError(f"BlockAutoregressive: hidden_factors must be positive; got {list(hidden_factors)}")
        sizes = [input_dim] + [input_dim * h for h in hidden_factors] + [input_dim]
        self.layers = nn.ModuleList([MaskedBlockLinear(sizes[i], sizes[i + 1], input_dim) for i in range(len(sizes) - 1)])
        self.input_dim, self.activation, self.residual = input_dim, activation, residual
        self.gate = nn.Parameter(torch.randn(1)) if residual == "gated" else None

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        D = self.input_dim
        h, logJ = x, None
        for i, layer in enumerate(self.layers):
            pre, log_diag = layer(h)  # log_diag [D, out, in]
            if logJ is None:
                logJ = log_diag.expand(x.shape[:-1] + log_diag.shape)
            else:
                logJ = torch.logsumexp(log_diag.unsqueeze(-1) + logJ.unsqueeze(-3), dim=-2)
            if i < len(self.layers) - 1:
                h = _ACTIVATIONS[self.activation](pre)
                logJ = logJ + _log_derivative(self.activation, pre).reshape(pre.shape[:-1] + (D, -1, 1))
            else:
                h = pre
        ld = logJ.reshape(x.shape[:-1] + (D,))  # log dy_j/dx_j of f
        if self.residual == "normal":
            return x + h, F.softplus(ld).sum(-1)
        if self.residual == "gated":
            a = torch.sigmoid(self.gate)
            return a * h + (1 - a) * x, torch.logaddexp(F.logsigmoid(self.gate) + ld, F.logsigmoid(-self.gate)).sum(-1)
        return h, ld.sum(-1)



def block_autoregressive(input_dim: int, **kwargs) -> BlockAutoregressive:
    """A :class:`BlockAutoregressive` flow (``hidden_factors=[8, 8]``, ``activation='tanh'``, ``residual=None``)."""
    return BlockAutoregressive(input_dim, **kwargs)
