"""Affine autoregressive flows (inverse autoregressive flow, Kingma et al. 2016) and
affine coupling flows (RealNVP, Dinh et al. 2017), with Pyro's names and helpers."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from ember.distributions.transforms.torch_transform import ConditionalTransformModule, TransformModule, _EventFromDim
from ember.nn.auto_reg_nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from ember.nn.dense_nn import ConditionalDenseNN, DenseNN

__all__ = [
    "AffineAutoregressive", "AffineCoupling", "ConditionalAffineAutoregressive", "ConditionalAffineCoupling",
    "affine_autoregressive", "affine_coupling", "conditional_affine_autoregressive", "conditional_affine_coupling",
]


def _clamp_preserve_gradients(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x`` clamped to ``[lo, hi]`` in value, with the identity's gradient (so a clipped
    log-scale keeps learning)."""
    return x + (x.clamp(lo, hi) - x).detach()


class AffineAutoregressive(TransformModule):
    """``y = mu(x) + sigma(x) * x`` where ``(mu, log sigma) = autoregressive_nn(x)`` (each
    ``[..., D]``, output ``j`` seeing only inputs before ``j``). Sampling (forward) is one
    network pass; the inverse takes ``D`` passes. ``log|det J| = sum_j log sigma_j`` (shape
    ``x.shape[:-1]``). With ``stable=True``: ``sigma = sigmoid(s + sigmoid_bias)``,
    ``y = sigma * x + (1 - sigma) * mu``. The log-scale is clipped to
    ``[log_scale_min_clip, log_scale_max_clip]``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True
    sign = +1

    def __init__(self, autoregressive_nn: Any, log_scale_min_clip: float = -5.0, log_scale_max_clip: float = 3.0,
                 sigmoid_bias: float = 2.0, stable: bool = False) -> None:
        super().__init__(cache_size=1)
        self.arn = autoregressive_nn
        self.log_scale_min_clip, self.log_scale_max_clip = log_scale_min_clip, log_scale_max_clip
        self.sigmoid_bias = sigmoid_bias
        self.stable = stable
        self._cached_log_scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, scale, log_scale) from the network at ``x``."""
        mean, s = self.arn(x)
        if self.stable:
            s = s + self.sigmoid_bias
            return mean, torch.sigmoid(s), F.logsigmoid(s)
        log_scale = _clamp_preserve_gradients(s, self.log_scale_min_clip, self.log_scale_max_clip)
        return mean, torch.exp(log_scale), log_scale

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        mean, scale, log_scale = self._params(x)
        self._cached_log_scale = (x, log_scale)
        if self.stable:
            return scale * x + (1 - scale) * mean
        return scale * x + mean

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        perm = self.arn.get_permutation() if hasattr(self.arn, "get_permutation") else self.arn.permutation
        x = torch.zeros_like(y)
        log_scale = torch.zeros_like(y)
        for idx in perm.tolist():
            mean, scale, ls = self._params(x)
            if self.stable:
                xi = (y[..., idx] - (1 - scale[..., idx]) * mean[..., idx]) / scale[..., idx]
            else:
                xi = (y[..., idx] - mean[..., idx]) * torch.exp(-ls[..., idx])
            x = x.clone()
            x[..., idx] = xi
            log_scale = log_scale.clone()
            log_scale[..., idx] = ls[..., idx]
        self._cached_log_scale = (x, log_scale)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        cached = self._cached_log_scale
        if cached is not None and cached[0] is x:
            log_scale = cached[1]
        else:
            log_scale = self._params(x)[2]
        return log_scale.sum(-1)


class ConditionalAffineAutoregressive(ConditionalTransformModule):
    """:class:`AffineAutoregressive` whose network also reads a context:
    ``condition(context)`` returns the transform for that context."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    event_dim = 1

    def __init__(self, autoregressive_nn: ConditionalAutoRegressiveNN, **kwargs: Any) -> None:
        super().__init__()
        self.nn = autoregressive_nn
        self.kwargs = kwargs

    def condition(self, context: torch.Tensor) -> AffineAutoregressive:
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = self.nn.permutation  # type: ignore[attr-defined]
        cond_nn.get_permutation = self.nn.get_permutation  # type: ignore[attr-defined]
        return AffineAutoregressive(cond_nn, **self.kwargs)


class AffineCoupling(_EventFromDim, TransformModule):
    """``y[:split] = x[:split]``, ``y[split:] = mu + exp(log sigma) * x[split:]`` with
    ``(mu, log sigma) = hypernet(x[:split])`` (each ``[..., D - split]``). Both directions are
    one pass. ``log|det J| = sum log sigma``. ``dim`` (negative) is the coupled dimension;
    the event is ``-dim`` dims."""

    bijective = True

    def __init__(self, split_dim: int, hypernet: Any, *, dim: int = -1, log_scale_min_clip: float = -5.0, log_scale_max_clip: float = 3.0) -> None:
        super().__init__(cache_size=1)
        self._set_dim(dim)
        self.split_dim, self.nn = split_dim, hypernet
        self.log_scale_min_clip, self.log_scale_max_clip = log_scale_min_clip, log_scale_max_clip
        self._cached_log_scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.size(self.dim)
        return x.split([self.split_dim, n - self.split_dim], dim=self.dim)

    def _params(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.nn(x1)
        return mean, _clamp_preserve_gradients(log_scale, self.log_scale_min_clip, self.log_scale_max_clip)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._split(x)
        mean, log_scale = self._params(x1)
        self._cached_log_scale = (x, log_scale)
        return torch.cat([x1, torch.exp(log_scale) * x2 + mean], dim=self.dim)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._split(y)
        mean, log_scale = self._params(y1)
        x = torch.cat([y1, (y2 - mean) * torch.exp(-log_scale)], dim=self.dim)
        self._cached_log_scale = (x, log_scale)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum log sigma`` over the event, for ``x``, ``y`` whose rightmost ``-dim`` dims are the event: shape ``x.shape[:dim]`` (``batch_shape`` for vectors, the default ``dim=-1``)."""
        cached = self._cached_log_scale
        log_scale = cached[1] if cached is not None and cached[0] is x else self._params(self._split(x)[0])[1]
        return log_scale.reshape(log_scale.shape[: log_scale.dim() + self.dim] + (-1,)).sum(-1)


class ConditionalAffineCoupling(ConditionalTransformModule):
    """:class:`AffineCoupling` whose hypernetwork also reads a context."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    event_dim = 1

    def __init__(self, split_dim: int, hypernet: ConditionalDenseNN, **kwargs: Any) -> None:
        super().__init__()
        self.split_dim, self.nn, self.kwargs = split_dim, hypernet, kwargs

    def condition(self, context: torch.Tensor) -> AffineCoupling:
        return AffineCoupling(self.split_dim, partial(self.nn, context=context), **self.kwargs)


def _default_hidden(input_dim: int, hidden_dims: Any) -> list[int]:
    return [3 * input_dim + 1] if hidden_dims is None else list(hidden_dims)


def affine_autoregressive(input_dim: int, hidden_dims: list[int] | None = None, **kwargs: Any) -> AffineAutoregressive:
    """An :class:`AffineAutoregressive` on ``input_dim`` dims with a MADE network of
    ``hidden_dims`` (default ``[3 * input_dim + 1]``); ``kwargs`` go to the transform."""
    return AffineAutoregressive(AutoRegressiveNN(input_dim, _default_hidden(input_dim, hidden_dims)), **kwargs)


def conditional_affine_autoregressive(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, **kwargs: Any) -> ConditionalAffineAutoregressive:
    """A :class:`ConditionalAffineAutoregressive` with a conditional MADE network."""
    hidden = [10 * input_dim] if hidden_dims is None else list(hidden_dims)
    return ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(input_dim, context_dim, hidden), **kwargs)


def affine_coupling(input_dim: int, hidden_dims: list[int] | None = None, split_dim: int | None = None, dim: int = -1, **kwargs: Any) -> AffineCoupling:
    """An :class:`AffineCoupling` on vectors of ``input_dim`` (``dim=-1``) that keeps the first
    ``split_dim`` (default ``input_dim // 2``) and transforms the rest with a ``DenseNN``
    hypernetwork of ``hidden_dims`` (default ``[10 * input_dim]``)."""
    if dim != -1:
        raise NotImplementedError("affine_coupling: only dim=-1 is built by this helper; construct AffineCoupling directly for other dims")
    split_dim = input_dim // 2 if split_dim is None else split_dim
    hidden = [10 * input_dim] if hidden_dims is None else list(hidden_dims)
    hypernet = DenseNN(split_dim, hidden, [input_dim - split_dim, input_dim - split_dim])
    return AffineCoupling(split_dim, hypernet, dim=dim, **kwargs)


def conditional_affine_coupling(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, split_dim: int | None = None, **kwargs: Any) -> ConditionalAffineCoupling:
    """A :class:`ConditionalAffineCoupling` with a ``ConditionalDenseNN`` hypernetwork."""
    split_dim = input_dim // 2 if split_dim is None else split_dim
    hidden = [10 * input_dim] if hidden_dims is None else list(hidden_dims)
    hypernet = ConditionalDenseNN(split_dim, context_dim, hidden, [input_dim - split_dim, input_dim - split_dim])
    return ConditionalAffineCoupling(split_dim, hypernet, **kwargs)
