"""Reparameterizers for ``Stable`` sites: auxiliary uniform and exponential sites that the
Chambers-Mallows-Stuck transform (``ember.distributions.misc.stable_cms``) maps to the stable
variable, so that inference scores only distributions with cheap, exact densities.

* :class:`LatentStableReparam`: a latent site becomes a deterministic function of
  ``{name}_uniform`` and ``{name}_exponential``.
* :class:`SymmetricStableReparam`: a symmetric site (``skew = 0``), latent or observed, becomes a
  Normal whose scale is drawn from a totally skewed stable variable (the same two auxiliary sites).
* :class:`StableReparam`: any site, latent or observed, as a Normal given four auxiliary sites
  ``{name}_z_uniform``, ``{name}_z_exponential`` (the Normal's scale) and ``{name}_t_uniform``,
  ``{name}_t_exponential`` (a totally skewed part in the Normal's location).

The Normal forms are exact scale mixtures: integrating the auxiliary sites out of the Normal
density gives the Stable density, so an observed site's likelihood is represented without bias
(the auxiliary sites are latents that SVI's guide or MCMC integrates).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ember.infer.reparam.reparam import Reparam

__all__ = ["LatentStableReparam", "StableReparam", "SymmetricStableReparam"]


def _stable_base(name: str, fn: Any, who: str) -> tuple[Any, int, Any]:
    """The site's ``Stable`` without its ``Independent`` and mask wrappers, or a ``ValueError``."""
    import ember.distributions as dist

    base, reinterpreted, mask = Reparam._unwrap(fn, name)
    if not isinstance(base, dist.Stable):
        raise ValueError(f"{who} at site '{name}': expected a Stable distribution (possibly .to_event(n) or .mask(m)), "
                         f"got {type(base).__name__}")
    if isinstance(base, dist.StableWithLogProb):
        raise ValueError(f"{who} at site '{name}': a StableWithLogProb is scored by its density and never reparameterized "
                         f"(as in Pyro); use Stable for a site to reparameterize")
    return base, reinterpreted, mask


def _noise(name: str, base: Any, reinterpreted: int, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``{name}_uniform ~ Uniform(-pi/2, pi/2)`` and ``{name}_exponential ~ Exponential(1)``,
    each of the Stable's ``batch_shape`` (with the site's event dims and mask)."""
    import ember.distributions as dist
    from ember.primitives import sample

    proto = base.stability
    half_pi = torch.full(base.batch_shape, math.pi / 2, dtype=proto.dtype, device=proto.device)
    u = sample(f"{name}_uniform", Reparam._wrap(dist.Uniform(-half_pi, half_pi), reinterpreted, mask))
    e = sample(f"{name}_exponential", Reparam._wrap(dist.Exponential(torch.ones_like(half_pi)), reinterpreted, mask))
    return u, e


def _check_symmetric_part(name: str, base: Any, who: str, need_zero_skew: bool) -> None:
    from ember.runtime import is_validation_enabled

    if not is_validation_enabled():
        return
    if need_zero_skew and not bool((base.skew == 0).all()):
        raise ValueError(f"{who} at site '{name}': found nonzero skew {base.skew.detach().flatten()[:4].tolist()}...; "
                         f"use StableReparam for skewed Stable sites")
    if not bool((base.stability < 2).all()):
        raise ValueError(f"{who} at site '{name}': found stability >= 2 (a Normal: write Normal(loc, scale * 2 ** 0.5), "
                         f"or use LatentStableReparam for a latent site)")


def _mixing_scale(stability: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``sqrt(A)`` for ``A ~ S1(stability / 2, 1, cos(pi stability / 4) ** (2 / stability), 0)``, the
    positive stable scale that makes ``sqrt(A) * Normal(0, 2)`` a standard symmetric
    ``Stable(stability, 0)`` (Samorodnitsky and Taqqu 1994, proposition 1.3.1). Shape: that of
    ``u`` (with ``stability`` broadcast)."""
    from ember.distributions.misc import stable_cms

    z = stable_cms(stability / 2, torch.ones_like(stability), u, e, coords="S").clamp_min(0)
    return z.sqrt() * torch.cos(math.pi / 4 * stability).pow(1 / stability)


class LatentStableReparam(Reparam):
    """Write a latent ``x ~ Stable(stability, skew, scale, loc)`` as ``x = loc + scale *
    cms(u, e)`` with the auxiliary latents ``{name}_uniform ~ Uniform(-pi/2, pi/2)`` and
    ``{name}_exponential ~ Exponential(1)``, both of the site's ``batch_shape``, where ``cms`` is
    the Chambers-Mallows-Stuck transform (in the site's coords, ``"S0"`` or ``"S"``). The site
    becomes deterministic. Latent sites only: an observed site raises ``NotImplementedError``
    (use :class:`SymmetricStableReparam` or :class:`StableReparam`)."""

    def apply(self, msg: dict) -> dict:
        from ember.distributions.misc import stable_cms

        name = msg["name"]
        base, reinterpreted, mask = _stable_base(name, msg["fn"], "LatentStableReparam")
        if msg["is_observed"]:
            raise NotImplementedError(f"LatentStableReparam at site '{name}': the site is observed; LatentStableReparam "
                                      f"supports latent sites only (use StableReparam or SymmetricStableReparam)")
        u, e = _noise(name, base, reinterpreted, mask)
        value = base.loc + base.scale * stable_cms(base.stability, base.skew, u, e, coords=base.coords)
        return self._deterministic(value, len(msg["fn"].event_shape))


class SymmetricStableReparam(Reparam):
    """Write a symmetric ``x ~ Stable(stability, 0, scale, loc)`` (latent or observed) as
    ``x ~ Normal(loc, sqrt(2) * scale * sqrt(A))``, where the positive mixing variable ``A``, a
    totally skewed stable variable of stability ``stability / 2``, is the Chambers-Mallows-Stuck
    transform of the auxiliary latents ``{name}_uniform ~ Uniform(-pi/2, pi/2)`` and
    ``{name}_exponential ~ Exponential(1)`` (both of the site's ``batch_shape``). The site keeps
    its name, value and observedness. With validation on, a nonzero skew or ``stability >= 2``
    raises ``ValueError`` naming the site."""

    def apply(self, msg: dict) -> dict:
        import ember.distributions as dist

        name = msg["name"]
        base, reinterpreted, mask = _stable_base(name, msg["fn"], "SymmetricStableReparam")
        _check_symmetric_part(name, base, "SymmetricStableReparam", need_zero_skew=True)
        u, e = _noise(name, base, reinterpreted, mask)
        scale = (base.scale * _mixing_scale(base.stability, u, e)).clamp_min(torch.finfo(u.dtype).tiny)
        new_fn = self._wrap(dist.Normal(base.loc, scale * math.sqrt(2)), reinterpreted, mask)
        return {"fn": new_fn, "value": msg["value"], "is_observed": msg["is_observed"]}


def _ratio_near_zero(d: torch.Tensor) -> torch.Tensor:
    """``d / tan(pi d / 2)`` (``2 / pi`` at ``d = 0``), smooth through ``d = 0``."""
    small = d.abs() < 1e-3
    d_safe = torch.where(small, torch.ones_like(d), d)
    x = math.pi / 2 * d
    return torch.where(small, (2 / math.pi) * (1 - x * x / 3), d_safe / torch.tan(math.pi / 2 * d_safe))


def _expm1_ratio(y: torch.Tensor) -> torch.Tensor:
    """``expm1(y) / y`` (1 at ``y = 0``), smooth through ``y = 0``."""
    small = y.abs() < 1e-6
    y_safe = torch.where(small, torch.ones_like(y), y)
    return torch.where(small, 1 + y / 2, torch.expm1(y_safe) / y_safe)


def _skew_shift(a: torch.Tensor, b: torch.Tensor, b_abs: torch.Tensor) -> torch.Tensor:
    """``(sign(b) |b| ** (1 / a) - b) * tan(pi a / 2)``, the S0 location of a standard
    ``Stable(a, b)`` split into symmetric and totally skewed parts; finite and smooth through
    ``a = 1``, where it tends to ``(2 / pi) b log |b|``. Written as
    ``b log|b| * [expm1(c log|b|) / (c log|b|)] * [c tan(pi a / 2)]`` with ``c = 1 / a - 1`` and
    ``c tan(pi a / 2) = ((a - 1) / tan(pi (a - 1) / 2)) / a``."""
    log_b = b_abs.log()
    c = (1 - a) / a
    return b * log_b * _expm1_ratio(c * log_b) * _ratio_near_zero(a - 1) / a


class StableReparam(Reparam):
    """Write any ``x ~ Stable(stability, skew, scale, loc)`` (latent or observed) as a Normal
    given four auxiliary latents, all of the site's ``batch_shape``: ``{name}_z_uniform``,
    ``{name}_t_uniform ~ Uniform(-pi/2, pi/2)`` and ``{name}_z_exponential``,
    ``{name}_t_exponential ~ Exponential(1)``.

    A standard ``Stable(a, b)`` is the sum of a symmetric stable of scale ``(1 - |b|) ** (1/a)``
    and a totally skewed one of scale ``|b| ** (1/a)`` (plus a shift in Nolan's S0 coords). The
    skewed part ``T`` is the Chambers-Mallows-Stuck transform of the ``t`` sites; the symmetric
    part is the scale mixture of :class:`SymmetricStableReparam`, its mixing variable made from the
    ``z`` sites. So ``x ~ Normal(loc + scale * (sign(b) |b| ** (1/a) T + shift), sqrt(2) * scale *
    (1 - |b|) ** (1/a) * sqrt(A))``. The site keeps its name, value and observedness; ``|skew|``
    is clamped into ``[eps, 1 - eps]`` (a totally skewed site has no Normal part). Both coords
    ``"S0"`` and ``"S"`` are handled. With validation on, ``stability >= 2`` raises ``ValueError``
    naming the site."""

    def apply(self, msg: dict) -> dict:
        import ember.distributions as dist
        from ember.distributions.misc import stable_cms

        name = msg["name"]
        base, reinterpreted, mask = _stable_base(name, msg["fn"], "StableReparam")
        _check_symmetric_part(name, base, "StableReparam", need_zero_skew=False)
        zu, ze = _noise(f"{name}_z", base, reinterpreted, mask)
        tu, te = _noise(f"{name}_t", base, reinterpreted, mask)
        a, b = base.stability, base.skew
        eps = torch.finfo(a.dtype).eps
        b_abs = b.abs().clamp(eps, 1 - eps)
        t = stable_cms(a, torch.ones_like(b), tu, te, coords="S0")
        loc0 = b.sign() * b_abs.pow(1 / a) * t + _skew_shift(a, b, b_abs)  # standard S0 location given t
        if base.coords != "S0":  # S = S0 + skew * tan(pi a / 2) away from a = 1 (where they coincide)
            near_one = (a - 1).abs() < 1e-6
            tan = torch.tan(math.pi / 2 * torch.where(near_one, torch.full_like(a, 0.5), a))
            loc0 = loc0 + torch.where(near_one, torch.zeros_like(a), b * tan)
        s_scale = (1 - b_abs).pow(1 / a) * _mixing_scale(a, zu, ze)
        scale = (base.scale * s_scale).clamp_min(torch.finfo(a.dtype).tiny)
        new_fn = self._wrap(dist.Normal(base.loc + base.scale * loc0, scale * math.sqrt(2)), reinterpreted, mask)
        return {"fn": new_fn, "value": msg["value"], "is_observed": msg["is_observed"]}
