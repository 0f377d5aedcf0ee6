"""``SoftmaxReparam``: a relaxed one-hot categorical site through Gumbel noise."""

from __future__ import annotations

from ember.infer.reparam.reparam import Reparam

__all__ = ["SoftmaxReparam"]


class SoftmaxReparam(Reparam):
    """Write ``x ~ RelaxedOneHotCategorical(temperature, logits)`` as
    ``x = softmax((logits + g) / temperature)`` with the auxiliary latent
    ``{name}_gumbel ~ Gumbel(0, 1)`` (event shape: the categories). Latent sites only."""

    def apply(self, msg: dict) -> dict:
        import torch

        import ember.distributions as dist
        from ember.primitives import sample

        name, fn = msg["name"], msg["fn"]
        base, reinterpreted, mask = self._unwrap(fn, name)
        if not isinstance(base, torch.distributions.RelaxedOneHotCategorical):
            raise ValueError(
                f"SoftmaxReparam at site '{name}': expected a RelaxedOneHotCategorical distribution, got {type(base).__name__}"
            )
        if msg["is_observed"] or msg["value"] is not None:
            raise ValueError(f"SoftmaxReparam at site '{name}': the site has a given value; it reparameterizes latent sites only")
        logits = base.logits
        gumbel_fn = dist.Gumbel(torch.zeros_like(logits), torch.ones_like(logits)).to_event(1)
        g = sample(f"{name}_gumbel", self._wrap(gumbel_fn, reinterpreted, mask))
        value = torch.softmax((logits + g) / base.temperature, dim=-1)
        return self._deterministic(value, len(fn.event_shape))
