"""Model criticism: ArviZ export of MCMC and SVI posteriors (with the pointwise log-likelihood that
``arviz.loo``/``arviz.waic``/``arviz.compare`` need) and the PSIS diagnostic of a fitted guide.

ArviZ is optional (``pip install arviz``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ember.infer.util import _draws, _run_at, log_likelihood, observed_sites

__all__ = ["inference_data", "to_arviz", "psis_diagnostic"]


def _arviz() -> Any:
    try:
        import arviz as az
    except ImportError:
        raise ImportError("ArviZ export needs the arviz package: pip install arviz (or pip install 'ember-ppl[arviz]')") from None
    return az


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _by_chain(flat: dict, chains: int) -> dict:
    """``{name: [C * D, ...]}`` -> ``{name: ndarray [C, D, ...]}`` (draws of chain c contiguous)."""
    return {k: _np(v).reshape((chains, v.shape[0] // chains) + tuple(v.shape[1:])) for k, v in flat.items()}


def inference_data(model: Callable, posterior_samples: dict, model_args: tuple = (), model_kwargs: dict | None = None, *,
                   num_chains: int = 1, sample_stats: dict | None = None, log_likelihood_group: bool = True,
                   posterior_predictive: bool = True, num_prior_samples: int = 0, coords: dict | None = None,
                   dims: dict | None = None) -> Any:
    """An ``arviz.InferenceData`` for ``model(*model_args, **model_kwargs)`` from posterior draws.

    :param posterior_samples: ``{latent site: tensor [C * D, ...]}``, the draws of chain ``c`` at
        ``[c * D, (c + 1) * D)`` (what ``MCMC.get_samples()`` returns).
    :param num_chains: ``C``.
    :param sample_stats: ``{name: array [C, D]}`` (MCMC's diverging, energy, ...).
    :param log_likelihood_group: fill ``log_likelihood`` (``{observed site: [C, D, *batch]}``, from
        :func:`ember.infer.util.log_likelihood`).
    :param posterior_predictive: fill ``posterior_predictive`` (each observed site drawn afresh
        under each posterior draw).
    :param num_prior_samples: with ``P > 0``, fill ``prior`` (latents) and ``prior_predictive``
        (observed sites) from ``P`` draws of the model's prior (one chain).
    Groups ``posterior`` and ``observed_data`` are always filled; ``coords``/``dims`` go to ArviZ.
    """
    from ember.infer.predictive import Predictive

    az = _arviz()
    kwargs = dict(model_kwargs or {})
    samples, n = _draws(posterior_samples, "to_arviz")
    if n % num_chains:
        raise ValueError(f"to_arviz: {n} draws do not split into num_chains={num_chains} chains of equal length")
    with torch.no_grad():
        first = _run_at(model, {k: v[0] for k, v in samples.items()}, tuple(model_args), kwargs, "to_arviz")
    obs_names = observed_sites(first)
    shapes = {k: site.value.shape for k, site in first.nodes.items() if site.type == "sample" and isinstance(site.value, torch.Tensor)}
    groups: dict[str, Any] = {"posterior": _by_chain(samples, num_chains)}
    groups["observed_data"] = {k: _np(first.nodes[k].value) for k in obs_names} or None
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    if log_likelihood_group and obs_names:
        try:
            ll = log_likelihood(model, samples, *model_args, parallel=True, **kwargs)
        except Exception:  # noqa: BLE001 - a model that cannot be vectorized: one run per draw
            ll = log_likelihood(model, samples, *model_args, **kwargs)
        groups["log_likelihood"] = _by_chain(ll, num_chains)
    if posterior_predictive and obs_names:
        try:
            pred = Predictive(model, posterior_samples=samples, return_sites=obs_names, parallel=True)(*model_args, **kwargs)
        except Exception:  # noqa: BLE001 - a model that cannot be vectorized: one run per draw
            pred = Predictive(model, posterior_samples=samples, return_sites=obs_names)(*model_args, **kwargs)
        groups["posterior_predictive"] = _by_chain(_site_shaped(pred, shapes), num_chains)
    if num_prior_samples:
        prior = Predictive(model, num_samples=num_prior_samples, return_sites=None)(*model_args, **kwargs)
        prior = _site_shaped({k: v for k, v in prior.items() if isinstance(v, torch.Tensor)}, shapes)
        groups["prior"] = _by_chain({k: v for k, v in prior.items() if k not in obs_names}, 1)
        groups["prior_predictive"] = _by_chain({k: v for k, v in prior.items() if k in obs_names}, 1) or None
    return az.from_dict(**groups, coords=coords, dims=dims)


def to_arviz(model: Callable, guide: Callable | None = None, posterior_samples: dict | None = None, *,
             num_samples: int = 1000, model_args: tuple = (), model_kwargs: dict | None = None, **kwargs: Any) -> Any:
    """An ``arviz.InferenceData`` of an SVI (or any) posterior: ``num_samples`` draws of ``guide``'s
    latents (one chain), or the given ``posterior_samples``; the other keywords as in
    :func:`inference_data` (``log_likelihood_group``, ``posterior_predictive``, ``num_prior_samples``,
    ``coords``, ``dims``). ``arviz.loo(to_arviz(model, guide, model_args=(x, y)))`` then works."""
    from ember.infer.predictive import Predictive

    if (guide is None) == (posterior_samples is None):
        raise ValueError("to_arviz: give a guide= (its draws are the posterior) or posterior_samples=, not both")
    margs, mkw = tuple(model_args), dict(model_kwargs or {})
    if guide is not None:
        with torch.no_grad():
            latents = _latent_shapes(model, guide, margs, mkw)
            draws = Predictive(model, guide=guide, num_samples=num_samples, return_sites=list(latents))(*margs, **mkw)
        posterior_samples = _site_shaped({k: v for k, v in draws.items() if isinstance(v, torch.Tensor)}, latents)
    return inference_data(model, posterior_samples, margs, mkw, **kwargs)


def _latent_shapes(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> dict[str, torch.Size]:
    """The model's latent sites and the shape of each one's value (one run of the guide and the
    model replayed)."""
    from ember.infer.elbo import get_importance_trace
    from ember.runtime import is_latent

    model_trace, _ = get_importance_trace(model, guide, args, kwargs, validate=False)
    return {k: s.value.shape for k, s in model_trace.nodes.items() if is_latent(s)}


def _site_shaped(draws: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """``draws`` (``[N, ...]``, as Predictive returns them: with Pyro's singleton dims for the plates
    a site is outside) as ``[N, *site shape]``, the layout ArviZ's groups take."""
    out = {}
    for k, v in draws.items():
        shape = shapes.get(k)
        out[k] = v.reshape((v.shape[0],) + tuple(shape)) if shape is not None and v[0].numel() == shape.numel() else v
    return out


def psis_diagnostic(model: Callable, guide: Callable, *args: Any, num_particles: int = 1000,
                    max_simultaneous_particles: int = 1000, max_plate_nesting: float = math.inf, **kwargs: Any) -> float:
    """The Pareto shape ``k`` of the importance weights ``p(x, z) / q(z)``, ``z ~ guide``
    (Yao et al. 2018): below 0.5 the guide is a good importance proposal, 0.5-0.7 usable, above
    0.7 importance estimates from it are unreliable. Draws ``num_particles`` particles, at most
    ``max_simultaneous_particles`` at a time (vectorized), and fits a generalized Pareto
    distribution to the largest ``min(num_particles / 5, 3 sqrt(num_particles))`` weights."""
    from ember.infer.renyi_elbo import RenyiELBO
    from ember.ops.stats import fit_generalized_pareto

    if not isinstance(num_particles, int) or num_particles < 10:
        raise ValueError(f"psis_diagnostic: num_particles must be an integer >= 10, got {num_particles!r}")
    chunks, left = [], num_particles
    with torch.no_grad():
        while left > 0:
            k = min(left, max_simultaneous_particles)
            elbo = RenyiELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=max_plate_nesting)
            chunks.append(elbo._all_log_weights(model, guide, args, kwargs)[0])
            left -= k
    log_w = torch.cat(chunks).double()
    m = int(min(0.2 * num_particles, 3 * math.sqrt(num_particles)))
    top = log_w.sort().values
    threshold, tail = top[-m - 1], top[-m:]
    excess = (tail - log_w.max()).exp() - (threshold - log_w.max()).exp()
    excess = excess[excess > 0]
    if excess.numel() < 2:
        return -math.inf  # the weights' tail is flat: no heavy tail to fit
    return fit_generalized_pareto(excess)[0]
