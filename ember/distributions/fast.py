"""Leaner versions of the hottest torch.distributions methods.

Same mathematics as torch, fewer autograd nodes: ``Normal.log_prob`` as
``-z²/2 - log σ - log √(2π)`` with ``z = (x - μ)/σ`` builds 6 nodes where torch's
builds 9, which is most of what separates an SVI step from the hand-written formula
(see benchmarks/README.md). Constructors skip ``broadcast_all`` when the parameters are
already tensors of one shape. Results match torch to floating-point rounding (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributions as _td

from ember.distributions.torch_dist import TorchDistributionMixin, distribution_init

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2_OVER_PI = math.log(2 / math.pi)
_Tensor = torch.Tensor
_SCALAR_SHAPE = torch.Size()
_NEG_INF = -math.inf

# 0-dim tensors for Python-number parameters, shared between calls (a model's priors are built
# on every run with the same constants). Never handed out for in-place use by Ember.
_CONSTANTS: dict[tuple[float, torch.dtype], torch.Tensor] = {}


def _constant(x: float, dtype: torch.dtype) -> torch.Tensor:
    key = (x, dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 4096:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.tensor(x, dtype=dtype)
    return t


class Normal(TorchDistributionMixin, _td.Normal):
    __doc__ = _td.Normal.__doc__ + (
        "\n\n    Shapes: ``batch_shape`` is the broadcast shape of ``loc`` and ``scale``; ``event_shape`` is ``()``, so a draw has the "
        "parameters' broadcast shape and ``log_prob`` returns one value per element.")

    _const: tuple[float | None, float] | None = None  # (loc or None for a tensor loc, scale)

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        tl, ts = type(loc), type(scale)
        if (tl is float or tl is int) and (ts is float or ts is int):
            # Python numbers (``Normal(0., 1.)``, the usual prior): shared constant tensors, and
            # log_prob folds loc, scale and log(scale) into the arithmetic
            dtype = torch.get_default_dtype()
            self.loc, self.scale = _constant(loc, dtype), _constant(scale, dtype)
            self._const = (float(loc), float(scale))
            distribution_init(self, _SCALAR_SHAPE, validate_args=validate_args)
        elif (ts is float or ts is int) and isinstance(loc, _Tensor) and loc.dtype.is_floating_point:
            # a tensor location with a number for the scale (``Normal(mu, 1.)``)
            self.loc = loc
            self.scale = _constant(scale, loc.dtype).expand(loc.shape)
            self._const = (None, float(scale))  # type: ignore[assignment]
            distribution_init(self, loc.shape, validate_args=validate_args)
        elif isinstance(loc, _Tensor) and isinstance(scale, _Tensor) and loc.shape == scale.shape and loc.dtype == scale.dtype:
            self.loc, self.scale = loc, scale
            distribution_init(self, loc.shape, validate_args=validate_args)
        else:
            super().__init__(loc, scale, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._ember_arg_error is not None:
            self._refuse_if_invalid()
        if self._validate_args:
            self._validate_sample(value)
        const = self._const
        if const is not None and isinstance(value, _Tensor) and const[1] > 0.0:
            # (a scale <= 0, possible with validation off, takes the tensor path: nan, as torch gives)
            loc, scale = const
            if loc is None:
                z = value - self.loc
            else:
                bs = self._batch_shape
                if bs and value.shape[len(value.shape) - len(bs):] != bs:
                    # the value is smaller than the (expanded) batch: let broadcasting decide
                    return self._log_prob_general(value)
                z = value if loc == 0.0 else value - loc
            if scale != 1.0:
                z = z / scale
            return -0.5 * (z * z) - (math.log(scale) + _HALF_LOG_2PI)
        return self._log_prob_general(value)

    def _log_prob_general(self, value: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        z = (value - self.loc) / scale
        return -0.5 * z * z - scale.log() - _HALF_LOG_2PI

    def expand(self, batch_shape: Any, _instance: Any = None) -> Normal:
        new = _instance if _instance is not None else type(self).__new__(type(self))
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new._const = self._const  # the constants do not change; only the batch shape does
        _td.Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class _HalfScaleFamily(TorchDistributionMixin):
    """What HalfCauchy and HalfNormal share: a number ``scale`` is a shared constant, folded into
    ``log_prob``'s arithmetic (``_log_density(z, log_scale)`` with ``z = value / scale``), and
    values below 0 get ``-inf``."""

    _const_scale: float | None = None

    def __init__(self, scale: Any, validate_args: bool | None = None) -> None:
        ts = type(scale)
        if ts is float or ts is int:
            self._const_scale = float(scale)
            self.base_dist = self._const_base(float(scale))  # the scale is checked below, as the half distribution's
            self.transforms = [_ABS]
            distribution_init(self, _SCALAR_SHAPE, _SCALAR_SHAPE, validate_args=validate_args)
        else:
            super().__init__(scale, validate_args=validate_args)  # type: ignore[call-arg]

    def _const_base(self, scale: float) -> Any:
        raise NotImplementedError

    def _log_density(self, z: torch.Tensor, log_scale: Any) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The log-density of ``value`` (``-inf`` below 0); ``value`` of shape
        ``sample_shape + batch_shape`` gives that shape."""
        if self._ember_arg_error is not None:
            self._refuse_if_invalid()
        if self._validate_args:
            self._validate_sample(value)
        if not isinstance(value, _Tensor):
            value = torch.as_tensor(value, dtype=self.scale.dtype)
        c = self._const_scale
        if c is not None and c > 0.0:  # a scale <= 0 (validation off) takes the tensor path: nan, as torch
            lp = self._log_density(value / c if c != 1.0 else value, math.log(c))
        else:
            scale = self.scale
            lp = self._log_density(value / scale, scale.log())
        return lp.masked_fill(value < 0, _NEG_INF)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """The same distribution with batch shape ``batch_shape`` (the scale broadcast to it)."""
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new = super().expand(batch_shape, _instance=new)  # type: ignore[misc]
        new._const_scale = None
        return new


class HalfCauchy(_HalfScaleFamily, _td.HalfCauchy):
    __doc__ = _td.HalfCauchy.__doc__ + (
        "\n\n    Shapes: ``batch_shape`` is the broadcast shape of ``scale``; ``event_shape`` is ``()``, so a draw has the "
        "parameters' broadcast shape and ``log_prob`` returns one value per element.")

    def _const_base(self, scale: float) -> Any:
        dtype = torch.get_default_dtype()
        base = _td.Cauchy.__new__(_td.Cauchy)
        base.loc, base.scale = _constant(0.0, dtype), _constant(scale, dtype)
        _td.Distribution.__init__(base, _SCALAR_SHAPE, validate_args=False)
        return base

    def _log_density(self, z: torch.Tensor, log_scale: Any) -> torch.Tensor:
        """``log(2/pi) - log(scale) - log1p(z^2)``."""
        return (_LOG_2_OVER_PI - log_scale) - torch.log1p(z * z)


class HalfNormal(_HalfScaleFamily, _td.HalfNormal):
    __doc__ = _td.HalfNormal.__doc__ + (
        "\n\n    Shapes: ``batch_shape`` is the broadcast shape of ``scale``; ``event_shape`` is ``()``, so a draw has the "
        "parameters' broadcast shape and ``log_prob`` returns one value per element.")

    def _const_base(self, scale: float) -> Any:
        return Normal(0.0, scale, validate_args=False)

    def _log_density(self, z: torch.Tensor, log_scale: Any) -> torch.Tensor:
        """``log 2 + Normal(0, scale).log_prob(value)`` = ``-z^2/2 + log(2/pi)/2 - log(scale)``."""
        return -0.5 * (z * z) + (_LOG_2_OVER_PI * 0.5 - log_scale)


class Bernoulli(TorchDistributionMixin, _td.Bernoulli):
    __doc__ = _td.Bernoulli.__doc__ + (
        "\n\n    Shapes: ``batch_shape`` is the shape of ``probs`` (or ``logits``); ``event_shape`` is ``()``, so a draw "
        "has the shape ``sample_shape + batch_shape`` and ``log_prob`` returns that shape.")

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``value * logits - softplus(logits)`` when built from ``logits`` (torch's formula for
        probabilities otherwise): the same number as torch's binary cross-entropy, with a third of
        its operations (and of their backward) in a recorded graph. ``value`` of shape
        ``sample_shape + batch_shape`` (or broadcasting to it) gives that shape."""
        if self._validate_args:
            self._validate_sample(value)
        logits = self.__dict__.get("logits")
        if logits is None or not isinstance(value, _Tensor):
            return super().log_prob(value)
        # softplus(x) is x itself above the threshold, to the dtype's precision
        threshold = 40.0 if logits.dtype == torch.float64 else 20.0
        return value * logits - torch.nn.functional.softplus(logits, threshold=threshold)


_ABS = _td.transforms.AbsTransform()
