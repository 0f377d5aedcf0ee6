"""``TransformReparam``: a ``TransformedDistribution`` site as a transformed auxiliary site."""

from __future__ import annotations

from typing import Any

import torch

from ember.infer.reparam.reparam import Reparam, sum_rightmost

__all__ = ["TransformReparam"]


class TransformReparam(Reparam):
    """Write ``y ~ TransformedDistribution(base, [t_1, ..., t_k])`` as ``y = t_k(...t_1(x))``
    with the auxiliary site ``{name}_base ~ base`` (scored with the site's event dims). An
    observed ``y`` is inverted (``x = t^{-1}(y)`` observed at ``{name}_base``) and the site keeps
    ``-log |det dt/dx|``, so its log-likelihood is unchanged."""

    def apply(self, msg: dict) -> dict:
        name, fn, value, is_observed = msg["name"], msg["fn"], msg["value"], msg["is_observed"]
        td, reinterpreted, mask = self._unwrap(fn, name)
        if not isinstance(td, torch.distributions.TransformedDistribution):
            raise ValueError(
                f"TransformReparam at site '{name}': expected a TransformedDistribution (possibly .to_event(n) or "
                f".mask(m)), got {type(td).__name__}. Use LocScaleReparam for location-scale families."
            )
        bad = [type(t).__name__ for t in td.transforms if not t.bijective]
        if bad:
            raise ValueError(
                f"TransformReparam at site '{name}': {type(td).__name__} uses transforms that are not bijective ({bad}); "
                f"the site cannot be written as a function of its base draw with the same density"
            )
        event_dim = len(fn.event_shape)
        base = td.base_dist
        base_fn = base.to_event(event_dim - len(base.event_shape)) if event_dim > len(base.event_shape) else base
        if mask is not None:
            base_fn = base_fn.mask(mask)
        from ember.primitives import sample

        aux = f"{name}_base"
        x_given = None
        if value is not None:
            x_given = value
            for t in reversed(td.transforms):
                x_given = t.inv(x_given)
        if value is None:
            x = sample(aux, base_fn)
        elif is_observed:
            x = sample(aux, base_fn, obs=x_given)
        else:
            from ember.poutine.misc_messengers import _SubstituteValuesMessenger

            with _SubstituteValuesMessenger(data={aux: x_given}):
                x = sample(aux, base_fn)
        y = x
        ldj: Any = 0.0
        for t in td.transforms:
            y_next = t(y)
            if is_observed:
                ldj = ldj + sum_rightmost(t.log_abs_det_jacobian(y, y_next), event_dim - t.domain.event_dim)
            y = y_next
        if not is_observed:
            return self._deterministic(y, event_dim)
        if not isinstance(ldj, torch.Tensor):
            ldj = torch.zeros(value.shape[: value.dim() - event_dim], dtype=value.dtype)
        if mask is not None:
            ldj = torch.where(mask, ldj, ldj.new_zeros(()))
        return self._observed(value, event_dim, -ldj)
