"""``Predictive``: draws from the prior or posterior predictive distribution of a model.

``Predictive(model, num_samples=N)`` samples the prior predictive;
``Predictive(model, posterior_samples)`` runs the model once per posterior sample with
the latent sites fixed to it; ``Predictive(model, guide=guide, num_samples=N)`` draws
the latents from the guide first. Each call returns a dict site name -> tensor
``[N, *site_shape]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from ember.infer.importance import LogWeightsMixin, _unvectorize
from ember.infer.util import guess_max_plate_nesting, in_plate, plate_log_prob_sum
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.messenger import Messenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_deterministic, is_factor, is_observed
from ember.util import check_kwargs

__all__ = ["Predictive", "WeighedPredictive", "WeighedPredictiveResults"]

_SAMPLE_PLATE = "_num_predictive_samples"


class _PredictMessenger(Messenger):
    """Fix the sites named in ``samples`` to the given values (as latent sites with a
    known value) and, with ``resample_observed``, draw every observed site afresh from
    its distribution instead of returning the observation. Deterministic and factor
    sites are left alone (they are recomputed by the model)."""

    def __init__(self, fn: Callable | None, samples: Mapping[str, torch.Tensor], resample_observed: bool) -> None:
        super().__init__(fn)
        self.samples = samples
        self.resample_observed = resample_observed
        self.obs_batch_ndim: dict[str, int] = {}  # resampled observations: their own distribution's batch dims

    def _pyro_sample(self, msg: Message) -> None:
        fn = msg.fn
        if is_deterministic(msg) or is_factor(msg):
            return
        value = self.samples.get(msg.name)
        if value is not None:
            msg.value = value
            msg.is_observed = False
            msg.done = True
            return
        if self.resample_observed and msg.is_observed:
            obs = msg.value
            batch_shape = getattr(fn, "batch_shape", None)
            if batch_shape is not None:
                self.obs_batch_ndim[msg.name] = len(batch_shape)
            if isinstance(obs, torch.Tensor) and batch_shape is not None:
                # draw with the observation's shape (an observation may broadcast a
                # scalar distribution over data: sample("y", Normal(mu, 1), obs=data))
                obs_batch = obs.shape[: obs.dim() - len(fn.event_shape)]
                try:
                    shape = torch.broadcast_shapes(batch_shape, obs_batch)
                except RuntimeError:
                    shape = batch_shape
                if shape != batch_shape:
                    msg.fn = fn.expand(shape)
            msg.value = None
            msg.is_observed = False
            msg.done = False
            msg.infer = dict(msg.infer, was_observed=True)


def _check_samples(posterior_samples: Any, num_samples: int | None) -> tuple[dict, int | None]:
    if not isinstance(posterior_samples, Mapping):
        hint = " (a guide goes in guide=...)" if callable(posterior_samples) else ""
        raise TypeError(f"Predictive: posterior_samples must be a dict site name -> tensor [num_samples, ...]; got {type(posterior_samples).__name__}{hint}")
    samples = {}
    sizes = {}
    for name, value in posterior_samples.items():
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"Predictive: posterior_samples['{name}'] must be a tensor; got {type(value).__name__}") from None
        if value.dim() == 0:
            raise ValueError(f"Predictive: posterior_samples['{name}'] is a scalar; it needs a leading dim of one entry per sample")
        samples[name] = value
        sizes[name] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Predictive: the posterior samples disagree on the number of samples (their leading dims): {sizes}")
    if sizes:
        n = next(iter(sizes.values()))
        if num_samples is not None and num_samples != n:
            raise ValueError(
                f"Predictive: num_samples={num_samples} but the posterior samples hold {n} samples (leading dims {sizes}); "
                f"leave num_samples out, or slice the samples"
            )
        num_samples = n
    return samples, num_samples


def _strip_leading_ones(shape: torch.Size, ndim: int) -> torch.Size:
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape


def _plate_nesting(trace: Trace) -> int:
    """Pyro's ``max_plate_nesting`` guess: the deepest vectorized plate of the sample sites."""
    dims = [f.dim for site in trace.nodes.values() if site.type == "sample" for f in site.cond_indep_stack if f.dim is not None]
    return -min(dims) if dims else 0


def _pyro_shape(site: Message, nesting: int, batch_ndim: int | None = None) -> tuple | None:
    """The shape of one sample of ``site`` in Predictive's output, as Pyro gives it: the value's
    shape, left-padded with ones up to ``nesting`` batch dims of the site's distribution
    (``b ~ Normal(0, 1)`` outside a plate, with one plate in the model: ``(1,)``)."""
    value = site.value
    if not isinstance(value, torch.Tensor):
        return None
    if batch_ndim is None:
        batch_ndim = len(getattr(site.fn, "batch_shape", value.shape))
    return (1,) * max(0, nesting - batch_ndim) + tuple(value.shape)


def _pad(value: Any, shape: tuple | None, n: int) -> Any:
    """``value`` ``[n, *site_shape]`` reshaped to Pyro's ``[n, 1, ..., *site_shape]`` (left as it is
    when its per-sample shape is not the trial run's, e.g. under random control flow)."""
    if shape is None or not isinstance(value, torch.Tensor) or value.shape[0] != n or value[0].numel() != math.prod(shape):
        return value
    return value.reshape((n,) + shape)


def _predict(
    model: Callable,
    samples: dict,
    n: int,
    return_sites: Any,
    parallel: bool,
    args: tuple,
    kwargs: dict,
    resample_observed: bool = True,
    return_trace: bool = False,
    latent_only: bool = False,
) -> Any:
    """The core of Predictive for one program (model or guide); see Predictive."""
    # one plain run, with the latents from the prior: the sites and their shapes in one sample
    trial_messenger = _PredictMessenger(model, {}, resample_observed)
    trial = TraceMessenger(trial_messenger).get_trace(*args, **kwargs)
    nodes = trial.nodes
    per_sample = {}
    for name, value in samples.items():
        site = nodes.get(name)
        shape = value.shape[1:]
        if site is not None and site.type == "sample" and isinstance(site.value, torch.Tensor):
            expected = site.value.shape
            shape = _strip_leading_ones(shape, len(expected))  # also accept Pyro's [N, 1, ..., *shape]
            if shape != expected:
                raise ValueError(
                    f"Predictive: posterior_samples['{name}'] has shape {tuple(value.shape)}, i.e. {tuple(value.shape[1:])} per "
                    f"sample, but the model's site '{name}' has shape {tuple(expected)} ({type(site.fn).__name__} with batch_shape "
                    f"{tuple(site.fn.batch_shape)}, event_shape {tuple(site.fn.event_shape)})"
                )
        per_sample[name] = value.reshape((n,) + tuple(shape))

    def sample_site(name: str, site: Message) -> bool:
        return site.type == "sample" and name != _SAMPLE_PLATE

    if return_sites is None:
        # every sample site (those in the posterior samples too), factors aside
        selected = [k for k, s in nodes.items() if sample_site(k, s) and not is_factor(s) and not (latent_only and is_observed(s))]
    elif return_sites:
        selected = list(return_sites)
        unknown = [k for k in selected if k != "_RETURN" and not (k in nodes and sample_site(k, nodes[k]))]
        if unknown:
            known = [k for k, s in nodes.items() if sample_site(k, s)]
            raise ValueError(f"Predictive: return_sites {unknown} are not sample sites of the model; its sample sites are {known}")
    else:
        # Pyro's default: every sample site not given in the posterior samples
        # (deterministic sites included), factors aside
        selected = [k for k, s in nodes.items() if sample_site(k, s) and not is_factor(s) and k not in samples]
    shapes = {k: (nodes[k].value.shape if isinstance(nodes[k].value, torch.Tensor) else None) for k in selected}
    plate_nesting = _plate_nesting(trial)
    obs_ndim = trial_messenger.obs_batch_ndim  # an observation drawn afresh: shaped as Pyro shapes the data
    padded = {k: _pyro_shape(nodes[k], plate_nesting, obs_ndim.get(k)) for k in selected if k != "_RETURN" and k in nodes}

    if not parallel and not return_trace:
        collected: dict = {k: [] for k in selected}
        for i in range(n):
            sample_i = {k: v[i] for k, v in per_sample.items()}
            tr = TraceMessenger(_PredictMessenger(model, sample_i, resample_observed)).get_trace(*args, **kwargs)
            for k in selected:
                if k not in tr.nodes:
                    raise ValueError(f"Predictive: site '{k}' is missing from run {i} of the model (random control flow?); leave it out of return_sites")
                collected[k].append(tr.nodes[k].value)
        out = {}
        for k, values in collected.items():
            if all(isinstance(v, torch.Tensor) for v in values):
                try:
                    out[k] = _pad(torch.stack(values), padded.get(k), n)
                except RuntimeError:
                    raise ValueError(
                        f"Predictive: site '{k}' has different shapes in different runs: {sorted({tuple(v.shape) for v in values})}"
                    ) from None
            else:
                out[k] = values
        return out

    nesting = guess_max_plate_nesting(trial)
    vectorized = {}
    for name, value in per_sample.items():
        site = nodes.get(name)
        shape = value.shape[1:]
        event_dim = len(getattr(site.fn, "event_shape", ())) if site is not None and site.type == "sample" else 0
        pad = max(0, nesting - (len(shape) - event_dim))
        vectorized[name] = value.reshape((n,) + (1,) * pad + tuple(shape))

    vectorized_model = in_plate(_PredictMessenger(model, vectorized, resample_observed), _SAMPLE_PLATE, n, -nesting - 1)
    try:
        tr = TraceMessenger(vectorized_model).get_trace(*args, **kwargs)
    except Exception as e:
        note = (
            f"{e}\n(Predictive with parallel=True runs all {n} samples at once in a plate at dim {-nesting - 1}; "
            f"models whose control flow or shapes depend on sampled values need parallel=False)"
        )
        try:
            new = type(e)(note)
        except Exception:
            raise e from None
        raise new from e
    if return_trace:
        return tr
    out = {}
    for k in selected:
        value = tr.nodes[k].value if k in tr.nodes else None
        if k == "_RETURN" and not isinstance(value, torch.Tensor):
            out[k] = value
            continue
        if value is None:
            raise ValueError(f"Predictive: site '{k}' is missing from the vectorized run of the model; use parallel=False")
        out[k] = _pad(_unvectorize(value, shapes[k], n, k), padded.get(k), n)
    return out


class Predictive(torch.nn.Module):
    """Samples of a model's sites under its prior or posterior predictive distribution.

    :param model: the model. Its observed sites (``obs=`` or ``condition``) are drawn
        afresh from their distributions, so the returned values of observation sites
        are predictive draws (with the observation's shape), not copies of the data.
        (Pyro keeps observations fixed and needs ``obs=None`` for that.)
    :param posterior_samples: dict site name -> tensor ``[N, *site_shape]`` (for
        example ``MCMC.get_samples()``); the model runs with those sites fixed to each
        sample in turn. Pyro's shape ``[N, 1, ..., 1, *site_shape]`` is accepted too. All
        leading dims must agree; they give ``num_samples``.
    :param guide: draw the latent sites from this guide (run afresh for each sample)
        instead; not together with ``posterior_samples``.
    :param num_samples: ``N``; required without posterior samples, and must agree with
        them when both are given.
    :param return_sites: the sites to return. ``()`` (default): every sample site not in
        ``posterior_samples`` (observations, latents not given, deterministic sites);
        with a guide, every sample site of the model (the guide's latents included).
        ``None``: every sample site, the posterior samples included. A list of names:
        those (``"_RETURN"`` gives the model's return value). Factor sites are only
        returned when named.
    :param parallel: run all ``N`` samples at once inside a plate of size ``N`` at dim
        ``-max_plate_nesting - 1`` (``max_plate_nesting`` read from one trial run); the
        posterior samples are reshaped to ``[N, 1, ..., 1, *site_shape]`` to broadcast
        into it. ``False``: a Python loop. Both give the same distribution; the loop also
        works for models whose control flow depends on sampled values.

    ``predictive(*args, **kwargs)`` passes the arguments to the model (and guide) and
    returns a dict site name -> tensor of Pyro's shape ``[N, 1, ..., 1, *site_shape]``: one
    singleton dim for each of the model's plate dims that the site's distribution lacks (a
    global ``b ~ Normal(0, 1)`` in a model with one plate gives ``[N, 1]``; a site inside every
    plate gives ``[N, *site_shape]``); a list for a non-tensor ``_RETURN`` in the loop. It runs under ``torch.no_grad()``, hidden from handlers
    outside.
    """

    def __init__(
        self,
        model: Callable,
        posterior_samples: Mapping[str, torch.Tensor] | None = None,
        guide: Callable | None = None,
        num_samples: int | None = None,
        return_sites: Any = (),
        parallel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        batch_ndims = kwargs.pop("batch_ndims", 1)
        if batch_ndims != 1:
            raise ValueError(
                f"Predictive: batch_ndims={batch_ndims!r} is not supported; give samples with one leading dim "
                f"(mcmc.get_samples(), not group_by_chain=True)"
            )
        check_kwargs("Predictive", kwargs, valid=("model", "posterior_samples", "guide", "num_samples", "return_sites", "parallel", "batch_ndims"))
        if not callable(model):
            raise TypeError(f"Predictive: model must be callable; got {type(model).__name__}")
        if guide is not None and not callable(guide):
            raise TypeError(f"Predictive: guide must be callable; got {type(guide).__name__}")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1):
            raise ValueError(f"Predictive: num_samples must be a positive integer; got {num_samples!r}")
        samples, num_samples = _check_samples({} if posterior_samples is None else posterior_samples, num_samples)
        if guide is not None and samples:
            raise ValueError("Predictive: give posterior_samples or guide, not both")
        if num_samples is None:
            raise ValueError("Predictive: give num_samples (for the prior predictive or with a guide), or posterior_samples")
        if isinstance(return_sites, str):
            return_sites = (return_sites,)
        if return_sites is not None:
            if not isinstance(return_sites, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in return_sites):
                raise TypeError(f"Predictive: return_sites must be None or a list of site names; got {return_sites!r}")
            return_sites = tuple(return_sites)
        self.model = model
        self.guide = guide
        self.posterior_samples = samples
        self.num_samples = int(num_samples)
        self.return_sites = return_sites
        self.parallel = bool(parallel)

    def _posterior_samples(self, args: tuple, kwargs: dict) -> dict:
        if self.guide is None:
            return self.posterior_samples
        # the guide's latent sites, [N, *shape] each
        return _predict(self.guide, {}, self.num_samples, None, self.parallel, args, kwargs, resample_observed=False, latent_only=True)

    def forward(self, *args: Any, **kwargs: Any) -> dict:
        """A dict site name -> tensor ``[num_samples, *site_shape]``."""
        with torch.no_grad(), BlockMessenger():
            samples = self._posterior_samples(args, kwargs)
            return_sites = self.return_sites
            if self.guide is not None and not return_sites:
                return_sites = None
            return _predict(self.model, samples, self.num_samples, return_sites, self.parallel, args, kwargs)

    def get_samples(self, *args: Any, **kwargs: Any) -> dict:
        """Same as calling the object (Pyro's older name)."""
        return self.forward(*args, **kwargs)

    def get_vectorized_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """One trace of the model vectorized over all ``num_samples`` samples (a plate of
        that size at dim ``-max_plate_nesting - 1``), with the posterior samples (or
        the guide's draws) fixed; its values have the sample dim there."""
        with torch.no_grad(), BlockMessenger():
            samples = self._posterior_samples(args, kwargs)
            return _predict(self.model, samples, self.num_samples, (), True, args, kwargs, return_trace=True)


# ---- WeighedPredictive (Pyro 1.9) ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WeighedPredictiveResults(LogWeightsMixin):
    """What :class:`WeighedPredictive` returns: ``samples`` (a dict site name -> tensor
    ``[N, ...]`` as :class:`Predictive` gives, or from ``.call`` a tuple of those tensors sorted
    by site name), and three tensors of shape ``[N]``: ``log_weights`` ``=
    model_log_prob - guide_log_prob``, ``guide_log_prob`` ``log q(z_n)`` and ``model_log_prob``
    ``log p(x_obs, z_n)`` (of ``model_guide``, observations included); and, from
    :class:`~ember.infer.importance.LogWeightsMixin`, ``get_log_normalizer``,
    ``get_normalized_weights`` and ``get_ESS``."""

    samples: dict | tuple
    log_weights: torch.Tensor
    guide_log_prob: torch.Tensor
    model_log_prob: torch.Tensor

    def clone(self) -> WeighedPredictiveResults:
        """A copy with every tensor cloned."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                out[f.name] = {k: v.clone() for k, v in value.items()}
            elif isinstance(value, tuple):
                out[f.name] = tuple(v.clone() for v in value)
            else:
                out[f.name] = value.clone()
        return type(self)(**out)


def _log_prob_per_sample(fn: Callable, samples: dict, n: int, parallel: bool, args: tuple, kwargs: dict) -> torch.Tensor:
    """``[n]``: the log-density of ``fn``'s trace (every sample site, observations included, with
    its scale and mask) with the sites in ``samples`` fixed to sample ``i``; the sites not given
    are drawn afresh."""
    if parallel:
        tr = _predict(fn, samples, n, (), True, args, kwargs, resample_observed=False, return_trace=True)
        return plate_log_prob_sum(tr, _SAMPLE_PLATE)
    out = []
    for i in range(n):
        sample_i = {k: v[i] for k, v in samples.items()}
        tr = TraceMessenger(_PredictMessenger(fn, sample_i, False)).get_trace(*args, **kwargs)
        out.append(torch.as_tensor(tr.log_prob_sum()))
    return torch.stack(out)


class WeighedPredictive(Predictive):
    """:class:`Predictive` with a guide, whose draws also carry importance log-weights
    ``log p(x_obs, z) - log q(z)`` (Pyro 1.9's ``WeighedPredictive``).

    Same arguments as :class:`Predictive`; a ``guide`` is required. Calling it,
    ``wp(*args, model_guide=None, **kwargs)``, draws ``N`` latent samples ``z_n`` from the guide,
    returns the model's samples as ``Predictive(model, guide=guide)`` does (with every site by
    default; observations drawn afresh, Ember's Predictive rule) and the weights, each ``[N]``:
    ``guide_log_prob[n] = log q(z_n)`` (every guide site), ``model_log_prob[n] = log p(x_obs,
    z_n)`` from ``model_guide`` (the model the guide was fitted to, observations fixed; default
    the model itself) and ``log_weights = model_log_prob - guide_log_prob``, in a
    :class:`WeighedPredictiveResults` (with ``get_log_normalizer``, ``get_normalized_weights``,
    ``get_ESS``). ``call`` returns the samples as a tuple sorted by site name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.guide is None:
            raise ValueError("WeighedPredictive: a guide is required (guide=...): the weights are log p - log q of its draws")

    def forward(self, *args: Any, **kwargs: Any) -> WeighedPredictiveResults:  # type: ignore[override]
        """A :class:`WeighedPredictiveResults`: samples ``{site: [N, ...]}`` and three ``[N]`` tensors."""
        model_guide = kwargs.pop("model_guide", None)
        if model_guide is None:
            model_guide = self.model
        elif not callable(model_guide):
            raise TypeError(f"WeighedPredictive: model_guide must be callable; got {type(model_guide).__name__}")
        n = self.num_samples
        with torch.no_grad(), BlockMessenger():
            # every sample site of the guide (auxiliary ones too), so that its replay gives log q
            guide_samples = _predict(self.guide, {}, n, None, self.parallel, args, kwargs, resample_observed=False, latent_only=True)
            guide_log_prob = _log_prob_per_sample(self.guide, guide_samples, n, self.parallel, args, kwargs)
            model_log_prob = _log_prob_per_sample(model_guide, guide_samples, n, self.parallel, args, kwargs)
            return_sites = self.return_sites or None
            samples = _predict(self.model, guide_samples, n, return_sites, self.parallel, args, kwargs)
        return WeighedPredictiveResults(
            samples=samples,
            log_weights=model_log_prob - guide_log_prob,
            guide_log_prob=guide_log_prob,
            model_log_prob=model_log_prob,
        )

    def call(self, *args: Any, **kwargs: Any) -> WeighedPredictiveResults:
        """As calling the object, with ``samples`` a tuple of the tensors sorted by site name."""
        result = self.forward(*args, **kwargs)
        return WeighedPredictiveResults(
            samples=tuple(v for _, v in sorted(result.samples.items())),
            log_weights=result.log_weights,
            guide_log_prob=result.guide_log_prob,
            model_log_prob=result.model_log_prob,
        )
