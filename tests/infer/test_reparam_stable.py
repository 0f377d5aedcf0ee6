"""Reparameterizers for Stable sites (LatentStableReparam, SymmetricStableReparam, StableReparam)
and the strategies' rules for Stable: values against a hand-written Chambers-Mallows-Stuck
transform, marginals against Stable's own draws and closed forms (alpha = 2: Normal; alpha = 1,
beta = 0: Cauchy), the observed sites' scale mixtures against Stable.log_prob, Pyro's site names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer.reparam import (
    AutoReparam,
    LatentStableReparam,
    LocScaleReparam,
    MinimalReparam,
    StableReparam,
    SymmetricStableReparam,
)
from ember.infer.reparam.stable import _skew_shift

DT = torch.float64
N = 4000


def _cms_by_hand(a: float, b: float, u: np.ndarray, e: np.ndarray, coords: str) -> np.ndarray:
    """Weron's (1996) form of Chambers-Mallows-Stuck, alpha != 1, written out in numpy."""
    t = b * math.tan(math.pi * a / 2)
    B = math.atan(t) / a
    S = (1 + t * t) ** (1 / (2 * a))
    x = S * np.sin(a * (u + B)) / np.cos(u) ** (1 / a) * (np.cos(u - a * (u + B)) / e) ** ((1 - a) / a)
    return x - t if coords == "S0" else x


def _trace(model, config):
    return poutine.trace(poutine.reparam(model, config=config)).get_trace()


def _draws(reparam, a, b, scale=1.0, loc=0.0, coords="S0", n=N):
    """``n`` vectorized draws of a latent Stable site written by ``reparam`` (the site's value, or a
    draw of its new Normal for the scale-mixture reparameterizers)."""
    def model():
        with pyro.plate("n", n):
            return pyro.sample("x", dist.Stable(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT), scale, loc, coords=coords))

    return _trace(model, {"x": reparam}).nodes["x"]["value"]


def _stable_draws(a, b, scale=1.0, loc=0.0, coords="S0", n=N):
    return dist.Stable(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT), scale, loc, coords=coords).sample((n,))


def _same_law(x: torch.Tensor, y: torch.Tensor) -> None:
    assert st.ks_2samp(x.numpy(), y.numpy()).pvalue > 1e-3


# ---- LatentStableReparam --------------------------------------------------------------------

@pytest.mark.parametrize("coords", ["S0", "S"])
@pytest.mark.parametrize("a, b", [(1.5, 0.4), (0.7, -0.6), (1.9, 1.0)])
def test_latent_value_is_cms_of_auxiliary_draws(a, b, coords):
    torch.manual_seed(0)

    def model():
        with pyro.plate("n", 50):
            return pyro.sample("x", dist.Stable(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT), 1.7, -0.3, coords=coords))

    tr = _trace(model, {"x": LatentStableReparam()})
    u, e = tr.nodes["x_uniform"]["value"].numpy(), tr.nodes["x_exponential"]["value"].numpy()
    want = -0.3 + 1.7 * _cms_by_hand(a, b, u, e, coords)
    np.testing.assert_allclose(tr.nodes["x"]["value"].numpy(), want, rtol=1e-9, atol=1e-9)
    assert tr.nodes["x"]["infer"].get("_deterministic")
    assert tr.nodes["x_uniform"]["fn"].batch_shape == (50,) and not tr.nodes["x_uniform"]["is_observed"]


@pytest.mark.parametrize("coords", ["S0", "S"])
@pytest.mark.parametrize("a, b", [(1.5, 0.5), (0.8, -0.3), (1.0, 0.6)])
def test_latent_marginal_matches_stable(a, b, coords):
    torch.manual_seed(1)
    _same_law(_draws(LatentStableReparam(), a, b, 1.3, 0.5, coords), _stable_draws(a, b, 1.3, 0.5, coords))


def test_latent_closed_forms():
    torch.manual_seed(2)
    x = _draws(LatentStableReparam(), 2.0, 0.3, 1.5, 1.0)  # Normal(loc, sqrt(2) scale), whatever the skew
    assert st.kstest(x.numpy(), st.norm(1.0, 1.5 * math.sqrt(2)).cdf).pvalue > 1e-3
    c = _draws(LatentStableReparam(), 1.0, 0.0, 2.0, 0.5)  # Cauchy(loc, scale)
    assert st.kstest(c.numpy(), st.cauchy(0.5, 2.0).cdf).pvalue > 1e-3


def test_latent_gradients_flow_to_parameters():
    a = torch.tensor(1.4, dtype=DT, requires_grad=True)
    loc = torch.tensor(0.2, dtype=DT, requires_grad=True)

    def model():
        with pyro.plate("n", 10):
            return pyro.sample("x", dist.Stable(a, torch.tensor(0.3, dtype=DT), 1.0, loc))

    x = _trace(model, {"x": LatentStableReparam()}).nodes["x"]["value"]
    ga, gl = torch.autograd.grad(x.sum(), (a, loc))
    assert torch.isfinite(ga) and gl.item() == pytest.approx(10.0)


# ---- SymmetricStableReparam -----------------------------------------------------------------

@pytest.mark.parametrize("a", [1.5, 0.6])
def test_symmetric_marginal_matches_stable(a):
    torch.manual_seed(3)
    _same_law(_draws(SymmetricStableReparam(), a, 0.0, 0.8, -1.0), _stable_draws(a, 0.0, 0.8, -1.0))


def test_symmetric_cauchy_closed_form():
    torch.manual_seed(4)
    c = _draws(SymmetricStableReparam(), 1.0, 0.0, 2.0, 0.5)
    assert st.kstest(c.numpy(), st.cauchy(0.5, 2.0).cdf).pvalue > 1e-3


# ---- StableReparam ------------------------------------------------------------------------

@pytest.mark.parametrize("coords", ["S0", "S"])
@pytest.mark.parametrize("a, b", [(1.5, 0.5), (0.8, -0.3), (1.0, 0.6), (1.3, 0.0)])
def test_general_marginal_matches_stable(a, b, coords):
    torch.manual_seed(5)
    _same_law(_draws(StableReparam(), a, b, 1.2, 0.3, coords), _stable_draws(a, b, 1.2, 0.3, coords))


@pytest.mark.parametrize("reparam, a, b, coords", [
    (SymmetricStableReparam(), 1.5, 0.0, "S0"),
    (SymmetricStableReparam(), 0.8, 0.0, "S0"),
    (StableReparam(), 1.5, 0.5, "S0"),
    (StableReparam(), 0.8, -0.7, "S0"),
    (StableReparam(), 1.2, 0.6, "S"),
    (StableReparam(), 1.0, 0.5, "S0"),
])
def test_observed_is_an_unbiased_scale_mixture(reparam, a, b, coords):
    """Pyro's claim for observed sites: the Normal likelihood given the auxiliary latents, averaged
    over their prior, is the Stable density (so SVI and MCMC target the same posterior)."""
    torch.manual_seed(6)
    M = 100_000
    ys = torch.tensor([-2.0, -0.3, 0.4, 1.5, 4.0], dtype=DT)
    d = dist.Stable(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT), torch.tensor(0.9, dtype=DT), torch.tensor(0.2, dtype=DT), coords=coords)

    def model():
        with pyro.plate("m", M, dim=-2), pyro.plate("y", len(ys), dim=-1):
            pyro.sample("obs", d.expand([M, len(ys)]), obs=ys.expand(M, len(ys)))

    node = _trace(model, {"obs": reparam}).nodes["obs"]
    assert node["is_observed"] and isinstance(node["fn"], dist.Normal)
    lik = node["fn"].log_prob(ys).exp()
    est, se = lik.mean(0), lik.std(0) / math.sqrt(M)
    want = d.log_prob(ys).exp()
    assert ((est - want).abs() < 4 * se + 2e-3 * want).all(), (est, want, se)


def test_svi_recovers_loc_of_a_skewed_stable_likelihood():
    """SVI through StableReparam's auxiliary latents (an AutoNormal guide over them) finds the
    location of skewed Stable data."""
    from ember.infer import SVI, Trace_ELBO
    from ember.infer.autoguide import AutoNormal

    torch.manual_seed(7)
    true_loc, n = 2.0, 200
    data = dist.Stable(1.6, 0.5, 1.0, true_loc).sample((n,))

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Stable(1.6, 0.5, 1.0, loc), obs=data)

    rmodel = MinimalReparam()(model)
    pyro.clear_param_store()
    guide = AutoNormal(rmodel)
    svi = SVI(rmodel, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(600):
        svi.step(data)
    est = guide.median(data)["loc"].item()
    assert abs(est - true_loc) < 0.3, est


# ---- shared details ---------------------------------------------------------------------------

def test_skew_shift_is_smooth_through_alpha_one():
    b = torch.tensor([-0.7, 0.3, 0.9], dtype=DT)
    babs = b.abs()
    limit = (2 / math.pi) * b * babs.log()
    for a in (1.0, 1 - 1e-9, 1 + 1e-7):
        torch.testing.assert_close(_skew_shift(torch.tensor(a, dtype=DT), b, babs), limit, atol=1e-6, rtol=0)
    a = torch.tensor(1.3, dtype=DT)
    direct = (b.sign() * babs.pow(1 / a) - b) * torch.tan(math.pi * a / 2)
    torch.testing.assert_close(_skew_shift(a, b, babs), direct)
    a = torch.tensor(1.0, dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(_skew_shift(a, b, babs).sum(), a)
    assert torch.isfinite(g)


def test_site_names_are_pyros():
    def model():
        pyro.sample("x", dist.Stable(1.5, 0.3, 2.0, 1.0))
        with pyro.plate("N", 3):
            pyro.sample("y", dist.Stable(1.5, 0.0, 2.0, 0.0), obs=torch.zeros(3))
            pyro.sample("z", dist.Stable(1.5, 0.5, 2.0, 0.0), obs=torch.zeros(3))

    def names(strategy):
        tr = poutine.trace(strategy(model)).get_trace()
        return [n for n, m in tr.nodes.items() if m["type"] == "sample"]

    y_z = ["y_uniform", "y_exponential", "y", "z_z_uniform", "z_z_exponential", "z_t_uniform", "z_t_exponential", "z"]
    assert names(MinimalReparam()) == ["x_uniform", "x_exponential", "x"] + y_z
    assert names(AutoReparam()) == ["x_decentered_uniform", "x_decentered_exponential", "x_decentered", "x"] + y_z


def test_strategies_rules_for_stable():
    lat = {"fn": dist.Stable(1.5, 0.3), "is_observed": False, "name": "x"}
    assert isinstance(MinimalReparam().configure(lat), LatentStableReparam)
    obs = {"fn": dist.Stable(1.5, torch.zeros(3)), "is_observed": True, "name": "y"}
    assert isinstance(MinimalReparam().configure(obs), SymmetricStableReparam)
    assert isinstance(MinimalReparam().configure({**obs, "fn": dist.Stable(1.5, torch.tensor([0.0, 0.1]))}), StableReparam)
    skew = torch.zeros(3, requires_grad=True)  # may become nonzero during training
    assert isinstance(MinimalReparam().configure({**obs, "fn": dist.Stable(1.5, skew)}), StableReparam)
    auto = AutoReparam().configure(lat)
    assert isinstance(auto.first, LocScaleReparam) and isinstance(auto.second, LatentStableReparam)
    assert isinstance(AutoReparam().configure(obs), SymmetricStableReparam)
    # a Stable inside a TransformedDistribution: TransformReparam, then the base site
    def model():
        pyro.sample("t", dist.TransformedDistribution(dist.Stable(1.5, 0.3), [dist.transforms.ExpTransform()]))

    tr = poutine.trace(MinimalReparam()(model)).get_trace()
    assert [n for n in tr.nodes if tr.nodes[n]["type"] == "sample"] == ["t_base_uniform", "t_base_exponential", "t_base", "t"]
    torch.testing.assert_close(tr.nodes["t"]["value"], tr.nodes["t_base"]["value"].exp())


def test_errors_name_the_site():
    def model(d, obs=None):
        pyro.sample("s", d, obs=obs)

    for r in (LatentStableReparam(), SymmetricStableReparam(), StableReparam()):
        with pytest.raises(ValueError, match=rf"{type(r).__name__} at site 's': expected a Stable.*Normal"):
            poutine.reparam(model, config={"s": r})(dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match=r"SymmetricStableReparam at site 's': found nonzero skew"):
        poutine.reparam(model, config={"s": SymmetricStableReparam()})(dist.Stable(1.5, 0.2))
    with pytest.raises(ValueError, match=r"SymmetricStableReparam at site 's': found stability >= 2"):
        poutine.reparam(model, config={"s": SymmetricStableReparam()})(dist.Stable(2.0, 0.0))
    with pytest.raises(NotImplementedError, match=r"LatentStableReparam at site 's'.*observed"):
        poutine.reparam(model, config={"s": LatentStableReparam()})(dist.Stable(1.5, 0.2), torch.tensor(0.0))


def test_auto_reparam_recurses_into_a_transformed_latents_base_as_pyro():
    def model():
        pyro.sample("x", dist.LogNormal(0.0, 1.0))
        pyro.sample("t", dist.TransformedDistribution(dist.Stable(1.5, 0.3), [dist.transforms.ExpTransform()]))

    strategy = AutoReparam()
    tr = poutine.trace(strategy(model)).get_trace()
    assert [n for n in tr.nodes if tr.nodes[n]["type"] == "sample"] == [
        "x_base_decentered", "x_base", "x",
        "t_base_decentered_uniform", "t_base_decentered_exponential", "t_base_decentered", "t_base", "t"]
    # the saved choices, used as a dict config, do the same
    tr2 = poutine.trace(poutine.reparam(model, config=dict(strategy.config))).get_trace()
    assert [n for n in tr2.nodes if tr2.nodes[n]["type"] == "sample"] == [n for n in tr.nodes if tr.nodes[n]["type"] == "sample"]


def test_stable_with_log_prob_is_never_reparameterized():
    import ember as pyro
    import ember.distributions as dist
    from ember import poutine
    from ember.infer.reparam import LatentStableReparam, MinimalReparam

    def model():
        with pyro.plate("n", 3):
            return pyro.sample("x", dist.StableWithLogProb(1.5, 0.2))

    assert type(dist.StableWithLogProb(1.5, 0.2).expand([3])) is dist.StableWithLogProb
    tr = poutine.trace(poutine.reparam(model, config=MinimalReparam())).get_trace()
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == ["x"]
    with pytest.raises(ValueError, match=r"site 'x'.*StableWithLogProb.*never reparameterized"):
        poutine.trace(poutine.reparam(model, config={"x": LatentStableReparam()})).get_trace()


def test_a_dict_config_chains_reparameterizers_through_auxiliary_sites():
    # Pyro's way of decentring a stable latent, then reparameterizing its standard part
    import ember as pyro
    import ember.distributions as dist
    from ember import poutine
    from ember.infer.reparam import LatentStableReparam, LocScaleReparam

    def model():
        return pyro.sample("x", dist.Stable(1.5, 0.3, 2.0, 1.0))

    pyro.set_rng_seed(0)
    config = {"x": LocScaleReparam(0.0), "x_decentered": LatentStableReparam()}
    tr = poutine.trace(poutine.reparam(model, config=config)).get_trace()
    sites = [(n, s["is_observed"]) for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert sites == [("x_decentered_uniform", False), ("x_decentered_exponential", False), ("x_decentered", True), ("x", True)]
    torch.testing.assert_close(tr.nodes["x"]["value"], 1.0 + 2.0 * tr.nodes["x_decentered"]["value"])
    # an auxiliary site no config entry names is left alone, and a name nothing samples is still an error
    with pytest.raises(ValueError, match=r"config names site\(s\) \['y'\]"):
        poutine.trace(poutine.reparam(model, config={"x": LocScaleReparam(0.0), "y": LatentStableReparam()})).get_trace()
