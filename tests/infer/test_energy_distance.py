"""EnergyDistance: the loss on the draws it made equals the energy-score formula by hand (the model
and guide record the values they were given), and SVI with it recovers a location in closed form."""

from __future__ import annotations

import time

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, EnergyDistance
from ember.ops.stats import crps_empirical, energy_score_empirical
from ember.optim import Adam

DATA = torch.tensor([0.3, -1.2, 2.0, 0.7])
MAT = torch.tensor([[0.1, 0.2], [-0.4, 1.0], [2.0, -1.0]])


def _models(captured: dict):
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
        with pyro.plate("n", 4):
            captured["y"] = pyro.sample("y", dist.Normal(loc, 1.0), obs=DATA)
        with pyro.plate("m", 3):
            captured["w"] = pyro.sample("w", dist.Normal(loc.unsqueeze(-1).expand(loc.shape + (2,)), 0.5).to_event(1), obs=MAT)
        pyro.deterministic("twice", 2 * loc)  # not an observation

    def guide():
        captured["loc"] = pyro.sample("loc", dist.Normal(pyro.param("l", torch.tensor(0.5)), 0.3))

    return model, guide


def _flat(captured: dict, n: int) -> torch.Tensor:  # [P, 4 + 6]: each particle's joint replicate
    return torch.cat([captured["y"].reshape(n, -1), captured["w"].reshape(n, -1)], -1)


@pytest.mark.parametrize("beta", [1.0, 0.6, 1.5])
def test_loss_is_the_energy_score_by_hand(beta):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    n = 5
    captured: dict = {}
    model, guide = _models(captured)
    loss = EnergyDistance(beta=beta, num_particles=n)(model, guide)
    x = _flat(captured, n).detach()
    assert x.shape == (n, 10)
    truth = torch.cat([DATA, MAT.reshape(-1)])
    to_data = (x - truth).norm(dim=-1).pow(beta).mean()
    i, j = torch.tril_indices(n, n, -1)
    spread = (x[i] - x[j]).norm(dim=-1).pow(beta).mean()  # the distinct pairs: unbiased
    assert loss.item() == pytest.approx((to_data - 0.5 * spread).item(), rel=1e-5)
    if beta == 1.0:  # energy_score_empirical averages over all n^2 pairs (zeros included)
        es = energy_score_empirical(x, truth)
        all_pairs = torch.cdist(x, x).sum() / n**2
        assert loss.item() == pytest.approx((es + 0.5 * all_pairs - 0.5 * spread).item(), rel=1e-5)


def test_one_scalar_observation_is_crps():
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    n = 6
    captured: dict = {}

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        captured["y"] = pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(0.4))

    def guide():
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    loss = EnergyDistance(num_particles=n)(model, guide).item()
    x = captured["y"].detach().reshape(n)
    # crps_empirical is the V-statistic: its spread is (n-1)/n of the unbiased one
    crps = crps_empirical(x, torch.tensor(0.4)).item()
    spread_v = (x[:, None] - x[None, :]).abs().sum().item() / n**2
    assert loss == pytest.approx(crps + 0.5 * spread_v - 0.5 * spread_v * n / (n - 1), rel=1e-5)


def test_prior_term_and_subsample_scale_and_mask():
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    n = 4
    captured: dict = {}
    keep = torch.tensor([True, False, True])

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
        captured["loc"] = loc
        with pyro.plate("n", 6, subsample=torch.tensor([0, 2, 3])), pyro.poutine.mask(mask=keep):
            captured["y"] = pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor([1.0, 5.0, -1.0]))

    def guide():
        pyro.sample("loc", dist.Normal(0.2, 0.5))

    loss = EnergyDistance(num_particles=n, prior_scale=0.3)(model, guide).item()
    y = captured["y"].detach().reshape(n, 3)[:, keep]  # masked out: the middle element
    truth = torch.tensor([1.0, -1.0])
    scale = 6 / 3  # the plate's subsample scale weights the squared terms
    to_data = (scale * (y - truth).pow(2).sum(-1)).sqrt().mean()
    i, j = torch.tril_indices(n, n, -1)
    spread = (scale * (y[i] - y[j]).pow(2).sum(-1)).sqrt().mean()
    log_prior = dist.Normal(0.0, 2.0).log_prob(captured["loc"].detach()).sum()  # summed over particles, as Pyro
    assert loss == pytest.approx((to_data - 0.5 * spread - 0.3 * log_prior).item(), rel=1e-5)


def test_svi_recovers_the_location():
    # data symmetric about 3: the energy score of N(loc 1, I) against it is least at loc = 3
    data = 3.0 + torch.tensor([-1.0, 1.0, -0.4, 0.4, 0.0])

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    def guide(data):
        pyro.sample("loc", dist.Normal(pyro.param("l", torch.tensor(0.0)), 0.1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    svi = SVI(model, guide, Adam({"lr": 0.05}), loss=EnergyDistance(num_particles=32))
    for _ in range(300):
        svi.step(data)
    assert time.perf_counter() - start < 5
    assert pyro.param("l").item() == pytest.approx(3.0, abs=0.15)
    assert isinstance(svi.evaluate_loss(data), float)


def test_bad_arguments_and_models_name_the_problem():
    with pytest.raises(ValueError, match="beta"):
        EnergyDistance(beta=2.0)
    with pytest.raises(ValueError, match="num_particles"):
        EnergyDistance(num_particles=1)
    with pytest.raises(ValueError, match="prior_scale"):
        EnergyDistance(prior_scale=-1.0)

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("k", dist.Poisson(loc.exp()), obs=torch.tensor(2.0))

    def guide():
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'k'"):
        EnergyDistance()(model, guide)

    def guide_discrete():
        pyro.sample("loc", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="'loc'"):
        EnergyDistance()(model, guide_discrete)

    def factor_model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.factor("f", -loc**2)

    with pytest.raises(ValueError, match="'f'"):
        EnergyDistance()(factor_model, guide)

    def no_obs():
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observations"):
        EnergyDistance()(no_obs, guide)
