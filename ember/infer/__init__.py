"""Inference: SVI with ELBO estimators, importance sampling, MCMC (HMC/NUTS) and Predictive."""

from ember.infer.elbo import ELBO, NonFiniteLossError
from ember.infer.importance import Empirical, EmpiricalMarginal, Importance
from ember.infer.initialization import init_to_mean, init_to_median, init_to_sample, init_to_uniform, init_to_value
from ember.infer.mcmc import HMC, MCMC, NUTS, RandomWalkKernel
from ember.infer.predictive import Predictive, WeighedPredictive
from ember.infer.svgd import SVGD, IMQSteinKernel, RBFSteinKernel
from ember.infer.svi import SVI
from ember.infer.trace_elbo import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from ember.infer.tracegraph_elbo import TraceGraph_ELBO

__all__ = ["ELBO", "JitTrace_ELBO", "NonFiniteLossError", "SVI", "TraceGraph_ELBO", "TraceMeanField_ELBO", "Trace_ELBO"]
__all__ += ["Empirical", "EmpiricalMarginal", "Importance", "Predictive", "WeighedPredictive"]
__all__ += ["IMQSteinKernel", "RBFSteinKernel", "SVGD"]
__all__ += ["DataParallelSVI", "HMC", "MCMC", "NUTS", "RandomWalkKernel", "init_to_mean", "init_to_median", "init_to_sample", "init_to_uniform", "init_to_value"]


def __getattr__(name: str):
    # data-parallel SVI imports torch.distributed (~0.1 s): only on first use
    if name == "DataParallelSVI":
        from ember.infer.distributed import DataParallelSVI

        return DataParallelSVI
    if name == "autoguide":  # pyro.infer.autoguide.AutoNormal(model) after a bare `import pyro`
        import importlib

        return importlib.import_module("ember.infer.autoguide")
    raise AttributeError(f"module 'ember.infer' has no attribute {name!r}")

from ember.infer.abstract_infer import TracePosterior  # noqa: E402  (Pyro exports it from pyro.infer)

__all__ += ["TracePosterior"]

# Enumeration (issue 13)
from ember.infer.enum import config_enumerate  # noqa: E402
from ember.infer.traceenum_elbo import JitTraceEnum_ELBO, TraceEnum_ELBO  # noqa: E402

__all__ += ["JitTraceEnum_ELBO", "TraceEnum_ELBO", "config_enumerate"]

# issue 14: Rényi / IWAE bound
from ember.infer.renyi_elbo import RenyiELBO  # noqa: E402

__all__ += ["RenyiELBO"]
from ember.infer.discrete import infer_discrete  # noqa: E402

__all__ += ["infer_discrete"]

# issue 14: more objectives, compiled variants, model criticism
from ember.infer.rws import ReweightedWakeSleep  # noqa: E402
from ember.infer.trace_elbo import JitTraceMeanField_ELBO  # noqa: E402
from ember.infer.tracegraph_elbo import JitTraceGraph_ELBO  # noqa: E402
from ember.infer.tracetailadaptive_elbo import TraceTailAdaptive_ELBO  # noqa: E402

__all__ += ["JitTraceGraph_ELBO", "JitTraceMeanField_ELBO", "ReweightedWakeSleep", "TraceTailAdaptive_ELBO"]

from ember.infer.csis import CSIS  # noqa: E402

__all__ += ["CSIS"]

from ember.infer.smcfilter import SMCFilter  # noqa: E402

__all__ += ["SMCFilter"]

from ember.infer.resampler import Resampler  # noqa: E402

__all__ += ["Resampler"]

from ember.infer.util import enable_validation, is_validation_enabled  # noqa: E402  (pyro.infer.enable_validation)

__all__ += ["enable_validation", "is_validation_enabled"]

# likelihood-free and MMD objectives
from ember.infer.energy_distance import EnergyDistance  # noqa: E402

__all__ += ["EnergyDistance"]
from ember.infer.trace_mmd import Trace_MMD  # noqa: E402

__all__ += ["Trace_MMD"]
