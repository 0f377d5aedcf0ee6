"""Mixtures Pyro adds: ``MaskedMixture`` (a mask picks one of two components per
element) and ``MixtureOfDiagNormals`` (a finite mixture of diagonal Gaussians)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import constraints

from ember.distributions.torch_dist import TorchDistribution

__all__ = ["MaskedMixture", "MixtureOfDiagNormals", "MixtureOfDiagNormalsSharedCovariance"]


class MaskedMixture(TorchDistribution):
    """``component1`` where the boolean ``mask`` is True, ``component0`` where it is False.
    The components share event shape and support; the batch shape is the broadcast of
    the mask's and the components' batch shapes."""

    arg_constraints: dict = {}

    def __init__(self, mask: torch.Tensor, component0: Any, component1: Any, validate_args: bool | None = None) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"MaskedMixture: mask must be a boolean tensor; got {type(mask).__name__} {getattr(mask, 'dtype', '')}")
        if component0.event_shape != component1.event_shape:
            raise ValueError(f"MaskedMixture: components have event shapes {tuple(component0.event_shape)} and {tuple(component1.event_shape)}; they must agree")
        batch_shape = torch.broadcast_shapes(mask.shape, component0.batch_shape, component1.batch_shape)
        self.mask = mask.expand(batch_shape)
        self.component0 = component0.expand(batch_shape) if component0.batch_shape != batch_shape else component0
        self.component1 = component1.expand(batch_shape) if component1.batch_shape != batch_shape else component1
        super().__init__(batch_shape, component0.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.component0.support

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.component0.has_rsample and self.component1.has_rsample

    def _select(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        m = self.mask.reshape(self.mask.shape + (1,) * len(self.event_shape))
        return torch.where(m, x1, x0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._select(self.component0.sample(sample_shape), self.component1.sample(sample_shape))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._select(self.component0.rsample(sample_shape), self.component1.rsample(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.component1.log_prob(value), self.component0.log_prob(value))

    @property
    def mean(self) -> torch.Tensor:
        return self._select(self.component0.mean, self.component1.mean)

    @property
    def variance(self) -> torch.Tensor:
        return self._select(self.component0.variance, self.component1.variance)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MaskedMixture:
        batch_shape = torch.Size(batch_shape)
        return MaskedMixture(self.mask.expand(batch_shape), self.component0.expand(batch_shape), self.component1.expand(batch_shape))


class MixtureOfDiagNormals(TorchDistribution):
    """A mixture of ``K`` diagonal Gaussians in ``D`` dims. ``locs``, ``coord_scale``:
    ``[*batch, K, D]``; ``component_logits``: ``[*batch, K]``. Event shape ``[D]``.
    ``rsample`` draws a component then its Gaussian, and gives implicit reparameterization
    gradients (Figurnov et al. 2018) through the chain of conditional CDFs
    ``F_i(x_i | x_<i)``: ``dx_i = -dF_i / p_i(x_i | x_<i)``, for the locations, scales and
    logits alike."""

    arg_constraints = {"locs": constraints.real, "coord_scale": constraints.positive, "component_logits": constraints.real}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, locs: torch.Tensor, coord_scale: torch.Tensor, component_logits: torch.Tensor, validate_args: bool | None = None) -> None:
        if locs.dim() < 2 or component_logits.shape[-1] != locs.shape[-2]:
            raise ValueError(
                f"MixtureOfDiagNormals: locs must be [*batch, K, D] and component_logits [*batch, K]; got {tuple(locs.shape)} and {tuple(component_logits.shape)}"
            )
        K, D = locs.shape[-2:]
        batch_shape = torch.broadcast_shapes(locs.shape[:-2], coord_scale.shape[:-2], component_logits.shape[:-1])
        self.locs = locs.expand(batch_shape + (K, D))
        self.coord_scale = coord_scale.expand(batch_shape + (K, D))
        self.component_logits = component_logits.expand(batch_shape + (K,))
        super().__init__(batch_shape, torch.Size([D]), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MixtureOfDiagNormals:
        batch_shape = torch.Size(batch_shape)
        K, D = self.locs.shape[-2:]
        return MixtureOfDiagNormals(self.locs.expand(batch_shape + (K, D)), self.coord_scale.expand(batch_shape + (K, D)),
                                    self.component_logits.expand(batch_shape + (K,)), validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value.unsqueeze(-2) - self.locs) / self.coord_scale
        comp = -0.5 * z.pow(2).sum(-1) - self.coord_scale.log().sum(-1) - 0.5 * self.event_shape[0] * math.log(2 * math.pi)
        return torch.logsumexp(comp + torch.log_softmax(self.component_logits, -1), -1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            k = torch.distributions.Categorical(logits=self.component_logits).sample(sample_shape)
            idx = k.unsqueeze(-1).unsqueeze(-1).expand(shape[:-1] + (1, shape[-1]))
            loc = torch.gather(self.locs.expand(shape[:-1] + self.locs.shape[-2:]), -2, idx).squeeze(-2)
            scale = torch.gather(self.coord_scale.expand(shape[:-1] + self.locs.shape[-2:]), -2, idx).squeeze(-2)
            return loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        x = self.sample(sample_shape)  # exact draw, no gradient
        locs, scales = self.locs, self.coord_scale
        log_w = torch.log_softmax(self.component_logits, -1).expand(x.shape[:-1] + locs.shape[-2:-1])
        tiny = torch.finfo(x.dtype).tiny
        out = []
        for i in range(x.size(-1)):
            xi = x[..., i].unsqueeze(-1)  # [..., 1]
            z = (xi - locs[..., i]) / scales[..., i]  # [..., K]
            w = torch.softmax(log_w, -1)
            cdf = (w * torch.special.ndtr(z)).sum(-1)
            log_pdf_k = -0.5 * z.pow(2) - scales[..., i].log() - 0.5 * math.log(2 * math.pi)
            pdf = (w * log_pdf_k.exp()).sum(-1).detach().clamp_min(tiny)
            out.append(x[..., i] - (cdf - cdf.detach()) / pdf)
            # condition the component weights on the reparameterized coordinate for the next ones
            zr = (out[-1].unsqueeze(-1) - locs[..., i]) / scales[..., i]
            log_w = log_w - 0.5 * zr.pow(2) - scales[..., i].log()
        return torch.stack(out, -1)

    @property
    def mean(self) -> torch.Tensor:
        w = torch.softmax(self.component_logits, -1).unsqueeze(-1)
        return (w * self.locs).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        w = torch.softmax(self.component_logits, -1).unsqueeze(-1)
        second = (w * (self.coord_scale.pow(2) + self.locs.pow(2))).sum(-2)
        return second - self.mean.pow(2)


class MixtureOfDiagNormalsSharedCovariance(MixtureOfDiagNormals):
    """:class:`MixtureOfDiagNormals` whose components share one diagonal scale:
    ``locs`` ``[*batch, K, D]``, ``coord_scale`` ``[*batch, D]``, ``component_logits`` ``[*batch, K]``."""

    def __init__(self, locs: torch.Tensor, coord_scale: torch.Tensor, component_logits: torch.Tensor, validate_args: bool | None = None) -> None:
        if coord_scale.dim() < 1 or locs.dim() < 2 or coord_scale.shape[-1] != locs.shape[-1]:
            raise ValueError(
                f"MixtureOfDiagNormalsSharedCovariance: coord_scale must be [*batch, D] for locs [*batch, K, D]; got "
                f"{tuple(coord_scale.shape)} and {tuple(locs.shape)}"
            )
        self.shared_coord_scale = coord_scale
        super().__init__(locs, coord_scale.unsqueeze(-2).expand(coord_scale.shape[:-1] + locs.shape[-2:]), component_logits, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MixtureOfDiagNormalsSharedCovariance:
        batch_shape = torch.Size(batch_shape)
        K, D = self.locs.shape[-2:]
        return MixtureOfDiagNormalsSharedCovariance(self.locs.expand(batch_shape + (K, D)), self.shared_coord_scale.expand(batch_shape + (D,)),
                                                    self.component_logits.expand(batch_shape + (K,)), validate_args=self._validate_args)
