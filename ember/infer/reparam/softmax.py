"""``SoftmaxReparam`` and ``GumbelSoftmaxReparam``: a relaxed one-hot categorical site through Gumbel noise."""

from __future__ import annotations

from ember.infer.reparam.reparam import Reparam

__all__ = ["GumbelSoftmaxReparam", "SoftmaxReparam"]


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


class GumbelSoftmaxReparam(Reparam):
    """Pyro's reparameterizer of ``x ~ RelaxedOneHotCategorical(temperature, logits)`` through
    uniform noise: the auxiliary latent ``{name}_uniform ~ Uniform(0, 1)`` (the categories as an
    event dim) and ``x = softmax((logits - log(-log u)) / temperature)``, a point mass. A given
    value (replayed, conditioned) is inverted to its ``u``. It turns a multimodal posterior over
    ``x`` into a unimodal one over ``u``, one more latent per event. Latent sites only."""

    def apply(self, msg: dict) -> dict:
        import torch

        import ember.distributions as dist
        from ember.primitives import sample

        name, fn, value = msg["name"], msg["fn"], msg["value"]
        base, reinterpreted, mask = self._unwrap(fn, name)
        if not isinstance(base, torch.distributions.RelaxedOneHotCategorical):
            raise ValueError(f"GumbelSoftmaxReparam at site '{name}': expected a RelaxedOneHotCategorical distribution, "
                             f"got {type(base).__name__}")
        if msg["is_observed"]:
            raise NotImplementedError(f"GumbelSoftmaxReparam at site '{name}': the site is observed; it reparameterizes "
                                      f"latent sites only")
        logits, temperature = base.logits, base.temperature
        noise = self._wrap(dist.Uniform(torch.zeros_like(logits), torch.ones_like(logits)).to_event(1), reinterpreted, mask)
        aux = f"{name}_uniform"
        if value is None:
            u = sample(aux, noise)
            value = torch.softmax((logits - u.log().neg().log()) / temperature, dim=-1)
        else:
            # x = softmax((logits + g) / T) holds for g = T log x - logits (softmax drops a constant
            # per event), and g = -log(-log u): u = exp(-exp(logits - T log x)) maps back to x
            from ember.poutine.misc_messengers import _SubstituteValuesMessenger

            with _SubstituteValuesMessenger(data={aux: (logits - temperature * value.log()).exp().neg().exp()}):
                sample(aux, noise)
        return self._deterministic(value, len(fn.event_shape))
