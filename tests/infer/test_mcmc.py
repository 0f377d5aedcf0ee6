"""HMC / NUTS: potentials, adaptation, posterior moments against closed forms, diagnostics,
the runner's API and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import HMC, MCMC, NUTS
from ember.infer.initialization import init_to_median, init_to_value
from ember.infer.mcmc import MCMCInitError, ModelPotential, effective_sample_size, gelman_rubin, split_gelman_rubin
from ember.infer.mcmc.adaptation import DualAveraging, Welford, adaptation_windows
from ember.infer.mcmc.diagnostics import autocorrelation, hpdi, summary

pytestmark = pytest.mark.usefixtures("one_thread")  # the root conftest seeds and clears the param store


def scale_model(guess):
    weight = pyro.sample("weight", dist.Normal(guess, 1.0))
    return pyro.sample("measurement", dist.Normal(weight, 0.75))


def conditioned_scale(guess):
    return pyro.condition(scale_model, data={"measurement": torch.tensor(9.5)})(guess)


# exact posterior of seed 003's scale model
POST_MEAN = (8.5 * 0.75**2 + 9.5 * 1.0) / (1 + 0.75**2)
POST_SD = math.sqrt(0.75**2 / (1 + 0.75**2))


# ---- adaptation pieces -------------------------------------------------------------------------------
def test_adaptation_windows_match_stan():
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation_windows(10) == []
    w = adaptation_windows(100)  # too short for 75 + 25 + 50: 15% / 75% / 10%
    assert w[0][0] == 15 and w[-1][1] == 90
    for (a, b), (c, _) in zip(w, w[1:]):
        assert b == c and b > a


def test_dual_averaging_finds_step_size_for_target():
    # acceptance exp(-eps) hits 0.8 at eps = -log(0.8)
    da = DualAveraging(target_accept=0.8)
    da.reset(1.0)
    eps = 1.0
    for _ in range(2000):
        eps = da.update(math.exp(-eps))
    assert da.final_step_size() == pytest.approx(-math.log(0.8), rel=0.05)


def test_welford_matches_numpy():
    x = torch.randn(500, 3, dtype=torch.float64) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.5]], dtype=torch.float64)
    w, wd = Welford(3), Welford(3, dense=True)
    for row in x:
        w.update(row)
        wd.update(row)
    n = 500
    cov = np.cov(x.numpy(), rowvar=False)
    shrink = 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(w.regularized(), n / (n + 5) * np.diag(cov) + shrink, rtol=1e-10)
    np.testing.assert_allclose(wd.regularized(), n / (n + 5) * cov + shrink * np.eye(3), rtol=1e-10)


# ---- the potential -------------------------------------------------------------------------------------
def test_potential_is_minus_log_joint_plus_jacobian():
    def model():
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("J", 3):
            th = pyro.sample("th", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(tau * th, 2.0).to_event(1), obs=torch.tensor([1.0, -2.0, 0.5]))

    mp = ModelPotential(model)
    z0, u0, g0 = mp.initial_point("median")
    assert mp.dim == 4 and [s.name for s in mp.sites] == ["tau", "th"]
    z = torch.tensor([0.3, -0.5, 1.0, 2.0])

    def hand(z):
        log_tau, th = z[0], z[1:]
        tau = log_tau.exp()
        lp = torch.distributions.HalfCauchy(5.0).log_prob(tau) + log_tau  # log|d exp/du| = u
        lp = lp + torch.distributions.Normal(0.0, 1.0).log_prob(th).sum()
        lp = lp + torch.distributions.Normal(tau * th, 2.0).log_prob(torch.tensor([1.0, -2.0, 0.5])).sum()
        return -lp

    zz = z.clone().requires_grad_(True)
    expected = hand(zz)
    (g_expected,) = torch.autograd.grad(expected, zz)
    u, g = mp.potential_and_grad(z)
    assert u == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(g, g_expected)
    vals = mp.constrain(z)
    assert vals["tau"].item() == pytest.approx(math.exp(0.3), rel=1e-6) and vals["th"].shape == (3,)
    torch.testing.assert_close(mp.unconstrain(vals), z)


def test_simplex_site_has_a_smaller_unconstrained_space():
    def model():
        p = pyro.sample("p", dist.Dirichlet(torch.ones(4)))
        pyro.sample("x", dist.Categorical(p), obs=torch.tensor(2))

    mp = ModelPotential(model)
    z, u, g = mp.initial_point("uniform")
    assert mp.dim == 3 and z.shape == (3,)
    v = mp.constrain(torch.zeros(5, 3))["p"]
    assert v.shape == (5, 4)
    torch.testing.assert_close(v.sum(-1), torch.ones(5))


def test_init_strategies_and_init_to_value():
    def model():
        a = pyro.sample("a", dist.Gamma(2.0, 1.0))
        pyro.sample("b", dist.Normal(a, 1.0))

    for name in ("median", "uniform", "sample", "mean"):
        mp = ModelPotential(model)
        z, u, g = mp.initial_point(name)
        assert torch.isfinite(z).all() and math.isfinite(u)
    mp = ModelPotential(model)
    z, _, _ = mp.initial_point(init_to_value(values={"a": torch.tensor(3.0), "b": torch.tensor(-1.0)}))
    torch.testing.assert_close(z, torch.tensor([math.log(3.0), -1.0]))
    # initial_params are unconstrained (Pyro's convention)
    mp = ModelPotential(model)
    z, _, _ = mp.initial_point("median", initial_params={"a": torch.tensor(0.5)})
    assert z[0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown init_strategy 'middle'"):
        NUTS(model, init_strategy="middle")
    with pytest.raises(ValueError, match=r"\['c'\], which are not latent sites"):
        ModelPotential(model).initial_point("median", initial_params={"c": torch.tensor(0.0)})


# ---- posterior moments against closed forms ----------------------------------------------------------
def test_nuts_scale_model_matches_exact_posterior():
    mcmc = MCMC(NUTS(conditioned_scale), num_samples=1500, warmup_steps=500, disable_progbar=True)
    mcmc.run(8.5)
    w = mcmc.get_samples()["weight"]
    assert w.shape == (1500,)
    ess = float(effective_sample_size(w[None]))
    assert ess > 300
    se = POST_SD / math.sqrt(ess)
    assert abs(w.mean().item() - POST_MEAN) < 4 * se + 0.01
    assert abs(w.std().item() - POST_SD) < 0.06
    assert mcmc.num_divergences == 0


def test_hmc_scale_model_matches_exact_posterior():
    mcmc = MCMC(HMC(conditioned_scale, trajectory_length=1.0), num_samples=1500, warmup_steps=300, disable_progbar=True)
    mcmc.run(8.5)
    w = mcmc.get_samples()["weight"]
    assert abs(w.mean().item() - POST_MEAN) < 0.06
    assert abs(w.std().item() - POST_SD) < 0.06
    extra = mcmc.get_extra_fields()
    assert 0.6 < extra["accept_prob"].mean() <= 1.0


def test_nuts_constrained_conjugate_posteriors():
    data = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    counts = torch.tensor([3.0, 5.0, 4.0, 6.0, 2.0])
    cats = torch.tensor([0, 1, 1, 2, 1, 1, 0, 1])

    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("n", len(data)):
            pyro.sample("x", dist.Bernoulli(p), obs=data)
        rate = pyro.sample("rate", dist.Gamma(3.0, 2.0))
        with pyro.plate("m", len(counts)):
            pyro.sample("c", dist.Poisson(rate), obs=counts)
        probs = pyro.sample("probs", dist.Dirichlet(torch.tensor([1.0, 2.0, 1.0])))
        with pyro.plate("k", len(cats)):
            pyro.sample("cat", dist.Categorical(probs), obs=cats)

    mcmc = MCMC(NUTS(model), num_samples=800, warmup_steps=300, disable_progbar=True)
    mcmc.run()
    s = mcmc.get_samples()
    # Beta(2 + 8, 2 + 2), Gamma(3 + 20, 2 + 5), Dirichlet(1 + 2, 2 + 5, 1 + 1)
    assert s["p"].mean().item() == pytest.approx(10 / 14, abs=0.02)
    assert s["p"].std().item() == pytest.approx(math.sqrt(10 * 4 / (14**2 * 15)), abs=0.015)
    assert s["rate"].mean().item() == pytest.approx(23 / 7, abs=0.1)
    torch.testing.assert_close(s["probs"].mean(0), torch.tensor([3.0, 7.0, 2.0]) / 12, atol=0.025, rtol=0)
    assert ((s["p"] > 0) & (s["p"] < 1)).all() and (s["rate"] > 0).all()


def test_dense_mass_matrix_learns_a_correlated_gaussian():
    cov = torch.tensor([[1.0, 0.95], [0.95, 1.0]]) * 4.0

    def model():
        pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), cov))

    kernel = NUTS(model, full_mass=True)
    mcmc = MCMC(kernel, num_samples=700, warmup_steps=400, disable_progbar=True)
    mcmc.run()
    x = mcmc.get_samples()["x"]
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.6, rtol=0.15)
    minv = mcmc.inverse_mass_matrices[0]
    assert minv.shape == (2, 2)
    torch.testing.assert_close(minv, cov, atol=0.8, rtol=0.25)
    # with the right metric the trajectories are short
    assert mcmc.get_extra_fields()["tree_depth"].mean() < 3.0


def test_multiple_chains_r_hat_and_shapes():
    y = torch.randn(20) + 1.5

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    mcmc = MCMC(NUTS(model), num_samples=300, warmup_steps=200, num_chains=3, disable_progbar=True)
    mcmc.run()
    grouped = mcmc.get_samples(group_by_chain=True)["loc"]
    assert grouped.shape == (3, 300)
    assert mcmc.get_samples()["loc"].shape == (900,)
    assert mcmc.get_samples(num_samples=50)["loc"].shape == (50,)
    diag = mcmc.diagnostics()
    assert float(diag["loc"]["r_hat"]) < 1.05
    assert set(diag["divergences"]) == {"chain 0", "chain 1", "chain 2"}
    post_var = 1 / (1 / 100 + 20)
    post_mean = post_var * y.sum().item()
    assert grouped.mean().item() == pytest.approx(post_mean, abs=0.05)
    assert mcmc.get_extra_fields(group_by_chain=True)["tree_depth"].shape == (3, 300)


def test_same_seed_same_draws_and_thinning():
    def run(thin):
        pyro.set_rng_seed(3)
        m = MCMC(NUTS(conditioned_scale), num_samples=40, warmup_steps=30, thinning=thin, disable_progbar=True)
        return m.run(8.5).get_samples()["weight"]

    a, b = run(1), run(1)
    torch.testing.assert_close(a, b)
    c = run(4)
    assert c.shape == (10,)
    torch.testing.assert_close(c, a[::4])


def test_potential_fn_interface():
    prec = torch.tensor([1.0, 4.0])

    def potential_fn(params):
        return 0.5 * (params["x"] ** 2 * prec).sum()

    mcmc = MCMC(NUTS(potential_fn=potential_fn), num_samples=800, warmup_steps=300,
                initial_params={"x": torch.zeros(2)}, disable_progbar=True)
    mcmc.run()
    x = mcmc.get_samples()["x"]
    torch.testing.assert_close(x.var(0), 1 / prec, atol=0.15, rtol=0.15)
    with pytest.raises(ValueError, match="initial_params"):
        MCMC(NUTS(potential_fn=potential_fn), num_samples=10, disable_progbar=True).run()


def test_summary_prints_table(capsys):
    mcmc = MCMC(NUTS(conditioned_scale), num_samples=100, warmup_steps=50, num_chains=2, disable_progbar=True)
    mcmc.run(8.5)
    mcmc.summary(prob=0.8)
    out = capsys.readouterr().out
    assert "weight" in out and "n_eff" in out and "r_hat" in out and "10.0%" in out and "Number of divergences" in out
    assert "MCMC(NUTS" in repr(mcmc)


# ---- diagnostics -----------------------------------------------------------------------------------------
def test_ess_of_iid_and_ar1_draws():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 2000))
    assert effective_sample_size(iid) == pytest.approx(8000, rel=0.15)
    phi = 0.8
    x = np.zeros((4, 4000))
    for c in range(4):
        e = rng.normal(size=4000)
        for t in range(1, 4000):
            x[c, t] = phi * x[c, t - 1] + e[t]
    expected = 16000 * (1 - phi) / (1 + phi)
    assert effective_sample_size(x) == pytest.approx(expected, rel=0.2)
    ac = autocorrelation(x[0], dim=0)
    assert ac[0] == 1.0 and ac[1] == pytest.approx(phi, abs=0.05)


def test_r_hat_detects_unmixed_chains():
    rng = np.random.default_rng(1)
    ok = rng.normal(size=(4, 1000))
    assert float(split_gelman_rubin(ok)) < 1.01
    assert float(gelman_rubin(ok)) < 1.01
    bad = ok + np.arange(4)[:, None] * 2.0
    assert float(split_gelman_rubin(bad)) > 1.5
    trend = ok + np.linspace(0, 5, 1000)  # each chain drifts: only the split version sees it
    assert float(split_gelman_rubin(trend)) > 1.2


def test_hpdi_and_summary_dict():
    x = torch.randn(20000)
    lo, hi = hpdi(x, 0.9)
    assert lo == pytest.approx(-1.645, abs=0.08) and hi == pytest.approx(1.645, abs=0.08)
    s = summary({"a": torch.randn(2, 500, 3)}, prob=0.9)
    assert set(s["a"]) == {"mean", "std", "median", "5.0%", "95.0%", "n_eff", "r_hat"}
    assert s["a"]["mean"].shape == (3,)


# ---- errors ------------------------------------------------------------------------------------------------
def test_discrete_latent_is_refused_naming_the_site():
    def model():
        z = pyro.sample("coin", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    with pytest.raises(ValueError, match="'coin' is discrete.*Bernoulli"):
        MCMC(NUTS(model), num_samples=10, disable_progbar=True).run()


def test_nan_log_density_at_init_names_the_site():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(float("nan")))

    with pyro.validation_enabled(False):
        with pytest.raises(MCMCInitError, match="not finite at site.*'y'"):
            MCMC(NUTS(model), num_samples=10, disable_progbar=True).run()


def test_bad_runner_arguments():
    k = NUTS(conditioned_scale)
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1, got 0"):
        MCMC(k, num_samples=10, num_chains=0)
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0, got -5"):
        MCMC(k, num_samples=10, warmup_steps=-5)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        MCMC(k, num_samples=-1)
    with pytest.raises(ValueError, match="max_tree_depth"):
        NUTS(conditioned_scale, max_tree_depth=0)
    with pytest.raises(ValueError, match="step_size"):
        HMC(conditioned_scale, step_size=-1.0)
    with pytest.raises(ValueError, match="exactly one of model= or potential_fn="):
        NUTS()
    with pytest.raises(TypeError, match="kernel must be"):
        MCMC(object(), num_samples=10)
    with pytest.raises(RuntimeError, match="call mcmc.run"):
        MCMC(k, num_samples=10).get_samples()


def test_subsampled_plate_and_no_latents_are_refused():
    def sub():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.zeros(10))

    with pytest.raises(ValueError, match="plate 'data' subsamples 10 of 100"):
        MCMC(NUTS(sub), num_samples=10, disable_progbar=True).run()

    def nolatent():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ValueError, match="no latent sample sites"):
        MCMC(NUTS(nolatent), num_samples=10, disable_progbar=True).run()


def test_to_arviz():
    az = pytest.importorskip("arviz")
    mcmc = MCMC(NUTS(conditioned_scale), num_samples=50, warmup_steps=20, num_chains=2, disable_progbar=True)
    mcmc.run(8.5)
    idata = mcmc.to_arviz()
    assert isinstance(idata, az.InferenceData)
    assert idata.posterior["weight"].shape == (2, 50)
    assert "diverging" in idata.sample_stats and "tree_depth" in idata.sample_stats
    assert np.asarray(idata.observed_data["measurement"]).reshape(-1).tolist() == [9.5]


def test_median_init_and_validation_restored():
    before = pyro.primitives._VALIDATION[0] if hasattr(pyro, "primitives") else None
    mcmc = MCMC(NUTS(conditioned_scale, init_strategy=init_to_median(num_samples=31)), num_samples=20, warmup_steps=10,
                disable_progbar=True)
    mcmc.run(8.5)
    if before is not None:
        assert pyro.primitives._VALIDATION[0] == before


def test_plate_indices_are_a_subsample_message():
    from ember.infer.mcmc.potential import _Substitute

    def model():
        with pyro.plate("data", 3) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0))
        return idx

    seen = []

    class Spy(pyro.poutine.Messenger):
        def _pyro_sample(self, msg):
            seen.append(msg.name)

        def _pyro_subsample(self, msg):
            seen.append(("subsample", msg.name))

    with _Substitute({"x": torch.zeros(3)}):
        idx = model()
    torch.testing.assert_close(idx, torch.arange(3))
    with Spy(), _Substitute({"x": torch.zeros(3)}):
        model()
    assert seen == [("subsample", "data"), "x"]  # the plate's indices: a message type of their own
    tr = pyro.poutine.trace(model).get_trace()
    assert "data" in tr.nodes


def test_more_bad_inputs_name_what_is_wrong():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"initial_params\['a'\] has shape \(3,\); the site's unconstrained value has shape \(2,\)"):
        ModelPotential(model).initial_point("median", initial_params={"a": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"the value for site 'a' has shape \(3,\), but the site's values have shape \(2,\)"):
        ModelPotential(model).initial_point(init_to_value(values={"a": torch.zeros(3)}))
    with pytest.raises(ValueError, match="unknown chain_method 'threads'"):
        MCMC(NUTS(model), num_samples=5, chain_method="threads")
    mcmc = MCMC(NUTS(model), num_samples=5, warmup_steps=5, disable_progbar=True).run()
    with pytest.raises(ValueError, match=r"num_samples must be in \[1, 5\], got 9"):
        mcmc.get_samples(num_samples=9)
    with pytest.raises(ValueError, match="hook_fn would run in the worker processes"):
        MCMC(NUTS(model), num_samples=5, num_chains=2, chain_method="parallel", hook_fn=print).run()
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1, got 0"):
        MCMC(NUTS(model), num_samples=5, num_threads=0)
