"""Export MCMC draws to ArviZ (the optional ``arviz`` package: ``pip install arviz``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_inference_data"]


def to_inference_data(mcmc: Any) -> Any:
    """An ``arviz.InferenceData`` with groups ``posterior`` (every latent site, dims
    ``(chain, draw, ...)``), ``sample_stats`` (``diverging``, ``step_size``, ``tree_depth``,
    ``n_steps``, ``acceptance_rate``, ``energy``, ``lp`` = minus the potential energy) and
    ``observed_data`` (the model's observed sites)."""
    try:
        import arviz as az
    except ImportError:
        raise ImportError("to_inference_data needs ArviZ: pip install arviz (or pip install 'ember-ppl[arviz]')") from None
    samples = mcmc.get_samples(group_by_chain=True)
    posterior = {k: v.detach().cpu().numpy() for k, v in samples.items()}
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
    observed = {k: np.asarray(v.detach().cpu().numpy()) for k, v in mcmc.observed.items()}
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, observed_data=observed or None)
