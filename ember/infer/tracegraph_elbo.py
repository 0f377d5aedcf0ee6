"""``TraceGraph_ELBO``: score-function terms with downstream costs and baselines."""

from __future__ import annotations

from typing import Any

import torch

from ember.infer.compiled_elbo import CompiledLossAndGrads
from ember.infer.elbo import ELBO, MultiFrameTensor, is_guide_term
from ember.infer.trace_elbo import _loss_and_surrogate, _model_and_guide_terms
from ember.poutine.trace_struct import Trace, scale_and_mask
from ember.runtime import is_guide_latent

__all__ = ["TraceGraph_ELBO"]

_BASELINE_KEYS = {"use_decaying_avg_baseline", "baseline_beta", "baseline_value", "nn_baseline", "nn_baseline_input"}


def _fit_to(cost: Any, like: torch.Tensor) -> Any:
    """Sum the extra leading dims of ``cost`` so that it has at most ``like.dim()`` dims."""
    if not isinstance(cost, torch.Tensor):
        return cost
    extra = cost.dim() - like.dim()
    if extra > 0:
        cost = cost.sum(tuple(range(extra)))
    return cost


class TraceGraph_ELBO(ELBO):
    """The ELBO with lower-variance score-function terms.

    Each non-reparameterized guide site's score ``∇ log q(z)`` is multiplied only by its
    *downstream* cost: the terms that can depend on ``z``, kept per datum along the
    site's plates. Dependence is read off execution order, a cheap and safe superset of
    the true dependencies: in the guide a value can only depend on sites sampled before
    it, so the guide terms downstream of ``z`` are ``z``'s own and those after it; in the
    model a term can only depend on its own (replayed) value and earlier model sites, so
    the model terms downstream of ``z`` start at the first model site whose value is
    ``z`` or a later guide site. No tensor is wrapped to track provenance.

    Baselines, per site via ``infer={"baseline": {...}}``:

    * ``use_decaying_avg_baseline=True`` (with ``baseline_beta``, default 0.9): a running
      average of the downstream cost;
    * ``baseline_value``: a tensor the user computed (e.g. by a network), of the cost's
      shape;
    * ``nn_baseline`` (an ``nn.Module``, registered with ``ember.module`` so that it is
      trained) and ``nn_baseline_input``: ``nn_baseline(nn_baseline_input)``.

    Network baselines are trained on their own squared error ``(cost - baseline)²``, never
    on the ELBO. The score factor is unscaled by subsampling; the costs are scaled.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._avg: dict = {}

    def _downstream(self, model_trace: Trace, guide_trace: Trace) -> list:
        """For each non-reparameterized guide site: (site, MultiFrameTensor of its downstream costs)."""
        guide_names = [n for n, s in guide_trace.nodes.items() if is_guide_term(s)]  # auxiliaries, factors too
        gpos = {n: i for i, n in enumerate(guide_names)}
        model_sites = [(n, s) for n, s in model_trace.nodes.items() if s.type == "sample" and s.log_prob is not None]
        # first model position whose value comes from guide position >= i
        first_model_pos_from = [len(model_sites)] * (len(guide_names) + 1)
        pos_of_guide = {}
        for mpos, (n, _s) in enumerate(model_sites):
            if n in gpos and n not in pos_of_guide:
                pos_of_guide[n] = mpos
        best = len(model_sites)
        for i in range(len(guide_names) - 1, -1, -1):
            p = pos_of_guide.get(guide_names[i])
            if p is not None and p < best:
                best = p
            first_model_pos_from[i] = best
        out = []
        for name in guide_names:
            site = guide_trace.nodes[name]
            if site.fn.has_rsample:
                continue
            # a factor or observation scores values drawn before it: its downstream is the whole particle
            i = gpos[name] if is_guide_latent(site) else 0
            costs = MultiFrameTensor()
            for n in guide_names[i:]:
                g = guide_trace.nodes[n]
                costs.add(g.cond_indep_stack, -g.log_prob.detach())
            for _n, s in model_sites[first_model_pos_from[i] if i else 0:]:
                costs.add(s.cond_indep_stack, s.log_prob.detach())
            out.append((site, costs))
        return out

    def _baseline(self, site: Any, cost: torch.Tensor) -> tuple[Any, Any]:
        """(baseline to subtract, squared-error loss that trains it or None)."""
        opts = site.infer.get("baseline")
        if not opts:
            return None, None
        if not isinstance(opts, dict):
            raise TypeError(f"site '{site.name}': infer['baseline'] must be a dict of options; got {type(opts).__name__}")
        unknown = set(opts) - _BASELINE_KEYS
        if unknown:
            raise ValueError(f"site '{site.name}': unknown baseline options {sorted(unknown)}; known: {sorted(_BASELINE_KEYS)}")
        use_avg = bool(opts.get("use_decaying_avg_baseline", False))
        value = opts.get("baseline_value")
        net = opts.get("nn_baseline")
        if sum([use_avg, value is not None, net is not None]) > 1:
            raise ValueError(f"site '{site.name}': choose one baseline: use_decaying_avg_baseline, baseline_value or nn_baseline")
        if net is not None:
            if "nn_baseline_input" not in opts:
                raise ValueError(f"site '{site.name}': nn_baseline needs nn_baseline_input")
            value = net(opts["nn_baseline_input"])
        if value is not None:
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"site '{site.name}': the baseline must be a tensor; got {type(value).__name__}")
            cshape = cost.shape if isinstance(cost, torch.Tensor) else torch.Size()
            if value.shape != cshape:
                raise ValueError(
                    f"site '{site.name}': the baseline has shape {tuple(value.shape)} but the downstream cost it is "
                    f"subtracted from has shape {tuple(cshape)} (one entry per datum of the site's plates)"
                )
            return value, ((cost - value) ** 2).sum()
        if use_avg:
            beta = float(opts.get("baseline_beta", 0.9))
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"site '{site.name}': baseline_beta must be in [0, 1); got {beta}")
            c = cost.detach() if isinstance(cost, torch.Tensor) else torch.tensor(float(cost))
            old = self._avg.get(site.name)
            if old is None or old.shape != c.shape:
                new = c.clone()
                self._avg[site.name] = new
                return torch.zeros_like(c), None
            new = beta * old + (1 - beta) * c
            self._avg[site.name] = new
            return old, None
        return None, None

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, Any]:
        elbo, nonreparam = _model_and_guide_terms(model_trace, guide_trace)
        if not nonreparam:
            return _loss_and_surrogate(elbo)
        score_terms: Any = 0.0
        baseline_loss: Any = 0.0
        for site, costs in self._downstream(model_trace, guide_trace):
            score = scale_and_mask(site.unscaled_log_prob, 1.0, site.mask)
            cost = _fit_to(costs.sum_to(site.cond_indep_stack), score)
            baseline, bl_loss = self._baseline(site, cost)
            if baseline is not None:
                cost = cost - baseline.detach()
            if bl_loss is not None:
                baseline_loss = baseline_loss + bl_loss
            score_terms = score_terms + (score * cost).sum()
        loss, out = _loss_and_surrogate(elbo, score_terms)
        if isinstance(baseline_loss, torch.Tensor):
            # trains the baselines only (costs are detached); adds zero to the value
            out = out + baseline_loss - baseline_loss.detach()
        return loss, out


class JitTraceGraph_ELBO(CompiledLossAndGrads, TraceGraph_ELBO):
    """``TraceGraph_ELBO`` compiled as ``JitTrace_ELBO`` is (see :mod:`ember.infer.compiled_elbo`).
    Where a step's result depends on state the graph cannot see (a decaying-average baseline, an
    ``nn_baseline`` module) the recorded graph disagrees with the eager step or is refused, and it
    runs eagerly (``compile_status`` says why)."""


__all__ += ["JitTraceGraph_ELBO"]
