"""CSIS: a guide trained on the model's own draws proposes well for real data (a conjugate model)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import EmpiricalMarginal
from ember.infer.csis import CSIS


def model(prior_mean, observations={"x1": 0.0, "x2": 0.0}):  # noqa: B006 (Pyro's CSIS convention)
    z = pyro.sample("z", dist.Normal(prior_mean, 5**0.5))
    pyro.sample("x1", dist.Normal(z, 2**0.5), obs=observations["x1"])
    pyro.sample("x2", dist.Normal(z, 2**0.5), obs=observations["x2"])


def guide(prior_mean, observations={"x1": 0.0, "x2": 0.0}):  # noqa: B006
    x1, x2 = torch.as_tensor(observations["x1"]), torch.as_tensor(observations["x2"])
    w = pyro.param("w", torch.zeros(3))
    log_s = pyro.param("log_s", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(w[0] * x1 + w[1] * x2 + w[2], log_s.exp()))


@pytest.mark.slow
def test_csis_learns_the_amortized_posterior():
    """The exact posterior is N((prior_mean / 5 + (x1 + x2) / 2) / 1.2, 1 / 1.2): the guide's
    weights approach (5/12, 5/12, 1/6 * prior_mean) and its scale 1 / sqrt(1.2); importance
    sampling with it then has a near-perfect effective sample size."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pm = torch.tensor(1.0)
    csis = CSIS(model, guide, pyro.optim.Adam({"lr": 0.05}), num_inference_samples=200, training_batch_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matched pair: no model/guide warnings
        before = csis.validation_loss(pm)
        for _ in range(250):
            csis.step(pm)
    after = csis.validation_loss(pm)
    assert after < before - 1.0
    assert torch.allclose(pyro.param("w").detach(), torch.tensor([5 / 12, 5 / 12, 1 / 6]), atol=0.1)
    assert pyro.param("log_s").exp().item() == pytest.approx(1 / math.sqrt(1.2), abs=0.1)
    obs = {"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)}
    post = csis.run(pm, observations=obs)
    assert post.get_ESS() > 150
    assert EmpiricalMarginal(post, "z").mean.item() == pytest.approx((0.2 + 8.5) / 1.2, abs=0.2)


def test_csis_loss_by_hand():
    """The guide's loss on a fixed batch of joint draws is -mean log q(z | x1, x2) at those draws,
    and one step moves the guide's parameters only."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    pm = torch.tensor(1.0)
    csis = CSIS(model, guide, pyro.optim.Adam({"lr": 0.1}), validation_batch_size=7)
    csis.set_validation_batch(pm)
    guide(pm)  # creates w = 0, log_s = 0
    want = 0.0
    for tr in csis.validation_batch:
        z, x1, x2 = (tr.nodes[k]["value"] for k in ("z", "x1", "x2"))
        assert not torch.equal(x1, torch.tensor(0.0))  # drawn, not the default observation
        want -= torch.distributions.Normal(0.0, 1.0).log_prob(z).item() / 7
    assert csis.validation_loss(pm) == pytest.approx(want, abs=1e-5)
    csis.step(pm)
    assert not torch.equal(pyro.param("w").detach(), torch.zeros(3))


def test_csis_bad_input():
    with pytest.raises(ValueError, match="training_batch_size must be a positive integer"):
        CSIS(model, guide, pyro.optim.Adam({"lr": 0.1}), training_batch_size=0)

    def no_obs(observations=None):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="the model observes no site"):
        CSIS(no_obs, no_obs, pyro.optim.Adam({"lr": 0.1})).step()
