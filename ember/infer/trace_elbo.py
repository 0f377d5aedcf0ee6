"""``Trace_ELBO``: the standard Monte-Carlo ELBO with score-function terms."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ember.infer.compiled_elbo import CompiledLossAndGrads
from ember.infer.elbo import ELBO, MultiFrameTensor, is_guide_term
from ember.poutine.trace_struct import Trace, scale_and_mask
from ember.runtime import is_latent, is_validation_enabled

__all__ = ["Trace_ELBO", "JitTrace_ELBO", "TraceMeanField_ELBO"]


def _model_and_guide_terms(model_trace: Trace, guide_trace: Trace) -> tuple[Any, list]:
    """The ELBO of one particle and the guide sites that need a score-function term.

    Every guide term counts (:func:`ember.infer.elbo.is_guide_term`): latents, auxiliary sites,
    factors and observations; each one's −log q belongs to the loss and (below) to the
    score-function costs of every estimator."""
    elbo: Any = None
    for site in model_trace.nodes.values():
        if site.type == "sample":
            lps = site.log_prob_sum
            if lps is not None:
                elbo = lps if elbo is None else elbo + lps
    nonreparam = []
    for site in guide_trace.nodes.values():
        if is_guide_term(site):
            lps = site.log_prob_sum
            if lps is None:
                continue
            elbo = -lps if elbo is None else elbo - lps
            if not site.fn.has_rsample:
                nonreparam.append(site)
    return (0.0 if elbo is None else elbo), nonreparam


def _compute_log_r(model_trace: Trace, guide_trace: Trace) -> MultiFrameTensor:
    """Per-site costs log p - log q, detached, grouped by plates."""
    log_r = MultiFrameTensor()
    for site in model_trace.nodes.values():
        if site.type == "sample" and site.log_prob is not None:
            log_r.add(site.cond_indep_stack, site.log_prob.detach())
    for site in guide_trace.nodes.values():
        if site.log_prob is not None and is_guide_term(site):
            log_r.add(site.cond_indep_stack, -site.log_prob.detach())
    return log_r


def _score_function_terms(model_trace: Trace, guide_trace: Trace, nonreparam: list) -> Any:
    """Sum over non-reparameterized guide sites of (unscaled log q) x (the cost of the
    whole particle, kept per datum along the site's plates)."""
    log_r = _compute_log_r(model_trace, guide_trace)
    surrogate: Any = 0.0
    for site in nonreparam:
        cost = log_r.sum_to(site.cond_indep_stack)
        score = scale_and_mask(site.unscaled_log_prob, 1.0, site.mask)
        surrogate = surrogate + (score * cost).sum()
    return surrogate


def _loss_and_surrogate(elbo: Any, score_terms: Any = None) -> tuple[torch.Tensor, Any]:
    """(loss, surrogate): ``loss = -elbo``; the surrogate has the loss's value and the
    estimator's gradient (``-(elbo + score_terms)``)."""
    if not isinstance(elbo, torch.Tensor):
        elbo = torch.tensor(float(elbo))
    loss = -elbo
    if score_terms is None:
        return loss, loss
    surrogate = elbo + score_terms
    return loss, -surrogate + (surrogate - elbo).detach()


class Trace_ELBO(ELBO):
    """The ELBO estimated from one trace of the guide and the model replayed against it.

    Reparameterized guide sites get pathwise gradients; every other guide site gets a
    score-function term whose cost is the particle's log p - log q, summed down to the
    plates the site lives in (so per-datum choices see per-datum costs). Plate
    subsampling scales the costs by size / subsample_size, never the score factor.
    """

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, Any]:
        elbo, nonreparam = _model_and_guide_terms(model_trace, guide_trace)
        if not nonreparam:
            return _loss_and_surrogate(elbo)
        return _loss_and_surrogate(elbo, _score_function_terms(model_trace, guide_trace, nonreparam))


class JitTrace_ELBO(CompiledLossAndGrads, Trace_ELBO):
    """``Trace_ELBO`` compiled: after one eager, checked step, each step runs one recorded graph
    of the guide's sampling, the model, the surrogate loss and its gradients, without Python
    (see :mod:`ember.infer.compiled_elbo`). As with Pyro's ``JitTrace_ELBO``, the model and guide
    must have static structure; where they do not (control flow on sampled values, ...), it
    warns once and runs eagerly. ``compile_status`` says which happened and why."""


def _check_mean_field(model_trace: Trace, guide_trace: Trace) -> None:
    """Warn when model and guide draw their shared latents in different orders: then a guide
    site may depend on latents the model draws after it, which the analytic KL ignores."""
    model_order = [n for n, s in model_trace.nodes.items() if is_latent(s) and n in guide_trace.nodes]
    guide_order = [n for n, s in guide_trace.nodes.items() if is_latent(s) and n in model_trace.nodes]
    if model_order != guide_order:
        warnings.warn(
            f"TraceMeanField_ELBO: cannot verify the mean-field restriction on the guide: the model draws its latents "
            f"in the order {model_order}, the guide in the order {guide_order}. The analytic KL terms are right only "
            f"when no guide site depends on latents the model draws later; draw the sites in the model's order, or use "
            f"Trace_ELBO.",
            UserWarning,
            stacklevel=5,
        )


class TraceMeanField_ELBO(Trace_ELBO):
    """Trace_ELBO that uses the analytic KL divergence ``KL(q(z) || p(z))`` for each
    latent site where torch registers one and the guide site is reparameterized, and
    Monte-Carlo terms elsewhere. Valid for mean-field guides (the guide's site does
    not depend on other latents in a way the model's conditional ignores)."""

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, Any]:
        if is_validation_enabled():
            _check_mean_field(model_trace, guide_trace)
        elbo: Any = 0.0
        nonreparam = []
        analytic = set()
        for name, gsite in guide_trace.nodes.items():
            if not is_guide_term(gsite):
                continue
            msite = model_trace.nodes.get(name)
            if gsite.fn.has_rsample and msite is not None and is_latent(msite) and is_latent(gsite):
                try:
                    kl = torch.distributions.kl_divergence(gsite.fn, msite.fn)
                except NotImplementedError:
                    kl = None
                if kl is not None:
                    elbo = elbo - scale_and_mask(kl, msite.scale, msite.mask).sum()
                    analytic.add(name)
                    continue
            elbo = elbo - gsite.log_prob_sum
            if not gsite.fn.has_rsample:
                nonreparam.append(gsite)
        for name, site in model_trace.nodes.items():
            if site.type == "sample" and site.log_prob_sum is not None and name not in analytic:
                elbo = elbo + site.log_prob_sum
        if not nonreparam:
            return _loss_and_surrogate(elbo)
        return _loss_and_surrogate(elbo, _score_function_terms(model_trace, guide_trace, nonreparam))


class JitTraceMeanField_ELBO(CompiledLossAndGrads, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` compiled as ``JitTrace_ELBO`` is (see :mod:`ember.infer.compiled_elbo`):
    static models and guides run one recorded graph per step; others warn once and run eagerly."""


__all__ += ["JitTraceMeanField_ELBO"]
