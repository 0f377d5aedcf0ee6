"""Importance sampling: ``Importance`` (a weighted set of model traces), ``Empirical``
and ``EmpiricalMarginal`` (the weighted samples of chosen sites as a distribution).

Each sample runs the proposal (the guide, or the model's prior) and replays the model
against it; its log-weight is the model's log joint density (observations included,
plate subsampling scaled) minus the guide's log density of what it sampled::

    log w_i = log p(x, z_i) - log q(z_i),    z_i ~ q

so ``logsumexp(log w) - log N`` estimates the log evidence ``log p(x)`` and the
normalized weights turn the samples into an estimate of the posterior.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ember.distributions.empirical import Empirical
from ember.infer.abstract_infer import EmpiricalMarginal, TracePosterior
from ember.infer.elbo import check_model_guide_match, describe_nonfinite, get_importance_trace
from ember.infer.util import guess_max_plate_nesting, in_plate
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_latent, is_observed, is_validation_enabled
from ember.util import check_kwargs

__all__ = ["Importance", "LogWeightsMixin", "Empirical", "EmpiricalMarginal", "psis_diagnostic", "vectorized_importance_weights"]

_SAMPLE_PLATE = "_importance_samples"


# ----------------------------------------------------------------------------------------
# helpers shared with predictive.py
def _unvectorize(value: Any, shape: Sequence[int], n: int, name: str) -> torch.Tensor:
    """Turn the value of site ``name`` from a run vectorized over ``n`` samples (a plate
    left of the site's own dims) into shape ``[n, *shape]``, where ``shape`` is the
    site's shape in one unvectorized run. A value without the sample dim (an
    observation, a constant) is the same in every sample and is expanded."""
    target = torch.Size((n,)) + torch.Size(shape)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"site '{name}': its value is a {type(value).__name__}, not a tensor")
    if value.shape == target:
        return value
    k = value.dim() - len(shape)
    v = value
    if k > 0:
        big = [d for d in value.shape[:k] if d != 1]
        if len(big) > 1 or (big and big[0] != n):
            raise ValueError(
                f"site '{name}': cannot read {n} samples of shape {tuple(shape)} from the vectorized value of shape {tuple(value.shape)}"
            )
        v = value.reshape((big[0] if big else 1,) + tuple(value.shape[k:]))
    try:
        return v.expand(target)
    except RuntimeError:
        raise ValueError(
            f"site '{name}': cannot read {n} samples of shape {tuple(shape)} from the vectorized value of shape {tuple(value.shape)}"
        ) from None


class _NotVectorizable(Exception):
    """The vectorized run gave log-densities without the sample dim leftmost."""


def _per_sample_log_density(trace: Trace, n: int, nesting: int) -> torch.Tensor | None:
    """Sum of every sample site's (scaled, masked) log-density in a trace vectorized over
    ``n`` samples at dim ``-nesting-1``: a tensor [n] (None if no site has one)."""
    total = None
    for name, site in trace.nodes.items():
        if site.type != "sample" or site.log_prob is None:
            continue
        lp = site.log_prob
        if not isinstance(lp, torch.Tensor):
            lp = torch.as_tensor(lp)
        if lp.dim() != nesting + 1 or lp.shape[0] not in (n, 1):
            raise _NotVectorizable(
                f"site '{name}' has a log_prob of shape {tuple(lp.shape)}; a run vectorized over {n} samples with "
                f"max_plate_nesting={nesting} needs {nesting + 1} dims with the samples (size {n}) leftmost"
            )
        lp = lp.reshape(lp.shape[0], -1).sum(-1)
        total = lp if total is None else total + lp
    return total


def _hide_observed(msg: Message) -> bool:
    return is_observed(msg)


def _index_trace(vec_trace: Trace, i: int, n: int, shapes: dict, nesting: int) -> Trace:
    """Sample ``i`` of the latent values of a vectorized trace, as a trace to replay."""
    tr = Trace()
    for name, site in vec_trace.nodes.items():
        if site.type == "subsample" and name != _SAMPLE_PLATE:
            tr.nodes[name] = site  # replay gives the plates the same indices
            continue
        if site.type != "sample":
            continue
        if site.is_observed:
            continue
        shape = shapes.get(name)
        if shape is None:  # not in the plain run: keep the dims right of the sample dim
            event_dim = len(getattr(site.fn, "event_shape", ()))
            shape = site.value.shape[max(0, site.value.dim() - event_dim - nesting) :]
        new = site.copy()
        new.value = _unvectorize(site.value, shape, n, name)[i]
        tr.nodes[name] = new
    return tr


# ----------------------------------------------------------------------------------------
class LogWeightsMixin:
    """Pyro's ``LogWeightsMixin``: what a set of ``N`` importance log-weights gives, for a class
    with ``log_weights`` (a list of ``N`` scalar tensors, or a tensor ``[N]``)."""

    def _log_weight_tensor(self) -> torch.Tensor:
        lw = self.log_weights  # type: ignore[attr-defined]
        return lw if isinstance(lw, torch.Tensor) else torch.stack(list(lw))

    def get_log_normalizer(self) -> torch.Tensor:
        """The log evidence estimate ``logsumexp(log_weights) - log N``: a scalar tensor."""
        lw = self._log_weight_tensor()
        return torch.logsumexp(lw, 0) - math.log(lw.shape[0])

    def get_normalized_weights(self, log_scale: bool = False) -> torch.Tensor:
        """The weights normalized to sum to one (their logs with ``log_scale``): ``[N]``."""
        lw = self._log_weight_tensor()
        log_w_norm = lw - torch.logsumexp(lw, 0)
        return log_w_norm if log_scale else log_w_norm.exp()

    def get_ESS(self) -> torch.Tensor:
        """The effective sample size ``1 / sum(w_i^2)`` of the normalized weights: a scalar
        tensor between 1 and ``N``."""
        return torch.exp(-torch.logsumexp(2 * self.get_normalized_weights(log_scale=True), 0))


class Importance(LogWeightsMixin, TracePosterior):
    """Importance sampling from ``guide`` (the proposal) for ``model``.

    :param model: the model, conditioned on its data (``obs=`` or ``condition``).
    :param guide: the proposal; it must sample every latent site of the model. ``None``
        proposes from the prior: the model itself with its observed sites hidden, so the
        log-weights are the log-likelihoods of the prior draws.
    :param num_samples: the number of samples ``N`` (>= 1).
    :param vectorize: ``True``: draw all samples at once, inside a plate of size ``N`` at
        dim ``-max_plate_nesting - 1`` wrapped around model and guide (as
        ``ELBO(vectorize_particles=True)`` does); ``False``: a Python loop of ``N``
        runs; ``None`` (default): try the vectorized run and fall back to the loop when
        it raises (a shape error, a Python ``if`` on a sampled value, ...) or when a
        site's log-density does not come out with exactly ``max_plate_nesting + 1``
        dims and the samples leftmost. After :meth:`run`, ``self.vectorized`` says
        which path ran and ``self.fallback_reason`` why the vectorized one was left.
        Control flow that depends on sampled values without raising under
        vectorization (e.g. ``if z.sum() > 0``) cannot be detected: use
        ``vectorize=False`` for such models.
    :param max_plate_nesting: the number of batch dims the model and guide use; guessed
        from one unvectorized run when None (every plate dim, and batch dims that no
        plate declares).

    A model without latent sites is fine: every weight is then ``log p(x)``, the
    exact log evidence.

    After ``run(*args, **kwargs)`` (which returns ``self``):

    * ``log_weights``: a list of ``N`` scalar tensors, as in Pyro (``torch.stack`` them);
    * ``exec_traces``: the ``N`` model traces (a list, or on the vectorized path a
      read-only sequence whose trace ``i`` is built on first access by replaying the
      model on sample ``i``'s values, with the parameters as they are at that time);
      :meth:`site_values` reads a site's values straight from the vectorized run;
    * :meth:`get_log_normalizer` / ``log_evidence``, :meth:`get_normalized_weights`,
      :meth:`get_ESS`; ``EmpiricalMarginal(importance, sites)`` or ``marginal(sites)`` for a
      site's posterior;
    * what every :class:`~ember.infer.abstract_infer.TracePosterior` has: ``chain_ids`` (all 0),
      ``num_chains`` (1), ``marginal``, ``information_criterion`` and calling it
      (``importance()``: one trace drawn in proportion to its weight).

    Everything runs under ``torch.no_grad()`` and hidden from handlers outside.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable | None = None,
        num_samples: int = 10,
        *,
        vectorize: bool | None = None,
        max_plate_nesting: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_kwargs("Importance", kwargs, valid=("model", "guide", "num_samples", "vectorize", "max_plate_nesting"))
        if num_samples is None:
            num_samples = 10
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"Importance: num_samples must be a positive integer; got {num_samples!r}")
        if vectorize not in (None, True, False):
            raise ValueError(f"Importance: vectorize must be None, True or False; got {vectorize!r}")
        if max_plate_nesting is not None and (isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int) or max_plate_nesting < 0):
            raise ValueError(f"Importance: max_plate_nesting must be a non-negative integer or None; got {max_plate_nesting!r}")
        if not callable(model):
            raise TypeError(f"Importance: model must be callable; got {type(model).__name__}")
        if guide is not None and not callable(guide):
            raise TypeError(f"Importance: guide must be callable or None; got {type(guide).__name__}")
        self.model = model
        self.num_chains = 1
        self.guide = guide if guide is not None else BlockMessenger(model, hide_fn=_hide_observed)
        self.num_samples = num_samples
        self.vectorize = vectorize
        self._max_plate_nesting_arg = max_plate_nesting
        self.max_plate_nesting = max_plate_nesting  # after a vectorized run: the value used
        self._reset()

    def _reset(self) -> None:
        self._log_w = torch.empty(0)  # the log-weights as one tensor [N]
        self.log_weights: list = []
        self.chain_ids: list = []
        self._idx_by_chain: list = [[]]
        self._categorical = None
        self.vectorized: bool | None = None
        self.fallback_reason: str | None = None
        self._exec_traces: list | None = None
        self._vec: tuple | None = None  # (model trace, guide trace, args, kwargs, nesting)
        self._shapes: dict = {}
        self._ran = False

    # ---- running -----------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Importance:
        """Draw ``num_samples`` weighted samples; the arguments go to model and guide."""
        self._reset()
        with torch.no_grad(), BlockMessenger():
            log_w = None
            if self.vectorize is not False:
                log_w = self._run_vectorized(args, kwargs)
            if log_w is None:
                log_w = self._run_sequential(args, kwargs)
        self._log_w = log_w
        self.log_weights = list(log_w.unbind(0))
        self.chain_ids = [0] * len(self.log_weights)
        self._idx_by_chain = [list(range(len(self.log_weights)))]
        self._categorical = torch.distributions.Categorical(logits=log_w)
        self._ran = True
        return self

    def _check(self, model_trace: Trace, guide_trace: Trace, first: bool) -> None:
        """Every model latent must be in the guide (else the weights are wrong); on the
        first sample also the general model/guide checks (plate sizes, event shapes,
        warnings about guide sites the model lacks)."""
        if not is_validation_enabled():
            return
        guide_latents = {n for n, s in guide_trace.nodes.items() if is_latent(s)}
        missing = [n for n, s in model_trace.nodes.items() if is_latent(s) and n not in guide_latents]
        if missing:
            raise ValueError(
                f"Importance: the guide does not sample the model's latent site(s) {missing}. The model would draw them "
                f"from its prior when replayed, and the weights would be wrong. Sample them in the guide, or pass guide=None "
                f"to propose from the prior. Guide sites: {sorted(guide_latents)}."
            )
        if first:
            check_model_guide_match(model_trace, guide_trace)

    def _raise_nonfinite(self, log_w: torch.Tensor, traces: list) -> None:
        n_nan = int(torch.isnan(log_w).sum())
        what = f"{n_nan} of the {len(log_w)} log-weights are NaN" if n_nan else None
        if what is None and bool(torch.isposinf(log_w).any()):
            what = f"{int(torch.isposinf(log_w).sum())} of the {len(log_w)} log-weights are +inf"
        if what is None:
            what = f"all {len(log_w)} log-weights are -inf (no sample has positive density under the model)"
        raise ValueError(f"Importance: {what}: {describe_nonfinite(traces)}.")

    @staticmethod
    def _bad_weights(log_w: torch.Tensor) -> bool:
        return bool(torch.isnan(log_w).any() or torch.isposinf(log_w).any() or torch.isneginf(log_w).all())

    def _run_vectorized(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        n = self.num_samples
        # one plain run: checks, the plate nesting, each site's shape in one sample
        model_trace, guide_trace = get_importance_trace(self.model, self.guide, args, kwargs, validate=False)
        self._check(model_trace, guide_trace, first=True)
        nesting = self._max_plate_nesting_arg
        if nesting is None:
            nesting = guess_max_plate_nesting(model_trace, guide_trace)
        self._shapes = {
            name: site.value.shape
            for tr in (guide_trace, model_trace)
            for name, site in tr.nodes.items()
            if site.type in ("sample", "return") and isinstance(site.value, torch.Tensor)
        }
        dim = -nesting - 1

        try:
            vmodel, vguide = get_importance_trace(in_plate(self.model, _SAMPLE_PLATE, n, dim),
                                                  in_plate(self.guide, _SAMPLE_PLATE, n, dim), args, kwargs, validate=False)
            model_lp = _per_sample_log_density(vmodel, n, nesting)
            guide_lp = _per_sample_log_density(vguide, n, nesting)
        except Exception as e:  # any failure of the vectorized run means: run the loop
            if self.vectorize:
                raise
            self.fallback_reason = f"{type(e).__name__}: {e}"
            return None
        dtype = torch.get_default_dtype()
        log_w = torch.zeros(n, dtype=dtype)
        if model_lp is not None:
            log_w = log_w + model_lp
        if guide_lp is not None:
            log_w = log_w - guide_lp
        log_w = log_w.expand(n).clone()
        if self._bad_weights(log_w):
            self._raise_nonfinite(log_w, [("model", vmodel), ("guide", vguide)])
        self.vectorized = True
        self.max_plate_nesting = nesting
        self._vec = (vmodel, vguide, args, kwargs, nesting)
        return log_w

    def _run_sequential(self, args: tuple, kwargs: dict) -> torch.Tensor:
        traces, guides, log_w = [], [], []
        for i in range(self.num_samples):
            model_trace, guide_trace = get_importance_trace(self.model, self.guide, args, kwargs, validate=False)
            self._check(model_trace, guide_trace, first=(i == 0 and self.vectorized is None and self.fallback_reason is None))
            traces.append(model_trace)
            guides.append(guide_trace)
            log_w.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        dtype = functools.reduce(torch.promote_types, [w.dtype for w in log_w], torch.get_default_dtype())
        lw = torch.stack([w.to(dtype) for w in log_w])
        if self._bad_weights(lw):
            bad = ~torch.isfinite(lw)
            i = int(bad.nonzero()[0]) if bool(bad.any()) else 0
            self._raise_nonfinite(lw, [(f"model (sample {i})", traces[i]), (f"guide (sample {i})", guides[i])])
        self.vectorized = False
        self._exec_traces = traces
        return lw

    def _traces(self, *args: Any, **kwargs: Any) -> Any:
        """``(model trace, log-weight)`` of each sample of a new :meth:`run` (TracePosterior's protocol)."""
        self.run(*args, **kwargs)
        yield from zip(self.exec_traces, self.log_weights)

    # ---- results -----------------------------------------------------------------------
    def _require_run(self) -> None:
        if not self._ran:
            raise RuntimeError("Importance: call .run(*args, **kwargs) first")

    @property
    def exec_traces(self) -> Sequence[Trace]:
        """The ``N`` model traces (see the class docstring for the vectorized path)."""
        if not self._ran:
            return []
        if self._exec_traces is None:
            self._exec_traces = _ReplayedTraces(self)
        return self._exec_traces

    def site_values(self, name: str) -> torch.Tensor:
        """The values of site ``name`` (or ``"_RETURN"``) in every sample, stacked:
        a tensor ``[N, *site_shape]``."""
        self._require_run()
        n = self.num_samples
        if self._vec is not None and name in self._shapes:
            site = self._vec[0].nodes.get(name)
            if site is not None:
                try:
                    return _unvectorize(site.value, self._shapes[name], n, name)
                except (TypeError, ValueError):
                    pass
        values = []
        for i, tr in enumerate(self.exec_traces):
            if name not in tr.nodes:
                count = sum(name in t.nodes for t in self.exec_traces)
                raise KeyError(f"site '{name}' is missing from sample {i}: it appears in {count} of the {n} traces (random control flow?)")
            values.append(torch.as_tensor(tr.nodes[name].value))
        try:
            return torch.stack(values)
        except RuntimeError:
            shapes = sorted({tuple(v.shape) for v in values})
            raise ValueError(f"site '{name}' has different shapes in different samples: {shapes}; it cannot be stacked") from None

    def _log_weight_tensor(self) -> torch.Tensor:
        self._require_run()
        return self._log_w

    @property
    def log_evidence(self) -> torch.Tensor:
        """Same as :meth:`get_log_normalizer`."""
        return self.get_log_normalizer()


class _ReplayedTraces(Sequence):
    """The per-sample model traces of a vectorized run, each built on first access by
    replaying the model against that sample's latent values."""

    def __init__(self, imp: Importance) -> None:
        self._imp = imp
        self._cache: dict = {}

    def __len__(self) -> int:
        return self._imp.num_samples

    def __getitem__(self, i: Any) -> Any:
        n = len(self)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(n))]
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        tr = self._cache.get(i)
        if tr is None:
            imp = self._imp
            _, vguide, args, kwargs, nesting = imp._vec
            with torch.no_grad(), BlockMessenger():
                replay_trace = _index_trace(vguide, i, n, imp._shapes, nesting)
                tm = TraceMessenger(ReplayMessenger(imp.model, trace=replay_trace))
                tm(*args, **kwargs)
                tm.trace.compute_log_prob()
            tr = self._cache[i] = tm.trace
        return tr


def vectorized_importance_weights(model: Callable, guide: Callable, *args: Any, num_samples: int = 1,
                                  max_plate_nesting: int | None = None, normalized: bool = False,
                                  **kwargs: Any) -> tuple[torch.Tensor, Trace, Trace]:
    """``(log_weights, model_trace, guide_trace)`` of ``num_samples`` draws of ``guide`` made at once,
    in a plate left of the model's ``max_plate_nesting`` dims (required, as in Pyro): ``log_weights``
    is ``[num_samples]`` (a scalar when ``num_samples == 1``), ``log p(x, z_i) - log q(z_i)``, or its
    softmax's log with ``normalized``. The model and guide must have static structure."""
    if max_plate_nesting is None:
        raise ValueError("vectorized_importance_weights: pass max_plate_nesting= (the number of nested plates of model and guide)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"vectorized_importance_weights: num_samples must be a positive integer; got {num_samples!r}")
    dim = -max_plate_nesting - 1
    name = "num_particles_vectorized"
    model_trace, guide_trace = get_importance_trace(in_plate(model, name, num_samples, dim), in_plate(guide, name, num_samples, dim),
                                                    args, kwargs, max_plate_nesting=max_plate_nesting + 1)
    if num_samples == 1:
        log_w = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    else:
        zero = torch.zeros(num_samples)
        model_lp = _per_sample_log_density(model_trace, num_samples, max_plate_nesting)
        guide_lp = _per_sample_log_density(guide_trace, num_samples, max_plate_nesting)
        log_w = (zero if model_lp is None else model_lp) - (zero if guide_lp is None else guide_lp)
    if normalized:
        log_w = log_w - torch.logsumexp(log_w.reshape(-1), 0)
    return log_w, model_trace, guide_trace


def psis_diagnostic(model: Callable, guide: Callable, *args: Any, num_particles: int = 1000,
                    max_simultaneous_particles: int | None = None, max_plate_nesting: int = 7, **kwargs: Any) -> float:
    """The Pareto tail index ``k`` of the importance weights ``p(x, z) / q(z)`` of ``num_particles``
    guide draws (Yao et al. 2018, "Yes, but did it work?"): below 0.5 the guide fits the posterior
    well, up to 0.7 usably, above 0.7 poorly. The largest ``min(0.2 N, 3 sqrt(N))`` weights are
    fitted by a generalized Pareto distribution (``ember.ops.stats.fit_generalized_pareto``);
    fewer than 10 of them above ``1e-15`` of the largest give ``inf`` with a warning. The draws run
    ``max_simultaneous_particles`` at a time (default all), vectorized: static structure needed."""
    import warnings

    from ember.ops.stats import fit_generalized_pareto

    chunk = num_particles if max_simultaneous_particles is None else max_simultaneous_particles
    if num_particles % chunk != 0:
        raise ValueError(f"psis_diagnostic: num_particles={num_particles} must be divisible by max_simultaneous_particles={chunk}")
    with torch.no_grad():
        log_w = torch.cat([vectorized_importance_weights(model, guide, *args, num_samples=chunk, max_plate_nesting=max_plate_nesting,
                                                         **kwargs)[0].reshape(-1) for _ in range(num_particles // chunk)])
    log_w = (log_w - log_w.max()).sort().values
    cutoff_index = -int(math.ceil(min(0.2 * num_particles, 3.0 * math.sqrt(num_particles)))) - 1
    lw_cutoff = max(math.log(1.0e-15), float(log_w[cutoff_index]))
    tail = log_w[log_w > lw_cutoff]
    if len(tail) < 10:
        warnings.warn(f"psis_diagnostic: only {len(tail)} tail weights (10 needed); increase num_particles", UserWarning, stacklevel=2)
        return float("inf")
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(lw_cutoff))
    return k
