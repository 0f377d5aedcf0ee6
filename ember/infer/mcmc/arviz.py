"""Export MCMC draws to ArviZ (the optional ``arviz`` package: ``pip install arviz``)."""

from __future__ import annotations

from typing import Any

__all__ = ["to_inference_data"]


def to_inference_data(mcmc: Any, *, log_likelihood: bool = True, posterior_predictive: bool = True,
                      num_prior_samples: int = 0, coords: dict | None = None, dims: dict | None = None) -> Any:
    """An ``arviz.InferenceData`` of a finished run, with groups

    * ``posterior``: every saved latent site, dims ``(chain, draw, ...)``;
    * ``sample_stats``: ``diverging``, ``step_size``, ``tree_depth``, ``n_steps``,
      ``acceptance_rate``, ``energy``, ``lp`` (= minus the potential energy);
    * ``observed_data``: the model's observed sites;
    * ``log_likelihood`` (``log_likelihood=True``): ``log p(y_i | theta)`` per draw and datum for each
      observed site, so that ``arviz.loo``, ``arviz.waic`` and ``arviz.compare`` work;
    * ``posterior_predictive`` (``posterior_predictive=True``): each observed site drawn afresh
      under each posterior draw;
    * ``prior`` and ``prior_predictive`` (with ``num_prior_samples > 0``).

    The model runs once per draw for each of the two optional groups (see
    :func:`ember.infer.criticism.inference_data`)."""
    from ember.infer.criticism import inference_data

    samples = mcmc.get_samples()
    extra = mcmc.get_extra_fields(group_by_chain=True)
    sample_stats = {
        "diverging": extra["diverging"].astype(bool),
        "step_size": extra["step_size"],
        "tree_depth": extra["tree_depth"],
        "n_steps": extra["num_steps"],
        "acceptance_rate": extra["accept_prob"],
        "energy": extra["energy"],
        "lp": -extra["potential_energy"],
    }
    pot = mcmc._potential
    return inference_data(pot.model, samples, pot.args, pot.kwargs, num_chains=mcmc.num_chains, sample_stats=sample_stats,
                          log_likelihood_group=log_likelihood, posterior_predictive=posterior_predictive,
                          num_prior_samples=num_prior_samples, coords=coords, dims=dims)
