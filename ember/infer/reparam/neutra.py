"""``NeuTraReparam``: run MCMC in the base space of a trained normalising-flow guide (Hoffman et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.infer.reparam.reparam import Reparam, sum_rightmost

__all__ = ["NeuTraReparam"]


class NeuTraReparam(Reparam):
    """Neural transport: with a trained ``AutoContinuous`` guide whose posterior is a flow
    ``z = T(e)`` over a standard Normal ``e`` (``AutoIAFNormal``, ...), write every latent site of
    the model as a function of the one auxiliary latent ``_<guide name>_shared_latent = e``. Where
    the guide fits well the posterior in ``e`` is close to a standard Normal, which HMC and NUTS
    sample easily.

    Use ``neutra.reparam(model)`` (a model in which the shared latent is drawn first, outside every
    plate, and each latent site the guide knows is rewritten); the density of the rewritten model in
    ``e`` is ``p(x, T(e)) |det dT/de|`` (the Jacobian of the flow enters once, as a ``factor`` site
    ``_<guide name>_shared_latent_jacobian``; each site keeps its prior density and the Jacobian of its
    support's bijection). :meth:`transform_sample` maps draws of ``e`` back to the model's sites.
    """

    def __init__(self, guide: Any) -> None:
        from ember.infer.autoguide.guides import AutoContinuous

        if not isinstance(guide, AutoContinuous):
            raise TypeError(f"NeuTraReparam needs an AutoContinuous guide with a flow posterior (e.g. AutoIAFNormal), "
                            f"got {type(guide).__name__}")
        self.guide = guide
        self._x: torch.Tensor | None = None
        self._slices: dict = {}

    def _flow(self) -> tuple[Any, list]:
        guide = self.guide
        if guide._structure is None:
            raise ValueError("NeuTraReparam: the guide has not been set up; train it (or call guide(*model_args)) first")
        with guide._pyro_context:
            posterior = guide.get_posterior()
        if not isinstance(posterior, torch.distributions.TransformedDistribution):
            raise TypeError(f"NeuTraReparam: {type(guide).__name__}'s posterior is a {type(posterior).__name__}, not a flow "
                            f"over a base distribution (use AutoIAFNormal or another flow guide)")
        return posterior.base_dist, list(posterior.transforms)

    @property
    def _shared_name(self) -> str:
        return f"_{self.guide._pyro_name}_shared_latent"

    def reparam(self, fn: Callable | None = None) -> Callable:
        """``fn`` (default: the guide's model) with its latent sites written in the flow's base space."""
        from ember.poutine.reparam_messenger import reparam as reparam_handler
        from ember.primitives import factor, sample

        model = self.guide.model if fn is None else fn
        sites = {s.name: s for s in self.guide.prototype_structure.sites} if self.guide._structure is not None else {}

        def config(msg: Any) -> Reparam | None:
            return self if msg["name"] in sites and not msg["is_observed"] else None

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            base, transforms = self._flow()
            e = sample(self._shared_name, base.mask(False))
            x, ldj = e, 0.0
            for t in transforms:
                y = t(x)
                ldj = ldj + sum_rightmost(t.log_abs_det_jacobian(x, y), 1 - t.domain.event_dim)
                x = y
            factor(self._shared_name + "_jacobian", ldj)
            self._x = x
            try:
                return reparam_handler(model, config=config)(*args, **kwargs)
            finally:
                self._x = None

        if not sites:
            raise ValueError("NeuTraReparam.reparam: the guide has not been set up; train it (or call guide(*model_args)) first")
        return wrapped

    def apply(self, msg: dict) -> dict:
        name, fn = msg["name"], msg["fn"]
        if self._x is None:
            raise RuntimeError(f"NeuTraReparam at site '{name}': use neutra.reparam(model), which draws the shared latent first")
        if msg["is_observed"] or msg["value"] is not None:
            raise ValueError(f"NeuTraReparam at site '{name}': the site has a given value; only latent sites are rewritten")
        offset = 0
        for s in self.guide.prototype_structure.sites:
            if s.name == name:
                break
            offset += s.numel
        else:
            raise ValueError(f"NeuTraReparam: site '{name}' is not a latent site of the guide's model")
        u = self._x[..., offset:offset + s.numel].reshape(self._x.shape[:-1] + s.ushape)
        value = s.transform(u)
        event_dim = len(fn.event_shape)
        batch_dims = value.dim() - event_dim
        lad = s.transform.log_abs_det_jacobian(u, value)
        log_density = sum_rightmost(fn.log_prob(value), fn.log_prob(value).dim() - batch_dims)
        log_density = log_density + sum_rightmost(lad, lad.dim() - batch_dims)
        from ember.distributions import Delta

        return {"fn": Delta(value, log_density=log_density, event_dim=event_dim), "value": value, "is_observed": True}

    def transform_sample(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draws ``e`` ``[N, D]`` of the shared latent -> ``{site: [N, *site shape]}`` (constrained)."""
        _, transforms = self._flow()
        x = latent
        with torch.no_grad():
            for t in transforms:
                x = t(x)
        out, offset = {}, 0
        for s in self.guide.prototype_structure.sites:
            u = x[..., offset:offset + s.numel].reshape(x.shape[:-1] + s.ushape)
            offset += s.numel
            out[s.name] = s.transform(u)
        return out
