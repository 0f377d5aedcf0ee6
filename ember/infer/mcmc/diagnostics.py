"""Convergence diagnostics and summaries of MCMC draws: where earlier Ember code imported them from.

The statistics live in :mod:`ember.ops.stats` (Pyro's ``pyro.ops.stats``) and the per-site tables
in :mod:`ember.infer.mcmc.util` (Pyro's ``pyro.infer.mcmc.util``); this module re-exports them.
"""

from ember.infer.mcmc.util import diagnostics, format_summary, print_summary, summary
from ember.ops.stats import (
    autocorrelation,
    autocovariance,
    effective_sample_size,
    gelman_rubin,
    hpdi,
    pi,
    quantile,
    split_gelman_rubin,
)

__all__ = [
    "autocorrelation",
    "autocovariance",
    "diagnostics",
    "effective_sample_size",
    "format_summary",
    "gelman_rubin",
    "hpdi",
    "pi",
    "print_summary",
    "quantile",
    "split_gelman_rubin",
    "summary",
]
