"""HMC/NUTS on models with enumerated discrete sites: the potential is the exact marginal (checked
at a point against a closed form), NUTS matches the exact posterior of a mixture (a grid) within
Monte-Carlo error, and infer_discrete recovers the assignments afterwards."""

from __future__ import annotations

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import MCMC, NUTS, config_enumerate, infer_discrete
from ember.infer.mcmc.potential import ModelPotential
from ember.poutine import condition, trace

W = torch.tensor([0.3, 0.7])
OFF = torch.tensor([0.0, 3.0])
DATA = torch.tensor([0.2, 3.1, 2.5, -0.4, 3.6, 0.9, 2.8, 3.3, 0.1, 3.0])


@config_enumerate
def mixture(x):
    mu = ember.sample("mu", dist.Normal(0.0, 3.0))
    scale = ember.sample("scale", dist.LogNormal(0.0, 0.5))
    with ember.plate("data", len(x)):
        z = ember.sample("z", dist.Categorical(W))
        ember.sample("x", dist.Normal(mu + OFF[z], scale), obs=x)


def exact_log_joint(mu, scale):
    comp = W.log()[:, None] + dist.Normal(mu + OFF[:, None], scale).log_prob(DATA)
    return dist.Normal(0.0, 3.0).log_prob(mu) + dist.LogNormal(0.0, 0.5).log_prob(scale) + comp.logsumexp(0).sum()


def test_potential_is_the_exact_marginal():
    pot = ModelPotential(mixture, (DATA,))
    z0, u0, g0 = pot.initial_point()
    assert [s.name for s in pot.sites] == ["mu", "scale"]
    z = torch.tensor([0.4, -0.2], requires_grad=True)
    u = pot.potential(z)
    mu, log_scale = z[0], z[1]
    ref = -(exact_log_joint(mu, log_scale.exp()) + log_scale)  # + log |d scale / d log_scale|
    assert torch.allclose(u, ref)
    assert torch.allclose(torch.autograd.grad(u, z)[0], torch.autograd.grad(ref, z)[0])


def _grid_posterior_of_mu():
    mus = torch.linspace(-4, 4, 801)
    scales = torch.linspace(0.2, 4.0, 761)
    comp = W.log()[:, None, None, None] + dist.Normal(mus[:, None, None] + OFF[:, None, None, None], scales[:, None]).log_prob(DATA)
    lp = (dist.Normal(0.0, 3.0).log_prob(mus)[:, None] + dist.LogNormal(0.0, 0.5).log_prob(scales)
          + comp.logsumexp(0).sum(-1))
    p = (lp - lp.logsumexp((0, 1))).exp().sum(1)
    mean = (p * mus).sum()
    return mean, ((p * (mus - mean) ** 2).sum()).sqrt()


def _run(jit_compile):
    ember.set_rng_seed(0)
    kernel = NUTS(mixture, jit_compile=jit_compile)
    mcmc = MCMC(kernel, num_samples=300, warmup_steps=150, disable_progbar=True)
    mcmc.run(DATA)
    return kernel, mcmc.get_samples()


def _check_against_exact(samples):
    mean, sd = _grid_posterior_of_mu()
    mu = samples["mu"]
    assert "z" not in samples
    # 300 draws of NUTS on a 2-d posterior: an effective sample size well above 50
    assert abs(mu.mean() - mean) < 4 * sd / 50 ** 0.5, (mu.mean(), mean, sd)
    assert 0.6 * sd < mu.std() < 1.5 * sd


@pytest.mark.slow
def test_nuts_on_an_enumerated_mixture_matches_the_exact_posterior():
    _, samples = _run(False)
    _check_against_exact(samples)
    # the assignments afterwards: MAP given a posterior draw
    draw = {k: v[-1] for k, v in samples.items()}
    tr = trace(infer_discrete(condition(mixture, data=draw), first_available_dim=-2, temperature=0)).get_trace(DATA)
    assert tr.nodes["z"].value.tolist() == (DATA > 1.5).long().tolist()


@pytest.mark.slow
def test_compiled_potential_covers_enumeration():
    kernel, samples = _run(None)
    assert kernel.compile_status.startswith("compiled"), kernel.compile_status
    _check_against_exact(samples)


def test_vectorized_chains_sum_each_chains_enumerated_sites_out():
    """Enumerated models run their chains vectorized (torch.func.vmap over the chains): each chain's
    draws are the ones it draws when the chains run one after another."""
    runs = {}
    for method in ("vectorized", "sequential"):
        ember.set_rng_seed(3)
        mcmc = MCMC(NUTS(mixture, jit_compile=False), num_samples=15, warmup_steps=15, num_chains=2,
                    chain_method=method, disable_progbar=True)
        mcmc.run(DATA)
        runs[method] = (mcmc, mcmc.get_samples(group_by_chain=True))
    mcmc, vec = runs["vectorized"]
    _, seq = runs["sequential"]
    assert any("vmap" in s for s in mcmc.compile_status), mcmc.compile_status
    for k in ("mu", "scale"):
        assert vec[k].shape == (2, 15)
        torch.testing.assert_close(vec[k], seq[k], rtol=1e-5, atol=1e-5)
