"""Numerical helpers that are not inference algorithms (Pyro's ``pyro.ops``):
:mod:`ember.ops.stats` (MCMC diagnostics and summaries), :mod:`ember.ops.special` (special
functions), :mod:`ember.ops.welford` (streaming covariance), :mod:`ember.ops.linalg` (small
batched linear algebra) and :mod:`ember.ops.tensor_utils` (tensor helpers)."""

from ember.ops import linalg, special, stats, tensor_utils, welford

__all__ = ["linalg", "special", "stats", "tensor_utils", "welford"]
