"""Initialisation strategies on an improper prior (no draws): Pyro's fallbacks."""

from __future__ import annotations

import pytest
import torch

import ember.distributions as dist
from ember.distributions import constraints
from ember.infer.initialization import init_to_feasible, init_to_median, init_to_sample, init_to_uniform
from ember.runtime import Message


def _site():
    fn = dist.ImproperUniform(constraints.positive, torch.Size([2]), torch.Size([3]))
    return Message("sample", "x", fn)


def test_feasible_and_uniform_need_no_draw():
    torch.testing.assert_close(init_to_feasible(_site()), torch.ones(2, 3))
    u = init_to_uniform(radius=1.0)(_site())
    assert u.shape == (2, 3) and bool(((u > torch.exp(torch.tensor(-1.0))) & (u < torch.exp(torch.tensor(1.0)))).all())


def test_median_falls_back_to_feasible_and_sample_to_its_fallback():
    torch.testing.assert_close(init_to_median(_site()), torch.ones(2, 3))
    torch.testing.assert_close(init_to_median(fallback=init_to_uniform(radius=0.0))(_site()), torch.ones(2, 3))
    with pytest.raises(NotImplementedError, match="cannot be sampled"):
        init_to_sample(_site())
    torch.testing.assert_close(init_to_sample(fallback=init_to_feasible)(_site()), torch.ones(2, 3))
