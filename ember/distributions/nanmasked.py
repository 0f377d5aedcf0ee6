"""Normal and multivariate normal likelihoods for data with missing entries (Pyro's
``NanMaskedNormal`` and ``NanMaskedMultivariateNormal``): a NaN in the value marks an entry as
unobserved."""

from __future__ import annotations

import math

import torch

from ember.distributions.torch import MultivariateNormal, Normal

__all__ = ["NanMaskedMultivariateNormal", "NanMaskedNormal"]


class NanMaskedNormal(Normal):
    """:class:`Normal` whose ``log_prob`` is 0 at the non-finite (NaN, missing) entries of the value
    (and has no gradient through them): a likelihood for partly observed data,
    ``pyro.sample("obs", NanMaskedNormal(loc, scale), obs=data_with_nans)``.

    Shapes: ``batch_shape`` is the broadcast shape of ``loc`` and ``scale``; ``event_shape`` is
    ``()``; ``log_prob`` of a value of shape ``sample_shape + batch_shape`` has that shape."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        ok = value.isfinite()
        if bool(ok.all()):
            return super().log_prob(value)
        lp = super().log_prob(torch.where(ok, value, self.loc.detach()))
        return torch.where(ok, lp, lp.new_zeros(()))


class NanMaskedMultivariateNormal(MultivariateNormal):
    """:class:`MultivariateNormal` whose ``log_prob`` marginalizes out the non-finite (NaN, missing)
    entries of each value: an event with observed entries ``o`` scores ``log N(x_o; loc_o, cov_oo)``
    (0 when nothing is observed).

    Shapes: ``loc`` has shape ``batch_shape + (D,)`` and the covariance ``batch_shape + (D, D)``;
    ``event_shape`` is ``(D,)``; ``log_prob`` of a ``sample_shape + batch_shape + (D,)`` value has
    shape ``sample_shape + batch_shape``."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        ok = value.isfinite()
        if bool(ok.all()):
            return super().log_prob(value)
        # The marginal of the observed entries, evaluated in one batch for every pattern of
        # missing entries: a missing entry gets value = loc, unit variance and no covariance with
        # the rest, which adds exactly log N(0; 0, 1) per missing entry, taken back off below.
        value, ok, loc = torch.broadcast_tensors(value, ok, self.loc)
        both = ok.unsqueeze(-1) & ok.unsqueeze(-2)
        eye = torch.eye(value.size(-1), dtype=value.dtype, device=value.device)
        cov = torch.where(both, self.covariance_matrix, eye)
        x = torch.where(ok, value, loc.detach())
        lp = MultivariateNormal(loc, cov, validate_args=False).log_prob(x)
        lp = lp + (~ok).sum(-1).to(lp.dtype) * (0.5 * math.log(2 * math.pi))
        return torch.where(ok.any(-1), lp, lp.new_zeros(()))  # nothing observed: exactly 0
