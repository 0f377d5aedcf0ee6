"""Posteriors represented by weighted execution traces (Pyro's ``pyro.infer.abstract_infer``).

:class:`TracePosterior` is the base of inference algorithms whose result is a set of model
traces with log-weights: a subclass defines ``_traces(*args, **kwargs)``, a generator of
``(trace, log_weight)`` pairs (or ``(trace, log_weight, chain_id)`` triples), and
``run(*args, **kwargs)`` collects them. :class:`Marginals` and :class:`EmpiricalMarginal`
turn the collected traces into distributions over chosen sites. Pyro's search-inference
example is such a subclass::

    class Search(TracePosterior):
        def __init__(self, model, max_tries=int(1e6)):
            self.model, self.max_tries = model, max_tries
            super().__init__()

        def _traces(self, *args, **kwargs):
            q = queue.Queue()
            q.put(poutine.Trace())
            p = poutine.trace(poutine.queue(self.model, queue=q, max_tries=self.max_tries))
            while not q.empty():
                tr = p.get_trace(*args, **kwargs)
                yield tr, tr.log_prob_sum()
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ember.distributions.empirical import Empirical
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.trace_struct import Trace

__all__ = ["EmpiricalMarginal", "Marginals", "TracePosterior"]


class TracePosterior(metaclass=ABCMeta):
    """A posterior over model executions: after :meth:`run`, ``exec_traces`` (a list of
    :class:`~ember.poutine.Trace`) and ``log_weights`` (a list of scalar tensors, one per
    trace) hold it, ``chain_ids`` says which chain each trace came from (``num_chains``).

    Calling the posterior (``posterior()``) draws one trace with probability proportional to
    its weight, without its observed sites.
    """

    def __init__(self, num_chains: int = 1) -> None:
        if not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"{type(self).__name__}: num_chains must be a positive integer; got {num_chains!r}")
        self.num_chains = num_chains
        self._reset()

    def _reset(self) -> None:
        self.log_weights: list = []
        self.exec_traces: list = []
        self.chain_ids: list = []
        self._idx_by_chain: list = [[] for _ in range(self.num_chains)]
        self._categorical: torch.distributions.Categorical | None = None

    @abstractmethod
    def _traces(self, *args: Any, **kwargs: Any) -> Iterator[tuple]:
        """Yield ``(trace, log_weight)`` or ``(trace, log_weight, chain_id)`` for the model run on ``args``."""
        raise NotImplementedError

    def run(self, *args: Any, **kwargs: Any) -> TracePosterior:
        """Collect the traces and log-weights of :meth:`_traces` (run under ``poutine.block``,
        so that the handlers around the call do not see its sites); returns ``self``."""
        self._reset()
        with BlockMessenger():
            for i, vals in enumerate(self._traces(*args, **kwargs)):
                if len(vals) == 2:
                    tr, logit = vals
                    chain_id = 0
                elif len(vals) == 3:
                    tr, logit, chain_id = vals
                else:
                    raise ValueError(f"{type(self).__name__}._traces must yield (trace, log_weight) or (trace, log_weight, chain_id); got {len(vals)} items")
                if not 0 <= chain_id < self.num_chains:
                    raise ValueError(f"{type(self).__name__}._traces yielded chain_id={chain_id}, but num_chains={self.num_chains}")
                self.exec_traces.append(tr)
                self.log_weights.append(logit)
                self.chain_ids.append(chain_id)
                self._idx_by_chain[chain_id].append(i)
        if not self.exec_traces:
            raise ValueError(f"{type(self).__name__}.run: _traces yielded no trace")
        sizes = [torch.as_tensor(w).numel() for w in self.log_weights]
        bad = [i for i, n in enumerate(sizes) if n != 1]
        if bad:
            raise ValueError(
                f"{type(self).__name__}._traces: each log_weight must be a scalar; trace {bad[0]} has one with "
                f"{sizes[bad[0]]} elements (sum it, e.g. trace.log_prob_sum())"
            )
        logits = torch.stack([torch.as_tensor(w, dtype=torch.get_default_dtype()).detach().reshape(()) for w in self.log_weights])
        self._categorical = torch.distributions.Categorical(logits=logits)
        return self

    def _require_run(self) -> None:
        if self._categorical is None:
            raise RuntimeError(f"{type(self).__name__}: call .run(*args, **kwargs) first")

    def __call__(self, *args: Any, **kwargs: Any) -> Trace:
        """One of the collected traces, drawn in proportion to its weight, without observed sites."""
        self._require_run()
        trace = self.exec_traces[int(self._categorical.sample())].copy()
        for name in trace.observation_nodes:
            trace.remove_node(name)
        return trace

    def marginal(self, sites: str | Sequence[str] | None = None) -> Marginals:
        """The marginal distributions of ``sites`` (default ``"_RETURN"``): a :class:`Marginals`."""
        return Marginals(self, sites)

    def information_criterion(self, pointwise: bool = False) -> OrderedDict:
        """The widely applicable information criterion (WAIC) of the model's one observed site,
        from the collected traces: ``{"waic": ..., "p_waic": ...}`` (the effective number of
        parameters), each per data point with ``pointwise=True``. Models with more than one
        observed site raise ``ValueError``."""
        from ember.ops.stats import waic

        if not self.exec_traces:
            return OrderedDict()
        obs_node = None
        log_likelihoods = []
        for i, trace in enumerate(self.exec_traces):
            obs_nodes = trace.observation_nodes
            if len(obs_nodes) != 1:
                raise ValueError(
                    f"information_criterion needs a model with exactly one observed site; trace {i} has {len(obs_nodes)}: {obs_nodes}"
                )
            if obs_node is None:
                obs_node = obs_nodes[0]
            elif obs_node != obs_nodes[0]:
                raise ValueError(f"information_criterion: the observed site is '{obs_node}' in one trace and '{obs_nodes[0]}' in trace {i}")
            site = trace.nodes[obs_node]
            log_likelihoods.append(site.fn.log_prob(site.value))
        ll = torch.stack(log_likelihoods, dim=0)
        log_w = torch.stack([torch.as_tensor(w).detach().reshape(()) for w in self.log_weights]).to(ll)
        waic_value, p_waic = waic(ll, log_w, pointwise)
        return OrderedDict([("waic", waic_value), ("p_waic", p_waic)])


class Marginals:
    """The marginal distributions of some sites of a run :class:`TracePosterior` (or of any
    run posterior with ``exec_traces`` and ``log_weights``, such as ``Importance``).

    ``sites``: a site name or a list of them (default ``["_RETURN"]``, the model's return
    value). ``empirical[site]`` is the :class:`EmpiricalMarginal` of each site;
    ``support()`` the values it takes (``[num_traces, *site_shape]`` per site).
    """

    def __init__(self, trace_posterior: Any, sites: str | Sequence[str] | None = None, validate_args: bool | None = None) -> None:
        if not (hasattr(trace_posterior, "exec_traces") and hasattr(trace_posterior, "log_weights")):
            raise TypeError(f"Marginals expects a TracePosterior (exec_traces and log_weights); got {type(trace_posterior).__name__}")
        if isinstance(trace_posterior, TracePosterior):
            trace_posterior._require_run()
        if sites is None:
            sites = ["_RETURN"]
        elif isinstance(sites, str):
            sites = [sites]
        self.sites = list(sites)
        self._trace_posterior = trace_posterior
        self._marginals = OrderedDict((site, EmpiricalMarginal(trace_posterior, site, validate_args)) for site in self.sites)

    def support(self, flatten: bool = False) -> OrderedDict:
        """Each site's sample values: ``{site: tensor [num_traces, *site_shape]}`` (``flatten``
        is accepted for Pyro's signature; traces of all chains are always in one dim here)."""
        return OrderedDict((site, marginal.enumerate_support()) for site, marginal in self._marginals.items())

    @property
    def empirical(self) -> OrderedDict:
        """``{site: EmpiricalMarginal}``."""
        return self._marginals


class EmpiricalMarginal(Empirical):
    """The weighted empirical distribution of ``sites`` over the samples of a
    ``posterior`` (a :class:`TracePosterior` such as ``Importance`` after ``run``, or any object with
    ``exec_traces`` and ``log_weights``).

    ``sites``: a site name (default ``"_RETURN"``, the model's return value, as in
    Pyro), or a list of names whose values (all of one shape) are stacked: each sample
    is then ``[len(sites), *site_shape]``.
    """

    def __init__(self, trace_posterior: Any, sites: str | Sequence[str] | None = None, validate_args: bool | None = None) -> None:
        if sites is None:
            sites = "_RETURN"
        if isinstance(trace_posterior, TracePosterior):
            trace_posterior._require_run()
        log_weights = trace_posterior.log_weights
        if not isinstance(log_weights, torch.Tensor):
            log_weights = torch.stack([torch.as_tensor(w) for w in log_weights])
        if isinstance(sites, str):
            samples = self._values(trace_posterior, sites)
        elif isinstance(sites, (list, tuple)) and sites and all(isinstance(s, str) for s in sites):
            values = [self._values(trace_posterior, s) for s in sites]
            shapes = {s: tuple(v.shape[1:]) for s, v in zip(sites, values)}
            if len(set(shapes.values())) > 1:
                raise ValueError(f"EmpiricalMarginal: sites {list(sites)} have different shapes {shapes}; they cannot be stacked")
            samples = torch.stack(values, dim=1)
        else:
            raise TypeError(f"EmpiricalMarginal: sites must be a site name or a non-empty list of names; got {sites!r}")
        self.sites = sites
        super().__init__(samples, log_weights, validate_args=validate_args)

    @staticmethod
    def _values(posterior: Any, name: str) -> torch.Tensor:
        if hasattr(posterior, "site_values"):
            return posterior.site_values(name)
        values = []
        for i, tr in enumerate(posterior.exec_traces):
            if name not in tr.nodes:
                raise KeyError(f"EmpiricalMarginal: site '{name}' is missing from trace {i}")
            values.append(torch.as_tensor(tr.nodes[name].value))
        return torch.stack(values)
