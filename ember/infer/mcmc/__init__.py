"""Markov chain Monte Carlo: HMC and NUTS on a model's unconstrained potential, the MCMC runner,
diagnostics and the ArviZ export."""

from ember.infer.mcmc.api import MCMC
from ember.infer.mcmc.arviz import to_inference_data
from ember.infer.mcmc.diagnostics import (
    autocorrelation,
    autocovariance,
    effective_sample_size,
    gelman_rubin,
    hpdi,
    print_summary,
    split_gelman_rubin,
    summary,
)
from ember.infer.mcmc.hmc import HMC
from ember.infer.mcmc.nuts import NUTS
from ember.infer.mcmc.potential import MCMCInitError, ModelPotential

__all__ = [
    "HMC",
    "MCMC",
    "MCMCInitError",
    "ModelPotential",
    "NUTS",
    "autocorrelation",
    "autocovariance",
    "effective_sample_size",
    "gelman_rubin",
    "hpdi",
    "print_summary",
    "split_gelman_rubin",
    "summary",
    "to_inference_data",
]
