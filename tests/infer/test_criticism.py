"""Model criticism: the pointwise log-likelihood, ArviZ export (LOO/WAIC/compare) and PSIS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import MCMC, NUTS
from ember.infer.criticism import inference_data, psis_diagnostic, to_arviz
from ember.infer.util import log_likelihood
from ember.ops.stats import waic

az = pytest.importorskip("arviz")

torch.manual_seed(0)
X = torch.linspace(-2.0, 2.0, 25)
Y = 1.0 + 2.0 * X + 0.5 * torch.randn(25)


def linreg(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    s = pyro.sample("s", dist.HalfNormal(2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


def intercept_only(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    s = pyro.sample("s", dist.HalfNormal(2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(a, s), obs=y)


def _draws(n=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": 1.0 + 0.1 * torch.randn(n, generator=g),
        "b": 2.0 + 0.1 * torch.randn(n, generator=g),
        "s": 0.5 + 0.05 * torch.rand(n, generator=g),
    }


def _by_hand(d):
    return torch.distributions.Normal(d["a"][:, None] + d["b"][:, None] * X, d["s"][:, None]).log_prob(Y)


@pytest.mark.parametrize("parallel", [False, True])
def test_log_likelihood_matches_by_hand(parallel):
    d = _draws()
    ll = log_likelihood(linreg, d, X, Y, parallel=parallel)
    assert list(ll) == ["y"] and ll["y"].shape == (200, 25)
    assert torch.allclose(ll["y"], _by_hand(d), atol=1e-5)


def test_log_likelihood_parallel_with_event_dims_and_nested_plates():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("g", 3, dim=-2), pyro.plate("n", 4, dim=-1):
            pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

    y = torch.randn(3, 4, 2)
    d = {"mu": torch.randn(6, 2)}
    a, b = log_likelihood(model, d, y), log_likelihood(model, d, y, parallel=True)
    want = torch.distributions.Normal(d["mu"][:, None, None, :], 1.0).log_prob(y).sum(-1)
    assert a["y"].shape == b["y"].shape == (6, 3, 4)
    assert torch.allclose(a["y"], want, atol=1e-5) and torch.allclose(b["y"], want, atol=1e-5)


def test_log_likelihood_masks_and_ignores_deterministic_and_subsample_scale():
    mask = torch.arange(25) % 3 != 0

    def model(x, y):
        a = pyro.sample("a", dist.Normal(0.0, 10.0))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        s = pyro.sample("s", dist.HalfNormal(2.0))
        pyro.deterministic("mean", a + b * x)
        pyro.factor("penalty", -a**2)
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=3.0), pyro.poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(a + b * x, s), obs=y)

    d = _draws(20)
    ll = log_likelihood(model, d, X, Y)
    assert list(ll) == ["y"]
    assert torch.allclose(ll["y"], torch.where(mask, _by_hand(d), torch.zeros(())), atol=1e-5)


def test_waic_and_loo_agree_with_arviz_on_a_matrix_by_hand():
    """Ember's export gives arviz.loo/waic the same numbers as an InferenceData built by hand from
    the log-likelihood matrix computed with torch.distributions; Ember's own waic agrees too."""
    d = _draws(400)
    idata = inference_data(linreg, d, (X, Y), num_chains=2, posterior_predictive=False)
    ll_hand = _by_hand(d).numpy().reshape(2, 200, 25)
    ref = az.from_dict(posterior={k: v.numpy().reshape(2, 200) for k, v in d.items()}, log_likelihood={"y": ll_hand},
                       observed_data={"y": Y.numpy()})
    loo, loo_ref = az.loo(idata, pointwise=True), az.loo(ref, pointwise=True)
    assert loo["elpd_loo"] == pytest.approx(loo_ref["elpd_loo"], abs=1e-4)
    np.testing.assert_allclose(loo["loo_i"].values, loo_ref["loo_i"].values, atol=1e-4)
    np.testing.assert_allclose(loo["pareto_k"].values, loo_ref["pareto_k"].values, atol=1e-3)
    w = az.waic(idata)
    w_hand, p_hand = waic(torch.as_tensor(ll_hand.reshape(400, 25), dtype=torch.float64))
    # ArviZ's p_waic is the plain variance, ember.ops.stats.waic's (as Pyro's) the unbiased one
    assert w["p_waic"] * 400 / 399 == pytest.approx(float(p_hand), abs=1e-4)
    assert -2 * (w["elpd_waic"] + w["p_waic"] - float(p_hand)) == pytest.approx(float(w_hand), abs=1e-3)
    # plain importance-sampling LOO (no smoothing) by hand: close to PSIS-LOO here (light tails)
    ll = torch.as_tensor(ll_hand.reshape(400, 25), dtype=torch.float64)
    is_loo = (-(torch.logsumexp(-ll, 0) - math.log(400))).sum().item()
    assert loo["elpd_loo"] == pytest.approx(is_loo, abs=0.05)


@pytest.fixture(scope="module")
def two_fits():
    torch.set_num_threads(1)
    out = {}
    for name, model in (("linear", linreg), ("intercept_only", intercept_only)):
        pyro.set_rng_seed(0)
        mcmc = MCMC(NUTS(model), num_samples=200, warmup_steps=150, num_chains=2, disable_progbar=True)
        mcmc.run(X, Y)
        out[name] = mcmc
    return out


@pytest.mark.slow
def test_mcmc_to_arviz_groups(two_fits):
    idata = two_fits["linear"].to_arviz(num_prior_samples=30)
    assert set(idata.groups()) >= {"posterior", "posterior_predictive", "log_likelihood", "prior", "prior_predictive",
                                   "observed_data", "sample_stats"}
    assert idata.log_likelihood["y"].shape == (2, 200, 25)
    assert idata.posterior_predictive["y"].shape == (2, 200, 25)
    assert idata.prior["a"].shape == (1, 30)
    np.testing.assert_allclose(idata.observed_data["y"].values, Y.numpy())
    samples = two_fits["linear"].get_samples()
    np.testing.assert_allclose(idata.log_likelihood["y"].values.reshape(400, 25), _by_hand(samples).numpy(), atol=1e-4)
    assert idata.sample_stats["diverging"].shape == (2, 200)


@pytest.mark.slow
def test_compare_ranks_the_correct_model_first_mcmc(two_fits):
    cmp = az.compare({k: m.to_arviz(posterior_predictive=False) for k, m in two_fits.items()})
    assert cmp.index[0] == "linear"
    assert cmp.loc["intercept_only", "elpd_diff"] > 10


def test_compare_ranks_the_correct_model_first():
    """Draws near each model's posterior (no sampler): the linear model wins by far."""
    g = torch.Generator().manual_seed(2)
    sd = float((Y - Y.mean()).pow(2).mean().sqrt())
    wrong = {"a": Y.mean() + 0.3 * torch.randn(200, generator=g), "s": sd + 0.1 * torch.rand(200, generator=g)}
    idatas = {"linear": inference_data(linreg, _draws(200), (X, Y), posterior_predictive=False),
              "intercept_only": inference_data(intercept_only, wrong, (X, Y), posterior_predictive=False)}
    cmp = az.compare(idatas)
    assert list(cmp.index) == ["linear", "intercept_only"]
    assert cmp.loc["intercept_only", "elpd_diff"] > 10


def test_to_arviz_of_a_guide():
    pyro.clear_param_store()

    def guide(x, y):
        pyro.sample("a", dist.Normal(pyro.param("a_loc", torch.tensor(1.0)), 0.1))
        pyro.sample("b", dist.Normal(pyro.param("b_loc", torch.tensor(2.0)), 0.1))
        pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(-0.7)), 0.1))

    idata = to_arviz(linreg, guide, num_samples=100, model_args=(X, Y))
    assert idata.posterior["a"].shape == (1, 100) and idata.log_likelihood["y"].shape == (1, 100, 25)
    assert az.loo(idata)["elpd_loo"] < 0
    with pytest.raises(ValueError, match="not both"):
        to_arviz(linreg, guide, posterior_samples=_draws(), model_args=(X, Y))


def test_psis_diagnostic():
    """x ~ N(z, 1), z ~ N(0, 1), one datum x = 1: the posterior N(1/2, 1/2) as guide gives constant
    weights (k far below 0.5); a guide far too narrow gives heavy-tailed weights (k > 0.7)."""
    pyro.clear_param_store()

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))

    def guide(scale):
        pyro.sample("z", dist.Normal(0.5, scale))

    pyro.set_rng_seed(0)
    k_good = psis_diagnostic(model, lambda: guide(math.sqrt(0.5)), num_particles=2000)
    k_bad = psis_diagnostic(model, lambda: guide(0.1), num_particles=2000)
    assert k_good < 0.3 and k_bad > 0.7, (k_good, k_bad)


def test_log_likelihood_bad_input():
    def no_obs():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"log_likelihood: the model observes no site \(its sample sites are \['z'\]\)"):
        log_likelihood(no_obs, {"z": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"latent site 's' has no posterior draws"):
        log_likelihood(linreg, {"a": torch.zeros(3), "b": torch.zeros(3)}, X, Y)
    with pytest.raises(ValueError, match="same leading"):
        log_likelihood(linreg, {"a": torch.zeros(3), "b": torch.zeros(4), "s": torch.ones(3)}, X, Y)


