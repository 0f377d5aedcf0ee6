"""Non-reparameterized doubles of reparameterized distributions (Pyro's
``pyro.distributions.testing.fakes``): same density, ``has_rsample = False``, so that
the ELBOs fall back to score-function gradients. Pyro's SVI tutorials import these."""

from __future__ import annotations

from ember.distributions.torch import Beta, Dirichlet, Gamma, Normal

__all__ = ["NonreparameterizedBeta", "NonreparameterizedDirichlet", "NonreparameterizedGamma", "NonreparameterizedNormal"]


class NonreparameterizedBeta(Beta):
    """``Beta`` without ``rsample``."""

    has_rsample = False


class NonreparameterizedGamma(Gamma):
    """``Gamma`` without ``rsample``."""

    has_rsample = False


class NonreparameterizedNormal(Normal):
    """``Normal`` without ``rsample``."""

    has_rsample = False


class NonreparameterizedDirichlet(Dirichlet):
    """``Dirichlet`` without ``rsample``."""

    has_rsample = False
