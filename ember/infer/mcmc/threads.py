"""Moved to :mod:`ember.infer.threads` (MCMC and ``SVI.run`` share it); kept importable here."""

from ember.infer.threads import ThreadChoice

__all__ = ["ThreadChoice"]
