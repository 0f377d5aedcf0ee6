"""Numerical helpers that are not inference algorithms (Pyro's ``pyro.ops``): :mod:`ember.ops.stats`."""

from ember.ops import stats

__all__ = ["stats"]
