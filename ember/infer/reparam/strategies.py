"""Strategies: choose a reparameterizer for each site automatically (``config=`` of ``reparam``)."""

from __future__ import annotations

from typing import Any

import torch

from ember.infer.reparam.loc_scale import _SHAPE_PARAMS, LocScaleReparam
from ember.infer.reparam.projected_normal import ProjectedNormalReparam
from ember.infer.reparam.reparam import Reparam
from ember.infer.reparam.stable import LatentStableReparam, StableReparam, SymmetricStableReparam
from ember.infer.reparam.transform import TransformReparam

__all__ = ["Strategy", "MinimalReparam", "AutoReparam"]


class Strategy:
    """A callable ``config`` for ``ember.poutine.reparam``: ``strategy(msg)`` returns the
    reparameterizer for a site (chosen once per site name by :meth:`configure` and kept in
    ``self.config``), and ``strategy(model)`` returns ``reparam(model, config=strategy)``.
    Auxiliary sites a reparameterizer draws are not reparameterized again by the same handler."""

    def __init__(self) -> None:
        self.config: dict[str, Reparam | None] = {}

    def configure(self, msg: Any) -> Reparam | None:
        raise NotImplementedError

    def __call__(self, msg_or_fn: Any) -> Any:
        if isinstance(msg_or_fn, dict) or hasattr(msg_or_fn, "cond_indep_stack"):
            name = msg_or_fn["name"]
            if name not in self.config:
                self.config[name] = self.configure(msg_or_fn)
            return self.config[name]
        if callable(msg_or_fn):
            from ember.poutine.reparam_messenger import reparam

            return reparam(msg_or_fn, config=self)
        raise TypeError(f"{type(self).__name__}: expected a sample message or a model function, got {type(msg_or_fn).__name__}")


class _Then(Reparam):
    """``first``, then ``second`` on the auxiliary site ``{name}{suffix}`` that ``first`` draws (the
    one place a strategy reparameterizes an auxiliary site, as Pyro's strategies do: a Stable
    inside a TransformedDistribution, the decentred site of a latent Stable, the base of a
    transformed latent). The strategy's ``config`` keeps this object under the site's name, so a
    saved ``config`` used as ``reparam(config=dict)`` does the same (the auxiliary site's own
    choice lives in it, not under the auxiliary name)."""

    def __init__(self, first: Reparam, suffix: str, second: Reparam) -> None:
        self.first, self.suffix, self.second = first, suffix, second

    def __repr__(self) -> str:
        return f"{type(self.first).__name__} then {self.second!r} on the '*{self.suffix}' site"

    def apply(self, msg: dict) -> dict:
        from ember.poutine.reparam_messenger import ReparamMessenger

        aux = f"{msg['name']}{self.suffix}"
        with ReparamMessenger(config=lambda m: self.second if m["name"] == aux else None):
            return self.first.apply(msg)


def _is_plain_stable(base: Any) -> bool:
    """A ``Stable`` whose density the strategies replace (not a ``StableWithLogProb``, whose
    ``log_prob`` the user asked for)."""
    import ember.distributions as dist

    return isinstance(base, dist.Stable) and not any(c.__name__ == "StableWithLogProb" for c in type(base).__mro__)


def _minimal(fn: Any, is_observed: bool) -> Reparam | None:
    """Pyro's minimal rules: a Stable latent gets ``LatentStableReparam``; an observed Stable gets
    ``StableReparam`` if its skew may be nonzero (nonzero, or requiring grad), else
    ``SymmetricStableReparam``; a ``ProjectedNormal`` latent gets ``ProjectedNormalReparam``; a
    ``TransformedDistribution`` whose base needs one of these gets ``TransformReparam`` followed
    by that on its ``{name}_base`` site."""
    import ember.distributions as dist

    base, _, _ = Reparam._unwrap(fn)
    if isinstance(base, torch.distributions.TransformedDistribution):
        inner = _minimal(base.base_dist, is_observed)
        if inner is None or not all(t.bijective for t in base.transforms):
            return None
        return _Then(TransformReparam(), "_base", inner)
    if _is_plain_stable(base):
        if not is_observed:
            return LatentStableReparam()
        skew = base.skew
        return StableReparam() if skew.requires_grad or bool(skew.any()) else SymmetricStableReparam()
    if not is_observed and isinstance(base, dist.ProjectedNormal):
        return ProjectedNormalReparam()
    return None


class MinimalReparam(Strategy):
    """Only what inference needs to run at all: ``Stable`` sites (whose density is a costly
    integral) are written with auxiliary uniform and exponential sites (``LatentStableReparam``
    for a latent; for an observed site ``SymmetricStableReparam`` when its skew is a constant
    zero, else ``StableReparam``), and ``ProjectedNormal`` latents (on the sphere, where HMC
    cannot move) become normalised Gaussian vectors; a ``TransformedDistribution`` of one of
    these gets ``TransformReparam`` and then that on its ``{name}_base`` site. Other sites are
    left as they are."""

    def configure(self, msg: Any) -> Reparam | None:
        return _minimal(msg["fn"], msg["is_observed"])


class AutoReparam(Strategy):
    """What :class:`MinimalReparam` does, plus, for latent sites: ``TransformReparam`` for
    transformed distributions with bijective transforms (then this strategy's choice for the
    ``{name}_base`` site) and ``LocScaleReparam(centered)`` for location-scale families
    (``centered=None``: learnable centring, trained by SVI). A latent ``Stable`` is decentred
    (``LocScaleReparam`` with shape parameters skew and stability) and its ``{name}_decentered``
    site written by ``LatentStableReparam``, as Pyro's AutoReparam does. Sites whose names contain
    ``_decentered`` are not decentred again.

    :param centered: passed to ``LocScaleReparam`` (None, or a float in ``[0, 1]``).
    """

    def __init__(self, *, centered: float | None = None) -> None:
        super().__init__()
        self.centered = centered

    def configure(self, msg: Any) -> Reparam | None:
        return self._choose(msg["name"], msg["fn"], msg["is_observed"])

    def _choose(self, name: str, fn: Any, is_observed: bool) -> Reparam | None:
        if is_observed:
            return _minimal(fn, is_observed)
        base, _, _ = Reparam._unwrap(fn)
        if isinstance(base, torch.distributions.TransformedDistribution):
            # HalfCauchy, HalfNormal (|x|) are not bijective images of their base: left alone
            if not all(t.bijective for t in base.transforms):
                return None
            # then the base site {name}_base as a latent of its own (Pyro's strategies recurse)
            inner = self._choose(f"{name}_base", base.base_dist, False)
            return TransformReparam() if inner is None else _Then(TransformReparam(), "_base", inner)
        if _is_plain_stable(base):
            if "_decentered" in name:
                return LatentStableReparam()
            # as Pyro: decentred (skew and stability as shape parameters), then the decentred Stable by CMS
            first = LocScaleReparam(self.centered, shape_params=("skew", "stability"))
            return _Then(first, "_decentered", LatentStableReparam())
        if type(base).__name__ in _SHAPE_PARAMS and "_decentered" not in name:
            # every such latent, whatever its parameters' values on the first run (a value-based
            # test would be fooled by an initialisation that happens to give loc 0 and scale 1)
            return LocScaleReparam(self.centered)
        return _minimal(fn, is_observed)
