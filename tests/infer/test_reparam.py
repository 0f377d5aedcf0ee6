"""poutine.reparam and the reparameterizers: exact densities, SVI, NUTS, Predictive, errors."""

from __future__ import annotations

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from ember.infer.reparam import (
    AutoReparam,
    LocScaleReparam,
    MinimalReparam,
    ProjectedNormalReparam,
    SoftmaxReparam,
    StudentTReparam,
    TransformReparam,
)

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentred(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        eta = pyro.sample("theta_decentered", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def _log_joint(model, values, *args):
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(*args)
    tr.compute_log_prob()
    return tr.log_prob_sum(), tr


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_loc_scale_density_is_pushforward(c):
    """log p(x_dec) of the reparameterized model = log p(theta) + (1 - c) log tau per school, with
    theta = mu + tau**(1 - c) (x_dec - c mu)."""
    mu, tau = torch.tensor(1.3), torch.tensor(2.5)
    x = torch.linspace(-1.0, 2.0, 8)
    model = poutine.reparam(eight_schools, config={"theta": LocScaleReparam(c)})
    name = "theta" if c == 1.0 else "theta_decentered"
    lj, tr = _log_joint(model, {"mu": mu, "tau": tau, name: x}, Y8, SIGMA8)
    theta = mu + tau ** (1 - c) * (x - c * mu) if c != 1.0 else x
    assert torch.allclose(tr.nodes["theta"]["value"], theta)
    expected = (
        dist.Normal(0.0, 5.0).log_prob(mu)
        + dist.HalfCauchy(5.0).log_prob(tau)
        + dist.Normal(mu, tau).log_prob(theta).sum()
        + 8 * (1 - c) * math.log(2.5)
        + dist.Normal(theta, SIGMA8).log_prob(Y8).sum()
    )
    assert torch.allclose(lj, expected, atol=1e-4)
    if c != 1.0:
        site = tr.nodes["theta"]
        assert site["is_observed"] and site["infer"]["_deterministic"]
        assert tr.nodes["theta_decentered"]["cond_indep_stack"][0].name == "schools"


def test_loc_scale_non_centred_equals_hand_written():
    mu, tau, x = torch.tensor(0.4), torch.tensor(3.0), torch.randn(8)
    a, _ = _log_joint(poutine.reparam(eight_schools, config={"theta": LocScaleReparam(0.0)}), {"mu": mu, "tau": tau, "theta_decentered": x}, Y8, SIGMA8)
    b, _ = _log_joint(eight_schools_noncentred, {"mu": mu, "tau": tau, "theta_decentered": x}, Y8, SIGMA8)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("c", [0.0, 0.6])
def test_loc_scale_observed_keeps_likelihood(c):
    def model(y):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("n", 3):
            pyro.sample("y", dist.StudentT(4.0, 0.5, s), obs=y)

    y = torch.tensor([0.1, -2.0, 3.0])
    s = torch.tensor(1.7)
    a, _ = _log_joint(model, {"s": s}, y)
    b, tr = _log_joint(poutine.reparam(model, config={"y": LocScaleReparam(c)}), {"s": s}, y)
    assert torch.allclose(a, b, atol=1e-5)
    assert tr.nodes["y_decentered"]["is_observed"]


def test_transform_reparam_latent_and_observed():
    def model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        td = dist.TransformedDistribution(dist.Normal(loc, 0.5), [torch.distributions.ExpTransform()])
        z = pyro.sample("z", td)
        with pyro.plate("n", 2):
            pyro.sample("y", dist.TransformedDistribution(dist.Normal(z, 1.0), [torch.distributions.AffineTransform(1.0, 3.0)]), obs=y)

    y = torch.tensor([0.5, 2.0])
    loc, x = torch.tensor(0.2), torch.tensor(-0.3)
    rmodel = poutine.reparam(model, config={"z": TransformReparam(), "y": TransformReparam()})
    lj, tr = _log_joint(rmodel, {"loc": loc, "z_base": x}, y)
    z = x.exp()
    assert torch.allclose(tr.nodes["z"]["value"], z)
    # the reparameterized latent is x (no Jacobian); the observation keeps its own density
    expected = dist.Normal(0.0, 1.0).log_prob(loc) + dist.Normal(loc, 0.5).log_prob(x) + dist.Normal(1.0 + 3.0 * z, 3.0).log_prob(y).sum()
    assert torch.allclose(lj, expected, atol=1e-5)


def test_predictive_returns_original_sites():
    model = poutine.reparam(eight_schools, config={"theta": LocScaleReparam(0.0)})
    samples = {"mu": torch.zeros(5), "tau": torch.ones(5) * 2, "theta_decentered": torch.ones(5, 8)}
    out = Predictive(model, posterior_samples=samples, return_sites=["theta", "obs"])(Y8, SIGMA8)
    assert torch.allclose(out["theta"], torch.full((5, 8), 2.0))
    assert out["obs"].shape == (5, 8)


def test_learnable_centring_trains_under_svi():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = poutine.reparam(eight_schools, config={"theta": LocScaleReparam(centered=None)})

    def guide(y, sigma):
        pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(0.0)), 1.0))
        pyro.sample("tau", dist.LogNormal(pyro.param("tau_loc", torch.tensor(1.0)), 0.5))
        with pyro.plate("schools", 8):
            pyro.sample("theta_decentered", dist.Normal(pyro.param("x_loc", torch.zeros(8)), 1.0))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(Y8, SIGMA8)
    c0 = pyro.param("theta_centered").detach().clone()
    assert torch.allclose(c0, torch.tensor(0.5), atol=0.05)
    for _ in range(50):
        svi.step(Y8, SIGMA8)
    c1 = pyro.param("theta_centered").detach()
    assert c1.shape == () and not torch.allclose(c0, c1) and 0.0 <= float(c1) <= 1.0


def test_studentt_reparam_is_a_scale_mixture():
    def model():
        pyro.sample("x", dist.StudentT(3.0, 1.0, 2.0))

    g, x = torch.tensor(0.7), torch.tensor(0.4)
    lj, tr = _log_joint(poutine.reparam(model, config={"x": StudentTReparam()}), {"x_gamma": g, "x": x})
    expected = dist.Gamma(1.5, 1.5).log_prob(g) + dist.Normal(1.0, 2.0 / g.sqrt()).log_prob(x)
    assert torch.allclose(lj, expected)


def test_softmax_reparam():
    logits = torch.tensor([0.1, -0.5, 1.0])

    def model():
        return pyro.sample("p", dist.RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits))

    g = torch.tensor([0.3, -0.2, 0.1])
    lj, tr = _log_joint(poutine.reparam(model, config={"p": SoftmaxReparam()}), {"p_gumbel": g})
    assert torch.allclose(tr.nodes["p"]["value"], torch.softmax((logits - logits.logsumexp(-1) + g) / 0.5, -1), atol=1e-6)
    assert torch.allclose(lj, dist.Gumbel(0.0, 1.0).log_prob(g).sum())


def test_projected_normal_reparam():
    def model():
        return pyro.sample("u", dist.ProjectedNormal(torch.tensor([1.0, 0.0, 0.0])))

    tr = poutine.trace(MinimalReparam()(model)).get_trace()
    u = tr.nodes["u"]["value"]
    assert "u_normal" in tr.nodes and torch.allclose(u.norm(), torch.tensor(1.0))
    assert isinstance(MinimalReparam().configure({"fn": dist.ProjectedNormal(torch.ones(3)), "is_observed": False}), ProjectedNormalReparam)


def test_auto_reparam_chooses():
    strategy = AutoReparam()
    tr = poutine.trace(strategy(eight_schools)).get_trace(Y8, SIGMA8)
    assert isinstance(strategy.config["theta"], LocScaleReparam) and strategy.config["theta"].centered is None
    assert isinstance(strategy.config["mu"], LocScaleReparam)
    assert strategy.config["tau"] is None  # HalfCauchy: |x| is not bijective
    assert strategy.config["obs"] is None  # observed
    assert "theta_decentered" in tr.nodes and "obs_decentered" not in tr.nodes


def test_auto_reparam_under_an_autoguide():
    """AutoNormal's first run (init values: loc 0, scale 1) must not make the strategy skip theta."""
    from ember.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    model = AutoReparam()(eight_schools)
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO(num_particles=2, vectorize_particles=True))
    svi.step(Y8, SIGMA8)
    out = Predictive(model, guide=guide, num_samples=5, parallel=True)(Y8, SIGMA8)
    assert out["theta_decentered"].shape == (5, 8) and out["theta"].shape == (5, 8)
    assert "theta_centered" in pyro.get_param_store()


def test_bad_config_names_no_site():
    with pytest.raises(ValueError, match=r"names site\(s\) \['thetaa'\] that the model did not sample.*'theta'"):
        poutine.reparam(eight_schools, config={"thetaa": LocScaleReparam(0.0)})(Y8, SIGMA8)


def test_bad_unsupported_distribution():
    def model():
        pyro.sample("g", dist.Gamma(2.0, 1.0))

    with pytest.raises(ValueError, match=r"LocScaleReparam at site 'g': Gamma is not a location-scale family"):
        poutine.reparam(model, config={"g": LocScaleReparam(0.0)})()
    with pytest.raises(ValueError, match=r"TransformReparam at site 'g'.*TransformedDistribution.*Gamma"):
        poutine.reparam(model, config={"g": TransformReparam()})()


def test_bad_config_value():
    with pytest.raises(TypeError, match=r"config\['theta'\].*not a reparameterizer"):
        poutine.reparam(eight_schools, config={"theta": 0.0})


def _nuts(model, seed, num_samples=1000, warmup=500):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model, target_accept_prob=0.8), num_samples=num_samples, warmup_steps=warmup, num_chains=2, disable_progbar=True)
    mcmc.run(Y8, SIGMA8)
    return mcmc


@pytest.mark.slow
def test_eight_schools_non_centring_under_nuts():
    """Centred: divergences. LocScaleReparam(0) on theta: almost none, compiled potential, and mu,
    log tau agree with the hand-written non-centred model within Monte-Carlo error."""
    torch.set_num_threads(1)
    centred = _nuts(eight_schools, 0)
    reparamed = _nuts(poutine.reparam(eight_schools, config={"theta": LocScaleReparam(0.0)}), 1)
    hand = _nuts(eight_schools_noncentred, 2)
    assert centred.num_divergences >= 4
    assert reparamed.num_divergences <= 2
    assert all(s.startswith("compiled") for s in reparamed.compile_status), reparamed.compile_status
    a, b = reparamed.get_samples(), hand.get_samples()
    for name, f in (("mu", lambda v: v), ("tau", torch.log)):
        va, vb = f(a[name]), f(b[name])
        se = math.sqrt(va.var() / 300 + vb.var() / 300)  # effective sizes well below the 2000 draws
        assert abs(va.mean() - vb.mean()) < 4 * se, (name, va.mean(), vb.mean(), se)


def test_neutra_density_is_the_flow_pushforward():
    """log joint of neutra.reparam(model) at e = log p(T(e) mapped to the sites) + log |det dT/de|
    + log |det d biject/du| (by hand from the guide's flow), and transform_sample gives the sites."""
    from ember.infer.autoguide import AutoIAFNormal
    from ember.infer.reparam import NeuTraReparam

    pyro.clear_param_store()

    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.HalfNormal(1.0))
        with pyro.plate("n", 2):
            pyro.sample("x", dist.Normal(a, s), obs=torch.tensor([0.3, -0.4]))

    pyro.set_rng_seed(0)
    guide = AutoIAFNormal(model, hidden_dim=[6])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    neutra = NeuTraReparam(guide)
    rmodel = neutra.reparam(model)
    e = torch.tensor([0.4, -0.7])
    name = f"_{guide._pyro_name}_shared_latent"
    tr = poutine.trace(poutine.condition(rmodel, data={name: e})).get_trace()
    tr.compute_log_prob()
    with torch.no_grad():
        post = guide.get_posterior()
        x = e
        ldj = 0.0
        for t in post.transforms:
            y = t(x)
            ldj = ldj + t.log_abs_det_jacobian(x, y).sum()
            x = y
        a, s = x[0], x[1].exp()
        want = (dist.Normal(0.0, 1.0).log_prob(a) + dist.HalfNormal(1.0).log_prob(s) + x[1]
                + dist.Normal(a, s).log_prob(torch.tensor([0.3, -0.4])).sum() + ldj)
    assert torch.allclose(tr.log_prob_sum().detach(), want, atol=1e-4)
    assert torch.allclose(tr.nodes["s"]["value"].detach(), s, atol=1e-6)
    out = neutra.transform_sample(e[None])
    assert torch.allclose(out["a"][0], a, atol=1e-6) and torch.allclose(out["s"][0], s, atol=1e-6)
    with pytest.raises(TypeError, match="AutoContinuous"):
        NeuTraReparam(lambda: None)
