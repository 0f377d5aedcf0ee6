"""Strategies: choose a reparameterizer for each site automatically (``config=`` of ``reparam``)."""

from __future__ import annotations

from typing import Any

import torch

from ember.infer.reparam.loc_scale import _SHAPE_PARAMS, LocScaleReparam
from ember.infer.reparam.projected_normal import ProjectedNormalReparam
from ember.infer.reparam.reparam import Reparam
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


def _minimal(fn: Any, is_observed: bool) -> Reparam | None:
    import ember.distributions as dist

    base, _, _ = Reparam._unwrap(fn)
    if not is_observed and isinstance(base, dist.ProjectedNormal):
        return ProjectedNormalReparam()
    return None


class MinimalReparam(Strategy):
    """Only what inference needs to run at all: ``ProjectedNormal`` latents (on the sphere,
    where HMC cannot move) become normalised Gaussian vectors. Other sites are left as they are."""

    def configure(self, msg: Any) -> Reparam | None:
        return _minimal(msg["fn"], msg["is_observed"])


class AutoReparam(Strategy):
    """What :class:`MinimalReparam` does, plus, for latent sites: ``TransformReparam`` for
    transformed distributions with bijective transforms and ``LocScaleReparam(centered)`` for location-scale families
    (``centered=None``: learnable centring, trained by SVI).

    :param centered: passed to ``LocScaleReparam`` (None, or a float in ``[0, 1]``).
    """

    def __init__(self, *, centered: float | None = None) -> None:
        super().__init__()
        self.centered = centered

    def configure(self, msg: Any) -> Reparam | None:
        fn, is_observed = msg["fn"], msg["is_observed"]
        r = _minimal(fn, is_observed)
        if r is not None or is_observed:
            return r
        base, _, _ = Reparam._unwrap(fn)
        if isinstance(base, torch.distributions.TransformedDistribution):
            # HalfCauchy, HalfNormal (|x|) are not bijective images of their base: left alone
            return TransformReparam() if all(t.bijective for t in base.transforms) else None
        if type(base).__name__ in _SHAPE_PARAMS:
            # every such latent, whatever its parameters' values on the first run (a value-based
            # test would be fooled by an initialisation that happens to give loc 0 and scale 1)
            return LocScaleReparam(self.centered)
        return None


