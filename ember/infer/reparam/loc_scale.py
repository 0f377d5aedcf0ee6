"""``LocScaleReparam``: (partially) non-centre a location-scale latent."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import constraints

from ember.infer.reparam.reparam import Reparam, sum_rightmost

__all__ = ["LocScaleReparam"]

# location-scale families: class name -> the parameters besides loc and scale
_SHAPE_PARAMS = {
    "Normal": (),
    "Cauchy": (),
    "Laplace": (),
    "Gumbel": (),
    "Logistic": (),
    "StudentT": ("df",),
    "AsymmetricLaplace": ("asymmetry",),
    "SoftAsymmetricLaplace": ("asymmetry", "softness"),
    "SkewLogistic": ("asymmetry",),
    "Stable": ("stability", "skew"),  # a location-scale family in both of its coordinate systems
    "StableWithLogProb": ("stability", "skew"),
}


class LocScaleReparam(Reparam):
    """Write ``x ~ D(loc, scale)`` as ``x = loc + scale**(1 - c) * (x_dec - c * loc)`` with the
    auxiliary latent ``{name}_decentered ~ D(c * loc, scale**c)``.

    ``centered = c = 1`` leaves the site as it is; ``c = 0`` is the non-centred form
    (``x_dec ~ D(0, 1)``), the usual cure for divergences of NUTS in hierarchical models;
    ``centered=None`` learns ``c`` per event element as the parameter ``{name}_centered``
    (in ``[0, 1]``, initialised to 0.5; shape: the site's event shape), trained by SVI.

    :param centered: ``None``, a float in ``[0, 1]`` or a tensor broadcasting with the event shape.
    :param shape_params: the distribution's parameters other than ``loc`` and ``scale`` (known for
        Normal, Cauchy, Laplace, Gumbel, Logistic, StudentT (``df``), AsymmetricLaplace,
        SoftAsymmetricLaplace, SkewLogistic, Stable (``stability``, ``skew``)); give them to use another location-scale family.

    An observed site is rewritten too (the auxiliary site observes ``x_dec``, the site keeps the
    Jacobian ``(c - 1) log scale``), so its log-likelihood is unchanged.
    """

    def __init__(self, centered: Any = None, shape_params: tuple | list | None = None) -> None:
        if isinstance(centered, (int, float)) and not 0.0 <= float(centered) <= 1.0:
            raise ValueError(f"LocScaleReparam: centered must lie in [0, 1] (0: non-centred, 1: centred); got {centered}")
        self.centered = centered
        self.shape_params = None if shape_params is None else tuple(shape_params)

    def _check(self, name: str, base: Any) -> tuple:
        if self.shape_params is not None and not isinstance(base, torch.distributions.TransformedDistribution):
            if hasattr(base, "loc") and hasattr(base, "scale"):
                return self.shape_params
        known = _SHAPE_PARAMS.get(type(base).__name__)
        if known is None or not (hasattr(base, "loc") and hasattr(base, "scale")):
            raise ValueError(
                f"LocScaleReparam at site '{name}': {type(base).__name__} is not a location-scale family this "
                f"reparameterizer knows ({', '.join(sorted(_SHAPE_PARAMS))}). For a TransformedDistribution use "
                f"TransformReparam; for another family with .loc and .scale give shape_params=(...) naming its other parameters."
            )
        return known

    def apply(self, msg: dict) -> dict:
        name, fn, value, is_observed = msg["name"], msg["fn"], msg["value"], msg["is_observed"]
        c = self.centered
        if isinstance(c, (int, float)) and float(c) == 1.0:
            return {"fn": fn, "value": value, "is_observed": is_observed}
        base, reinterpreted, mask = self._unwrap(fn, name)
        shape_params = self._check(name, base)
        loc, scale = base.loc, base.scale
        if c is None:
            from ember.primitives import param

            c = param(f"{name}_centered", lambda: torch.full(fn.event_shape, 0.5, dtype=loc.dtype, device=loc.device),
                      constraint=constraints.unit_interval)
        params = {k: getattr(base, k) for k in shape_params}
        if isinstance(c, (int, float)) and c == 0.0:
            # fully non-centred: a standard distribution that depends on nothing
            shape = torch.broadcast_shapes(loc.shape, scale.shape)
            params["loc"] = torch.zeros(shape, dtype=loc.dtype, device=loc.device)
            params["scale"] = torch.ones(shape, dtype=loc.dtype, device=loc.device)
        else:
            params["loc"] = loc * c
            params["scale"] = scale**c
        if getattr(base, "coords", None) is not None:  # Stable's coordinate system ("S0" or "S") is kept
            params["coords"] = base.coords
        decentered_fn = self._wrap(type(base)(**params), reinterpreted, mask)
        aux = f"{name}_decentered"
        from ember.primitives import sample

        if value is None:
            x = sample(aux, decentered_fn)
        else:
            x_given = c * loc + (value - loc) * scale ** (c - 1)
            if is_observed:
                x = sample(aux, decentered_fn, obs=x_given)
            else:
                from ember.poutine.misc_messengers import _SubstituteValuesMessenger

                with _SubstituteValuesMessenger(data={aux: x_given}):
                    x = sample(aux, decentered_fn)
        new_value = loc + scale ** (1 - c) * (x - c * loc)
        event_dim = len(fn.event_shape)
        if not is_observed:
            return self._deterministic(new_value, event_dim)
        # log p(y) = log p_dec(x) + log |dx/dy|, dx/dy = scale**(c - 1)
        jac = sum_rightmost(((c - 1) * torch.log(scale)).expand(base.batch_shape + base.event_shape), event_dim)
        if mask is not None:
            jac = torch.where(mask, jac, jac.new_zeros(()))
        return self._observed(value, event_dim, jac)
