"""Markov chain Monte Carlo: HMC and NUTS on a model's unconstrained potential (chains as values:
:class:`HMCState`, :class:`TransitionInfo`), the MCMC runner, diagnostics and the ArviZ export."""

from ember.infer.mcmc.adaptation import AdaptState
from ember.infer.mcmc.api import MCMC, StreamingMCMC
from ember.infer.mcmc.arviz import to_inference_data
from ember.infer.mcmc.hmc import HMC, HMCState, TransitionInfo
from ember.infer.mcmc.mcmc_kernel import MCMCKernel
from ember.infer.mcmc.nuts import NUTS
from ember.infer.mcmc.potential import MCMCInitError, ModelPotential
from ember.infer.mcmc.rwkernel import RandomWalkKernel
from ember.infer.mcmc.util import diagnostics, initialize_model, print_summary, select_samples, summary
from ember.ops.stats import (
    autocorrelation,
    autocovariance,
    effective_sample_size,
    gelman_rubin,
    hpdi,
    split_gelman_rubin,
)

__all__ = [
    "HMC",
    "MCMC",
    "AdaptState",
    "HMCState",
    "MCMCInitError",
    "MCMCKernel",
    "ModelPotential",
    "NUTS",
    "RandomWalkKernel",
    "StreamingMCMC",
    "TransitionInfo",
    "autocorrelation",
    "autocovariance",
    "diagnostics",
    "effective_sample_size",
    "gelman_rubin",
    "hpdi",
    "initialize_model",
    "print_summary",
    "select_samples",
    "split_gelman_rubin",
    "summary",
    "to_inference_data",
]
