"""``ProjectedNormalReparam``: a direction on the sphere as a normalised Gaussian vector."""

from __future__ import annotations

from ember.infer.reparam.reparam import Reparam

__all__ = ["ProjectedNormalReparam"]


class ProjectedNormalReparam(Reparam):
    """Write ``x ~ ProjectedNormal(concentration)`` as ``x = y / |y|`` with the auxiliary latent
    ``{name}_normal ~ Normal(concentration, 1)`` (event shape: the vector). Latent sites only:
    HMC and NUTS cannot move on the sphere, but can on ``y``."""

    def apply(self, msg: dict) -> dict:
        import torch

        import ember.distributions as dist
        from ember.primitives import sample

        name, fn = msg["name"], msg["fn"]
        base, reinterpreted, mask = self._unwrap(fn, name)
        if not isinstance(base, dist.ProjectedNormal):
            raise ValueError(f"ProjectedNormalReparam at site '{name}': expected ProjectedNormal, got {type(base).__name__}")
        if msg["is_observed"] or msg["value"] is not None:
            raise ValueError(f"ProjectedNormalReparam at site '{name}': the site has a given value; it reparameterizes latent sites only")
        conc = base.concentration
        normal = dist.Normal(conc, torch.ones_like(conc)).to_event(1)
        y = sample(f"{name}_normal", self._wrap(normal, reinterpreted, mask))
        return self._deterministic(y / y.norm(dim=-1, keepdim=True), len(fn.event_shape))
