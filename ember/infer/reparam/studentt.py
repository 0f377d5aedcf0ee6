"""``StudentTReparam``: a Student-t site as a Normal with a Gamma-distributed precision."""

from __future__ import annotations

from ember.infer.reparam.reparam import Reparam

__all__ = ["StudentTReparam"]


class StudentTReparam(Reparam):
    """Write ``x ~ StudentT(df, loc, scale)`` as ``x ~ Normal(loc, scale / sqrt(g))`` with the
    auxiliary latent ``{name}_gamma ~ Gamma(df / 2, df / 2)`` (the scale mixture that defines the
    Student-t). The site keeps its name and value (observed or not); only its distribution changes,
    so a conditionally Gaussian model stays Gaussian given ``g``."""

    def apply(self, msg: dict) -> dict:
        import ember.distributions as dist
        from ember.primitives import sample

        name, fn = msg["name"], msg["fn"]
        base, reinterpreted, mask = self._unwrap(fn, name)
        if not isinstance(base, dist.StudentT):
            raise ValueError(f"StudentTReparam at site '{name}': expected a StudentT distribution, got {type(base).__name__}")
        half_df = base.df * 0.5
        gamma_fn = dist.Gamma(half_df, half_df).expand(base.batch_shape)
        g = sample(f"{name}_gamma", self._wrap(gamma_fn, reinterpreted, mask))
        new_fn = self._wrap(dist.Normal(base.loc, base.scale * g.rsqrt()), reinterpreted, mask)
        return {"fn": new_fn, "value": msg["value"], "is_observed": msg["is_observed"]}
