"""WeighedPredictive: importance log-weights log p(x, z) - log q(z) by hand on a conjugate
model; shapes and the result type as in pyro-ppl 1.9.2."""

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import WeighedPredictive
from ember.infer.predictive import WeighedPredictiveResults

DATA = torch.tensor([0.5, 1.0, -0.3])


def model(data=None):
    mu = ember.sample("mu", dist.Normal(0.0, 2.0))
    with ember.plate("N", 3):
        ember.sample("x", dist.Normal(mu, 1.0), obs=data)


def guide(data=None):
    loc = ember.param("loc", torch.tensor(0.3))
    ember.sample("mu", dist.Normal(loc, 0.5))


def _by_hand(mu):
    log_p = dist.Normal(0.0, 2.0).log_prob(mu) + dist.Normal(mu[:, None], 1.0).log_prob(DATA).sum(-1)
    log_q = dist.Normal(0.3, 0.5).log_prob(mu)
    return log_p, log_q


@pytest.mark.parametrize("parallel", [False, True])
def test_log_weights_by_hand(parallel):
    ember.set_rng_seed(0)
    r = WeighedPredictive(model, guide=guide, num_samples=5, parallel=parallel)(DATA)
    assert isinstance(r, WeighedPredictiveResults)
    # pyro-ppl 1.9.2: samples {'mu': (5, 1), 'x': (5, 3)}; the three weight tensors (5,)
    assert {k: tuple(v.shape) for k, v in r.samples.items()} == {"mu": (5, 1), "x": (5, 3)}
    assert r.log_weights.shape == r.guide_log_prob.shape == r.model_log_prob.shape == (5,)
    log_p, log_q = _by_hand(r.samples["mu"].reshape(-1))
    torch.testing.assert_close(r.model_log_prob, log_p)
    torch.testing.assert_close(r.guide_log_prob, log_q)
    torch.testing.assert_close(r.log_weights, log_p - log_q)
    w = (r.log_weights - r.log_weights.logsumexp(0)).exp()
    torch.testing.assert_close(r.get_normalized_weights(), w)
    torch.testing.assert_close(r.get_log_normalizer(), r.log_weights.logsumexp(0) - math.log(5))
    torch.testing.assert_close(r.get_ESS(), 1 / w.pow(2).sum())


def test_model_guide_gives_the_weights():
    # predictive samples of the unconditioned model, weights of the model the guide was fitted to
    ember.set_rng_seed(0)
    wp = WeighedPredictive(model, guide=guide, num_samples=4)
    r = wp(None, model_guide=lambda data=None: model(DATA))
    assert {k: tuple(v.shape) for k, v in r.samples.items()} == {"mu": (4, 1), "x": (4, 3)}
    log_p, log_q = _by_hand(r.samples["mu"].reshape(-1))
    torch.testing.assert_close(r.log_weights, log_p - log_q)


def test_call_sorts_samples_and_clone():
    ember.set_rng_seed(0)
    r = WeighedPredictive(model, guide=guide, num_samples=3).call(DATA)
    assert isinstance(r.samples, tuple) and [tuple(v.shape) for v in r.samples] == [(3, 1), (3, 3)]  # mu, x
    c = r.clone()
    assert c.log_weights is not r.log_weights
    torch.testing.assert_close(c.log_weights, r.log_weights)


def test_exact_guide_gives_equal_weights():
    # the exact posterior as the guide: every weight is log p(x_obs)
    n, prior_var = 3, 4.0
    post_var = 1 / (1 / prior_var + n)
    post_mean = post_var * DATA.sum()

    def exact(data=None):
        ember.sample("mu", dist.Normal(post_mean, post_var**0.5))

    r = WeighedPredictive(model, guide=exact, num_samples=6, parallel=True)(DATA)
    cov = torch.eye(n) + prior_var
    log_evidence = dist.MultivariateNormal(torch.zeros(n), cov).log_prob(DATA)
    torch.testing.assert_close(r.log_weights, log_evidence.expand(6), atol=1e-4, rtol=0)


def test_guide_required():
    with pytest.raises(ValueError, match="guide"):
        WeighedPredictive(model, num_samples=3)
