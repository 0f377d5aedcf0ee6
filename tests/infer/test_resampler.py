"""Resampler: a bank of broad guide draws resampled to follow a narrower model."""

from __future__ import annotations

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer.resampler import Resampler


def guide():
    pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("k", 2):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))


def model():
    pyro.sample("loc", dist.Normal(2.0, 1.0))
    with pyro.plate("k", 2):
        pyro.sample("scale", dist.LogNormal(0.0, 0.3))


def simulator():
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("k", 2):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", 3, dim=-2):
        pyro.sample("x", dist.Normal(loc, scale))


def test_resampled_draws_follow_the_model():
    pyro.set_rng_seed(0)
    r = Resampler(guide, simulator, num_guide_samples=20000)
    s = r.sample(model, 4000)
    assert s["loc"].shape == (4000,) and s["scale"].shape == (4000, 2) and s["x"].shape == (4000, 3, 2)
    assert s["loc"].mean().item() == pytest.approx(2.0, abs=0.1)
    assert s["loc"].std().item() == pytest.approx(1.0, abs=0.1)
    assert s["scale"].log().std().item() == pytest.approx(0.3, abs=0.05)
    # stable: the same model gives the same draws
    assert torch.equal(r.sample(model, 4000)["loc"], s["loc"])


def test_resampler_bad_input():
    with pytest.raises(ValueError, match="num_guide_samples must be a positive integer"):
        Resampler(guide, num_guide_samples=0)

    def impossible():
        pyro.sample("loc", dist.Uniform(100.0, 101.0))
        with pyro.plate("k", 2):
            pyro.sample("scale", dist.LogNormal(0.0, 0.3))

    r = Resampler(guide, num_guide_samples=100)
    with pytest.raises(ValueError, match="no guide sample has positive density"):
        pyro.distributions.enable_validation(False)
        try:
            r.sample(impossible, 10)
        finally:
            pyro.distributions.enable_validation(True)
