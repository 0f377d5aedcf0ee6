"""Inference: SVI with ELBO estimators."""

from ember.infer.elbo import ELBO, NonFiniteLossError
from ember.infer.svi import SVI
from ember.infer.trace_elbo import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from ember.infer.tracegraph_elbo import TraceGraph_ELBO

__all__ = ["ELBO", "JitTrace_ELBO", "NonFiniteLossError", "SVI", "TraceGraph_ELBO", "TraceMeanField_ELBO", "Trace_ELBO"]
