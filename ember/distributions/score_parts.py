"""Pyro's module path for :class:`ScoreParts` (``pyro.distributions.score_parts``): the
``(log_prob, score_function, entropy_term)`` a site's ``score_parts`` holds, each a tensor of the
site's batch shape (or a number where a term is absent)."""

from __future__ import annotations

from ember.runtime import ScoreParts

__all__ = ["ScoreParts"]
